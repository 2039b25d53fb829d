"""Exponential moving average of a module's parameters (or of any named tensors), with the usual warm-up of the decay."""

from __future__ import annotations

import torch
from torch import nn


def _tensors(source: nn.Module | dict) -> dict[str, torch.Tensor]:
    return source.state_dict() if isinstance(source, nn.Module) else source


class EMA:
    """`source`: a module (its state dict is averaged) or a dict of named tensors, e.g. one adapter's weights."""

    def __init__(self, source: nn.Module | dict, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in _tensors(source).items()}

    @torch.no_grad()
    def update(self, source: nn.Module | dict) -> None:
        self.num_updates += 1
        # Warm-up: early averages must not be dominated by the initial weights.
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for k, v in _tensors(source).items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                s.copy_(v)

    def copy_to(self, module: nn.Module) -> nn.Module:
        """Load the averaged weights into `module` (in its own dtype) and return it."""
        module.load_state_dict({k: v.to(module.state_dict()[k].dtype) for k, v in self.shadow.items()})
        return module

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
