"""Erasure metrics on the shapes world, judged by its CLIP (DESIGN.md section 5, adapted to the world).

For forgotten concept(s) (colours and/or shapes) and a model (teacher or one-step):
- forget rate: on prompts naming a forgotten concept, share of images in which CLIP's zero-shot vote
  among that attribute's values (all colours, or all shapes) picks the forgotten concept (lower is better);
- retained colour / shape rate: on prompts naming only retained concepts, share of images whose colour
  (and, separately, shape) vote matches the prompt;
- retained CLIP score: mean 100 * cos(image, prompt) over the retained prompts.
Prompts are all world captions (every template, colour and shape); image k of prompt p has seed
`seed * 1_000_000 + p * 1000 + k`, so the teacher and an erased model see the same noise.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from sfd.core.prompts import mentions


def _attribute(concept: str) -> str:
    from sfd.core.worlds import shapes

    c = concept.strip().lower()
    if c in shapes.COLOURS:
        return "colour"
    if c in shapes.SHAPES:
        return "shape"
    raise ValueError(f"{concept!r} is not a colour or shape of the shapes world")


def _captions():
    from sfd.core.worlds import shapes

    return [(c, s, shapes.caption(c, s, t)) for t in range(len(shapes.TEMPLATES))
            for c in range(len(shapes.COLOURS)) for s in range(len(shapes.SHAPES))]


@torch.no_grad()
def generate_and_judge(pipe, clip, prompts: list[tuple[int, int, str]], n_per_prompt: int, seed: int, batch_size: int = 128,
                       progress: bool = False, **call_kwargs) -> dict:
    """Generate n_per_prompt images per prompt; return CLIP colour/shape votes and CLIP scores per image."""
    from sfd.core.worlds import shapes

    jobs = [(p, k) for p in range(len(prompts)) for k in range(n_per_prompt)]
    colour, shape, score = [], [], []
    t0 = time.perf_counter()
    for i in tqdm(range(0, len(jobs), batch_size), desc="shapes eval", disable=not progress):
        chunk = jobs[i : i + batch_size]
        gens = [torch.Generator().manual_seed(seed * 1_000_000 + p * 1000 + k) for p, k in chunk]
        text = [prompts[p][2] for p, _ in chunk]
        images = pipe(text, generator=gens, height=shapes.IMAGE_SIZE, width=shapes.IMAGE_SIZE, output_type="pt", **call_kwargs).images
        colour.append(clip.zero_shot(images, shapes.COLOURS, (shapes.COLOUR_PROMPT,)).pred)
        shape.append(clip.zero_shot(images, shapes.SHAPES, (shapes.SHAPE_PROMPT,)).pred)
        score.append(clip.clip_score(images, text))
    idx = torch.tensor([p for p, _ in jobs])
    return {
        "prompt_index": idx,
        "colour_true": torch.tensor([prompts[p][0] for p, _ in jobs]),
        "shape_true": torch.tensor([prompts[p][1] for p, _ in jobs]),
        "colour_pred": torch.cat(colour),
        "shape_pred": torch.cat(shape),
        "clip_score": torch.cat(score).float(),
        "seconds": time.perf_counter() - t0,
    }


def erasure_metrics(pipe, concepts, clip=None, n_per_prompt: int = 4, seed: int = 0, progress: bool = False, **call_kwargs) -> dict:
    """Forget rate, retained colour/shape rates and retained CLIP score of `pipe` for forgotten `concepts`."""
    from sfd.evaluators.clip import ClipEvaluator
    from sfd.core.worlds import shapes

    concepts = [c.strip().lower() for c in concepts]
    clip = clip or ClipEvaluator.from_pretrained()
    caps = _captions()
    forget_prompts = [c for c in caps if any(mentions(c[2], k) for k in concepts)]
    retain_prompts = [c for c in caps if not any(mentions(c[2], k) for k in concepts)]
    out = {"n_per_prompt": n_per_prompt, "seed": seed, "forget_prompts": len(forget_prompts), "retain_prompts": len(retain_prompts)}

    seconds = 0.0
    if forget_prompts:  # none when nothing was erased (a stage-1 distillation): retained metrics only
        f = generate_and_judge(pipe, clip, forget_prompts, n_per_prompt, seed, progress=progress, **call_kwargs)
        hit = torch.zeros(len(f["prompt_index"]), dtype=torch.bool)
        for k in concepts:
            if _attribute(k) == "colour":
                hit |= f["colour_pred"] == shapes.COLOURS.index(k)
            else:
                hit |= f["shape_pred"] == shapes.SHAPES.index(k)
        out["forget_rate"] = float(hit.float().mean())
        seconds = f["seconds"]

    r = generate_and_judge(pipe, clip, retain_prompts, n_per_prompt, seed + 1, progress=progress, **call_kwargs)
    out["retained_colour_rate"] = float((r["colour_pred"] == r["colour_true"]).float().mean())
    out["retained_shape_rate"] = float((r["shape_pred"] == r["shape_true"]).float().mean())
    out["retained_clip_score"] = float(r["clip_score"].mean())
    out["seconds"] = seconds + r["seconds"]
    return out


def compare_to_teacher(erased: dict, teacher: dict) -> dict:
    """Ratios erased / teacher of the retained metrics (the issue's >= 0.9 targets)."""
    return {k + "_ratio": erased[k] / teacher[k] if teacher[k] else float("nan")
            for k in ("retained_colour_rate", "retained_shape_rate", "retained_clip_score")}
