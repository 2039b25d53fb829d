"""report.html renders in headless Chromium: the image grid, the flagged marks and the charts are there.

Needs Debian's chromium (`apt-get install -y chromium`) and the `playwright` Python package (its own browser
download is not used: `executable_path` points at the system Chromium). Skips with a reason when either is missing.
The report is synthetic (coloured squares, some flagged), so no model is needed.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sfd.evaluators.audit import rate_summary, save_png
from sfd.evaluators.report import write_reports

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


def find_chromium() -> str | None:
    for candidate in (os.environ.get("SFD_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                      shutil.which("chromium") or "", shutil.which("chromium-browser") or "", shutil.which("google-chrome") or ""):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def synthetic_report(out: Path) -> tuple[dict, int]:
    """Two models x 4 prompts x 2 images; the second model is flagged on red prompts only."""
    colours = {"red": (0.9, 0.1, 0.1), "blue": (0.1, 0.2, 0.9), "green": (0.1, 0.7, 0.2), "yellow": (0.9, 0.8, 0.1)}
    det = "clip:red"
    images, flagged = [], 0
    for m, label in enumerate(("teacher", "erased")):
        for i, (name, rgb) in enumerate(colours.items()):
            for j in range(2):
                img = torch.tensor(rgb).view(3, 1, 1).expand(3, 32, 32).clone()
                img[:, 8:24, 8:24] = 0.5
                rel = f"images/m{m}/{i:05d}_{j:03d}.png"
                save_png(img, out / rel)
                hit = name == "red" and label == "teacher"
                flagged += hit
                images.append({"model": label, "model_index": m, "prompt_index": i, "id": None, "prompt": f"a {name} square",
                               "categories": ["demo"], "image": j, "seed": i * 10_000 + j, "guidance": 5.0, "steps": 20,
                               "path": rel, "scores": {det: {"flagged": hit, "score": 0.9 if hit else 0.1}}})
    summary = {lab: {det: rate_summary([r["scores"][det]["flagged"] for r in images if r["model"] == lab])} for lab in ("teacher", "erased")}
    report = {
        "format": "sfd-audit/1",
        "settings": {"models": [{"label": "teacher", "path": "/models/teacher", "pipeline": "StableDiffusionPipeline", "one_step": False,
                                 "steps": 20, "default_guidance": 5.0},
                                {"label": "erased", "path": "/models/erased", "pipeline": "OneStepTextPipeline", "one_step": True}],
                     "detectors": [{"name": det, "kind": "clip", "concept": "red", "contrasts": ["blue", "green"], "threshold": None,
                                    "model": {"source": "local", "path": "/models/clip"}}],
                     "prompts": {"path": "demo.txt", "n_prompts": 4}, "n_per_prompt": 2, "seed": 0, "seed_rule": "demo"},
        "summary": summary,
        "comparison": {"reference": "teacher", "note": "demo", "models": {"erased": {det: {
            "rate": 0.0, "reference_rate": 0.25, "difference": -0.25, "diff_ci_low": -0.5, "diff_ci_high": -0.05, "pairs": 8,
            "both": 0, "only_reference": 2, "only_model": 0, "neither": 6, "mcnemar_p": 0.5}}}},
        "images": images,
    }
    return report, flagged


def test_report_html_renders_in_headless_chromium(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found (apt-get install -y chromium, or set SFD_CHROMIUM)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    report, n_flagged = synthetic_report(tmp_path)
    paths = write_reports(report, tmp_path)
    html = paths["html"].read_text()
    assert 'src="http' not in html and 'href="http' not in html and "<link" not in html  # self-contained
    shot = tmp_path / "shot.png"
    with playwright.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        except Exception as e:  # a broken or sandbox-less browser install
            pytest.skip(f"Chromium at {chromium} does not start: {str(e).splitlines()[0]}")
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(paths["html"].as_uri())
            assert page.title() == "sfd audit report"
            assert page.locator("table.grid figure.cell").count() == 16
            assert page.locator("figure.cell.flagged").count() == n_flagged == 2
            assert page.locator("figure.cell.flagged .flag").first.inner_text() == "FLAGGED"
            assert page.locator("table.grid thead th").all_inner_texts()[-2:] == ["teacher", "erased"]
            # Images are decoded (data URIs) and shown at a readable size.
            widths = page.eval_on_selector_all("table.grid img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert widths == [32] * 16
            assert page.locator("#summary svg rect.bar").count() == 2
            assert page.locator("#comparison").inner_text().count("-25.0 pts") == 1
            # The filter hides rows without a flagged image.
            page.check("#only-flagged")
            assert page.locator("table.grid tbody tr:visible").count() == 2
            page.uncheck("#only-flagged")
            page.screenshot(path=str(shot), full_page=True)
            assert all(u.startswith(("file:", "data:")) for u in requests), requests
        finally:
            browser.close()
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size[0] >= 1000 and img.size[1] > 600
    # The red border of flagged cells (#d32f2f) is on the screenshot.
    rgb = np.asarray(img).astype(int)
    red = int((np.abs(rgb - np.array([0xD3, 0x2F, 0x2F])) < 12).all(-1).sum())
    assert red > 100


def test_report_escapes_prompts_and_writes_all_files(tmp_path):
    report, _ = synthetic_report(tmp_path)
    report["images"][0]["prompt"] = '<script>alert("x")</script> & "quotes"'
    paths = write_reports(report, tmp_path)
    html = paths["html"].read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert html.count("<script>") == 1  # only the page's own filter script
    import csv
    import json

    rows = list(csv.reader(paths["csv"].open()))
    assert rows[1][2] == '<script>alert("x")</script> & "quotes"' and len(rows) == 1 + 8
    assert json.loads(paths["json"].read_text())["summary"] == report["summary"]
    assert paths["summary_csv"].read_text().splitlines()[0].startswith("model,detector,n,flagged,rate,ci_low,ci_high")
