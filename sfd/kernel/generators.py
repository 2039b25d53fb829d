"""One-step generators: how a distilled network turns noise z into a clean sample x0, and how it is called.

SFD's own generator (SiD's) is x_g = D_theta(sigma_init * z, sigma_init, c): the network sees the VP input
sqrt(1 - abar_t) z at its timestep t_init. One-step models made by other methods are called differently
(DESIGN.md section 2.3): SD-Turbo and SDXL-Turbo are sampled at timestep 999 (SiD's convention there: the
UNet sees sqrt(1 - abar_999) z), DMD2's one-step UNets see pure noise z at timestep 399. A `OneStepConvention` records this, a one-step pipeline stores it in its config, and
`OneStepGenerator` applies it, so any of these can be the stage-1 base of an erase.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from sfd.kernel.denoisers import Denoiser
from sfd.kernel.errors import SFDError


@dataclass(frozen=True)
class OneStepConvention:
    """How the network of a one-step generator is called.

    timestep: the conditioning timestep given to the network (t_init for SFD/SiD generators);
    input_scale: the network sees input_scale * z (VP space); None means SiD's convention, where the
    input is the noise of level sigma(timestep), sqrt(1 - abar_t) z, i.e. x_sigma = sigma_init * z in VE terms;
    prediction_type: what the network predicts; None means the scheduler's.
    """

    timestep: float
    input_scale: float | None = None
    prediction_type: str | None = None

    def validate(self, num_train_timesteps: int) -> "OneStepConvention":
        if not 0 <= self.timestep < num_train_timesteps:
            raise SFDError(f"one-step timestep {self.timestep} lies outside the schedule's 0..{num_train_timesteps - 1}")
        if self.input_scale is not None and not self.input_scale > 0:
            raise SFDError(f"one-step input scale must be > 0, got {self.input_scale}")
        return self

    @property
    def is_sid(self) -> bool:
        return self.input_scale is None

    def config(self) -> dict:
        """The pipeline-config entries that record this convention (t_init alone for SiD's)."""
        if self.is_sid and self.prediction_type is None and float(self.timestep).is_integer():
            return {"t_init": int(self.timestep)}
        return {"t_init": int(round(self.timestep)), "conditioning_timestep": float(self.timestep),
                "input_scale": self.input_scale, "prediction_type": self.prediction_type}

    @classmethod
    def from_config(cls, config) -> "OneStepConvention":
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        t = get("conditioning_timestep", None)
        return cls(float(get("t_init") if t is None else t), get("input_scale", None), get("prediction_type", None))

    def describe(self) -> dict:
        return asdict(self)


# Conventions of public one-step models, from their own documentation (README.md "One-step bases made elsewhere").
NAMED_CONVENTIONS = {
    # SD-Turbo (EulerDiscreteScheduler) and SDXL-Turbo (EulerAncestralDiscreteScheduler), both "trailing": one step is
    # timestep 999, the pipeline scales z by init_noise_sigma = sigma_999 ("trailing" uses sigma_max, not
    # sqrt(sigma_max^2 + 1)) and the scheduler divides by sqrt(sigma^2 + 1): SiD's convention at t_init = 999.
    "sd-turbo": OneStepConvention(999.0),
    "sdxl-turbo": OneStepConvention(999.0),
    # DMD2's one-step UNets: LCMScheduler with timesteps=[399]; init_noise_sigma is 1, so the UNet sees z.
    "dmd2": OneStepConvention(399.0, 1.0),
}


class OneStepGenerator(nn.Module):
    """x0 = G(z, c): one evaluation of a `Denoiser`'s network under a `OneStepConvention`."""

    def __init__(self, denoiser: Denoiser, convention: OneStepConvention):
        super().__init__()
        if convention.prediction_type not in (None, denoiser.prediction_type):
            if not isinstance(denoiser, Denoiser):
                raise SFDError(f"a {denoiser.prediction_type} network cannot be called as {convention.prediction_type}-prediction")
            denoiser = Denoiser(denoiser.unet, denoiser.schedule, convention.prediction_type)
        self.denoiser = denoiser
        self.convention = convention

    @property
    def unet(self) -> nn.Module:
        return self.denoiser.unet

    @property
    def sigma_init(self) -> float:
        """The VE noise level of the input (SiD's sigma_init); for other conventions, that of the timestep."""
        return float(self.denoiser.schedule.sigma_at_timestep(torch.tensor(self.convention.timestep)))

    def forward(self, z: torch.Tensor, cond: dict) -> torch.Tensor:
        c = self.convention
        if c.is_sid:
            sigma = self.sigma_init
            return self.denoiser(sigma * z, sigma, cond)
        t = torch.full((z.shape[0],), float(c.timestep), device=z.device)
        return self.denoiser.at_timestep(c.input_scale * z, t, cond)
