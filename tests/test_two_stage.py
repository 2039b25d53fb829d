"""Two-stage SFD: `sfd distill`, `sfd erase --generator`, one-step conventions of bases made elsewhere (issue 14)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_sd, tiny_class_unet
from sfd.pipelines import OneStepClassPipeline, OneStepTextPipeline
from sfd.kernel.generators import NAMED_CONVENTIONS, OneStepConvention
from sfd.kernel.schedules import DiscreteVPSchedule, betas_for
from test_cli_class import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]


def class_images(path, labels=(0, 1, 2, 3), seeds=(5, 6, 7, 8)):
    pipe = OneStepClassPipeline.from_pretrained(path, use_safetensors=True)
    return pipe(list(labels), generator=[torch.Generator().manual_seed(s) for s in seeds]).images


def text_images(path, prompts=("a red circle", "a cat"), seeds=(1, 2)):
    pipe = OneStepTextPipeline.from_pretrained(path, use_safetensors=True)
    return pipe(list(prompts), generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt").images


@pytest.fixture(scope="module")
def class_base(tmp_path_factory):
    """A tiny class teacher and a 3-step distilled base of it."""
    from diffusers import HeunDiscreteScheduler

    from sfd.pipelines import ClassConditionalPipeline
    from sfd.core.worlds.digits import teacher_scheduler_config

    root = tmp_path_factory.mktemp("two-stage-class")
    ClassConditionalPipeline(unet=tiny_class_unet(5), scheduler=HeunDiscreteScheduler(**teacher_scheduler_config()),
                             class_names=["zero", "one", "two", "three"], default_guidance_scale=2.0
                             ).save_pretrained(root / "teacher", safe_serialization=True)
    from sfd.commands.cli import main

    assert main(["distill", "--model", str(root / "teacher"), "--out", str(root / "base"), "--steps", "3", "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def text_base(tmp_path_factory, tiny_sd_dir):
    root = tmp_path_factory.mktemp("two-stage-text")
    from sfd.commands.cli import main

    assert main(["distill", "--model", str(tiny_sd_dir), "--out", str(root / "base"), "--steps", "2", "--batch", "16", "--quiet"]) == 0
    return root


# ------------------------------------------------------------------------------------------- stage 1

def test_distill_writes_a_one_step_folder_with_its_fake_score_and_card(class_base):
    base = class_base / "base"
    cfg = json.loads((base / "sfd_config.json").read_text())
    assert cfg["stage"] == "distill" and cfg["concepts"]["forget"] == [] and cfg["config"]["batch_forget"] == 0
    assert cfg["teacher_fingerprint"] and (base / "fake_score" / "config.json").is_file()
    assert "stage 1" in (base / "README.md").read_text()
    assert class_images(base).shape == (4, 1, 8, 8)


def test_distill_moves_the_generator_and_fake_score_from_the_teacher(class_base):
    from diffusers import UNet2DModel

    teacher = UNet2DModel.from_pretrained(class_base / "teacher" / "unet")
    gen = UNet2DModel.from_pretrained(class_base / "base" / "unet")
    fake = UNet2DModel.from_pretrained(class_base / "base" / "fake_score")
    for net in (gen, fake):
        moved = max((a - b).abs().max() for a, b in zip(teacher.parameters(), net.parameters()))
        assert moved > 0


def test_retain_only_batches_hold_every_class_and_no_forget_rows():
    from sfd.core.concepts import ClassForgetSpec

    spec = ClassForgetSpec.retain_all(["a", "b", "c"], null_class=3)
    b = spec.sample(300, 0, torch.Generator().manual_seed(0), "cpu")
    assert b.n_forget == 0 and sorted(b.fake.cond["class_labels"].unique().tolist()) == [0, 1, 2]
    assert torch.equal(b.fake.cond["class_labels"], b.teacher.cond["class_labels"])
    with pytest.raises(ValueError, match="no forget"):
        spec.sample(4, 2, torch.Generator().manual_seed(0), "cpu")


# ------------------------------------------------------------------------------------------- stage 2

def test_stage_two_starts_from_the_base_exactly(class_base, tmp_path, capsys):
    """Zero iterations from a base: the written generator is the base's (the EMA starts at the base's weights)."""
    out = tmp_path / "erased"
    code, _, err = run_cli(capsys, "erase", "--model", str(class_base / "teacher"), "--generator", str(class_base / "base"),
                           "--forget", "1", "--out", str(out), "--steps", "0", "--quiet")
    assert code == 0, err
    assert torch.equal(class_images(out), class_images(class_base / "base"))
    cfg = json.loads((out / "sfd_config.json").read_text())
    assert cfg["stage"] == "erase-stage-2" and cfg["generator_base"] == str(class_base / "base")


def test_stage_two_trains_from_the_base_and_uses_its_fake_score(class_base, tmp_path, capsys):
    out = tmp_path / "erased"
    code, stdout, err = run_cli(capsys, "erase", "--model", str(class_base / "teacher"), "--generator", str(class_base / "base"),
                                "--forget", "one", "--out", str(out), "--steps", "2", "--quiet")
    assert code == 0, err
    assert "erased one" in stdout
    cfg = json.loads((out / "sfd_config.json").read_text())
    assert cfg["roles"]["fake_score_from"] == "base"  # the class stage-2 preset keeps stage 1's fake score
    assert not torch.equal(class_images(out), class_images(class_base / "base"))
    code, _, err = run_cli(capsys, "sample", "--model", str(out), "--class", "two", "--n", "2", "--out", str(tmp_path / "s"), "--quiet")
    assert code == 0, err
    assert len(list((tmp_path / "s").glob("*.png"))) == 2


def test_text_distill_erase_reload_sample(tiny_sd_dir, text_base, tmp_path, capsys):
    base = text_base / "base"
    assert json.loads((base / "sfd_config.json").read_text())["stage"] == "distill"
    out0 = tmp_path / "zero"
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sd_dir), "--generator", str(base), "--forget", "red",
                           "--override", "blue", "--out", str(out0), "--steps", "0", "--quiet")
    assert code == 0, err
    assert torch.equal(text_images(out0), text_images(base))
    out = tmp_path / "erased"
    code, stdout, err = run_cli(capsys, "erase", "--model", str(tiny_sd_dir), "--generator", str(base), "--forget", "red",
                                "--override", "blue", "--out", str(out), "--steps", "1", "--quiet")
    assert code == 0, err
    assert "erased red" in stdout
    assert text_images(out).shape == (2, 3, 16, 16)
    code, _, err = run_cli(capsys, "sample", "--model", str(out), "--prompt", "a red circle", "--n", "2",
                           "--out", str(tmp_path / "s"), "--quiet")
    assert code == 0, err


def test_stable_diffusion_erase_without_a_base_is_refused(tiny_sd_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sd_dir), "--forget", "red", "--override", "blue",
                           "--out", str(tmp_path / "o"), "--quiet")
    assert_one_line_error(code, err, "sfd distill", "--generator", "--single-stage")
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sd_dir), "--forget", "red", "--override", "blue", "--single-stage",
                           "--generator", str(tiny_sd_dir), "--out", str(tmp_path / "o"), "--quiet")
    assert_one_line_error(code, err, "contradict")


# ------------------------------------------------------------------------------------- mismatched bases

def _edit_config(folder: Path, sub: str, **changes) -> None:
    f = folder / sub / ("scheduler_config.json" if sub == "scheduler" else "config.json")
    cfg = json.loads(f.read_text())
    cfg.update(changes)
    f.write_text(json.dumps(cfg))


def _other_unet_base(class_base, tmp_path, **unet_changes):
    """A one-step folder whose UNet is built from another config (weights of that config, so it loads)."""
    from diffusers import UNet2DModel

    base = OneStepClassPipeline.from_pretrained(class_base / "base")
    cfg = {**dict(base.unet.config), **unet_changes}
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    other = OneStepClassPipeline(unet=UNet2DModel(**cfg), scheduler=base.scheduler, t_init=440, class_names=base.config.class_names)
    other.save_pretrained(tmp_path / "other", safe_serialization=True)
    return tmp_path / "other"


@pytest.mark.parametrize("case,needle", [
    ("architecture", "network architecture"),
    ("latent", "latent shape"),
    ("schedule", "noise schedule"),
    ("classes", "classes"),
    ("multi-step", "multi-step"),
])
def test_a_mismatched_base_gives_one_line(class_base, tmp_path, capsys, case, needle):
    if case == "architecture":
        base = _other_unet_base(class_base, tmp_path, layers_per_block=2)
    elif case == "latent":
        base = _other_unet_base(class_base, tmp_path, sample_size=16)
    elif case == "multi-step":
        base = class_base / "teacher"
    else:
        base = tmp_path / "base"
        shutil.copytree(class_base / "base", base)
        if case == "schedule":
            _edit_config(base, "scheduler", beta_end=0.03)
        else:
            idx = json.loads((base / "model_index.json").read_text())
            idx["class_names"] = ["a", "b", "c", "d"]
            (base / "model_index.json").write_text(json.dumps(idx))
    code, _, err = run_cli(capsys, "erase", "--model", str(class_base / "teacher"), "--generator", str(base), "--forget", "1",
                           "--out", str(tmp_path / "o"), "--quiet")
    assert_one_line_error(code, err, "--generator", needle)
    assert not (tmp_path / "o").exists()


def test_a_base_with_another_text_encoder_is_refused(tiny_sd_dir, text_base, tmp_path, capsys):
    other = tmp_path / "other-te"
    shutil.copytree(text_base / "base", other)
    build_tiny_sd(seed=7).text_encoder.save_pretrained(other / "text_encoder", safe_serialization=True)
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sd_dir), "--generator", str(other), "--forget", "red",
                           "--override", "blue", "--out", str(tmp_path / "o"), "--quiet")
    assert_one_line_error(code, err, "--generator", "text encoder")


# ------------------------------------------------------------------------------------- bundled bases

def test_a_world_teacher_erases_from_its_own_base_and_says_so(class_base, tmp_path, capsys):
    world = tmp_path / "world"
    shutil.copytree(class_base / "teacher", world / "teacher")
    shutil.copytree(class_base / "base", world / "onestep")
    code, stdout, err = run_cli(capsys, "erase", "--model", str(world / "teacher"), "--forget", "1", "--out", str(tmp_path / "o"),
                                "--steps", "0", "--quiet")
    assert code == 0, err
    assert "distilled base" in stdout and str(world / "onestep") in stdout
    assert json.loads((tmp_path / "o" / "sfd_config.json").read_text())["generator_base"] == str(world / "onestep")
    # --single-stage erases from the teacher alone
    code, stdout, err = run_cli(capsys, "erase", "--model", str(world / "teacher"), "--forget", "1", "--out", str(tmp_path / "s"),
                                "--steps", "0", "--single-stage", "--quiet")
    assert code == 0, err
    assert "distilled base" not in stdout
    assert json.loads((tmp_path / "s" / "sfd_config.json").read_text())["stage"] == "erase-single-stage"


def test_a_base_distilled_from_another_teacher_is_not_taken_as_default(class_base, tmp_path, capsys):
    from sfd.core.erase import default_base

    world = tmp_path / "world"
    shutil.copytree(class_base / "teacher", world / "teacher")
    shutil.copytree(class_base / "base", world / "onestep")
    assert default_base(str(world / "teacher")) == world / "onestep"
    cfg = json.loads((world / "onestep" / "sfd_config.json").read_text())
    cfg["teacher_fingerprint"] = {"unet/diffusion_pytorch_model.safetensors": {"bytes": 1, "sha256_head_tail": "0"}}
    (world / "onestep" / "sfd_config.json").write_text(json.dumps(cfg))
    assert default_base(str(world / "teacher")) is None


def test_bundled_bases_fit_their_teachers():
    from sfd.core.erase import default_base
    from sfd.core.models import checkpoints_dir

    for world in ("digits", "shapes"):
        teacher = checkpoints_dir() / world / "teacher"
        assert default_base(str(teacher)) == checkpoints_dir() / world / "onestep", world
        weights = next((checkpoints_dir() / world / "onestep" / "unet").glob("*.safetensors"))
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            assert all(f.get_slice(k).get_dtype() == "F16" for k in f.keys())


# ------------------------------------------------------------------------------------- resume

def test_distill_resumes_after_sigkill(class_base, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sfd", "distill", "--model", str(class_base / "teacher"), "--steps", "8", "--seed", "2",
           "--quiet", "--device", "cpu"]
    subprocess.run([*cmd, "--out", str(tmp_path / "ref")], check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(out), "--checkpoint-every", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    from test_reliability import state_step

    deadline = time.time() + 120
    while state_step(out / "training_state.safetensors") < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    r = subprocess.run([*cmd, "--out", str(out), "--checkpoint-every", "1", "--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file

    for sub in ("unet", "fake_score"):
        a = load_file(str(tmp_path / "ref" / sub / "diffusion_pytorch_model.safetensors"))
        b = load_file(str(out / sub / "diffusion_pytorch_model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), sub


# ------------------------------------------------------------------------------------- conventions

def test_sigma_at_timestep_is_exact_at_integers_and_inverts_sigma_to_t():
    s = DiscreteVPSchedule(torch.cumprod(1 - betas_for("scaled_linear", 0.00085, 0.012, 1000), 0))
    t = torch.tensor([0, 1, 399, 625, 999])
    assert torch.equal(s.sigma_at_timestep(t.float()), s.sigma_at(t))
    cont = torch.tensor([10.25, 398.5, 700.75])
    assert torch.allclose(s.sigma_to_t(s.sigma_at_timestep(cont)), cont, atol=1e-3)


def test_convention_config_round_trips():
    sid = OneStepConvention(625)
    assert sid.config() == {"t_init": 625} and OneStepConvention.from_config(sid.config()) == OneStepConvention(625.0)
    dmd = NAMED_CONVENTIONS["dmd2"]
    assert OneStepConvention.from_config(dmd.config()) == dmd


def _latents(n=2, seed=3):
    return torch.randn((n, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["sd-turbo", "sdxl-turbo", "dmd2"])
def test_named_conventions_reproduce_the_stock_one_step_samplers(name):
    """The samplers the models' own cards use: SD-Turbo EulerDiscrete, SDXL-Turbo EulerAncestral, both 'trailing'
    and one step (timestep 999); DMD2 LCMScheduler with timesteps=[399]. No guidance."""
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, LCMScheduler

    sd = build_tiny_sd()
    prompts = ["a red circle", "a dog"]
    if name in ("sd-turbo", "sdxl-turbo"):
        cls = EulerDiscreteScheduler if name == "sd-turbo" else EulerAncestralDiscreteScheduler
        sd.scheduler = cls.from_config(sd.scheduler.config, timestep_spacing="trailing")
        ref = sd(prompts, num_inference_steps=1, guidance_scale=0.0, latents=_latents(), output_type="pt").images
    else:
        sd.scheduler = LCMScheduler.from_config(sd.scheduler.config)
        ref = sd(prompts, num_inference_steps=1, timesteps=[399], guidance_scale=0.0, latents=_latents(), output_type="pt").images
    one = OneStepTextPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet, scheduler=sd.scheduler,
                              **NAMED_CONVENTIONS[name].config())
    got = one(prompts, latents=_latents(), output_type="pt").images
    assert torch.allclose(got, ref, atol=1e-4), float((got - ref).abs().max())


def test_import_base_writes_a_base_that_erase_accepts(tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "turbo-base"
    code, stdout, err = run_cli(capsys, "import-base", "--unet", str(tiny_sd_dir), "--teacher", str(tiny_sd_dir),
                                "--convention", "sd-turbo", "--out", str(out))
    assert code == 0, err
    assert "timestep 999" in stdout
    assert OneStepTextPipeline.from_pretrained(out).config.t_init == 999
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sd_dir), "--generator", str(out), "--forget", "red",
                           "--override", "blue", "--out", str(tmp_path / "o"), "--steps", "0", "--quiet")
    assert code == 0, err
    assert torch.equal(text_images(tmp_path / "o"), text_images(out))
    assert OneStepTextPipeline.from_pretrained(tmp_path / "o").config.t_init == 999
    # a convention with its own input scale survives the round trip through erase too
    code, _, err = run_cli(capsys, "import-base", "--unet", str(tiny_sd_dir), "--teacher", str(tiny_sd_dir),
                           "--convention", "dmd2", "--out", str(tmp_path / "dmd2"))
    assert code == 0, err
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sd_dir), "--generator", str(tmp_path / "dmd2"), "--forget", "red",
                           "--override", "blue", "--out", str(tmp_path / "o2"), "--steps", "0", "--quiet")
    assert code == 0, err
    cfg = OneStepTextPipeline.from_pretrained(tmp_path / "o2").config
    assert cfg.conditioning_timestep == 399 and cfg.input_scale == 1.0
    assert torch.equal(text_images(tmp_path / "o2"), text_images(tmp_path / "dmd2"))


def test_import_base_refuses_pickled_unets_and_needs_a_convention(tiny_sd_dir, tmp_path, capsys):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_sd_dir / "unet", pickled)
    for f in pickled.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    code, _, err = run_cli(capsys, "import-base", "--unet", str(pickled), "--teacher", str(tiny_sd_dir), "--convention", "dmd2",
                           "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "pickled", "--allow-pickle")
    code, _, err = run_cli(capsys, "import-base", "--unet", str(tiny_sd_dir), "--teacher", str(tiny_sd_dir), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "--convention")
