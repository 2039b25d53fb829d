"""Loading models a user points at: teacher and erased pipeline folders, judges, safely.

Only safetensors weights are loaded. A folder that holds pickled weights (.bin/.ckpt/.pt/.pkl/.pth)
and no safetensors is refused with a clear message unless the caller allows pickle explicitly.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from sfd.kernel.errors import SFDError

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]  # sfd/core/models.py -> the checkout


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
    broken = [f for f in sorted(p.iterdir()) if f.is_symlink() and not f.exists()]
    if broken:
        import os

        raise SFDError(f"{str(path)!r}: its component {broken[0].name} is a link to {os.readlink(broken[0])}, which does not "
                       "exist here (a folder whose components are links was copied with `cp -r`?): copy it with `cp -rL`, "
                       "which copies what the links point to")
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


def _not_an_empty_fp32_list(record) -> bool:
    """diffusers warns on every `.to(dtype)` of a model that declares modules to keep in float32, even when the list is
    empty (`[]`): then nothing is kept and the warning is noise; a non-empty list still warns."""
    return "should be kept in float32: []" not in record.getMessage()


def quiet_loading() -> None:
    """diffusers and transformers draw a progress bar per component load (our commands have their own); diffusers'
    float32 warning for an empty module list is dropped."""
    import logging as std_logging

    from diffusers.utils import logging
    from transformers.utils import logging as transformers_logging

    logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    modeling = std_logging.getLogger("diffusers.models.modeling_utils")
    if _not_an_empty_fp32_list not in modeling.filters:
        modeling.addFilter(_not_an_empty_fp32_list)


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


def world_meta(path: str | Path) -> dict:
    """sfd_world.json of a teacher, or of the teacher an erased model came from ({} if none)."""
    p = Path(path) / "sfd_world.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def hub_offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def is_hub_id(path: str) -> bool:
    """'owner/name' that is not a local path: fetched from the Hugging Face hub when a network exists."""
    return not Path(path).exists() and not path.startswith((".", "/", "~")) and path.count("/") == 1


def file_sha256(path: str | Path) -> str:
    """The sha256 of a whole file (weights, prompt sets), read in 1 MiB chunks: what a report records to name its inputs."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_identity(path: str) -> dict | None:
    """A cheap fingerprint of a model folder's weights: per safetensors file, its size and a hash of its first and
    last MiB (the header and tensor data). Resuming an audit after the weights changed in place is refused;
    copying a folder does not change it."""
    import hashlib
    import os

    p = Path(path)
    if not p.is_dir():
        return None
    ident = {}
    for f in sorted(p.rglob("*.safetensors")):
        size = f.stat().st_size
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 1 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
        ident[str(f.relative_to(p))] = {"bytes": size, "sha256_head_tail": h.hexdigest()}
    return ident
