"""The real-size memory benchmark: its architectures are SD-1.5's and SDXL's, and its measuring path runs (tiny, CPU)."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("sd15_scale", Path(__file__).resolve().parents[1] / "benchmarks" / "sd15_scale.py")
sd15_scale = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sd15_scale)


def test_configs_have_the_published_parameter_counts():
    assert sd15_scale.count_params("sd15") == 859_520_964  # runwayml/stable-diffusion-v1-5 unet
    assert sd15_scale.count_params("sdxl") == 2_567_463_684  # stabilityai/stable-diffusion-xl-base-1.0 unet
    assert sd15_scale.count_params("sd35m") == 2_243_171_520  # the published SD3.5-Medium transformer config
    assert 11.8e9 < sd15_scale.count_params("flux") < 12.0e9  # FLUX.1-dev: 12B
    est = sd15_scale.paper_estimate(859_520_964)
    assert 29 < est["total_static"] < 32  # GiB: bf16 teacher + 2 x (fp32 weights, grads, 2 Adam moments) + fp32 EMA


def test_lora_static_memory_is_one_frozen_unet_plus_small_adapters():
    n, n_lora = sd15_scale.count_params("sd15"), sd15_scale.lora_params("sd15", 16)
    assert 0 < n_lora < 0.05 * n
    lora = sd15_scale.paper_estimate(n, 2, "lora", n_lora)
    assert lora["frozen_unet"] == pytest.approx(2 * n / 2**30) and lora["total_static"] < 2.5


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_tiny_run_measures_time_and_memory_on_cpu(mode):
    r = sd15_scale.measure("tiny", mode, 64, steps=1, device="cpu", rank=4)
    assert r["mode"] == mode and r["seconds_per_iteration"] > 0 and r["peak_rss_gib"] > 0 and "peak_allocated_gib" not in r
    p = sd15_scale.project(r, 128)
    assert p["total_gib"] >= p["static_gib"] > 0


def test_tiny_robust_run_takes_the_sd_presets_inner_attack():
    from sfd.core.config import preset

    r = sd15_scale.measure("tiny", "lora", 64, steps=1, device="cpu", rank=4, robust=True)
    assert r["robust"]["space"] == "conditioning" and r["robust"]["inner_steps"] == preset("sd", "erase").robust_steps
    assert r["seconds_per_iteration"] > 0
