"""The demo page in headless Chromium, as a newcomer sees it after `make quickstart`: without any click, the
first screen shows images of both models (the newest run beside its teacher, a few seeds each); Generate then
redraws them; a bad input shows a message.

Needs Debian's chromium and the `playwright` Python package (its own browser download is not used:
`executable_path` points at the system Chromium); skips with a reason when either is missing. The models are
the tiny random stand-ins of test_demo.py, the digits run dated newest (what `make quickstart` leaves). Set
SFD_SCREENSHOT_DIR to keep the screenshot.
"""

import os
import shutil

import pytest
import torch

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from test_demo import build_demo_world, demo_config, make_newest  # noqa: E402
from test_report_browser import CHROMIUM_ARGS, find_chromium  # noqa: E402

LOCAL = ("http://127.0.0.1", "data:", "blob:", "about:")


LOADED = """sels => sels.every(([sel, n]) => {
    const imgs = [...document.querySelectorAll(sel)];
    return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); })"""
SHOWN = [["#base-image img", 1], ["#cmp-image img", 1], ["#base-seeds img", 3], ["#cmp-seeds img", 3]]


def test_demo_first_screen_shows_both_models_without_a_click(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found (apt-get install -y chromium, or set SFD_CHROMIUM)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    from sfd.app.demo import launch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    world = build_demo_world(tmp_path / "world")
    make_newest(world["digits_erased"], world["erased"])  # `make quickstart` after a shapes erase
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
                # No click: the page draws both models as it opens.
                page.wait_for_function(LOADED, arg=SHOWN, timeout=60_000)
                page.wait_for_selector("#scores table", timeout=30_000)
                hint = page.locator("#hint").inner_text()
                assert "digits-no-one" in hint and "erased: one" in hint and "**" not in hint  # markdown rendered, not raw
                assert page.locator("#status").inner_text().startswith("Generated as the page opened. Done: same seed 0")
                assert page.locator("#class input").input_value() == "one"  # the erased class, to show the erasure
                sizes = page.eval_on_selector_all(
                    "#base-image img, #cmp-image img, #base-seeds img, #cmp-seeds img",
                    "imgs => imgs.map(i => [i.naturalWidth, i.getBoundingClientRect().width, i.getBoundingClientRect().height])")
                assert len(sizes) == 8 and all(n >= 128 and w > 30 and h > 30 for n, w, h in sizes), sizes
                assert "one step" in page.locator("#cmp-info").inner_text()
                assert "erased class (one)" in page.locator("#scores").inner_text()
                page.screenshot(path=str(shot), full_page=True)
                # Generate redraws from the Seed box; the galleries follow.
                page.fill("#seed input", "5")
                page.click("#generate")
                page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Done: same seed 5')",
                                       timeout=60_000)
                page.wait_for_function("() => document.querySelector('#cmp-seeds').innerText.includes('seed 7')", timeout=60_000)
                # A bad input shows a message on the page, not an error page.
                page.fill("#seed input", "-1")
                page.click("#generate")
                page.wait_for_function("() => document.querySelector('#status').innerText.includes('seed must be')", timeout=60_000)
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
