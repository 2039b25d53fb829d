"""The shapes world: procedural data, the offline CLIP tokenizer, the CLIP evaluator, the teacher folder.

Tiny random models built from configs, except two light checks of the bundled checkpoints.
"""

from pathlib import Path

import pytest
import torch

from sfd.evaluators.clip import ClipEvaluator
from sfd.commands.worlds import shapes
from sfd.core.worlds.tokenizer import MODEL_MAX_LENGTH, VOCAB_SIZE, build_clip_tokenizer

BUNDLED = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes"
SENTENCES = [
    "a photo of a red circle",
    "A Drawing of a  YELLOW triangle on a grey background!",
    "it's 2024, don't panic: 3 purple crosses",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


@pytest.fixture(scope="module")
def tiny_clip():
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": VOCAB_SIZE, "width": 16, "heads": 2, "layers": 1},
    }
    return ClipEvaluator.from_config(cfg, shapes.CLIP_MEAN, shapes.CLIP_STD, seed=0)


def tiny_teacher_config() -> shapes.TeacherTrainConfig:
    return shapes.TeacherTrainConfig(block_out_channels=(32, 64), text_width=32, text_heads=2, text_layers=1, dataset_size=64)


def tiny_pipeline(tokenizer):
    cfg = tiny_teacher_config()
    torch.manual_seed(0)
    vae = shapes.build_vae(shapes.VaeTrainConfig(block_out_channels=(8, 8, 8)), scaling_factor=0.5)
    return shapes.make_pipeline(vae, shapes.build_text_encoder(cfg), tokenizer, shapes.build_unet(cfg))


# ------------------------------------------------------------------------------------------------- data

def test_render_is_reproducible_and_in_range():
    a = shapes.render(16, torch.Generator().manual_seed(3))
    b = shapes.render(16, torch.Generator().manual_seed(3))
    c = shapes.render(16, torch.Generator().manual_seed(4))
    assert a.images.shape == (16, 3, 32, 32) and a.images.dtype == torch.float32
    assert a.images.min() >= -1 and a.images.max() <= 1
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    for cap, col, shp in zip(a.captions, a.colour_ids, a.shape_ids):
        assert shapes.COLOURS[col] in cap and shapes.SHAPES[shp] in cap


def test_render_follows_requested_ids_and_draws_the_colour():
    n = len(shapes.COLOURS) * len(shapes.SHAPES)
    colour_ids = [c for c in range(len(shapes.COLOURS)) for _ in shapes.SHAPES]
    shape_ids = [s for _ in shapes.COLOURS for s in range(len(shapes.SHAPES))]
    batch = shapes.render(n, torch.Generator().manual_seed(0), colour_ids, shape_ids, template_ids=[0] * n)
    assert batch.colour_ids.tolist() == colour_ids and batch.shape_ids.tolist() == shape_ids
    assert batch.captions[0] == f"a {shapes.COLOURS[0]} {shapes.SHAPES[0]}"
    x = shapes.to_unit(batch.images)
    # The pixel farthest from the grey background carries the shape's colour.
    grey_dist = (x - x.mean(1, keepdim=True)).abs().sum(1).flatten(1)
    idx = grey_dist.argmax(1)
    fg = x.flatten(2)[torch.arange(n), :, idx]
    palette = torch.tensor([shapes.RGB[c] for c in shapes.COLOURS])
    assert torch.cdist(fg, palette).argmin(1).tolist() == colour_ids


def test_render_rejects_bad_ids():
    with pytest.raises(ValueError, match="ids"):
        shapes.render(2, torch.Generator().manual_seed(0), colour_ids=[0, len(shapes.COLOURS)])
    with pytest.raises(ValueError, match="ids"):
        shapes.render(3, torch.Generator().manual_seed(0), shape_ids=[0, 1])


# -------------------------------------------------------------------------------------------- tokenizer

def test_tokenizer_ids_equal_open_clip(tokenizer):
    import open_clip

    ref = open_clip.tokenize(SENTENCES, context_length=MODEL_MAX_LENGTH)
    ours = tokenizer(SENTENCES, padding="max_length", max_length=MODEL_MAX_LENGTH, return_tensors="pt").input_ids
    for r, o in zip(ref, ours):
        n = r.tolist().index(49407) + 1  # open_clip pads with 0 after end-of-text, SD's tokenizer with end-of-text
        assert o[:n].tolist() == r[:n].tolist()
        assert (o[n:] == 49407).all()
    assert tokenizer.model_max_length == 77 and len(tokenizer) == VOCAB_SIZE
    assert tokenizer.bos_token == "<|startoftext|>" and tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"


def test_tokenizer_folder_round_trip(tmp_path):
    from transformers import CLIPTokenizer

    build_clip_tokenizer(tmp_path / "tok")
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "tok").iterdir()}
    tok = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.model_max_length == 77 and tok.pad_token_id == 49407
    assert tok("a red circle").input_ids == [49406, 320, 736, 7117, 49407]


# -------------------------------------------------------------------------------------------------- CLIP

def test_clip_evaluator_api(tiny_clip):
    x = shapes.to_unit(shapes.render(6, torch.Generator().manual_seed(0)).images)
    img, txt = tiny_clip.encode_images(x), tiny_clip.encode_texts(["a red circle", "a blue square"])
    assert img.shape == (6, 16) and txt.shape == (2, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(6), atol=1e-5)
    score = tiny_clip.clip_score(x, "a red circle")
    assert score.shape == (6,) and (score >= 0).all() and (score <= 100).all()
    assert tiny_clip.clip_score(x, [f"prompt {i}" for i in range(6)]).shape == (6,)
    with pytest.raises(ValueError, match="prompts"):
        tiny_clip.clip_score(x, ["a", "b"])
    zs = tiny_clip.zero_shot(x, shapes.COLOURS, (shapes.COLOUR_PROMPT, "a {} thing"))
    assert zs.probs.shape == (6, len(shapes.COLOURS)) and torch.allclose(zs.probs.sum(-1), torch.ones(6))
    assert torch.equal(zs.pred, zs.probs.argmax(-1))
    det = tiny_clip.detect(x, "red", ["red", "blue", "green"], (shapes.COLOUR_PROMPT,))
    assert det.detected.dtype == torch.bool and det.detected.shape == (6,) and det.score.shape == (6,)
    ref = tiny_clip.zero_shot(x, ["red", "blue", "green"], (shapes.COLOUR_PROMPT,))
    assert torch.equal(det.detected, ref.pred == 0)
    # Images of another size are resized to the model's input.
    assert tiny_clip.encode_images(torch.rand(2, 3, 64, 64)).shape == (2, 16)
    with pytest.raises(ValueError, match="images"):
        tiny_clip.encode_images(torch.rand(2, 1, 32, 32))


def test_clip_save_and_load_round_trip(tiny_clip, tmp_path):
    tiny_clip.extra = {"note": "tiny"}
    tiny_clip.save_pretrained(tmp_path / "clip", dtype=torch.float32)
    loaded = ClipEvaluator.from_pretrained(tmp_path / "clip")
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(loaded.encode_images(x), tiny_clip.encode_images(x), atol=1e-6)
    assert torch.allclose(loaded.encode_texts(["a red circle"]), tiny_clip.encode_texts(["a red circle"]), atol=1e-6)
    assert loaded.extra == {"note": "tiny"} and loaded.model_cfg == tiny_clip.model_cfg
    assert torch.equal(loaded.mean, tiny_clip.mean) and torch.equal(loaded.std, tiny_clip.std)
    # open_clip itself can rebuild it from the folder, offline.
    import open_clip

    assert isinstance(open_clip.create_model(f"local-dir:{tmp_path / 'clip'}"), open_clip.CLIP)


# ----------------------------------------------------------------------------------------------- teacher

def test_tiny_teacher_folder_loads_with_stable_diffusion_pipeline(tokenizer, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = tiny_pipeline(tokenizer)
    shapes.save_teacher(pipe, tmp_path / "teacher", shapes.world_meta())
    assert pipe.unet.dtype == torch.float32  # the caller's pipeline is left as it was
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "teacher")
    loaded.set_progress_bar_config(disable=True)
    out = loaded(["a red circle", "a blue square"], height=32, width=32, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    meta = __import__("json").loads((tmp_path / "teacher" / "sfd_world.json").read_text())
    assert meta["world"] == "shapes" and meta["colours"] == list(shapes.COLOURS)
    assert not any((tmp_path / "teacher").rglob("*.bin"))


def test_evaluate_teacher_reports_every_prompt(tokenizer, tiny_clip):
    res = shapes.evaluate_teacher(tiny_pipeline(tokenizer), tiny_clip, n_per_prompt=1, num_inference_steps=1)
    assert len(res["per_prompt"]) == len(shapes.COLOURS) * len(shapes.SHAPES)
    assert 0 <= res["colour_min"] <= res["colour_mean"] <= 1 and 0 <= res["shape_min"] <= res["shape_mean"] <= 1


def test_training_functions_run(tokenizer):
    """Two steps of each stage: the code paths of train_world, not its quality."""
    clip, cstats = shapes.train_clip(shapes.ClipTrainConfig(steps=2, batch_size=8, vision_width=32, vision_layers=1, text_width=16, text_layers=1), progress=False)
    assert cstats["params"] > 0 and set(shapes.clip_accuracy(clip, n=8)) >= {"colour", "shape"}
    vae, vstats = shapes.train_vae(shapes.VaeTrainConfig(steps=2, batch_size=4, block_out_channels=(8, 8, 8), stats_images=8), progress=False)
    assert vae.config.scaling_factor == pytest.approx(1 / vstats["latent_std"])
    small = shapes.TeacherTrainConfig(steps=2, batch_size=4, dataset_size=8, block_out_channels=(32, 64), text_width=32, text_heads=2,
                                      text_layers=1)
    unet, [te], tstats = shapes.train_teacher(vae, tokenizer, small, progress=False)
    assert unet.config.cross_attention_dim == te.config.hidden_size == 32 and tstats["seconds_per_step"] > 0
    # The SDXL-structured teacher: two encoders of half the width, pooled embedding and time ids, zeros for "".
    unet, encoders, tstats = shapes.train_teacher(vae, tokenizer, small, progress=False, family="sdxl")
    assert [e.config.hidden_size for e in encoders] == [16, 16] and unet.config.addition_embed_type == "text_time"
    pipe = shapes.TEACHER_PARTS["sdxl"].pipeline(vae, encoders, tokenizer, unet)
    images = pipe(["a red circle"], height=32, width=32, num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 3, 32, 32)


def test_flow_loss_is_zero_for_the_exact_velocity():
    """The rectified-flow objective's convention (x_t = (1 - t) x0 + t eps, v = eps - x0 at timestep 1000 t) is the
    one FlowDenoiser inverts (x0 = x_t - t v): a network that returns (x_t - x0) / t has zero loss, and one that is
    off by a constant does not."""
    from types import SimpleNamespace

    z0 = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def exact(hidden_states, timestep, **cond):
        return SimpleNamespace(sample=(hidden_states - z0) / (timestep / 1000).view(-1, 1, 1, 1))

    cfg = shapes.TeacherTrainConfig()
    assert float(shapes.flow_loss(exact, z0, {}, torch.Generator().manual_seed(1), cfg)) < 1e-8
    off = lambda **kw: SimpleNamespace(sample=exact(**kw).sample + 0.5)  # noqa: E731
    assert float(shapes.flow_loss(off, z0, {}, torch.Generator().manual_seed(1), cfg)) == pytest.approx(0.25, rel=1e-4)


def test_sd3_world_teacher_trains_saves_and_samples_as_trained(tokenizer, tmp_path):
    """The SD3-structured teacher: an SD3Transformer2DModel and two CLIP encoders, no T5 (zeros at the world's short
    max_sequence_length). Saved as a StableDiffusion3Pipeline folder, the SD3 family loads it with that length, encodes
    prompts to the joint sequence it was trained on, and samples it as the stock pipeline does with that length."""
    from diffusers import StableDiffusion3Pipeline

    from sfd.core.families import family_for
    from sfd.core.worlds.tokenizer import build_clip_tokenizer

    vae, _ = shapes.train_vae(shapes.VaeTrainConfig(steps=1, batch_size=2, block_out_channels=(8, 8, 8), stats_images=4), progress=False)
    parts = shapes.TEACHER_PARTS["sd3"]
    tok = build_clip_tokenizer(model_max_length=parts.text_length)
    small = shapes.TeacherTrainConfig(steps=2, batch_size=4, dataset_size=8, text_width=32, text_heads=2, text_layers=1)
    net, encoders, stats = shapes.train_teacher(vae, tok, small, progress=False, family="sd3")
    assert type(net).__name__ == "SD3Transformer2DModel" and stats["family"] == "sd3"
    assert net.config.joint_attention_dim == sum(e.config.hidden_size for e in encoders) == 32
    shapes.save_teacher(parts.pipeline(vae, encoders, tok, net), tmp_path / "teacher",
                        shapes.world_meta(2, 3.0, family="sd3", **parts.extra_meta))
    family = family_for(str(tmp_path / "teacher"))
    pipe = family.load(str(tmp_path / "teacher"))
    assert family.name == "sd3" and pipe.text_encoder_3 is None
    cond = family.encode(pipe, ["a red circle"])
    assert cond["encoder_hidden_states"].shape[1] == parts.text_length + parts.max_sequence_length
    assert family.sampler_kwargs(pipe) == {"max_sequence_length": parts.max_sequence_length}
    ours = family.sample(pipe, ["a red circle"], [torch.Generator().manual_seed(3)], steps=2, guidance=3.0)
    stock = StableDiffusion3Pipeline.from_pretrained(tmp_path / "teacher", text_encoder_3=None, tokenizer_3=None)
    ref = stock(["a red circle"], height=32, width=32, num_inference_steps=2, guidance_scale=3.0, output_type="pt",
                generator=torch.Generator().manual_seed(3), max_sequence_length=parts.max_sequence_length).images
    assert ours.shape == (1, 3, 32, 32) and torch.allclose(ours, ref, atol=1e-5)


def test_sd_schedule_puts_sigma_2_5_at_t_625():
    from sfd.kernel.schedules import DiscreteVPSchedule

    assert float(DiscreteVPSchedule.from_scheduler_config(shapes.scheduler_config()).sigma_at(625)) == pytest.approx(2.5, abs=0.05)


# ------------------------------------------------------------------------------------ bundled checkpoints

@pytest.mark.skipif(not (BUNDLED / "teacher" / "model_index.json").is_file(), reason="bundled shapes teacher not built")
def test_bundled_teacher_generates():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(BUNDLED / "teacher")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a red circle", "a blue triangle"], height=32, width=32, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


@pytest.mark.skipif(not (BUNDLED / "clip" / "open_clip_config.json").is_file(), reason="bundled shapes CLIP not built")
def test_bundled_clip_knows_colours():
    clip = ClipEvaluator.from_pretrained()  # the default path is the bundled one
    batch = shapes.render(40, torch.Generator().manual_seed(2024))
    pred = clip.zero_shot(shapes.to_unit(batch.images), shapes.COLOURS, (shapes.COLOUR_PROMPT,)).pred
    assert (pred == batch.colour_ids).float().mean() >= 0.9
