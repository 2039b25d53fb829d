"""A loaded text-to-image model as the attacks see it (sfd/core/attacks): prompts in, conditioning, images out,
differentiably, for every text family through its attack hook (`TextSurface`).

One-step models are one network call. Multi-step models (teachers, ESD/UCE baselines, the negative-prompt defence)
run the shared DDIM sampler (sfd/kernel/sampling.py): `steps` steps while an attack differentiates through it, the
model's own number of steps (`full`) for the images that are judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from sfd.core.attacks import TextSurface
from sfd.kernel.sampling import ddim, sigma_ladder, start_latents
from sfd.kernel.tree import tree_cat, tree_map

from sfd.evaluators.sampling import LoadedModel


@dataclass
class Victim:
    """`negative_prompt` replaces the unconditional branch of guidance (the negative-prompt defence), unless
    `negative_guidance` > 0: then it is a direction guided away from with that scale (eps_u + g (eps_c - eps_u) -
    negative_guidance (eps_neg - eps_u); composable-diffusion negation, as SLD's core)."""

    model: LoadedModel
    label: str
    negative_prompt: str = ""
    role: str = "erased"  # "original", "control" or "erased": how the report groups rows
    steps: int = 2  # the differentiable sampler's steps (multi-step models)
    negative_guidance: float = 0.0
    _uncond: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        family, pipe = self.model.family, self.model.pipe
        self.surface = TextSurface(family, pipe)  # one clear line for a model without text encoders
        for m in (family.network(pipe), pipe.vae):
            m.requires_grad_(False)
        self.denoiser = None if self.model.one_step else family.teacher_denoiser(pipe)

    @property
    def pipe(self):
        return self.model.pipe

    def encode(self, prompts: Sequence[str]) -> dict:
        return self.surface.encode(prompts)

    def uncond(self, n: int, negative: bool | None = None) -> dict:
        """The unconditional branch (the negative prompt, unless it is guided away from separately), n rows."""
        if self._uncond is None:
            with torch.no_grad():
                self._uncond = self.encode(["", self.negative_prompt])
        use_negative = (self.negative_guidance == 0) if negative is None else negative
        row = 1 if use_negative else 0
        return tree_map(lambda t: t[row : row + 1].expand(n, *t.shape[1:]), self._uncond)

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        shape = self.model.family.latent_shape(self.pipe)
        return randn_tensor((len(seeds), *shape), generator=[torch.Generator().manual_seed(int(s)) for s in seeds], dtype=torch.float32)

    def render(self, cond: dict, z: torch.Tensor, full: bool = False) -> torch.Tensor:
        """Images in [0, 1] from a conditioning and noise: one step, or DDIM (`steps`, or the model's own with full)."""
        from sfd.pipelines.text_to_image import decode_latents

        z = z.to(self.pipe.device)
        if self.model.one_step:
            x0 = self.pipe.generator(z, cond)
        else:
            sigmas = sigma_ladder(self.denoiser.schedule, self.model.steps if full else self.steps).to(z.device)
            _, x0 = ddim(lambda x, s: self.x0(x, s, cond), start_latents(z, sigmas[0]), sigmas)
        return decode_latents(self.pipe.vae, x0)

    def x0(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        """The multi-step model's guided x0 prediction (the negative prompt guided away from when negative_guidance > 0)."""
        from sfd.kernel.denoisers import guided

        if self.negative_guidance <= 0:
            return guided(self.denoiser, x, sigma, cond, self.uncond(len(x)), float(self.model.guidance))
        # unconditional, prompt and negative branches in one batched call (the unconditional one is shared)
        unc, away = self.uncond(len(x), negative=False), self.uncond(len(x), negative=True)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        d_u, d_c, d_n = self.denoiser(torch.cat([x, x, x]), sigma.repeat(3) if sigma.ndim else sigma, tree_cat([unc, cond, away])).chunk(3)
        return d_u + float(self.model.guidance) * (d_c - d_u) - self.negative_guidance * (d_n - d_u)


@dataclass
class ClassVictim:
    """A class-conditional model as the class attacks see it (sfd/core/attacks/classes.py): labels in, images out."""

    model: LoadedModel
    label: str
    steps: int = 2  # the differentiable sampler's steps (multi-step models)

    def __post_init__(self):
        from sfd.core.attacks.classes import ClassSurface

        family, pipe = self.model.family, self.model.pipe
        self.surface = ClassSurface(family, pipe, pipe.null_class)
        family.network(pipe).requires_grad_(False)
        self.denoiser = None if self.model.one_step else family.teacher_denoiser(pipe)

    @property
    def pipe(self):
        return self.model.pipe

    def encode(self, labels: torch.Tensor) -> dict:
        return {"class_labels": labels.to(self.pipe.device)}

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:
        shape = self.model.family.latent_shape(self.pipe)
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    def render(self, cond: dict, z: torch.Tensor, full: bool = False) -> torch.Tensor:
        """Images in [0, 1]: one step, or guided DDIM (`steps`, or the model's own with full)."""
        from sfd.kernel.denoisers import guided

        z = z.to(self.pipe.device)
        if self.model.one_step:
            x0 = self.pipe.generator(z, cond)
        else:
            null = self.pipe.null_class
            uncond = None if null is None else {"class_labels": torch.full_like(cond["class_labels"], null)}
            sigmas = sigma_ladder(self.denoiser.schedule, self.model.steps if full else self.steps).to(z.device)
            _, x0 = ddim(lambda x, s: guided(self.denoiser, x, s, cond, uncond, float(self.model.guidance)),
                         start_latents(z, sigmas[0]), sigmas)
        return (x0.float() / 2 + 0.5).clamp(0, 1)
