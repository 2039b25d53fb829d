"""Shapes world: erasure metrics along one SFD run, to choose the preset's guidance and length.

Trains with the shapes preset (overridden by --set) and prints the forget rate and the retained colour / shape /
CLIP-score ratios to the teacher every --every iterations (the same metrics and seeds as benchmarks/shapes_bench.py):
  OMP_NUM_THREADS=1 python benchmarks/experiments/shapes_tune.py --forget circle --override square --steps 150 \\
      --set guidance_teacher=3.0 --set guidance_fake_train=3.0 --set guidance_fake_eval=3.0
"""

from __future__ import annotations

import argparse
import time

from sfd.evaluators.clip import ClipEvaluator
from sfd.evaluators.shapes_eval import compare_to_teacher, erasure_metrics
from sfd.pipelines import OneStepTextPipeline
from sfd.pipelines.text_to_image import encode_prompts
from sfd.core.concepts import TextForgetSpec
from sfd.core.config import PRESETS
from sfd.kernel.denoisers import Denoiser
from sfd.core.worlds import world_prompts
from sfd.core.models import checkpoints_dir, world_meta
from sfd.core.families import load_text_pipeline
from sfd.core.trainer import SFDTrainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--forget", default="circle")
    ap.add_argument("--override", default="square")
    ap.add_argument("--steps", type=int, default=None, help="SFD iterations (default: the preset's)")
    ap.add_argument("--every", type=int, default=50, help="evaluate every N iterations")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset field")
    a = ap.parse_args()
    model = str(checkpoints_dir() / "shapes" / "teacher")
    preset = PRESETS["shapes"]
    changes = {k: type(getattr(preset, k))(v) for k, v in (item.split("=", 1) for item in a.set)}
    config = preset.replace(steps=a.steps, **changes).resolved(1.0)
    print(config, flush=True)

    pipe = load_text_pipeline(model)
    meta = world_meta(model)
    captions = world_prompts(meta)
    spec = TextForgetSpec.build([a.forget], a.override, captions, candidates=captions)
    conditions = spec.encode(lambda p: encode_prompts(pipe.tokenizer, pipe.text_encoder, p, "cpu"))
    clip = ClipEvaluator.from_pretrained()
    teacher_kw = {"num_inference_steps": meta["default_num_inference_steps"], "guidance_scale": meta["default_guidance_scale"]}
    teacher = erasure_metrics(pipe, [a.forget], clip=clip, seed=config.seed, **teacher_kw)
    print(f"teacher: forget {teacher['forget_rate']:.1%}, colour {teacher['retained_colour_rate']:.1%}, "
          f"shape {teacher['retained_shape_rate']:.1%}, CLIP score {teacher['retained_clip_score']:.1f}", flush=True)

    trainer = SFDTrainer(Denoiser.from_unet_and_scheduler_config(pipe.unet, pipe.scheduler.config), conditions, config)
    seconds = 0.0
    while trainer.step_count < config.steps:
        t0 = time.perf_counter()
        trainer.step()
        seconds += time.perf_counter() - t0
        if trainer.step_count % a.every == 0 or trainer.step_count == config.steps:
            one_step = OneStepTextPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                           unet=trainer.ema_unet(), scheduler=pipe.scheduler, t_init=config.t_init)
            m = erasure_metrics(one_step, [a.forget], clip=clip, seed=config.seed)
            r = compare_to_teacher(m, teacher)
            print(f"iteration {trainer.step_count} ({seconds:.0f} s): forget {m['forget_rate']:.1%} | retained colour "
                  f"x{r['retained_colour_rate_ratio']:.3f}, shape x{r['retained_shape_rate_ratio']:.3f}, "
                  f"CLIP score x{r['retained_clip_score_ratio']:.3f}", flush=True)


if __name__ == "__main__":
    main()
