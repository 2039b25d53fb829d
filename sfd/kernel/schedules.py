"""Noise schedules in EDM/sigma notation.

SFD works in the variance-exploding parameterisation x_sigma = x0 + sigma * n (DESIGN.md section 2).
Discrete DDPM-style models (the digits teacher, Stable Diffusion) are trained on
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, which is x_sigma / sqrt(1 + sigma^2) with
sigma_t = sqrt((1 - abar_t) / abar_t).  `DiscreteVPSchedule` converts between the two.
"""

from __future__ import annotations

import math

import torch


def betas_for(beta_schedule: str, beta_start: float, beta_end: float, num_train_timesteps: int) -> torch.Tensor:
    """The beta schedules of diffusers' DDPMScheduler that the supported teachers use."""
    n = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if beta_schedule == "scaled_linear":  # Stable Diffusion
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        def abar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float64)
    raise ValueError(f"unsupported beta_schedule {beta_schedule!r}; expected linear, scaled_linear or squaredcos_cap_v2")


class DiscreteVPSchedule:
    """sigma <-> timestep for a discrete variance-preserving schedule with `num_train_timesteps` steps."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = alphas_cumprod.to(torch.float64)
        self.sigmas = ((1 - abar) / abar).sqrt().to(torch.float32)  # increasing in t
        self.log_sigmas = self.sigmas.log()
        self.num_train_timesteps = len(abar)

    @classmethod
    def from_scheduler_config(cls, config) -> "DiscreteVPSchedule":
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        betas = betas_for(
            get("beta_schedule", "linear"), get("beta_start", 1e-4), get("beta_end", 0.02), get("num_train_timesteps", 1000)
        )
        return cls(torch.cumprod(1 - betas, dim=0))

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_at(self, t: torch.Tensor | int) -> torch.Tensor:
        """sigma of integer timestep(s) t."""
        t = torch.as_tensor(t, dtype=torch.long)
        return self.sigmas.to(t.device)[t]

    def sigma_at_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """sigma of continuous timestep(s) t: log-sigma interpolated between the discrete steps (the inverse of
        `sigma_to_t`); exactly `sigma_at(t)` at integer t."""
        t = torch.as_tensor(t, dtype=torch.float32).clamp(0, self.num_train_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_train_timesteps - 2)
        w = t - lo.to(torch.float32)
        sigmas, log_sigmas = self.sigmas.to(t.device), self.log_sigmas.to(t.device)
        interp = ((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1]).exp()
        exact = sigmas[t.round().long()]
        return torch.where(t == t.round(), exact, interp)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep for sigma, interpolating log-sigma between the discrete steps (as k-diffusion does)."""
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.to(torch.float32).clamp(min=float(self.sigmas[0]), max=float(self.sigmas[-1])).log()
        idx = torch.searchsorted(log_sigmas, log_sigma.contiguous()).clamp(1, len(log_sigmas) - 1)
        lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1).to(torch.float32) + w


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The EDM sampling schedule (Karras et al. 2022, eq. 5), with a final 0 appended."""
    ramp = torch.linspace(0, 1, n)
    inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return torch.cat([inv**rho, torch.zeros(1)])


class FlowSchedule:
    """Rectified flow (SD3, SD3.5, FLUX): x_t = (1 - t) x0 + t eps for t in [0, 1] (DESIGN.md section 2.3).

    In SFD's VE notation sigma = t / (1 - t) and x_t = x_sigma / (1 + sigma). Timesteps are diffusers' flow
    timesteps, 1000 t (num_train_timesteps = 1000): a training index k is the flow time t = k / N, and a network
    is called with the continuous timestep N t. Noise levels are drawn uniformly in t here; the inference `shift`
    of a model's scheduler does not enter.
    """

    def __init__(self, num_train_timesteps: int = 1000):
        self.num_train_timesteps = num_train_timesteps
        t = torch.arange(num_train_timesteps, dtype=torch.float64) / num_train_timesteps
        self.sigmas = (t / (1 - t)).to(torch.float32)  # increasing; 0 at k = 0

    @classmethod
    def from_scheduler_config(cls, config) -> "FlowSchedule":
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        return cls(int(get("num_train_timesteps", 1000)))

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[1])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def flow_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """t = sigma / (1 + sigma)."""
        return sigma / (1 + sigma)

    def sigma_at(self, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long)
        return self.sigmas.to(t.device)[t]

    def sigma_at_timestep(self, timestep: torch.Tensor) -> torch.Tensor:
        """sigma of continuous timestep(s) N t (t < 1)."""
        t = torch.as_tensor(timestep, dtype=torch.float64) / self.num_train_timesteps
        return (t / (1 - t)).to(torch.float32)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's timestep for sigma: N t with t = sigma / (1 + sigma)."""
        return self.num_train_timesteps * self.flow_t(sigma.to(torch.float32))
