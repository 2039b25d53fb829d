"""Robust SFD against plain two-stage SFD on the shapes world: erase time, forgetting, retained quality, and ASR under
the robustness suite's attacks (held-out judges; sfd.evaluators.robustness).

  python benchmarks/robust_bench.py                                   # circle; default attacks, Ring-A-Bell, conditioning
  python benchmarks/robust_bench.py --budget-scale 10 --no-attack-plain  # every attack at 10x its budget (the original: not attacked)
  python benchmarks/robust_bench.py --concepts red,circle --keep runs/robust-sfd
  python benchmarks/robust_bench.py --erase-only                       # erase times and world metrics only

Rows: the original teacher, `sfd-two-stage` (`sfd erase` from the bundled base) and `sfd-robust` (the same with
`--robust`: the preset's inner attack). Both erases use the world's stage-2 preset and the next value of the concept's
kind as the override (as benchmarks/robustness_bench.py). Writes a summary JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from sfd.core.config import preset, typed_setting
from sfd.core.erase import run_sfd
from sfd.core.models import checkpoints_dir
from sfd.core.worlds import shapes

ROWS = ("sfd-two-stage", "sfd-robust")


def erase(row: str, concept: str, teacher: str, base: str, work: Path, evaluate, seed: int, robust: dict,
          common: dict | None = None) -> tuple[str, dict]:
    """The erased model of `row` (made, or reused from `work`), and its summary; `robust`: settings over the preset's
    for the robust row, `common`: for both rows."""
    common = common or {}
    tag = "".join(f"-{k}{v}" for k, v in sorted(common.items()))
    tag += "".join(f"-{k.removeprefix('robust_')}{v}" for k, v in sorted(robust.items())) if row == "sfd-robust" else ""
    out = work / f"{row}-{concept}-seed{seed}{tag.replace(',', '+')}"
    summary_file = out / "sfd_config.json"
    if summary_file.is_file():
        return str(out), json.loads(summary_file.read_text())
    config = preset("shapes", "erase", robust=row == "sfd-robust").replace(seed=seed, **common)
    if row == "sfd-robust":
        config = config.replace(**robust)
    s = run_sfd(teacher, str(out), config, forget=[concept], override=shapes.next_value(concept), generator=base,
                progress=False, overwrite=True, evaluate=evaluate)
    return str(out), s


def attack(concept: str, paths: dict, teacher: str, a, extra: dict) -> dict:
    from sfd.evaluators.audit import load_model
    from sfd.evaluators.detectors import DetectorFactory, feature_extractor
    from sfd.evaluators.robustness import RobustnessSettings, Victim, markdown_table, record_in_cards, robustness_report
    from sfd.core.prompts import mentions
    from sfd.core.worlds import world_prompts
    from sfd.commands.worlds.shapes_judge import judge_spec

    factory = DetectorFactory()
    d = RobustnessSettings(concept)
    k = a.budget_scale  # every attack's budget times k: steps, inversion steps, Ring-A-Bell's generations
    cfg = RobustnessSettings(concept, attacks=tuple(a.attacks.split(",")), n_seeds=a.seeds, max_prompts=a.max_prompts,
                             steps=a.steps * k, inversion_steps=d.inversion_steps * k,
                             ring_a_bell_generations=d.ring_a_bell_generations * k).validate()
    victims = [Victim(load_model(teacher, "original"), "original", role="original")]
    victims += [Victim(load_model(p, row), row) for row, p in paths.items()]
    retained = [p for p in world_prompts({"world": "shapes"}) if not mentions(p, concept)][:96]
    report = robustness_report(victims, cfg, factory.build(f"clip:{concept}"), factory.build(judge_spec(concept)), extra,
                               retained, feature_extractor("clip", factory=factory), log=lambda m: print(m, flush=True),
                               attack_original=a.attack_original if a.attack_original is not None else k == 1)
    print(markdown_table(concept, report), flush=True)
    record_in_cards(paths, report)  # each erased model's card records its measured ASR
    return {"asr": report["asr"], "n_ideal": report["n_ideal"], "n_pairs": report["n_pairs"], "seconds": report["seconds"],
            "fid_kid": {label: {k: x.get(k) for k in ("fid", "kid")} for label, x in report["extra"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="circle")
    ap.add_argument("--attacks", default="prompt,inversion,match,noise,ring-a-bell,conditioning")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per base prompt")
    ap.add_argument("--max-prompts", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20, help="the per-pair attacks' optimisation steps")
    ap.add_argument("--budget-scale", type=int, default=1,
                    help="every attack's budget times this (steps, inversion steps, Ring-A-Bell generations): 10 for the 10x rows")
    ap.add_argument("--seed", type=int, default=0, help="training seed of both erases")
    ap.add_argument("--erase-only", action="store_true", help="erase times and world metrics, no attacks")
    ap.add_argument("--robust-space", help="robust_space over the preset's (e.g. conditioning,token)")
    ap.add_argument("--robust-budget", type=float, help="robust_budget over the preset's")
    ap.add_argument("--robust-share", type=float, help="robust_share over the preset's")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any erase setting over the preset's, for both rows (e.g. --set steps=100) or, for robust_*, the "
                         "robust row; repeatable")
    ap.add_argument("--set-robust", action="append", default=[], metavar="KEY=VALUE",
                    help="any erase setting over the preset's for the robust row only (e.g. --set-robust steps=75); repeatable")
    ap.add_argument("--attack-plain", action=argparse.BooleanOptionalAction, default=True,
                    help="attack the plain two-stage row too (--no-attack-plain: the original and the robust row only)")
    ap.add_argument("--attack-original", action=argparse.BooleanOptionalAction, default=None,
                    help="attack the original too (the positive control; default: at --budget-scale 1 only, where it costs "
                         "minutes, not hours; its ideal pairs are judged either way)")
    ap.add_argument("--keep", help="folder for the erased models (reused when present); default a temporary folder")
    ap.add_argument("--json", default="benchmarks/results/robust_sfd.json")
    a = ap.parse_args()
    from sfd.evaluators.robustness import summary_columns
    from sfd.evaluators.world_metrics import world_evaluator
    from sfd.core.families import family_for

    teacher, base = str(checkpoints_dir() / "shapes" / "teacher"), str(checkpoints_dir() / "shapes" / "onestep")
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="sfd-robust-"))
    work.mkdir(parents=True, exist_ok=True)
    evaluate = world_evaluator(family_for(teacher), teacher, seed=0, progress=False)
    robust = {k: v for k, v in (("robust_space", a.robust_space), ("robust_budget", a.robust_budget),
                                ("robust_share", a.robust_share)) if v is not None}
    common = {}
    for item in a.set:
        key, _, value = item.partition("=")
        (robust if key.startswith("robust_") else common)[key] = typed_setting(key, value)
    for item in a.set_robust:
        key, _, value = item.partition("=")
        robust[key] = typed_setting(key, value)
    summary: dict = {"robust_settings": robust, "concepts": {}}
    for concept in a.concepts.split(","):
        paths, extra, rows = {}, {}, {}
        for row in ROWS:
            paths[row], s = erase(row, concept, teacher, base, work, evaluate, a.seed, robust, common)
            extra[row] = summary_columns(paths[row])[1]
            rows[row] = {"erase_seconds": s["erase_seconds"], "train_loop_seconds": s["train_loop_seconds"],
                         "metrics": {k: v for k, v in (s["metrics"] or {}).items() if k != "teacher"}, "robust": s.get("robust")}
            print(f"{concept}: {row} erased in {s['erase_seconds']:.0f} s (loop {s['train_loop_seconds']:.0f} s); "
                  f"{json.dumps(rows[row]['metrics'])}", flush=True)
        ratio = rows["sfd-robust"]["train_loop_seconds"] / rows["sfd-two-stage"]["train_loop_seconds"]
        print(f"{concept}: robust / plain training-loop time {ratio:.2f}x", flush=True)
        summary["concepts"][concept] = {"rows": rows, "loop_time_ratio": ratio}
        if not a.erase_only:
            attacked = paths if a.attack_plain else {"sfd-robust": paths["sfd-robust"]}
            summary["concepts"][concept]["attacks"] = attack(concept, attacked, teacher, a, extra)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
