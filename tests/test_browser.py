"""The dashboard in a real headless Chromium: what only a browser can do (clicking a pixel of a chart), shared
links, switching the data set, and a screenshot of every page for the README (docs/screenshots/<page>.png).

Runs `streamlit run app.py` on a free port with the default data set (Fashion-MNIST when installed, else the
MNIST 5k subset). Needs Chromium at /usr/bin/chromium (`apt-get install chromium`) and the playwright package;
skipped with that reason otherwise. Run with `pytest -m browser`.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "docs" / "screenshots"
LONG = 300_000  # ms: a cold start computes the data statistics (and, with a trained UNet, its fields)
VIEWPORT = {"width": 1600, "height": 1000}
if str(ROOT) not in sys.path:  # the app's ui package lives beside app.py
    sys.path.insert(0, str(ROOT))

if not Path(CHROMIUM).exists():
    pytest.skip(f"Chromium not found at {CHROMIUM}: `apt-get install chromium`", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

# which chart is which: the plotly charts carry their widget key in the element's class name
PICKER = ".st-key-picker .js-plotly-plot"
GRID = ".st-key-field_grid .js-plotly-plot"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LOCALITY_APP_DATASET", None)  # the default data set: what the README shows
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        else:
            raise RuntimeError(f"streamlit did not become healthy in 60 s: {log_path.read_text()[-2000:]}")
        yield url
        assert "Traceback" not in log_path.read_text(), log_path.read_text()[-4000:]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    yield pg
    context.close()


def settle(pg, text: str | None = None, timeout: int = LONG) -> None:
    """Wait for ``text`` to appear (if given), for the script run to finish and for every element to be drawn
    (the frontend shows skeletons while it loads the code of a widget or chart)."""
    if text:
        pg.get_by_text(text, exact=False).first.wait_for(timeout=timeout)
    pg.wait_for_timeout(400)
    pg.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)
    pg.wait_for_function("() => !document.querySelector('[data-testid^=\"stSkeleton\"]')", timeout=timeout)
    pg.wait_for_timeout(300)


def maps_ready(pg, text: str, timeout: int = LONG) -> None:
    """The Sensitivity page shows ``text`` and its picker and maps are drawn."""
    settle(pg, text, timeout)
    pg.wait_for_selector(PICKER, timeout=timeout)
    pg.wait_for_selector(GRID, timeout=timeout)
    settle(pg, text, timeout)


def pixel_position(pg, row: int, col: int) -> tuple[float, float]:
    """Screen position of pixel (row, col) in the picker, from plotly's own axis mapping."""
    return pg.eval_on_selector(PICKER, """(gd, [r, c]) => {
        const L = gd._fullLayout, box = gd.getBoundingClientRect();
        return [box.left + L._size.l + L.xaxis.l2p(c), box.top + L._size.t + L.yaxis.l2p(r)]; }""", [row, col])


def grid_digest(pg) -> str:
    """A hash of the maps' data as the browser holds it (changes when the maps change)."""
    data = pg.eval_on_selector(GRID, "gd => JSON.stringify(gd.data.map(t => [t.name, t.z]))")
    return hashlib.sha256(data.encode()).hexdigest()


def test_click_a_pixel_then_share_the_link(server, page, browser):
    page.goto(server + "/?unet=false")
    maps_ready(page, "Pixel (row 14, col 14)")
    before_digest = grid_digest(page)
    before_png = page.locator(GRID).screenshot()
    x, y = pixel_position(page, 7, 5)
    page.mouse.click(x, y)
    maps_ready(page, "Pixel (row 7, col 5)", timeout=60_000)
    assert "row=7" in page.url and "col=5" in page.url
    after_digest = grid_digest(page)
    assert after_digest != before_digest, "the maps did not change after the click"
    assert page.locator(GRID).screenshot() != before_png

    # a second click on the same pixel (an empty selection) keeps the view
    page.mouse.click(x, y)
    settle(page)
    assert page.get_by_text("Pixel (row 7, col 5)").first.is_visible()

    # the URL reproduces the view in a fresh browser
    context = browser.new_context(viewport=VIEWPORT)
    other = context.new_page()
    other.goto(page.url)
    maps_ready(other, "Pixel (row 7, col 5)")
    assert grid_digest(other) == after_digest
    context.close()


def test_switch_the_data_set(server, page):
    page.goto(server + "/?unet=false")
    maps_ready(page, "Pixel (row 14, col 14)")
    box = page.locator(".st-key-dataset")
    box.click()
    page.keyboard.type("faces")
    page.keyboard.press("Enter")
    maps_ready(page, "25x25 images of faces")
    assert "dataset=faces" in page.url
    x, y = pixel_position(page, 3, 20)
    page.mouse.click(x, y)
    maps_ready(page, "Pixel (row 3, col 20)", timeout=60_000)


PAGE_WAITS = {  # url path -> text that shows the page has finished its computations
    "sensitivity": "How local?",
    "samples": "Trajectories",
    "components": "Which pixels vary together?",
    "jacobian": "Dimensions kept against noise",
    "experiments": "50 % squares",
    "your_data": "Imported data sets",
}


# the samplers that take seconds on a CPU (the analytical denoiser and the patch machines take minutes there)
SAMPLE_QUERY = "?models=unet&models=wiener&models=optimal&n=8"


@pytest.mark.parametrize("url_path", list(PAGE_WAITS))
def test_screenshot_every_page(server, page, url_path):
    from ui.navigation import PAGES

    assert url_path in {p.url_path for p in PAGES}
    default = next(p.url_path for p in PAGES if p.default)
    query = SAMPLE_QUERY if url_path == "samples" else ""
    page.goto(f"{server}/{'' if url_path == default else url_path}{query}")  # the default page lives at /
    settle(page, PAGE_WAITS[url_path])  # every page shows its default view without a click
    if url_path == "jacobian" and page.locator(".st-key-jb_all button").count():  # a trained UNet is here
        page.locator(".st-key-jb_all button").click()  # its exact tr J at every noise level, beside Wiener's
        page.locator(".st-key-jb_all button").wait_for(state="detached", timeout=LONG)
        settle(page)
    page.mouse.move(0, 0)  # no hover tooltip in the screenshot
    assert not page.locator('[data-testid="stException"]').count(), "the page shows a traceback"
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMainBlockContainer\"]').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(6000, max(VIEWPORT["height"], height + 80))})
    page.wait_for_timeout(1500)  # plotly re-lays out to the new size
    settle(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{url_path}.png"))
    assert (SHOTS / f"{url_path}.png").stat().st_size > 20_000
