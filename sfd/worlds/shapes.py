"""The shapes world: procedural 32x32 images of one coloured shape, with captions ("a red circle").

It stands in for Stable Diffusion offline (DESIGN.md section 4): a tiny CLIP trained with open_clip is
the evaluator, and a tiny latent text-to-image model (AutoencoderKL + UNet2DConditionModel + CLIPTextModel
+ the real CLIP tokenizer) is saved as a standard `StableDiffusionPipeline` folder, so the erasure code
runs on it exactly as on SD.

This module holds the data (rendering and captions), the training of the world's three models
(`train_world`) and the evaluation of a teacher (`evaluate_teacher`).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sfd.ema import EMA
from sfd.schedules import DiscreteVPSchedule

from .tokenizer import MODEL_MAX_LENGTH

IMAGE_SIZE = 32
COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle", "cross")
# Every template names colour then shape with "a" before the colour, so replacing a concept word by
# another is a plain string substitution (what erasure's override prompts do).
TEMPLATES = (
    "a {colour} {shape}",
    "a photo of a {colour} {shape}",
    "a drawing of a {colour} {shape}",
    "a {colour} {shape} on a grey background",
    "a picture of a {colour} {shape}",
    "a simple {colour} {shape}",
)
# Saturated RGB in [0, 1], far apart in hue so a 32-pixel CLIP and a tiny teacher can tell them apart.
RGB = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.13, 0.68, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.12),
    "purple": (0.56, 0.20, 0.76),
}
GREY_RANGE = (0.3, 0.7)  # background level; keeps every colour in contrast with it
SIZE_RANGE = (6.0, 11.0)  # half-extent of a shape in pixels
COLOUR_JITTER = 0.05
SUPERSAMPLE = 4  # anti-aliasing: coverage is averaged over 4x4 sub-pixels


class ShapesBatch(NamedTuple):
    images: torch.Tensor  # (n, 3, 32, 32) float32 in [-1, 1]
    captions: list[str]
    colour_ids: torch.Tensor  # (n,) int64 into COLOURS
    shape_ids: torch.Tensor  # (n,) int64 into SHAPES


def caption(colour: str | int, shape: str | int, template: str | int = 0) -> str:
    """The caption of one image; indices refer to COLOURS, SHAPES and TEMPLATES."""
    colour = COLOURS[colour] if isinstance(colour, int) else colour
    shape = SHAPES[shape] if isinstance(shape, int) else shape
    template = TEMPLATES[template] if isinstance(template, int) else template
    return template.format(colour=colour, shape=shape)


def next_value(concept: str) -> str:
    """The next colour or shape after `concept` (red -> green, circle -> square, ...): the worlds' fixed,
    reproducible override of a benchmark's erase."""
    values = COLOURS if concept in COLOURS else SHAPES
    return values[(values.index(concept) + 1) % len(values)]


def all_prompts(template: int = 0) -> list[tuple[int, int, str]]:
    """(colour id, shape id, prompt) for every colour x shape pair, in a fixed order."""
    return [(c, s, caption(c, s, template)) for c in range(len(COLOURS)) for s in range(len(SHAPES))]


def _coverage(shape_ids: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Fraction of each pixel covered by the shape, (n, 1, 32, 32), from inside-tests on a finer grid."""
    fine = IMAGE_SIZE * SUPERSAMPLE
    u = (torch.arange(fine, dtype=torch.float32) + 0.5) / SUPERSAMPLE
    x = u.view(1, 1, fine) - cx.view(-1, 1, 1)
    y = u.view(1, fine, 1) - cy.view(-1, 1, 1)
    r = size.view(-1, 1, 1)
    circle = x**2 + y**2 <= r**2
    square = (x.abs() <= 0.85 * r) & (y.abs() <= 0.85 * r)
    # Upright equilateral triangle, circumradius 1.2 r centred on (cx, cy): depth below the apex d in
    # [0, 1.5 R] and half-width d / sqrt(3) at that depth.
    big_r = 1.2 * r
    depth = y + big_r
    triangle = (depth >= 0) & (depth <= 1.5 * big_r) & (x.abs() <= depth / math.sqrt(3))
    arm = 0.35 * r
    cross = ((x.abs() <= r) & (y.abs() <= arm)) | ((y.abs() <= r) & (x.abs() <= arm))
    masks = torch.stack([circle, square, triangle, cross], 1).float()  # order of SHAPES
    mask = masks[torch.arange(len(shape_ids)), shape_ids].unsqueeze(1)
    return F.avg_pool2d(mask, SUPERSAMPLE)


def render(
    n: int,
    generator: torch.Generator,
    colour_ids: torch.Tensor | Sequence[int] | None = None,
    shape_ids: torch.Tensor | Sequence[int] | None = None,
    template_ids: torch.Tensor | Sequence[int] | None = None,
) -> ShapesBatch:
    """n random images with captions; colours, shapes and templates are uniform unless given.

    Everything random comes from `generator`, so the same seed gives the same batch.
    """
    def ids(given, k: int) -> torch.Tensor:
        if given is None:
            return torch.randint(k, (n,), generator=generator)
        t = torch.as_tensor(given, dtype=torch.long).reshape(-1)
        if t.numel() != n or t.min() < 0 or t.max() >= k:
            raise ValueError(f"expected {n} ids in [0, {k - 1}], got {t.tolist()}")
        return t

    colour_ids, shape_ids, template_ids = ids(colour_ids, len(COLOURS)), ids(shape_ids, len(SHAPES)), ids(template_ids, len(TEMPLATES))
    size = SIZE_RANGE[0] + (SIZE_RANGE[1] - SIZE_RANGE[0]) * torch.rand(n, generator=generator)
    margin = 1.2 * size + 1.0  # the triangle's apex reaches 1.2 r from the centre, the widest extent
    cx = margin + (IMAGE_SIZE - 2 * margin) * torch.rand(n, generator=generator)
    cy = margin + (IMAGE_SIZE - 2 * margin) * torch.rand(n, generator=generator)
    grey = GREY_RANGE[0] + (GREY_RANGE[1] - GREY_RANGE[0]) * torch.rand(n, generator=generator)
    palette = torch.tensor([RGB[c] for c in COLOURS])
    jitter = COLOUR_JITTER * (2 * torch.rand(n, 3, generator=generator) - 1)
    fg = (palette[colour_ids] + jitter).clamp(0, 1).view(n, 3, 1, 1)
    bg = grey.view(n, 1, 1, 1)
    cover = _coverage(shape_ids, cx, cy, size)
    images = (bg * (1 - cover) + fg * cover) * 2 - 1
    captions = [caption(int(c), int(s), int(t)) for c, s, t in zip(colour_ids, shape_ids, template_ids)]
    return ShapesBatch(images, captions, colour_ids, shape_ids)


# ------------------------------------------------------------------------------------ evaluation prompts

COLOUR_PROMPT = "a photo of a {} shape"  # zero-shot colour: one label per colour
SHAPE_PROMPT = "a photo of a {}"  # zero-shot shape: one label per shape
# CLIP also sees captions naming one attribute, so that the prompts above mean something to it.
COLOUR_ONLY_TEMPLATES = ("a {colour} shape", "a photo of a {colour} shape", "a drawing of a {colour} shape")
SHAPE_ONLY_TEMPLATES = ("a {shape}", "a photo of a {shape}", "a drawing of a {shape}")

DEFAULT_NUM_INFERENCE_STEPS = 20
DEFAULT_GUIDANCE_SCALE = 5.0


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (what evaluators take)."""
    return (images.float() / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def clip_accuracy(clip, n: int = 1000, seed: int = 12345) -> dict:
    """Zero-shot accuracy of a CLIP evaluator on n fresh procedural images.

    'colour'/'shape' use one-attribute prompts (COLOUR_PROMPT, SHAPE_PROMPT); 'joint_*' classify among the
    full "a photo of a {colour} {shape}" prompts and read off each attribute of the winner.
    """
    batch = render(n, torch.Generator().manual_seed(seed))
    x = to_unit(batch.images)
    colour = clip.zero_shot(x, COLOURS, (COLOUR_PROMPT,)).pred
    shape = clip.zero_shot(x, SHAPES, (SHAPE_PROMPT,)).pred
    joint = clip.zero_shot(x, [f"{c} {s}" for c in COLOURS for s in SHAPES], ("a photo of a {}",)).pred
    acc = lambda pred, ref: float((pred == ref).float().mean())  # noqa: E731
    return {
        "n": n, "seed": seed,
        "colour": acc(colour, batch.colour_ids), "shape": acc(shape, batch.shape_ids),
        "joint_colour": acc(joint // len(SHAPES), batch.colour_ids), "joint_shape": acc(joint % len(SHAPES), batch.shape_ids),
        "colour_prompt": COLOUR_PROMPT, "shape_prompt": SHAPE_PROMPT,
    }


@torch.no_grad()
def evaluate_teacher(
    pipe,
    clip,
    n_per_prompt: int = 32,
    seed: int = 0,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    batch_size: int = 128,
) -> dict:
    """Per colour x shape prompt ("a {colour} {shape}"), how often the tiny CLIP sees the named colour and shape.

    Image k of prompt p uses its own generator seeded seed * 10**6 + p * 1000 + k, so any subset of the
    grid can be regenerated alone. Colour and shape are zero-shot votes among all COLOURS / SHAPES.
    """
    from ..families import family_of_pipeline

    prompts = all_prompts()
    extra = family_of_pipeline(type(pipe).__name__).sampler_kwargs(pipe)
    jobs = [(p, k) for p in range(len(prompts)) for k in range(n_per_prompt)]
    colour_ok = torch.zeros(len(prompts), n_per_prompt)
    shape_ok = torch.zeros(len(prompts), n_per_prompt)
    pipe.set_progress_bar_config(disable=True)
    t0 = time.perf_counter()
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i : i + batch_size]
        gens = [torch.Generator().manual_seed(seed * 10**6 + p * 1000 + k) for p, k in chunk]
        images = pipe(
            prompt=[prompts[p][2] for p, _ in chunk], height=IMAGE_SIZE, width=IMAGE_SIZE,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=gens, output_type="pt", **extra,
        ).images
        colour = clip.zero_shot(images, COLOURS, (COLOUR_PROMPT,)).pred
        shape = clip.zero_shot(images, SHAPES, (SHAPE_PROMPT,)).pred
        for j, (p, k) in enumerate(chunk):
            colour_ok[p, k] = float(colour[j] == prompts[p][0])
            shape_ok[p, k] = float(shape[j] == prompts[p][1])
    per_prompt = {
        prompt: {"colour": float(colour_ok[p].mean()), "shape": float(shape_ok[p].mean()),
                 "both": float((colour_ok[p] * shape_ok[p]).mean())}
        for p, (_, _, prompt) in enumerate(prompts)
    }
    col, shp = colour_ok.mean(1), shape_ok.mean(1)
    return {
        "per_prompt": per_prompt,
        "colour_min": float(col.min()), "colour_mean": float(col.mean()),
        "shape_min": float(shp.min()), "shape_mean": float(shp.mean()),
        "n_per_prompt": n_per_prompt, "seed": seed, "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale, "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------- CLIP

@dataclass(frozen=True)
class ClipTrainConfig:
    steps: int = 800
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 50
    partial_captions: float = 0.3  # share of captions naming only the colour or only the shape
    embed_dim: int = 64
    vision_width: int = 96
    vision_layers: int = 3
    patch_size: int = 4
    text_width: int = 64
    text_layers: int = 2
    context_length: int = 16
    seed: int = 0


CLIP_MEAN = (0.5, 0.5, 0.5)  # images in [0, 1] -> about [-2, 2]; the world's pixels need no dataset statistics
CLIP_STD = (0.25, 0.25, 0.25)


def clip_model_cfg(cfg: ClipTrainConfig = ClipTrainConfig()) -> dict:
    """open_clip `CLIP(**model_cfg)` arguments: a ViT on 32-pixel images and a short-context text tower."""
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": cfg.patch_size, "width": cfg.vision_width,
                       "layers": cfg.vision_layers, "head_width": 32, "mlp_ratio": 4.0},
        "text_cfg": {"context_length": cfg.context_length, "vocab_size": 49408, "width": cfg.text_width,
                     "heads": max(1, cfg.text_width // 16), "layers": cfg.text_layers},
    }


def _clip_captions(batch: ShapesBatch, partial: float, gen: torch.Generator) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Training captions and the attributes they name (-1 = not named)."""
    n = len(batch.captions)
    u = torch.rand(n, generator=gen)
    pick = torch.randint(len(COLOUR_ONLY_TEMPLATES), (n,), generator=gen)
    named_colour, named_shape = batch.colour_ids.clone(), batch.shape_ids.clone()
    captions = list(batch.captions)
    for i in range(n):
        if u[i] < partial / 2:
            captions[i] = COLOUR_ONLY_TEMPLATES[pick[i]].format(colour=COLOURS[batch.colour_ids[i]])
            named_shape[i] = -1
        elif u[i] < partial:
            captions[i] = SHAPE_ONLY_TEMPLATES[pick[i]].format(shape=SHAPES[batch.shape_ids[i]])
            named_colour[i] = -1
    return captions, named_colour, named_shape


def _clip_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random slight blur and noise on [0, 1] images: generated images are never as crisp as renders."""
    n = len(x)
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None]) / 16
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3).contiguous(), groups=3)
    amount = torch.rand(n, 1, 1, 1, generator=gen) * (torch.rand(n, 1, 1, 1, generator=gen) < 0.5)
    x = x + amount * (blurred - x)
    x = x + 0.03 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def train_clip(cfg: ClipTrainConfig = ClipTrainConfig(), progress: bool = True):
    """Contrastive training on fresh renders; returns (ClipEvaluator, stats).

    Several captions in a batch can describe one image (same colour and shape, or a one-attribute
    caption), so the InfoNCE targets are soft: uniform over every caption consistent with the image
    (and every image consistent with the caption), instead of CLIP's one-hot diagonal.
    """
    from evaluators.clip import ClipEvaluator

    clip = ClipEvaluator.from_config(clip_model_cfg(cfg), CLIP_MEAN, CLIP_STD, seed=cfg.seed)
    model = clip.model.train().requires_grad_(True)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.steps + 1), desc="clip", disable=not progress)
    for step in bar:
        for g in opt.param_groups:  # linear warm-up, cosine decay
            g["lr"] = cfg.lr * min(1.0, step / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        batch = render(cfg.batch_size, gen)
        captions, named_colour, named_shape = _clip_captions(batch, cfg.partial_captions, gen)
        img = clip.image_features(_clip_augment(to_unit(batch.images), gen))
        txt = clip.text_features(captions)
        logits = model.logit_scale.exp() * img @ txt.T  # (images, captions)
        match = ((named_colour[None] < 0) | (named_colour[None] == batch.colour_ids[:, None])) & (
            (named_shape[None] < 0) | (named_shape[None] == batch.shape_ids[:, None]))
        t = match.float()
        loss = 0.5 * (F.cross_entropy(logits, t / t.sum(1, keepdim=True)) + F.cross_entropy(logits.T, t.T / t.T.sum(1, keepdim=True)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - t0
    model.eval().requires_grad_(False)
    stats = {"train_seconds": seconds, "params": sum(p.numel() for p in model.parameters()), "final_loss": loss.item(), **asdict(cfg)}
    return clip, stats


# ----------------------------------------------------------------------------------------------- VAE

@dataclass(frozen=True)
class VaeTrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    kl_weight: float = 1e-3  # per latent element, against the per-pixel MSE
    block_out_channels: tuple[int, ...] = (16, 32, 32)  # 3 blocks: 32x32 -> 8x8
    latent_channels: int = 4
    norm_num_groups: int = 8
    stats_images: int = 2048  # for the latent std (scaling_factor) and the reconstruction PSNR
    seed: int = 0


def build_vae(cfg: VaeTrainConfig = VaeTrainConfig(), scaling_factor: float = 1.0):
    """A small AutoencoderKL; no attention in the mid block, to keep decoding cheap next to a UNet call."""
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels, layers_per_block=1, norm_num_groups=cfg.norm_num_groups,
        sample_size=IMAGE_SIZE, scaling_factor=scaling_factor, mid_block_add_attention=False,
    )


def train_vae(cfg: VaeTrainConfig = VaeTrainConfig(), progress: bool = True):
    """MSE + small KL on fresh renders; returns (vae with scaling_factor = 1 / latent std, stats)."""
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg).train()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.steps + 1), desc="vae", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, step / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        x = render(cfg.batch_size, gen).images
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / (post.mean[0].numel())
        loss = mse + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0:
            bar.set_postfix(mse=f"{mse.item():.5f}", kl=f"{kl.item():.2f}")
    seconds = time.perf_counter() - t0
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        x = render(cfg.stats_images, torch.Generator().manual_seed(cfg.seed + 777)).images
        z, rec = [], []
        for chunk in x.split(256):
            post = vae.encode(chunk).latent_dist
            z.append(post.sample(generator=gen))
            rec.append(vae.decode(post.mean).sample)
        z, rec = torch.cat(z), torch.cat(rec).clamp(-1, 1)
        std = float(z.std())
        psnr = float(10 * torch.log10(4 / ((rec - x) ** 2).mean((1, 2, 3))).mean())  # peak-to-peak 2
    vae.register_to_config(scaling_factor=1.0 / std)
    stats = {"train_seconds": seconds, "params": sum(p.numel() for p in vae.parameters()), "latent_std": std,
             "latent_mean": float(z.mean()), "scaling_factor": 1.0 / std, "recon_psnr_db": psnr, **asdict(cfg)}
    return vae, stats


# -------------------------------------------------------------------------------- teacher (UNet + text)

@dataclass(frozen=True)
class TeacherTrainConfig:
    # The shortest schedule (in steps of 500) meeting the world's target with the default sampler: every
    # colour x shape prompt shows its colour in >= 80% and its shape in >= 60% of images (1500: shape min 59%).
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1  # captions replaced by "" so classifier-free guidance has an unconditional model
    min_snr_gamma: float = 5.0  # Min-SNR loss weighting (Hang et al. 2023): faster convergence at equal cost
    dataset_size: int = 16384  # renders encoded once; latents are re-sampled from their posteriors each step
    block_out_channels: tuple[int, ...] = (64, 128)
    cross_attention: tuple[bool, ...] = (False, True)  # per resolution, highest first: attention only at 4x4
    layers_per_block: int = 1
    attention_head_dim: int = 8
    # Also add an attention-pooled text embedding to the time embedding (diffusers' addition_embed_type
    # "text"), so every resnet sees the caption, not only the 4x4 cross-attention: learns colour and
    # shape far sooner at equal cost. It reads encoder_hidden_states, so SD pipelines run it unchanged.
    pooled_text: bool = True
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    seed: int = 0


def scheduler_config() -> dict:
    """Stable Diffusion's training schedule (t = 625 gives sigma ~ 2.5, as in SD); 'trailing' so that
    few-step sampling starts from the last (noisiest) timestep."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1)


def build_unet(cfg: TeacherTrainConfig = TeacherTrainConfig(), latent_channels: int = 4):
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.cross_attention))
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        down_block_types=down, up_block_types=up, cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=32,
        addition_embed_type="text" if cfg.pooled_text else None, addition_embed_type_num_heads=4,
    )


def build_text_encoder(cfg: TeacherTrainConfig = TeacherTrainConfig()):
    """A tiny CLIPTextModel with CLIP's vocabulary and SD's 77 positions (the pipeline pads to 77)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import VOCAB_SIZE

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=77,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=cfg.text_width,
    ))


def make_pipeline(vae, text_encoder, tokenizer, unet):
    """Assemble a StableDiffusionPipeline with the world's default sampler (DPM-Solver++ 2M, SD's betas)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=DPMSolverMultistepScheduler(**scheduler_config()),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@torch.no_grad()
def _encode_dataset(vae, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(posterior mean, posterior std, colour ids, shape ids) of n fresh renders."""
    batch = render(n, torch.Generator().manual_seed(seed))
    means, stds = [], []
    for chunk in batch.images.split(512):
        post = vae.encode(chunk).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds), batch.colour_ids, batch.shape_ids


@functools.lru_cache(maxsize=1)
def _sd_alphas_cumprod() -> torch.Tensor:
    """abar_t = 1 / (1 + sigma_t^2) of SD's training schedule (computed once, not every training step)."""
    return (1 + DiscreteVPSchedule.from_scheduler_config(scheduler_config()).sigmas ** 2).reciprocal()


def epsilon_loss(unet, z0: torch.Tensor, cond: dict, gen: torch.Generator, cfg: TeacherTrainConfig) -> torch.Tensor:
    """Stable Diffusion's objective: epsilon prediction at a uniform training timestep of SD's VP schedule, with
    Min-SNR weights (cfg.min_snr_gamma)."""
    abar = _sd_alphas_cumprod()
    t = torch.randint(len(abar), (len(z0),), generator=gen)
    eps = torch.randn(z0.shape, generator=gen)
    a = abar[t].view(-1, 1, 1, 1)
    pred = unet(a.sqrt() * z0 + (1 - a).sqrt() * eps, t, **cond).sample
    snr = abar[t] / (1 - abar[t])
    weight = snr.clamp(max=cfg.min_snr_gamma) / snr
    return (weight * ((pred - eps) ** 2).mean((1, 2, 3))).mean()


def flow_loss(transformer, z0: torch.Tensor, cond: dict, gen: torch.Generator, cfg: TeacherTrainConfig) -> torch.Tensor:
    """SD3's rectified-flow objective: x_t = (1 - t) x0 + t eps, the network predicts v = eps - x0 at diffusers'
    timestep 1000 t, with t drawn logit-normal(0, 1) (SD3's default density; Esser et al. 2024, section 3.1)."""
    t = torch.sigmoid(torch.randn(len(z0), generator=gen))
    eps = torch.randn(z0.shape, generator=gen)
    tt = t.view(-1, 1, 1, 1)
    pred = transformer(hidden_states=(1 - tt) * z0 + tt * eps, timestep=1000 * t, **cond).sample
    return ((pred - (eps - z0)) ** 2).mean()


class _TeacherParts:
    """What every teacher structure of the world sets (TEACHER_PARTS); SD's values unless a family overrides them."""

    loss = staticmethod(epsilon_loss)
    default_steps: int | None = None  # training steps when not TeacherTrainConfig's
    text_length = MODEL_MAX_LENGTH  # the tokenizer's model_max_length: SD pipelines pad prompts to it
    extra_meta: dict = {}  # what the family needs in sfd_world.json to call the teacher as it was trained


def _half_width_text_config(cfg: TeacherTrainConfig):
    """A CLIP text encoder of half the SD teacher's width and one more layer (SDXL's and SD3's two encoders)."""
    from transformers import CLIPTextConfig

    from .tokenizer import VOCAB_SIZE

    w = cfg.text_width // 2
    return CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=w, intermediate_size=4 * w, num_hidden_layers=cfg.text_layers + 1,
                          num_attention_heads=max(1, cfg.text_heads // 2), max_position_embeddings=77, bos_token_id=49406,
                          eos_token_id=49407, pad_token_id=49407, projection_dim=w)


class SDTeacherParts(_TeacherParts):
    """The Stable Diffusion teacher of the world: one CLIP text encoder; dropped captions become "" for guidance."""

    def text_encoders(self, cfg: TeacherTrainConfig) -> list:
        return [build_text_encoder(cfg)]

    def unet(self, cfg: TeacherTrainConfig, latent_channels: int):
        return build_unet(cfg, latent_channels)

    def unet_kwargs(self, encoders, tokens: torch.Tensor, dropped: torch.Tensor) -> dict:
        """The UNet's conditioning of caption tokens (rows already swapped to "" where dropped)."""
        return {"encoder_hidden_states": encoders[0](tokens)[0]}

    def pipeline(self, vae, encoders, tokenizer, unet):
        return make_pipeline(vae, encoders[0], tokenizer, unet)


class SDXLTeacherParts(_TeacherParts):
    """An SDXL-structured teacher of the same size: two CLIP text encoders of half the width (hidden states of
    the penultimate layer concatenated, so the UNet's cross-attention width is the SD teacher's), the second's
    projected pooled embedding and the size/crop time ids as `added_cond_kwargs` (addition_embed_type
    "text_time"), and dropped captions as zeros, as StableDiffusionXLPipeline's force_zeros_for_empty_prompt."""

    time_embed_dim = 8

    def text_encoders(self, cfg: TeacherTrainConfig) -> list:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        return [CLIPTextModel(_half_width_text_config(cfg)), CLIPTextModelWithProjection(_half_width_text_config(cfg))]

    def unet(self, cfg: TeacherTrainConfig, latent_channels: int):
        from diffusers import UNet2DConditionModel

        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.cross_attention)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.cross_attention))
        return UNet2DConditionModel(
            sample_size=IMAGE_SIZE // 4, in_channels=latent_channels, out_channels=latent_channels,
            block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
            down_block_types=down, up_block_types=up, cross_attention_dim=cfg.text_width,
            attention_head_dim=cfg.attention_head_dim, norm_num_groups=32, addition_embed_type="text_time",
            addition_time_embed_dim=self.time_embed_dim, projection_class_embeddings_input_dim=6 * self.time_embed_dim + cfg.text_width // 2,
        )

    def unet_kwargs(self, encoders, tokens: torch.Tensor, dropped: torch.Tensor) -> dict:
        outs = [e(tokens, output_hidden_states=True) for e in encoders]
        hidden = torch.cat([o.hidden_states[-2] for o in outs], dim=-1)
        pooled = outs[1][0]
        keep = (~dropped).to(hidden.dtype)
        time_ids = torch.tensor([[IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE]], dtype=hidden.dtype).expand(len(tokens), -1)
        return {"encoder_hidden_states": hidden * keep.view(-1, 1, 1),
                "added_cond_kwargs": {"text_embeds": pooled * keep.view(-1, 1), "time_ids": time_ids}}

    def pipeline(self, vae, encoders, tokenizer, unet):
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(vae=vae.eval(), text_encoder=encoders[0].eval(), text_encoder_2=encoders[1].eval(),
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet.eval(),
                                         scheduler=DPMSolverMultistepScheduler(**scheduler_config()), force_zeros_for_empty_prompt=True)


class SD3TeacherParts(_TeacherParts):
    """An SD3-structured teacher: a small `SD3Transformer2DModel` (MMDiT: joint attention of image and text tokens,
    adaLN from the timestep and pooled text) trained with the rectified-flow objective, so that the flow family's
    code (velocity networks, x0 = x_t - t v, FlowMatchEuler sampling) is proven on a trained model. CLIP-L and CLIP-G
    are two CLIP encoders of half the SD teacher's width (penultimate hidden states concatenated into the joint
    sequence, projected pooled embeddings concatenated into `pooled_projections`), as StableDiffusion3Pipeline
    encodes them. There is no T5: the slot is zeros, as diffusers runs SD3 with `text_encoder_3=None`, at
    `max_sequence_length` tokens (kept short, and recorded in sfd_world.json, so the joint sequence stays small).
    Dropped captions are encoded "" (SD3 guides with the encoded empty prompt, not zeros). A transformer rather than
    the shapes UNet under a flow objective, because StableDiffusion3Pipeline and the SD3 family call an
    SD3Transformer2DModel: a flow-trained UNet would need a pipeline that no user runs."""

    loss = staticmethod(flow_loss)
    # 1,500 steps of batch 64: evaluated every 250 steps with 8 images per prompt, the worst prompt's shape rate reached
    # 62.5% at 1,500 and stayed there to 2,000 (colour 100% from 500 on). The 1,500-step teacher: colour min 100%, shape
    # min 69% at 32 images per prompt; 0.65-0.76 s/step on 2 threads, 19.0-22.0 min whole (BENCHMARKS.md, issue 17).
    default_steps = 1500
    text_length = 20  # CLIP tokens: the world's captions are <= 9 tokens with BOS/EOS
    max_sequence_length = 4  # the T5 slot's zero tokens
    extra_meta = {"max_sequence_length": max_sequence_length}
    layers = 6
    heads = 4
    head_dim = 32

    def text_encoders(self, cfg: TeacherTrainConfig) -> list:
        from transformers import CLIPTextModelWithProjection

        return [CLIPTextModelWithProjection(_half_width_text_config(cfg)), CLIPTextModelWithProjection(_half_width_text_config(cfg))]

    def unet(self, cfg: TeacherTrainConfig, latent_channels: int):
        from diffusers import SD3Transformer2DModel

        s = IMAGE_SIZE // 4
        return SD3Transformer2DModel(sample_size=s, patch_size=1, in_channels=latent_channels, out_channels=latent_channels,
                                     num_layers=self.layers, attention_head_dim=self.head_dim, num_attention_heads=self.heads,
                                     joint_attention_dim=cfg.text_width, caption_projection_dim=self.heads * self.head_dim,
                                     pooled_projection_dim=cfg.text_width, pos_embed_max_size=s)

    def unet_kwargs(self, encoders, tokens: torch.Tensor, dropped: torch.Tensor) -> dict:
        outs = [e(tokens, output_hidden_states=True) for e in encoders]
        clip = torch.cat([o.hidden_states[-2] for o in outs], dim=-1)
        t5 = clip.new_zeros(len(tokens), self.max_sequence_length, clip.shape[-1])
        return {"encoder_hidden_states": torch.cat([clip, t5], dim=1), "pooled_projections": torch.cat([o[0] for o in outs], dim=-1)}

    def pipeline(self, vae, encoders, tokenizer, unet):
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        vae.register_to_config(shift_factor=0.0)  # SD3's decode adds vae.config.shift_factor; the world's VAE has none
        return StableDiffusion3Pipeline(transformer=unet.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=vae.eval(),
                                        text_encoder=encoders[0].eval(), tokenizer=tokenizer, text_encoder_2=encoders[1].eval(),
                                        tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)


TEACHER_PARTS = {"sd": SDTeacherParts(), "sdxl": SDXLTeacherParts(), "sd3": SD3TeacherParts()}  # `sfd train-teacher shapes --family NAME`


def teacher_config(family: str = "sd", steps: int | None = None) -> TeacherTrainConfig:
    """The teacher's training settings for a family: TeacherTrainConfig with the family's step count, or `steps`."""
    default = TeacherTrainConfig()
    return replace(default, steps=steps or TEACHER_PARTS[family].default_steps or default.steps)


def train_teacher(vae, tokenizer, cfg: TeacherTrainConfig = TeacherTrainConfig(), progress: bool = True,
                  snapshot_every: int = 0, on_snapshot=None, family: str = "sd"):
    """Training of the denoising network and the text encoder(s) together, on VAE latents, with the family's
    objective (epsilon prediction, or rectified flow for SD3); returns (EMA network, [EMA text encoders], stats).
    `on_snapshot(step, network, text_encoders)` gets EMA copies. `family` picks the teacher's structure
    (TEACHER_PARTS): Stable Diffusion's, SDXL's or SD3's."""
    parts = TEACHER_PARTS[family]
    torch.manual_seed(cfg.seed)
    unet, encoders = parts.unet(cfg, vae.config.latent_channels), parts.text_encoders(cfg)
    for m in (unet, *encoders):
        m.train()
    emas = [EMA(m, cfg.ema_decay) for m in (unet, *encoders)]
    params = [p for m in (unet, *encoders) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    t_enc = time.perf_counter()
    mean, std, colour_ids, shape_ids = _encode_dataset(vae, cfg.dataset_size, cfg.seed + 1)
    encode_seconds = time.perf_counter() - t_enc
    scale = vae.config.scaling_factor
    # Token ids of every (colour, shape, template) caption, then of "" (the unconditional caption).
    texts = [caption(c, s, t) for c in range(len(COLOURS)) for s in range(len(SHAPES)) for t in range(len(TEMPLATES))] + [""]
    tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    uncond = len(texts) - 1
    gen = torch.Generator().manual_seed(cfg.seed)

    def ema_copies():
        fresh = [parts.unet(cfg, vae.config.latent_channels), *parts.text_encoders(cfg)]
        return [e.copy_to(m).eval() for e, m in zip(emas, fresh)]

    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.steps + 1), desc="teacher", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, step / cfg.warmup)
        idx = torch.randint(cfg.dataset_size, (cfg.batch_size,), generator=gen)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale
        template = torch.randint(len(TEMPLATES), (cfg.batch_size,), generator=gen)
        row = (colour_ids[idx] * len(SHAPES) + shape_ids[idx]) * len(TEMPLATES) + template
        dropped = torch.rand(cfg.batch_size, generator=gen) < cfg.cfg_dropout
        row = torch.where(dropped, uncond, row)
        loss = parts.loss(unet, z0, parts.unet_kwargs(encoders, tokens[row], dropped), gen, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for e, m in zip(emas, (unet, *encoders)):
            e.update(m)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if snapshot_every and on_snapshot and step % snapshot_every == 0:
            copies = ema_copies()
            on_snapshot(step, copies[0], copies[1:])
    seconds = time.perf_counter() - t0
    unet, *encoders = ema_copies()
    stats = {"train_seconds": seconds, "encode_dataset_seconds": encode_seconds, "seconds_per_step": seconds / cfg.steps,
             "family": family, "unet_params": sum(p.numel() for p in unet.parameters()),
             "text_encoder_params": sum(p.numel() for e in encoders for p in e.parameters()), **asdict(cfg)}
    return unet, encoders, stats


# ------------------------------------------------------------------------------------ saving and timing

def world_meta(num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS, guidance_scale: float = DEFAULT_GUIDANCE_SCALE, **extra) -> dict:
    """The sfd_world.json of a shapes teacher: what the CLI and evaluators need to know about the world."""
    return {"world": "shapes", "image_size": IMAGE_SIZE, "default_num_inference_steps": num_inference_steps,
            "default_guidance_scale": guidance_scale, "colours": list(COLOURS), "shapes": list(SHAPES),
            "templates": list(TEMPLATES), "colour_prompt": COLOUR_PROMPT, "shape_prompt": SHAPE_PROMPT, **extra}


def save_teacher(pipe, path: str | Path, meta: dict, dtype: torch.dtype = torch.float16) -> None:
    """Save a StableDiffusionPipeline folder (safetensors, weights in `dtype`) plus sfd_world.json.

    The tokenizer folder is rewritten as vocab.json/merges.txt (see `tokenizer.save_clip_tokenizer`).
    The text encoder's config keeps dtype float32 although its weights are stored in `dtype`: transformers
    loads a model in its config's dtype while diffusers loads in float32, and a plain
    `StableDiffusionPipeline.from_pretrained(path)` must run on a CPU. The pipeline passed in is left in float32.
    """
    from .tokenizer import save_clip_tokenizer

    path = Path(path)
    from ..models import quiet_diffusers

    with quiet_diffusers():
        pipe.to(dtype=dtype)
        try:
            pipe.save_pretrained(path, safe_serialization=True)
        finally:
            pipe.to(dtype=torch.float32)
    for name in ("tokenizer", "tokenizer_2"):
        if (path / name).is_dir():
            shutil.rmtree(path / name)
            save_clip_tokenizer(path / name, pipe.tokenizer.model_max_length)
    for name in ("text_encoder", "text_encoder_2"):
        te_config = path / name / "config.json"
        if te_config.is_file():
            cfg = json.loads(te_config.read_text())
            cfg.update({k: "float32" for k in ("dtype", "torch_dtype") if k in cfg})
            te_config.write_text(json.dumps(cfg, indent=2))
    (path / "sfd_world.json").write_text(json.dumps(meta, indent=2))


def load_teacher(path: str | Path, device: str = "cpu"):
    """The world's teacher as a float32 pipeline of its family (offline)."""
    from ..families import load_model

    return load_model(str(path), device)[1]


@torch.no_grad()
def time_components(pipe, batch: int = 64, num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                    guidance_scale: float = DEFAULT_GUIDANCE_SCALE, repeats: int = 3) -> dict:
    """Best-of-`repeats` seconds of the parts of sampling at one batch size, and the estimated speed-up
    of a one-step generator (text encode + 1 UNet call + decode) over the default sampler."""
    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    from ..concepts import as_condition
    from ..families import family_of_pipeline
    from ..tree import tree_cat

    family = family_of_pipeline(type(pipe).__name__)
    prompts = [caption(i % len(COLOURS), i % len(SHAPES)) for i in range(batch)]

    def encode():
        return as_condition(family.encode(pipe, prompts))

    cond = encode()
    den = family.teacher_denoiser(pipe)  # the network as SFD calls it (UNet or transformer), at a mid noise level
    z = torch.randn(batch, *family.latent_shape(pipe), generator=torch.Generator().manual_seed(0))
    sigma = torch.ones(batch)
    out = {
        "batch": batch,
        "text_encode": best(encode),
        "unet": best(lambda: den(z, sigma, cond)),
        "unet_cfg_batch": best(lambda: den(torch.cat([z, z]), torch.cat([sigma, sigma]), tree_cat([cond, cond]))),
        "vae_decode": best(lambda: pipe.vae.decode(z / pipe.vae.config.scaling_factor)),
    }
    pipe.set_progress_bar_config(disable=True)
    out["sampler"] = best(lambda: pipe(prompt=prompts, height=IMAGE_SIZE, width=IMAGE_SIZE, num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(0), output_type="pt",
                                       **family.sampler_kwargs(pipe)))
    out["one_step_estimate"] = out["text_encode"] + out["unet"] + out["vae_decode"]
    out["speedup_estimate"] = out["sampler"] / out["one_step_estimate"]
    out.update(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, threads=torch.get_num_threads())
    return out


# ------------------------------------------------------------------------------------------ the world

def train_world(
    out_dir: str | Path,
    seed: int = 0,
    progress: bool = True,
    clip_cfg: ClipTrainConfig = ClipTrainConfig(),
    vae_cfg: VaeTrainConfig = VaeTrainConfig(),
    teacher_cfg: TeacherTrainConfig = TeacherTrainConfig(),
    eval_per_prompt: int = 32,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    family: str = "sd",
    components_from: str | Path | None = None,
) -> dict:
    """Train the whole world into out_dir/clip and out_dir/teacher; returns (and records) the statistics.

    Stages: the CLIP evaluator, the VAE, then UNet + text encoder(s) on the VAE's latents. The teacher is
    evaluated after a save/load round trip, so the numbers describe the half-precision weights that ship.
    `seed` replaces the seed of every stage's config. A run that was stopped continues from its last finished
    stage: an existing out_dir/clip and out_dir/vae_stage (the VAE until the teacher is saved) are reused.
    `family` is the teacher's structure (TEACHER_PARTS). `components_from`: an existing world whose CLIP and VAE
    are reused, so that only the teacher is trained (an SDXL-structured teacher beside the bundled world).
    """
    from evaluators.clip import ClipEvaluator

    from .tokenizer import build_clip_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    if components_from is not None:
        from diffusers import AutoencoderKL

        src = Path(components_from)
        clip = ClipEvaluator.from_pretrained(src / "clip")
        clip_stats = {"reused_from": str(src / "clip")}
        vae = AutoencoderKL.from_pretrained(src / "teacher" / "vae", use_safetensors=True).float().eval().requires_grad_(False)
        vae_stats = {"reused_from": str(src / "teacher" / "vae")}
    elif (out / "clip" / "open_clip_config.json").is_file():  # a finished stage of an interrupted run
        clip = ClipEvaluator.from_pretrained(out / "clip")
        clip_stats = clip.extra.get("training", {})
    else:
        clip, clip_stats = train_clip(replace(clip_cfg, seed=seed), progress)
        clip_stats["zero_shot"] = clip_accuracy(clip)
        clip.extra = {"world": "shapes", "training": clip_stats}
        clip.save_pretrained(out / "clip")
        clip = ClipEvaluator.from_pretrained(out / "clip")
        clip_stats["zero_shot_saved"] = clip_accuracy(clip)  # after the half-precision round trip
        clip.extra["training"] = clip_stats
        clip.save_pretrained(out / "clip")

    vae_stage = out / "vae_stage"
    if components_from is not None:
        pass
    elif (vae_stage / "config.json").is_file():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_stage, use_safetensors=True).eval().requires_grad_(False)
        vae_stats = json.loads((vae_stage / "training.json").read_text())
    else:
        vae, vae_stats = train_vae(replace(vae_cfg, seed=seed), progress)
        vae.save_pretrained(vae_stage, safe_serialization=True)
        (vae_stage / "training.json").write_text(json.dumps(vae_stats, indent=2))
    tokenizer = build_clip_tokenizer(model_max_length=TEACHER_PARTS[family].text_length)
    unet, encoders, teacher_stats = train_teacher(vae, tokenizer, replace(teacher_cfg, seed=seed), progress, family=family)
    training = {"seed": seed, "clip": clip_stats, "vae": vae_stats, "teacher": teacher_stats,
                "train_seconds_total": time.perf_counter() - t_start, "torch_threads": torch.get_num_threads()}
    pipe = TEACHER_PARTS[family].pipeline(vae, encoders, tokenizer, unet)
    meta = world_meta(num_inference_steps, guidance_scale, training=training, family=family, **TEACHER_PARTS[family].extra_meta)
    if components_from is not None:
        meta["clip"] = str(Path(components_from) / "clip")
    save_teacher(pipe, out / "teacher", meta)
    shutil.rmtree(vae_stage, ignore_errors=True)  # the VAE now lives in teacher/vae

    pipe = load_teacher(out / "teacher")
    meta["evaluation"] = evaluate_teacher(pipe, clip, eval_per_prompt, seed=seed, num_inference_steps=num_inference_steps,
                                          guidance_scale=guidance_scale)
    meta["timings_seconds"] = time_components(pipe, 64, num_inference_steps, guidance_scale)
    (out / "teacher" / "sfd_world.json").write_text(json.dumps(meta, indent=2))
    return {k: meta[k] for k in ("training", "evaluation", "timings_seconds")}
