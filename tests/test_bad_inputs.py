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
    code, _, err = run_cli(capsys, "erase", "--single-stage", "--model", str(bad), "--forget", "red", "--override", "blue",
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
    code, _, err = run_cli(capsys, "erase", "--single-stage", "--model", str(tiny_sd_dir), "--forget", " ", "--override", "blue",
                           "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "--forget is empty")


# --------------------------------------------------------------- more bad inputs (docs/BAD_INPUTS.md lists them all)

@pytest.mark.parametrize("case", ["missing-model", "not-a-pipeline", "out-is-a-file"])
def test_sample_path_errors(tiny_teacher_dir, tmp_path, capsys, case):
    (tmp_path / "notpipe").mkdir()
    (tmp_path / "file.png").write_bytes(b"keep")
    model = {"missing-model": tmp_path / "nope", "not-a-pipeline": tmp_path / "notpipe"}.get(case, tiny_teacher_dir)
    out = tmp_path / "file.png" if case == "out-is-a-file" else tmp_path / "o"
    needle = {"missing-model": "does not exist", "not-a-pipeline": "model_index.json", "out-is-a-file": "is a file"}[case]
    code, _, err = run_cli(capsys, "sample", "--model", str(model), "--class", "1", "--out", str(out), "--quiet")
    assert code == 2
    assert_one_line_error(code, err, "sfd sample: error:", needle)
    assert (tmp_path / "file.png").read_bytes() == b"keep" and not (tmp_path / "o").exists()


def test_sample_unknown_class_is_refused(tiny_teacher_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", "--model", str(tiny_teacher_dir), "--class", "seven", "--out", str(tmp_path / "o"),
                           "--quiet")
    assert code == 2
    assert_one_line_error(code, err, "unknown class", "seven")
    assert not (tmp_path / "o").exists()


def test_sample_option_of_the_other_model_kind(tiny_teacher_dir, tiny_sd_dir, tmp_path, capsys):
    # --prompt given to a class-conditional model, --class given to a text-to-image model
    code, _, err = run_cli(capsys, "sample", "--model", str(tiny_teacher_dir), "--prompt", "a red circle",
                           "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(code, err, "--class", "class-conditional")
    code, _, err = run_cli(capsys, "sample", "--model", str(tiny_sd_dir), "--class", "1", "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(code, err, "--prompt", "text-to-image")
    assert not (tmp_path / "o").exists()


def test_eval_of_a_text_model_is_refused(tiny_sd_dir, capsys):
    code, _, err = run_cli(capsys, "eval", "--model", str(tiny_sd_dir), "--quiet")
    assert code == 2
    assert_one_line_error(code, err, "sfd eval: error:", "expected a class-conditional model")


def test_eval_json_in_a_missing_folder_is_refused_before_sampling(tiny_teacher_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", "--model", str(tiny_teacher_dir), "--json", str(tmp_path / "no" / "m.json"), "--quiet")
    assert code == 2
    assert_one_line_error(code, err, "--json", "existing folder")


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_audit_never_writes_into_a_folder_it_did_not_make(tiny_teacher_dir, tmp_path, capsys, overwrite):
    import torch

    from sfd.evaluators.classifier import ConvJudge, JudgeConfig

    torch.manual_seed(0)
    ConvJudge(JudgeConfig(num_classes=4, class_names=("zero", "one", "two", "three"))).save_pretrained(tmp_path / "judge")
    (tmp_path / "classes.txt").write_text("one\n")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("do not overwrite")
    code, _, err = run_cli(capsys, "audit", "--model", str(tiny_teacher_dir), "--prompts", str(tmp_path / "classes.txt"),
                           "--detector", f"classifier:{tmp_path / 'judge'}=one", "--out", str(out), "--device", "cpu", "--quiet",
                           *(["--overwrite"] if overwrite else []))
    assert code == 2
    assert_one_line_error(code, err, "sfd audit: error:", "not an audit folder")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "do not overwrite"


@pytest.mark.parametrize("args,needles", [
    (["--port", "-1"], ["--port must be >= 0"]),
    (["--port", "70000"], ["--port must be from 0 to 65535"]),
    (["--clip", "{missing}"], ["does not exist"]),
    (["--device", "tpu"], ["--device must be cpu, cuda, cuda:N or auto"]),
], ids=["port-negative", "port-too-large", "clip-missing", "device-unknown"])
def test_demo_argument_errors(tmp_path, capsys, args, needles):
    from sfd.commands import cli_demo  # the same handler `sfd demo` runs (nothing is served: each check fails first)

    argv = [str(tmp_path / "nope") if a == "{missing}" else a for a in args]
    try:
        code = cli_demo.main(["demo", *argv])
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert_one_line_error(code, err, "sfd demo: error:", *needles)


@pytest.mark.parametrize("case", ["unknown-world", "existing-out"])
def test_train_teacher_argument_errors(tmp_path, capsys, case):
    out = tmp_path / "world"
    out.mkdir()
    (out / "keep.txt").write_text("do not overwrite")
    if case == "unknown-world":
        world, needles = "cats", ["unknown world", "cats"]
    else:
        world, needles = "digits", ["already exists", "--overwrite"]
    code, _, err = run_cli(capsys, "train-teacher", world, "--out", str(out), "--quiet")
    assert code == 2
    assert_one_line_error(code, err, "sfd train-teacher: error:", *needles)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("command,args,needles", [
    ("distill", ["--lora-rank", "0"], ["--lora-rank must be >= 1"]),
    ("erase", ["--forget", "1", "--micro-batches", "0"], ["--micro-batches must be >= 1"]),
    ("erase", ["--forget", "1", "--micro-batches", "3"], ["not divisible", "micro-batches"]),
    ("train-teacher", ["--family", "sdxl"], ["--family", "shapes world"]),
    ("erase", ["--forget", "1", "--lora-lr-scale", "0"], ["--lora-lr-scale must be a positive number"]),
], ids=["lora-rank-zero", "micro-batches-zero", "micro-batches-indivisible", "family-for-digits", "lora-lr-scale-zero"])
def test_two_stage_and_lora_argument_errors(tiny_teacher_dir, tmp_path, capsys, command, args, needles):
    head = ["digits"] if command == "train-teacher" else ["--model", str(tiny_teacher_dir)]
    code, _, err = run_cli(capsys, command, *head, *args, "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2
    assert_one_line_error(code, err, f"sfd {command}: error:", *needles)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ what a new user hits (checked before training)

@pytest.mark.parametrize("forget,needles", [
    ("a red circle", ["'a red circle' is not a colour or shape of the shapes world", "--forget red --forget circle"]),
    ("red circle", ["'red circle' is not a colour or shape", "--forget red --forget circle"]),
    ("dog", ["'dog' is not a colour or shape", "none of the world's captions names it"]),
], ids=["caption", "two-words", "unknown-word"])
def test_a_concept_the_world_does_not_know_is_refused_before_training(tmp_path, capsys, forget, needles):
    from sfd.core.models import checkpoints_dir

    code, out, err = run_cli(capsys, "erase", "--model", str(checkpoints_dir() / "shapes" / "teacher"), "--forget", forget,
                             "--override", "blue", "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2
    assert_one_line_error(code, err, *needles)
    assert "micro-batches" not in out and not (tmp_path / "o").exists()  # no training step was taken


def test_lora_targets_that_match_no_module_are_refused_before_training(tiny_sd_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "erase", "--single-stage", "--model", str(tiny_sd_dir), "--forget", "red", "--override", "blue",
                             "--lora-targets", "to_q,nonexistent_layer", "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2
    assert_one_line_error(code, err, "--lora-targets", "'nonexistent_layer'", "to_q")
    assert "micro-batches" not in out and not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_sample_guidance_must_be_a_finite_non_negative_number(tiny_sd_dir, tmp_path, capsys, value):
    code, _, err = run_cli(capsys, "sample", "--model", str(tiny_sd_dir), "--prompt", "a red circle", "--guidance", value,
                           "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2
    assert_one_line_error(code, err, "--guidance must be a non-negative number", value)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("model,preset,needles", [
    ("sdxl", "sd3", ["--preset sd3 is for sd3 models", "Stable Diffusion XL", "choose one of sd, shapes"]),
    ("sd", "class", ["--preset class is for class-unet models", "Stable Diffusion 1.x/2.x"]),
    ("class", "sd", ["--preset sd is for sd, sdxl models", "class-conditional UNet2D", "choose one of class"]),
], ids=["sd3-on-sdxl", "class-on-sd", "sd-on-class"])
def test_a_preset_of_another_family_is_refused(tiny_sd_dir, tiny_sdxl_dir, tiny_teacher_dir, tmp_path, capsys, model, preset, needles):
    path = {"sd": tiny_sd_dir, "sdxl": tiny_sdxl_dir, "class": tiny_teacher_dir}[model]
    concept = ["--forget", "1"] if model == "class" else ["--forget", "red", "--override", "blue"]
    code, _, err = run_cli(capsys, "erase", "--single-stage", "--model", str(path), *concept, "--preset", preset,
                           "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2
    assert_one_line_error(code, err, *needles)


def test_import_base_names_the_flags_it_was_given(tiny_sd_dir, tiny_sdxl_dir, tmp_path, capsys):
    """A mismatched UNet is named by --unet (not --generator); --convention with --timestep is a contradiction, not a
    silently ignored --timestep."""
    code, _, err = run_cli(capsys, "import-base", "--unet", str(tiny_sdxl_dir), "--teacher", str(tiny_sd_dir), "--timestep", "500",
                           "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(code, err, f"--unet {tiny_sdxl_dir}")
    assert "--generator" not in err
    code, _, err = run_cli(capsys, "import-base", "--unet", str(tiny_sd_dir), "--teacher", str(tiny_sd_dir), "--convention", "sd-turbo",
                           "--timestep", "500", "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(code, err, "--convention sd-turbo fixes the timestep", "--timestep would be ignored")
    assert not (tmp_path / "o").exists()


def test_a_base_of_another_family_names_both_families(tiny_sd_dir, tmp_path, capsys):
    from sfd.core.models import checkpoints_dir

    base = checkpoints_dir() / "digits" / "onestep"
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sd_dir), "--generator", str(base), "--forget", "red", "--override",
                           "blue", "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2
    assert_one_line_error(code, err, "is a one-step class-conditional UNet2D model", "is a Stable Diffusion 1.x/2.x model")


def test_diffusers_empty_float32_list_warning_is_silenced(tiny_sd_dir, caplog):
    """diffusers warns "modules ... should be kept in float32: []" on every .to(dtype) of a model whose list is empty;
    the families' loading drops that record (and only that one)."""
    import logging

    import torch

    from sfd.core.families import load_model

    _, pipe = load_model(str(tiny_sd_dir))
    pipe.unet._keep_in_fp32_modules = []  # the declared-but-empty list that makes diffusers warn
    logger = logging.getLogger("diffusers.models.modeling_utils")
    with caplog.at_level(logging.WARNING, logger="diffusers.models.modeling_utils"):
        logger.propagate, old = True, logger.propagate
        try:
            pipe.unet.to(torch.float32)
            logger.warning("another diffusers warning")
        finally:
            logger.propagate = old
    messages = [r.getMessage() for r in caplog.records]
    assert "another diffusers warning" in messages
    assert not any("should be kept in float32: []" in m for m in messages)


def test_a_failed_write_after_training_keeps_the_weights_in_a_recovery_file(tiny_teacher_dir, tmp_path, capsys, monkeypatch):
    """A full disk (or any failure) while the folder is written: one line naming the recovery file, which holds the
    generator's weights; no half-written --out is left."""
    import json

    from safetensors import safe_open

    import sfd.core.erase

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sfd.core.erase, "_write_notes", full_disk)
    out = tmp_path / "erased"
    code, _, err = run_cli(capsys, "erase", "--single-stage", "--model", str(tiny_teacher_dir), "--forget", "1", "--steps", "1",
                           "--out", str(out), "--quiet")
    assert code == 2
    recovery = tmp_path / "erased.recovered-generator.safetensors"
    assert_one_line_error(code, err, "could not write the model", "No space left on device", str(recovery))
    assert not out.exists() and not any(p.name.startswith(".erased.") for p in tmp_path.iterdir())
    with safe_open(str(recovery), framework="pt") as f:
        meta, keys = json.loads(f.metadata()["sfd"]), set(f.keys())
    from diffusers import UNet2DModel

    assert keys == set(UNet2DModel.from_pretrained(tiny_teacher_dir / "unet").state_dict())  # the whole generator network
    assert meta["family"] == "class-unet" and meta["roles"]["mode"] == "full"


@pytest.mark.parametrize("how", ["class-model", "baseline"])
def test_resolution_where_it_does_not_apply_is_refused(tiny_teacher_dir, tiny_sd_dir, tmp_path, capsys, how):
    if how == "class-model":
        argv, needles = ["--model", str(tiny_teacher_dir), "--forget", "1", "--single-stage"], ["--resolution applies to text-to-image"]
    else:
        argv, needles = ["--model", str(tiny_sd_dir), "--forget", "red", "--override", "blue", "--method", "uce"], ["--resolution applies to --method sfd"]
    code, _, err = run_cli(capsys, "erase", *argv, "--resolution", "16", "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,needles", [
    (["--batch", "1"], ["--batch 1: an erase needs at least 2 rows"]),
    (["--batch", "0"], ["--batch must be >= 1"]),
    (["--batch", "8", "--method", "uce", "--override", "blue"], ["--batch applies to --method sfd"]),
], ids=["one-row-erase", "zero", "baseline"])
def test_batch_that_cannot_erase_is_refused(tiny_sd_dir, tmp_path, capsys, args, needles):
    stage = [] if "--method" in args else ["--single-stage", "--override", "blue"]
    code, _, err = run_cli(capsys, "erase", *stage, "--model", str(tiny_sd_dir), "--forget", "red", *args, "--out", str(tmp_path / "o"),
                           "--quiet")
    assert code == 2
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()
