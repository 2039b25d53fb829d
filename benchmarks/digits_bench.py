"""Digits world benchmark, single-stage erasure (benchmarks/two_stage_bench.py has the two-stage one): teacher
training vs erase time, sampling throughput, forget/retain accuracy, FD.

Everything is measured in one run on this machine, side by side (these machines are noisy, so ratios
from one run are what we report):
  python benchmarks/digits_bench.py                    # trains a fresh teacher with the default steps, erases class 1
  python benchmarks/digits_bench.py --classes all      # erases every class in turn (the "any class" target)
  python benchmarks/digits_bench.py --reuse-teacher    # the bundled teacher (checkpoints/digits)
  python benchmarks/digits_bench.py --teacher DIR      # a teacher trained earlier (sfd train-teacher digits --steps N)
  python benchmarks/digits_bench.py --seeds 0,1,2      # each class erased once per training seed (the FD spread)
With a teacher trained earlier, its training time is also re-estimated in this run (--time-teacher-steps steps
of the same training, scaled to its full length), so the erase/teacher ratio compares runs on the same machine
under the same load.
Results are printed and written as JSON to --json (default benchmarks/results/digits.json). Runs split over two
processes (--classes 0,1,2,3,4 and 5,6,7,8,9 side by side) are joined with --merge A.json B.json --json OUT.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from sfd.evaluators.class_eval import evaluate_classes, sample_classes, score_samples
from sfd.evaluators.classifier import ConvJudge
from sfd.core.config import preset
from sfd.core.erase import run_sfd
from sfd.core.models import checkpoints_dir
from sfd.core.families import load_class_pipeline
from sfd.commands.worlds import digits


@torch.no_grad()
def throughput(pipe, batch: int, repeats: int) -> float:
    """Images per second at a fixed batch size (best of `repeats`, after one warm-up call)."""
    labels = torch.arange(batch) % 10
    pipe(labels, generator=torch.Generator().manual_seed(0), show_progress=False)
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        pipe(labels, generator=torch.Generator().manual_seed(r), show_progress=False)
        best = min(best, time.perf_counter() - t0)
    return batch / best


def timed_teacher(teacher_dir: Path, timed_steps: int, which: str = "the") -> tuple[dict, str]:
    """The teacher's training stats, with its training time re-measured now: `timed_steps` steps of the same training
    (after 3 warm-up steps), scaled to its full length, so that erases are compared with it under the same load."""
    tstats = json.loads((teacher_dir / "sfd_world.json").read_text())["training"]
    if timed_steps <= 0:
        return tstats, f"recorded when {which} teacher was trained"
    known = {f.name for f in fields(digits.TeacherTrainConfig)}
    cfg = digits.TeacherTrainConfig(**{**{k: v for k, v in tstats.items() if k in known}, "steps": timed_steps})
    digits.train_teacher(replace(cfg, steps=3), progress=False)  # warm-up: first-call kernel set-up is not training
    _, timing = digits.train_teacher(cfg, progress=False)
    tstats = {**tstats, "recorded_train_seconds": tstats["train_seconds"],
              "train_seconds": timing["seconds_per_step"] * tstats["steps"], "timed_steps": timed_steps}
    return tstats, f"{timed_steps} of its {tstats['steps']} steps timed in this run, scaled"


def merge_reports(paths: list[str]) -> dict:
    """One report from runs of disjoint classes: all per-class rows, maxima over the runs, each run's own numbers."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    merged = dict(runs[0])
    merged["per_class"] = [row for r in runs for row in r["per_class"]]
    for key in ("erase_seconds_max", "erase_to_teacher_ratio_max"):
        merged[key] = max(r[key] for r in runs)
    keep = ("teacher_train_seconds", "erase_seconds_max", "erase_to_teacher_ratio_max", "throughput_images_per_s", "speedup")
    merged["processes"] = [{k: r[k] for k in keep} for r in runs]
    merged["merged_from"] = [Path(p).name for p in paths]
    return merged


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", default="1", help="comma-separated classes to erase one at a time, or 'all'")
    ap.add_argument("--reuse-teacher", action="store_true", help="use the bundled teacher in checkpoints/digits")
    ap.add_argument("--teacher-steps", type=int, default=None)
    ap.add_argument("--teacher", default=None, help="a digits teacher folder trained earlier")
    ap.add_argument("--steps", type=int, default=None, help="SFD steps (default: preset)")
    ap.add_argument("--seeds", default="0", help="comma-separated erase seeds; every class is erased once per seed")
    ap.add_argument("--time-teacher-steps", type=int, default=40,
                    help="with a teacher trained earlier: time this many of its training steps in this run (0: skip)")
    ap.add_argument("--batch", type=int, default=256, help="batch size for the throughput comparison")
    ap.add_argument("--n-per-class", type=int, default=100)
    ap.add_argument("--json", default="benchmarks/results/digits.json")
    ap.add_argument("--merge", nargs="+", metavar="RUN_JSON", help="only join these reports (disjoint classes) into --json")
    a = ap.parse_args()
    if a.merge:
        Path(a.json).write_text(json.dumps(merge_reports(a.merge), indent=2))
        print(f"written {a.json}")
        return
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="sfd-bench-"))
    x, y = digits.load_digits_tensors()

    if a.reuse_teacher or a.teacher:
        teacher_dir = Path(a.teacher) if a.teacher else checkpoints_dir() / "digits" / "teacher"
        judge_dir = checkpoints_dir() / "digits" / "judge"
        tstats, teacher_note = timed_teacher(teacher_dir, a.time_teacher_steps, "that" if a.teacher else "the bundled")
    else:
        judge, _ = digits.train_judge(progress=True)
        judge_dir = work / "judge"
        judge.save_pretrained(judge_dir)
        cfg = digits.TeacherTrainConfig() if a.teacher_steps is None else digits.TeacherTrainConfig(steps=a.teacher_steps)
        unet, tstats = digits.train_teacher(cfg, progress=True)
        teacher_dir = work / "teacher"
        digits.save_teacher(unet, teacher_dir, tstats)
        teacher_note = "measured in this run"
    judge = ConvJudge.from_pretrained(judge_dir)
    teacher = load_class_pipeline(teacher_dir)

    classes = list(range(10)) if a.classes == "all" else [int(c) for c in a.classes.split(",")]
    config = preset("class", "single").replace(steps=a.steps)
    seeds = [int(s) for s in a.seeds.split(",")]
    # The teacher is sampled once (the same sampling seeds as every erased model) and scored for each forget class.
    t_images, t_labels, _ = sample_classes(teacher, range(10), a.n_per_class, seed=1, progress=True)
    teacher_scores = {k: score_samples(judge, t_images, t_labels, x, y, forget=(k,)) for k in classes}
    rows = []
    for k, seed in itertools.product(classes, seeds):
        out = work / f"erased-{k}-seed{seed}"
        summary = run_sfd(str(teacher_dir), str(out), config.replace(seed=seed), forget=[str(k)], override="random")
        erased = load_class_pipeline(out)
        after = evaluate_classes(erased, judge, x, y, a.n_per_class, seed=1, forget=(k,), progress=False)
        before = teacher_scores[k]
        chosen = summary["concepts"].get("override_chosen")
        rows.append({"class": k, "seed": seed, "override_chosen": chosen, "erase_seconds": summary["erase_seconds"],
                     "teacher": before, "erased": after})
        print(f"class {k} seed {seed} ({chosen}): erase {summary['erase_seconds']:.0f} s | forget acc teacher {before['forget_accuracy']:.1%} -> "
              f"erased {after['forget_accuracy']:.1%} | retained mean {before['retained_mean_accuracy']:.1%} -> "
              f"{after['retained_mean_accuracy']:.1%} (min {after['retained_min_accuracy']:.1%}) | FD retained "
              f"{before['fd_retained']:.3f} -> {after['fd_retained']:.3f} (ratio {after['fd_retained'] / before['fd_retained']:.2f})",
              flush=True)

    tp_teacher = throughput(teacher, a.batch, 2)
    tp_one = throughput(load_class_pipeline(work / f"erased-{classes[0]}-seed{seeds[0]}"), a.batch, 5)
    erase_s = [r["erase_seconds"] for r in rows]
    report = {
        "teacher_train_seconds": tstats["train_seconds"],
        "teacher_steps": tstats["steps"],
        "teacher_time_source": teacher_note,
        "teacher_recorded_train_seconds": tstats.get("recorded_train_seconds", tstats["train_seconds"]),
        "erase_seconds_max": max(erase_s),
        "erase_to_teacher_ratio_max": max(erase_s) / tstats["train_seconds"],
        "throughput_images_per_s": {"teacher_default_sampler": tp_teacher, "one_step": tp_one, "batch": a.batch},
        "speedup": tp_one / tp_teacher,
        "sfd_config": json.loads(config.to_json()),
        "erase_seeds": seeds,
        "per_class": rows,
        "torch_threads": torch.get_num_threads(),
    }
    print("\n| quantity | teacher | SFD one-step |\n| --- | --- | --- |")
    print(f"| time to obtain | {tstats['train_seconds']:.0f} s training ({tstats['steps']} steps, {teacher_note}) "
          f"| {max(erase_s):.0f} s erase, max over {len(rows)} run(s) (ratio {report['erase_to_teacher_ratio_max']:.2f}) |")
    print(f"| images/s at batch {a.batch} | {tp_teacher:.0f} | {tp_one:.0f} ({report['speedup']:.0f}x) |")
    worst_f = max(r["erased"]["forget_accuracy"] for r in rows)
    worst_rm = min(r["erased"]["retained_mean_accuracy"] for r in rows)
    worst_rmin = min(r["erased"]["retained_min_accuracy"] for r in rows)
    worst_fd = max(r["erased"]["fd_retained"] / r["teacher"]["fd_retained"] for r in rows)
    print(f"| forget-class accuracy (worst run) | {max(r['teacher']['forget_accuracy'] for r in rows):.1%} | {worst_f:.1%} |")
    print(f"| retained mean / min accuracy (worst run) | {min(r['teacher']['retained_mean_accuracy'] for r in rows):.1%} / "
          f"{min(r['teacher']['retained_min_accuracy'] for r in rows):.1%} | {worst_rm:.1%} / {worst_rmin:.1%} |")
    print(f"| FD retained, erased / teacher (worst run) | 1.00 | {worst_fd:.2f} |")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2))
    print(f"\nwritten {a.json}")


if __name__ == "__main__":
    main()
