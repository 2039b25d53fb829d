"""`sfd demo` under load: time until the page is served, then 20 concurrent Generate requests.

    python benchmarks/demo_bench.py                           # bundled shapes teacher + an erased model from runs/
    python benchmarks/demo_bench.py --compare runs/shapes-no-red
    python benchmarks/demo_bench.py --stand-ins               # random-weight models of the world's architectures

Targets on a 2-core CPU: the page answers within 20 s of starting `sfd demo` (a subprocess, polled over HTTP),
and 20 requests sent at once (gradio_client, one client per thread) all complete without error. The queue runs
one generation at a time (`--concurrency 1`, the CPU default), so the last request waits for the 19 before it.
One request goes first, alone, and is reported separately: it imports torch/diffusers and loads both models
(the page is served before they load); --no-warmup sends the 20 to a cold server instead.

Models: checkpoints/shapes/teacher and checkpoints/shapes/clip when present, with the first erased model in runs/
(or --compare). Without an erased model, or without the bundled ones, stand-ins are used and the output says so:
a OneStepTextPipeline made of the teacher's parts (what `sfd erase` writes; the weights do not change the cost),
and random-weight models of the world's default architectures when the teacher or CLIP is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

SERVE_TARGET_S = 20.0
PROMPTS = ("a red circle", "a photo of a red square", "a blue circle", "a green triangle", "a drawing of a yellow cross")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_command() -> list[str]:
    """`python -m sfd demo`."""
    return [sys.executable, "-m", "sfd", "demo"]


def erased_stand_in(teacher: Path, out: Path) -> Path:
    from audit_bench import stand_in_one_step

    stand_in_one_step(teacher, out)
    (out / "sfd_config.json").write_text(json.dumps({"base_model": str(teacher), "concepts": {"forget": ["red"], "override": "blue"},
                                                     "note": "benchmark stand-in: the teacher's parts, not trained"}))
    return out


def choose_models(a, tmp: Path) -> tuple[str, str, str, list[str]]:
    """(base, compare, clip, notes)."""
    from sfd.app import catalog
    from sfd.core.models import checkpoints_dir

    notes = []
    teacher, clip = checkpoints_dir() / "shapes" / "teacher", checkpoints_dir() / "shapes" / "clip"
    if a.stand_ins or not (teacher / "model_index.json").is_file():
        from audit_bench import stand_in_teacher

        notes.append("stand-in teacher: random weights, the shapes world's default architecture"
                     + ("" if a.stand_ins else f" ({teacher} is missing)"))
        teacher = stand_in_teacher(tmp / "teacher")
    if a.stand_ins or not (clip / "open_clip_config.json").is_file():
        from audit_bench import stand_in_clip

        notes.append("stand-in CLIP: random weights, the world's default architecture" + ("" if a.stand_ins else f" ({clip} is missing)"))
        clip = stand_in_clip(tmp / "clip")
    compare = a.compare
    if compare is None and not a.stand_ins:
        models, _ = catalog.scan([ROOT / "runs", Path.cwd() / "runs"])
        found = [m for m in models if m.erased and m.kind == "text"]
        compare = found[0].path if found else None
    if compare is None:
        notes.append("stand-in erased model: a OneStepTextPipeline of the teacher's parts (one-step cost, no training)")
        compare = str(erased_stand_in(Path(teacher), tmp / "erased"))
    return str(teacher), str(compare), str(clip), notes


def wait_until_served(url: str, proc: subprocess.Popen, limit: float) -> float | None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.1)
    return None


def one_request(url: str, base: str, compare: str, i: int, steps: int) -> dict:
    from gradio_client import Client

    t0 = time.perf_counter()
    try:
        client = Client(url, verbose=False)
        connect = time.perf_counter() - t0
        out = client.predict(base, compare, PROMPTS[i % len(PROMPTS)], "", None, i, steps, 5.0, False, "", api_name="/generate")
        status, details = out[6], out[5]
        ok = status.startswith("Done") and out[0] is not None and out[1] is not None
        return {"i": i, "ok": ok, "seconds": time.perf_counter() - t0, "connect_s": connect, "status": status.splitlines()[0][:200],
                "base_s": details.get("models", {}).get("base", {}).get("seconds"),
                "compare_s": details.get("models", {}).get("compare", {}).get("seconds")}
    except Exception as e:  # noqa: BLE001 - a benchmark counts every failure
        return {"i": i, "ok": False, "seconds": time.perf_counter() - t0, "status": f"{e.__class__.__name__}: {str(e)[:200]}"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", help="erased model folder (default: the first erased model in runs/, else a stand-in)")
    p.add_argument("--stand-ins", action="store_true", help="random-weight stand-ins even when bundled models exist")
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--steps", type=int, default=20, help="sampler steps of the teacher per request (the world's default: 20)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the demo process (default 1: the machine is shared)")
    p.add_argument("--no-warmup", action="store_true", help="send the concurrent requests to a cold server (first one loads the models)")
    p.add_argument("--json", help="write the numbers here")
    a = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="sfd-demo-bench-") as tmp:
        tmp = Path(tmp)
        base, compare, clip, notes = choose_models(a, tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        cmd = [*demo_command(), "--port", str(port), "--base", base, "--compare", compare, "--clip", clip,
               "--device", "cpu", "--threads", str(a.threads), "--work-dir", str(tmp / "work")]
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "GRADIO_ANALYTICS_ENABLED": "False"}
        log = open(tmp / "demo.log", "w")
        print("starting:", " ".join(cmd[1:]), flush=True)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            serve = wait_until_served(url, proc, 120.0)
            if serve is None:
                log.flush()
                print((tmp / "demo.log").read_text()[-3000:])
                print("FAIL: the demo did not serve within 120 s")
                return 1
            print(f"served after {serve:.1f} s (target <= {SERVE_TARGET_S:.0f} s)", flush=True)
            first = None
            if not a.no_warmup:  # the first Generate imports torch/diffusers and loads both models: timed on its own
                w = one_request(url, base, compare, 999, a.steps)
                first = w["seconds"]
                print(f"first request (cold: libraries and models load) {first:.1f} s: {w['status']}", flush=True)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=a.requests) as pool:
                results = list(pool.map(lambda i: one_request(url, base, compare, i, a.steps), range(a.requests)))
            wall = time.perf_counter() - t0
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        failed = [r for r in results if not r["ok"]]
        lat = sorted(r["seconds"] for r in results)
        base_s = [r["base_s"] for r in results if r.get("base_s")]
        connect = sorted(r["connect_s"] for r in results if "connect_s" in r)
        cmp_s = [r["compare_s"] for r in results if r.get("compare_s")]
        summary = {
            "serve_seconds": round(serve, 2), "serve_target_seconds": SERVE_TARGET_S,
            "first_request_seconds": None if first is None else round(first, 2), "requests": a.requests,
            "completed_ok": a.requests - len(failed), "errors": [r["status"] for r in failed], "wall_seconds": round(wall, 2),
            "latency_seconds": {"min": round(lat[0], 2), "median": round(statistics.median(lat), 2), "max": round(lat[-1], 2)},
            "throughput_per_second": round(a.requests / wall, 3),
            "client_connect_seconds": {"min": round(connect[0], 2), "max": round(connect[-1], 2)} if connect else None,
            "median_sampling_seconds": {"base": round(statistics.median(base_s), 4) if base_s else None,
                                        "erased": round(statistics.median(cmp_s), 4) if cmp_s else None},
            "teacher_steps": a.steps, "demo_threads": a.threads, "models": {"base": base, "compare": compare, "clip": clip},
            "notes": notes, "cpu_count": os.cpu_count(),
        }
    print(f"{summary['completed_ok']}/{a.requests} concurrent requests completed without error in {wall:.1f} s "
          f"(latency min {lat[0]:.1f} s, median {statistics.median(lat):.1f} s, max {lat[-1]:.1f} s)")
    if base_s and cmp_s:
        print(f"median sampling time per image: original {a.steps} steps {statistics.median(base_s) * 1e3:.0f} ms, "
              f"erased one step {statistics.median(cmp_s) * 1e3:.0f} ms")
    for n in notes:
        print("note:", n)
    for e in summary["errors"][:5]:
        print("error:", e)
    print(json.dumps(summary, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))
    return 0 if serve <= SERVE_TARGET_S and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
