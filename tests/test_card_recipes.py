"""Model cards' recipes are true by construction: every code block of every card that the runs below write is run
literally, in a fresh process that can import only diffusers, torch and PIL (and the standard library), and its images
equal those of the `sfd sample` command the card names, to 2/255 in 8-bit pixels.

Runs per family (class UNet, SD, SDXL, SD3, FLUX with its guidance embedding), each one step on a tiny random teacher:
stage 1 in full and LoRA mode; stage 2 in full mode, and in LoRA mode from a full base (the adapter sits on the base's
network) and from a LoRA base (the adapter sits on the teacher's).
"""

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from conftest import build_tiny_flux, build_tiny_sd, build_tiny_sd3, build_tiny_sdxl, tiny_class_unet
from test_cli_class import run_cli

ALLOWED_IMPORTS = {"diffusers", "torch", "PIL"}
# Our own packages are made unimportable in the recipe's process: a card may not lean on them.
PRELUDE = ("import sys\nfor _m in ('sfd', 'pipelines', 'evaluators', 'app'):\n    sys.modules[_m] = None\n"
           "exec(compile(open('recipe.py').read(), 'recipe.py', 'exec'))\n")
RUNS = {  # name: (command, base run or None, extra flags); stage 1 at 8 rows, not its preset's 256-512 (the same code)
    "distill-full": ("distill", None, ["--batch", "8"]),
    "distill-lora": ("distill", None, ["--lora", "--batch", "8"]),
    "erase-full": ("erase", "distill-full", ["--hub-id", "me/erased"]),
    "erase-lora-on-base": ("erase", "distill-full", ["--lora"]),
    "erase-lora-on-teacher": ("erase", "distill-lora", ["--lora"]),
}


def _save_teacher(family: str, path):
    if family == "class-unet":
        from diffusers import HeunDiscreteScheduler

        from sfd.pipelines import ClassConditionalPipeline
        from sfd.core.worlds.digits import teacher_scheduler_config

        pipe = ClassConditionalPipeline(unet=tiny_class_unet(), class_names=["zero", "one", "two", "three"],
                                        scheduler=HeunDiscreteScheduler(**teacher_scheduler_config(), use_karras_sigmas=True))
    else:
        pipe = {"sd": build_tiny_sd, "sdxl": build_tiny_sdxl, "sd3": build_tiny_sd3, "flux": build_tiny_flux}[family]()
    pipe.save_pretrained(path, safe_serialization=True)
    if family == "flux":  # FLUX has no fixed sample size: the world file sets it, as for the worlds
        (path / "sfd_world.json").write_text(json.dumps({"image_size": 16}))


@pytest.fixture(scope="module", params=["class-unet", "sd", "sdxl", "sd3", "flux"])
def family_runs(request, tmp_path_factory):
    """(family, {run name: output folder}) after every run of RUNS on a tiny teacher of the family."""
    from sfd.commands.cli import main

    family, root = request.param, tmp_path_factory.mktemp(request.param)
    _save_teacher(family, root / "teacher")
    concept = ["--forget", "1"] if family == "class-unet" else ["--forget", "red", "--override", "blue"]
    for name, (command, base, flags) in RUNS.items():
        args = [command, "--model", str(root / "teacher"), "--out", str(root / name), "--steps", "1", "--quiet", *flags]
        if command == "erase":
            args += ["--generator", str(root / base), *concept]
        assert main(args) == 0, (family, name)
    return family, {name: root / name for name in RUNS}


def _code_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def _imports(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    return names


def _copy_beside(folder, tag):
    copy = folder.parent / f"{folder.name}-{tag}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy, symlinks=True)
    return copy


def _run_block(code: str, cwd) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "recipe.py").write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    return subprocess.run([sys.executable, "-c", PRELUDE], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int16)


def _sfd_sample(card: str, folder, out, capsys) -> list[np.ndarray]:
    """The images of the `sfd sample` command the card names, run as written from the model's folder (into `out`)."""
    command = re.search(r"`(sfd sample [^`]+)`", card).group(1)
    argv = shlex.split(command)[1:]
    argv[argv.index("--out") + 1] = str(out)
    here = os.getcwd()
    os.chdir(folder)
    try:
        code, _, err = run_cli(capsys, *argv, "--quiet")
    finally:
        os.chdir(here)
    assert code == 0, err
    files = sorted(out.glob("*.png"), key=lambda f: int(re.search(r"_(\d{5})_seed", f.name).group(1)))
    return [_pixels(f) for f in files]


@pytest.mark.parametrize("run", list(RUNS))
def test_every_card_block_reproduces_sfd_sample(family_runs, run, tmp_path, capsys):
    family, folders = family_runs
    card = (folders[run] / "README.md").read_text()
    blocks = _code_blocks(card)
    lora = json.loads((folders[run] / "sfd_config.json").read_text())["roles"]["mode"] == "lora"
    assert len(blocks) == (2 if lora and family != "class-unet" else 1), card  # merged weights (+ the adapter)
    from sfd.core.export.hub import read_front_matter

    meta = read_front_matter(card)  # Hub metadata, and no path of this machine anywhere in the card
    assert meta["library_name"] == "diffusers" and meta["base_model"] and "/tmp/" not in card and str(folders[run].parent) not in card
    for code in blocks:
        assert _imports(code) <= ALLOWED_IMPORTS, _imports(code)
        assert str(folders[run].parent) not in code  # folders are named relative to this one, not by this machine's paths
    if lora and family != "class-unet":
        on = "BASE" if run == "erase-lora-on-base" else "TEACHER"
        assert f"{on} = " in blocks[1] and "load_lora_weights(PATH" in blocks[1]
    if run == "erase-full":
        assert "huggingface-cli upload me/erased . ." in card
        assert json.loads((folders[run] / "sfd_config.json").read_text())["hub_id"] == "me/erased"
    if run == "distill-full":
        assert json.loads((folders[run] / "sfd_config.json").read_text())["config"]["batch_retain"] == 8  # --batch
    reference = _sfd_sample(card, folders[run], tmp_path / "sfd-sample", capsys)
    assert len(reference) == 4
    # Each block runs from the folder, as the card says; from a copy beside it (its relative paths still hold), so
    # that blocks running at once do not write over each other's images.
    copies = [_copy_beside(folders[run], f"block{k}") for k in range(len(blocks))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda kc: _run_block(kc[1], kc[0]), zip(copies, blocks)))
    for k, proc in enumerate(done):
        assert proc.returncode == 0, f"block {k} of {run}:\n{blocks[k]}\n{proc.stderr[-3000:]}"
        got = [_pixels(copies[k] / f"sample_{i}.png") for i in range(len(reference))]
        worst = max(int(np.abs(g - r).max()) for g, r in zip(got, reference))
        assert worst <= 2, f"block {k} of {family} {run} differs from sfd sample by {worst}/255:\n{blocks[k]}"


def test_a_wrong_recipe_is_caught(family_runs, tmp_path, capsys):
    """The comparison above can fail: FLUX's recipe at guidance 1.0 (the old card's) instead of the 3.5 its generator
    is called with gives other images than `sfd sample`."""
    family, folders = family_runs
    if family != "flux":
        pytest.skip("the guidance embedding is FLUX's")
    card = (folders["erase-full"] / "README.md").read_text()
    block = _code_blocks(card)[0]
    assert "guidance_scale=3.5" in block
    reference = _sfd_sample(card, folders["erase-full"], tmp_path / "ref", capsys)
    wrong = _copy_beside(folders["erase-full"], "wrong")
    proc = _run_block(block.replace("guidance_scale=3.5", "guidance_scale=1.0"), wrong)
    assert proc.returncode == 0, proc.stderr[-2000:]
    worst = max(int(np.abs(_pixels(wrong / f"sample_{i}.png") - r).max()) for i, r in enumerate(reference))
    assert worst > 2
