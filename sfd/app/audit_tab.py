"""A small `sfd audit` from the demo page: prompts pasted or uploaded, both chosen models, the erased concepts.

It calls `sfd.evaluators.audit.run_audit` exactly as `sfd audit` does (fixed per-image seeds, 8-bit images, Wilson
intervals) and turns its report into what the page shows: a table of rates with 95% intervals, the differences
to the original model, an image gallery, the report files and report.html itself. The size is capped
(MAX_PROMPTS x MAX_IMAGES_PER_PROMPT images per model) so a click stays a matter of seconds to minutes on a CPU.
"""

from __future__ import annotations

import html
import itertools
import shutil
import time
from pathlib import Path
from typing import Sequence

from sfd.kernel.errors import SFDError

from sfd.app.catalog import ModelEntry

MAX_PROMPTS = 32
MAX_IMAGES_PER_PROMPT = 4
MAX_UPLOAD_BYTES = 2 << 20
PROMPT_SUFFIXES = (".txt", ".csv", ".jsonl", ".ndjson")
MAX_GALLERY = 64
MAX_EMBED_BYTES = 8 << 20  # report.html larger than this is offered as a file only
_counter = itertools.count(1)


def write_prompt_file(folder: Path, text: str | None, upload: str | None) -> Path:
    """The prompts as a file run_audit reads: the upload (copied) when given, else the pasted lines."""
    folder.mkdir(parents=True, exist_ok=True)
    if upload:
        src = Path(upload)
        if src.suffix.lower() not in PROMPT_SUFFIXES:
            raise SFDError(f"uploaded file {src.name!r} is not a prompt file: expected {', '.join(PROMPT_SUFFIXES)}")
        if not src.is_file():
            raise SFDError(f"uploaded file {src.name!r} could not be read; upload it again")
        if src.stat().st_size > MAX_UPLOAD_BYTES:
            raise SFDError(f"uploaded file {src.name!r} is larger than {MAX_UPLOAD_BYTES >> 20} MiB; audit a smaller set here, "
                           "or run `sfd audit` on the command line")
        dst = folder / f"prompts{src.suffix.lower()}"
        shutil.copyfile(src, dst)
        return dst
    lines = [ln.strip() for ln in (text or "").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise SFDError("no prompts: paste prompts (one per line) or upload a .txt, .csv or .jsonl file")
    dst = folder / "prompts.txt"
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


def detector_specs(base: ModelEntry, cmp: ModelEntry, extra: Sequence[str], nudenet: bool,
                   clip_path: str | None, judge_path: str | None) -> tuple[list[str], list[str]]:
    """(detector specs for run_audit, notes)."""
    notes = []
    concepts = list(dict.fromkeys([*cmp.forget, *base.forget, *extra]))
    if base.family.metrics == "judge":
        if not judge_path:
            raise SFDError("no classifier judge: start the demo with --judge PATH (e.g. checkpoints/digits/judge)")
        if not concepts:
            raise SFDError("the comparison model erased no class (no sfd_config.json): pick an erased model, or type the classes to score")
        bad = [c for c in concepts if any(ch in c for ch in ",;=")]
        if bad:
            raise SFDError(f"class {bad[0]!r} cannot be audited from the page; use `sfd audit` on the command line")
        return [f"classifier:{judge_path}={','.join(concepts)}"], notes
    specs = []
    for c in concepts:
        if any(ch in c for ch in ";@\"'"):
            notes.append(f"concept {c!r} skipped: it holds a character (; @ or quotes) that detector specs reserve")
            continue
        specs.append(f"clip:{c}" + (f"@{clip_path}" if clip_path else ""))
    if nudenet:
        specs.append("nudenet")
    if not specs:
        raise SFDError("nothing to detect: the comparison model names no erased concept; type concepts to score, or tick NudeNet")
    return specs, notes


def run_small_audit(work_dir: Path, base: ModelEntry, cmp: ModelEntry, text: str | None, upload: str | None,
                    n_per_prompt: int, seed: int, steps: int, guidance: float, extra: Sequence[str], nudenet: bool,
                    clip_path: str | None, judge_path: str | None, device: str = "cpu") -> dict:
    """Run the audit in a new folder under work_dir; returns the report plus where it is and what was capped."""
    from sfd.evaluators.audit import AuditSettings, run_audit
    from sfd.evaluators.prompt_sets import load_prompt_set

    if not 1 <= int(n_per_prompt) <= MAX_IMAGES_PER_PROMPT:
        raise SFDError(f"images per prompt must be from 1 to {MAX_IMAGES_PER_PROMPT}, got {n_per_prompt}")
    specs, notes = detector_specs(base, cmp, extra, nudenet, clip_path, judge_path)
    out = Path(work_dir) / f"audit-{time.strftime('%Y%m%d-%H%M%S')}-{next(_counter):03d}"
    prompts = write_prompt_file(out / "input", text, upload)
    prompt_set = load_prompt_set(str(prompts))  # one-line errors naming the line, before any model loads
    if len(prompt_set) > MAX_PROMPTS:
        notes.append(f"only the first {MAX_PROMPTS} of {len(prompt_set)} prompts are audited here; "
                     "run `sfd audit` on the command line for the whole set")
    desc = prompt_set.describe()
    paths = tuple(dict.fromkeys([base.path, cmp.path]))
    settings = AuditSettings(models=paths, prompts=str(prompts), detectors=tuple(specs), n_per_prompt=int(n_per_prompt),
                             seed=int(seed), steps=int(steps), guidance=None if desc["has_file_guidance"] else float(guidance),
                             limit=MAX_PROMPTS, batch_size=8, features="none")
    t0 = time.perf_counter()
    report = run_audit(settings, out / "report", device=device, progress=False, log=lambda msg: None)
    return {"report": report, "out": out / "report", "notes": notes, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------- display

def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def summary_markdown(result: dict) -> str:
    rep = result["report"]
    lines = ["| model | detector | flagged | rate | 95% interval |", "|---|---|---:|---:|---|"]
    for model, per in rep["summary"].items():
        for det, s in per.items():
            lines.append(f"| `{model}` | `{det}` | {s['flagged']}/{s['n']} | {_pct(s['rate'])} | {_pct(s['ci_low'])} – {_pct(s['ci_high'])} |")
    comp = rep.get("comparison") or {}
    if comp.get("models"):
        lines += ["", f"**Difference to `{comp['reference']}`** (same prompts and seeds; 95% Newcombe interval, exact McNemar p)", "",
                  "| model | detector | difference | 95% interval | McNemar p |", "|---|---|---:|---|---:|"]
        for model, per in comp["models"].items():
            for det, c in per.items():
                d = c["difference"]
                lo, hi = c["diff_ci_low"], c["diff_ci_high"]
                ci = "n/a" if lo is None else f"{100 * lo:+.1f} to {100 * hi:+.1f} pts"
                lines.append(f"| `{model}` | `{det}` | {'n/a' if d is None else f'{100 * d:+.1f} pts'} | {ci} | {c['mcnemar_p']:.3g} |")
    timings = rep.get("settings", {}).get("timings", {})
    per_img = [f"`{k}` {v['seconds_per_image']:.3f} s/image" for k, v in timings.items()
               if isinstance(v, dict) and v.get("seconds_per_image")]
    n_img = len(rep.get("images", []))
    lines += ["", f"{n_img} images in {result['seconds']:.1f} s" + (f" ({', '.join(per_img)})" if per_img else "")
              + f"; report folder: `{result['out']}`"]
    return "\n".join(lines)


def gallery_items(result: dict, limit: int = MAX_GALLERY) -> list[tuple[str, str]]:
    """(png path, caption) per image, flagged detectors named in the caption; the models' images of a prompt side by side."""
    out = Path(result["out"])
    items = []
    records = sorted(result["report"].get("images", []), key=lambda r: (r["prompt_index"], r["image"], r["model_index"]))
    for r in records[:limit]:  # the models' images of one prompt and seed next to each other
        flagged = [name for name, s in r["scores"].items() if s.get("flagged")]
        cap = f"{r['model']} | {r['prompt'][:60]} | seed {r['seed']}" + (f" | FLAGGED: {', '.join(flagged)}" if flagged else "")
        items.append((str(out / r["path"]), cap))
    return items


def report_files(result: dict) -> list[str]:
    out = Path(result["out"])
    return [str(out / n) for n in ("report.html", "report.json", "report.csv", "summary.csv") if (out / n).is_file()]


def report_iframe(result: dict, height: int = 720) -> str:
    """report.html inside a sandboxed iframe (its own page: styles and the filter script stay inside)."""
    path = Path(result["out"]) / "report.html"
    if not path.is_file():
        return ""
    if path.stat().st_size > MAX_EMBED_BYTES:
        return f"<p>report.html is {path.stat().st_size >> 20} MiB: download it from the files above.</p>"
    doc = html.escape(path.read_text(encoding="utf-8"), quote=True)
    return (f'<iframe class="sfd-report" title="audit report" sandbox="allow-scripts" srcdoc="{doc}" '
            f'style="width:100%;height:{height}px;border:1px solid #ccc;border-radius:6px;background:white"></iframe>')
