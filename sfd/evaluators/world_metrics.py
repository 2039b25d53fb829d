"""Which world metrics apply to a model, as the `evaluate(pipe, concepts)` callable that `sfd.core.erase.run_sfd` takes.

The family says what kind of metrics it has (`ModelFamily.metrics`: "judge" for class judges, "clip" for CLIP
concept detection); the model's world (sfd_world.json) says whether a judge or prompt grid exists for it.
"""

from __future__ import annotations

from pathlib import Path

CLASS_METRIC_NOTES = (
    "Judge: the world's classifier; accuracy of class k = share of samples generated for k that the judge assigns to k; "
    "FD = Frechet distance in judge features between retained-class samples and real images of those classes."
)
TEXT_METRIC_NOTES = (
    "Judge: CLIP zero-shot detection of each concept against its contrast concepts; rates are shares of images "
    "generated from the prompts named; CLIP score = 100 * cosine(image, prompt), clamped at 0."
)


def default_judge(meta: dict) -> Path | None:
    """The judge bundled with a world (checkpoints/<world>/judge), if present."""
    from sfd.core.models import checkpoints_dir

    world = meta.get("world")
    p = checkpoints_dir() / world / "judge" if world else None
    return p if p is not None and p.is_dir() else None


def evaluate_digits_model(pipe, forget: tuple[int, ...], judge_path: Path, n_per_class: int, seed: int, progress: bool,
                          **call_kwargs) -> dict:
    from sfd.core.worlds.digits import load_digits_tensors

    from sfd.evaluators.class_eval import evaluate_classes
    from sfd.evaluators.classifier import ConvJudge

    judge = ConvJudge.from_pretrained(judge_path)
    x, y = load_digits_tensors()
    return evaluate_classes(pipe, judge, x, y, n_per_class=n_per_class, seed=seed, forget=forget, progress=progress, **call_kwargs)


def shapes_metrics(teacher_path: str, erased, concepts, seed: int, device: str, progress: bool, teacher_cache: dict | None = None) -> dict:
    """The erased model's shapes-world metrics beside the teacher's (same prompts and seeds); `teacher_cache` keeps
    the teacher's metrics between calls (a benchmark erasing several concepts samples the teacher once per concept)."""
    from sfd.core.families import family_of_pipeline, load_model
    from sfd.core.models import world_meta

    from sfd.evaluators.shapes_eval import compare_to_teacher, erasure_metrics

    key = (str(teacher_path), tuple(concepts), seed)
    if teacher_cache is None or key not in teacher_cache:
        family, teacher = load_model(teacher_path, device)
        steps, guidance = family.sampler_defaults(teacher, world_meta(teacher_path))
        kw = {k: v for k, v in (("num_inference_steps", steps), ("guidance_scale", guidance)) if v is not None}
        kw.update(family.sampler_kwargs(teacher))
        before = erasure_metrics(teacher, concepts, seed=seed, progress=progress, **kw)
        if teacher_cache is not None:
            teacher_cache[key] = before
    before = teacher_cache[key] if teacher_cache is not None else before
    e_family = family_of_pipeline(type(erased).__name__)  # a multi-step erased teacher (ESD, UCE) samples as its world says
    e_steps, e_guidance = e_family.sampler_defaults(erased, world_meta(teacher_path))
    e_kw = {k: v for k, v in (("num_inference_steps", e_steps), ("guidance_scale", e_guidance)) if v is not None}
    e_kw.update(e_family.sampler_kwargs(erased))
    after = erasure_metrics(erased, concepts, seed=seed, progress=progress, **e_kw)
    return {**{k: v for k, v in after.items() if isinstance(v, float)}, **compare_to_teacher(after, before),
            "teacher": {k: v for k, v in before.items() if isinstance(v, float)}}


class _Evaluator:
    def __init__(self, fn, notes: str):
        self.fn, self.notes = fn, notes

    def __call__(self, pipe, concepts: dict):
        return self.fn(pipe, concepts)


def world_evaluator(family, model: str, seed: int = 0, device: str = "cpu", progress: bool = True, n_per_class: int = 100):
    """The metrics of `model`'s world for an erased or distilled one-step model of it, or None when it has none."""
    from sfd.core.models import world_meta

    meta = world_meta(model) if Path(model).is_dir() else {}
    if family.metrics == "judge":
        judge = default_judge(meta)
        if judge is None or n_per_class <= 0:
            return None
        return _Evaluator(lambda pipe, c: evaluate_digits_model(pipe, tuple(c.get("forget_ids", ())), judge, n_per_class, seed, progress),
                          CLASS_METRIC_NOTES)
    if family.metrics == "clip" and meta.get("world") == "shapes":
        cache: dict = {}
        return _Evaluator(lambda pipe, c: shapes_metrics(model, pipe, list(c.get("forget", ())), seed, device, progress, cache),
                          TEXT_METRIC_NOTES)
    return None
