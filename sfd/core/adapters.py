"""LoRA adapters on one frozen network, through peft (DESIGN.md section 2.2).

Several named adapters live on one UNet; a role is the UNet with one adapter active (or none: the teacher).
peft's switches also set `requires_grad` (`set_adapter` makes only the active adapter trainable,
`enable_adapters(False)` freezes all of them), and a parameter frozen when `backward()` runs gets no gradient.
So the switches here never decide trainability: `AdapterSwitch` remembers which adapters the training loop
wants trained and restores that after every switch. Gradient checkpointing recomputes blocks during backward
with whatever adapter is active then; `checkpointing_func` records the adapter at forward time and restores
it for the recomputation, so roles can be switched inside one graph.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

DEFAULT_RANK = 16


def lora_config(rank: int, targets: list[str], alpha: float | None = None):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets, init_lora_weights=True)


def add_adapter(unet: nn.Module, name: str, rank: int, targets: list[str]) -> None:
    """A zero-initialised LoRA adapter (B = 0: the network is unchanged until it trains), via diffusers' adapter API
    where the model has it (UNet2DConditionModel, transformers), else peft's `inject_adapter_in_model` (UNet2DModel)."""
    import warnings

    config = lora_config(rank, targets)
    with warnings.catch_warnings():  # peft warns that a second adapter joins the first: that is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        if hasattr(unet, "add_adapter"):
            unet.add_adapter(config, adapter_name=name)
        else:
            from peft import inject_adapter_in_model

            inject_adapter_in_model(config, unet, adapter_name=name)


def tuner_layers(unet: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


def adapter_parameters(unet: nn.Module, name: str) -> list[torch.nn.Parameter]:
    """The parameters of adapter `name` (its LoRA A and B matrices), in a fixed order. Linear and conv layers name
    them `...lora_A.<name>.weight`; embedding layers keep them in a ParameterDict, `...lora_embedding_A.<name>`."""
    return [p for n, p in unet.named_parameters() if "lora_" in n and (f".{name}." in n or n.endswith(f".{name}"))]


def adapter_state(unet: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter `name`'s weights, keyed without the adapter name (peft's state-dict format)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(unet, adapter_name=name)


def load_adapter_state(unet: nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    ref = adapter_state(unet, name)
    missing = set(ref) - set(state)
    if missing or set(state) - set(ref):
        raise ValueError(f"adapter state does not fit adapter {name!r}: {len(missing)} missing, {len(set(state) - set(ref))} unexpected keys")
    set_peft_model_state_dict(unet, {k: v.to(ref[k].dtype) for k, v in state.items()}, adapter_name=name)


class AdapterSwitch:
    """Which adapter of a UNet is active, with trainability kept as the training loop set it."""

    def __init__(self, unet: nn.Module):
        self.unet = unet
        self.layers = tuner_layers(unet)
        self.active: str | None = None
        self.trainable: dict[str, bool] = {}
        self._parameters: dict[str, list[torch.nn.Parameter]] = {}
        self._state_keys: dict[str, list[tuple[str, torch.nn.Parameter]]] = {}

    def parameters(self, name: str) -> list[torch.nn.Parameter]:
        """`adapter_parameters(unet, name)`, found once: the roles ask for them several times an iteration, and a
        scan of the UNet's parameter names costs as much as a small network's forward pass."""
        if name not in self._parameters:
            self._parameters[name] = adapter_parameters(self.unet, name)
        return self._parameters[name]

    def state(self, name: str) -> dict[str, torch.Tensor]:
        """`adapter_state(unet, name)` (peft's keys), from parameters mapped to peft's keys once."""
        if name not in self._state_keys:
            state = adapter_state(self.unet, name)
            by_storage = {p.data_ptr(): p for p in self.parameters(name)}
            if len(by_storage) != len(state) or any(v.data_ptr() not in by_storage for v in state.values()):
                raise RuntimeError(f"adapter {name!r}: peft's state dict does not map one to one onto its parameters")
            self._state_keys[name] = [(k, by_storage[v.data_ptr()]) for k, v in state.items()]
        return {k: p.detach() for k, p in self._state_keys[name]}

    def activate(self, name: str | None) -> None:
        """Adapter `name` on (None: all adapters off, the base network)."""
        if name == self.active:
            return
        for layer in self.layers:
            if name is None:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_adapter(name, inference_mode=True)
        self.active = name
        self.apply_trainability()

    def set_trainable(self, name: str, trainable: bool) -> None:
        self.trainable[name] = trainable
        self.apply_trainability()

    def apply_trainability(self) -> None:
        for name, trainable in self.trainable.items():
            for p in self.parameters(name):
                p.requires_grad_(trainable)

    @contextlib.contextmanager
    def using(self, name: str | None):
        """Adapter `name` active inside the block, the previous one after it."""
        previous = self.active
        self.activate(name)
        try:
            yield
        finally:
            self.activate(previous)

    def checkpointing_func(self):
        """A `gradient_checkpointing_func` for diffusers models: the recomputation in backward runs with the adapter
        that was active in the forward pass (torch.utils.checkpoint's context_fn)."""
        from torch.utils.checkpoint import checkpoint

        def run(function, *args, **kwargs):
            at_forward = self.active
            return checkpoint(function, *args, use_reentrant=False,
                              context_fn=lambda: (contextlib.nullcontext(), self.using(at_forward)), **kwargs)

        return run


class AdapterView(nn.Module):
    """The UNet with one adapter active (or none): the network of one role, called like the UNet itself."""

    def __init__(self, unet: nn.Module, switch: AdapterSwitch, name: str | None):
        super().__init__()
        self.unet = unet
        self.switch = switch
        self.adapter = name

    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, *args, **kwargs):
        self.switch.activate(self.adapter)
        return self.unet(*args, **kwargs)


def merged_copy(unet: nn.Module, name: str, state: dict[str, torch.Tensor] | None = None, base: nn.Module | None = None) -> nn.Module:
    """A plain network (no peft layers) equal to the base weights with adapter `name` (its current weights, or
    `state`) merged in, in fp32: what the merged one-step folder stores. `base`: full-precision base weights to
    merge into (e.g. reloaded from disk when the UNet was kept in bf16); default: `unet`'s own."""
    return merge_in_place(copy.deepcopy(unet), name, state, base)


def merge_in_place(unet: nn.Module, name: str, state: dict[str, torch.Tensor] | None = None, base: nn.Module | None = None) -> nn.Module:
    """`merged_copy` without the copy: `unet` itself becomes the plain fp32 network with adapter `name` merged in, and
    every adapter on it is gone. For when training is over: a copy of an SD-sized network is gigabytes."""
    work = unet.float()
    if state is not None:
        load_adapter_state(work, name, state)
    if base is not None:
        ref = base.state_dict()
        with torch.no_grad():
            for key, tensor in work.state_dict().items():
                if "lora_" not in key:
                    tensor.copy_(ref[key.replace(".base_layer", "")].float())
    layers = tuner_layers(work)
    for layer in layers:
        layer.merge(adapter_names=[name])
    wrapped = {id(layer) for layer in layers}
    for module_name, module in list(work.named_modules()):
        if id(module) in wrapped:
            parent_name, _, child = module_name.rpartition(".")
            setattr(work.get_submodule(parent_name) if parent_name else work, child, module.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in vars(work):
            delattr(work, attr)
    return work.eval()
