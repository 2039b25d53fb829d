"""Bad inputs to erase/sample/eval beyond the basics: damaged weights, mismatched configs, sampler arguments."""

import json
import shutil

import pytest

from test_cli_class import assert_one_line_error, run_cli


def _damaged_copy(src, dst, how):
    shutil.copytree(src, dst)
    weights = next((dst / "unet").glob("*.safetensors"))
    if how == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 3])
    elif how == "config":  # a UNet config that does not match the weights (another base model's generator)
        cfg = json.loads((dst / "unet" / "config.json").read_text())
        cfg["block_out_channels"] = [c * 2 for c in cfg["block_out_channels"]]
        (dst / "unet" / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("how,needle", [("truncate", "could not load"), ("config", "could not load")])
@pytest.mark.parametrize("command", ["erase", "sample"])
def test_damaged_or_mismatched_class_models(tiny_teacher_dir, tmp_path, capsys, how, needle, command):
    bad = _damaged_copy(tiny_teacher_dir, tmp_path / "bad", how)
    args = ["--forget", "1"] if command == "erase" else ["--class", "1"]
    code, _, err = run_cli(capsys, command, "--model", str(bad), *args, "--out", str(tmp_path / "o"), "--quiet")
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "o").exists()


def test_damaged_text_model(tiny_sd_dir, tmp_path, capsys):
    bad = _damaged_copy(tiny_sd_dir, tmp_path / "bad", "truncate")
    code, _, err = run_cli(capsys, "erase", "--model", str(bad), "--forget", "red", "--override", "blue",
                           "--out", str(tmp_path / "o"), "--quiet")
    assert_one_line_error(code, err, "could not load")


@pytest.mark.parametrize("args,needles", [
    (["--n", "0"], ["--n", ">= 1"]),
    (["--seed", "-1"], ["--seed", ">= 0"]),
    (["--steps", "0"], ["--steps", ">= 1"]),
])
def test_sample_argument_errors(tiny_teacher_dir, tmp_path, capsys, args, needles):
    code, _, err = run_cli(capsys, "sample", "--model", str(tiny_teacher_dir), "--class", "1", "--out", str(tmp_path / "o"), *args)
    assert_one_line_error(code, err, *needles)


def test_sample_needs_class_or_prompt(tiny_teacher_dir, tiny_sd_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", "--model", str(tiny_teacher_dir), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "--class")
    code, _, err = run_cli(capsys, "sample", "--model", str(tiny_sd_dir), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "--prompt")
    code, _, err = run_cli(capsys, "sample", "--model", str(tiny_sd_dir), "--prompt", "   ", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "--prompt is empty")


def test_sample_does_not_overwrite(tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.png").write_bytes(b"keep")
    code, _, err = run_cli(capsys, "sample", "--model", str(tiny_teacher_dir), "--class", "1", "--out", str(out))
    assert_one_line_error(code, err, "--overwrite")
    assert (out / "mine.png").read_bytes() == b"keep"


def test_erase_from_a_one_step_model_is_refused(tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "erased"
    assert run_cli(capsys, "erase", "--model", str(tiny_teacher_dir), "--forget", "1", "--out", str(out), "--steps", "1",
                   "--quiet")[0] == 0
    code, _, err = run_cli(capsys, "erase", "--model", str(out), "--forget", "2", "--out", str(tmp_path / "again"), "--quiet")
    assert_one_line_error(code, err, "already a one-step generator")


def test_text_options_on_class_model_are_refused(tiny_teacher_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_teacher_dir), "--forget", "1", "--negative-prompt", "x",
                           "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "text-to-image")


def test_empty_forget_text_is_refused(tiny_sd_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sd_dir), "--forget", " ", "--override", "blue",
                           "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "--forget is empty")
