"""SFD losses as pure functions returning one value per sample (DESIGN.md section 2).

The training loop owns reduction, retain/forget weighting, backward and the optimizers. Networks are
`Denoiser`s (x0-predictions in sigma space); `Cond` carries the UNet keyword arguments of a batch and,
for classifier-free guidance, those of the unconditional branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sfd.kernel.denoisers import Denoiser, guided
from sfd.kernel.tree import tree_cat, tree_len


@dataclass
class Cond:
    """UNet conditioning of a batch: `cond` kwargs (nested dicts of batch-first tensors), and `uncond` kwargs for
    guidance (None: no guidance)."""

    cond: dict
    uncond: dict | None = None

    def __len__(self) -> int:
        return tree_len(self.cond)

    def cat(self, other: "Cond") -> "Cond":
        if (self.uncond is None) != (other.uncond is None):
            raise ValueError("cannot concatenate a guided and an unguided conditioning")
        un = None if self.uncond is None else tree_cat([self.uncond, other.uncond])
        return Cond(tree_cat([self.cond, other.cond]), un)


def _pixels(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _expand(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.view(-1, *([1] * (x.ndim - 1)))


def generate(generator, z: torch.Tensor, cond: Cond) -> torch.Tensor:
    """One-step generator x_g = G_theta(z, c) (SiD's D_theta(sigma_init z, sigma_init, c); SFD section 3);
    `generator` is a `sfd.kernel.generators.OneStepGenerator`, which knows how its network is called."""
    return generator(z, cond.cond)


def fake_score_loss(fake: Denoiser, x_g: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, cond: Cond, guidance: float = 1.0) -> torch.Tensor:
    """Denoising loss of the fake score on generator samples: w(sigma) * mean ||D_psi(x_g + sigma n) - x_g||^2.

    x_g must come without gradient to the generator. w(sigma) makes this the fake network's own
    training objective (epsilon-MSE for an epsilon-prediction UNet).
    """
    x_t = x_g + _expand(sigma, x_g) * noise
    d = guided(fake, x_t, sigma, cond.cond, cond.uncond, guidance)
    return fake.loss_weight(sigma) * (d - x_g).pow(2).mean(_pixels(x_g))


def generator_loss(
    teacher: Denoiser,
    fake: Denoiser,
    x_g: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    teacher_cond: Cond,
    fake_cond: Cond,
    alpha: float,
    teacher_guidance: float = 1.0,
    fake_guidance: float = 1.0,
) -> torch.Tensor:
    """SiD generator loss (Zhou et al. 2024, eq. 23) with SFD's score-alignment forgetting (SFD eq. 9).

    L = sum_pixels (f_phi - f_psi) * [(f_phi - x_g) - alpha (f_phi - f_psi)] / omega,
    omega = stopgrad(mean |f_phi - x_g|). Gradients reach x_g directly and through both networks'
    inputs; the networks' own parameters must be frozen by the caller. For the retain term the
    teacher and fake score see the same condition; for the forgetting term the fake score sees the
    forget concept and the teacher the override concept.
    """
    x_t = x_g + _expand(sigma, x_g) * noise
    f_phi = guided(teacher, x_t, sigma, teacher_cond.cond, teacher_cond.uncond, teacher_guidance)
    f_psi = guided(fake, x_t, sigma, fake_cond.cond, fake_cond.uncond, fake_guidance)
    dims = _pixels(x_g)
    omega = (f_phi - x_g).abs().mean(dims, keepdim=True).clamp(min=1e-5).detach()
    diff = f_phi - f_psi
    return (diff * ((f_phi - x_g) - alpha * diff) / omega).sum(dims)


@torch.no_grad()
def nearest_class(teacher: Denoiser, x_g: torch.Tensor, sigma: float, noise: torch.Tensor, candidates) -> torch.Tensor:
    """Per sample, the candidate class whose teacher denoise of x_g + sigma * noise lands closest to x_g.

    The class-conditional "random" override is the retained class that most step-0 samples of the forget
    class are nearest to (`ClassForgetSpec.settle`).
    """
    n, k = len(x_g), len(candidates)
    classes = torch.as_tensor(candidates, device=x_g.device)
    x_t = (x_g + sigma * noise).repeat(k, *([1] * (x_g.ndim - 1)))  # candidate-major: rows j*n..(j+1)*n-1 = class j
    d = teacher(x_t, torch.full((n * k,), sigma, device=x_g.device), {"class_labels": classes.repeat_interleave(n)})
    dist = (d.float().view(k, *x_g.shape) - x_g).pow(2).flatten(2).mean(2)  # (k, n)
    return classes[dist.argmin(0)]
