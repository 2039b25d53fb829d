"""One-change-at-a-time sweeps of a world's stage-2 preset, from a given one-step base (how the presets were checked).

  python benchmarks/experiments/stage2_sweep.py digits --base BASE --seed 1 --targets 4 --set '{}' --set '{"steps": 80}'
  python benchmarks/experiments/stage2_sweep.py shapes --targets circle:square,triangle:cross --set '{"lambda_gen_forget": 0.25}'

Each --set is a JSON object of SFDConfig changes to the world's stage-2 preset; every (target, change) pair is one
erase, evaluated with the world's metrics (digits: forget accuracy, retained mean/min and the retained-FD ratio to the
teacher's, 100 samples per class as benchmarks/two_stage_bench.py; shapes: forget rate and the retained colour, shape and CLIP
ratios as benchmarks/shapes_bench.py). One JSON line per run on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `sfd` without an install

from sfd.core.config import preset  # noqa: E402
from sfd.core.erase import default_base, run_sfd  # noqa: E402
from sfd.core.models import checkpoints_dir  # noqa: E402


def digits(a, changes: list[dict], work: Path) -> None:
    from sfd.evaluators.class_eval import evaluate_classes, sample_classes, score_samples
    from sfd.evaluators.classifier import ConvJudge
    from sfd.core.families import load_class_pipeline
    from sfd.core.worlds import digits as world

    teacher_dir = checkpoints_dir() / "digits" / "teacher"
    judge = ConvJudge.from_pretrained(checkpoints_dir() / "digits" / "judge")
    x, y = world.load_digits_tensors()
    images, labels, _ = sample_classes(load_class_pipeline(teacher_dir), range(10), 100, seed=1, progress=False)
    for k in [int(t) for t in a.targets.split(",")]:
        teacher_fd = score_samples(judge, images, labels, x, y, forget=(k,))["fd_retained"]
        for change in changes:
            out = work / f"erase-{k}"
            s = run_sfd(str(teacher_dir), str(out), preset("class", "erase").replace(seed=a.seed, **change), forget=[str(k)],
                        override="random", generator=a.base, progress=False, overwrite=True)
            m = evaluate_classes(load_class_pipeline(out), judge, x, y, 100, seed=1, forget=(k,), progress=False)
            print(json.dumps({"seed": a.seed, "class": k, "change": change, "seconds": round(s["erase_seconds"]),
                              "forget": m["forget_accuracy"], "retained_mean": round(m["retained_mean_accuracy"], 3),
                              "retained_min": m["retained_min_accuracy"], "fd_ratio": round(m["fd_retained"] / teacher_fd, 3)}), flush=True)


def shapes(a, changes: list[dict], work: Path) -> None:
    from sfd.evaluators.world_metrics import world_evaluator
    from sfd.core.families import family_for

    teacher = str(checkpoints_dir() / "shapes" / "teacher")
    family = family_for(teacher)
    evaluate = world_evaluator(family, teacher, seed=0, progress=False)
    for pair in a.targets.split(","):
        forget, override = pair.split(":")
        for change in changes:
            config = preset("shapes", "erase", robust=False).replace(seed=a.seed, **change)
            s = run_sfd(teacher, str(work / f"no-{forget}"), config, forget=[forget],
                        override=override, generator=a.base, progress=False, overwrite=True, evaluate=evaluate, family=family)
            m = s["metrics"]
            print(json.dumps({"forget": forget, "change": change, "seconds": round(s["erase_seconds"]), "forget_rate": m["forget_rate"],
                              "colour": round(m["retained_colour_rate_ratio"], 3), "shape": round(m["retained_shape_rate_ratio"], 3),
                              "clip": round(m["retained_clip_score_ratio"], 3)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("world", choices=["digits", "shapes"])
    ap.add_argument("--base", help="one-step base (default: the world's bundled one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", required=True, help="digits: classes (4,6); shapes: forget:override pairs (circle:square)")
    ap.add_argument("--set", action="append", default=[], help="a JSON object of preset changes (repeatable; '{}' = the preset)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    a.base = a.base or str(default_base(str(checkpoints_dir() / a.world / "teacher")))
    changes = [json.loads(c) for c in a.set] or [{}]
    work = Path(tempfile.mkdtemp(prefix="sfd-stage2-sweep-"))
    (digits if a.world == "digits" else shapes)(a, changes, work)


if __name__ == "__main__":
    main()
