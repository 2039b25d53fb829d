"""The deterministic DDIM sampler in sigma space, differentiable: the one multi-step sampler that the attacks (which
backpropagate through it) and ESD (which runs it to make x_t) share.

In SFD's VE notation (sfd/kernel/denoisers.py) x_sigma = x0 + sigma * eps, and DDIM's step from sigma_i to sigma_{i+1}
keeps the predicted noise: x <- D + (sigma_{i+1} / sigma_i) (x - D), with D the (guided) x0 prediction at sigma_i.
"""

from __future__ import annotations

from typing import Callable

import torch


def sigma_ladder(schedule, steps: int) -> torch.Tensor:
    """`steps` noise levels evenly spaced in training timesteps from the top down, then 0 (steps + 1 values)."""
    if steps < 1:
        raise ValueError(f"a sampler needs at least one step, got {steps}")
    ts = torch.linspace(schedule.num_train_timesteps - 1, 0, steps + 1)[:-1].round().long()
    return torch.cat([schedule.sigma_at(ts), torch.zeros(1)])


def start_latents(z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Unit Gaussian noise as the sampler's start at `sigma`: scaled to the marginal's standard deviation
    sqrt(1 + sigma^2) (data of unit variance)."""
    return z * (1 + torch.as_tensor(sigma, dtype=z.dtype, device=z.device) ** 2).sqrt()


def ddim(x0_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run DDIM down `sigmas` (len(sigmas) - 1 steps) from x at sigmas[0]; `x0_fn(x, sigma)` is the x0 prediction.
    Returns (x at sigmas[-1], the last x0 prediction); gradients flow through every step."""
    sigmas = sigmas.to(x.device)
    d = x
    for i in range(len(sigmas) - 1):
        d = x0_fn(x, sigmas[i])
        x = d + (sigmas[i + 1] / sigmas[i]) * (x - d)
    return x, d
