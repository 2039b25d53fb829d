"""The trainer's three roles (DESIGN.md section 3): frozen teacher, fake score, one-step generator.

How the roles share weights is decided here, where they are built, never in the training loop:
- `FullRoles`: the fake score and the generator are full-precision copies of their starting networks
  (the teacher's UNet, or a one-step base's for a stage-2 generator; a stage-1 fake score for the fake).
The loop only calls the roles, asks for their trainable parameters and their state, and exports the generator.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .denoisers import Denoiser
from .generators import OneStepConvention, OneStepGenerator


class FullRoles:
    """Teacher, fake score and generator as three networks; fake score and generator are trained in full."""

    mode = "full"

    def __init__(
        self,
        teacher: Denoiser,
        convention: OneStepConvention,
        device: str | torch.device = "cpu",
        generator_init: nn.Module | None = None,
        fake_init: nn.Module | None = None,
        frozen_dtype: torch.dtype | None = None,
        gradient_checkpointing: bool = False,
    ):
        """`generator_init` / `fake_init`: the UNets the two trained roles start from (default: the teacher's).

        The trained copies are taken in fp32 before the teacher is cast to `frozen_dtype` (bf16 on GPUs)."""
        device = torch.device(device)

        def trained_copy(unet: nn.Module | None) -> Denoiser:
            net = copy.deepcopy(unet if unet is not None else teacher.unet).float().to(device).requires_grad_(True)
            if gradient_checkpointing:
                net.enable_gradient_checkpointing()
            return Denoiser(net, teacher.schedule, teacher.prediction_type)

        self.generator = OneStepGenerator(trained_copy(generator_init), convention)
        self.fake = trained_copy(fake_init)
        self.teacher = teacher.to(device, dtype=frozen_dtype).eval().requires_grad_(False)

    # ------------------------------------------------------------------------------------ training
    def generator_parameters(self) -> list[torch.Tensor]:
        return list(self.generator.unet.parameters())

    def fake_parameters(self) -> list[torch.Tensor]:
        return list(self.fake.unet.parameters())

    def set_trainable(self, generator: bool, fake: bool) -> None:
        """A role whose parameters are frozen still passes gradients through its input (the SiD generator loss)."""
        self.generator.unet.requires_grad_(generator)
        self.fake.unet.requires_grad_(fake)

    def train_views(self, world: int, device: torch.device) -> tuple[OneStepGenerator, Denoiser, bool]:
        """(generator, fake score) as called in training, and whether the loop must all-reduce gradients itself.

        With several processes the two trained networks are wrapped in DDP, which all-reduces their gradients."""
        if world <= 1:
            return self.generator, self.fake, False
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        wrap = lambda d: Denoiser(DDP(d.unet, device_ids=ids), d.schedule, d.prediction_type)  # noqa: E731
        return OneStepGenerator(wrap(self.generator.denoiser), self.generator.convention), wrap(self.fake), False

    # --------------------------------------------------------------------------------------- state
    def generator_state(self) -> dict[str, torch.Tensor]:
        """What the EMA averages and a checkpoint stores of the generator."""
        return self.generator.unet.state_dict()

    def fake_state(self) -> dict[str, torch.Tensor]:
        return self.fake.unet.state_dict()

    def load_generator_state(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.unet.load_state_dict(state)

    def load_fake_state(self, state: dict[str, torch.Tensor]) -> None:
        self.fake.unet.load_state_dict(state)

    def export_generator(self, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """A standalone copy of the generator network, with `state` (e.g. the EMA weights) loaded."""
        net = copy.deepcopy(self.generator.unet)
        if state is not None:
            ref = net.state_dict()
            net.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items()})
        return net.eval()

    def export_fake(self) -> nn.Module:
        return copy.deepcopy(self.fake.unet).eval()
