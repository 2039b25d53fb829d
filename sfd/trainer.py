"""The SFD training loop: alternating fake-score and generator updates (DESIGN.md section 2).

The loop owns the optimizers, the retain/forget weighting, gradient clipping, the generator EMA and
the random state; the losses in `sfd.losses` are pure per-sample functions.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .concepts import ConditionBatch
from .config import SFDConfig
from .denoisers import Denoiser
from .ema import EMA
from .errors import SFDError
from .losses import fake_score_loss, generate, generator_loss


class DivergenceError(SFDError):
    """A loss became NaN or infinite."""


@dataclass
class StepStats:
    step: int
    losses: dict = field(default_factory=dict)


def _split_weighted(per_sample: torch.Tensor, batch: ConditionBatch, w_retain: float, w_forget: float) -> tuple[torch.Tensor, dict]:
    """The one place where retain and forget terms are named and weighted."""
    retain, forget = per_sample.split([batch.n_retain, batch.n_forget])
    total = w_retain * retain.mean() + w_forget * forget.mean()
    return total, {"retain": retain.mean().item(), "forget": forget.mean().item()}


class SFDTrainer:
    """Distils `teacher` into a one-step generator while aligning its forget-concept score with the override's."""

    def __init__(
        self,
        teacher: Denoiser,
        spec,
        config: SFDConfig,
        device: str | torch.device = "cpu",
        frozen_dtype: torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ):
        """`spec.sample(n_retain, n_forget, rng, device, for_fake_training)` yields the condition batches.

        Memory options for Stable-Diffusion-sized UNets: `frozen_dtype` (bf16/fp16) for the teacher only,
        after the trainable copies are taken in fp32; `gradient_checkpointing` for generator and fake score;
        `autocast_dtype` (bf16) for their forward passes.
        """
        if config.guidance_teacher is None:
            raise ValueError("config.guidance_teacher must be resolved (SFDConfig.resolved) before training")
        self.config = config
        self.spec = spec
        self.device = torch.device(device)
        # Generator and fake score start as full-precision copies of the teacher.
        self.generator = copy.deepcopy(teacher).float().to(self.device).requires_grad_(True)
        self.fake = copy.deepcopy(teacher).float().to(self.device).requires_grad_(True)
        self.teacher = teacher.to(self.device, dtype=frozen_dtype).eval().requires_grad_(False)
        if gradient_checkpointing:
            for d in (self.generator, self.fake):
                d.unet.enable_gradient_checkpointing()
        self.autocast_dtype = autocast_dtype
        self.sigma_init = float(teacher.schedule.sigma_at(config.t_init))
        betas = (0.0, 0.999)
        self.opt_gen = torch.optim.Adam(self.generator.parameters(), lr=config.lr_generator, betas=betas)
        self.opt_fake = torch.optim.Adam(self.fake.parameters(), lr=config.lr_fake, betas=betas)
        self.ema = EMA(self.generator.unet, config.ema_decay)
        self.rng = torch.Generator().manual_seed(config.seed)
        self.step_count = 0
        cfg = teacher.unet.config
        self.latent_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    # ---------------------------------------------------------------------------------------- helpers
    def _randn(self, n: int) -> torch.Tensor:
        return torch.randn((n, *self.latent_shape), generator=self.rng).to(self.device)

    def _sigmas(self, n: int) -> torch.Tensor:
        t = torch.randint(self.config.t_min, self.config.t_max, (n,), generator=self.rng)
        return self.teacher.schedule.sigma_at(t).to(self.device)

    def _conditions(self, for_fake_training: bool) -> ConditionBatch:
        c = self.config
        return self.spec.sample(c.batch_retain, c.batch_forget, self.rng, self.device, for_fake_training=for_fake_training)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @staticmethod
    def _clip_and_step(params, optimizer: torch.optim.Optimizer, clip: float) -> None:
        if clip > 0:
            torch.nn.utils.clip_grad_value_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------------------------------ steps
    def fake_step(self) -> dict:
        """Fit the fake score to the generator's current samples (x_g detached)."""
        c = self.config
        batch = self._conditions(for_fake_training=True)
        n = batch.n_retain + batch.n_forget
        with torch.no_grad(), self._autocast():
            x_g = generate(self.generator, self._randn(n), self.sigma_init, batch.fake).float()
        self.fake.requires_grad_(True)
        with self._autocast():
            per_sample = fake_score_loss(self.fake, x_g, self._sigmas(n), self._randn(n), batch.fake, c.guidance_fake_train)
        loss, parts = _split_weighted(per_sample, batch, c.lambda_fake_retain, c.lambda_fake_forget)
        loss.backward()
        self._clip_and_step(self.fake.parameters(), self.opt_fake, c.grad_clip)
        return {"fake_" + k: v for k, v in parts.items()}

    def generator_step(self) -> dict:
        """SiD update of the generator; the forget samples are pulled towards the teacher's override score."""
        c = self.config
        batch = self._conditions(for_fake_training=False)
        n = batch.n_retain + batch.n_forget
        self.fake.requires_grad_(False)  # frozen, but gradients flow through its input
        with self._autocast():
            x_g = generate(self.generator, self._randn(n), self.sigma_init, batch.fake)
            per_sample = generator_loss(
                self.teacher, self.fake, x_g, self._sigmas(n), self._randn(n),
                teacher_cond=batch.teacher, fake_cond=batch.fake, alpha=c.alpha,
                teacher_guidance=c.guidance_teacher, fake_guidance=c.guidance_fake_eval,
            )
        loss, parts = _split_weighted(per_sample, batch, c.lambda_gen_retain, c.lambda_gen_forget)
        loss.backward()
        self._clip_and_step(self.generator.parameters(), self.opt_gen, c.grad_clip)
        self.ema.update(self.generator.unet)
        return {"gen_" + k: v for k, v in parts.items()}

    def step(self) -> dict:
        losses = {**self.fake_step(), **self.generator_step()}
        self.step_count += 1
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            raise DivergenceError(f"loss {bad[0]} became {losses[bad[0]]} at step {self.step_count}; lower the learning rates")
        return losses

    def train(self, steps: int | None = None, progress: bool = True, callback=None) -> dict:
        """Run until `steps` (default: config.steps) total steps; returns the last losses and the wall time."""
        total = self.config.steps if steps is None else steps
        t0 = time.perf_counter()
        losses: dict = {}
        bar = tqdm(total=total, initial=self.step_count, desc="sfd erase", unit="it", disable=not progress)
        while self.step_count < total:
            losses = self.step()
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
            if callback is not None:
                callback(self)
        bar.close()
        return {"losses": losses, "seconds": time.perf_counter() - t0}

    def ema_unet(self) -> torch.nn.Module:
        """A copy of the generator UNet holding the EMA weights."""
        return self.ema.clone_module(self.generator.unet).eval()
