"""Class-conditioning attacks on the digits world: does an erased class come back when the attacker moves the class
embedding itself (sfd/core/attacks/classes.py)?

  python benchmarks/class_attack_bench.py                        # classes 1, 4, 7; 50 noises each
  python benchmarks/class_attack_bench.py --classes 1 --keep runs/class-attack --set robust_budget=2

Rows per erased class k: the original teacher and the bundled one-step base (controls: they draw k), and SFD two-stage
(`sfd erase` of k from the bundled base, its defaults) and robust SFD (the same with `--robust`: the class preset's
`class-embedding` space) each plain, with the original's embedding of k plugged in
(`transplant`), and with k's embedding vector optimised per noise (`embedding`: `--steps` Adam steps, white-box, no
norm bound) so that the image matches the base's image of k for the same noise (UMA's data-free objective). Cells: the
share of images the digits judge (`checkpoints/digits/judge`) assigns to k, with 95% Wilson intervals. Then each row's
retained mean and lowest accuracy and retained Frechet distance over the teacher's (`--n-per-class` samples per class),
and its erase time. Writes --json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from sfd.core.attacks import AttackBudget, output_match_loss
from sfd.core.attacks.classes import class_embedding_attack, transplant_attack
from sfd.core.config import preset, typed_setting
from sfd.core.erase import run_sfd
from sfd.core.models import checkpoints_dir
from sfd.core.families import load_class_pipeline
from sfd.core.worlds.digits import load_digits_tensors
from sfd.evaluators.class_eval import evaluate_classes, sample_classes, score_samples
from sfd.evaluators.classifier import ConvJudge
from sfd.evaluators.sampling import load_model
from sfd.evaluators.stats import rate_summary
from sfd.evaluators.victim import ClassVictim


def judged_as(judge, images: torch.Tensor, k: int) -> list[bool]:
    with torch.no_grad():
        return (judge(images * 2 - 1).argmax(-1) == k).tolist()


ROWS = ("sfd-two-stage", "sfd-robust")
SAMPLING_SEED = 1  # the retained metrics' noise, the same for the teacher and every row (as two_stage_bench.py)


def erased_model(row: str, k: int, teacher: str, base: str, work: Path, robust: dict) -> tuple[str, dict]:
    """The erased model of `row` for class k (made, or reused from `work`) and its run summary."""
    tag = "".join(f"-{key.removeprefix('robust_')}{v}" for key, v in sorted(robust.items())) if row == "sfd-robust" else ""
    out = work / f"{row}-{k}{tag}"
    if not (out / "sfd_config.json").is_file():
        config = preset("class", "erase", robust=row == "sfd-robust")
        if row == "sfd-robust":
            config = config.replace(**robust)
        run_sfd(teacher, str(out), config, forget=[str(k)], override="random", generator=base, progress=False, overwrite=True)
    return str(out), json.loads((out / "sfd_config.json").read_text())


def attack_row(row: str, k: int, paths, judge, original, z, base_images, a, robust: dict) -> dict:
    path, summary = erased_model(row, k, paths["teacher"], paths["base"], paths["work"], robust)
    erased = ClassVictim(load_model(path, row), row)
    labels = torch.full((a.n,), k, dtype=torch.long)
    with torch.no_grad():
        plain = erased.render(erased.encode(labels), z, full=True)
    t1 = time.perf_counter()
    attacked = class_embedding_attack(erased, labels, z, AttackBudget(steps=a.steps, lr=a.lr, seed=0), output_match_loss(base_images))
    attack_s = time.perf_counter() - t1
    transplanted = transplant_attack(erased, original.surface.table, labels, z)
    m = evaluate_classes(load_class_pipeline(path), judge, paths["x"], paths["y"], a.n_per_class, seed=SAMPLING_SEED, forget=(k,),
                         progress=False)
    return {"rates": {f"{row} {name}": rate_summary(judged_as(judge, im, k))
                      for name, im in (("plain", plain), ("transplant", transplanted), ("embedding", attacked))},
            "erase_seconds": summary["erase_seconds"], "train_loop_seconds": summary.get("train_loop_seconds"),
            "attack_seconds": attack_s, "retained_mean": m["retained_mean_accuracy"], "retained_min": m["retained_min_accuracy"],
            "fd_retained": m["fd_retained"], "robust": summary.get("robust")}


def attack_class(k: int, paths: dict, judge, a, robust: dict, teacher_scores) -> dict:
    original = ClassVictim(load_model(paths["teacher"], "original"), "original")
    control = ClassVictim(load_model(paths["base"], "distilled"), "distilled")
    labels = torch.full((a.n,), k, dtype=torch.long)
    z = original.noise([10**6 * (k + 1) + i for i in range(a.n)])
    with torch.no_grad():
        plain = {v.label: v.render(v.encode(labels), z, full=True) for v in (original, control)}
    rates = {f"{label} plain": rate_summary(judged_as(judge, im, k)) for label, im in plain.items()}
    rows = {}
    for row in a.rows.split(","):
        rows[row] = attack_row(row, k, paths, judge, original, z, plain["distilled"], a, robust)
        rates.update(rows[row].pop("rates"))
        rows[row]["fd_ratio"] = rows[row]["fd_retained"] / teacher_scores(k)["fd_retained"]
    return {"class": k, "n": a.n, "rates": rates, "rows": rows, "teacher_fd_retained": teacher_scores(k)["fd_retained"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", default="1,4,7")
    ap.add_argument("--n", type=int, default=50, help="noises per class")
    ap.add_argument("--steps", type=int, default=20, help="Adam steps of the embedding attack")
    ap.add_argument("--lr", type=float, default=0.1, help="Adam's rate, in units of the class-embedding table's std")
    ap.add_argument("--rows", default="sfd-two-stage,sfd-robust", help=f"some of {', '.join(ROWS)}")
    ap.add_argument("--n-per-class", type=int, default=100, help="samples per class of the retained metrics")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an erase setting of the robust row over the preset's (e.g. --set robust_budget=2); repeatable")
    ap.add_argument("--keep", help="folder for the erased models (reused when present); default a temporary folder")
    ap.add_argument("--json", default="benchmarks/results/class_attack.json")
    a = ap.parse_args()
    teacher, base = str(checkpoints_dir() / "digits" / "teacher"), str(checkpoints_dir() / "digits" / "onestep")
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="sfd-class-attack-"))
    work.mkdir(parents=True, exist_ok=True)
    judge = ConvJudge.from_pretrained(checkpoints_dir() / "digits" / "judge")
    robust = {key: typed_setting(key, v) for key, _, v in (item.partition("=") for item in a.set)}
    x, y = load_digits_tensors()
    paths = {"teacher": teacher, "base": base, "work": work, "x": x, "y": y}
    t_images, t_labels, _ = sample_classes(load_class_pipeline(teacher), range(10), a.n_per_class, seed=SAMPLING_SEED, progress=False)
    teacher_scores = lambda k: score_samples(judge, t_images, t_labels, x, y, forget=(k,))  # noqa: E731
    results = [attack_class(int(k), paths, judge, a, robust, teacher_scores) for k in a.classes.split(",")]
    print("| class | " + " | ".join(results[0]["rates"]) + " |")
    print("|---" * (len(results[0]["rates"]) + 1) + "|")
    for r in results:
        cells = [f"{x['rate']:.0%} [{x['ci_low']:.0%}, {x['ci_high']:.0%}]" for x in r["rates"].values()]
        print(f"| {r['class']} | " + " | ".join(cells) + " |")
    print("\n| class | row | retained mean | retained min | FD retained / teacher's | erase s (loop) |\n|---|---|---|---|---|---|")
    for r in results:
        for row, m in r["rows"].items():
            print(f"| {r['class']} | {row} | {m['retained_mean']:.1%} | {m['retained_min']:.0%} | {m['fd_ratio']:.2f}x | "
                  f"{m['erase_seconds']:.0f} ({m['train_loop_seconds'] or float('nan'):.0f}) |")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"settings": vars(a), "results": results, "torch_threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
