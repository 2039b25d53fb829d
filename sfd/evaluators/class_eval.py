"""Judge a class-conditional model (teacher or one-step): per-class accuracy and Frechet distance.

Definitions (recorded with every result):
- accuracy of class k = share of samples generated for class k that the judge assigns to class k;
- forget accuracy = that share averaged over the forgotten classes (lower is better);
- retained mean / min = mean and minimum of the per-class accuracies over retained classes;
- FD = Frechet distance, in judge features, between samples of the retained classes and the real
  images of those classes (equal numbers of samples per class).
Sample i of class k uses its own seed `seed * 1_000_000 + k * 10_000 + i`, so two models evaluated with
the same seed see the same noise for the same (class, i).
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from sfd.evaluators.classifier import ConvJudge, judge_images
from sfd.evaluators.fid import frechet_distance


def sample_seeds(seed: int, k: int, n: int) -> list[int]:
    return [seed * 1_000_000 + k * 10_000 + i for i in range(n)]


@torch.no_grad()
def sample_classes(pipe, classes, n_per_class: int, seed: int, batch_size: int = 250, progress: bool = True, **call_kwargs):
    """Generate n_per_class images per class with per-sample seeds; returns (images in [-1, 1], labels, seconds)."""
    labels, seeds = [], []
    for k in classes:
        labels += [k] * n_per_class
        seeds += sample_seeds(seed, k, n_per_class)
    out = []
    t0 = time.perf_counter()
    for i in tqdm(range(0, len(labels), batch_size), desc="sampling", disable=not progress):
        gens = [torch.Generator(device=pipe.device).manual_seed(s) for s in seeds[i : i + batch_size]]
        imgs = pipe(labels[i : i + batch_size], generator=gens, output_type="pt", show_progress=False, **call_kwargs).images
        out.append(imgs * 2 - 1)
    return torch.cat(out).cpu(), torch.tensor(labels), time.perf_counter() - t0


def evaluate_classes(
    pipe,
    judge: ConvJudge,
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    n_per_class: int = 100,
    seed: int = 0,
    forget: tuple[int, ...] = (),
    progress: bool = True,
    **call_kwargs,
) -> dict:
    num_classes = len(judge.config.class_names)
    images, labels, seconds = sample_classes(pipe, range(num_classes), n_per_class, seed, progress=progress, **call_kwargs)
    result = score_samples(judge, images, labels, real_images, real_labels, forget)
    result.update(n_per_class=n_per_class, seed=seed, sampling_seconds=seconds)
    return result


@torch.no_grad()
def score_samples(judge: ConvJudge, images, labels, real_images, real_labels, forget: tuple[int, ...] = ()) -> dict:
    """Per-class accuracy, retained mean/min and retained FD of generated (images, labels); a sample set can
    be scored for several forget sets without sampling again."""
    num_classes = len(judge.config.class_names)
    preds, feats = judge_images(judge, images)
    _, real_feats = judge_images(judge, real_images)
    acc = [(preds[labels == k] == k).float().mean().item() for k in range(num_classes)]
    retained = [k for k in range(num_classes) if k not in forget]
    keep = torch.isin(labels, torch.tensor(retained))
    keep_real = torch.isin(real_labels, torch.tensor(retained))
    result = {
        "per_class_accuracy": {judge.config.class_names[k]: acc[k] for k in range(num_classes)},
        "retained_mean_accuracy": sum(acc[k] for k in retained) / len(retained),
        "retained_min_accuracy": min(acc[k] for k in retained),
        "fd_retained": frechet_distance(feats[keep].numpy(), real_feats[keep_real].numpy()),
    }
    if forget:
        result["forget_accuracy"] = sum(acc[k] for k in forget) / len(forget)
        result["forget_classes"] = [judge.config.class_names[k] for k in forget]
    return result


def format_class_table(results: dict[str, dict], class_names, forget=()) -> str:
    """Per-class accuracy of one or more models as a text table; forgotten classes are marked with '*'."""
    cols = list(results)
    w = max(12, *(len(c) + 2 for c in cols))
    lines = ["class".ljust(14) + "".join(c.rjust(w) for c in cols)]
    for k, name in enumerate(class_names):
        mark = "*" if k in forget else " "
        lines.append(f"{mark}{name}".ljust(14) + "".join(f"{results[c]['per_class_accuracy'][name]:>{w}.1%}" for c in cols))
    rows = [("retained mean", "retained_mean_accuracy", "{:.1%}"), ("retained min", "retained_min_accuracy", "{:.1%}"),
            ("FD retained", "fd_retained", "{:.3f}"), ("sampling s", "sampling_seconds", "{:.1f}")]
    if forget:
        rows.insert(0, ("forget acc", "forget_accuracy", "{:.1%}"))
    for label, key, fmt in rows:
        lines.append(label.ljust(14) + "".join(fmt.format(results[c].get(key, float("nan"))).rjust(w) for c in cols))
    if forget:
        lines.append("* = erased class; accuracy = share of samples for a class that the judge assigns to it")
    return "\n".join(lines)
