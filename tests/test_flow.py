"""Flow-matching families (issue 17): the x0 identity, diffusers' Euler step, schedules, guidance, SD3 and FLUX end to end."""

import json

import pytest
import torch

from conftest import build_tiny_flux, build_tiny_sd3
from sfd.kernel.denoisers import FlowDenoiser, guided
from sfd.kernel.schedules import FlowSchedule
from test_cli_class import run_cli

PROMPTS = ["a red circle", "a dog"]


class Oracle(torch.nn.Module):
    """A 'network' that knows x0: it returns the true velocity v = (x_t - x0) / t for its input."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.w = torch.nn.Parameter(torch.zeros(1))

    @staticmethod
    def call(net, x_t, timestep, cond):
        t = (timestep / 1000).view(-1, 1, 1, 1)
        return (x_t - net.x0) / t + net.w


def test_x0_identity_on_synthetic_data():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0.1, 0.5, 0.9])
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    d = FlowDenoiser(Oracle(x0), FlowSchedule(), Oracle.call)
    sigma = t / (1 - t)
    x_sigma = x_t * (1 + sigma.view(-1, 1, 1, 1))  # x_t = x_sigma / (1 + sigma)
    assert torch.allclose(d(x_sigma, sigma, {}), x0, atol=1e-5)
    assert torch.allclose(d.at_timestep(x_t, 1000 * t, {}), x0, atol=1e-5)
    v_true = eps - x0
    assert torch.allclose(Oracle.call(d.unet, x_t, 1000 * t, {}), v_true, atol=1e-4)


def test_one_euler_step_agrees_with_flow_match_euler_discrete_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    g = torch.Generator().manual_seed(1)
    x_t, v = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    sched.set_timesteps(sigmas=[0.7], device="cpu")
    prev = sched.step(v, sched.timesteps[0], x_t).prev_sample  # from t = 0.7 to 0: x_t - 0.7 v

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    d = FlowDenoiser(Fixed(), FlowSchedule(), lambda net, x, ts, c: v)
    assert float(sched.timesteps[0]) == pytest.approx(700, abs=1e-3)
    assert torch.allclose(d.at_timestep(x_t, sched.timesteps[0], {}), prev, atol=1e-6)


def test_schedule_conversions_round_trip():
    s = FlowSchedule()
    ts = torch.tensor([20.0, 250.0, 625.0, 980.0, 999.0])
    sig = s.sigma_at_timestep(ts)
    assert torch.allclose(sig, (ts.double() / 1000 / (1 - ts.double() / 1000)).float(), rtol=1e-6)
    assert torch.allclose(s.sigma_to_t(sig), ts, atol=1e-3)
    assert torch.allclose(s.sigma_at(torch.tensor([20, 500])), s.sigma_at_timestep(torch.tensor([20.0, 500.0])))
    x = torch.randn(5)
    assert torch.allclose(x / (1 + sig) * (1 + sig), x)


def test_guidance_on_x0_equals_guidance_on_v():
    g = torch.Generator().manual_seed(2)
    v_c, v_u, x_t = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    def call(net, x, ts, cond):
        return torch.where(cond["c"].view(-1, 1, 1, 1) > 0, v_c.repeat(2, 1, 1, 1)[: len(x)], v_u.repeat(2, 1, 1, 1)[: len(x)])

    d = FlowDenoiser(Net(), FlowSchedule(), call)
    sigma = torch.full((2,), 1.5)
    t = 1.5 / 2.5
    out = guided(d, x_t * 2.5, sigma, {"c": torch.ones(2)}, {"c": torch.zeros(2)}, 3.0)
    expected = x_t - t * (v_u + 3.0 * (v_c - v_u))
    assert torch.allclose(out, expected, atol=1e-5)


def test_flux_guidance_is_an_input_of_the_network_not_a_second_branch():
    from sfd.core.families import family_named

    pipe = build_tiny_flux(guidance_embeds=True)
    pipe.default_sample_size = 8
    d = family_named("flux").teacher_denoiser(pipe)
    assert d.guidance_embedded
    seen = []
    d.unet.register_forward_pre_hook(lambda m, a, k: seen.append((k["hidden_states"].shape[0], k["guidance"].clone())), with_kwargs=True)
    cond = family_named("flux").encode(pipe, PROMPTS)
    x = torch.randn(2, 4, 8, 8)
    out = guided(d, x, torch.full((2,), 2.0), cond, cond, 4.0)
    assert seen == [(2, seen[0][1])] and torch.equal(seen[0][1], torch.full((2,), 4.0))  # one call, batch 2, guidance 4
    assert not torch.allclose(out, guided(d, x, torch.full((2,), 2.0), cond, cond, 1.0))


# ------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module", params=["sd3", "flux"])
def flow_world(request, tmp_path_factory):
    """A tiny teacher folder of the family, and a 1-step distilled base of it."""
    root = tmp_path_factory.mktemp(request.param)
    pipe = build_tiny_sd3() if request.param == "sd3" else build_tiny_flux()
    pipe.save_pretrained(root / "teacher")
    (root / "teacher" / "sfd_world.json").write_text(json.dumps({"image_size": 16}))  # FLUX's latent size
    from sfd.commands.cli import main

    assert main(["distill", "--model", str(root / "teacher"), "--out", str(root / "base"), "--steps", "1", "--batch", "16",
                 "--quiet"]) == 0
    return request.param, root


def _images(path, seeds=(1, 2)):
    from sfd.core.families import load_model

    _, pipe = load_model(str(path))
    return pipe(PROMPTS, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt").images


def test_distill_erase_reload_sample(flow_world, tmp_path, capsys):
    family, root = flow_world
    cfg = json.loads((root / "base" / "sfd_config.json").read_text())
    assert cfg["family"] == family and cfg["one_step_convention"] == {"timestep": 999.0, "input_scale": 1.0, "prediction_type": None}
    assert _images(root / "base").shape == (2, 3, 16, 16)
    out0 = tmp_path / "zero"
    code, _, err = run_cli(capsys, "erase", "--model", str(root / "teacher"), "--generator", str(root / "base"), "--forget", "red",
                           "--override", "blue", "--out", str(out0), "--steps", "0", "--quiet")
    assert code == 0, err
    assert torch.equal(_images(out0), _images(root / "base"))
    out = tmp_path / "erased"
    code, stdout, err = run_cli(capsys, "erase", "--model", str(root / "teacher"), "--generator", str(root / "base"), "--forget", "red",
                                "--override", "blue", "--out", str(out), "--steps", "1", "--quiet")
    assert code == 0, err
    assert "erased red" in stdout and not torch.equal(_images(out), _images(root / "base"))
    code, _, err = run_cli(capsys, "sample", "--model", str(out), "--prompt", "a red circle", "--n", "1", "--out", str(tmp_path / "s"),
                           "--quiet")
    assert code == 0, err
    card = (out / "README.md").read_text()
    assert "FlowMatchEulerDiscreteScheduler" in card


def test_stock_pipeline_recipe_reproduces_the_one_step_images(flow_world):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

    from sfd.core.families import load_model

    family, root = flow_world
    _, one = load_model(str(root / "base"))
    seeds = [3, 4]
    ref = one(PROMPTS, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt").images
    stock = (StableDiffusion3Pipeline if family == "sd3" else FluxPipeline).from_pretrained(root / "base")
    stock.scheduler = FlowMatchEulerDiscreteScheduler.from_config(stock.scheduler.config, shift=1.0, use_dynamic_shifting=False)
    stock.set_progress_bar_config(disable=True)
    kw = {"guidance_scale": one.config.generator_guidance} if family == "flux" else {"guidance_scale": 1.0}
    got = stock(PROMPTS, sigmas=[0.999], num_inference_steps=1, height=16, width=16, output_type="pt",
                generator=[torch.Generator().manual_seed(s) for s in seeds], **kw).images
    assert float((got - ref).abs().max()) <= 1e-3


def test_a_one_step_flow_folder_as_another_familys_base_names_both_families(flow_world, tiny_sdxl_dir, tmp_path, capsys):
    from test_cli_class import assert_one_line_error

    family, root = flow_world
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sdxl_dir), "--generator", str(root / "base"), "--forget", "red",
                           "--override", "blue", "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2
    name = {"sd3": "Stable Diffusion 3 / 3.5", "flux": "FLUX.1"}[family]
    assert_one_line_error(code, err, f"is a one-step {name} model", "is a Stable Diffusion XL model")
    assert "not an SFD one-step model" not in err
