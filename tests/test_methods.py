"""The registry of erasure methods (sfd.core.methods) and the families' presets: what the CLI offers is what is registered."""

import argparse

import pytest

from sfd.commands.cli import build_parser, main
from sfd.core.config import PRESETS, STAGE_PRESETS, preset_families
from sfd.core.families import FAMILIES
from sfd.core.methods import METHODS, baselines, method_named
from sfd.kernel.errors import SFDError


def _erase_option(dest: str) -> argparse.Action:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in sub.choices["erase"]._actions if a.dest == dest)


def test_the_clis_methods_are_the_registrys():
    option = _erase_option("method")
    assert list(option.choices) == list(METHODS) and option.default == "sfd"
    assert all(name in option.help for name in METHODS)
    assert baselines() == tuple(n for n, m in METHODS.items() if m.edit is not None) and "sfd" not in baselines()
    for m in METHODS.values():
        assert m.description and "\n" not in m.description and m.reference
        if m.is_baseline:
            settings = m.settings()
            assert settings.validate() is not None and isinstance(settings.describe(), dict)


def test_an_unknown_method_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse: the choices
        main(["erase", "--model", str(tmp_path), "--out", str(tmp_path / "x"), "--forget", "cat", "--method", "nope"])
    lines = [l for l in capsys.readouterr().err.strip().splitlines() if l.strip()]
    assert e.value.code not in (0, None) and len(lines) == 1 and "'nope'" in lines[0] and "esd-x" in lines[0]
    with pytest.raises(SFDError, match="unknown method 'nope'; expected one of sfd, esd-x, esd-u, uce$"):
        method_named("nope")
    from sfd.core.baselines import run_baseline

    for bad in ("nope", "sfd"):  # sfd distils; it is not a baseline
        with pytest.raises(SFDError, match=f"unknown baseline '{bad}'; expected one of esd-x, esd-u, uce$"):
            run_baseline(bad, str(tmp_path), str(tmp_path / "x"), ["cat"], "dog")


def test_each_preset_belongs_to_the_families_that_declare_it():
    assert list(_erase_option("preset").choices) == list(PRESETS)
    for f in FAMILIES:
        assert f.presets and all(p in PRESETS for p in f.presets), f.name
        assert f.preset({}) == f.presets[0]
        assert all(name in STAGE_PRESETS[stage] for name in f.presets for stage in STAGE_PRESETS)
    fits = preset_families()
    assert all(fits[p] for p in PRESETS)  # every preset is some family's
    assert fits == {"class": ("class-unet",), "sd": ("sd", "sdxl"), "shapes": ("sd", "sdxl"), "shapes-sd3": ("sd3",),
                    "sd3": ("sd3",), "flux": ("flux",)}
    by_name = {f.name: f for f in FAMILIES}
    assert [by_name[n].preset({"world": "shapes"}) for n in ("sd", "sdxl", "sd3")] == ["shapes", "shapes", "shapes-sd3"]
    assert by_name["class-unet"].preset({"world": "digits"}) == "class"
