"""The shapes world's evaluators' parts: the tiny CLIP (its config, contrastive training and zero-shot accuracy) and the
VAE (its config, structure and training). sfd/commands/worlds/shapes.py trains them as the first stages of `train_world`."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sfd.core.worlds.shapes import (
    COLOURS, COLOUR_ONLY_TEMPLATES, COLOUR_PROMPT, IMAGE_SIZE, SHAPES, SHAPE_ONLY_TEMPLATES, SHAPE_PROMPT, ShapesBatch, render, to_unit,
)


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
    from sfd.evaluators.clip import ClipEvaluator

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
