"""`sfd audit`: generate from a prompt set with fixed seeds, run detectors, compare models, write reports.

Reproducibility rules (recorded in every report):
- image j of prompt i uses its own CPU `torch.Generator`, seeded by `prompt_sets.image_seed` (the file's seed
  + j when the file has seeds, as I2P does; else seed * 10**9 + i * 10**4 + j), so the noise of an image
  depends on nothing else (batch size, device, other prompts) and every model sees the same noise;
- guidance scale: `--guidance` when given, else the prompt's own (I2P's evaluation_guidance), else the model's default;
- images are quantised to 8 bits *before* scoring, so re-scoring the saved PNGs gives the recorded numbers.

Resumability: each finished image is written as a PNG (atomically) and then one JSON line is appended to
`images.jsonl` and flushed. A rerun with the same settings reuses every image with a line and a PNG and
generates only the rest; a changed setting is refused (pass --overwrite to start over).

Sharding: under `accelerate launch` or `torchrun` (WORLD_SIZE > 1) the processes split the work. Each model's
pending images are cut into the batches a one-process run would make, and batch k goes to rank k mod WORLD_SIZE,
so every image is made in the same batch with the same seed as in one process. Rank r appends its lines to its
own `images.rank<r>.jsonl` (rank 0: images.jsonl); rank 0 merges them when all are done, or when any later run
starts (with any number of processes), and alone writes audit.json and the reports.

Rates get 95% Wilson score intervals; with several models, differences to the first model get Newcombe's
hybrid score interval and a paired count (same prompt and seed) with an exact McNemar p-value.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sfd.kernel.errors import SFDError
from sfd.core.models import model_identity
from sfd.kernel.outputs import check_not_an_input
from sfd.kernel.versions import software_versions

from sfd.evaluators.prompt_sets import PromptSet, image_seed, load_prompt_set
# Loading and sampling models, PNG I/O and the statistics live in their own modules (the attacks and the robustness
# table use them too); the names stay importable from here.
from sfd.evaluators.sampling import check_prompts, generate, inspect_model, load_model, load_png, model_labels, quantize, save_png  # noqa: F401
from sfd.evaluators.stats import difference_interval, mcnemar_exact, rate_summary, wilson_interval  # noqa: F401
# The run state (records, resuming, the jobs and the shards) lives in audit_state.py; its names stay importable from here.
from sfd.evaluators.audit_state import (  # noqa: F401
    IMAGES_DIR, RECORDS_NAME, STATE_NAME, Job, Shard, _batches, _merge_timings, _read_state, _update_state, image_relpath, merge_rank_records,
    prepare_out_dir, rank_records_name,
)


@dataclass(frozen=True)
class AuditSettings:
    models: tuple[str, ...]
    prompts: str
    detectors: tuple[str, ...]
    n_per_prompt: int = 1
    seed: int = 0
    steps: int | None = None  # sampler steps of multi-step teachers (default: the model's)
    guidance: float | None = None  # overrides every prompt's own guidance when given
    categories: tuple[str, ...] = ()
    limit: int | None = None  # first N prompts (after the category filter)
    batch_size: int = 16
    features: str = "auto"  # FID/KID features between models: auto, none, clip[@MODEL], classifier:PATH
    attack: str | None = None  # concept to probe with the adversarial prompt search after the audit
    attack_seeds: int = 2
    attack_steps: int = 30
    allow_pickle: bool = False
    reference_images: str | None = None  # a folder of real images: FID/KID of every model against them (--features)

    def validate(self) -> "AuditSettings":
        if not self.models:
            raise SFDError("give at least one --model")
        if self.n_per_prompt < 1:
            raise SFDError(f"--n-per-prompt must be >= 1, got {self.n_per_prompt}")
        from sfd.evaluators.prompt_sets import MAX_IMAGES_PER_PROMPT

        if self.n_per_prompt > MAX_IMAGES_PER_PROMPT:
            raise SFDError(f"--n-per-prompt must be <= {MAX_IMAGES_PER_PROMPT}, got {self.n_per_prompt}")
        if self.batch_size < 1:
            raise SFDError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.guidance is not None and (not math.isfinite(self.guidance) or self.guidance < 0):
            raise SFDError(f"--guidance must be a non-negative number, got {self.guidance}")
        if self.reference_images is not None:
            found = reference_image_files(self.reference_images)
            if len(found) < 2:
                raise SFDError(f"--reference-images {self.reference_images!r}: need a folder with at least 2 images "
                               f"({', '.join(REFERENCE_SUFFIXES)}), found {len(found)}")
            if self.features == "none":
                raise SFDError("--reference-images needs image features: leave --features at auto or give clip@MODEL or classifier:PATH")
        return self


REFERENCE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def reference_image_files(folder: str | Path) -> list[Path]:
    """The images of a reference folder (searched recursively), in sorted order; [] when it is not a folder."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in REFERENCE_SUFFIXES and p.is_file())


def load_reference_image(path: Path, size: int) -> torch.Tensor:
    """A real image as the audit's images are: RGB in [0, 1], centre-cropped to a square and resized to `size`."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        arr = np.asarray(img)
    return torch.from_numpy(arr.copy()).float().permute(2, 0, 1) / 255


# --------------------------------------------------------------------------------------------- the run

def _describe_detectors(detectors) -> list[dict]:
    return [{"name": d.name, **d.settings} for d in detectors]


@dataclass
class _AuditRun:
    """What the stages of one audit share: its settings, folder, detectors and features, this process's shard, and the
    plan of images (every model's jobs, the finished records by key, and this rank's batches of each model)."""
    settings: AuditSettings
    out: Path
    device: str
    shard: Shard
    prompt_set: PromptSet
    labels: list[str]
    detectors: list
    extractor: object
    fingerprint: dict
    prober: object
    done: dict
    jobs_by_model: list[list[Job]]
    mine: list[list[tuple[float | None, list[Job]]]]
    log: Callable[[str], None]
    progress: bool
    on_record: Callable[[dict], None] | None


def run_audit(
    settings: AuditSettings,
    out: str | Path,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_record: Callable[[dict], None] | None = None,
) -> dict | None:
    """Run (or resume) an audit; writes images, images.jsonl and the reports into `out`; returns the report dict
    (None on the other ranks of a sharded audit: rank 0 writes the reports).

    `on_record` is called after each image's line is flushed (used by tests to simulate a killed run).
    """
    settings.validate()
    t_start = time.perf_counter()
    run = _start_audit(settings, Path(out), device, overwrite, progress, log, on_record)
    models_info, timings, attack = _make_images(run)
    per_rank = run.shard.gather(timings)  # also waits until every rank has written its last image
    if not run.shard.main:
        return None
    return _write_report(run, models_info, _merge_timings(per_rank, run.shard.world_size), attack, t_start)


def _start_audit(settings: AuditSettings, out: Path, device: str, overwrite: bool, progress: bool, log: Callable[[str], None],
                 on_record: Callable[[dict], None] | None) -> _AuditRun:
    """Everything before the first image: the inputs checked, the detectors and features built, the folder created or
    resumed (by rank 0, refused when its settings differ) and the images planned."""
    from sfd.evaluators.detectors import DetectorFactory

    check_not_an_input(out, [("--model", m) for m in settings.models] + [("--prompts", settings.prompts),
                                                                       ("--reference-images", settings.reference_images)])
    prompt_set = load_prompt_set(settings.prompts, settings.categories, settings.limit)
    kinds = [inspect_model(m) for m in settings.models]  # fail before any work
    shard = Shard(device)
    device = shard.device
    if not shard.main:
        log, progress = (lambda msg: None), False
    labels = model_labels(settings.models)
    factory = DetectorFactory(device)
    detectors = factory.build_all(settings.detectors)
    wants_features = len(settings.models) > 1 or settings.reference_images is not None
    extractor = _choose_features(settings, detectors, factory, device) if wants_features and shard.main else None
    if settings.reference_images is not None and shard.main and extractor is None:
        raise SFDError("--reference-images: no image features to compare with (no CLIP or classifier detector); give --features clip@MODEL "
                       "or classifier:PATH")

    fingerprint = {
        "models": [str(Path(m).resolve()) if Path(m).exists() else m for m in settings.models],
        "weights": [model_identity(m) for m in settings.models],
        "prompts": {k: v for k, v in prompt_set.describe().items() if k != "path"},
        "n_per_prompt": settings.n_per_prompt, "seed": settings.seed, "steps": settings.steps, "guidance": settings.guidance,
        "detectors": _describe_detectors(detectors),
    }
    prober = None
    if settings.attack and shard.main:
        from sfd.evaluators.attack import AuditProbe

        prober = AuditProbe(settings, prompt_set, detectors, factory, out)
    reused = shard.from_main(lambda: prepare_out_dir(out, fingerprint, overwrite, log))
    done = {(r["model_index"], r["prompt_index"], r["image"]): r for r in reused}
    jobs_by_model, mine = _plan_shards(settings, prompt_set, kinds, done, shard)
    return _AuditRun(settings, out, device, shard, prompt_set, labels, detectors, extractor, fingerprint, prober, done,
                     jobs_by_model, mine, log, progress, on_record)


def _plan_shards(settings: AuditSettings, prompt_set: PromptSet, kinds: list[str], done: dict, shard: Shard):
    """Every model's images as jobs (each with its own seed and guidance), and this rank's batches of each model's
    pending ones; returns (jobs_by_model, mine)."""
    from sfd.core.families import family_of_pipeline

    jobs_by_model = [[Job(m, it, j, image_seed(it, j, settings.seed), settings.guidance if settings.guidance is not None else it.guidance)
                      for it in prompt_set.items for j in range(settings.n_per_prompt)] for m in range(len(settings.models))]
    # Each model's pending images in the batches one process would make; batch k is rank k mod the process count's.
    mine = [_batches([j for j in jobs if j.key not in done], family_of_pipeline(kind).is_one_step_class(kind),
                     settings.batch_size)[shard.rank :: shard.world_size] for jobs, kind in zip(jobs_by_model, kinds)]
    return jobs_by_model, mine


def _make_images(run: _AuditRun) -> tuple[list[dict], dict, dict]:
    """This rank's images of every model, each line appended to this rank's records file; returns
    (models_info, timings, attack) as `_audit_models`."""
    from tqdm.auto import tqdm

    shard = run.shard
    total = sum(len(j) for j in run.jobs_by_model)
    todo = sum(1 for jobs in run.jobs_by_model for j in jobs if j.key not in run.done)
    if todo == 0 and run.done:
        run.log(f"all {total} images of this audit are already in {run.out}; rebuilding the reports (pass --overwrite to start over)")
    if shard.world_size > 1:
        run.log(f"sharded audit: {shard.world_size} processes, {todo} image(s) to make")
        bar = tqdm(total=sum(len(b) for batches in run.mine for _, b in batches), desc=f"audit (rank 0 of {shard.world_size})", unit="img",
                   disable=not run.progress)
    else:
        bar = tqdm(total=total, initial=total - todo, desc="audit", unit="img", disable=not run.progress)
    records_file = open(run.out / rank_records_name(shard.rank), "a", encoding="utf-8")
    try:
        return _audit_models(run, records_file, bar)
    finally:
        records_file.close()
        bar.close()


def _audit_models(run: _AuditRun, records_file, bar) -> tuple[list[dict], dict, dict]:
    """Model by model: load it (unless this rank has nothing to make of it and its description is known), make and
    score its images, probe it when asked. Returns the models' descriptions (rank 0), the timings per model label and
    the adversarial probes' results."""
    settings, shard = run.settings, run.shard
    models_info, timings, attack = [], {}, {}
    known_models = _read_state(run.out).get("models", {}) if shard.main else {}
    for m, path in enumerate(settings.models):
        jobs = run.jobs_by_model[m]
        n_pending = sum(1 for j in jobs if j.key not in run.done)
        needed = bool(run.mine[m]) or (shard.main and (run.prober is not None or str(m) not in known_models))
        if not needed:  # nothing to make here: no need to load it
            if shard.main:
                models_info.append(known_models[str(m)])
            timings[run.labels[m]] = {"load_seconds": 0.0, "generate_seconds": 0.0, "detect_seconds": 0.0, "generated": 0,
                                      "reused": len(jobs) - n_pending, "seconds_per_image": None}
            continue
        t0 = time.perf_counter()
        model = load_model(path, run.labels[m], run.device, settings.steps, settings.allow_pickle)
        t_load = time.perf_counter() - t0
        check_prompts(model, [it.prompt for it in run.prompt_set.items])  # before generating anything
        if shard.main:
            known_models[str(m)] = {**model.describe(), "weights": run.fingerprint["weights"][m]}
            models_info.append(known_models[str(m)])
            _update_state(run.out, models=known_models)
        t_gen, t_det, made = _make_model_images(run, m, model, records_file, bar)
        timings[model.label] = {"load_seconds": t_load, "generate_seconds": t_gen, "detect_seconds": t_det,
                                "generated": made, "reused": len(jobs) - n_pending,
                                "seconds_per_image": (t_gen + t_det) / made if made else None}
        if run.prober is not None:
            run.log(f"adversarial probe of {model.label} for {settings.attack!r}")
            t1 = time.perf_counter()
            attack[model.label] = run.prober.run(model, run.progress)
            timings[model.label]["attack_seconds"] = time.perf_counter() - t1
        del model
    return models_info, timings, attack


def _make_model_images(run: _AuditRun, m: int, model, records_file, bar) -> tuple[float, float, int]:
    """Generate, quantise, score and save this rank's batches of model m; each image's line is flushed once its PNG
    is written, and the file synced after each batch. Returns (generate seconds, detect seconds, images made)."""
    t_gen = t_det = 0.0
    made = 0
    for group_guidance, batch in run.mine[m]:
        guidance = None if model.one_step else (group_guidance if group_guidance is not None else model.guidance)
        t1 = time.perf_counter()
        images = quantize(generate(model, [j.item.prompt for j in batch], [j.seed for j in batch], guidance))
        t2 = time.perf_counter()
        prompts = [j.item.prompt for j in batch]
        scores = {d.name: d.score(images, prompts) for d in run.detectors}
        t3 = time.perf_counter()
        t_gen, t_det = t_gen + t2 - t1, t_det + t3 - t2
        for b, job in enumerate(batch):
            rel = image_relpath(job)
            save_png(images[b], run.out / rel)
            rec = {"model": model.label, "model_index": m, "prompt_index": job.item.index, "id": job.item.id,
                   "prompt": job.item.prompt, "categories": list(job.item.categories), "image": job.image,
                   "seed": job.seed, "guidance": guidance, "steps": model.steps,
                   "path": rel, "scores": {name: s[b] for name, s in scores.items()}}
            records_file.write(json.dumps(rec) + "\n")
            records_file.flush()
            run.done[job.key] = rec
            made += 1
            bar.update(1)
            if run.on_record is not None:
                run.on_record(rec)
        os.fsync(records_file.fileno())
    return t_gen, t_det, made


def _write_report(run: _AuditRun, models_info: list[dict], timings: dict, attack: dict, t_start: float) -> dict:
    """Rank 0, once every rank is done: the report of all the audit's images (with FID/KID between the models and
    against the reference images when asked), written into the folder."""
    from sfd.evaluators.report import write_reports

    settings, out, done, extractor = run.settings, run.out, run.done, run.extractor
    if run.shard.world_size > 1:
        done = {(r["model_index"], r["prompt_index"], r["image"]): r for r in merge_rank_records(out)}
    records = [done[j.key] for jobs in run.jobs_by_model for j in jobs]
    report = build_report(settings, run.prompt_set, models_info, run.detectors, records, run.device)
    if extractor is not None and len(models_info) > 1:
        t0 = time.perf_counter()
        report["comparison"]["fid_kid"] = compare_distributions(out, records, [i["label"] for i in models_info], extractor)
        timings["fid_kid_seconds"] = time.perf_counter() - t0
    if settings.reference_images is not None:
        t0 = time.perf_counter()
        report["reference_images"] = compare_with_reference(out, records, models_info, settings.reference_images, extractor)
        timings["reference_seconds"] = time.perf_counter() - t0
    if run.prober is not None:
        report["attack"] = attack
    timings["total_seconds"] = time.perf_counter() - t_start
    report["settings"]["timings"] = timings
    write_reports(report, out)
    return report


def _choose_features(settings: AuditSettings, detectors, factory, device):
    from sfd.evaluators.detectors import ClassifierDetector, ClipDetector, feature_extractor

    spec = settings.features.strip()
    if spec == "none":
        return None
    if spec == "auto":
        for d in detectors:
            if isinstance(d, ClipDetector):
                m = d.settings["model"]
                model = m.get("path") if m["source"] == "local" else f"{m['name']}:{m['pretrained']}"
                return feature_extractor(f"clip@{model}", device, factory)
        for d in detectors:
            if isinstance(d, ClassifierDetector):
                return feature_extractor(f"classifier:{d.settings['path']}", device, factory)
        return None
    return feature_extractor(spec, device, factory)


FEATURE_CHUNK = 64  # PNGs read at a time for FID/KID features: memory does not grow with the number of images


def image_features(out: Path, records: list[dict], extractor, chunk: int = FEATURE_CHUNK) -> torch.Tensor:
    """Features of the saved PNGs of `records`, read `chunk` at a time."""
    parts = [extractor(torch.stack([load_png(out / r["path"]) for r in records[i : i + chunk]])) for i in range(0, len(records), chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def compare_with_reference(out: Path, records: list[dict], models_info: list[dict], folder: str, extractor,
                           chunk: int = FEATURE_CHUNK) -> dict:
    """FID/KID of each model's images against a folder of real images (e.g. a user's COCO subset), at the first
    model's image size, in one feature space; the numbers of images on both sides are stated."""
    from sfd.evaluators.detectors import fid_kid_of_features

    files = reference_image_files(folder)
    size = models_info[0]["image_size"]
    ref = torch.cat([extractor(torch.stack([load_reference_image(p, size) for p in files[i : i + chunk]]))
                     for i in range(0, len(files), chunk)])
    res = {"path": str(Path(folder).resolve()), "n_reference_images": len(files), "image_size": size,
           "preprocessing": "RGB, centre square crop, bicubic resize to the first model's image size",
           "features": {"name": extractor.name, **extractor.settings}, "models": {}}
    for info in models_info:
        feats = image_features(out, [r for r in records if r["model"] == info["label"]], extractor)
        res["models"][info["label"]] = (fid_kid_of_features(ref, feats, extractor) if len(feats) >= 2
                                        else {"note": "FID/KID need at least 2 images per model"})
    return res


def compare_distributions(out: Path, records: list[dict], labels: list[str], extractor) -> dict:
    """FID/KID of each model's images against the first model's, read back from the saved PNGs."""
    from sfd.evaluators.detectors import fid_kid_of_features

    by_model = {lab: [r for r in records if r["model"] == lab] for lab in labels}
    ref = labels[0]
    ref_features = image_features(out, by_model[ref], extractor)
    res = {}
    for lab in labels[1:]:
        features = image_features(out, by_model[lab], extractor)
        if min(len(features), len(ref_features)) < 2:
            res[lab] = {"note": "FID/KID need at least 2 images per model"}
            continue
        res[lab] = fid_kid_of_features(ref_features, features, extractor)
        res[lab]["reference"] = ref
    return res


def detector_row_settings(settings: dict) -> dict:
    """What each summary row repeats about its detector, so a row read alone states its setting."""
    keys = ("kind", "preset", "nudenet_version", "threshold", "count_threshold", "classes")
    return {k: settings[k] for k in keys if settings.get(k) is not None}


def build_report(settings: AuditSettings, prompt_set: PromptSet, models_info: list[dict], detectors, records: list[dict], device: str) -> dict:
    from sfd.evaluators.nudenet import class_counts

    labels = [m["label"] for m in models_info]
    names = [d.name for d in detectors]
    summary, by_category = {}, {}
    for lab in labels:
        recs = [r for r in records if r["model"] == lab]
        summary[lab], by_category[lab] = {}, {}
        for d, name in zip(detectors, names):
            s = rate_summary([r["scores"][name]["flagged"] for r in recs])
            s["detector"] = detector_row_settings(d.settings)
            if d.settings.get("kind") == "nudenet":  # the ESD-style table: images per exposed class
                s["per_class"] = class_counts([r["scores"][name] for r in recs], d.settings["classes"], d.settings["count_threshold"])
            s["mean_score"] = float(np.mean([r["scores"][name]["score"] for r in recs])) if recs else None
            cs = [r["scores"][name]["clip_score"] for r in recs if "clip_score" in r["scores"][name]]
            if cs:
                s["mean_clip_score"] = float(np.nanmean(cs))
            summary[lab][name] = s
            cats = sorted({c for r in recs for c in r["categories"]})
            if cats:
                by_category[lab][name] = {c: rate_summary([r["scores"][name]["flagged"] for r in recs if c in r["categories"]]) for c in cats}
    comparison = {}
    if len(labels) > 1:
        ref = labels[0]
        key = lambda r: (r["prompt_index"], r["image"])  # noqa: E731
        ref_flags = {name: {key(r): r["scores"][name]["flagged"] for r in records if r["model"] == ref} for name in names}
        comparison = {"reference": ref, "models": {}, "note": (
            "difference = rate(model) - rate(reference), 95% Newcombe hybrid score interval; paired counts compare the "
            "same prompt and seed; mcnemar_p is the exact two-sided McNemar test on the discordant pairs")}
        for lab in labels[1:]:
            comparison["models"][lab] = {}
            for name in names:
                a, b = summary[lab][name], summary[ref][name]
                lo, hi = difference_interval(a["flagged"], a["n"], b["flagged"], b["n"])
                flags = {key(r): r["scores"][name]["flagged"] for r in records if r["model"] == lab}
                pairs = [(ref_flags[name][k], f) for k, f in flags.items() if k in ref_flags[name]]
                only_ref = sum(1 for x, y in pairs if x and not y)
                only_model = sum(1 for x, y in pairs if y and not x)
                comparison["models"][lab][name] = {
                    "rate": a["rate"], "reference_rate": b["rate"],
                    "difference": None if a["rate"] is None or b["rate"] is None else a["rate"] - b["rate"],
                    "diff_ci_low": lo, "diff_ci_high": hi, "pairs": len(pairs),
                    "both": sum(1 for x, y in pairs if x and y), "only_reference": only_ref, "only_model": only_model,
                    "neither": sum(1 for x, y in pairs if not x and not y), "mcnemar_p": mcnemar_exact(only_ref, only_model),
                }
    settings_out = {
        "models": models_info,
        "prompts": prompt_set.describe(),
        "n_per_prompt": settings.n_per_prompt, "seed": settings.seed,
        "seed_rule": ("image j of prompt i: the file's seed + j when the file gives seeds (I2P evaluation_seed), "
                      "else seed * 10**9 + i * 10**4 + j (i = the prompt's position in the file); CPU torch.Generator per image"),
        "steps_override": settings.steps, "guidance_override": settings.guidance,
        "guidance_rule": "--guidance when given, else the prompt's own (evaluation_guidance), else the model's default",
        "batch_size": settings.batch_size, "device": device, "torch_threads": torch.get_num_threads(),
        "detectors": _describe_detectors(detectors), "categories": list(settings.categories), "limit": settings.limit,
        "images_quantised": "8-bit (as saved) before scoring",
        "packages": software_versions(),
    }
    return {"format": "sfd-audit/1", "settings": settings_out, "summary": summary,
            "summary_by_category": {k: v for k, v in by_category.items() if v}, "comparison": comparison, "images": records}

