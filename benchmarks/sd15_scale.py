"""Memory and step time of SFD at Stable Diffusion 1.5 size (three 860M-parameter UNets), random weights.

  python benchmarks/sd15_scale.py --paper            # the estimate from parameter counts alone (no GPU needed)
  python benchmarks/sd15_scale.py --steps 5          # measured on a CUDA GPU: 512x512 (64x64 latents), bf16
  python benchmarks/sd15_scale.py --tiny --steps 2   # the same code path with a tiny UNet on the CPU (a smoke test)

Nothing is downloaded: the UNet is built from SD-1.5's published architecture (below) with random weights,
and text embeddings are random 77x768 tensors, which cost the same as CLIP's. The run uses what `sfd erase`
uses on a GPU for a model this big: the frozen teacher in bf16, gradient checkpointing and bf16 autocast for
the generator and the fake score (both fp32 master weights with Adam).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# Stable Diffusion 1.5's UNet (runwayml/stable-diffusion-v1-5, unet/config.json), written out so that no download is needed.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8,
)
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
)
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon")
GIB = 2**30


def paper_estimate(n_params: int, frozen_bytes: int = 2) -> dict:
    """Static memory of an SFD run from the UNet's parameter count: teacher (frozen, bf16), generator and fake
    score (fp32 weights + fp32 gradients + Adam's two fp32 moments each), the generator's fp32 EMA."""
    fp32 = 4 * n_params
    parts = {
        "teacher_bf16": frozen_bytes * n_params,
        "generator_weights_grads_adam": 4 * fp32,
        "fake_score_weights_grads_adam": 4 * fp32,
        "generator_ema": fp32,
    }
    parts = {k: v / GIB for k, v in parts.items()}
    parts["total_static"] = sum(parts.values())
    return parts


def build(tiny: bool, device: str):
    from diffusers import UNet2DConditionModel

    from sfd.concepts import TextForgetSpec
    from sfd.config import SD_PRESET
    from sfd.denoisers import Denoiser

    cfg = TINY_UNET if tiny else SD15_UNET
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg)
    teacher = Denoiser.from_unet_and_scheduler_config(unet, SD_SCHEDULER)
    dim = cfg["cross_attention_dim"]
    spec = TextForgetSpec.build(["nudity"], "a person, dressed", ["a photo of a dog", "a painting of a city"])
    gen = torch.Generator().manual_seed(0)
    conditions = spec.encode(lambda prompts: torch.randn(len(prompts), 77, dim, generator=gen).to(device))
    return unet, teacher, conditions, SD_PRESET.resolved(1.0), cfg


def measure(tiny: bool, steps: int, batch: int, device: str) -> dict:
    from sfd.trainer import SFDTrainer

    unet, teacher, conditions, config, cfg = build(tiny, device)
    n_params = sum(p.numel() for p in unet.parameters())
    config = config.replace(batch_retain=batch, batch_forget=batch, steps=steps + 1)
    cuda = device.startswith("cuda")
    trainer = SFDTrainer(teacher, conditions, config, device, frozen_dtype=torch.bfloat16 if cuda else None,
                         gradient_checkpointing=True, autocast_dtype=torch.bfloat16 if cuda else None)
    del unet
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    trainer.step()  # warm-up: allocator, kernels
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.step()
        sync()
        times.append(time.perf_counter() - t0)
    out = {
        "unet": "tiny" if tiny else "sd15", "unet_params": n_params, "latent": cfg["sample_size"],
        "batch_retain": batch, "batch_forget": batch, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "seconds_per_iteration": sorted(times)[len(times) // 2], "steps_timed": steps,
        "paper_estimate_gib": paper_estimate(n_params),
    }
    if cuda:
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper", action="store_true", help="only the parameter-count estimate (builds the UNet on the meta device)")
    ap.add_argument("--tiny", action="store_true", help="tiny UNet (CPU smoke test of the same code path)")
    ap.add_argument("--steps", type=int, default=5, help="timed SFD iterations after one warm-up iteration")
    ap.add_argument("--batch", type=int, default=1, help="retain and forget samples per iteration (each)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args()
    if a.paper:
        from diffusers import UNet2DConditionModel

        with torch.device("meta"):
            n = sum(p.numel() for p in UNet2DConditionModel(**(TINY_UNET if a.tiny else SD15_UNET)).parameters())
        result = {"unet_params": n, "paper_estimate_gib": paper_estimate(n)}
    else:
        if not a.tiny and not a.device.startswith("cuda"):
            sys.exit("sd15_scale: the SD-1.5-size run needs a CUDA GPU; use --paper for the estimate or --tiny on a CPU")
        result = measure(a.tiny, a.steps, a.batch, a.device)
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
