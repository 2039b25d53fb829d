"""Model families: everything that differs between kinds of model lives in one module per family.

A family knows how to load its teacher and its one-step models (safely), encode conditions and the
unconditional branch, wrap the network as a `Denoiser`, check that a one-step base fits a teacher, build
and save the one-step pipeline, sample either kind, and which world metrics apply. `erase`, `distill`,
`sample`, `audit`, `attack` and `demo` are written once against `ModelFamily`; no code outside this package
branches on the kind of model. Adding a family means one module here, registered in `FAMILIES`, and its tests.

Family modules sit between `pipelines` (which they load and build) and the commands; the trainer, losses and
roles never import them.
"""

from __future__ import annotations

from pathlib import Path

from sfd.kernel.errors import SFDError
from sfd.core.families.base import ModelFamily
from sfd.core.families.class_unet import ClassUNetFamily
from sfd.core.families.sd import StableDiffusionFamily
from sfd.core.families.flow import FluxFamily, StableDiffusion3Family
from sfd.core.families.sdxl import StableDiffusionXLFamily

FAMILIES: tuple[ModelFamily, ...] = (ClassUNetFamily(), StableDiffusionFamily(), StableDiffusionXLFamily(), StableDiffusion3Family(),
                                     FluxFamily())


def family_named(name: str) -> ModelFamily:
    for f in FAMILIES:
        if f.name == name:
            return f
    raise SFDError(f"unknown model family {name!r}; expected one of {', '.join(f.name for f in FAMILIES)}")


def family_of_pipeline(pipeline_class: str) -> ModelFamily:
    """The family whose teacher or one-step pipeline class is `pipeline_class` (a model_index.json _class_name)."""
    for f in FAMILIES:
        if pipeline_class in f.pipeline_classes:
            return f
    known = ", ".join(c for f in FAMILIES for c in f.pipeline_classes)
    raise SFDError(f"a {pipeline_class or 'unknown'} pipeline is not supported; expected one of {known}")


def pipeline_class_of(path: str) -> str:
    """The _class_name of a model folder (or hub id, when a network exists); one-line errors otherwise."""
    from sfd.core.models import PICKLE_SUFFIXES, hub_offline, is_hub_id, model_kind

    p = Path(path)
    if p.is_file():  # other files: model_kind's "is not a folder"
        if p.suffix in PICKLE_SUFFIXES:
            raise SFDError(f"{path} is a pickled checkpoint (pickle can run code when loaded); convert it to a diffusers folder "
                           "with safetensors weights, e.g. StableDiffusionPipeline.from_single_file(...).save_pretrained(DIR), "
                           "only if you trust the file")
        if p.suffix == ".safetensors":
            raise SFDError(f"{path} is a single-file checkpoint; convert it to a diffusers folder first "
                           "(diffusers' StableDiffusionPipeline.from_single_file(...).save_pretrained(DIR))")
    if is_hub_id(path):
        if hub_offline():
            raise SFDError(f"model path {path!r} does not exist locally, and hub downloads are off (HF_HUB_OFFLINE=1)")
        from diffusers import DiffusionPipeline

        try:
            return str(DiffusionPipeline.load_config(path).get("_class_name", ""))
        except Exception as e:  # network, authentication or a missing repository
            raise SFDError(f"could not read {path}'s model_index.json from the hub ({e.__class__.__name__})") from None
    return model_kind(path)


def family_for(path: str) -> ModelFamily:
    """The family of the model at `path` (a diffusers folder or hub id)."""
    return family_of_pipeline(pipeline_class_of(path))


def load_model(path: str, device: str = "cpu", allow_pickle: bool = False):
    """(family, pipeline) of the model at `path`: any family, teacher or one-step."""
    family = family_for(path)
    return family, family.load(path, device, allow_pickle=allow_pickle)


__all__ = ["FAMILIES", "ModelFamily", "family_for", "family_named", "family_of_pipeline", "load_model", "pipeline_class_of"]


def load_class_pipeline(path: str | Path, device: str = "cpu"):
    """Load a class-conditional teacher or one-step generator folder."""
    return ClassUNetFamily().load(str(path), device)


def load_text_pipeline(path: str, device: str = "cpu", dtype=None, allow_pickle: bool = False):
    """Load a Stable Diffusion 1.x/2.x diffusers folder (or hub id when online), or an SFD one-step text folder.

    Weights must be safetensors unless `allow_pickle`; no remote code is ever run.
    """
    return StableDiffusionFamily().load(path, device, allow_pickle=allow_pickle, dtype=dtype)
