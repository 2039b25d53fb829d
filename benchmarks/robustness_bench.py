"""Robustness benchmark on the shapes world: SFD beside ESD-x, ESD-u and UCE, with positive controls, under four attacks.

  python benchmarks/robustness_bench.py                       # red and circle; every row and attack
  python benchmarks/robustness_bench.py --concepts red --rows original,negative-prompt,uce
  python benchmarks/robustness_bench.py --keep runs/robust    # keep (and on a rerun, reuse) the erased models

Rows: the original teacher; the teacher with the concept as its negative prompt (a weak defence); the bundled
one-step distillation with no forgetting (checkpoints/shapes/onestep); SFD two-stage (from that base) and single-stage;
ESD-x, ESD-u and UCE (`sfd erase --method ...`). Every row is attacked the same way (evaluators.robustness) on the same
(prompt, seed) pairs, judged by the held-out CNN judges, and measured for retained detection and CLIP score (the
world's metrics, erased / teacher), FID/KID to the original (CLIP image features, retained prompts), erase time and
sampling time per image. Writes robustness_<concept>.{json,csv,html} to --out and a summary JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from evaluators.audit import load_model
from evaluators.detectors import DetectorFactory, feature_extractor, fid_kid
from evaluators.robustness import (ATTACKS, RobustnessSettings, Victim, asr_table, attack_victim, base_pairs, describe_settings,
                                   markdown_table, reference_set, write_table)
from evaluators.world_metrics import world_evaluator
from sfd.baselines import run_baseline
from sfd.config import preset
from sfd.erase import run_sfd
from sfd.families import family_for
from sfd.models import checkpoints_dir
from sfd.prompts import mentions
from sfd.worlds import shapes, world_prompts
from sfd.worlds.shapes_judge import judge_spec

# The weak defence: the concept guided away from at this scale. The stock negative prompt (the concept as the
# unconditional branch) leaves red at 100% on this world, since the prompt itself still names it; 7.5 brings red to
# 5% and circle to 30% (2 seeds x 24 prompts, measured with the held-out judges).
NEGATIVE_GUIDANCE = 7.5
ROWS = ("original", "negative-prompt", "distilled", "sfd-two-stage", "sfd-single-stage", "esd-x", "esd-u", "uce")


def erase(row: str, concept: str, teacher: str, base: str, work: Path, evaluate) -> tuple[str, dict]:
    """The erased model of `row` (made, or reused from `work`), and its summary."""
    out = work / f"{row}-{concept}"
    summary_file = out / "sfd_config.json"
    if summary_file.is_file():
        return str(out), json.loads(summary_file.read_text())
    override = shapes.next_value(concept)
    if row.startswith("sfd"):
        two = row == "sfd-two-stage"
        config = preset("shapes", "erase" if two else "single")
        s = run_sfd(teacher, str(out), config, forget=[concept], override=override, generator=base if two else None,
                    progress=False, overwrite=True, evaluate=evaluate)
    else:
        s = run_baseline(row, teacher, str(out), [concept], override, overwrite=True, progress=False, evaluate=evaluate)
    return str(out), s


def retained_extra(summary: dict) -> dict:
    m = summary.get("metrics") or {}
    return {"retained_colour_ratio": m.get("retained_colour_rate_ratio"), "retained_shape_ratio": m.get("retained_shape_rate_ratio"),
            "clip_score_ratio": m.get("retained_clip_score_ratio"), "forget_rate": m.get("forget_rate"),
            "erase_seconds": summary.get("erase_seconds")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="red,circle")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--seeds", type=int, default=5, help="seeds per base prompt")
    ap.add_argument("--max-prompts", type=int, default=10)
    ap.add_argument("--steps", type=int, default=RobustnessSettings.steps)
    ap.add_argument("--keep", help="folder for the erased models (reused when present); default a temporary folder")
    ap.add_argument("--out", default="benchmarks/results/robustness", help="folder of the per-concept tables")
    ap.add_argument("--json", default="benchmarks/results/robustness.json")
    a = ap.parse_args()
    rows = [r for r in a.rows.split(",") if r]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"unknown row {bad[0]!r}; expected some of {', '.join(ROWS)}")
    teacher = str(checkpoints_dir() / "shapes" / "teacher")
    base = str(checkpoints_dir() / "shapes" / "onestep")
    import tempfile

    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="sfd-robustness-"))
    work.mkdir(parents=True, exist_ok=True)
    factory = DetectorFactory()
    clip_features = feature_extractor("clip", factory=factory)
    evaluate = world_evaluator(family_for(teacher), teacher, seed=0, progress=False)
    summary = {"torch_threads": torch.get_num_threads(), "concepts": {}}
    for concept in a.concepts.split(","):
        t_concept = time.perf_counter()
        cfg = RobustnessSettings(concept, attacks=tuple(a.attacks.split(",")), n_seeds=a.seeds, max_prompts=a.max_prompts,
                                 steps=a.steps).validate()
        judge = factory.build(judge_spec(concept))
        scorer = factory.build(f"clip:{concept}")
        pairs = base_pairs(concept, cfg)
        original = Victim(load_model(teacher, "original"), "original", role="original")
        refs = reference_set(original, concept, cfg)
        retained = [p for p in world_prompts({"world": "shapes"}) if not mentions(p, concept)][:96]
        seeds = list(range(len(retained)))

        def retained_images(v: Victim) -> torch.Tensor:
            z = v.noise(seeds)
            with torch.no_grad():
                return torch.cat([v.render(v.hidden(v.ids(retained[i:i + 48])), z[i:i + 48], full=True).cpu() for i in range(0, len(z), 48)])

        original_retained = retained_images(original)
        victims, extra = [], {}
        for row in rows:
            if row == "original":
                victims.append(original)
            elif row == "negative-prompt":
                victims.append(Victim(load_model(teacher, row), row, negative_prompt=concept, negative_guidance=NEGATIVE_GUIDANCE, role="control"))
            elif row == "distilled":
                victims.append(Victim(load_model(base, row), row, role="control"))
            else:
                path, s = erase(row, concept, teacher, base, work, evaluate)
                victims.append(Victim(load_model(path, row), row))
                extra[row] = retained_extra(s)
                print(f"{concept}: {row} erased in {s['erase_seconds']:.0f} s; forget rate {extra[row]['forget_rate']}", flush=True)
        # the original's plain images are the output-matching targets: render them first, then attack every row
        with torch.no_grad():
            z = original.noise([s for _, s in pairs])
            prompts = [p for p, _ in pairs]
            targets = torch.cat([original.render(original.hidden(original.ids(prompts[i:i + 50])), z[i:i + 50], full=True).cpu()
                                 for i in range(0, len(z), 50)])
        results = []
        for v in victims:
            print(f"{concept}: attacking {v.label}", flush=True)
            results.append(attack_victim(v, pairs, targets, refs, scorer, judge, cfg))
            fk = fid_kid(retained_images(v) if v is not original else original_retained, original_retained, clip_features,
                         kid_subset_size=len(retained))
            extra.setdefault(v.label, {}).update({"fid": fk.get("fid"), "kid": fk.get("kid"),
                                                  "sampling_seconds_per_image": results[-1]["sampling_seconds_per_image"]})
        ideal = results[0]["plain_flags"] if rows[0] == "original" else [True] * len(pairs)
        report = {"concept": concept, "n_pairs": len(pairs), "n_ideal": int(sum(ideal)), "judge": judge.name, "scorer": scorer.name,
                  "settings": describe_settings(cfg), "asr": asr_table(results, ideal), "extra": extra,
                  "seconds": time.perf_counter() - t_concept,
                  "per_model": [{k: v for k, v in r.items() if k != "attacks"} | {"attack_seconds": {n: x["seconds"] for n, x in r["attacks"].items()}}
                                for r in results]}
        write_table(a.out, concept, report)
        print(markdown_table(concept, report), flush=True)
        summary["concepts"][concept] = {"asr": report["asr"], "extra": extra, "n_ideal": report["n_ideal"], "n_pairs": len(pairs),
                                        "seconds": report["seconds"]}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
