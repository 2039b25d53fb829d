"""The SDXL family on tiny random SDXL components (issue 16): conditioning, one-step pipeline, erase, stock recipe."""

import json

import pytest
import torch

from conftest import build_tiny_sdxl
from sfd.pipelines import OneStepTextXLPipeline
from sfd.pipelines.text_to_image_xl import encode_prompts_xl
from sfd.core.families import family_for
from test_cli_class import assert_one_line_error, run_cli

PROMPTS = ["a red circle", "a dog"]


def xl_images(path, prompts=PROMPTS, seeds=(1, 2)):
    pipe = OneStepTextXLPipeline.from_pretrained(path, use_safetensors=True)
    return pipe(list(prompts), generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt").images


def test_encoding_equals_the_stock_pipeline_including_the_zeroed_empty_prompt():
    p = build_tiny_sdxl()
    pe, ne, pooled, npooled = p.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True)
    mine = encode_prompts_xl([p.tokenizer, p.tokenizer_2], [p.text_encoder, p.text_encoder_2], PROMPTS, (16, 16))
    assert torch.equal(mine["encoder_hidden_states"], pe) and torch.equal(mine["added_cond_kwargs"]["text_embeds"], pooled)
    empty = encode_prompts_xl([p.tokenizer, p.tokenizer_2], [p.text_encoder, p.text_encoder_2], ["", ""], (16, 16))
    assert torch.equal(empty["encoder_hidden_states"], ne) and torch.equal(empty["added_cond_kwargs"]["text_embeds"], npooled)
    ids = p._get_add_time_ids((16, 16), (0, 0), (16, 16), dtype=pe.dtype, text_encoder_projection_dim=32)
    assert torch.equal(mine["added_cond_kwargs"]["time_ids"], ids.expand(2, -1))


def test_the_family_is_found_from_the_folder(tiny_sdxl_dir):
    assert family_for(str(tiny_sdxl_dir)).name == "sdxl"


@pytest.fixture(scope="module")
def xl_base(tmp_path_factory, tiny_sdxl_dir):
    from sfd.commands.cli import main

    out = tmp_path_factory.mktemp("xl") / "base"
    assert main(["distill", "--model", str(tiny_sdxl_dir), "--out", str(out), "--steps", "2", "--batch", "16", "--quiet"]) == 0
    return out


def test_distill_erase_reload_sample(tiny_sdxl_dir, xl_base, tmp_path, capsys):
    cfg = json.loads((xl_base / "sfd_config.json").read_text())
    assert cfg["family"] == "sdxl" and cfg["stage"] == "distill"
    assert xl_images(xl_base).shape == (2, 3, 16, 16)
    out0 = tmp_path / "zero"
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sdxl_dir), "--generator", str(xl_base), "--forget", "red",
                           "--override", "blue", "--negative-prompt", "blurry", "--out", str(out0), "--steps", "0", "--quiet")
    assert code == 0, err
    assert torch.equal(xl_images(out0), xl_images(xl_base))
    out = tmp_path / "erased"
    code, stdout, err = run_cli(capsys, "erase", "--model", str(tiny_sdxl_dir), "--generator", str(xl_base), "--forget", "red",
                                "--override", "blue", "--out", str(out), "--steps", "1", "--quiet")
    assert code == 0, err
    assert "erased red" in stdout
    assert not torch.equal(xl_images(out), xl_images(xl_base))
    code, _, err = run_cli(capsys, "sample", "--model", str(out), "--prompt", "a red circle", "--n", "2", "--out", str(tmp_path / "s"),
                           "--quiet")
    assert code == 0, err
    code, _, err = run_cli(capsys, "sample", "--model", str(tiny_sdxl_dir), "--prompt", "a red circle", "--n", "1", "--steps", "2",
                           "--negative-prompt", "blurry", "--out", str(tmp_path / "t"), "--quiet")
    assert code == 0, err
    assert "OneStepTextXLPipeline" in (out / "README.md").read_text()


def test_sdxl_erase_without_a_base_is_refused_like_sd(tiny_sdxl_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sdxl_dir), "--forget", "red", "--override", "blue",
                           "--out", str(tmp_path / "o"), "--quiet")
    assert_one_line_error(code, err, "sfd distill", "--generator")


def test_pooled_embeddings_and_time_ids_reach_every_role(tiny_sdxl_dir):
    """Each UNet call of a training step carries the pooled embedding and the time ids of its own prompts."""
    from sfd.core.config import preset
    from sfd.core.trainer import SFDTrainer

    family = family_for(str(tiny_sdxl_dir))
    pipe = family.load(str(tiny_sdxl_dir))
    spec = family.conditions(pipe, ["red"], "blue", retain_prompts=["a green square", "a blue cross"])
    cfg = preset("sd").replace(batch_retain=2, batch_forget=2, steps=1).resolved(1.0)
    trainer = SFDTrainer(family.teacher_denoiser(pipe), spec, cfg, latent_shape=family.latent_shape(pipe))
    seen = []
    for role in (trainer.teacher, trainer.fake, trainer.generator.denoiser):
        role.unet.register_forward_pre_hook(lambda m, a, k: seen.append(k), with_kwargs=True)
    trainer.step()
    assert len(seen) >= 4
    retain_e = spec.retain["encoder_hidden_states"]
    matched = 0
    for kw in seen:
        extra = kw["added_cond_kwargs"]
        assert extra["time_ids"].shape == (len(kw["encoder_hidden_states"]), 6) and (extra["time_ids"][:, 0] == 16).all()
        pooled = extra["text_embeds"]
        assert pooled.shape == (len(kw["encoder_hidden_states"]), 32)
        for e, p in zip(kw["encoder_hidden_states"], pooled):  # retain rows: the pooled embedding of the same prompt
            rows = [i for i in range(len(retain_e)) if torch.equal(e, retain_e[i])]
            if rows:
                matched += 1
                assert torch.equal(p, spec.retain["added_cond_kwargs"]["text_embeds"][rows[0]])
    assert matched >= 4


def test_time_ids_and_pooled_embeddings_change_the_generator_output(xl_base):
    pipe = OneStepTextXLPipeline.from_pretrained(xl_base)
    cond = pipe.encode_conditions(PROMPTS, "cpu")
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = pipe.generator(z, cond)
        other_ids = {**cond, "added_cond_kwargs": {**cond["added_cond_kwargs"], "time_ids": cond["added_cond_kwargs"]["time_ids"] * 2}}
        no_pool = {**cond, "added_cond_kwargs": {**cond["added_cond_kwargs"], "text_embeds": torch.zeros(2, 32)}}
        assert not torch.allclose(pipe.generator(z, other_ids), ref)
        assert not torch.allclose(pipe.generator(z, no_pool), ref)


def test_stock_sdxl_pipeline_recipe_reproduces_the_one_step_images(xl_base):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    one = OneStepTextXLPipeline.from_pretrained(xl_base)
    seeds = list(range(8))
    prompts = PROMPTS * 4
    ref = one(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt").images
    stock = StableDiffusionXLPipeline.from_pretrained(xl_base)
    stock.scheduler = EulerDiscreteScheduler.from_config(stock.scheduler.config, timestep_spacing="trailing")
    stock.set_progress_bar_config(disable=True)
    got = stock(prompts, sigmas=[one.sigma_init, 0.0], guidance_scale=1.0, height=16, width=16, output_type="pt",
                generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    assert float((got - ref).abs().max()) <= 1e-3
