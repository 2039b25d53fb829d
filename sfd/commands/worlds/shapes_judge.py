"""Held-out judges of the shapes world: two small CNNs (colour, shape) trained on procedural renders.

Attacks on the shapes world optimise against its CLIP, so success must be judged by something else, or an
adversarial example against CLIP would count as the concept (DESIGN.md section 5; P4D optimises CLIP and judges
with NudeNet). These judges share nothing with CLIP: another architecture (`sfd.evaluators.classifier.ConvJudge`),
trained from its own seed on images only, with no text. They are bundled as `checkpoints/shapes/judge-colour` and
`checkpoints/shapes/judge-shape` (ConvJudge folders), so `classifier:checkpoints/shapes/judge-colour=red` is a
detector spec like any other.

Generated images are decoded by the world's VAE, a little softer than renders, so training images are augmented
with blur, pixel noise and brightness jitter.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sfd.core.worlds import shapes

ATTRIBUTES = {"colour": shapes.COLOURS, "shape": shapes.SHAPES}
FOLDERS = {"colour": "judge-colour", "shape": "judge-shape"}


@dataclass(frozen=True)
class ShapesJudgeConfig:
    steps: int = 600
    batch_size: int = 128
    lr: float = 3e-3
    width: int = 16
    feature_dim: int = 64
    heldout_n: int = 2000  # fresh renders (another seed) the accuracy is measured on
    seed: int = 1  # the world's CLIP and teacher use seed 0


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 3x3 blur (a share of the batch), brightness jitter and pixel noise; images in [-1, 1]."""
    n = len(x)
    blur = torch.rand(n, 1, 1, 1, generator=gen) < 0.5
    strength = 0.6 * torch.rand(n, 1, 1, 1, generator=gen)
    soft = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where(blur, x * (1 - strength) + soft * strength, x)
    x = x + 0.1 * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
    x = x + 0.06 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x.clamp(-1, 1)


def train_judge(attribute: str, cfg: ShapesJudgeConfig = ShapesJudgeConfig(), progress: bool = True):
    """One judge (`attribute` "colour" or "shape"); returns it and its training record, held-out accuracy included."""
    from sfd.evaluators.classifier import ConvJudge, JudgeConfig  # the judge's architecture sits a layer up

    names = ATTRIBUTES[attribute]
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    judge = ConvJudge(JudgeConfig(in_channels=3, image_size=shapes.IMAGE_SIZE, num_classes=len(names), width=cfg.width,
                                  feature_dim=cfg.feature_dim, class_names=tuple(names)))
    opt = torch.optim.AdamW(judge.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    t0 = time.perf_counter()
    judge.train()
    for _ in tqdm(range(cfg.steps), desc=f"{attribute} judge", disable=not progress):
        batch = shapes.render(cfg.batch_size, gen)
        labels = batch.colour_ids if attribute == "colour" else batch.shape_ids
        loss = F.cross_entropy(judge(_augment(batch.images, gen)), labels, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    judge.eval()
    return judge, {"attribute": attribute, "train_seconds": time.perf_counter() - t0,
                   "heldout": heldout_accuracy(judge, attribute, cfg.heldout_n, cfg.seed + 1000), **asdict(cfg)}


@torch.no_grad()
def heldout_accuracy(judge, attribute: str, n: int = 2000, seed: int = 1001) -> dict:
    """Accuracy on fresh renders (clean, and augmented as generated images look), overall and per class."""
    gen = torch.Generator().manual_seed(seed)
    batch = shapes.render(n, gen)
    labels = batch.colour_ids if attribute == "colour" else batch.shape_ids
    out = {}
    for name, x in (("clean", batch.images), ("augmented", _augment(batch.images, gen))):
        pred = judge(x).argmax(1)
        per = {c: float((pred[labels == k] == k).float().mean()) for k, c in enumerate(ATTRIBUTES[attribute])}
        out[name] = {"accuracy": float((pred == labels).float().mean()), "per_class": per}
    return {"n": n, "seed": seed, **out}


def train_judges(out: str | Path, cfg: ShapesJudgeConfig = ShapesJudgeConfig(), progress: bool = True) -> dict:
    """Both judges into out/judge-colour and out/judge-shape (fp16 weights; they load as float32)."""
    import json

    out = Path(out)
    stats = {}
    for attribute in ATTRIBUTES:
        judge, record = train_judge(attribute, cfg, progress)
        folder = out / FOLDERS[attribute]
        judge.half().save_pretrained(folder)
        (folder / "training.json").write_text(json.dumps(record, indent=2))
        stats[attribute] = record
    return stats


def judge_spec(concept: str, root: str | Path | None = None) -> str | None:
    """The held-out detector spec of a shapes-world colour or shape ("classifier:.../judge-colour=red"), else None."""
    from sfd.core.models import checkpoints_dir

    c = concept.strip().lower()
    attribute = next((a for a, names in ATTRIBUTES.items() if c in names), None)
    if attribute is None:
        return None
    folder = Path(root) if root is not None else checkpoints_dir() / "shapes"
    return f"classifier:{folder / FOLDERS[attribute]}={c}"


def main(argv=None) -> int:
    """python -m sfd.commands.worlds.shapes_judge --out checkpoints/shapes: reproduce the bundled judges (about 3 minutes)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--out", required=True, help="world folder to write judge-colour/ and judge-shape/ into")
    ap.add_argument("--seed", type=int, default=ShapesJudgeConfig.seed)
    a = ap.parse_args(argv)
    stats = train_judges(a.out, ShapesJudgeConfig(seed=a.seed))
    for attribute, r in stats.items():
        print(f"{attribute} judge: {r['train_seconds']:.0f} s, held-out accuracy {r['heldout']['clean']['accuracy']:.1%} "
              f"(augmented {r['heldout']['augmented']['accuracy']:.1%}) on {r['heldout']['n']} fresh renders")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
