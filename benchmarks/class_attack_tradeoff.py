"""The digits class attack's trade-off as a picture: ASR under the class-embedding attack against retained FD over the
teacher's, for every measured robust setting (benchmarks/results/class_attack_sweep/), the robust preset and plain SFD
two-stage (class_attack_robust.json, class_attack_heldout.json), with the issue's target region.

  python benchmarks/class_attack_tradeoff.py          # -> benchmarks/results/class_attack_tradeoff.png

Reads the JSONs class_attack_bench.py writes; trains nothing. Needs matplotlib (`pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path("benchmarks/results")


def points(path: Path, row: str, robust_only: bool = False) -> list[tuple[int, float, float]]:
    """(class, ASR %, FD ratio) of `row` in one class_attack_bench.py JSON (`robust_only`: skip its runs with robust
    SFD set off, the sweep's no-forgetting controls)."""
    out = []
    for r in json.loads(path.read_text())["results"]:
        if row in r["rows"] and (r["rows"][row].get("robust") or not robust_only):
            out.append((r["class"], 100 * r["rates"][f"{row} embedding"]["rate"], r["rows"][row]["fd_ratio"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--png", default=str(RESULTS / "class_attack_tradeoff.png"))
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finals = [RESULTS / "class_attack_robust.json", RESULTS / "class_attack_heldout.json"]
    tried = sorted((RESULTS / "class_attack_sweep").glob("*.json")) + sorted((RESULTS / "class_attack_sweep7").glob("*.json"))
    sweep = [p for f in tried for p in points(f, "sfd-robust", robust_only=True)]
    plain = [p for f in finals for p in points(f, "sfd-two-stage")]
    robust = [p for f in finals for p in points(f, "sfd-robust")]
    classes = sorted({k for k, _, _ in sweep + plain + robust})
    colour = {k: plt.cm.tab10(i) for i, k in enumerate(classes)}
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.fill_between([0, 10], 0, 1.5, color="green", alpha=0.08, label="target: ASR <= 10%, FD <= 1.5x")
    for label, pts, marker, size in (("robust settings tried", sweep, "o", 25), ("plain SFD two-stage", plain, "x", 60),
                                     ("robust preset", robust, "*", 160)):
        for k, asr, fd in pts:
            ax.scatter(asr, min(fd, 3.3), marker=marker, s=size, color=colour[k], alpha=0.55 if marker == "o" else 1.0)
        ax.scatter([], [], marker=marker, s=size, color="grey", label=label)
    for k in classes:
        ax.scatter([], [], color=colour[k], marker="s", label=f"class {k}")
    ax.set_xlabel("erased class judged present under the class-embedding attack, % of 50 noises")
    ax.set_ylabel("retained FD / teacher's (clipped at 3.3)")
    ax.set_xlim(-2, 102)
    ax.set_ylim(0.9, 3.4)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Digits: robust SFD buys ASR with retained FD; no setting lands in the target on every class", fontsize=9)
    fig.tight_layout()
    Path(a.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.png, dpi=110)
    print(f"written {a.png}: {len(sweep)} sweep points, {len(plain)} plain, {len(robust)} preset")


if __name__ == "__main__":
    main()
