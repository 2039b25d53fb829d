"""Shapes world benchmark: erase a colour and a shape with default settings, single-stage and/or two-stage.

  python benchmarks/shapes_bench.py                         # single-stage: erase red (override green) and circle (override square)
  python benchmarks/shapes_bench.py --stages single,two     # both, side by side in one run (two: from the bundled base)
  python benchmarks/shapes_bench.py --concepts all          # every colour and every shape, one run each
  python benchmarks/shapes_bench.py --concepts green:yellow # forget:override pairs
  python benchmarks/shapes_bench.py --keep runs/bench        # keep the erased models (runs/bench/no-red, ...)
  python benchmarks/shapes_bench.py --teacher runs/shapes-sdxl/teacher --stages two --generator runs/shapes-sdxl/onestep
                                                            # another teacher of the world (here SDXL-structured)
Prints, per run: erase wall time, forget rate (teacher -> erased), retained colour/shape detection and CLIP score as
ratios to the teacher, and the one-step vs teacher sampling throughput at equal batch. JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from sfd.evaluators.world_metrics import world_evaluator
from sfd.core.config import preset
from sfd.core.erase import default_base, run_sfd
from sfd.core.families import family_for
from sfd.core.models import checkpoints_dir
from sfd.core.worlds import shapes


@torch.no_grad()
def throughput(pipe, batch: int, repeats: int, **kw) -> float:
    prompts = [shapes.caption(i % len(shapes.COLOURS), i % len(shapes.SHAPES)) for i in range(batch)]
    size = shapes.IMAGE_SIZE
    pipe(prompts, generator=torch.Generator().manual_seed(0), height=size, width=size, output_type="pt", **kw)
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        pipe(prompts, generator=torch.Generator().manual_seed(r), height=size, width=size, output_type="pt", **kw)
        best = min(best, time.perf_counter() - t0)
    return batch / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concepts", default="red,circle", help="comma-separated concepts or forget:override pairs, or 'all'")
    ap.add_argument("--steps", type=int, default=None, help="SFD steps (default: the shapes preset's)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", default="benchmarks/results/shapes.json")
    ap.add_argument("--keep", metavar="DIR", help="write the erased models into DIR/no-CONCEPT (default: a temporary folder)")
    ap.add_argument("--stages", default="single", help="single, two or single,two (two: stage 2 from --generator)")
    ap.add_argument("--generator", help="one-step base of the two-stage runs (default: the bundled checkpoints/shapes/onestep)")
    ap.add_argument("--teacher", metavar="DIR", help="the shapes teacher to erase from and compare to (default: the bundled "
                    "checkpoints/shapes/teacher)")
    a = ap.parse_args()
    teacher_dir = Path(a.teacher) if a.teacher else checkpoints_dir() / "shapes" / "teacher"
    items = list(shapes.COLOURS + shapes.SHAPES) if a.concepts == "all" else a.concepts.split(",")
    pairs = [tuple(i.split(":", 1)) if ":" in i else (i, shapes.next_value(i)) for i in items]
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="sfd-shapes-bench-"))
    stages = a.stages.split(",")
    base = a.generator or (str(default_base(str(teacher_dir))) if "two" in stages else None)
    if "two" in stages and base in (None, "None"):
        raise SystemExit("no one-step base: pass --generator or bundle checkpoints/shapes/onestep")
    family = family_for(str(teacher_dir))
    preset_name = family.preset(json.loads((teacher_dir / "sfd_world.json").read_text()))  # shapes, or shapes-sd3 for flow
    evaluate = world_evaluator(family, str(teacher_dir), seed=0, progress=False)
    rows = []
    for (forget, override), stage in [(p, st) for p in pairs for st in stages]:
        # plain SFD, as its recorded rows (benchmarks/robust_bench.py measures the robust default against it)
        config = preset(preset_name, "erase" if stage == "two" else "single", robust=False).replace(steps=a.steps)
        out = work / f"no-{forget}-{stage}"
        s = run_sfd(str(teacher_dir), str(out), config, forget=[forget], override=override, generator=base if stage == "two" else None,
                    progress=True, overwrite=True, evaluate=evaluate, family=family)
        m = s["metrics"]
        rows.append({"forget": forget, "override": override, "stage": stage, "generator": s["generator_base"],
                     "erase_seconds": s["erase_seconds"], "sfd_config": s["config"], "metrics": m})
        print(f"{forget} -> {override} ({stage}-stage): erase {s['erase_seconds']:.0f} s | forget rate "
              f"{m['teacher']['forget_rate']:.1%} -> {m['forget_rate']:.1%} | retained colour x{m['retained_colour_rate_ratio']:.2f}, "
              f"shape x{m['retained_shape_rate_ratio']:.2f}, CLIP score x{m['retained_clip_score_ratio']:.2f}", flush=True)
    meta = json.loads((teacher_dir / "sfd_world.json").read_text())
    teacher = family.load(str(teacher_dir))  # the teacher's family (SD or SDXL); load_text_pipeline is SD's only
    kw = {"num_inference_steps": meta["default_num_inference_steps"], "guidance_scale": meta["default_guidance_scale"]}
    tp_teacher = throughput(teacher, a.batch, 2, **kw, **family.sampler_kwargs(teacher))  # the SD3 world's short T5 slot
    tp_one = throughput(family.load(str(work / f"no-{pairs[0][0]}-{stages[0]}")), a.batch, 5)
    report = {"runs": rows, "torch_threads": torch.get_num_threads(),
              "throughput_images_per_s": {"teacher": tp_teacher, "one_step": tp_one, "batch": a.batch,
                                          "teacher_sampler": kw}, "speedup": tp_one / tp_teacher}
    print("\n| concept | stage | erase s | forget rate (teacher -> erased) | retained colour | retained shape | CLIP score |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        m = r["metrics"]
        print(f"| {r['forget']} -> {r['override']} | {r['stage']} | {r['erase_seconds']:.0f} | {m['teacher']['forget_rate']:.1%} -> "
              f"{m['forget_rate']:.1%} | {m['retained_colour_rate']:.1%} ({m['retained_colour_rate_ratio']:.2f}x) | "
              f"{m['retained_shape_rate']:.1%} ({m['retained_shape_rate_ratio']:.2f}x) | {m['retained_clip_score']:.1f} "
              f"({m['retained_clip_score_ratio']:.2f}x) |")
    print(f"\nsampling at batch {a.batch}: teacher {tp_teacher:.1f} img/s ({kw}), one-step {tp_one:.1f} img/s -> "
          f"{report['speedup']:.1f}x")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
