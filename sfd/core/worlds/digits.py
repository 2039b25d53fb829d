"""The digits world's data: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), its class names
and the teacher's noise schedule and sampler defaults.

Pixels are mapped from load_digits' 0..16 (0 = background) to [-1, 1], so the background is black. The class-conditional
DDPM teacher (epsilon-prediction `UNet2DModel` with class embeddings, linear betas, 1,000 steps: the label-conditional
setting of the SFD paper at toy scale) and the judge CNN are trained by sfd/commands/worlds/digits.py.
"""

from __future__ import annotations

import torch

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_SIZE = 8


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 1, 8, 8) floats in [-1, 1] and (N,) int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return x, torch.tensor(d.target, dtype=torch.long)


def split_indices(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * holdout))
    return perm[k:], perm[:k]


def teacher_scheduler_config() -> dict:
    """DDPM linear-beta schedule of the SFD paper's label-conditional experiments (t_init = 440 gives sigma ~ 2.5)."""
    return dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon")


DEFAULT_GUIDANCE = 1.5  # measured best for judge accuracy x Frechet distance (1.0: min class 90% at 1,000 steps)


DEFAULT_SAMPLER_STEPS = 18
