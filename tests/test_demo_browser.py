"""The demo page in headless Chromium: click Generate, both images appear (loaded, non-zero size), screenshot.

Needs Debian's chromium and the `playwright` Python package (its own browser download is not used:
`executable_path` points at the system Chromium); skips with a reason when either is missing. The models are
the tiny random stand-ins of test_demo.py. Set SFD_SCREENSHOT_DIR to keep the screenshot.
"""

import os
import shutil

import pytest
import torch

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from test_demo import build_demo_world, demo_config  # noqa: E402
from test_report_browser import CHROMIUM_ARGS, find_chromium  # noqa: E402

LOCAL = ("http://127.0.0.1", "data:", "blob:", "about:")


def test_demo_page_generates_both_images_in_headless_chromium(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found (apt-get install -y chromium, or set SFD_CHROMIUM)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    from app.demo import launch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    world = build_demo_world(tmp_path / "world")
    demo, app, url = launch(demo_config(world), host="127.0.0.1", port=0, block=False, quiet=True)
    shot = tmp_path / "demo.png"
    try:
        with playwright.sync_playwright() as p:
            try:
                browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            except Exception as e:  # a broken or sandbox-less browser install
                pytest.skip(f"Chromium at {chromium} does not start: {str(e).splitlines()[0]}")
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                requests = []
                page.on("request", lambda r: requests.append(r.url))
                page.goto(url, wait_until="domcontentloaded", timeout=60_000)
                page.wait_for_selector("#generate", timeout=60_000)
                hint = page.locator("#hint").inner_text()
                assert "Comparing" in hint and "erased: red" in hint and "**" not in hint  # markdown rendered, not raw
                assert page.locator("#prompt textarea").input_value() == "a red circle"
                page.click("#generate")
                page.wait_for_function(
                    """() => ['#base-image img', '#cmp-image img'].every(s => {
                           const i = document.querySelector(s);
                           return i && i.complete && i.naturalWidth > 0; })""", timeout=120_000)
                page.wait_for_selector("#scores table", timeout=30_000)
                sizes = page.eval_on_selector_all(
                    "#base-image img, #cmp-image img",
                    "imgs => imgs.map(i => [i.naturalWidth, i.getBoundingClientRect().width, i.getBoundingClientRect().height])")
                assert len(sizes) == 2 and all(n >= 128 and w > 50 and h > 50 for n, w, h in sizes), sizes
                assert "one step" in page.locator("#cmp-info").inner_text()
                assert "CLIP: red" in page.locator("#scores").inner_text()
                assert page.locator("#status").inner_text().startswith("Done")
                page.screenshot(path=str(shot), full_page=True)
                # A bad input shows a message on the page, not an error page.
                page.fill("#prompt textarea", "")
                page.click("#generate")
                page.wait_for_function("() => document.querySelector('#status').innerText.includes('prompt is empty')", timeout=60_000)
                assert "Traceback" not in page.locator("body").inner_text()
                outside = [u for u in requests if not u.startswith(LOCAL)]
                assert not outside, f"the page fetched from outside this machine: {outside[:5]}"
            finally:
                browser.close()
    finally:
        demo.close()
        torch.set_num_threads(before)
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size[0] >= 1200 and img.size[1] > 600
    if os.environ.get("SFD_SCREENSHOT_DIR"):
        os.makedirs(os.environ["SFD_SCREENSHOT_DIR"], exist_ok=True)
        shutil.copy(shot, os.path.join(os.environ["SFD_SCREENSHOT_DIR"], "demo.png"))
