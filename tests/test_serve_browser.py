"""The explorer in a real browser: Debian's chromium, headless, driven by Playwright (its driver
only: no browser is downloaded), against `vaekit.serve` on a free port, started here in a thread
and stopped afterwards. One browser for the module; each test opens a fresh context and fails on
any error in the page's console.

In CI (VAEKIT_CI set) a missing chromium or Playwright fails these tests instead of skipping them.
``VAEKIT_SCREENSHOT=docs/images/serve.png`` makes ``test_screenshot`` write the README's picture
(``VAEKIT_SCREENSHOT_RUNS=RUN[:RUN...]`` serves those runs for it instead of the tiny ones).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from serve_helpers import BROWSER_ARGS, AnomalyStub, calibrated, noise_png, pixels

CHROMIUM = Path("/usr/bin/chromium")


def require_browser() -> None:
    problems = []
    if not CHROMIUM.is_file():
        problems.append(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("Playwright is missing (pip install playwright; its driver only)")
    if problems:
        if os.environ.get("VAEKIT_CI"):
            pytest.fail("browser tests need Debian's chromium and Playwright in CI: " + "; ".join(problems))
        pytest.skip("; ".join(problems))


@dataclass
class Served:
    url: str
    runs: dict[str, Path]


def start(runs: list[Path]):
    from vaekit.serve import Server

    server = Server(runs, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the explorer did not start"
    return server, thread


@pytest.fixture(scope="module")
def browser():
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # launch() gives every browser a fresh, empty profile (user-data dir) of its own
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(browser, serve_runs):
    runs = serve_runs
    with calibrated(runs["conv"], AnomalyStub(score=5.0, threshold=4.0, flagged=True)):
        server, thread = start([runs["mlp"], runs["conv"]])
        try:
            yield Served(server.url, runs)
        finally:
            server.stop()
            thread.join(30)


@dataclass
class Tab:
    page: object
    errors: list[str] = field(default_factory=list)
    network: list[str] = field(default_factory=list)

    def open(self, url: str, run: str) -> Tab:
        self.page.goto(url)
        self.ready(run)
        return self

    def ready(self, run: str) -> None:
        self.page.wait_for_selector(f'body[data-ready="{run}"]')

    def src(self, selector: str) -> str:
        return self.page.get_attribute(selector, "src") or ""

    def wait_src_change(self, selector: str, before: str) -> str:
        self.page.wait_for_function("([sel, old]) => { const s = document.querySelector(sel).src; "
                                    "return s.startsWith('data:image/png') && s !== old; }", arg=[selector, before])
        return self.src(selector)


@pytest.fixture
def tab(browser, served):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    t = Tab(page)

    def console(message) -> None:
        if message.type == "error":
            # the browser's own line for an HTTP error answer is not a JavaScript error
            (t.network if message.text.startswith("Failed to load resource") else t.errors).append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: t.errors.append(f"uncaught: {e}"))
    t.open(served.url, "mlp")
    yield t
    context.close()


def api_post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(url + path.lstrip("/"), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def test_the_page_shows_every_panel_without_console_errors(tab):
    page = tab.page
    assert page.eval_on_selector_all("#run-select option", "os => os.map(o => o.value)") == ["mlp", "conv"]
    for image in ("#samples-image", "#slider-image", "#interp-linear", "#interp-spherical"):
        assert tab.src(image).startswith("data:image/png;base64,"), image
    assert page.is_visible("#class-picker")  # the mlp run is conditional
    assert page.locator("#sliders input[type=range]").count() == 4
    assert re.search(r"decoded in [\d.]+ ms", page.inner_text("#decode-time"))
    painted = page.evaluate("() => { const c = document.getElementById('map-canvas'); "
                            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; "
                            "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }")
    assert painted > 500  # 180 dots of the latent map
    assert "PC1" in page.inner_text("#map-axes")
    assert tab.errors == [] and tab.network == []


def test_moving_a_slider_redraws_the_decoded_image(tab, served):
    page = tab.page
    before = tab.src("#slider-image")
    slider = page.locator("#sliders input[type=range]").first
    slider.focus()
    slider.press("End")  # the keyboard, as a person would: the slider jumps to its maximum
    after = tab.wait_src_change("#slider-image", before)
    z, unit, label = page.evaluate("() => [state.z, state.sliderUnits[0], Number($('class-select').value)]")
    assert z[unit] == pytest.approx(3.0)
    assert api_post(served.url, "/api/runs/mlp/decode", {"z": z, "label": label})["image"] == after
    slider.press("Home")
    tab.wait_src_change("#slider-image", after)
    assert re.search(r"decoded in [\d.]+ ms · server [\d.]+ ms · round trip [\d.]+ ms", page.inner_text("#decode-time"))
    assert tab.errors == [] and tab.network == []


def test_an_upload_shows_its_reconstruction_its_numbers_and_its_anomaly_score(tab, served, tmp_path):
    page = tab.page
    tab.open(served.url + "#run=conv", "conv")
    image = tmp_path / "photo.png"
    image.write_bytes(noise_png(20, 20))
    page.set_input_files("#upload-input", str(image))
    page.wait_for_selector("#upload-result", state="visible")
    assert pixels(tab.src("#upload-image")).shape == pixels(tab.src("#upload-recon")).shape == (8, 8, 3)
    metrics = page.inner_text("#upload-metrics")
    assert "ELBO (nats)" in metrics and "NLL, 100 importance samples" in metrics
    assert page.inner_text("#upload-resized") == "resized from 20×20 to 8×8 px"
    assert page.inner_text("#upload-anomaly") == "anomaly score 5.000 against threshold 4.000: flagged as anomalous"
    assert page.eval_on_selector_all("#interp-a-kind option", "os => os.map(o => o.value)") == ["test", "upload:0"]
    before = tab.src("#interp-linear")
    page.click("#upload-as-b")  # interpolate from test example 0 to the upload
    tab.wait_src_change("#interp-linear", before)
    assert tab.errors == [] and tab.network == []


def test_switching_runs_rebuilds_the_page(tab):
    page = tab.page
    samples = tab.src("#samples-image")
    page.select_option("#run-select", "conv")
    tab.ready("conv")
    assert "ConvVAE" in page.inner_text("#run-summary") and page.url.endswith("#run=conv")
    assert not page.is_visible("#class-picker")  # the conv run is not conditional
    assert tab.src("#samples-image") != samples
    assert page.eval_on_selector_all("#prior-select option", "os => os.map(o => o.value)") == ["standard"]
    page.select_option("#run-select", "mlp")
    tab.ready("mlp")
    assert page.is_visible("#class-picker")
    assert page.eval_on_selector_all("#prior-select option", "os => os.map(o => o.value)") == ["standard", "gmm"]
    before = tab.src("#samples-image")
    page.select_option("#prior-select", "gmm")
    tab.wait_src_change("#samples-image", before)
    assert tab.errors == [] and tab.network == []


def test_clicking_the_latent_map_shows_that_example(tab):
    page = tab.page
    page.locator("#map-canvas").scroll_into_view_if_needed()
    x, y = page.evaluate("""() => {
        const c = document.getElementById('map-canvas'), r = c.getBoundingClientRect();
        const [px, py] = mapFrame()(state.map.points[7]);
        return [r.left + px * r.width / c.width, r.top + py * r.height / c.height]; }""")
    page.mouse.click(x, y)
    page.wait_for_selector("#selected", state="visible")
    title = page.inner_text("#selected-title")
    assert re.fullmatch(r"test example \d+ · class \d", title)
    assert tab.src("#selected-recon").startswith("data:image/png")
    index = int(title.split()[2])
    before = tab.src("#slider-image")
    page.click("#selected-explore")  # its code becomes the sliders' starting point
    tab.wait_src_change("#slider-image", before)
    assert page.evaluate("() => state.z") == pytest.approx(page.evaluate("() => state.selected.z"))
    assert page.evaluate("() => state.selected.index") == index
    assert tab.errors == [] and tab.network == []


def test_a_bad_upload_is_reported_and_the_page_keeps_working(tab, tmp_path):
    page = tab.page
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    page.set_input_files("#upload-input", str(bad))
    page.wait_for_function("() => document.getElementById('status').textContent.includes('not an image')")
    assert page.get_attribute("#status", "class") == "error"
    before = tab.src("#slider-image")
    slider = page.locator("#sliders input[type=range]").nth(1)
    slider.focus()
    slider.press("End")
    tab.wait_src_change("#slider-image", before)
    assert tab.errors == []  # no JavaScript error; the browser only logged the server's 415 answer
    assert len(tab.network) == 1 and "415" in tab.network[0]


def test_screenshot(browser, served, tmp_path):
    """Writes the README's screenshot when VAEKIT_SCREENSHOT names a file (a small PNG, quantised)."""
    out = os.environ.get("VAEKIT_SCREENSHOT")
    if not out:
        pytest.skip("set VAEKIT_SCREENSHOT=docs/images/serve.png to write the README's screenshot")
    given = [Path(p) for p in os.environ.get("VAEKIT_SCREENSHOT_RUNS", "").split(os.pathsep) if p]
    server, thread = start(given) if given else (None, None)
    url = server.url if server else served.url
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("body[data-ready]:not([data-ready=''])")
        run = page.evaluate("() => state.run")
        example = api_get(url, f"/api/runs/{run}/examples/7")
        image = tmp_path / "upload.png"
        image.write_bytes(base64.b64decode(example["image"].partition(",")[2]))
        if page.is_visible("#class-picker") and example["label"] is not None:
            page.select_option("#class-select", str(example["label"]))
        page.set_input_files("#upload-input", str(image))
        page.wait_for_selector("#upload-result", state="visible")
        page.evaluate("() => showExample(3)")
        page.wait_for_selector("#selected", state="visible")
        slider = page.locator("#sliders input[type=range]").first
        slider.focus()
        for _ in range(30):
            slider.press("ArrowRight")
        page.wait_for_timeout(500)
        save_small_png(page.screenshot(full_page=True), Path(out))
        context.close()
    finally:
        if server:
            server.stop()
            thread.join(30)


def api_get(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path.lstrip("/"), timeout=60) as r:
        return json.loads(r.read())


def save_small_png(data: bytes, path: Path) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        small = im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    small.save(path, format="PNG", optimize=True)
