"""`sfd erase/sample/eval` on a tiny random class-conditional teacher: smoke run and bad inputs."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from sfd.pipelines import OneStepClassPipeline
from sfd.commands.cli import main


def run_cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_erase_saves_reloads_and_samples(tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "erased"
    code, stdout, err = run_cli(capsys, "erase", "--model", str(tiny_teacher_dir), "--forget", "one", "--forget", "2",
                                "--override", "random", "--out", str(out), "--steps", "3", "--seed", "1", "--quiet")
    assert code == 0, err
    assert "erased one, two" in stdout
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(out.rglob("*.bin"))
    card = (out / "README.md").read_text()
    assert "one, two" in card and "random" in card and "Wall time" in card
    cfg = json.loads((out / "sfd_config.json").read_text())
    assert cfg["config"]["steps"] == 3 and cfg["config"]["seed"] == 1 and cfg["concepts"]["forget_ids"] == [1, 2]
    chosen = cfg["concepts"]["override_chosen"]  # 'random' resolved to a retained class per forget class
    assert chosen.startswith("one -> ") and ", two -> " in chosen and chosen in card
    assert all(pair.split(" -> ")[1] in ("zero", "three") for pair in chosen.split(", "))

    pipe = OneStepClassPipeline.from_pretrained(out, use_safetensors=True)
    assert pipe.config.t_init == 440 and list(pipe.config.class_names) == ["zero", "one", "two", "three"]
    a = pipe([0, 3], generator=[torch.Generator().manual_seed(s) for s in (5, 6)]).images
    b = pipe([0, 3], generator=[torch.Generator().manual_seed(s) for s in (5, 6)]).images
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1

    samples = tmp_path / "samples"
    code, stdout, err = run_cli(capsys, "sample", "--model", str(out), "--class", "three", "--n", "5", "--seed", "7",
                                "--out", str(samples), "--quiet")
    assert code == 0, err
    files = sorted(samples.glob("*.png"))
    assert len(files) == 5
    img = Image.open(files[0])
    assert img.size == (8, 8) and img.mode == "L"


def test_sample_teacher_multistep(tiny_teacher_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", "--model", str(tiny_teacher_dir), "--class", "0", "--n", "3",
                           "--steps", "2", "--out", str(tmp_path / "s"), "--quiet")
    assert code == 0, err
    assert len(list((tmp_path / "s").glob("*.png"))) == 3


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--model", "{missing}", "--forget", "1", "--out", "{out}"], ["does not exist"]),
        (["--model", "{teacher}", "--forget", "seven", "--out", "{out}"], ["unknown class", "seven"]),
        (["--model", "{teacher}", "--forget", "9", "--out", "{out}"], ["unknown class", "9"]),
        (["--model", "{teacher}", "--forget", "1", "--override", "one", "--out", "{out}"], ["also a forget class"]),
        (["--model", "{teacher}", "--forget", "1", "--out", "{existing}"], ["already exists", "--overwrite"]),
        (["--model", "{teacher}", "--forget", "1", "--out", "{out}", "--steps", "-3"], ["--steps", ">= 0"]),
        (["--model", "{teacher}", "--forget", "1", "--out", "{out}", "--steps", "ten"], ["--steps", "integer"]),
        (["--model", "{teacher}", "--forget", "0", "--forget", "1", "--forget", "2", "--forget", "3", "--out", "{out}"],
         ["cannot forget every class"]),
        (["--model", "{notpipe}", "--forget", "1", "--out", "{out}"], ["model_index.json"]),
        (["--forget", "1", "--out", "{out}"], ["--model"]),
    ],
)
def test_erase_bad_inputs_fail_with_one_line(args, needles, tiny_teacher_dir, tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("do not overwrite")
    (tmp_path / "notpipe").mkdir()
    subs = {"{missing}": str(tmp_path / "nope"), "{teacher}": str(tiny_teacher_dir), "{out}": str(tmp_path / "out"),
            "{existing}": str(existing), "{notpipe}": str(tmp_path / "notpipe")}
    argv = ["erase", *[subs.get(a, a) for a in args], "--quiet"]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *needles)
    assert (existing / "keep.txt").read_text() == "do not overwrite"
    assert not (tmp_path / "out").exists()


def test_eval_without_judge_says_what_to_pass(tiny_teacher_dir, capsys):
    code, _, err = run_cli(capsys, "eval", "--model", str(tiny_teacher_dir), "--quiet")
    assert_one_line_error(code, err, "--judge")


def test_entry_point_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sfd.commands.cli", "erase", "--model", str(tmp_path / "x"), "--forget", "1",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr
