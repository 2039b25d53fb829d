"""Writing results safely: output folders are never overwritten by accident and appear only when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import SFDError


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Fail early (before any training) if `out` exists and is not an empty folder, unless overwrite."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise SFDError(f"output path {str(out)!r} exists and is a file")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise SFDError(f"output folder {str(out)!r} already exists; pass --overwrite to replace it")
    parent = p.resolve().parent
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise SFDError(f"cannot write to {str(parent)!r}")
    return p


@contextmanager
def staged_dir(out: str | Path):
    """Yield a temporary sibling folder; on success it replaces `out` (so a crash never leaves half a model)."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.resolve().parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
