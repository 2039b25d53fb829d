"""`sfd export`: an erased (or any supported) model folder as files that A1111, ComfyUI and the Hub take as they are.

Formats: `single-file` (the original Stable Diffusion layout, SD 1.x/2.x and SDXL; `unet_only` for ComfyUI's UNet
loader), `kohya-lora` (a LoRA run's generator adapter in Kohya keys), `diffusers` (a copy of the folder, links
resolved). Beside the weights: a ComfyUI API workflow and an A1111 settings note with the sampler settings the model
needs, and a README with Hub metadata. Every refusal is one SFDError line naming what is possible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sfd.kernel.errors import SFDError

FORMATS = ("single-file", "kohya-lora", "diffusers")
WORKFLOWS = ("auto", "one-step", "none")
WORKFLOW_FILE = "comfyui_workflow_api.json"
A1111_FILE = "a1111_settings.txt"


@dataclass
class Source:
    path: Path
    family: object
    pipeline_class: str
    one_step: bool
    summary: dict

    @property
    def lora(self) -> bool:
        return self.summary.get("roles", {}).get("mode") == "lora"

    def lora_target(self) -> str:
        """The folder whose network the generator adapter was trained on (sfd_config.json roles.adapter_applies_to)."""
        on_base = self.summary["roles"].get("adapter_applies_to") == "base"
        return self.summary["generator_base"] if on_base else self.summary["base_model"]


def inspect_source(model: str) -> Source:
    from sfd.core.families import family_of_pipeline, pipeline_class_of

    if not Path(model).is_dir():
        raise SFDError(f"MODEL {model!r} is not a model folder")
    cls = pipeline_class_of(model)
    family = family_of_pipeline(cls)
    cfg = Path(model) / "sfd_config.json"
    summary = json.loads(cfg.read_text()) if cfg.is_file() else {}
    return Source(Path(model), family, cls, family.is_one_step_class(cls), summary)


def check_request(src: Source, fmt: str, unet_only: bool, workflow: str) -> None:
    """Refuse, before any work, what has no such format; each line names what is possible."""
    fam = src.family
    if fmt not in FORMATS:
        raise SFDError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if unet_only and fmt != "single-file":
        raise SFDError("--unet-only applies to --format single-file")
    if fmt in ("single-file", "kohya-lora") and fam.single_file_layout is None:
        raise SFDError(f"a {fam.description} model has no {fmt} format here (single-file and kohya-lora: Stable Diffusion "
                       "1.x/2.x and SDXL); export it with --format diffusers")
    if fmt == "kohya-lora":
        from sfd.core.export.lora import LORA_FILE

        if not src.lora:
            raise SFDError(f"{src.path} is a full-mode model (its weights were trained whole, no LoRA adapter): export it "
                           "with --format single-file or diffusers; kohya-lora needs a folder of `sfd erase --lora` or "
                           "`sfd distill --lora`")
        if not (src.path / LORA_FILE).is_file():
            raise SFDError(f"{src.path} has no {LORA_FILE} (the generator adapter in diffusers' keys); re-run the erase with "
                           "this version, or export the merged weights with --format single-file")
    if workflow == "one-step":
        if not src.one_step:
            raise SFDError(f"{src.path} is a multi-step {src.pipeline_class} (a teacher or a baseline such as ESD/UCE): it has "
                           "no one-step workflow; use --workflow auto (its own steps and guidance) or none")
        if not fam.image_ui_export or fmt == "diffusers":
            raise SFDError("--workflow one-step needs --format single-file or kohya-lora of a text-to-image model")


def export(model: str, out: str, fmt: str, *, unet_only: bool = False, workflow: str = "auto", overwrite: bool = False,
           prompt: str | None = None, hub_id: str | None = None) -> dict:
    """Write the export into the folder `out` (replaced only with `overwrite`); returns what was written."""
    from sfd.kernel.outputs import check_output_dir, staged_dir

    out_path = check_output_dir(out, overwrite, inputs={"MODEL": model})
    src = inspect_source(model)
    check_request(src, fmt, unet_only, workflow)
    name = out_path.resolve().name
    with staged_dir(out_path) as tmp:
        if fmt == "diffusers":
            files, recipe, notes = _write_diffusers(src, tmp), None, {}
        else:
            files, recipe, notes = _write_weights(src, tmp, fmt, name, unet_only, workflow, prompt)
        notes["hub_id"] = hub_id
        from sfd.core.export.card import export_card

        (tmp / "README.md").write_text(export_card(fmt, src.path, src.family, src.summary, files, recipe, notes))
    return {"out": str(out_path), "format": fmt, "files": files, "workflow": notes.get("workflow"),
            "sigma": recipe.sigma if recipe else None}


def _write_diffusers(src: Source, tmp: Path) -> dict:
    """A copy of the folder with links resolved (a bundled base's components link into its teacher) and without
    resumable training state; its README is replaced by the export's card, which carries the original below."""
    import shutil

    skip = shutil.ignore_patterns("README.md", "training_state*", ".*")
    shutil.copytree(src.path, tmp, symlinks=False, ignore=skip, dirs_exist_ok=True)
    return {"folder": "."}


def _write_weights(src: Source, tmp: Path, fmt: str, name: str, unet_only: bool, workflow: str, prompt: str | None):
    from safetensors.torch import save_file

    from sfd.core.export.hub import display_name
    from sfd.core.export.samplers import a1111_note, comfy_workflow

    pipe = src.family.load(str(src.path), "cpu")
    recipe = build_recipe(src, pipe, prompt, workflow)
    meta = {"format": "pt", "sfd.source": display_name(src.path)}
    if recipe and recipe.one_step:
        meta.update({"sfd.sigma_init": repr(recipe.sigma), "sfd.t_init": repr(recipe.t_init),
                     "sfd.prediction_type": recipe.prediction_type})
    file = f"{name}.safetensors"
    notes: dict = {}
    if fmt == "kohya-lora":
        from sfd.core.export.lora import LORA_FILE, kohya_state

        save_file(kohya_state(src.path / LORA_FILE), str(tmp / file), metadata=meta)
        notes["applies_to"] = display_name(src.lora_target())
        files, loader = {"lora": file}, {"checkpoint": f"{notes['applies_to']}.safetensors", "lora": file}
    else:
        from sfd.core.export.single_file import to_single_file

        save_file(to_single_file(src.family.single_file_layout, pipe, unet_only=unet_only), str(tmp / file), metadata=meta)
        teacher = display_name(src.summary.get("base_model") or src.path)
        files = {"unet": file} if unet_only else {"checkpoint": file}
        loader = {"checkpoint": f"{teacher}.safetensors", "unet": file} if unet_only else {"checkpoint": file}
    if recipe is not None:
        (tmp / WORKFLOW_FILE).write_text(json.dumps(comfy_workflow(recipe, loader), indent=2) + "\n")
        (tmp / A1111_FILE).write_text(a1111_note(recipe, ", ".join(files.values())))
        notes.update(workflow=WORKFLOW_FILE, a1111=(tmp / A1111_FILE).read_text())
        files.update(workflow=WORKFLOW_FILE, a1111=A1111_FILE)
    return files, recipe, notes


def build_recipe(src: Source, pipe, prompt: str | None, workflow: str):
    """The sampler settings of `pipe`, or None when no workflow is wanted (or a one-step convention has no UI recipe)."""
    from sfd.kernel.generators import OneStepConvention
    from sfd.core.models import world_meta
    from sfd.core.export.samplers import Recipe

    if workflow == "none":
        return None
    fam = src.family
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    size = int(fam.network(pipe).config.sample_size)
    text = prompt or next(iter(src.summary.get("concepts", {}).get("forget_prompts") or []), None) or "a photo"
    if not src.one_step:
        steps, cfg = fam.sampler_defaults(pipe, world_meta(str(src.path)))
        return Recipe(False, None, None, int(steps), float(cfg), prediction, size, text)
    convention = OneStepConvention.from_config(pipe.config)
    if not convention.is_sid:
        if workflow == "one-step":
            raise SFDError(f"{src.path}'s one-step convention {convention.describe()} has no UI recipe here (SiD's convention "
                           "has: one Euler step from sigma_init); use --workflow none")
        return None
    sigma = float(fam.generator(pipe).sigma_init)
    return Recipe(True, sigma, convention.timestep, 1, 1.0, prediction, size, text)
