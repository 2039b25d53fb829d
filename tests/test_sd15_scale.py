"""The SD-1.5-scale benchmark: its architecture is SD-1.5's, and its measuring path runs (tiny, CPU)."""

import importlib.util
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location("sd15_scale", Path(__file__).resolve().parents[1] / "benchmarks" / "sd15_scale.py")
sd15_scale = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sd15_scale)


def test_sd15_config_has_sd15_parameter_count():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        n = sum(p.numel() for p in UNet2DConditionModel(**sd15_scale.SD15_UNET).parameters())
    assert n == 859_520_964  # runwayml/stable-diffusion-v1-5 unet
    est = sd15_scale.paper_estimate(n)
    assert 29 < est["total_static"] < 32  # GiB: bf16 teacher + 2 x (fp32 weights, grads, 2 Adam moments) + fp32 EMA


def test_tiny_run_measures_time_on_cpu():
    r = sd15_scale.measure(tiny=True, steps=1, batch=1, device="cpu")
    assert r["unet"] == "tiny" and r["seconds_per_iteration"] > 0 and "peak_allocated_gib" not in r
