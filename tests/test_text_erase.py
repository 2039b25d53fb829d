"""Text-to-image SFD on tiny random Stable-Diffusion components: prompts, conditions, erase/sample, pickle refusal."""

import json

import pytest
import torch

from conftest import build_tiny_sd
from sfd.pipelines import OneStepTextPipeline

from sfd.core.concepts import TextForgetSpec
from sfd.kernel.errors import SFDError
from sfd.core.models import check_weights_are_safe
from sfd.core.families import load_text_pipeline
from sfd.evaluators.prompt_sets import read_prompt_file
from sfd.core.prompts import FORGET_TEMPLATES, forget_prompt_pairs, mentions, replace_concept
from test_cli_class import assert_one_line_error, run_cli


# --------------------------------------------------------------------------------------- prompt rules

def test_override_replaces_concept_case_insensitively_and_whole_words_only():
    assert replace_concept("A RED circle, red and Red", "red", "blue") == "A blue circle, blue and blue"
    assert replace_concept("a bored redhead", "red", "blue") == "a bored redhead"
    assert replace_concept("Brad Pitt smiling, brad pitt again", "Brad Pitt", "a middle aged man") == \
        "a middle aged man smiling, a middle aged man again"
    assert mentions("Van Gogh style painting", "van gogh") and not mentions("vanilla", "van")


def test_forget_prompts_come_from_candidates_naming_the_concept_else_templates():
    cands = ["a red circle", "a blue square", "a photo of a Red cross"]
    assert forget_prompt_pairs(["red"], "green", cands) == [("a red circle", "a green circle"), ("a photo of a Red cross", "a photo of a green cross")]
    pairs = forget_prompt_pairs(["nudity"], "a person wearing clothes")
    assert len(pairs) == len(FORGET_TEMPLATES)
    assert ("a photo of nudity", "a photo of a person wearing clothes") in pairs


def test_spec_filters_retain_prompts_and_rejects_override_equal_to_concept():
    spec = TextForgetSpec.build(["red", "Circle"], "blue", ["a red square", "a green circle", "a green square"])
    assert spec.retain_prompts == ("a green square",)
    assert {p for p, _ in spec.pairs} >= {"red", "Circle", "a photo of red"}
    with pytest.raises(SFDError, match="equals the forget concept"):
        TextForgetSpec.build(["Red"], "red", ["x"])
    with pytest.raises(SFDError, match="no retain prompts"):
        TextForgetSpec.build(["red"], "blue", ["a red square"])


def test_text_conditions_put_override_in_teacher_and_negative_prompt_in_uncond():
    spec = TextForgetSpec.build(["red"], "blue", ["a green square"], candidates=["a red circle"], negative_prompt="blurry",
                                prompt_dropout=0.0)
    table = {}

    def encode(prompts):  # one distinct vector per prompt text
        for p in prompts:
            table.setdefault(p, float(len(table) + 1))
        return torch.tensor([table[p] for p in prompts]).view(-1, 1, 1).expand(-1, 2, 3).clone()

    conds = spec.encode(encode)
    batch = conds.sample(2, 3, torch.Generator().manual_seed(0), "cpu")
    fake = batch.fake.cond["encoder_hidden_states"][:, 0, 0].tolist()
    teacher = batch.teacher.cond["encoder_hidden_states"][:, 0, 0].tolist()
    assert fake[:2] == teacher[:2] == [table["a green square"]] * 2
    assert fake[2:] == [table["a red circle"]] * 3 and teacher[2:] == [table["a blue circle"]] * 3
    assert batch.fake.uncond["encoder_hidden_states"][:, 0, 0].tolist() == [table["blurry"]] * 5


def test_prompt_dropout_replaces_fake_training_conditions_with_empty_prompt():
    spec = TextForgetSpec.build(["red"], "blue", ["a green square"], prompt_dropout=0.5)
    conds = spec.encode(lambda ps: torch.tensor([0.0 if p == "" else 1.0 for p in ps]).view(-1, 1, 1))
    b = conds.sample(200, 0, torch.Generator().manual_seed(0), "cpu", for_fake_training=True)
    dropped = (b.fake.cond["encoder_hidden_states"] == 0).float().mean()
    assert 0.35 < dropped < 0.65
    rare = TextForgetSpec.build(["red"], "blue", ["a green square"], prompt_dropout=0.1).encode(
        lambda ps: torch.tensor([0.0 if p == "" else 1.0 for p in ps]).view(-1, 1, 1))
    few = (rare.sample(400, 0, torch.Generator().manual_seed(0), "cpu", for_fake_training=True).fake.cond["encoder_hidden_states"] == 0)
    assert 0.05 < few.float().mean() < 0.15  # the dropped rows are the empty prompt's, at the dropout rate
    assert (b.teacher.cond["encoder_hidden_states"] == 1).all()


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("# comment\na cat\n\na dog\n")
    (tmp_path / "p.csv").write_text("prompt,evaluation_seed\na cat,1\na dog,2\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": "a dog"}\n')
    for name in ("p.txt", "p.csv", "p.jsonl"):
        assert read_prompt_file(tmp_path / name) == ["a cat", "a dog"]
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(SFDError, match="no prompts"):
        read_prompt_file(tmp_path / "empty.txt")


# --------------------------------------------------------------------------------------- erase/sample

def test_erase_text_smoke_saves_reloads_and_samples(tiny_sd_dir, tmp_path, capsys):
    retain = tmp_path / "retain.txt"
    retain.write_text("a green square\na blue circle\n")
    out = tmp_path / "erased"
    code, stdout, err = run_cli(capsys, "erase", "--single-stage", "--model", str(tiny_sd_dir), "--forget", "red", "--forget", "Yellow",
                                "--override", "purple", "--retain-prompts", str(retain), "--out", str(out), "--steps", "2",
                                "--negative-prompt", "blurry", "--quiet")
    assert code == 0, err
    assert "erased red, Yellow" in stdout
    cfg = json.loads((out / "sfd_config.json").read_text())
    assert cfg["config"]["t_init"] == 625 and cfg["config"]["guidance_teacher"] == 4.5
    assert "a photo of purple" in cfg["concepts"]["override_prompts"]
    assert cfg["concepts"]["negative_prompt"] == "blurry"
    pipe = OneStepTextPipeline.from_pretrained(out, use_safetensors=True)
    assert pipe.config.t_init == 625
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    a = pipe(["a red circle", "a cat"], generator=gens(), output_type="pt").images
    b = pipe(["a red circle", "a cat"], generator=gens(), output_type="pt").images
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    assert "OneStepTextPipeline" in (out / "README.md").read_text()

    for model, extra in ((out, []), (tiny_sd_dir, ["--steps", "2", "--guidance", "3"])):
        dest = tmp_path / f"samples-{model.name}"
        code, _, err = run_cli(capsys, "sample", "--model", str(model), "--prompt", "a red circle", "--n", "3",
                               "--out", str(dest), "--quiet", *extra)
        assert code == 0, err
        assert len(list(dest.glob("*.png"))) == 3


def test_generator_at_step_zero_equals_teacher_one_step_x0(tiny_sd_dir):
    from sfd.pipelines.text_to_image import encode_prompts
    from sfd.core.concepts import TextForgetSpec
    from sfd.core.config import PRESETS
    from sfd.kernel.denoisers import Denoiser
    from sfd.core.trainer import SFDTrainer

    pipe = load_text_pipeline(str(tiny_sd_dir))
    teacher = Denoiser.from_unet_and_scheduler_config(pipe.unet, pipe.scheduler.config)
    spec = TextForgetSpec.build(["red"], "blue", ["a cat"])
    trainer = SFDTrainer(teacher, spec.encode(lambda p: encode_prompts(pipe.tokenizer, pipe.text_encoder, p)),
                         PRESETS["sd"].resolved(1.0))
    one_step = OneStepTextPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                   unet=trainer.ema_unet(), scheduler=pipe.scheduler, t_init=625)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = encode_prompts(pipe.tokenizer, pipe.text_encoder, ["a cat", "a dog"])
    s = trainer.sigma_init
    with torch.no_grad():
        expected = teacher(s * z, s, {"encoder_hidden_states": emb})
        got = one_step.denoiser(s * z, s, {"encoder_hidden_states": emb})
    assert torch.allclose(expected, got, atol=1e-5)


def test_v_prediction_teacher_erases(tmp_path, capsys):
    path = tmp_path / "v-sd"
    build_tiny_sd("v_prediction").save_pretrained(path, safe_serialization=True)
    code, _, err = run_cli(capsys, "erase", "--single-stage", "--model", str(path), "--forget", "red", "--override", "blue",
                           "--out", str(tmp_path / "out"), "--steps", "1", "--quiet")
    assert code == 0, err
    assert OneStepTextPipeline.from_pretrained(tmp_path / "out").denoiser.prediction_type == "v_prediction"


# --------------------------------------------------------------------------------------- safety

def test_pickled_weights_are_refused_unless_allowed(tmp_path, tiny_sd_dir, capsys):
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_sd_dir, pickled)
    for f in pickled.rglob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(SFDError, match="pickled weights"):
        check_weights_are_safe(pickled)
    check_weights_are_safe(pickled, allow_pickle=True)  # the explicit flag lifts the refusal
    code, _, err = run_cli(capsys, "erase", "--single-stage", "--model", str(pickled), "--forget", "red", "--override", "blue",
                           "--out", str(tmp_path / "o"), "--quiet")
    assert_one_line_error(code, err, "pickled", "--allow-pickle")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a checkpoint")
    code, _, err = run_cli(capsys, "erase", "--single-stage", "--model", str(ckpt), "--forget", "red", "--override", "blue",
                           "--out", str(tmp_path / "o"), "--quiet")
    assert_one_line_error(code, err, "pickled checkpoint")


def test_text_erase_needs_an_override_text(tiny_sd_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "erase", "--single-stage", "--model", str(tiny_sd_dir), "--forget", "red", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "--override")


def test_hub_id_offline_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "erase", "--single-stage", "--model", "someone/some-model", "--forget", "red", "--override", "blue",
                           "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "HF_HUB_OFFLINE")
