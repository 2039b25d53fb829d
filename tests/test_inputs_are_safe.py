"""No command, whatever its flags, deletes or changes a file inside an input model folder.

Every command that writes is pointed with `--out` (or `--json`) at each of its inputs, into it, around it, and onto it
through a symlink, with `--overwrite` where the command has it. Each must stop with one line and exit status 2 before any
work, and every input must hash the same before and after (file contents and link targets).
"""

import hashlib
import os
import shutil

import pytest

from conftest import build_tiny_sd
from test_cli_class import assert_one_line_error, run_cli


def tree_hash(*roots) -> str:
    """A hash of every file (contents) and link (target) under the roots, with their relative names."""
    h = hashlib.sha256()
    for root in roots:
        for dirpath, dirs, files in sorted(os.walk(root)):
            for name in sorted(dirs + files):
                p = os.path.join(dirpath, name)
                h.update(os.path.relpath(p, root).encode())
                if os.path.islink(p):
                    h.update(os.readlink(p).encode())
                elif os.path.isfile(p):
                    with open(p, "rb") as f:
                        h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A class teacher and its one-step base, a text teacher, a prompt file, a judge, a shapes-world-like folder, and a
    copy of the bundled digits world (so that the quickstart's bundled inputs are a copy this test may point at)."""
    from diffusers import HeunDiscreteScheduler

    from conftest import tiny_class_unet
    from sfd.evaluators.classifier import ConvJudge, JudgeConfig
    from sfd.pipelines import ClassConditionalPipeline
    from sfd.commands.cli import main
    from sfd.core.models import checkpoints_dir
    from sfd.core.worlds.digits import teacher_scheduler_config

    root = tmp_path_factory.mktemp("inputs")
    ClassConditionalPipeline(unet=tiny_class_unet(), class_names=["zero", "one", "two", "three"],
                             scheduler=HeunDiscreteScheduler(**teacher_scheduler_config(), use_karras_sigmas=True)
                             ).save_pretrained(root / "teacher", safe_serialization=True)
    assert main(["distill", "--model", str(root / "teacher"), "--out", str(root / "base"), "--steps", "0", "--quiet"]) == 0
    build_tiny_sd().save_pretrained(root / "sd", safe_serialization=True)
    (root / "prompts.txt").write_text("one\n")
    import torch

    torch.manual_seed(0)
    ConvJudge(JudgeConfig(num_classes=4, class_names=("zero", "one", "two", "three"))).save_pretrained(root / "judge")
    (root / "world" / "clip").mkdir(parents=True)
    shutil.copytree(checkpoints_dir() / "digits", root / "checkpoints" / "digits", symlinks=True)
    (root / "links").mkdir()
    return root


def _cases(r):
    """(id, argv with {out} for the output path, the input it targets, how: 'is' / 'into' / 'around' / 'link')."""
    T, B, S = str(r / "teacher"), str(r / "base"), str(r / "sd")
    judge = f"classifier:{r / 'judge'}=one"
    erase = ["erase", "--model", T, "--forget", "1", "--steps", "0", "--overwrite", "--quiet", "--out", "{out}"]
    return [
        ("erase-model", erase, T), ("erase-generator", erase[:2] + [T, "--generator", B] + erase[3:], B),
        ("distill", ["distill", "--model", T, "--steps", "0", "--overwrite", "--quiet", "--out", "{out}"], T),
        ("sample", ["sample", "--model", B, "--class", "1", "--n", "1", "--overwrite", "--quiet", "--out", "{out}"], B),
        ("import-base-unet", ["import-base", "--unet", S, "--teacher", S, "--convention", "sd-turbo", "--overwrite", "--out", "{out}"], S),
        ("audit", ["audit", "--model", T, "--prompts", str(r / "prompts.txt"), "--detector", judge, "--device", "cpu", "--overwrite",
                   "--quiet", "--out", "{out}"], T),
        ("attack", ["attack", "--model", S, "--concept", "red", "--overwrite", "--quiet", "--out", "{out}"], S),
        ("eval-json", ["eval", "--model", T, "--judge", str(r / "judge"), "--quiet", "--json", "{out}"], T),
        ("train-teacher", ["train-teacher", "shapes", "--components-from", str(r / "world"), "--overwrite", "--quiet", "--out", "{out}"],
         str(r / "world")),
        ("quickstart", ["quickstart", "--quiet", "--out", "{out}"], str(r / "checkpoints" / "digits" / "judge")),
    ]


@pytest.mark.parametrize("how", ["is", "into", "around", "link"])
@pytest.mark.parametrize("case", [c[0] for c in _cases(__import__("pathlib").Path("/x"))])
def test_out_onto_an_input_is_refused_and_inputs_are_unchanged(inputs, case, how, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SFD_CHECKPOINTS", str(inputs / "checkpoints"))
    _, argv, target = next(c for c in _cases(inputs) if c[0] == case)
    if how == "is":
        out = target
    elif how == "into":
        out = os.path.join(target, "unet") if os.path.isdir(os.path.join(target, "unet")) else os.path.join(target, "new")
        if case == "eval-json":
            out = os.path.join(target, "model_index.json")
    elif how == "around":  # --out contains the input: replacing it would delete the input with it
        out = os.path.dirname(target)
    else:
        out = str(tmp_path / "link")
        os.symlink(target, out)
    before = tree_hash(inputs)
    code, _, err = run_cli(capsys, *[out if a == "{out}" else a for a in argv])
    assert code == 2, err
    assert_one_line_error(code, err, "could destroy the input")
    assert tree_hash(inputs) == before


def test_the_bundled_shapes_base_copied_with_cp_r_names_its_broken_link(tmp_path, capsys):
    """The bundled shapes base shares its teacher's components through relative links; a `cp -r` copy (links kept as
    links) cannot find them, and the error says which link and how to copy instead."""
    from sfd.core.models import checkpoints_dir

    shutil.copytree(checkpoints_dir() / "shapes" / "onestep", tmp_path / "copy", symlinks=True)
    code, _, err = run_cli(capsys, "sample", "--model", str(tmp_path / "copy"), "--prompt", "a red circle", "--out",
                           str(tmp_path / "o"), "--quiet")
    assert code == 2
    assert_one_line_error(code, err, "is a link to ../teacher/", "cp -rL")
