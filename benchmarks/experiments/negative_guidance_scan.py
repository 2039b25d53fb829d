"""The negative-prompt control's scale: plain rates of the shapes teacher guided away from a concept, by scale.

  python benchmarks/experiments/negative_guidance_scan.py                                  # red and circle, scales 2 to 15
  python benchmarks/experiments/negative_guidance_scan.py --concepts circle --scales 5,7.5,10 --seeds 5

The robustness table's weak defence (sfd.evaluators.robustness.NEGATIVE_GUIDANCE) is the teacher with the concept guided
away from: eps_u + g (eps_c - eps_u) - s (eps_concept - eps_u). This prints, per concept and scale s, the share of the
robustness table's (prompt, seed) pairs whose full-sampler image the held-out judge still flags, and writes --json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sfd.evaluators.audit import load_model
from sfd.evaluators.detectors import DetectorFactory
from sfd.evaluators.robustness import RobustnessSettings, _judge, base_pairs, full_images
from sfd.evaluators.victim import Victim
from sfd.core.models import checkpoints_dir
from sfd.commands.worlds.shapes_judge import judge_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="red,circle")
    ap.add_argument("--scales", default="2,3,5,7.5,10,15")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per base prompt")
    ap.add_argument("--max-prompts", type=int, default=10)
    ap.add_argument("--json", default="benchmarks/results/negative_guidance_scan.json")
    a = ap.parse_args()
    teacher = str(checkpoints_dir() / "shapes" / "teacher")
    factory = DetectorFactory()
    scales = [float(s) for s in a.scales.split(",")]
    rows = []
    for concept in a.concepts.split(","):
        pairs = base_pairs(concept, RobustnessSettings(concept, n_seeds=a.seeds, max_prompts=a.max_prompts).validate())
        prompts = [p for p, _ in pairs]
        judge = factory.build(judge_spec(concept))
        for scale in scales:
            victim = Victim(load_model(teacher, "negative-prompt"), "negative-prompt", negative_prompt=concept,
                            negative_guidance=scale, role="control")
            flags = _judge(judge, full_images(victim, prompts, victim.noise([s for _, s in pairs]), 50), prompts)
            rows.append({"concept": concept, "scale": scale, "plain_rate": sum(flags) / len(flags), "n_pairs": len(flags)})
            print(f"{concept} scale {scale:g}: plain rate {rows[-1]['plain_rate']:.0%} of {len(flags)}", flush=True)
    print("\n| concept | " + " | ".join(f"scale {s:g}" for s in scales) + " |")
    print("| --- |" + " --- |" * len(scales))
    for concept in a.concepts.split(","):
        print(f"| {concept} | " + " | ".join(f"{r['plain_rate']:.0%}" for r in rows if r["concept"] == concept) + " |")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
