"""Adapters that turn diffusers UNets into EDM-style denoisers D(x_sigma, sigma, cond) -> x0.

SFD's losses are written for x0-predictions in sigma space (DESIGN.md section 2). Teachers are trained
with epsilon-, v- or sample-prediction on a discrete VP schedule; `Denoiser` wraps such a UNet without
changing it, computing x0 in closed form (diffusers' schedulers clamp x0 by default, which would block
gradients).  `cond` is a dict of keyword arguments for the UNet: {"class_labels": y} for a
class-conditional UNet2DModel, {"encoder_hidden_states": e} for a UNet2DConditionModel.
"""

from __future__ import annotations

import torch
from torch import nn

from sfd.kernel.schedules import DiscreteVPSchedule
from sfd.kernel.tree import tree_cat, tree_map

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class Denoiser(nn.Module):
    """x0-prediction of a discrete-time UNet, evaluated at continuous sigma."""

    def __init__(self, unet: nn.Module, schedule: DiscreteVPSchedule, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r} not supported; expected one of {PREDICTION_TYPES}")
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type

    guidance_embedded = False  # guidance as a network input (FLUX.1-dev) instead of two branches; see `guided`

    def sample_shape(self) -> tuple[int, ...]:
        """(channels, height, width) of the network's samples, from its config (a family's `latent_shape` knows more,
        e.g. FLUX's packed latents; this is the fallback when none is given)."""
        cfg = self.unet.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    def with_network(self, unet: nn.Module) -> "Denoiser":
        """The same denoiser (schedule, parameterisation) around another network: a role's copy or adapter view."""
        return type(self)(unet, self.schedule, self.prediction_type)

    @classmethod
    def from_unet_and_scheduler_config(cls, unet: nn.Module, scheduler_config) -> "Denoiser":
        get = scheduler_config.get if isinstance(scheduler_config, dict) else lambda k, d=None: getattr(scheduler_config, k, d)
        return cls(unet, DiscreteVPSchedule.from_scheduler_config(scheduler_config), get("prediction_type", "epsilon"))

    def _network(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        dtype = next(self.unet.parameters()).dtype
        cond = tree_map(lambda v: v.to(dtype) if torch.is_floating_point(v) else v, cond)
        return self.unet(x_t.to(dtype), t, **cond, return_dict=False)[0].float()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: dict) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        alpha = (1 + s**2).rsqrt()  # sqrt(abar_t)
        x_t = x * alpha
        out = self._network(x_t, self.schedule.sigma_to_t(sigma), cond)
        if self.prediction_type == "epsilon":
            return x - s * out
        if self.prediction_type == "v_prediction":
            # x0 = sqrt(abar) x_t - sqrt(1 - abar) v, with sqrt(1 - abar) = sigma * sqrt(abar)
            return alpha * x_t - s * alpha * out
        return out

    def at_timestep(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """x0 from the network's own VP input x_t at timestep(s) t, in closed form (as a DDPM/LCM scheduler step
        computes it, without clamping). How one-step models made elsewhere are called (`sfd.kernel.generators`)."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).expand(x_t.shape[0])
        s = self.schedule.sigma_at_timestep(t).to(x_t.device).view(-1, *([1] * (x_t.ndim - 1)))
        alpha = (1 + s**2).rsqrt()
        out = self._network(x_t, t, cond)
        if self.prediction_type == "epsilon":
            return x_t / alpha - s * out
        if self.prediction_type == "v_prediction":
            return alpha * x_t - s * alpha * out
        return out

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """Weight on ||D - x0||^2 that equals the teacher's own training loss (epsilon-, v- or x0-MSE)."""
        if self.prediction_type == "epsilon":
            return sigma**-2
        if self.prediction_type == "v_prediction":
            return (1 + sigma**2) / sigma**2
        return torch.ones_like(sigma)


class FlowDenoiser(nn.Module):
    """x0-prediction of a rectified-flow network (SD3, SD3.5, FLUX), evaluated at VE sigma (DESIGN.md section 2.3).

    The network predicts the velocity v = eps - x0 from x_t = (1 - t) x0 + t eps, so x0 = x_t - t v, with
    t = sigma / (1 + sigma) and x_t = x_sigma / (1 + sigma). `call(net, x_t, timestep, cond)` is the family's way
    of calling its network (keyword names, latent packing, position ids) and returns v; the timestep is
    diffusers' 1000 t. Guidance mixes x0 predictions, which equals mixing v: x0 is affine in v at fixed x_t.
    With `guidance_embedded` (FLUX.1-dev) the guidance scale is a network input instead (`guided`).
    """

    prediction_type = "flow"

    def sample_shape(self) -> tuple[int, ...]:
        """(channels, height, width) of the network's samples, from its config (see `Denoiser.sample_shape`)."""
        cfg = self.unet.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    def __init__(self, unet: nn.Module, schedule, call, guidance_embedded: bool = False, default_guidance: float | None = None):
        super().__init__()
        self.unet = unet  # the transformer; named as the UNet of `Denoiser`, which is what the roles adapt
        self.schedule = schedule
        self.call = call
        self.guidance_embedded = guidance_embedded
        self.default_guidance = default_guidance  # a guidance-embedded network called without a scale (the generator)

    def with_network(self, unet: nn.Module) -> "FlowDenoiser":
        return FlowDenoiser(unet, self.schedule, self.call, self.guidance_embedded, self.default_guidance)

    def _velocity(self, x_t: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
        dtype = next(self.unet.parameters()).dtype
        if self.guidance_embedded and "guidance" not in cond:
            cond = {**cond, "guidance": torch.full((x_t.shape[0],), float(self.default_guidance or 1.0), device=x_t.device)}
        cond = tree_map(lambda v: v.to(dtype) if torch.is_floating_point(v) else v, cond)
        return self.call(self.unet, x_t.to(dtype), timestep.to(dtype), cond).float()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: dict) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        t = self.schedule.flow_t(sigma).view(-1, *([1] * (x.ndim - 1)))
        x_t = x * (1 - t)
        return x_t - t * self._velocity(x_t, self.schedule.sigma_to_t(sigma), cond)

    def at_timestep(self, x_t: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
        """x0 from the network's own input x_t at diffusers timestep(s) 1000 t (one-step conventions)."""
        timestep = torch.as_tensor(timestep, dtype=torch.float32, device=x_t.device).expand(x_t.shape[0])
        t = (timestep / self.schedule.num_train_timesteps).view(-1, *([1] * (x_t.ndim - 1)))
        return x_t - t * self._velocity(x_t, timestep, cond)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """The flow objective ||v - v*||^2 as a weight on ||D - x0||^2: D - x0 = -t (v - v*), so 1 / t^2."""
        return ((1 + sigma) / sigma) ** 2


def guided(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, cond: dict, uncond: dict | None, scale: float) -> torch.Tensor:
    """Classifier-free guidance D_u + scale * (D_c - D_u), in one batched call; scale 1 (or no uncond) is plain D_c.

    A guidance-distilled network (FLUX.1-dev: `guidance_embedded`) takes the scale as an input instead."""
    if getattr(denoiser, "guidance_embedded", False):  # any callable (x, sigma, cond) -> x0 can be guided
        g = torch.full((x.shape[0],), float(scale), device=x.device)
        return denoiser(x, sigma, {**cond, "guidance": g})
    if uncond is None or scale == 1.0:
        return denoiser(x, sigma, cond)
    both = tree_cat([uncond, cond])
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    sigma2 = torch.cat([sigma, sigma]) if sigma.ndim else sigma
    d_u, d_c = denoiser(torch.cat([x, x]), sigma2, both).chunk(2)
    return d_u + scale * (d_c - d_u)
