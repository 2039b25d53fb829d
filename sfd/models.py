"""Loading models a user points at: teacher and erased pipeline folders, judges, safely.

Only safetensors weights are loaded. A folder that holds pickled weights (.bin/.ckpt/.pt/.pkl/.pth)
and no safetensors is refused with a clear message unless the caller allows pickle explicitly.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from .errors import SFDError

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
CLASS_PIPELINES = ("ClassConditionalPipeline", "OneStepClassPipeline")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def checkpoints_dir() -> Path:
    """The bundled small models (the project's worlds); `SFD_CHECKPOINTS` overrides."""
    import os

    return Path(os.environ.get("SFD_CHECKPOINTS", repo_root() / "checkpoints"))


def read_model_index(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise SFDError(f"model path {str(path)!r} does not exist")
    if not p.is_dir():
        raise SFDError(f"model path {str(path)!r} is not a folder; expected a diffusers pipeline folder")
    index = p / "model_index.json"
    if not index.is_file():
        raise SFDError(f"{str(path)!r} is not a diffusers pipeline folder (no model_index.json)")
    try:
        return json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SFDError(f"{index} is not valid JSON ({e.__class__.__name__})") from None


def check_weights_are_safe(path: str | Path, allow_pickle: bool = False) -> None:
    """Refuse folders whose weights are pickled (pickle can run code on load)."""
    p = Path(path)
    files = [f for f in p.rglob("*") if f.is_file()]
    safe = [f for f in files if f.suffix == ".safetensors"]
    pickled = [f for f in files if f.suffix in PICKLE_SUFFIXES]
    if pickled and not safe and not allow_pickle:
        raise SFDError(
            f"{p} holds pickled weights ({pickled[0].name}) and no safetensors; pickle can run code when loaded. "
            "Convert them to safetensors, or pass --allow-pickle if you trust the file"
        )


def model_kind(path: str | Path) -> str:
    """The pipeline class name recorded in the folder's model_index.json."""
    return read_model_index(path).get("_class_name", "")


def _quiet_loading() -> None:
    """diffusers draws a progress bar per component load; our commands have their own."""
    from diffusers.utils import logging

    logging.disable_progress_bar()


@contextmanager
def quiet_diffusers():
    """Silence diffusers' warnings for a block (e.g. its note on every fp16 cast made to save weights)."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def load_class_pipeline(path: str | Path, device: str = "cpu"):
    """Load a class-conditional teacher or one-step generator folder."""
    from pipelines import ClassConditionalPipeline, OneStepClassPipeline

    _quiet_loading()
    kind = model_kind(path)
    check_weights_are_safe(path)
    classes = {"ClassConditionalPipeline": ClassConditionalPipeline, "OneStepClassPipeline": OneStepClassPipeline}
    if kind not in classes:
        raise SFDError(f"{path} holds a {kind or 'unknown'} pipeline; expected a class-conditional model ({', '.join(classes)})")
    try:
        pipe = classes[kind].from_pretrained(str(path), use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise SFDError(f"could not load {path}: {first}") from None
    import torch

    with quiet_diffusers():  # weights may be stored in fp16; sampling and training run in fp32
        return pipe.to(device, torch.float32)


def world_meta(path: str | Path) -> dict:
    """sfd_world.json of a teacher, or of the teacher an erased model came from ({} if none)."""
    p = Path(path) / "sfd_world.json"
    return json.loads(p.read_text()) if p.is_file() else {}


TEXT_PIPELINES = ("StableDiffusionPipeline", "OneStepTextPipeline")


def hub_offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def is_hub_id(path: str) -> bool:
    """'owner/name' that is not a local path: fetched from the Hugging Face hub when a network exists."""
    return not Path(path).exists() and not path.startswith((".", "/", "~")) and path.count("/") == 1


def load_text_pipeline(path: str, device: str = "cpu", dtype=None, allow_pickle: bool = False):
    """Load a Stable Diffusion 1.x/2.x diffusers folder (or hub id when online), or an SFD one-step text folder.

    Weights must be safetensors unless `allow_pickle`; no remote code is ever run.
    """
    import torch
    from diffusers import StableDiffusionPipeline

    from pipelines import OneStepTextPipeline

    _quiet_loading()
    dtype = dtype or torch.float32
    p = Path(path)
    if p.is_file():
        if p.suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise SFDError(f"{path} is a pickled checkpoint; pickle can run code when loaded. Use a safetensors file, or pass --allow-pickle if you trust it")
        raise SFDError(f"{path} is a single-file checkpoint; convert it to a diffusers folder first "
                       "(diffusers' StableDiffusionPipeline.from_single_file(...).save_pretrained(DIR))")
    kind = "StableDiffusionPipeline"
    if is_hub_id(path) and hub_offline():
        raise SFDError(f"model path {path!r} does not exist locally, and hub downloads are off (HF_HUB_OFFLINE=1)")
    if not is_hub_id(path):
        kind = model_kind(path)
        check_weights_are_safe(path, allow_pickle)
        if kind not in TEXT_PIPELINES:
            raise SFDError(f"{path} holds a {kind or 'unknown'} pipeline; expected a Stable Diffusion 1.x/2.x folder or an SFD one-step model")
    cls = OneStepTextPipeline if kind == "OneStepTextPipeline" else StableDiffusionPipeline
    extra = {} if cls is OneStepTextPipeline else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    try:
        pipe = cls.from_pretrained(path, dtype=dtype, use_safetensors=not allow_pickle, **extra)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise SFDError(f"could not load {path}: {first}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
