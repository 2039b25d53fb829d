"""What software made a result: recorded with every model folder, audit and attack report (DESIGN.md section 5)."""

from __future__ import annotations

import platform
import sys

from sfd import __version__

PACKAGES = ("torch", "diffusers", "transformers", "peft", "open_clip_torch", "numpy", "scipy", "pillow", "nudenet", "onnxruntime")


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def software_versions() -> dict:
    """sfd's version, each installed package of PACKAGES, Python and the platform."""
    found = {n: package_version(n) for n in PACKAGES}
    return {"sfd": __version__, **{n: v for n, v in found.items() if v}, "python": sys.version.split()[0],
            "platform": platform.platform()}
