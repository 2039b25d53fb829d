"""LoRA roles on one frozen UNet (issue 15): correct by construction, and outputs the ecosystem loads."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_sd, tiny_class_unet, free_port
from sfd.core import adapters
from sfd.core.concepts import ClassForgetSpec
from sfd.core.config import SFDConfig, preset
from sfd.kernel.denoisers import Denoiser
from sfd.kernel.errors import SFDError
from sfd.kernel.generators import OneStepConvention
from sfd.core.losses import Cond, fake_score_loss, generate, generator_loss
from sfd.core.roles import FAKE_ADAPTER, GENERATOR_ADAPTER, LoraRoles
from sfd.kernel.schedules import DiscreteVPSchedule, betas_for
from sfd.core.trainer import SFDTrainer
from test_cli_class import run_cli

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("zero", "one", "two", "three")
CLASS_TARGETS = ["conv1", "conv2", "time_emb_proj", "class_embedding"]
SD_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]


def class_teacher(seed=0):
    sched = DiscreteVPSchedule(torch.cumprod(1 - betas_for("linear", 1e-4, 0.02, 1000), 0))
    return Denoiser(tiny_class_unet(len(NAMES), seed=seed), sched, "epsilon")


def sd_teacher(**kw):
    sd = build_tiny_sd()
    return sd, Denoiser.from_unet_and_scheduler_config(sd.unet, sd.scheduler.config)


def randomize(roles, scale=0.05, seed=0):
    """Non-zero adapters (fresh ones are B = 0, which would hide a role mix-up)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*roles.generator_parameters(), *roles.fake_parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def sd_batch(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, 77, 32, generator=g)
    return (Cond({"encoder_hidden_states": emb}), Cond({"encoder_hidden_states": emb.flip(0)}),
            torch.randn(n, 4, 8, 8, generator=g), torch.full((n,), 1.7), torch.randn(n, 4, 8, 8, generator=g))


def gen_loss(roles, batch, generator=None):
    tc, fc, z, sigma, noise = batch
    x_g = generate(generator or roles.generator, z, fc)
    return generator_loss(roles.teacher, roles.fake, x_g, sigma, noise, tc, fc, alpha=1.0).sum()


# ---------------------------------------------------------------------------------------- construction

@pytest.mark.parametrize("kind", ["class", "text"])
def test_teacher_role_equals_the_original_network_exactly(kind):
    if kind == "class":
        teacher, targets = class_teacher(), CLASS_TARGETS
        x, sigma, cond = torch.randn(4, 1, 8, 8), torch.full((4,), 0.9), {"class_labels": torch.tensor([0, 1, 2, 3])}
    else:
        (_, teacher), targets = sd_teacher(), SD_TARGETS
        x, sigma, cond = torch.randn(2, 4, 8, 8), torch.full((2,), 0.9), {"encoder_hidden_states": torch.randn(2, 77, 32)}
    original = copy.deepcopy(teacher)
    roles = LoraRoles(teacher, OneStepConvention(440), rank=4, targets=targets)
    randomize(roles)
    with torch.no_grad():
        roles.fake(x, sigma, cond)  # leave an adapter active: the teacher must switch it off
        assert torch.equal(roles.teacher(x, sigma, cond), original(x, sigma, cond))
        assert not torch.equal(roles.fake(x, sigma, cond), original(x, sigma, cond))


@pytest.mark.parametrize("kind", ["class", "text"])
def test_the_trained_parameters_are_every_weight_of_the_adapter(kind):
    """The optimizer, the trainability switches and the state the EMA averages cover the same tensors, embedding
    adapters included (peft names those `...lora_embedding_A.<adapter>`, without a trailing `.weight`)."""
    teacher, targets = (class_teacher(), CLASS_TARGETS) if kind == "class" else (sd_teacher()[1], SD_TARGETS)
    roles = LoraRoles(teacher, OneStepConvention(440), rank=4, targets=targets)
    for params, state in ((roles.generator_parameters(), roles.generator_state()), (roles.fake_parameters(), roles.fake_state())):
        assert {p.data_ptr() for p in params} == {v.data_ptr() for v in state.values()}
        assert len(params) == len(state)
    if kind == "class":
        assert any("lora_embedding" in k for k in roles.generator_state())
    roles.set_trainable(generator=True, fake=False)
    assert all(p.requires_grad for p in roles.generator_parameters())
    assert not any(p.requires_grad for p in roles.fake_parameters())


def test_each_adapter_gets_the_gradient_of_its_own_loss_only():
    """Gradients on the shared UNet equal those of three separate networks with the same weights."""
    sd, teacher = sd_teacher()
    roles = LoraRoles(teacher, OneStepConvention(625), rank=4, targets=SD_TARGETS)
    randomize(roles)
    batch = sd_batch()
    # Reference: a frozen plain teacher, the fake score merged into a plain copy, the generator a copy with its adapter.
    ref_teacher = Denoiser(copy.deepcopy(build_tiny_sd().unet).requires_grad_(False), teacher.schedule)
    ref_fake = Denoiser(adapters.merged_copy(roles.unet, FAKE_ADAPTER).requires_grad_(False), teacher.schedule)
    ref_gen_unet = copy.deepcopy(roles.unet)
    ref_switch = adapters.AdapterSwitch(ref_gen_unet)
    ref_switch.activate(GENERATOR_ADAPTER)
    ref_switch.set_trainable(GENERATOR_ADAPTER, True)
    ref_switch.set_trainable(FAKE_ADAPTER, False)
    from sfd.kernel.generators import OneStepGenerator

    ref_gen = OneStepGenerator(Denoiser(ref_gen_unet, teacher.schedule), OneStepConvention(625))
    tc, fc, z, sigma, noise = batch
    ref = generator_loss(ref_teacher, ref_fake, generate(ref_gen, z, fc), sigma, noise, tc, fc, alpha=1.0).sum()
    ref_grads = torch.autograd.grad(ref, adapters.adapter_parameters(ref_gen_unet, GENERATOR_ADAPTER))

    roles.set_trainable(generator=True, fake=False)
    gen_loss(roles, batch).backward()
    got = [p.grad for p in roles.generator_parameters()]
    assert all(g is not None for g in got), "the generator adapter received no gradient"
    assert all(p.grad is None for p in roles.fake_parameters())
    assert all(p.grad is None for p in roles.unet.parameters() if not p.requires_grad)
    scale = max(float(g.abs().max()) for g in ref_grads)
    assert scale > 0
    # The reference fake score has its adapter merged into the weights: equal up to float rounding.
    assert max(float((a - b).abs().max()) for a, b in zip(got, ref_grads)) < 1e-4 * scale

    # The fake-score step: the generator runs without gradient, only the fake adapter learns.
    for p in [*roles.generator_parameters(), *roles.fake_parameters()]:
        p.grad = None
    roles.set_trainable(generator=False, fake=True)
    with torch.no_grad():
        x_g = generate(roles.generator, z, fc)
    fake_score_loss(roles.fake, x_g, sigma, noise, fc).sum().backward()
    assert all(p.grad is None for p in roles.generator_parameters())
    assert sum(float(p.grad.abs().sum()) for p in roles.fake_parameters()) > 0


def test_gradient_checkpointing_with_role_switching_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        _, teacher = sd_teacher()
        roles = LoraRoles(teacher, OneStepConvention(625), rank=4, targets=SD_TARGETS, gradient_checkpointing=checkpointing)
        randomize(roles)
        roles.unet.train()  # diffusers checkpoints only in training mode
        roles.set_trainable(generator=True, fake=False)
        gen_loss(roles, sd_batch()).backward()
        grads.append([p.grad.clone() for p in roles.generator_parameters()])
    assert roles.unet.is_gradient_checkpointing
    assert max(float((a - b).abs().max()) for a, b in zip(*grads)) < 1e-5


def small_config(**kw):
    return SFDConfig(**{**dict(steps=3, batch_retain=4, batch_forget=4, seed=0, guidance_teacher=1.0, lora=True, lora_rank=4,
                               lr_generator=1e-3, lr_fake=1e-3), **kw})


def lora_trainer(seed=0, global_rng_draws=0, **kw):
    cfg = small_config(**kw)
    teacher = class_teacher()
    torch.rand(global_rng_draws)  # another state of the global RNG must not change the run (adapters draw from the seed)
    roles = LoraRoles(teacher, OneStepConvention(cfg.t_init), rank=4, targets=CLASS_TARGETS, seed=cfg.seed)
    return SFDTrainer(roles, ClassForgetSpec.parse(NAMES, ["1"], "2"), cfg)


def test_lora_training_moves_only_the_adapters_and_is_deterministic():
    tr = lora_trainer()
    base = {k: v.clone() for k, v in tr.roles.unet.state_dict().items() if "lora_" not in k}
    tr.train(progress=False)
    assert all(torch.equal(v, tr.roles.unet.state_dict()[k]) for k, v in base.items())
    assert set(tr.ema.shadow) == set(tr.roles.generator_state())
    a, b = tr.ema_unet().state_dict(), lora_trainer().ema_unet().state_dict()  # second run: untrained
    assert any(not torch.equal(a[k], b[k]) for k in a)
    tr2 = lora_trainer(global_rng_draws=5)
    tr2.train(progress=False)
    c = tr2.ema_unet().state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_lora_lr_scale_multiplies_both_rates_in_lora_mode_only():
    tr = lora_trainer(lora_lr_scale=10.0, lr_final=1.0)
    tr._set_learning_rates()
    assert [g["lr"] for g in tr.opt_gen.param_groups] == [pytest.approx(1e-2)]
    assert [g["lr"] for g in tr.opt_fake.param_groups] == [pytest.approx(1e-2)]
    full = lora_trainer(lora_lr_scale=10.0, lr_final=1.0, lora=False)  # the scale belongs to LoRA mode
    full._set_learning_rates()
    assert [g["lr"] for g in full.opt_gen.param_groups] == [pytest.approx(1e-3)]
    with pytest.raises(SFDError, match="lora-lr-scale must be > 0"):
        small_config(lora_lr_scale=0.0).validate()


def test_ema_averages_the_adapter_and_the_export_merges_it():
    tr = lora_trainer(steps=4, ema_decay=0.9)
    tr.train(progress=False)
    last = adapters.merged_copy(tr.roles.gen_unet, GENERATOR_ADAPTER).state_dict()
    ema = tr.ema_unet().state_dict()
    assert not any("lora" in k for k in ema)
    assert any(not torch.allclose(ema[k], last[k]) for k in ema)  # the EMA lags the last weights
    z = torch.randn(4, 1, 8, 8)
    cond = {"class_labels": torch.tensor([0, 1, 2, 3])}
    tr.roles.load_generator_state(tr.ema.shadow)
    with torch.no_grad():
        via_adapter = tr.generator(z, cond)
        merged = Denoiser(tr.ema_unet(), tr.generator.denoiser.schedule)
        via_merged = merged(tr.sigma_init * z, tr.sigma_init, cond)
    assert torch.allclose(via_adapter, via_merged, atol=1e-5)


# ---------------------------------------------------------------------------------------- CLI and outputs

@pytest.fixture(scope="module")
def lora_sd(tmp_path_factory, tiny_sd_dir):
    """A LoRA erase with learning rates large enough to move a fresh (zero) adapter visibly in 3 steps."""
    from sfd.core.erase import run_sfd

    out = tmp_path_factory.mktemp("lora") / "erased"
    cfg = preset("sd").replace(steps=3, lora=True, lora_rank=4, lr_generator=1e-2, lr_fake=1e-2)
    run_sfd(str(tiny_sd_dir), str(out), cfg, forget=["red"], override="blue", progress=False)
    return out


def test_lora_erase_writes_merged_folder_adapter_and_card(lora_sd):
    cfg = json.loads((lora_sd / "sfd_config.json").read_text())
    assert cfg["roles"]["mode"] == "lora" and cfg["roles"]["rank"] == 4
    assert (lora_sd / "lora" / "pytorch_lora_weights.safetensors").is_file() and (lora_sd / "sfd_adapters.safetensors").is_file()
    card = (lora_sd / "README.md").read_text()
    assert "load_lora_weights" in card and "sigmas=[" in card
    from safetensors.torch import load_file

    unet = load_file(str(lora_sd / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not any("lora" in k for k in unet)  # merged: loads without peft


def _stock(pipe_dir, sigma, prompts, seeds, lora=None):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if lora:
        pipe.load_lora_weights(lora)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompts, sigmas=[sigma, 0.0], guidance_scale=1.0, output_type="pt",
                generator=[torch.Generator().manual_seed(s) for s in seeds]).images


def test_merged_folder_adapter_and_stock_recipe_give_the_same_images(lora_sd, tiny_sd_dir):
    from sfd.pipelines import OneStepTextPipeline

    prompts = ["a red circle", "a blue square", "a cat", "a green cross"] * 4
    seeds = list(range(16))
    one = OneStepTextPipeline.from_pretrained(lora_sd)
    ref = one(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt").images
    sigma = one.sigma_init
    stock_merged = _stock(lora_sd, sigma, prompts, seeds)
    stock_adapter = _stock(tiny_sd_dir, sigma, prompts, seeds, lora=str(lora_sd / "lora"))
    assert float((stock_merged - ref).abs().max()) <= 1e-3
    assert float((stock_adapter - ref).abs().max()) <= 1e-3
    teacher_images = _stock(tiny_sd_dir, sigma, prompts, seeds)
    assert float((teacher_images - ref).abs().max()) > 1e-3  # the adapter changed something


def test_lora_stage_two_starts_from_a_lora_base_on_one_unet(tiny_sd_dir, tmp_path, capsys):
    base = tmp_path / "base"
    code, _, err = run_cli(capsys, "distill", "--model", str(tiny_sd_dir), "--lora", "--lora-rank", "4", "--out", str(base),
                           "--steps", "2", "--batch", "16", "--quiet")
    assert code == 0, err
    out = tmp_path / "erased"
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sd_dir), "--generator", str(base), "--lora", "--lora-rank", "4",
                           "--forget", "red", "--override", "blue", "--out", str(out), "--steps", "0", "--quiet")
    assert code == 0, err
    roles = json.loads((out / "sfd_config.json").read_text())["roles"]
    assert "one UNet" in roles["generator_from"]
    from test_two_stage import text_images

    assert float((text_images(out) - text_images(base)).abs().max()) < 1e-5
    # a full base (not LoRA-distilled): the generator adapter sits on a frozen copy of the base's network
    full = tmp_path / "full"
    assert run_cli(capsys, "distill", "--model", str(tiny_sd_dir), "--out", str(full), "--steps", "1", "--batch", "16", "--quiet")[0] == 0
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sd_dir), "--generator", str(full), "--lora", "--forget", "red",
                           "--override", "blue", "--out", str(tmp_path / "e2"), "--steps", "0", "--quiet")
    assert code == 0, err
    assert "two UNets" in json.loads((tmp_path / "e2" / "sfd_config.json").read_text())["roles"]["generator_from"]
    assert torch.equal(text_images(tmp_path / "e2"), text_images(full))


# ---------------------------------------------------------------------------------------- reliability

def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}


def _cmd(teacher, out, *extra):
    return [sys.executable, "-m", "sfd", "erase", "--model", str(teacher), "--forget", "1", "--out", str(out), "--steps", "6",
            "--seed", "3", "--lora", "--lora-rank", "4", "--quiet", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def lora_reference(tmp_path_factory):
    from test_reliability import module_teacher

    teacher = module_teacher.__wrapped__(tmp_path_factory)
    out = tmp_path_factory.mktemp("lora-ref") / "out"
    subprocess.run(_cmd(teacher, out), check=True, env=_env(), capture_output=True)
    from safetensors.torch import load_file

    return teacher, load_file(str(out / "sfd_adapters.safetensors"))


def test_lora_resume_after_sigkill_matches_an_uninterrupted_run(lora_reference, tmp_path):
    import signal
    import time

    from safetensors.torch import load_file
    from test_reliability import state_step

    teacher, ref = lora_reference
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(teacher, out, "--checkpoint-every", "1"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while state_step(out / "training_state.safetensors") < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    r = subprocess.run(_cmd(teacher, out, "--checkpoint-every", "1", "--resume"), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = load_file(str(out / "sfd_adapters.safetensors"))
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)


def test_lora_two_processes_match_one_process(lora_reference, tmp_path):
    from safetensors.torch import load_file

    teacher, ref = lora_reference
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(), "-m", "sfd", *_cmd(teacher, out)[3:]]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = load_file(str(out / "sfd_adapters.safetensors"))
    diff = torch.cat([(got[k].float() - ref[k].float()).abs().flatten() for k in ref])
    # As in the full-mode test: Adam with beta1 = 0 can flip a near-zero gradient's step (<= 2 lr); the rest agrees.
    lr = max(preset("class").lr_generator, preset("class").lr_fake)
    assert float(diff.max()) <= 2 * lr, float(diff.max())
    assert float((diff > 1e-5).float().mean()) < 0.01
