"""README.md of an export: Hub metadata, what the files are, how ComfyUI, A1111 and diffusers load them, the one
upload command, and the source folder's own card below (its paths scrubbed)."""

from __future__ import annotations

import json
from pathlib import Path

from sfd.core.export.hub import display_name, front_matter, hub_metadata, read_front_matter, scrub_paths

PLACES = {"checkpoint": "ComfyUI/models/checkpoints/ (A1111: models/Stable-diffusion/)",
          "unet": "ComfyUI/models/diffusion_models/", "lora": "ComfyUI/models/loras/ (A1111: models/Lora/)"}


def _source_card(model: Path) -> list[str]:
    p = model / "README.md"
    if not p.is_file():
        return []
    text = p.read_text(errors="replace")
    if read_front_matter(text):
        text = text.split("\n---\n", 1)[1]
    body = scrub_paths(text, here=model).strip()
    # The source's headings move one level down: they describe the model inside this export.
    body = "\n".join("#" + line if line.startswith("#") else line for line in body.splitlines())
    return ["", f"## The model ({display_name(model)})", "", body]


def _comfy(files: dict, workflow: str | None) -> list[str]:
    if workflow is None:
        return []
    where = [f"- `{name}` -> {PLACES[role]}" for role, name in files.items() if role in PLACES]
    return ["## Use it in ComfyUI", "", "Put the files where ComfyUI looks for them:", "", *where, "",
            f"then load `{workflow}` (ComfyUI: Workflow > Open, or POST it to `/prompt`): an API-format workflow with the "
            "sampler settings this model needs. Change the prompt and seed; keep the sampler nodes as they are.", ""]


def export_card(fmt: str, model: Path, family, summary: dict, files: dict, recipe, notes: dict) -> str:
    """The card. `files`: {role: file name} (checkpoint / unet / lora / folder); `notes`: {"workflow": name or None,
    "a1111": text or None, "applies_to": name of the model a LoRA applies to, "hub_id": repository id}."""
    relation = "adapter" if fmt == "kohya-lora" else "finetune"
    tags = {"single-file": ["single-file"], "kohya-lora": ["lora", "kohya"], "diffusers": []}[fmt]
    one_step = bool(recipe and recipe.one_step)
    base = summary.get("base_model") or model
    if fmt == "kohya-lora" and summary.get("roles", {}).get("adapter_applies_to") == "base":
        base = summary["generator_base"]  # an adapter's base_model is the model it adapts
    meta = hub_metadata(base, family, relation, tags, one_step=one_step)
    name = display_name(model)
    what = {"single-file": "a single-file checkpoint in the original Stable Diffusion layout (UNet, VAE, text encoders)",
            "kohya-lora": f"the generator's LoRA adapter in Kohya's format, for `{notes.get('applies_to')}`",
            "diffusers": "a diffusers pipeline folder"}[fmt]
    if files.get("unet") and not files.get("lora"):
        what = "the UNet alone, in the original layout (ComfyUI's UNet loader; text encoders and VAE from the teacher)"
    lines = [*front_matter(meta), f"# {name} ({fmt})", "", f"`sfd export {name} --format {fmt}`: {what}.", ""]
    if recipe is not None:
        how = (f"one Euler step from sigma {recipe.sigma:.6f} to 0, CFG 1" if recipe.one_step
               else f"{recipe.steps} steps at CFG {recipe.cfg:g}")
        lines += [f"Sampling: {how}.", ""]
    lines += _comfy(files, notes.get("workflow"))
    if notes.get("a1111"):
        lines += ["## Use it in AUTOMATIC1111", "", "```text", notes["a1111"].rstrip(), "```", ""]
    hub = notes.get("hub_id") or f"YOUR-NAME/{name}"
    lines += ["## Upload to the Hub", "", "From this folder, after `huggingface-cli login`:", "", "```bash",
              f"huggingface-cli upload {hub} . .", "```", ""]
    lines += ["## Export", "", "```json", json.dumps({"format": fmt, "files": files, "source": name}, indent=2), "```"]
    return "\n".join(lines + _source_card(model)) + "\n"
