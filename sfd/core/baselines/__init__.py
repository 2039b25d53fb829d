"""The erasure baselines users know, in the same toolkit and measured the same way: `sfd erase --method esd-x|esd-u|uce`
(the methods of `sfd.core.methods` that edit the teacher; adding one is a module and a line there).

They edit the multi-step teacher itself (no distillation), so their outputs are folders of the teacher's own
pipeline class (e.g. a `StableDiffusionPipeline`) that `sfd sample`, `audit`, `attack` and `demo` load like any
model; the world's sampler settings (`sfd_world.json`) travel with them. Written against `sfd.core.families`, for any
text-to-image family whose network reads the prompt through cross-attention (SD 1.x/2.x, SDXL).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Sequence

from sfd.kernel.errors import SFDError
from sfd.core.methods import METHODS as _REGISTRY, baselines

# Names kept for callers of earlier versions; the registry is sfd.core.methods.
METHODS = tuple(_REGISTRY)
BASELINES = baselines()
REFERENCES = {name: _REGISTRY[name].reference for name in BASELINES}


def run_baseline(method: str, model: str, out: str, forget: Sequence[str], override: str | None, settings=None,
                 retain_prompts: Sequence[str] | None = None, overwrite: bool = False, device: str = "cpu",
                 progress: bool = True, allow_pickle: bool = False, evaluate=None) -> dict:
    """Erase `forget` from the teacher at `model` with a baseline; writes a teacher-class pipeline folder to `out`.

    `settings`: the method's settings (`Method.settings`: an `ESDConfig` for esd-x, esd-u, a `UCEConfig` for uce);
    None for the defaults of the model's preset."""
    from sfd.core.families import family_for
    from sfd.core.models import quiet_diffusers
    from sfd.kernel.outputs import check_output_dir, staged_dir

    m = _REGISTRY.get(method)
    if m is None or not m.is_baseline:
        raise SFDError(f"unknown baseline {method!r}; expected one of {', '.join(baselines())}")
    out_path = check_output_dir(out, overwrite, {"--model": model})
    t0 = time.perf_counter()
    family = family_for(model)
    if family.condition_from_list:  # a class model: no prompt, no text conditioning for ESD or UCE to edit
        raise SFDError(f"--method {method} erases text concepts; {model} is a {family.description} model (use --method sfd)")
    pipe = family.load(model, device, allow_pickle=allow_pickle)
    if family.is_one_step(pipe):
        raise SFDError(f"--method {method} edits a multi-step teacher; {model} is a one-step generator")
    if override is None or str(override).strip().lower() == "random":
        raise SFDError(f"--method {method} needs an --override text: the concept the erased prompts are guided to"
                       + (f" ({m.override_use})" if m.override_use else ""))
    from sfd.core.models import world_meta

    conds = family.conditions(pipe, list(forget), override, retain_prompts=retain_prompts,  # the prompts SFD's erase uses
                              world_meta=world_meta(model) if Path(model).is_dir() else {}, device=device)
    settings = settings or default_settings(method, family, model, forget)
    denoiser = family.teacher_denoiser(pipe)
    shape = family.latent_shape(pipe)
    kind = type(m.settings())
    if not isinstance(settings, kind):
        raise SFDError(f"--method {method} takes {kind.__name__.removesuffix('Config')} settings")
    record = m.edit(denoiser, conds, settings, family=family, pipe=pipe, forget=forget, shape=shape, device=device,
                    progress=progress)
    seconds = time.perf_counter() - t0
    concepts = conds.describe()
    metrics = evaluate(pipe, concepts) if evaluate is not None else None
    summary = {"stage": f"baseline-{method}", "method": method, "reference": m.reference, "family": family.name,
               "base_model": str(model), "concepts": concepts, "settings": settings.describe(), "edit": record,
               "erase_seconds": seconds, "metrics": metrics}
    with staged_dir(out_path) as tmp:
        with quiet_diffusers():
            pipe.save_pretrained(tmp, safe_serialization=True)
        world = Path(model) / "sfd_world.json"
        if world.is_file():  # the world's sampler settings and prompts: the erased teacher is sampled like its original
            shutil.copy(world, tmp / "sfd_world.json")
        (tmp / "sfd_config.json").write_text(json.dumps(summary, indent=2, default=str))
        (tmp / "README.md").write_text(_card(summary, family))
    return summary


def default_settings(method: str, family, model: str, forget=()):
    """The model's preset for the baseline and these forget concepts (sfd/core/config.py `baseline_preset`): the paper's
    settings outside the worlds."""
    from sfd.core.config import baseline_preset
    from sfd.core.models import world_meta

    meta = world_meta(model) if Path(model).is_dir() else {}
    return baseline_preset(method, meta.get("world"), forget)


def _card(summary: dict, family) -> str:
    from sfd.core.export.hub import display_name, front_matter, hub_metadata

    c = summary["concepts"]
    meta = hub_metadata(summary["base_model"], family, one_step=False, tags=[f"{summary['method']}-baseline"])
    lines = [*front_matter(meta), f"# {', '.join(c['forget'])} erased with {summary['method'].upper()} (baseline)", "",
             f"{summary['reference']}, applied by `sfd erase --method {summary['method']}` to `{display_name(summary['base_model'])}` "
             f"({family.description}). A multi-step {family.teacher_pipeline}: sample it like the original model.", "",
             "| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {json.dumps(v)} |" for k, v in summary["settings"].items() if k != "paper"]
    lines += [f"| paper's settings | {json.dumps(summary['settings'].get('paper'))} |",
              f"| erase seconds | {summary['erase_seconds']:.1f} |", ""]
    if summary.get("metrics"):
        lines += ["## Metrics", "", "```json", json.dumps(summary["metrics"], indent=2), "```", ""]
    return "\n".join(lines)
