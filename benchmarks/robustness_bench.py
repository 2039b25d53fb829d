"""Robustness benchmark on the shapes world: SFD beside ESD-x, ESD-u and UCE, with positive controls, under four attacks
(and an opt-in fifth, on the conditioning itself).

  python benchmarks/robustness_bench.py                       # red and circle; every row and attack
  python benchmarks/robustness_bench.py --concepts red --rows original,negative-prompt,uce
  python benchmarks/robustness_bench.py --keep runs/robust    # keep (and on a rerun, reuse) the erased models

Rows: the original teacher; the teacher with the concept as its negative prompt (a weak defence); the bundled
one-step distillation with no forgetting (checkpoints/shapes/onestep); SFD two-stage (from that base), robust SFD (the
same with `--robust`: the preset's inner attack) and single-stage;
ESD-x, ESD-u and UCE (`sfd erase --method ...`). Every row is attacked the same way (sfd.evaluators.robustness) on the same
(prompt, seed) pairs, judged by the held-out CNN judges, and measured for retained detection and CLIP score (the
world's metrics, erased / teacher), FID/KID to the original (CLIP image features, retained prompts), erase time and
sampling time per image. Writes robustness_<concept>.{json,csv,html} to --out and a summary JSON to --json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sfd.evaluators.audit import load_model
from sfd.evaluators.detectors import DetectorFactory, feature_extractor
from sfd.evaluators.robustness import (ATTACKS, DEFAULT_ATTACKS, NEGATIVE_GUIDANCE, RobustnessSettings, Victim, markdown_table,
                                       record_in_cards, robustness_report, summary_columns, write_table)
from sfd.evaluators.world_metrics import world_evaluator
from sfd.core.baselines import run_baseline
from sfd.core.methods import baselines
from sfd.core.config import preset
from sfd.core.erase import run_sfd
from sfd.core.families import family_for
from sfd.core.models import checkpoints_dir, world_meta
from sfd.core.prompts import mentions
from sfd.core.worlds import shapes, world_prompts
from sfd.commands.worlds.shapes_judge import judge_spec

ROWS = ("original", "negative-prompt", "distilled", "sfd-two-stage", "sfd-robust", "sfd-single-stage", *baselines())  # baselines: sfd.core.methods


def erase(row: str, concept: str, teacher: str, base: str, work: Path, evaluate) -> tuple[str, dict]:
    """The erased model of `row` (made, or reused from `work`), and its summary."""
    out = work / f"{row}-{concept}"
    summary_file = out / "sfd_config.json"
    if summary_file.is_file():
        return str(out), json.loads(summary_file.read_text())
    override = shapes.next_value(concept)
    if row.startswith("sfd"):
        two = row in ("sfd-two-stage", "sfd-robust")
        config = preset(family_for(teacher).preset(world_meta(teacher)), "erase" if two else "single",  # the world's preset for its family
                        robust=row == "sfd-robust")
        s = run_sfd(teacher, str(out), config, forget=[concept], override=override, generator=base if two else None,
                    progress=False, overwrite=True, evaluate=evaluate)
    else:
        s = run_baseline(row, teacher, str(out), [concept], override, overwrite=True, progress=False, evaluate=evaluate)
    return str(out), s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="red,circle")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS), help=f"comma-separated, of {', '.join(ATTACKS)}")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per base prompt")
    ap.add_argument("--max-prompts", type=int, default=10)
    ap.add_argument("--steps", type=int, default=RobustnessSettings.steps)
    ap.add_argument("--lr", type=float, default=RobustnessSettings.lr, help="the attacks' Adam rate (RobustnessSettings.lr)")
    ap.add_argument("--sampler-steps", type=int, default=RobustnessSettings.sampler_steps,
                    help="steps of the differentiable sampler that attacks multi-step models")
    ap.add_argument("--teacher", default=str(checkpoints_dir() / "shapes" / "teacher"),
                    help="the shapes world's teacher (default the bundled SD-structured one; `sfd train-teacher shapes --family "
                         "sdxl|sd3` makes the others)")
    ap.add_argument("--base", default=str(checkpoints_dir() / "shapes" / "onestep"),
                    help="its one-step distillation (`sfd distill`), the base of sfd-two-stage and the `distilled` row")
    ap.add_argument("--keep", help="folder for the erased models (reused when present); default a temporary folder")
    ap.add_argument("--out", default="benchmarks/results/robustness", help="folder of the per-concept tables")
    ap.add_argument("--json", default="benchmarks/results/robustness.json")
    a = ap.parse_args()
    rows = [r for r in a.rows.split(",") if r]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"unknown row {bad[0]!r}; expected some of {', '.join(ROWS)}")
    teacher, base = a.teacher, a.base
    import tempfile

    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="sfd-robustness-"))
    work.mkdir(parents=True, exist_ok=True)
    factory = DetectorFactory()
    clip_features = feature_extractor("clip", factory=factory)
    evaluate = world_evaluator(family_for(teacher), teacher, seed=0, progress=False)
    summary = {"torch_threads": torch.get_num_threads(), "concepts": {}}
    for concept in a.concepts.split(","):
        cfg = RobustnessSettings(concept, attacks=tuple(a.attacks.split(",")), n_seeds=a.seeds, max_prompts=a.max_prompts,
                                 steps=a.steps, lr=a.lr, sampler_steps=a.sampler_steps).validate()
        judge = factory.build(judge_spec(concept))
        scorer = factory.build(f"clip:{concept}")
        original = Victim(load_model(teacher, "original"), "original", role="original")
        retained = [p for p in world_prompts({"world": "shapes"}) if not mentions(p, concept)][:96]
        victims, extra, paths = [], {}, {}
        for row in rows:
            if row == "original":
                victims.append(original)
            elif row == "negative-prompt":
                victims.append(Victim(load_model(teacher, row), row, negative_prompt=concept, negative_guidance=NEGATIVE_GUIDANCE, role="control"))
            elif row == "distilled":
                victims.append(Victim(load_model(base, row), row, role="control"))
            else:
                path, s = erase(row, concept, teacher, base, work, evaluate)
                paths[row] = path
                victims.append(Victim(load_model(path, row), row))
                extra[row] = summary_columns(path)[1]
                print(f"{concept}: {row} erased in {s['erase_seconds']:.0f} s; forget rate {extra[row]['forget_rate']}", flush=True)
        if victims[0] is not original:  # the original leads the table: ideal pairs, matching targets, inversion references
            victims.insert(0, original)
        report = robustness_report(victims, cfg, scorer, judge, extra, retained, clip_features, log=lambda m: print(m, flush=True))
        write_table(a.out, concept, report)
        record_in_cards(paths, report)  # each erased model's card records its measured ASR
        print(markdown_table(concept, report), flush=True)
        summary["concepts"][concept] = {"asr": report["asr"], "extra": report["extra"], "n_ideal": report["n_ideal"], "n_pairs": report["n_pairs"],
                                        "seconds": report["seconds"]}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
