"""Builders of the digits world: its judge CNN and class-conditional DDPM teacher, which `sfd train-teacher digits`
runs. The data is in sfd/core/worlds/digits.py."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sfd.kernel.ema import EMA

from sfd.core.worlds.digits import (  # noqa: F401  the world's data and vocabulary, used here and by callers
    CLASS_NAMES, DEFAULT_GUIDANCE, DEFAULT_SAMPLER_STEPS, IMAGE_SIZE, load_digits_tensors, split_indices, teacher_scheduler_config,
)

if TYPE_CHECKING:
    from sfd.evaluators.classifier import ConvJudge


@dataclass(frozen=True)
class JudgeTrainConfig:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    holdout: float = 0.2
    seed: int = 0


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift by up to one pixel (with black fill): the judge must not depend on exact registration."""
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2,), generator=gen).tolist()
    return pad[..., dy : dy + IMAGE_SIZE, dx : dx + IMAGE_SIZE]


def train_judge(cfg: JudgeTrainConfig = JudgeTrainConfig(), progress: bool = True) -> tuple[ConvJudge, dict]:
    """Train the judge on a split of load_digits; returns it and {'heldout_accuracy', ...}."""
    from sfd.evaluators.classifier import ConvJudge, JudgeConfig  # the judge sits a layer up (DESIGN.md section 3)

    torch.manual_seed(cfg.seed)
    x, y = load_digits_tensors()
    train_idx, test_idx = split_indices(len(x), cfg.holdout, cfg.seed)
    judge = ConvJudge(JudgeConfig(class_names=CLASS_NAMES))
    opt = torch.optim.AdamW(judge.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    judge.train()
    for _ in tqdm(range(cfg.steps), desc="judge", disable=not progress):
        idx = train_idx[torch.randint(len(train_idx), (cfg.batch_size,), generator=gen)]
        xb = _augment(x[idx], gen)
        loss = F.cross_entropy(judge(xb), y[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    judge.eval()
    with torch.no_grad():
        acc = (judge(x[test_idx]).argmax(1) == y[test_idx]).float().mean().item()
    return judge, {"heldout_accuracy": acc, "heldout_n": len(test_idx), "train_n": len(train_idx), **asdict(cfg)}


@dataclass(frozen=True)
class TeacherTrainConfig:
    # 750 steps: the shortest schedule measured that meets the world's own target (judge accuracy >= 95% for
    # every class with the default sampler; 500 steps reach 93%), so an erase is compared with a teacher
    # trained no longer than it needs (BENCHMARKS.md).
    steps: int = 750
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    label_dropout: float = 0.1  # share of samples trained as the null class, for classifier-free guidance
    block_out_channels: tuple[int, ...] = (64, 128)
    layers_per_block: int = 1
    seed: int = 0


def build_teacher_unet(cfg: TeacherTrainConfig, num_classes: int = 10):
    """UNet2DModel with num_classes + 1 class embeddings (the last is the null class of guidance)."""
    from diffusers import UNet2DModel

    n = len(cfg.block_out_channels)
    return UNet2DModel(
        sample_size=IMAGE_SIZE,
        in_channels=1,
        out_channels=1,
        block_out_channels=cfg.block_out_channels,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        layers_per_block=cfg.layers_per_block,
        num_class_embeds=num_classes + 1,
        norm_num_groups=32,
    )


def train_teacher(cfg: TeacherTrainConfig = TeacherTrainConfig(), progress: bool = True, snapshot_every: int = 0, on_snapshot=None):
    """Epsilon-prediction DDPM training with an EMA; returns (EMA unet, stats).

    `on_snapshot(step, ema_unet)` is called every `snapshot_every` steps (for choosing the shortest schedule).
    """
    from diffusers import DDPMScheduler

    torch.manual_seed(cfg.seed)
    x, y = load_digits_tensors()
    unet = build_teacher_unet(cfg)
    ema = EMA(unet, cfg.ema_decay)
    scheduler = DDPMScheduler(**teacher_scheduler_config())
    abar = scheduler.alphas_cumprod.float()
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.steps + 1), desc="teacher", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, step / max(cfg.warmup, 1))
        idx = torch.randint(len(x), (cfg.batch_size,), generator=gen)
        x0, labels = x[idx], y[idx]
        drop = torch.rand(cfg.batch_size, generator=gen) < cfg.label_dropout
        labels = torch.where(drop, torch.full_like(labels, len(CLASS_NAMES)), labels)
        t = torch.randint(0, len(abar), (cfg.batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = F.mse_loss(unet(x_t, t, class_labels=labels).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(unet)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if snapshot_every and on_snapshot and step % snapshot_every == 0:
            on_snapshot(step, ema.copy_to(build_teacher_unet(cfg)))
    seconds = time.perf_counter() - t0
    return ema.copy_to(build_teacher_unet(cfg)), {"train_seconds": seconds, "seconds_per_step": seconds / cfg.steps, **asdict(cfg)}


def save_teacher(unet, path: str | Path, stats: dict, guidance_scale: float = DEFAULT_GUIDANCE, num_inference_steps: int = DEFAULT_SAMPLER_STEPS) -> None:
    """Save as a `ClassConditionalPipeline` folder whose default sampler is Heun (Karras sigmas) with guidance."""
    from diffusers import HeunDiscreteScheduler

    from sfd.pipelines import ClassConditionalPipeline

    sched = HeunDiscreteScheduler(**teacher_scheduler_config(), use_karras_sigmas=True)
    pipe = ClassConditionalPipeline(unet=unet.eval(), scheduler=sched, class_names=list(CLASS_NAMES),
                                    default_guidance_scale=guidance_scale, default_num_inference_steps=num_inference_steps)
    from sfd.core.models import quiet_diffusers

    with quiet_diffusers():
        unet.to(torch.float16)  # fp16 storage halves the bundle; loading casts back to float32
        try:
            pipe.save_pretrained(path, safe_serialization=True)
        finally:
            unet.to(torch.float32)
    meta = {"world": "digits", "image_size": IMAGE_SIZE, "training": stats}
    (Path(path) / "sfd_world.json").write_text(json.dumps(meta, indent=2))
