"""LoRA roles against full fine-tuning on the worlds, side by side in one run, with the defaults (issue 15's targets).

  python benchmarks/lora_bench.py                        # digits: erase 1, 4, 6; shapes: red -> green, circle -> square
  python benchmarks/lora_bench.py --worlds digits --classes all
  python benchmarks/lora_bench.py --worlds shapes --concepts red:green,circle:square,blue:yellow

Each erase runs twice with the same seed, from the world's bundled one-step base (stage 2, the default): once with
full roles, once with `--lora` (the preset's rank). Reported per run: the world's metrics against their targets
(digits: forget <= 5%, retained mean >= 95%, none below 90%; shapes: forget <= 10%, retained detection and CLIP
score >= 0.9x the teacher's), seconds per iteration of the training loop (LoRA <= 1.0x full at equal batch), and the
adapter file's size against the merged network's. JSON to --json (default benchmarks/results/lora_worlds.json).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from evaluators.world_metrics import world_evaluator
from sfd.config import preset
from sfd.erase import ADAPTERS_FILE, default_base, run_sfd
from sfd.families import family_for
from sfd.models import checkpoints_dir


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*.safetensors")) / 1e6 if path.is_dir() else path.stat().st_size / 1e6


def run_pair(world: str, forget: str, override: str, work: Path, rank: int | None) -> dict:
    teacher = str(checkpoints_dir() / world / "teacher")
    family = family_for(teacher)
    name = family.preset({"world": world})
    base = default_base(teacher)
    evaluate = world_evaluator(family, teacher, seed=0, progress=False)
    row = {"world": world, "forget": forget, "override": override, "base": str(base)}
    for mode in ("full", "lora"):
        cfg = preset(name, "erase" if base else "single")
        if mode == "lora":
            cfg = cfg.replace(lora=True, lora_rank=rank)  # None keeps the preset's
        out = work / f"{world}-{forget}-{mode}"
        s = run_sfd(teacher, str(out), cfg, forget=[forget], override=override, generator=str(base) if base else None,
                    progress=False, overwrite=True, evaluate=evaluate, family=family)
        net = out / family.network_name
        row[mode] = {"metrics": {k: v for k, v in s["metrics"].items() if not isinstance(v, (dict, list))},
                     "seconds_per_iteration": s["train_loop_seconds"] / s["config"]["steps"], "erase_seconds": s["erase_seconds"],
                     "roles": s["roles"], "network_mb": size_mb(net)}
        if mode == "lora":
            row[mode]["adapter_mb"] = size_mb(out / ADAPTERS_FILE) / 2  # the file holds the generator and the fake adapter
        m = s["metrics"]
        key = "forget_accuracy" if "forget_accuracy" in m else "forget_rate"
        print(f"{world} {forget} {mode}: {row[mode]['seconds_per_iteration']:.2f} s/it | forget {m[key]:.1%} | "
              + (f"retained mean {m['retained_mean_accuracy']:.1%} min {m['retained_min_accuracy']:.0%} FD {m['fd_retained']:.3f}"
                 if "retained_mean_accuracy" in m else
                 f"colour x{m['retained_colour_rate_ratio']:.2f} shape x{m['retained_shape_rate_ratio']:.2f} "
                 f"CLIP x{m['retained_clip_score_ratio']:.2f}"), flush=True)
    row["time_ratio_lora_over_full"] = row["lora"]["seconds_per_iteration"] / row["full"]["seconds_per_iteration"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worlds", default="digits,shapes")
    ap.add_argument("--classes", default="1,4,6", help="digits classes to erase, or 'all'")
    ap.add_argument("--concepts", default="red:green,circle:square", help="shapes forget:override pairs")
    ap.add_argument("--rank", type=int, default=None, help="LoRA rank (default: the preset's)")
    ap.add_argument("--json", default="benchmarks/results/lora_worlds.json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sfd-lora-bench-"))
    rows = []
    if "digits" in a.worlds:
        classes = range(10) if a.classes == "all" else [int(c) for c in a.classes.split(",")]
        rows += [run_pair("digits", str(k), "random", work, a.rank) for k in classes]
    if "shapes" in a.worlds:
        rows += [run_pair("shapes", *pair.split(":"), work, a.rank) for pair in a.concepts.split(",")]
    report = {"rows": rows, "torch_threads": torch.get_num_threads()}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2))
    print(f"written {a.json}")


if __name__ == "__main__":
    main()
