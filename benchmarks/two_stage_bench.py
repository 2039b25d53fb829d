"""Two-stage SFD on the digits world: distil once (stage 1), then erase every class from the base (stage 2).

  python benchmarks/two_stage_bench.py --seeds 0,1,2 --classes all      # the issue's measurement, one process
  python benchmarks/two_stage_bench.py --seeds 0 --json a.json &        # ... or split over processes by seed,
  python benchmarks/two_stage_bench.py --seeds 1,2 --json b.json        #     then --merge a.json b.json --json OUT
  python benchmarks/two_stage_bench.py --curve --curve-class 6          # the trade-off plot, single- vs two-stage

Everything is timed in the run that reports it, on this machine, one thread (set OMP_NUM_THREADS=1): the teacher's
training time is re-measured by timing 40 of its 750 steps (`digits_bench.timed_teacher`). Per seed: stage 1
(`sfd distill` with its preset, stored in fp16 as the bundled base is) against the teacher (FD over all ten
classes, every class's accuracy), then stage 2 of each class from that base (forget accuracy, retained mean/min,
retained FD), and the total of distilling once and erasing all ten classes against one teacher training.
`--curve` erases one class single-stage and two-stage with several iteration budgets and writes a PNG of the
retained-FD ratio and the forget accuracy against erase wall time (benchmarks/results/two_stage_tradeoff.png).
The bundled base is `sfd distill --model checkpoints/digits/teacher --out checkpoints/digits/onestep --save-dtype fp16`,
the same run as seed 0 here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from digits_bench import timed_teacher
from sfd.evaluators.class_eval import evaluate_classes, sample_classes, score_samples
from sfd.evaluators.classifier import ConvJudge
from sfd.core.config import preset
from sfd.core.erase import run_sfd
from sfd.core.models import checkpoints_dir
from sfd.core.families import load_class_pipeline
from sfd.core.worlds import digits

SAMPLING_SEED = 1  # evaluation noise, the same for the teacher and every model (as digits_bench)


def stage_rows(rows: list[dict], stage: str) -> list[dict]:
    return [r for r in rows if r["stage"] == stage]


def summarize(report: dict) -> dict:
    """Worst cases against the issue's targets, over every seed and class in the report."""
    t = report["teacher_train_seconds"]
    s1, s2 = stage_rows(report["rows"], "distill"), stage_rows(report["rows"], "erase")
    out = {}
    if s1:
        out["stage1"] = {
            "seconds_max": max(r["seconds"] for r in s1), "time_ratio_max": max(r["seconds"] for r in s1) / t,
            "fd_ratio_max": max(r["fd_ratio"] for r in s1), "min_class_accuracy": min(r["min_accuracy"] for r in s1)}
    if s2:
        out["stage2"] = {
            "seconds_max": max(r["seconds"] for r in s2), "time_ratio_max": max(r["seconds"] for r in s2) / t,
            "forget_max": max(r["forget_accuracy"] for r in s2), "retained_mean_min": min(r["retained_mean"] for r in s2),
            "retained_min_min": min(r["retained_min"] for r in s2), "fd_ratio_max": max(r["fd_ratio"] for r in s2)}
    seeds = sorted({r["seed"] for r in s1})
    totals = []
    for s in seeds:
        erases = [r for r in s2 if r["seed"] == s]
        if len(erases) == 10:
            one = next(r for r in s1 if r["seed"] == s)
            totals.append((one["seconds"] + sum(r["seconds"] for r in erases)) / t)
    if totals:
        out["total_distill_plus_ten_erases_over_teacher_max"] = max(totals)
    return out


def worst(summaries) -> dict:
    """The worst of several summaries, key by key: the largest of maxima, the smallest of minima."""
    out: dict = {}
    for summary in summaries:
        for key, value in summary.items():
            if isinstance(value, dict):
                out[key] = worst([out.get(key, {}), value]) if key in out else dict(value)
            elif key in out:
                low = "min" in key.split("_max")[0] and not key.endswith("_max")
                out[key] = min(out[key], value) if low else max(out[key], value)
            else:
                out[key] = value
    return out


def curve(teacher_dir: Path, judge, x, y, k: int, base: Path, work: Path, single_steps, two_steps, t_teacher: float,
          stage1_seconds: float, png: Path) -> dict:
    """Erase class k single-stage and two-stage with several iteration budgets; plot FD ratio and forget accuracy."""
    teacher = load_class_pipeline(teacher_dir)
    t_images, t_labels, _ = sample_classes(teacher, range(10), 100, seed=SAMPLING_SEED, progress=False)
    before = score_samples(judge, t_images, t_labels, x, y, forget=(k,))
    points = {"single": [], "two": []}
    for stage, steps_list in (("single", single_steps), ("two", two_steps)):
        for steps in steps_list:
            cfg = preset("class", "erase" if stage == "two" else "single").replace(steps=steps)
            out = work / f"curve-{stage}-{steps}"
            s = run_sfd(str(teacher_dir), str(out), cfg, forget=[str(k)], override="random",
                        generator=str(base) if stage == "two" else None, progress=False, overwrite=True)
            m = evaluate_classes(load_class_pipeline(out), judge, x, y, 100, seed=SAMPLING_SEED, forget=(k,), progress=False)
            points[stage].append({"steps": steps, "seconds": s["erase_seconds"], "fd_ratio": m["fd_retained"] / before["fd_retained"],
                                  "forget_accuracy": m["forget_accuracy"], "retained_min": m["retained_min_accuracy"]})
            print(f"curve {stage}-stage {steps} it: {s['erase_seconds']:.0f} s, FD ratio {points[stage][-1]['fd_ratio']:.2f}, "
                  f"forget {m['forget_accuracy']:.1%}", flush=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for stage, style, label in (("single", "o-", "single-stage (from the teacher)"), ("two", "s-", "two-stage: erase from the base")):
        xs = [p["seconds"] for p in points[stage]]
        axes[0].plot(xs, [p["fd_ratio"] for p in points[stage]], style, label=label)
        axes[1].plot(xs, [100 * p["forget_accuracy"] for p in points[stage]], style, label=label)
    for ax in axes:
        ax.axvline(0.2 * t_teacher, color="grey", ls=":", label="1/5 of the teacher's training")
        ax.set_xlabel("erase wall time, s (1 CPU thread)")
        ax.grid(alpha=0.3)
    axes[0].axhline(1.5, color="red", ls="--", label="target: 1.5x")
    axes[0].set_ylabel("retained FD / teacher's")
    axes[1].axhline(5, color="red", ls="--", label="target: 5%")
    axes[1].set_ylabel(f"forget accuracy of class {k}, %")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Digits, erasing {k}: stage 2 starts from a base distilled once in {stage1_seconds:.0f} s "
                 f"({stage1_seconds / t_teacher:.2f}x the teacher's training)", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"written {png}")
    return {"class": k, "teacher_fd_retained": before["fd_retained"], "points": points, "png": str(png)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (stage 1 is distilled once per seed)")
    ap.add_argument("--classes", default="all", help="comma-separated classes to erase in stage 2, or 'all'")
    ap.add_argument("--time-teacher-steps", type=int, default=40)
    ap.add_argument("--n-per-class", type=int, default=100)
    ap.add_argument("--curve", action="store_true", help="only the trade-off plot (seed 0): single- vs two-stage budgets")
    ap.add_argument("--curve-class", type=int, default=6)
    ap.add_argument("--base", help="--curve: a stage-1 base to erase from (default: distil one in this run)")
    ap.add_argument("--stage1-seconds", type=float, help="--curve with --base: the base's stage-1 time to plot (default: its record)")
    ap.add_argument("--json", default="benchmarks/results/two_stage_digits.json")
    ap.add_argument("--png", default="benchmarks/results/two_stage_tradeoff.png")
    ap.add_argument("--merge", nargs="+", metavar="RUN_JSON", help="only join these reports (disjoint seeds) into --json")
    a = ap.parse_args()
    if a.merge:
        runs = [json.loads(Path(p).read_text()) for p in a.merge]
        # Each process's ratios use the teacher timing of its own run; the merged worst case is the worst of theirs.
        merged = {**runs[0], "rows": [r for run in runs for r in run["rows"]], "merged_from": [Path(p).name for p in a.merge],
                  "processes": [{"teacher_train_seconds": r["teacher_train_seconds"], "summary": r["summary"]} for r in runs],
                  "summary": worst(r["summary"] for r in runs)}
        Path(a.json).write_text(json.dumps(merged, indent=2))
        print(json.dumps(merged["summary"], indent=2))
        return
    teacher_dir = checkpoints_dir() / "digits" / "teacher"
    judge = ConvJudge.from_pretrained(checkpoints_dir() / "digits" / "judge")
    x, y = digits.load_digits_tensors()
    tstats, note = timed_teacher(teacher_dir, a.time_teacher_steps, "the bundled")
    t_teacher = tstats["train_seconds"]
    print(f"teacher training: {t_teacher:.0f} s ({note})", flush=True)
    work = Path(tempfile.mkdtemp(prefix="sfd-two-stage-"))

    if a.curve:
        base, stage1_seconds = (Path(a.base), float("nan")) if a.base else (work / "base", None)
        if stage1_seconds is None:
            stage1_seconds = run_sfd(str(teacher_dir), str(base), preset("class", "distill"), progress=False, save_dtype="fp16")["erase_seconds"]
        else:  # the base's own record, unless the stage-1 time of a run on a quiet machine is given
            stage1_seconds = a.stage1_seconds or json.loads((base / "sfd_config.json").read_text())["erase_seconds"]
        result = curve(teacher_dir, judge, x, y, a.curve_class, base, work, [40, 80, 120, 240, 360], [20, 40, 60, 90, 120],
                       t_teacher, stage1_seconds, Path(a.png))
        report = {"teacher_train_seconds": t_teacher, "teacher_time_source": note, "stage1_seconds": stage1_seconds, "curve": result,
                  "torch_threads": torch.get_num_threads()}
        out = Path(a.json).with_name(Path(a.json).stem + "_curve.json")
        out.write_text(json.dumps(report, indent=2))
        print(f"written {out}")
        return

    teacher = load_class_pipeline(teacher_dir)
    t_images, t_labels, _ = sample_classes(teacher, range(10), a.n_per_class, seed=SAMPLING_SEED, progress=False)
    classes = list(range(10)) if a.classes == "all" else [int(c) for c in a.classes.split(",")]
    teacher_all = score_samples(judge, t_images, t_labels, x, y)
    teacher_by_class = {k: score_samples(judge, t_images, t_labels, x, y, forget=(k,)) for k in classes}
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        base = work / f"base-seed{seed}"
        s1 = run_sfd(str(teacher_dir), str(base), preset("class", "distill").replace(seed=seed), progress=False, save_dtype="fp16")
        m = evaluate_classes(load_class_pipeline(base), judge, x, y, a.n_per_class, seed=SAMPLING_SEED, progress=False)
        rows.append({"stage": "distill", "seed": seed, "seconds": s1["erase_seconds"], "fd": m["fd_retained"],
                     "fd_ratio": m["fd_retained"] / teacher_all["fd_retained"], "min_accuracy": m["retained_min_accuracy"],
                     "per_class_accuracy": m["per_class_accuracy"], "config": s1["config"]})
        r = rows[-1]
        print(f"seed {seed} stage 1: {r['seconds']:.0f} s ({r['seconds'] / t_teacher:.2f}x teacher) | FD {r['fd']:.3f} "
              f"(x{r['fd_ratio']:.2f} the teacher's {teacher_all['fd_retained']:.3f}) | lowest class {r['min_accuracy']:.0%}", flush=True)
        for k in classes:
            out = work / f"erased-{k}-seed{seed}"
            s2 = run_sfd(str(teacher_dir), str(out), preset("class", "erase").replace(seed=seed), forget=[str(k)], override="random",
                         generator=str(base), progress=False)
            m = evaluate_classes(load_class_pipeline(out), judge, x, y, a.n_per_class, seed=SAMPLING_SEED, forget=(k,), progress=False)
            before = teacher_by_class[k]
            rows.append({"stage": "erase", "seed": seed, "class": k, "override_chosen": s2["concepts"].get("override_chosen"),
                         "seconds": s2["erase_seconds"], "forget_accuracy": m["forget_accuracy"],
                         "retained_mean": m["retained_mean_accuracy"], "retained_min": m["retained_min_accuracy"],
                         "fd": m["fd_retained"], "teacher_fd": before["fd_retained"], "fd_ratio": m["fd_retained"] / before["fd_retained"],
                         "config": s2["config"]})
            r = rows[-1]
            print(f"seed {seed} erase {k} ({r['override_chosen']}): {r['seconds']:.0f} s ({r['seconds'] / t_teacher:.3f}x) | forget "
                  f"{r['forget_accuracy']:.0%} | retained mean {r['retained_mean']:.1%} (min {r['retained_min']:.0%}) | FD x{r['fd_ratio']:.2f}",
                  flush=True)
    report = {"teacher_train_seconds": t_teacher, "teacher_time_source": note, "teacher_fd_all_classes": teacher_all["fd_retained"],
              "teacher_min_accuracy": teacher_all["retained_min_accuracy"], "rows": rows, "torch_threads": torch.get_num_threads()}
    report["summary"] = summarize(report)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    print(f"written {a.json}")


if __name__ == "__main__":
    main()
