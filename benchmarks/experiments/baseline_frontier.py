"""The ESD baselines' trade-off on the shapes world: every recorded sweep run as forget rate against retained detection.

  python benchmarks/experiments/baseline_frontier.py      # reads benchmarks/results/baseline_sweep.json, writes the PNG beside it

Issue 18's target for a baseline is a forget rate <= 20% with retained detection >= 0.85x the teacher's; retained
detection here is the lower of the retained colour and retained shape ratios, since both must hold. Prints, per
method and concept, how many runs land in the target box, and for each setting run with several training seeds
whether every seed does (a preset must hold for the seed a user happens to get); the runs of today's ESD-u presets
are starred. ESD-u rows trained before ESD-u took the official `noxattn` layers (runs marked "esd_u_layers": "old")
are left out: that method is no longer the toolkit's.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

FORGET_MAX, RETAINED_MIN = 0.20, 0.85
TOLERANCE = 1e-6  # ratios of two detection rates land on 0.85 exactly in rationals, a hair below it in floats


def sweep_rows(sweep: dict) -> list[dict]:
    rows = []
    for run in sweep["runs"]:
        for r in run["rows"]:
            if r["method"] == "esd-u" and run.get("esd_u_layers") == "old":
                continue
            retained = min(r["retained_colour_ratio"], r["retained_shape_ratio"])
            rows.append({**r, "retained": retained, "in_box": r["forget_rate"] <= FORGET_MAX + TOLERANCE
                         and retained >= RETAINED_MIN - TOLERANCE})
    return rows


TUNED = ("lr", "batch_size", "steps", "negative_guidance")  # what the ESD-u presets set (sfd/core/config.py)


def at_todays_preset(r: dict) -> bool:
    """An ESD-u row whose changes name exactly today's preset for its concept (any training seed)."""
    from sfd.core.config import baseline_preset

    if r["method"] != "esd-u":
        return False
    changes = {k: v for k, v in r["changes"].items() if k != "seed"}
    today = baseline_preset("esd-u", "shapes", [r["concept"]])
    return set(changes) == set(TUNED) and all(getattr(today, k) == v for k, v in changes.items())


def seed_groups(rows: list[dict]) -> dict:
    """Rows that differ only in their training seed, keyed by (method, concept, the other changes)."""
    groups = defaultdict(list)
    for r in rows:
        others = tuple(sorted((k, v) for k, v in r["changes"].items() if k != "seed"))
        groups[(r["method"], r["concept"], others)].append(r)
    return {k: v for k, v in groups.items() if len({g["changes"].get("seed", 0) for g in v}) > 1}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concepts = sorted({r["concept"] for r in rows}, key=lambda c: (c != "red", c))
    fig, axes = plt.subplots(1, len(concepts), figsize=(5.2 * len(concepts), 4.4), squeeze=False)
    style = {"esd-x": dict(marker="s", color="tab:blue"), "esd-u": dict(marker="o", color="tab:red")}
    for ax, concept in zip(axes[0], concepts):
        ax.add_patch(plt.Rectangle((-2, RETAINED_MIN), 2 + 100 * FORGET_MAX, 1.1 - RETAINED_MIN, color="tab:green", alpha=0.12,
                                   label="issue 18's target"))
        for method in ("esd-x", "esd-u"):
            pts = [r for r in rows if r["concept"] == concept and r["method"] == method]
            if pts:
                ax.scatter([100 * r["forget_rate"] for r in pts], [r["retained"] for r in pts], s=22, alpha=0.75,
                           label=f"{method} ({sum(r['in_box'] for r in pts)}/{len(pts)} in the box)", **style[method])
        today = [r for r in rows if r["concept"] == concept and at_todays_preset(r)]
        if today:
            ax.scatter([100 * r["forget_rate"] for r in today], [r["retained"] for r in today], s=140, marker="*",
                       facecolor="none", edgecolor="black", label=f"esd-u at today's preset ({len(today)} seeds)")
        ax.set_xlim(-2, 100)
        ax.set_ylim(0.2, 1.1)
        ax.set_xlabel("forget rate, % (lower is better)")
        ax.set_ylabel("retained detection / teacher's")
        ax.set_title(f"erase '{concept}'")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("ESD on the shapes world: every recorded sweep run (benchmarks/experiments/baseline_sweep.py); "
                 "retained = min(colour, shape)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", default="benchmarks/results/baseline_sweep.json")
    ap.add_argument("--png", default="benchmarks/results/baseline_frontier.png")
    a = ap.parse_args()
    rows = sweep_rows(json.loads(Path(a.sweep).read_text()))
    print("| method | concept | runs | in the target box | best in-box retained |")
    print("| --- | --- | --- | --- | --- |")
    for method in ("esd-x", "esd-u"):
        for concept in ("red", "circle"):
            pts = [r for r in rows if r["method"] == method and r["concept"] == concept]
            box = [r for r in pts if r["in_box"]]
            best = f"{max(r['retained'] for r in box):.2f}x" if box else "-"
            print(f"| {method} | {concept} | {len(pts)} | {len(box)} | {best} |")
    print("\nsettings run with several training seeds:")
    for (method, concept, others), group in sorted(seed_groups(rows).items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))):
        cells = ", ".join(f"seed {g['changes'].get('seed', 0)}: {g['forget_rate']:.0%} / {g['retained']:.2f}x"
                          for g in sorted(group, key=lambda g: g["changes"].get("seed", 0)))
        verdict = "all in the box" if all(g["in_box"] for g in group) else f"{sum(g['in_box'] for g in group)}/{len(group)} in the box"
        print(f"  {method} {concept} {dict(others)}: {cells} -> {verdict}")
    plot(rows, Path(a.png))
    print(f"\nwrote {a.png}")


if __name__ == "__main__":
    main()
