"""Sweep the ESD baseline's settings on the shapes world: forget rate and retained detection per setting.

  python benchmarks/experiments/baseline_sweep.py                                    # esd-x and esd-u, red and circle, the preset
  python benchmarks/experiments/baseline_sweep.py --methods esd-x --concepts red --set prompts=concept,captions --set lr=3e-4,6e-4

Each `--set NAME=V1,V2` varies one ESDConfig field around the shapes preset (sfd/core/config.py); the grid is their
product. Every run is `sfd erase --method ...` (sfd.core.baselines.run_baseline) with the world's metrics: forget rate, and
retained colour / shape detection and CLIP score as ratios to the teacher's. Prints a table and writes --json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from dataclasses import fields, replace
from pathlib import Path

import torch

from sfd.evaluators.world_metrics import world_evaluator
from sfd.core.baselines import run_baseline
from sfd.core.baselines.esd import ESDConfig
from sfd.core.config import baseline_preset
from sfd.core.families import family_for
from sfd.core.methods import METHODS, baselines
from sfd.core.models import checkpoints_dir
from sfd.core.worlds import shapes


def parse_sets(items: list[str]) -> dict[str, list]:
    types = {f.name: f.type for f in fields(ESDConfig)}
    grid = {}
    for item in items:
        name, _, values = item.partition("=")
        if name not in types or not values:
            raise SystemExit(f"--set {item!r}: expected NAME=V1,V2 with NAME one of {', '.join(types)}")
        cast = {"int": int, "float": float}.get(str(types[name]), str)
        grid[name] = [cast(v) for v in values.split(",")]
    return grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    esd = [n for n in baselines() if isinstance(METHODS[n].settings(), ESDConfig)]  # the methods --set's fields apply to
    ap.add_argument("--methods", default=",".join(esd))
    ap.add_argument("--concepts", default="red,circle")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=V1,V2", help="an ESDConfig field and its values")
    ap.add_argument("--json", default="benchmarks/results/baseline_sweep.json")
    a = ap.parse_args()
    teacher = str(checkpoints_dir() / "shapes" / "teacher")
    evaluate = world_evaluator(family_for(teacher), teacher, seed=0, progress=False)
    grid = parse_sets(a.set)
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    rows = []
    with tempfile.TemporaryDirectory(prefix="sfd-baseline-sweep-") as work:
        for method, concept, combo in itertools.product(a.methods.split(","), a.concepts.split(","), combos):
            settings = replace(baseline_preset(method, "shapes", [concept]), **combo)
            s = run_baseline(method, teacher, str(Path(work) / "out"), [concept], shapes.next_value(concept), overwrite=True,
                             progress=False, evaluate=evaluate, settings=settings)
            m = s["metrics"]
            rows.append({"method": method, "concept": concept, "changes": combo, "erase_seconds": s["erase_seconds"],
                         "forget_rate": m["forget_rate"], "teacher_forget_rate": m["teacher"]["forget_rate"],
                         "retained_colour_ratio": m["retained_colour_rate_ratio"], "retained_shape_ratio": m["retained_shape_rate_ratio"],
                         "clip_score_ratio": m["retained_clip_score_ratio"]})
            r = rows[-1]
            print(f"{method} {concept} {combo or 'preset'}: forget {r['forget_rate']:.1%} | colour x{r['retained_colour_ratio']:.2f} "
                  f"shape x{r['retained_shape_ratio']:.2f} CLIP x{r['clip_score_ratio']:.2f} | {r['erase_seconds']:.0f} s", flush=True)
    print("\n| method | concept | changes from the preset | forget rate | retained colour | retained shape | CLIP score | erase s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['method']} | {r['concept']} | {r['changes'] or 'preset'} | {r['forget_rate']:.1%} | {r['retained_colour_ratio']:.2f}x | "
              f"{r['retained_shape_ratio']:.2f}x | {r['clip_score_ratio']:.2f}x | {r['erase_seconds']:.0f} |")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"rows": rows, "torch_threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
