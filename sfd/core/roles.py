"""The trainer's three roles (DESIGN.md section 3): frozen teacher, fake score, one-step generator.

How the roles share weights is decided here, where they are built, never in the training loop:
- `FullRoles`: the fake score and the generator are full-precision copies of their starting networks
  (the teacher's UNet, or a one-step base's for a stage-2 generator; a stage-1 fake score for the fake);
- `LoraRoles`: one frozen UNet; the fake score and the generator are LoRA adapters on it and the teacher is the
  same UNet with its adapters off (DESIGN.md section 2.2). A stage-2 generator starts from a stage-1 adapter on
  the same UNet, or, for a full one-step base, as an adapter on a frozen copy of that base.
The loop only calls the roles, asks for their trainable parameters and their state, and exports the generator.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sfd.core import adapters
from sfd.kernel.denoisers import Denoiser
from sfd.kernel.generators import OneStepConvention, OneStepGenerator

GENERATOR_ADAPTER, FAKE_ADAPTER = "generator", "fake_score"


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
            return teacher.with_network(net)

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

    def train_views(self, world_size: int, device: torch.device) -> tuple[OneStepGenerator, Denoiser, bool]:
        """(generator, fake score) as called in training, and whether the loop must all-reduce gradients itself.

        With several processes the two trained networks are wrapped in DDP, which all-reduces their gradients."""
        if world_size <= 1:
            return self.generator, self.fake, False
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        wrap = lambda d: d.with_network(DDP(d.unet, device_ids=ids))  # noqa: E731
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

    # ------------------------------------------------------------------------------- after training
    def finish_fake(self) -> nn.Module:
        """Once training is over: the fake score's own network (no copy). Call before `finish_generator`."""
        return self.fake.unet.eval()

    def finish_generator(self, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """Once training is over: the generator's own network with `state` (the EMA) loaded, not a copy; the fake
        score is dropped. The roles are not trained after this."""
        net = self.generator.unet
        if state is not None:
            ref = net.state_dict()
            with torch.no_grad():
                for k, v in state.items():
                    ref[k].copy_(v)
        self.fake = None
        return net.requires_grad_(False).eval()


class LoraRoles:
    """Teacher, fake score and generator on one frozen UNet: two LoRA adapters, and the adapters off for the teacher."""

    mode = "lora"

    def __init__(
        self,
        teacher: Denoiser,
        convention: OneStepConvention,
        device: str | torch.device = "cpu",
        rank: int = adapters.DEFAULT_RANK,
        targets: list[str] | None = None,
        generator_init: nn.Module | None = None,
        generator_adapter: dict[str, torch.Tensor] | None = None,
        fake_adapter: dict[str, torch.Tensor] | None = None,
        frozen_dtype: torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        seed: int = 0,
    ):
        """`generator_init`: a full one-step base UNet; the generator is then an adapter on a frozen copy of it (two
        frozen UNets). Without it the generator adapter sits on the teacher's UNet, starting from
        `generator_adapter` (a stage-1 adapter) if given, else from zero (the teacher's one-step denoise).
        Adapter weights are trained in fp32 whatever `frozen_dtype` the UNets are kept in; peft's random init of
        the A matrices is drawn from `seed` (in a forked RNG: the global one is left as it was)."""
        if not targets:
            raise ValueError("LoRA needs target module names")
        device = torch.device(device)
        self.rank, self.targets, self.frozen_dtype = rank, list(targets), frozen_dtype
        unet = teacher.unet.to(device, dtype=frozen_dtype).eval().requires_grad_(False)
        if generator_init is None:
            gen_unet = unet
        else:
            gen_unet = copy.deepcopy(generator_init).to(device, dtype=frozen_dtype).eval().requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            adapters.add_adapter(unet, FAKE_ADAPTER, rank, self.targets)
            adapters.add_adapter(gen_unet, GENERATOR_ADAPTER, rank, self.targets)
        self.unet, self.gen_unet = unet, gen_unet
        self.switches = {id(u): adapters.AdapterSwitch(u) for u in {id(unet): unet, id(gen_unet): gen_unet}.values()}
        self.switch, self.gen_switch = self.switches[id(unet)], self.switches[id(gen_unet)]
        for p in [*self.generator_parameters(), *self.fake_parameters()]:
            p.data = p.data.float()  # fp32 master weights for the adapters, even on a bf16 UNet
        if generator_adapter is not None:
            adapters.load_adapter_state(gen_unet, GENERATOR_ADAPTER, generator_adapter)
        if fake_adapter is not None:
            adapters.load_adapter_state(unet, FAKE_ADAPTER, fake_adapter)
        if gradient_checkpointing:
            for u, sw in ((unet, self.switch), (gen_unet, self.gen_switch)):
                u.enable_gradient_checkpointing(gradient_checkpointing_func=sw.checkpointing_func())
        view = lambda u, sw, name: teacher.with_network(adapters.AdapterView(u, sw, name))  # noqa: E731
        self.teacher = view(unet, self.switch, None)
        self.fake = view(unet, self.switch, FAKE_ADAPTER)
        self.generator = OneStepGenerator(view(gen_unet, self.gen_switch, GENERATOR_ADAPTER), convention)
        self.set_trainable(generator=True, fake=True)

    # ------------------------------------------------------------------------------------ training
    def generator_parameters(self) -> list[torch.Tensor]:
        return self.gen_switch.parameters(GENERATOR_ADAPTER)

    def fake_parameters(self) -> list[torch.Tensor]:
        return self.switch.parameters(FAKE_ADAPTER)

    def set_trainable(self, generator: bool, fake: bool) -> None:
        self.gen_switch.trainable[GENERATOR_ADAPTER] = generator
        self.switch.trainable[FAKE_ADAPTER] = fake
        for sw in self.switches.values():
            sw.apply_trainability()

    def train_views(self, world_size: int, device: torch.device) -> tuple[OneStepGenerator, Denoiser, bool]:
        """The roles themselves; with several processes the loop all-reduces the adapters' gradients (DDP would refuse
        the adapters that are inactive in a pass but require grad)."""
        return self.generator, self.fake, world_size > 1

    # --------------------------------------------------------------------------------------- state
    def generator_state(self) -> dict[str, torch.Tensor]:
        return self.gen_switch.state(GENERATOR_ADAPTER)

    def fake_state(self) -> dict[str, torch.Tensor]:
        return self.switch.state(FAKE_ADAPTER)

    def load_generator_state(self, state: dict[str, torch.Tensor]) -> None:
        adapters.load_adapter_state(self.gen_unet, GENERATOR_ADAPTER, state)

    def load_fake_state(self, state: dict[str, torch.Tensor]) -> None:
        adapters.load_adapter_state(self.unet, FAKE_ADAPTER, state)

    def export_generator(self, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """The generator as a plain network: its base with the adapter (`state`, e.g. the EMA) merged in, fp32."""
        return adapters.merged_copy(self.gen_unet, GENERATOR_ADAPTER, state)

    def export_fake(self) -> nn.Module:
        return adapters.merged_copy(self.unet, FAKE_ADAPTER)

    # ------------------------------------------------------------------------------- after training
    def finish_fake(self) -> nn.Module:
        """Once training is over: the fake score merged into a plain network. A copy: the generator's adapter still
        needs the base weights (`finish_generator` merges it in place afterwards)."""
        return self.export_fake()

    def finish_generator(self, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """Once training is over: the generator's base network itself with its adapter (`state`, e.g. the EMA)
        merged in, fp32: no copy of the network (the merged copy of `export_generator` raised the peak of a whole
        `sfd erase` above its training's). All adapters leave that network; the roles are not usable after this."""
        return adapters.merge_in_place(self.gen_unet, GENERATOR_ADAPTER, state)
