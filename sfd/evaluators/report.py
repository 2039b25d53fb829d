"""Audit and attack reports: report.json (everything), report.csv (per image, models side by side),
summary.csv (rates, intervals, differences) and report.html (one self-contained page).

The HTML page needs nothing from a network: images are embedded as data URIs (thumbnails at most
THUMB_PX wide), charts are inline SVG, and the only script is a few lines that hide unflagged rows.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from pathlib import Path

from sfd.evaluators.nudenet import counted_classes

THUMB_PX = 128  # larger images are shrunk for the page (full images stay in images/)
MAX_GRID_ROWS = 500  # rows of the image grid embedded in the page; the rest are in report.csv


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_reports(report: dict, out: str | Path, max_grid_rows: int = MAX_GRID_ROWS) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "csv": out / "report.csv", "summary_csv": out / "summary.csv", "html": out / "report.html"}
    _atomic_write(paths["json"], json.dumps(report, indent=2, default=_json_default, allow_nan=True))
    _atomic_write(paths["csv"], images_csv(report))
    _atomic_write(paths["summary_csv"], summary_csv(report))
    table = nudenet_classes_csv(report)
    if table:
        paths["nudenet_classes_csv"] = out / "nudenet_classes.csv"
        _atomic_write(paths["nudenet_classes_csv"], table)
    _atomic_write(paths["html"], render_html(report, out, max_grid_rows))
    return paths


# ------------------------------------------------------------------------------------------------- CSV

def _model_labels(report: dict) -> list[str]:
    return [m["label"] for m in report.get("settings", {}).get("models", [])]


def _detector_names(report: dict) -> list[str]:
    return [d["name"] for d in report.get("settings", {}).get("detectors", [])]


def _rows(report: dict) -> list[tuple[tuple, dict]]:
    """Images grouped by (prompt, image index): {model label: record}, in file order."""
    rows: dict[tuple, dict] = {}
    for r in report.get("images", []):
        rows.setdefault((r["prompt_index"], r["image"]), {})[r["model"]] = r
    return sorted(rows.items())


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def images_csv(report: dict) -> str:
    labels, names = _model_labels(report), _detector_names(report)
    nude = _nudenet_detectors(report)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["prompt_index", "id", "prompt", "categories", "image", "seed"]
    for lab in labels:
        head += [f"{lab} path", f"{lab} guidance"] + [f"{lab} {n} {f}" for n in names for f in ("flagged", "score")]
        head += [f"{lab} {n} classes" for n in nude]
    w.writerow(head)
    for (_, _), by_model in _rows(report):
        first = next(iter(by_model.values()))
        row = [first["prompt_index"], first.get("id") or "", first["prompt"], ",".join(first.get("categories", [])), first["image"], first["seed"]]
        for lab in labels:
            r = by_model.get(lab)
            row += [r["path"] if r else "", _fmt(r.get("guidance")) if r else ""]
            for n in names:
                s = r["scores"].get(n, {}) if r else {}
                row += [_fmt(s.get("flagged")), _fmt(s.get("score"))]
            for n, d in nude.items():  # the classes counted in the per-class table, at its threshold
                row.append(";".join(counted_classes(r["scores"].get(n, {}), d["count_threshold"])) if r else "")
        w.writerow(row)
    return buf.getvalue()


def summary_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "detector", "n", "flagged", "rate", "ci_low", "ci_high", "mean_score", "mean_clip_score",
                "difference_vs_reference", "diff_ci_low", "diff_ci_high", "mcnemar_p", "fid_vs_reference", "kid_vs_reference",
                "detector_version", "threshold", "classes"])
    comp = report.get("comparison") or {}
    for lab, per_det in report.get("summary", {}).items():
        fk = (comp.get("fid_kid") or {}).get(lab, {})
        for name, s in per_det.items():
            c = (comp.get("models") or {}).get(lab, {}).get(name, {})
            w.writerow([lab, name, s["n"], s["flagged"], _fmt(s["rate"]), _fmt(s["ci_low"]), _fmt(s["ci_high"]),
                        _fmt(s.get("mean_score")), _fmt(s.get("mean_clip_score")), _fmt(c.get("difference")),
                        _fmt(c.get("diff_ci_low")), _fmt(c.get("diff_ci_high")), _fmt(c.get("mcnemar_p")),
                        _fmt(fk.get("fid")), _fmt(fk.get("kid")), *_detector_columns(s.get("detector") or {})])
    for lab, att in (report.get("attack") or {}).items():
        if not isinstance(att, dict) or "asr" not in att:
            continue
        det = att.get("detector", "")
        for what, s in (("attack: plain prompts", att["plain"]), ("attack: ASR (any method)", att["asr"]),
                        ("attack: ASR paraphrase", (att.get("paraphrase") or {}).get("asr")),
                        ("attack: ASR gradient (hard prompt)", (att.get("gradient") or {}).get("asr_hard")),
                        ("attack: ASR gradient (soft prompt)", (att.get("gradient") or {}).get("asr_soft"))):
            if s:
                w.writerow([lab, f"{det} [{what}]", s["n"], s["flagged"], _fmt(s["rate"]), _fmt(s["ci_low"]), _fmt(s["ci_high"])] + [""] * 11)
    return buf.getvalue()


def _nudenet_detectors(report: dict) -> dict[str, dict]:
    return {d["name"]: d for d in report.get("settings", {}).get("detectors", []) if d.get("kind") == "nudenet"}


def _detector_columns(d: dict) -> list[str]:
    version = f"nudenet {d['nudenet_version']}" if d.get("nudenet_version") else d.get("kind", "")
    return [version, _fmt(d.get("threshold")), ";".join(d.get("classes") or [])]


def nudenet_classes_csv(report: dict) -> str:
    """The table nudity-erasure papers print (ESD-style): per model and class, the images with a box of that class at
    or above the count threshold, with the detector's version, thresholds and source on every row. Empty without a
    NudeNet detector."""
    nude = _nudenet_detectors(report)
    if not nude:
        return ""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "detector", "class", "images", "n", "count_threshold", "flag_threshold", "nudenet_version", "preset", "source"])
    for lab, per in report.get("summary", {}).items():
        for name, d in nude.items():
            s = per.get(name) or {}
            for cls, k in (s.get("per_class") or {}).items():
                w.writerow([lab, name, cls, k, s["n"], _fmt(d["count_threshold"]), _fmt(d["threshold"]), d.get("nudenet_version") or "",
                            d.get("preset") or "", d.get("source") or ""])
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ HTML

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;margin:0 0 12px}table{border-collapse:collapse}td,th{padding:3px 8px;border:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:16px}.chart{border:1px solid #ddd;padding:8px;background:#fafafa}
.chart h3{font-size:13px;margin:0 0 6px;word-break:break-all}
table.grid td{padding:4px}table.grid td.prompt{max-width:280px;font-size:12px}
figure.cell{margin:0;display:inline-block;border:3px solid #cfd8dc;padding:2px;background:#fff}
figure.cell img{display:block;width:96px;height:96px;object-fit:contain;image-rendering:pixelated}
figure.cell figcaption{font-size:11px;max-width:96px;word-break:break-all}
figure.cell.flagged{border-color:#d32f2f;background:#ffebee}
.flag{display:inline-block;background:#d32f2f;color:#fff;font-weight:700;font-size:10px;padding:0 3px;border-radius:2px}
.ok{color:#2e7d32}.note{color:#666;font-size:12px}pre{background:#f6f6f6;padding:8px;overflow:auto;max-height:420px;font-size:12px}
.found td{font-size:12px}
"""

SCRIPT = """
document.getElementById('only-flagged').addEventListener('change', function (e) {
  document.querySelectorAll('table.grid tbody tr').forEach(function (tr) {
    tr.style.display = (e.target.checked && !tr.classList.contains('has-flag')) ? 'none' : '';
  });
});
"""

BAR_COLOURS = ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457", "#4e342e", "#37474f")


def esc(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def num(x, fmt: str = "{:.3g}") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def image_data_uri(path: Path, max_px: int = THUMB_PX) -> str | None:
    """The image as a PNG data URI, shrunk to max_px on its long side (None when the file is missing)."""
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as img:
        img.load()
        if max(img.size) > max_px:
            img = img.copy()
            img.thumbnail((max_px, max_px))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def bar_chart(title: str, bars: list[tuple[str, dict]], width: int = 460) -> str:
    """Horizontal bars of rates with 95% interval whiskers, as inline SVG."""
    label_w, right, bar_h, gap, top = 150, 60, 22, 10, 22
    plot_w = width - label_w - right
    height = top + len(bars) * (bar_h + gap) + 24
    parts = [f'<svg class="bars" role="img" aria-label="{esc(title)}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="system-ui,sans-serif" font-size="11">']
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + t * plot_w
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 20}" stroke="#ddd"/>'
                     f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" fill="#666">{int(t * 100)}%</text>')
    for i, (label, s) in enumerate(bars):
        y = top + i * (bar_h + gap)
        rate = s.get("rate") or 0.0
        colour = BAR_COLOURS[i % len(BAR_COLOURS)]
        short = label if len(label) <= 22 else label[:21] + "…"
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h * 0.7:.1f}" text-anchor="end" fill="#222"><title>{esc(label)}</title>{esc(short)}</text>')
        parts.append(f'<rect class="bar" x="{label_w}" y="{y}" width="{rate * plot_w:.1f}" height="{bar_h}" fill="{colour}" opacity="0.85"/>')
        if s.get("ci_low") is not None:
            x0, x1 = label_w + s["ci_low"] * plot_w, label_w + s["ci_high"] * plot_w
            ym = y + bar_h / 2
            parts.append(f'<line x1="{x0:.1f}" y1="{ym}" x2="{x1:.1f}" y2="{ym}" stroke="#111" stroke-width="1.5"/>'
                         f'<line x1="{x0:.1f}" y1="{ym - 5}" x2="{x0:.1f}" y2="{ym + 5}" stroke="#111"/>'
                         f'<line x1="{x1:.1f}" y1="{ym - 5}" x2="{x1:.1f}" y2="{ym + 5}" stroke="#111"/>')
        parts.append(f'<text x="{label_w + plot_w + 6}" y="{y + bar_h * 0.7:.1f}" fill="#222">{pct(s.get("rate"))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _summary_section(report: dict) -> str:
    summary = report.get("summary") or {}
    if not summary:
        return ""
    names = _detector_names(report)
    rows = []
    for lab, per in summary.items():
        for n in names:
            s = per[n]
            extra = f'{num(s.get("mean_clip_score"), "{:.2f}")}' if s.get("mean_clip_score") is not None else ""
            rows.append(f'<tr><td>{esc(lab)}</td><td>{esc(n)}</td><td class="num">{s["n"]}</td><td class="num">{s["flagged"]}</td>'
                        f'<td class="num">{pct(s["rate"])}</td><td class="num">{pct(s["ci_low"])} – {pct(s["ci_high"])}</td>'
                        f'<td class="num">{num(s.get("mean_score"))}</td><td class="num">{extra}</td></tr>')
    charts = "".join(f'<div class="chart"><h3>{esc(n)}</h3>{bar_chart(n, [(lab, per[n]) for lab, per in summary.items()])}</div>' for n in names)
    cat_html = ""
    for lab, per in (report.get("summary_by_category") or {}).items():
        for n, cats in per.items():
            cells = "".join(f'<tr><td>{esc(c)}</td><td class="num">{s["n"]}</td><td class="num">{pct(s["rate"])}</td>'
                            f'<td class="num">{pct(s["ci_low"])} – {pct(s["ci_high"])}</td></tr>' for c, s in cats.items())
            cat_html += (f'<h3 style="font-size:13px">{esc(lab)} · {esc(n)} by category</h3><table><tr><th>category</th><th>n</th>'
                         f'<th>rate</th><th>95% CI</th></tr>{cells}</table>')
    return (f'<section id="summary"><h2>Detection rates</h2><table class="summary"><tr><th>model</th><th>detector</th><th>n</th>'
            f'<th>flagged</th><th>rate</th><th>95% CI (Wilson)</th><th>mean score</th><th>mean CLIP score</th></tr>{"".join(rows)}</table>'
            f'<div class="charts">{charts}</div>{cat_html}</section>')


def _nudenet_section(report: dict) -> str:
    """Per NudeNet detector: classes down, models across, the number of images with that class (ESD-style)."""
    summary, parts = report.get("summary") or {}, []
    for name, d in _nudenet_detectors(report).items():
        labels = [lab for lab, per in summary.items() if (per.get(name) or {}).get("per_class") is not None]
        if not labels:
            continue
        head = "".join(f"<th>{esc(lab)}</th>" for lab in labels)
        rows = "".join(f'<tr><td>{esc(c)}</td>' + "".join(f'<td class="num">{summary[lab][name]["per_class"][c]}</td>' for lab in labels)
                       + "</tr>" for c in d["classes"])
        total = "".join(f'<td class="num">{summary[lab][name]["flagged"]} / {summary[lab][name]["n"]}</td>' for lab in labels)
        src = f' · {esc(d["source"])}' if d.get("source") else ""
        parts.append(f'<h3 style="font-size:13px">{esc(name)}: images with each class at score ≥ {d["count_threshold"]:g}</h3>'
                     f'<p class="note">NudeNet {esc(d.get("nudenet_version") or "?")}; flagged when a listed box scores ≥ '
                     f'{d["threshold"]:g}{src}</p><table><tr><th>class</th>{head}</tr>{rows}'
                     f'<tr><th>flagged images</th>{total}</tr></table>')
    return f'<section id="nudenet"><h2>NudeNet classes</h2>{"".join(parts)}</section>' if parts else ""


def _reference_section(report: dict) -> str:
    ref = report.get("reference_images")
    if not ref:
        return ""
    rows = "".join(f'<tr><td>{esc(lab)}</td><td class="num">{num(r.get("fid"))}</td><td class="num">{num(r.get("kid"))}</td>'
                   f'<td class="num">{r.get("n_b", "")}</td></tr>' for lab, r in ref["models"].items())
    return (f'<section id="reference"><h2>Against real images</h2><p class="note">{ref["n_reference_images"]} images from '
            f'{esc(ref["path"])} ({esc(ref["preprocessing"])}); features: {esc(ref["features"]["name"])} '
            f'({esc(ref["features"].get("kind", ""))})</p><table><tr><th>model</th><th>FID</th><th>KID</th><th>model images</th></tr>'
            f'{rows}</table></section>')


def _comparison_section(report: dict) -> str:
    comp = report.get("comparison") or {}
    if not comp.get("models"):
        return ""
    rows = []
    for lab, per in comp["models"].items():
        for n, c in per.items():
            diff = "n/a" if c["difference"] is None else f"{100 * c['difference']:+.1f} pts"
            ci = "n/a" if c["diff_ci_low"] is None else f"{100 * c['diff_ci_low']:+.1f} … {100 * c['diff_ci_high']:+.1f}"
            rows.append(f'<tr><td>{esc(lab)}</td><td>{esc(n)}</td><td class="num">{pct(c["reference_rate"])}</td><td class="num">{pct(c["rate"])}</td>'
                        f'<td class="num">{diff}</td><td class="num">{ci}</td>'
                        f'<td class="num">{c["both"]}/{c["only_reference"]}/{c["only_model"]}/{c["neither"]}</td>'
                        f'<td class="num">{num(c["mcnemar_p"])}</td></tr>')
    fk_rows = []
    for lab, fk in (comp.get("fid_kid") or {}).items():
        if "fid" in fk:
            fk_rows.append(f'<tr><td>{esc(lab)}</td><td class="num">{num(fk["fid"], "{:.4g}")}</td>'
                           f'<td class="num">{num(fk["kid"], "{:.4g}")} ± {num(fk["kid_std"], "{:.2g}")}</td><td>{esc(fk["features"]["name"])}</td>'
                           f'<td class="num">{fk["n_a"]} / {fk["n_b"]}</td></tr>')
        else:
            fk_rows.append(f'<tr><td>{esc(lab)}</td><td colspan="4">{esc(fk.get("note"))}</td></tr>')
    fk_html = (f'<h3 style="font-size:13px">Distribution distance to {esc(comp["reference"])}</h3><table><tr><th>model</th><th>FID</th>'
               f'<th>KID</th><th>features</th><th>n ref / model</th></tr>{"".join(fk_rows)}</table>') if fk_rows else ""
    return (f'<section id="comparison"><h2>Comparison with {esc(comp["reference"])}</h2><table class="comparison"><tr><th>model</th>'
            f'<th>detector</th><th>reference rate</th><th>model rate</th><th>difference</th><th>95% CI (Newcombe)</th>'
            f'<th>both / only ref / only model / neither</th><th>McNemar p</th></tr>{"".join(rows)}</table>'
            f'<p class="note">{esc(comp.get("note"))}</p>{fk_html}</section>')


def _thumb(out: Path, rel: str | None, alt: str) -> str:
    uri = image_data_uri(out / rel) if rel else None
    return f'<img src="{uri}" alt="{esc(alt)}">' if uri else '<span class="note">(missing)</span>'


def _detected_text(f: dict) -> str:
    text = "yes" if f.get("detected") else ("soft prompt only" if f.get("soft_success") else "no")
    return text + (" (plain prompt too)" if f.get("plain_flagged") else "")


def _attack_section(report: dict, out: Path) -> str:
    attack = report.get("attack") or {}
    if not attack:
        return ""
    parts = ['<section id="attack"><h2>Adversarial prompt search</h2>']
    for lab, a in attack.items():
        if "asr" not in a:
            parts.append(f'<h3 style="font-size:14px">{esc(lab)}</h3><p class="note">{esc(a.get("note"))}</p>')
            continue
        p, g = a.get("paraphrase") or {}, a.get("gradient") or {}
        bars = [("plain prompts", a["plain"])]
        if p.get("ran"):
            bars.append(("paraphrases", p["asr"]))
        if g.get("ran"):
            bars += [("gradient (hard)", g["asr_hard"]), ("gradient (soft)", g["asr_soft"])]
        bars.append(("any method", a["asr"]))
        parts.append(f'<h3 style="font-size:14px">{esc(lab)} — concept “{esc(a["concept"])}”, detector {esc(a["detector"])}</h3>')
        parts.append(f'<p>Plain rate <b>{pct(a["plain"]["rate"])}</b>; attack success rate <b>{pct(a["asr"]["rate"])}</b> '
                     f'({pct(a["asr"]["ci_low"])} – {pct(a["asr"]["ci_high"])}) over {a["asr"]["n"]} prompt/seed pairs. '
                     f'<span class="note">{esc(a.get("asr_definition"))}</span></p>')
        parts.append(f'<div class="charts"><div class="chart">{bar_chart("attack " + lab, bars)}</div></div>')
        for note in (p.get("note"), g.get("note")):
            if note:
                parts.append(f'<p class="note">{esc(note)}</p>')
        found = [("paraphrase", f) for f in p.get("found", [])] + [("gradient", f) for f in g.get("found", [])]
        if found:
            rows = "".join(
                f'<tr><td>{m}</td><td>{esc(f["base"])}</td><td class="num">{f["seed"]}</td><td><b>{esc(f["prompt"])}</b></td>'
                f'<td class="num">{num(f.get("score"))}</td><td>{_detected_text(f)}</td>'
                f'<td><figure class="cell{" flagged" if f.get("detected") else ""}">{_thumb(out, f.get("path"), f["prompt"])}</figure></td></tr>'
                for m, f in found[:200])
            parts.append(f'<table class="found"><tr><th>method</th><th>base prompt</th><th>seed</th><th>prompt found</th><th>score</th>'
                         f'<th>detected</th><th>image</th></tr>{rows}</table>')
        else:
            parts.append('<p class="ok">No prompt found that brings the concept back.</p>')
    parts.append("</section>")
    return "".join(parts)


IMAGES_LINK = "images/"


def _row_flagged(by_model: dict, names: list[str]) -> bool:
    return any(r["scores"].get(n, {}).get("flagged") for r in by_model.values() for n in names)


def sample_rows(rows: list, names: list[str], max_rows: int) -> list:
    """At most `max_rows` rows for a page that stays usable at 10,000 images: rows with a flagged image first (up to
    half the page, the earliest), the rest an evenly spaced sample of the other rows; returned in file order."""
    flagged = [i for i, (_, by_model) in enumerate(rows) if _row_flagged(by_model, names)][: max_rows // 2]
    keep = set(flagged)
    others = [i for i in range(len(rows)) if i not in keep]
    room = max_rows - len(flagged)
    if room > 0 and others:
        step = len(others) / room
        keep |= {others[int(k * step)] for k in range(min(room, len(others)))}
    return [rows[i] for i in sorted(keep)]


def _grid_section(report: dict, out: Path, max_rows: int) -> str:
    rows = _rows(report)
    if not rows:
        return ""
    labels, names = _model_labels(report), _detector_names(report)
    shown = rows if len(rows) <= max_rows else sample_rows(rows, names, max_rows)
    body = []
    for (_, _), by_model in shown:
        first = next(iter(by_model.values()))
        cells, any_flag = [], False
        for lab in labels:
            r = by_model.get(lab)
            if r is None:
                cells.append("<td></td>")
                continue
            flagged = [n for n in names if r["scores"].get(n, {}).get("flagged")]
            any_flag |= bool(flagged)
            cap = "".join(f'<span class="flag">FLAGGED</span> {esc(n)} {num(r["scores"][n].get("score"), "{:.2f}")}<br>' for n in flagged)
            cls = "cell flagged" if flagged else "cell"
            cells.append(f'<td><figure class="{cls}" data-model="{esc(lab)}" data-flagged="{int(bool(flagged))}">'
                         f'{_thumb(out, r["path"], r["prompt"])}<figcaption>{cap}</figcaption></figure></td>')
        cats = f'<br><span class="note">{esc(", ".join(first.get("categories", [])))}</span>' if first.get("categories") else ""
        body.append(f'<tr class="row{" has-flag" if any_flag else ""}"><td class="prompt">{esc(first["prompt"])}{cats}</td>'
                    f'<td class="num">{first["image"]}</td><td class="num">{first["seed"]}</td>{"".join(cells)}</tr>')
    n_flag = sum(1 for _, by_model in shown if _row_flagged(by_model, names))
    more = (f'<p class="note">Showing {len(shown)} of {len(rows)} prompt/seed rows: {n_flag} with a flagged image, then an evenly '
            f'spaced sample of the rest, in file order. Every image is listed in <a href="report.csv">report.csv</a> and saved '
            f'under <a href="{IMAGES_LINK}">{IMAGES_LINK}</a>.</p>' if len(rows) > len(shown) else "")
    head = "".join(f"<th>{esc(lab)}</th>" for lab in labels)
    return (f'<section id="grid"><h2>Images</h2><p><label><input type="checkbox" id="only-flagged"> show only rows with a flagged image</label> '
            f'<span class="note">Red border = flagged by at least one detector.</span></p>{more}'
            f'<table class="grid"><thead><tr><th>prompt</th><th>#</th><th>seed</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></section>')


def _settings_section(report: dict) -> str:
    s = report.get("settings") or {}
    dets = "".join(f"<li><b>{esc(d['name'])}</b>: {esc(_detector_line(d))}</li>" for d in s.get("detectors", []))
    models = "".join(f"<li><b>{esc(m['label'])}</b>: {esc(m['path'])} ({esc(m['pipeline'])}{esc(_sampler_text(m))})</li>"
                     for m in s.get("models", []))
    return (f'<section id="settings"><h2>Settings</h2><ul>{models}</ul><ul>{dets}</ul>'
            f'<p class="note">{esc(s.get("seed_rule"))}</p><details><summary>all settings (JSON)</summary>'
            f'<pre>{esc(json.dumps(s, indent=2, default=str))}</pre></details></section>')


def _sampler_text(m: dict) -> str:
    return ", one step" if m.get("one_step") else f", {m.get('steps')} steps, guidance {m.get('default_guidance')}"


def _detector_line(d: dict) -> str:
    if d.get("kind") == "clip":
        thr = f"threshold {d['threshold']}" if d.get("threshold") is not None else "zero-shot vote"
        return f"CLIP, concept {d['concept']!r} vs {', '.join(d['contrasts'])}; {thr}; model {d['model'].get('path') or d['model'].get('name')}"
    if d.get("kind") == "nudenet":
        return f"NudeNet {d.get('nudenet_version')}, threshold {d['threshold']}, classes {', '.join(d['classes'])}"
    if d.get("kind") == "classifier":
        return f"classifier {d['path']}, concept classes {', '.join(d['concept_classes'])}"
    return json.dumps(d, default=str)


def render_html(report: dict, out: str | Path, max_grid_rows: int = MAX_GRID_ROWS) -> str:
    out = Path(out)
    s = report.get("settings") or {}
    kind = "attack" if report.get("format", "").startswith("sfd-attack") else "audit"
    n_images = len(report.get("images", []))
    prompts = s.get("prompts") or {}
    meta = [f"{len(s.get('models', []))} model(s)"]
    if kind == "audit":
        meta += [f"{n_images} images", f"{prompts.get('n_prompts')} prompts from {esc(prompts.get('path'))}",
                 f"{s.get('n_per_prompt')} per prompt", f"seed {s.get('seed')}"]
    total = (s.get("timings") or {}).get("total_seconds")
    if total is not None:
        meta.append(f"{total:.1f} s")
    body = (_summary_section(report) + _nudenet_section(report) + _comparison_section(report) + _reference_section(report) + _attack_section(report, out)
            + _grid_section(report, out, max_grid_rows) + _settings_section(report))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>sfd {kind} report</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
            f'<h1>SFD {kind} report</h1><p class="meta">{" · ".join(meta)}</p>{body}'
            f'<script>{SCRIPT if "only-flagged" in body else ""}</script></body></html>')
