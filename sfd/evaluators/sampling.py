"""Models as an audit samples them: loading any family's folder, generating from per-image seeds, and the 8-bit PNGs
that scores are computed on (sfd/evaluators/audit.py's reproducibility rules)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sfd.kernel.errors import SFDError


@dataclass
class LoadedModel:
    """A pipeline and what the audit needs to know to sample it the same way every time."""

    label: str
    path: str
    kind: str  # what each image is conditioned on: "text" (a prompt) or "class" (a class name); the family's condition_kind
    pipeline: str  # class name from model_index.json
    pipe: object = field(repr=False)
    one_step: bool
    steps: int | None  # sampler steps used (None for one-step models)
    guidance: float | None  # default guidance (None for one-step models)
    image_size: int
    family: object = field(default=None, repr=False)  # sfd.core.families.ModelFamily

    def describe(self) -> dict:
        return {"label": self.label, "path": self.path, "kind": self.kind, "pipeline": self.pipeline, "one_step": self.one_step,
                "steps": self.steps, "default_guidance": self.guidance, "image_size": self.image_size}


def inspect_model(path: str) -> str:
    """The pipeline class of a model folder, checked before any work starts (one-line errors)."""
    from sfd.core.families import family_of_pipeline, pipeline_class_of

    kind = pipeline_class_of(path)
    family_of_pipeline(kind)  # raises for a pipeline no family supports
    return kind


def model_labels(paths: Sequence[str]) -> list[str]:
    """Short unique labels: folder names, with '#2', '#3' for repeats."""
    labels = []
    for p in paths:
        base = Path(p.rstrip("/")).name or p
        label, k = base, 2
        while label in labels:
            label, k = f"{base}#{k}", k + 1
        labels.append(label)
    return labels


class _QuietLoading:
    """Hide diffusers'/transformers' loading bars (one per component: noise in an audit's output)."""

    def __enter__(self):
        import diffusers.utils.logging as dl
        import transformers.utils.logging as tl

        self.mods = [(m, m.is_progress_bar_enabled()) for m in (dl, tl)]
        for m, _ in self.mods:
            m.disable_progress_bar()

    def __exit__(self, *exc):
        for m, was in self.mods:
            if was:
                m.enable_progress_bar()


def load_model(path: str, label: str, device: str = "cpu", steps: int | None = None, allow_pickle: bool = False) -> LoadedModel:
    with _QuietLoading():
        return _load_model(path, label, device, steps, allow_pickle)


def _load_model(path: str, label: str, device: str, steps: int | None, allow_pickle: bool) -> LoadedModel:
    from sfd.core.families import family_of_pipeline
    from sfd.core.models import world_meta

    pipeline = inspect_model(path)
    family = family_of_pipeline(pipeline)
    meta = world_meta(path) if Path(path).is_dir() else {}
    pipe = family.load(path, device, allow_pickle=allow_pickle)
    one_step = family.is_one_step(pipe)
    default_steps, guidance = family.sampler_defaults(pipe, meta)
    n_steps = None if one_step else (steps or default_steps)
    return LoadedModel(label, path, family.condition_kind, pipeline, pipe, one_step, n_steps, guidance, family.image_size(pipe),
                       family=family)


def check_prompts(model: LoadedModel, prompts: Sequence[str]) -> None:
    """Each prompt must be a condition the model takes (a class model's prompts name classes): one-line errors."""
    for p in prompts:
        try:
            model.family.check_condition(model.pipe, p)
        except SFDError as e:
            raise SFDError(f"{model.label} {e}") from None


@torch.no_grad()
def generate(model: LoadedModel, prompts: Sequence[str], seeds: Sequence[int], guidance: float | None,
             negative_prompt: str | None = None) -> torch.Tensor:
    """Images in [0, 1] (NCHW, CPU), one per (prompt, seed); noise comes from per-image CPU generators."""
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    check_prompts(model, prompts)
    images = model.family.sample(model.pipe, list(prompts), gens, steps=model.steps, guidance=guidance, negative_prompt=negative_prompt)
    return images.float().cpu().clamp(0, 1)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """What a PNG stores: 8 bits per channel."""
    return (images * 255).round() / 255


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write atomically: a killed run never leaves a truncated PNG under the final name."""
    from PIL import Image

    arr = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0], "L") if arr.shape[-1] == 1 else Image.fromarray(arr, "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def load_png(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
    t = torch.from_numpy(arr.copy()).float() / 255
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


