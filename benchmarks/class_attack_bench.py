"""Class-conditioning attacks on the digits world: does an erased class come back when the attacker moves the class
embedding itself (sfd/core/attacks/classes.py)?

  python benchmarks/class_attack_bench.py                        # classes 1, 4, 7; 50 noises each
  python benchmarks/class_attack_bench.py --classes 1 --keep runs/class-attack

Rows per erased class k: the original teacher and the bundled one-step base (controls: they draw k), and SFD two-stage
(`sfd erase` of k from the bundled base, its defaults) plain, with the original's embedding of k plugged in
(`transplant`), and with k's embedding vector optimised per noise (`embedding`: `--steps` Adam steps, white-box, no
norm bound) so that the image matches the base's image of k for the same noise (UMA's data-free objective). Cells: the
share of images the digits judge (`checkpoints/digits/judge`) assigns to k, with 95% Wilson intervals. Writes --json.
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
from sfd.core.config import preset
from sfd.core.erase import run_sfd
from sfd.core.models import checkpoints_dir
from sfd.evaluators.classifier import ConvJudge
from sfd.evaluators.sampling import load_model
from sfd.evaluators.stats import rate_summary
from sfd.evaluators.victim import ClassVictim


def judged_as(judge, images: torch.Tensor, k: int) -> list[bool]:
    with torch.no_grad():
        return (judge(images * 2 - 1).argmax(-1) == k).tolist()


def erased_model(k: int, teacher: str, base: str, work: Path) -> str:
    out = work / f"sfd-two-stage-{k}"
    if not (out / "sfd_config.json").is_file():
        run_sfd(teacher, str(out), preset("class", "erase"), forget=[str(k)], override="random", generator=base,
                progress=False, overwrite=True)
    return str(out)


def attack_class(k: int, teacher: str, base: str, work: Path, judge, a) -> dict:
    original = ClassVictim(load_model(teacher, "original"), "original")
    control = ClassVictim(load_model(base, "distilled"), "distilled")
    t0 = time.perf_counter()
    erased = ClassVictim(load_model(erased_model(k, teacher, base, work), "sfd-two-stage"), "sfd-two-stage")
    erase_s = time.perf_counter() - t0
    labels = torch.full((a.n,), k, dtype=torch.long)
    z = original.noise([10**6 * (k + 1) + i for i in range(a.n)])
    with torch.no_grad():
        plain = {v.label: v.render(v.encode(labels), z, full=True) for v in (original, control, erased)}
    budget = AttackBudget(steps=a.steps, lr=a.lr, seed=0)
    t1 = time.perf_counter()
    attacked = class_embedding_attack(erased, labels, z, budget, output_match_loss(plain["distilled"]))
    attack_s = time.perf_counter() - t1
    transplanted = transplant_attack(erased, original.surface.table, labels, z)
    rows = {f"{label} plain": rate_summary(judged_as(judge, im, k)) for label, im in plain.items()}
    rows["sfd-two-stage transplant"] = rate_summary(judged_as(judge, transplanted, k))
    rows["sfd-two-stage embedding"] = rate_summary(judged_as(judge, attacked, k))
    return {"class": k, "n": a.n, "rates": rows, "erase_seconds_or_reuse": erase_s, "attack_seconds": attack_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", default="1,4,7")
    ap.add_argument("--n", type=int, default=50, help="noises per class")
    ap.add_argument("--steps", type=int, default=20, help="Adam steps of the embedding attack")
    ap.add_argument("--lr", type=float, default=0.1, help="Adam's rate, in units of the class-embedding table's std")
    ap.add_argument("--keep", help="folder for the erased models (reused when present); default a temporary folder")
    ap.add_argument("--json", default="benchmarks/results/class_attack.json")
    a = ap.parse_args()
    teacher, base = str(checkpoints_dir() / "digits" / "teacher"), str(checkpoints_dir() / "digits" / "onestep")
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="sfd-class-attack-"))
    work.mkdir(parents=True, exist_ok=True)
    judge = ConvJudge.from_pretrained(checkpoints_dir() / "digits" / "judge")
    results = [attack_class(int(k), teacher, base, work, judge, a) for k in a.classes.split(",")]
    print("| class | " + " | ".join(results[0]["rates"]) + " |")
    print("|---" * (len(results[0]["rates"]) + 1) + "|")
    for r in results:
        cells = [f"{x['rate']:.0%} [{x['ci_low']:.0%}, {x['ci_high']:.0%}]" for x in r["rates"].values()]
        print(f"| {r['class']} | " + " | ".join(cells) + " |")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"settings": vars(a), "results": results, "torch_threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
