"""What the demo computes, without any UI: checked inputs, cached models, one image per model, concept scores.

- `ModelCache`: pipelines load on first use and stay cached (a dict keyed by the folder's absolute path, least
  recently used dropped beyond `max_models`), so switching back and forth is instant. Each cached pipeline has
  a lock: diffusers schedulers keep per-call state, so one pipeline must not sample for two requests at once.
- `check_request`: every user input checked, one clear message per problem (`SFDError`), before any work.
- `compare`: the same seed through both models, timed, then scored by the evaluators: CLIP detection of the
  erased concepts (named in the erased model's sfd_config.json), the CLIP score against the prompt, NudeNet
  when asked; for class-conditional models, the digits judge.

torch is imported on first use, not with this module: the page is served before the heavy libraries load.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from sfd.kernel.distributed import resolve_device
from sfd.kernel.errors import SFDError

from sfd.app.catalog import ModelEntry, describe_model, same_kind_message

if TYPE_CHECKING:  # torch is imported when the first model loads, so that the page is served sooner
    import torch

MAX_PROMPT_CHARS = 1000  # the one-step pipeline's own limit (sfd.pipelines.text_to_image.MAX_PROMPT_CHARS)
MAX_SEED = 2**32 - 1
MAX_STEPS = 100  # CPU-friendly; real SD teachers are sampled with 25-50
MAX_GUIDANCE = 30.0
MAX_CONCEPTS = 8
MAX_CONCEPT_CHARS = 100
DISPLAY_PX = 256  # small world images are enlarged (nearest neighbour) so that pixels stay visible


# ------------------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Request:
    """One Generate click, checked."""

    base: ModelEntry
    compare: ModelEntry
    prompt: str = ""  # text models
    negative_prompt: str = ""
    class_name: str = ""  # class models: the class picked
    class_index: int = -1
    seed: int = 0
    steps: int = 20  # multi-step models only
    guidance: float = 5.0  # multi-step models only
    nudenet: bool = False
    extra_concepts: tuple[str, ...] = ()

    @property
    def caption(self) -> str:
        return self.class_name if self.base.family.condition_from_list else self.prompt


def parse_seed(value) -> int:
    return parse_int(value, "seed", 0, MAX_SEED)


def parse_steps(value) -> int:
    return parse_int(value, "steps", 1, MAX_STEPS)


def parse_guidance(value) -> float:
    try:
        g = float(value)
    except (TypeError, ValueError):
        raise SFDError(f"guidance must be a number between 0 and {MAX_GUIDANCE:g}, got {value!r}") from None
    if not math.isfinite(g) or not 0 <= g <= MAX_GUIDANCE:
        raise SFDError(f"guidance must be a number between 0 and {MAX_GUIDANCE:g}, got {value!r}")
    return g


def parse_int(value, name: str, low: int, high: int) -> int:
    """A whole number in [low, high] from a UI or API value (int, integral float, digits); one-line SFDError otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SFDError(f"{name} is empty: give a whole number from {low} to {high}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise SFDError(f"{name} must be a whole number from {low} to {high}, got {value!r}") from None
    if not math.isfinite(f) or f != int(f) or not low <= int(f) <= high:
        raise SFDError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(f)


def check_prompt(text, what: str = "prompt", required: bool = True) -> str:
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise SFDError(f"the {what} must be text")
    if required and not text.strip():
        raise SFDError(f"the {what} is empty: type what to draw, e.g. 'a red circle'")
    if len(text) > MAX_PROMPT_CHARS:
        raise SFDError(f"the {what} has {len(text)} characters; at most {MAX_PROMPT_CHARS} are accepted")
    return text.strip()


def parse_concepts(text) -> tuple[str, ...]:
    """'a, b' -> ('a', 'b'): extra concepts to score besides the erased ones."""
    if not text or not str(text).strip():
        return ()
    items = tuple(dict.fromkeys(c.strip() for c in str(text).replace("\n", ",").split(",") if c.strip()))
    if len(items) > MAX_CONCEPTS:
        raise SFDError(f"at most {MAX_CONCEPTS} extra concepts, got {len(items)}")
    long = next((c for c in items if len(c) > MAX_CONCEPT_CHARS), None)
    if long:
        raise SFDError(f"concept {long[:40]!r}... is longer than {MAX_CONCEPT_CHARS} characters")
    return items


def check_models(base_path, compare_path) -> tuple[ModelEntry, ModelEntry]:
    if not base_path or not str(base_path).strip():
        raise SFDError("no base model chosen: pick one in 'Original model'")
    if not compare_path or not str(compare_path).strip():
        raise SFDError("no comparison model chosen: pick one in 'Erased model'")
    base, cmp = describe_model(base_path), describe_model(compare_path)
    msg = same_kind_message(base, cmp)
    if msg:
        raise SFDError(msg)
    return base, cmp


def check_request(base_path, compare_path, prompt, negative_prompt, class_name, seed, steps, guidance,
                  nudenet=False, extra_concepts="") -> Request:
    """All inputs of a Generate click -> Request; the first problem found -> SFDError (one line)."""
    base, cmp = check_models(base_path, compare_path)
    seed, steps, guidance = parse_seed(seed), parse_steps(steps), parse_guidance(guidance)
    extra = parse_concepts(extra_concepts)
    if base.family.condition_from_list:
        from sfd.core.concepts import resolve_class

        if class_name is None or not str(class_name).strip():
            raise SFDError("no class picked: choose the class to draw")
        names = base.class_names or tuple(str(i) for i in range(10))
        k = resolve_class(str(class_name), list(names))
        return Request(base, cmp, class_name=names[k], class_index=k, seed=seed, steps=steps, guidance=guidance,
                       nudenet=bool(nudenet), extra_concepts=extra)
    return Request(base, cmp, prompt=check_prompt(prompt), negative_prompt=check_prompt(negative_prompt, "negative prompt", False),
                   seed=seed, steps=steps, guidance=guidance, nudenet=bool(nudenet), extra_concepts=extra)


# ------------------------------------------------------------------------------------------- models

@dataclass
class CachedModel:
    entry: ModelEntry
    loaded: object  # sfd.evaluators.sampling.LoadedModel
    load_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelCache:
    """Pipelines by absolute folder path, loaded on first use; at most `max_models` kept (least recently used go)."""

    def __init__(self, device: str = "cpu", max_models: int = 4, threads: int | None = None):
        self._device = device
        self.threads = threads
        self.max_models = max(1, int(max_models))
        self._models: OrderedDict[str, CachedModel] = OrderedDict()
        self._guard = threading.Lock()  # protects the two dicts
        self._loading: dict[str, threading.Lock] = {}

    @property
    def device(self) -> str:
        if self._device == "auto":
            self._device = resolve_device("auto")
        return self._device

    @staticmethod
    def key(entry: ModelEntry) -> str:
        return str(Path(entry.path).resolve())

    def __contains__(self, entry: ModelEntry) -> bool:
        return self.key(entry) in self._models

    def get(self, entry: ModelEntry) -> tuple[CachedModel, bool]:
        """(the cached model, True if this call loaded it)."""
        key = self.key(entry)
        with self._guard:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key], False
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:  # one load per folder, even when several requests ask for it at once
            with self._guard:
                if key in self._models:
                    return self._models[key], False
            import torch

            from sfd.evaluators.sampling import load_model

            if self.threads:
                torch.set_num_threads(self.threads)
            t0 = time.perf_counter()
            loaded = load_model(entry.path, Path(entry.path).name, self.device)
            cached = CachedModel(entry, loaded, time.perf_counter() - t0)
            with self._guard:
                self._models[key] = cached
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return cached, True


def seeds_from(seed: int, n: int) -> list[int]:
    """n consecutive seeds from `seed`, wrapping past MAX_SEED (so seed MAX_SEED still gives n valid seeds)."""
    return [(seed + k) % (MAX_SEED + 1) for k in range(n)]


def sample(cached: CachedModel, req: Request, n: int = 1) -> tuple[torch.Tensor, float]:
    """n images (n, C, H, W) in [0, 1] from seeds req.seed, req.seed + 1, ... (one generator each, in one batch),
    quantised to 8 bits as a PNG stores them, and the sampling seconds."""
    import torch

    m = cached.loaded
    gens = [torch.Generator().manual_seed(s) for s in seeds_from(req.seed, n)]  # CPU noise: the same image on any device
    with cached.lock:
        t0 = time.perf_counter()
        images = m.family.sample(m.pipe, [req.caption] * n, gens, steps=req.steps, guidance=req.guidance,
                                 negative_prompt=req.negative_prompt or None)
        seconds = time.perf_counter() - t0
    images = images.float().cpu().clamp(0, 1)
    return (images * 255).round() / 255, seconds


def to_display(image: torch.Tensor, px: int = DISPLAY_PX):
    """(1, C, H, W) [0, 1] -> PIL image, enlarged with nearest neighbour when smaller than px."""
    import torch
    from PIL import Image

    arr = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0], "L") if arr.shape[-1] == 1 else Image.fromarray(arr, "RGB")
    if max(img.size) < px:
        f = max(1, px // max(img.size))
        img = img.resize((img.size[0] * f, img.size[1] * f), Image.NEAREST)
    return img


# ------------------------------------------------------------------------------------------- scores

class Scorers:
    """Detectors from evaluators/, built once and shared: CLIP per concept, NudeNet, the classifier judge."""

    def __init__(self, device: str = "cpu", clip_path: str | None = None, judge_path: str | None = None):
        self._device = device
        self.clip_path = clip_path
        self.judge_path = judge_path
        self._factory = None
        self._detectors: dict[tuple, object] = {}
        self._lock = threading.RLock()

    @property
    def device(self) -> str:
        if self._device == "auto":
            self._device = resolve_device("auto")
        return self._device

    @property
    def factory(self):
        if self._factory is None:
            from sfd.evaluators.detectors import DetectorFactory

            self._factory = DetectorFactory(self.device)
        return self._factory

    def _cached(self, key: tuple, build):
        with self._lock:
            if key not in self._detectors:
                self._detectors[key] = build()
            return self._detectors[key]

    def clip(self):
        """(ClipEvaluator, description); SFDError when the CLIP folder is missing."""
        with self._lock:
            return self.factory.clip(self.clip_path)

    def clip_detector(self, concept: str):
        from sfd.evaluators.detectors import ClipDetector

        clip, desc = self.clip()
        return self._cached(("clip", concept), lambda: ClipDetector(clip, desc, concept))

    def nudenet(self):
        from sfd.evaluators.nudenet import NudeNetDetector

        return self._cached(("nudenet",), NudeNetDetector.from_options)

    def judge(self, classes: Sequence[str]):
        from sfd.evaluators.detectors import ClassifierDetector

        path = self.judge_path
        if not path:
            raise SFDError("no classifier judge: start the demo with --judge PATH (e.g. checkpoints/digits/judge)")
        return self._cached(("judge", tuple(classes)), lambda: ClassifierDetector(path, list(classes), device=self.device))


def _concepts(req: Request) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*req.compare.forget, *req.base.forget, *req.extra_concepts]))


def score_pair(scorers: Scorers, req: Request, images: dict[str, torch.Tensor]) -> tuple[list[dict], list[str]]:
    """Rows {"name", "what", "results": {side: detector dict}} for both images, and notes (what could not be scored)."""
    rows, notes = [], []
    sides = list(images)
    if req.base.family.metrics == "judge":
        if req.nudenet:
            notes.append("NudeNet applies to text-to-image models; class models are scored by the judge")
        forget = [c for c in _concepts(req)] or [req.class_name]
        try:
            det = scorers.judge(forget)
        except SFDError as e:
            return rows, [*notes, f"judge scores are off: {e}"]
        res = {s: det.score(images[s], [req.caption])[0] for s in sides}
        erased = ", ".join(det.class_names[k] for k in det.classes)
        rows.append({"name": "judge: predicted class", "what": "the class the judge sees", "kind": "label", "results": res})
        rows.append({"name": f"judge: erased class ({erased})" if req.compare.forget else f"judge: class {erased}",
                     "what": f"probability of {erased}; flagged when the judge predicts it", "kind": "flag", "results": res,
                     "detector": det.name})
        return rows, notes
    concepts = _concepts(req)
    try:
        clip, _ = scorers.clip()
    except SFDError as e:
        clip = None
        notes.append(f"CLIP scores are off: {e}")
    if clip is not None:
        for concept in concepts:
            try:
                det = scorers.clip_detector(concept)
            except SFDError as e:
                notes.append(str(e))
                continue
            res = {s: det.score(images[s], [req.prompt])[0] for s in sides}
            vs = ", ".join(det.contrasts[:4]) + (", ..." if len(det.contrasts) > 4 else "")
            rows.append({"name": f"CLIP: {concept}", "what": f"probability of {concept!r} against {vs}; flagged when it wins",
                         "kind": "flag", "results": res, "detector": det.name})
        cs = {s: {"score": float(clip.clip_score(images[s], [req.prompt])[0])} for s in sides}
        rows.append({"name": "CLIP score", "what": "100 x cosine(image, prompt) (this CLIP's scale)", "kind": "value", "results": cs})
        if not concepts:
            notes.append("no erased concept to detect: the comparison model has no sfd_config.json; type concepts to score")
    if req.nudenet:
        try:
            det = scorers.nudenet()
            res = {s: det.score(images[s], [req.prompt])[0] for s in sides}
            rows.append({"name": f"NudeNet ({det.name})", "what": "highest EXPOSED-class box score; flagged at or above the threshold",
                         "kind": "flag", "results": res, "detector": det.name})
        except SFDError as e:
            notes.append(str(e))
    return rows, notes


# ------------------------------------------------------------------------------------------- one click

@dataclass
class Side:
    entry: ModelEntry
    image: torch.Tensor
    seconds: float
    load_seconds: float | None  # set when this request loaded the model


def compare(cache: ModelCache, scorers: Scorers, req: Request) -> dict:
    """Sample both models with the request's seed, time them, score both images; a JSON-able result plus tensors."""
    sides: dict[str, Side] = {}
    for name, entry in (("base", req.base), ("compare", req.compare)):
        cached, loaded_now = cache.get(entry)
        image, seconds = sample(cached, req)
        sides[name] = Side(entry, image, seconds, cached.load_seconds if loaded_now else None)
    t0 = time.perf_counter()
    rows, notes = score_pair(scorers, req, {k: s.image for k, s in sides.items()})
    score_seconds = time.perf_counter() - t0
    return {
        "sides": sides, "rows": rows, "notes": notes,
        # JSON for the page and API clients; no "path" keys (gradio_client takes such dicts for files to download)
        "summary": {
            "seed": req.seed, "input": req.caption, "negative_prompt": req.negative_prompt or None,
            "models": {k: {"folder": s.entry.path, "pipeline": s.entry.pipeline, "one_step": s.entry.one_step,
                           "steps": 1 if s.entry.one_step else req.steps, "guidance": None if s.entry.one_step else req.guidance,
                           "erased": list(s.entry.forget), "seconds": round(s.seconds, 4),
                           "load_seconds": None if s.load_seconds is None else round(s.load_seconds, 3)}
                       for k, s in sides.items()},
            "scores": {r["name"]: {k: _jsonable(v) for k, v in r["results"].items()} for r in rows},
            "score_seconds": round(score_seconds, 4), "notes": notes,
        },
    }


def seed_gallery(cache: ModelCache, req: Request, n: int) -> dict[str, list]:
    """{"base": [...], "compare": [...]}: n seeds from req.seed through each model with the same sampler as
    `compare`, as (display image, "seed N") pairs for a gallery: several seeds show an erasure at a glance."""
    out = {}
    for name, entry in (("base", req.base), ("compare", req.compare)):
        cached, _ = cache.get(entry)
        images, _ = sample(cached, req, n)
        out[name] = [(to_display(images[k:k + 1]), f"seed {s}") for k, s in enumerate(seeds_from(req.seed, n))]
    return out


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, float):
            out[k] = None if not math.isfinite(v) else round(v, 5)
        elif isinstance(v, (str, int, bool)) or v is None:
            out[k] = v
        else:
            out[k] = str(v) if not isinstance(v, (list, dict)) else v
    return out
