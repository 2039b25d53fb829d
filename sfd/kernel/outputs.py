"""Writing results safely: output folders are never overwritten by accident and appear only when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Mapping, Union

from sfd.kernel.errors import SFDError


Inputs = Union[Mapping[str, "str | Path | None"], Iterable[tuple[str, "str | Path | None"]]]


def _pairs(inputs: Inputs) -> list[tuple[str, str | Path | None]]:
    return list(inputs.items()) if isinstance(inputs, Mapping) else list(inputs)


def protected_paths(inputs: Inputs) -> list[tuple[str, str, Path]]:
    """(flag, path as given, resolved path) of every local input, and of where each symlink inside an input folder
    leads (a bundled base's components are links into its teacher's folder): no command may write over any of them."""
    found: list[tuple[str, str, Path]] = []
    for flag, path in _pairs(inputs):
        if path is None or not Path(path).expanduser().exists():  # hub ids and missing paths have their own errors
            continue
        p = Path(path).expanduser()
        found.append((flag, str(path), p.resolve()))
        if p.is_dir():
            for root, dirs, files in os.walk(p):  # links are not followed: each is recorded where it leads
                found += [(flag, str(path), (Path(root) / n).resolve()) for n in dirs + files if (Path(root) / n).is_symlink()]
    return found


def check_not_an_input(out: str | Path, inputs: Inputs, what: str = "--out") -> None:
    """One line if `out` is, contains, or lies inside an input (after resolving symlinks), whatever --overwrite says:
    replacing the output folder would delete or change the input model."""
    target = Path(out).expanduser().resolve()
    for flag, shown, p in protected_paths(inputs):
        relation = ("is" if target == p else "lies inside" if p in target.parents else "contains" if target in p.parents else None)
        if relation:
            what_input = (f"the input {flag} {shown!r}" if p == Path(shown).expanduser().resolve()
                          else f"{str(p)!r}, which the input {flag} {shown!r} links to")
            raise SFDError(f"{what} {str(out)!r} {relation} {what_input}; writing there could destroy the input: "
                           f"choose a {what} outside every input model")


def check_output_dir(out: str | Path, overwrite: bool, inputs: Inputs = ()) -> Path:
    """Fail early (before any training) if `out` exists and is not an empty folder, unless overwrite, or if it is,
    contains or lies inside one of `inputs` ({flag: path}), whatever overwrite says."""
    check_not_an_input(out, inputs)
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
