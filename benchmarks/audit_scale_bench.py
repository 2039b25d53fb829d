"""Audits at I2P scale on the shapes world (issue 19): sharded throughput, memory against the number of prompts, and
resume after SIGKILL.

    python benchmarks/audit_scale_bench.py                     # everything below, JSON to benchmarks/results/audit_scale.json
    python benchmarks/audit_scale_bench.py --only throughput   # or: memory, resume

- throughput: the same audit (the bundled 20-step shapes teacher, --images prompts x 1 image, detector clip:red; by
  default 1,000 and I2P's 4,703 prompts, about 13 minutes) in
  1 process and in 2 processes (`accelerate launch`, gloo), 1 torch thread each; images per second from the wall time
  of the whole command (start-up included) and from the audit's own clock (models loaded, reports written). The
  sharded report must equal the one-process one (same records, rates and intervals): checked here too.
- memory: peak resident memory of one process auditing 500 and 5,000 prompts with the bundled one-step base.
- resume: the 5,000-prompt audit killed with SIGKILL part-way, then resumed by 2 processes; it must finish with every
  image, the killed run's images reused.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "checkpoints/shapes/teacher"
ONE_STEP = ROOT / "checkpoints/shapes/onestep"
CLIP = ROOT / "checkpoints/shapes/clip"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
       "PYTHONPATH": str(ROOT)}


def prompt_file(path: Path, n: int) -> Path:
    from sfd.core.worlds import shapes

    captions = [shapes.caption(c, s, t) for t in range(len(shapes.TEMPLATES)) for c in range(len(shapes.COLOURS))
                for s in range(len(shapes.SHAPES))]
    path.write_text("".join(captions[i % len(captions)] + "\n" for i in range(n)))
    return path


def audit_args(model: Path, prompts: Path, out: Path) -> list[str]:
    return ["audit", "--model", str(model), "--prompts", str(prompts), "--detector", f"clip:red@{CLIP}", "--out", str(out),
            "--device", "cpu", "--threads", "1", "--batch-size", "32", "--quiet"]


def launch(args: list[str], processes: int, port: int = 29531) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "sfd", *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), "-m", "sfd", *args]


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def comparable(out: Path) -> dict:
    rep = json.loads((out / "report.json").read_text())
    return {"images": rep["images"], "summary": rep["summary"]}, rep["settings"]["timings"]


def throughput(work: Path, n: int) -> dict:
    prompts = prompt_file(work / f"throughput-{n}.txt", n)
    row = {"model": str(TEACHER.relative_to(ROOT)), "images": n}
    reports = {}
    for p in (1, 2):
        out = work / f"throughput-{n}-{p}"
        wall = run(launch(audit_args(TEACHER, prompts, out), p))
        reports[p], timings = comparable(out)
        ranks = [next(iter(r.values())) for r in timings.get("per_rank", [])] or [next(iter(timings.values()))]
        row[f"{p}_process"] = {"wall_seconds": wall, "images_per_second_wall": n / wall,
                               "audit_seconds": timings["total_seconds"], "images_per_second_audit": n / timings["total_seconds"],
                               # each rank's own generation + detection time per image: how much the processes slow each other
                               "seconds_per_image_per_rank": [r["seconds_per_image"] for r in ranks],
                               "images_per_rank": [r["generated"] for r in ranks]}
        print(f"{p} process(es): {wall:.1f} s wall ({n / wall:.2f} images/s), {timings['total_seconds']:.1f} s in the audit "
              f"({n / timings['total_seconds']:.2f} images/s); per rank {[round(r['seconds_per_image'], 4) for r in ranks]} s "
              f"per image for {[r['generated'] for r in ranks]} images", flush=True)
    row["speedup_wall"] = row["1_process"]["wall_seconds"] / row["2_process"]["wall_seconds"]
    row["speedup_audit"] = row["1_process"]["audit_seconds"] / row["2_process"]["audit_seconds"]
    row["sharded_equals_one_process"] = reports[1] == reports[2]
    print(f"speed-up with 2 processes: {row['speedup_wall']:.2f}x wall, {row['speedup_audit']:.2f}x in the audit; "
          f"reports equal: {row['sharded_equals_one_process']}", flush=True)
    return row


PEAK = ("import resource, sys, runpy; sys.argv = ['sfd'] + sys.argv[1:]; "
        "code = 0\ntry:\n    runpy.run_module('sfd', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code or 0\n"
        "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")


def peak_rss(args: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PEAK, *args], env=ENV, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    kib = int(r.stdout.rsplit("PEAK_KIB", 1)[1].split()[0])
    return kib / 2**20, time.perf_counter() - t0


def memory(work: Path, sizes: list[int]) -> dict:
    res = {}
    for n in sizes:
        gib, secs = peak_rss(audit_args(ONE_STEP, prompt_file(work / f"mem-{n}.txt", n), work / f"mem-{n}"))
        res[str(n)] = {"peak_rss_gib": gib, "seconds": secs}
        print(f"{n} prompts: peak {gib:.3f} GiB in {secs:.0f} s", flush=True)
    lo, hi = res[str(min(sizes))]["peak_rss_gib"], res[str(max(sizes))]["peak_rss_gib"]
    res["ratio_largest_over_smallest"] = hi / lo
    print(f"peak memory {max(sizes)} / {min(sizes)} prompts: {hi / lo:.3f}x", flush=True)
    return res


def resume(work: Path, n: int, kill_after: float) -> dict:
    prompts = prompt_file(work / f"resume-{n}.txt", n)
    out = work / "resume"
    proc = subprocess.Popen(launch(audit_args(ONE_STEP, prompts, out), 1), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(kill_after)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    lines = (out / "images.jsonl").read_text().splitlines() if (out / "images.jsonl").exists() else []
    made_before = len(lines)
    wall = run(launch(audit_args(ONE_STEP, prompts, out), 2, port=29533))
    rep = json.loads((out / "report.json").read_text())
    t = rep["settings"]["timings"]
    label = next(iter(rep["summary"]))
    row = {"prompts": n, "killed_after_seconds": kill_after, "images_before_kill": made_before, "resumed_processes": 2,
           "resume_wall_seconds": wall, "reused": t[label]["reused"], "generated": t[label]["generated"], "images": len(rep["images"]),
           "complete": len(rep["images"]) == n and not list(out.glob("images.rank*.jsonl"))}
    print(f"SIGKILL after {kill_after:.0f} s with {made_before} images written; resumed by 2 processes in {wall:.0f} s: "
          f"{row['reused']} reused + {row['generated']} made = {row['images']} of {n} (complete: {row['complete']})", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["throughput", "memory", "resume"])
    ap.add_argument("--images", default="1000,4703", help="throughput: prompts (1 image each) of the 20-step teacher, one "
                    "measurement per size (4703: I2P's prompt count)")
    ap.add_argument("--sizes", default="500,5000", help="memory: prompt counts")
    ap.add_argument("--kill-after", type=float, default=25.0, help="resume: seconds before the SIGKILL")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/audit_scale.json"))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sfd-audit-scale-"))
    report = json.loads(Path(a.json).read_text()) if a.only and Path(a.json).is_file() else {}
    if a.only in (None, "throughput"):
        report["throughput"] = [throughput(work, int(n)) for n in a.images.split(",")]
    if a.only in (None, "memory"):
        report["memory"] = memory(work, [int(s) for s in a.sizes.split(",")])
    if a.only in (None, "resume"):
        report["resume"] = resume(work, max(int(s) for s in a.sizes.split(",")), a.kill_after)
    report["cpu_count"] = os.cpu_count()
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2))
    print(f"written {a.json}")


if __name__ == "__main__":
    main()
