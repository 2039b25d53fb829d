"""Train the shapes world (tiny CLIP + latent text-to-image teacher) and report its numbers.

  python benchmarks/train_shapes_world.py --out checkpoints/shapes          # what the bundled world is (seed 0)
  python benchmarks/train_shapes_world.py --evaluate checkpoints/shapes     # re-evaluate and time a trained world
Statistics are printed and written as JSON to --json (default benchmarks/results/shapes_world.json).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sfd.commands.worlds import shapes  # noqa: E402


def summary(stats: dict) -> str:
    ev, tm = stats["evaluation"], stats["timings_seconds"]
    lines = []
    if "training" in stats:
        tr = stats["training"]
        zs = tr["clip"]["zero_shot_saved"]
        lines += [
            f"train seconds: clip {tr['clip']['train_seconds']:.0f}, vae {tr['vae']['train_seconds']:.0f}, "
            f"teacher {tr['teacher']['train_seconds']:.0f}, total {tr['train_seconds_total']:.0f} ({tr['torch_threads']} threads)",
            f"clip zero-shot: colour {zs['colour']:.3f}, shape {zs['shape']:.3f} "
            f"(joint prompts: colour {zs['joint_colour']:.3f}, shape {zs['joint_shape']:.3f})",
            f"vae: recon PSNR {tr['vae']['recon_psnr_db']:.1f} dB, scaling_factor {tr['vae']['scaling_factor']:.4f}",
        ]
    lines += [
        f"teacher ({ev['num_inference_steps']} steps, guidance {ev['guidance_scale']}, {ev['n_per_prompt']}/prompt): "
        f"colour min {ev['colour_min']:.3f} mean {ev['colour_mean']:.3f}; shape min {ev['shape_min']:.3f} mean {ev['shape_mean']:.3f}",
        f"batch {tm['batch']}: text {tm['text_encode']:.3f}s, unet {tm['unet']:.3f}s (x2 batch {tm['unet_cfg_batch']:.3f}s), "
        f"vae decode {tm['vae_decode']:.3f}s, sampler {tm['sampler']:.2f}s, one-step est. {tm['one_step_estimate']:.3f}s "
        f"-> {tm['speedup_estimate']:.1f}x",
    ]
    worst = sorted(ev["per_prompt"].items(), key=lambda kv: kv[1]["shape"])[:3]
    lines.append("lowest shape rates: " + ", ".join(f"{p!r} {r['shape']:.2f}" for p, r in worst))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="checkpoints/shapes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--eval-per-prompt", type=int, default=32)
    ap.add_argument("--evaluate", metavar="WORLD_DIR", help="skip training; evaluate and time an existing world")
    ap.add_argument("--steps", type=int, default=shapes.DEFAULT_NUM_INFERENCE_STEPS)
    ap.add_argument("--guidance", type=float, default=shapes.DEFAULT_GUIDANCE_SCALE)
    ap.add_argument("--json", default="benchmarks/results/shapes_world.json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.evaluate:
        from sfd.evaluators.clip import ClipEvaluator

        world = Path(a.evaluate)
        pipe, clip = shapes.load_teacher(world / "teacher"), ClipEvaluator.from_pretrained(world / "clip")
        stats = {
            "evaluation": shapes.evaluate_teacher(pipe, clip, a.eval_per_prompt, a.seed, a.steps, a.guidance),
            "timings_seconds": shapes.time_components(pipe, 64, a.steps, a.guidance),
        }
    else:
        stats = shapes.train_world(a.out, seed=a.seed, eval_per_prompt=a.eval_per_prompt, num_inference_steps=a.steps,
                                   guidance_scale=a.guidance)
    print(summary(stats))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
