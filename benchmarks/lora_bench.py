"""LoRA roles against full fine-tuning on the worlds, side by side in one run, with the defaults (issue 15's targets).

  python benchmarks/lora_bench.py                        # digits: erase 1, 4, 6; shapes: red -> green, circle -> square
  python benchmarks/lora_bench.py --worlds digits --classes all
  python benchmarks/lora_bench.py --worlds shapes --concepts red:green,circle:square,blue:yellow

Each erase runs twice with the same seed, from the world's bundled one-step base (stage 2, the default): once with
full roles, once with `--lora` (the preset's rank). Reported per run: the world's metrics against their targets
(digits: forget <= 5%, retained mean >= 95%, none below 90%; shapes: forget <= 10%, retained detection and CLIP
score >= 0.9x the teacher's), seconds per iteration of the training loop (LoRA <= 1.0x full at equal batch), and the
adapter file's size against the merged network's. JSON to --json (default benchmarks/results/lora_worlds.json); rows of
a world this run did not measure are kept from the file.

Timing: one full and one LoRA run per pair is at the mercy of this machine's drift (the same loop has measured
0.8-1.3 s/it within minutes). So each world's first pair is also timed in --timing-reps alternating (full, LoRA)
rounds of --timing-steps iterations without evaluation; the first round warms up and is dropped, and the ratio is
that of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from sfd.evaluators.world_metrics import world_evaluator
from sfd.core.config import preset
from sfd.core.erase import ADAPTERS_FILE, default_base, run_sfd
from sfd.core.families import family_for
from sfd.core.models import checkpoints_dir


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*.safetensors")) / 1e6 if path.is_dir() else path.stat().st_size / 1e6


def lora_config(cfg, rank: int | None, targets: str | None):
    """LoRA mode; None keeps the preset's rank and targets."""
    cfg = cfg.replace(lora=True, lora_rank=rank)
    return cfg.replace(lora_targets=targets) if targets else cfg


def run_pair(world: str, forget: str, override: str, work: Path, rank: int | None, targets: str | None = None) -> dict:
    teacher = str(checkpoints_dir() / world / "teacher")
    family = family_for(teacher)
    name = family.preset({"world": world})
    base = default_base(teacher)
    evaluate = world_evaluator(family, teacher, seed=0, progress=False)
    row = {"world": world, "forget": forget, "override": override, "base": str(base)}
    for mode in ("full", "lora"):
        cfg = preset(name, "erase" if base else "single")
        if mode == "lora":
            cfg = lora_config(cfg, rank, targets)
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


def timing(world: str, forget: str, override: str, work: Path, rank: int | None, targets: str | None, steps: int, reps: int) -> dict:
    teacher = str(checkpoints_dir() / world / "teacher")
    family = family_for(teacher)
    name = family.preset({"world": world})
    base = default_base(teacher)
    per_it: dict[str, list[float]] = {"full": [], "lora": []}
    for _ in range(reps):
        for mode in per_it:
            cfg = preset(name, "erase" if base else "single").replace(steps=steps)
            if mode == "lora":
                cfg = lora_config(cfg, rank, targets)
            s = run_sfd(teacher, str(work / f"timing-{world}-{mode}"), cfg, forget=[forget], override=override,
                        generator=str(base) if base else None, progress=False, overwrite=True, evaluate=None, family=family)
            per_it[mode].append(s["train_loop_seconds"] / steps)
    med = {m: statistics.median(v[1:] if len(v) > 1 else v) for m, v in per_it.items()}
    out = {"world": world, "forget": forget, "steps": steps, "rounds": reps, "seconds_per_iteration": per_it,
           "median_full": med["full"], "median_lora": med["lora"], "ratio_lora_over_full": med["lora"] / med["full"]}
    print(f"{world} timing, {reps} alternating rounds of {steps} iterations: full {[round(x, 3) for x in per_it['full']]}, "
          f"lora {[round(x, 3) for x in per_it['lora']]} -> median ratio {out['ratio_lora_over_full']:.2f}x", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worlds", default="digits,shapes")
    ap.add_argument("--classes", default="1,4,6", help="digits classes to erase, or 'all'")
    ap.add_argument("--concepts", default="red:green,circle:square", help="shapes forget:override pairs")
    ap.add_argument("--rank", type=int, default=None, help="LoRA rank (default: the preset's)")
    ap.add_argument("--lora-targets", default=None, help="LoRA target modules (default: the preset's, else the family's)")
    ap.add_argument("--timing-steps", type=int, default=30)
    ap.add_argument("--timing-reps", type=int, default=4, help="alternating rounds; 0: no timing rounds")
    ap.add_argument("--json", default="benchmarks/results/lora_worlds.json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sfd-lora-bench-"))
    pairs = {}
    if "digits" in a.worlds:
        classes = range(10) if a.classes == "all" else [int(c) for c in a.classes.split(",")]
        pairs["digits"] = [(str(k), "random") for k in classes]
    if "shapes" in a.worlds:
        pairs["shapes"] = [tuple(pair.split(":")) for pair in a.concepts.split(",")]
    rows, timings = [], []
    for world, todo in pairs.items():
        rows += [run_pair(world, forget, override, work, a.rank, a.lora_targets) for forget, override in todo]
        if a.timing_reps:
            timings.append(timing(world, *todo[0], work, a.rank, a.lora_targets, a.timing_steps, a.timing_reps))
    path = Path(a.json)
    report = json.loads(path.read_text()) if path.exists() else {}
    keep = lambda items: [r for r in items if r.get("world") not in pairs]  # noqa: E731
    report["rows"] = keep(report.get("rows", [])) + rows
    report["timing"] = keep(report.get("timing", [])) + timings
    report.setdefault("commands", []).append({"argv": sys.argv[1:], "worlds": list(pairs), "torch_threads": torch.get_num_threads()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"written {a.json}")


if __name__ == "__main__":
    main()
