"""The erasure methods of `sfd erase --method`: one registry, from which the CLI's choices and help, the baselines'
dispatch (`sfd.core.baselines.run_baseline`) and the benchmarks' rows are built.

Adding a method: a module that edits the teacher (its settings dataclass with the paper's values as defaults, with
`validate()` and `describe()`; an edit function), and one `register(Method(...))` line below. World-tuned settings,
if any, go beside the others in `sfd.core.config.world_baseline_presets`.

The edits import torch when called, not here: `sfd --help` builds its choices from this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sfd.kernel.errors import SFDError


@dataclass(frozen=True)
class Method:
    """One erasure method.

    `edit(denoiser, conds, settings, *, family, pipe, forget, shape, device, progress) -> dict` changes the teacher's
    network in place and returns a record of the edit; None for SFD itself, which distils a one-step generator
    (`sfd.core.erase.run_sfd`, with the model family's preset from `sfd.core.config`). `settings()` gives the paper's
    settings (a dataclass with `validate()` and `describe()`)."""

    name: str
    description: str  # one line, for `sfd erase --help`
    reference: str  # the paper, for model cards
    edit: Callable[..., dict] | None = None
    settings: Callable[[], object] | None = None
    closed_form: bool = False  # no iterations: --steps does not apply
    override_use: str = ""  # what --override is to the method, for its error line

    @property
    def is_baseline(self) -> bool:
        """Edits the multi-step teacher itself (no distillation)."""
        return self.edit is not None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def method_named(name: str) -> Method:
    """The method `name`; one line naming the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise SFDError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}") from None


def baselines() -> tuple[str, ...]:
    """The names of the methods that edit the teacher itself, in registry order."""
    return tuple(m.name for m in METHODS.values() if m.is_baseline)


def help_text() -> str:
    """`sfd erase --method`'s help: each method's line."""
    first, *rest = METHODS.values()
    return "; ".join([f"{first.name} (default): {first.description}"] + [f"{m.name}: {m.description}" for m in rest])


# ------------------------------------------------------------------------------------------ the methods
# The edits below adapt each module's own function to `Method.edit`'s signature.

def _esd(which: str) -> Callable[..., dict]:
    def edit(denoiser, conds, settings, *, family, pipe, forget, shape, device, progress) -> dict:
        from sfd.core.baselines.esd import train_esd
        from sfd.core.concepts import as_condition

        forget_cond = conds.forget
        if settings.prompts == "concept":  # the concept text alone, as the ESD scripts train
            forget_cond = as_condition(family.encode(pipe, list(forget), device))
        return train_esd(denoiser, forget_cond, conds.empty, shape, which, settings, device, progress)
    return edit


def _esd_settings():
    from sfd.core.baselines.esd import ESDConfig

    return ESDConfig()


def _uce(denoiser, conds, settings, *, family, pipe, forget, shape, device, progress) -> dict:
    from sfd.core.baselines.uce import apply_uce

    return apply_uce(denoiser, conds.forget, conds.override, conds.retain, shape, settings, device)


def _uce_settings():
    from sfd.core.baselines.uce import UCEConfig

    return UCEConfig()


_ESD_OVERRIDE = "recorded; ESD itself guides away from the concept"
register(Method("sfd", "a one-step erased model (Score Forgetting Distillation)",
                "Chen, Zhang & Zhou, Score Forgetting Distillation, ICLR 2025"))
register(Method("esd-x", "baseline ESD-x, fine-tuning the multi-step teacher's cross-attention (--steps: ESD iterations)",
                "Gandikota et al., Erasing Concepts from Diffusion Models, ICCV 2023 (ESD-x: cross-attention fine-tuned)",
                _esd("x"), _esd_settings, override_use=_ESD_OVERRIDE))
register(Method("esd-u", "baseline ESD-u, fine-tuning the teacher's other layers (--steps: ESD iterations)",
                "Gandikota et al., Erasing Concepts from Diffusion Models, ICCV 2023 (ESD-u: non-cross-attention fine-tuned)",
                _esd("u"), _esd_settings, override_use=_ESD_OVERRIDE))
register(Method("uce", "baseline UCE, a closed-form edit of the teacher's cross-attention keys and values",
                "Gandikota et al., Unified Concept Editing in Diffusion Models, WACV 2024 (closed-form key/value edit)",
                _uce, _uce_settings, closed_form=True, override_use="UCE's guide concept"))
