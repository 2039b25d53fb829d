"""Is the digits teacher trained longer than it needs? Judge accuracy of EMA snapshots of one training run.

  python benchmarks/experiments/digits_teacher_length.py                  # snapshots at 500 and 750 steps (seed 0)
  python benchmarks/experiments/digits_teacher_length.py --at 500,750,1000

The learning rate is constant after warm-up, so the snapshot at step N equals the teacher of an N-step run.
Each snapshot samples 100 images per class with the world's default sampler (Heun, guidance) and is judged
by the bundled judge; target: every class >= 95%.
"""

from __future__ import annotations

import argparse
import json

from diffusers import HeunDiscreteScheduler

from sfd.evaluators.class_eval import evaluate_classes
from sfd.evaluators.classifier import ConvJudge
from sfd.pipelines import ClassConditionalPipeline
from sfd.core.models import checkpoints_dir
from sfd.commands.worlds import digits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--at", default="500,750", help="comma-separated snapshot steps")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    at = sorted(int(s) for s in a.at.split(","))
    judge = ConvJudge.from_pretrained(checkpoints_dir() / "digits" / "judge")
    x, y = digits.load_digits_tensors()

    def snapshot(step, unet):
        if step not in at:
            return
        sched = HeunDiscreteScheduler(**digits.teacher_scheduler_config(), use_karras_sigmas=True)
        pipe = ClassConditionalPipeline(unet=unet.eval(), scheduler=sched, class_names=list(digits.CLASS_NAMES))
        m = evaluate_classes(pipe, judge, x, y, 100, seed=1, progress=False, guidance_scale=digits.DEFAULT_GUIDANCE,
                             num_inference_steps=digits.DEFAULT_SAMPLER_STEPS)
        acc = m["per_class_accuracy"]
        print(json.dumps({"step": step, "min": min(acc.values()), "mean": sum(acc.values()) / len(acc),
                          "fd": round(m["fd_retained"], 3), "accuracy": {k: round(v, 2) for k, v in acc.items()}}), flush=True)

    every = 250 if all(s % 250 == 0 for s in at) else 50
    digits.train_teacher(digits.TeacherTrainConfig(steps=max(at), seed=a.seed), progress=True,
                         snapshot_every=every, on_snapshot=snapshot)


if __name__ == "__main__":
    main()
