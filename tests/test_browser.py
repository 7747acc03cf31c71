"""The dashboard in a real headless Chromium: what only a browser can do (clicking a pixel of a chart), shared
links, switching the data set, and a screenshot of every page for the README (docs/screenshots/<page>.png).

Runs `streamlit run app.py` on a free port with the default data set (Fashion-MNIST when installed, else the
MNIST 5k subset). Needs Chromium at /usr/bin/chromium (`apt-get install chromium`) and the playwright package;
skipped with that reason otherwise. Run with `pytest -m browser`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from servers import CHROMIUM, running

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"
LONG = 300_000  # ms: a cold start computes the data statistics (and, with a trained UNet, its fields)
VIEWPORT = {"width": 1280, "height": 720}  # a projector: the key figures must fit this first screen
if str(ROOT) not in sys.path:  # the app's ui package lives beside app.py
    sys.path.insert(0, str(ROOT))

if not Path(CHROMIUM).exists():
    pytest.skip(f"Chromium not found at {CHROMIUM}: `apt-get install chromium`", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

# which element is which: Streamlit gives each keyed element the class st-key-<key>
PICKER = ".st-key-picker [data-testid=pixel-picker]"
GRID = ".st-key-field_grid .js-plotly-plot"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LOCALITY_APP_DATASET", None)  # the default data set: what the README shows
    with running("app.py", env, tmp_path_factory.mktemp("streamlit") / "server.log") as url:
        yield url


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


def click_pixel(pg, row: int, col: int, size: int = 28, picker: str = PICKER) -> None:
    """Move to pixel (row, col) of the picker (a ``size`` x ``size`` image), as a hand would, and click it."""
    box = pg.locator(picker).bounding_box()
    x, y = box["x"] + (col + 0.5) * box["width"] / size, box["y"] + (row + 0.5) * box["height"] / size
    pg.mouse.move(x, y, steps=4)
    pg.mouse.click(x, y)


def grid_digest(pg) -> str:
    """A hash of the maps' data as the browser holds it (changes when the maps change)."""
    data = pg.eval_on_selector(GRID, "gd => JSON.stringify(gd.data.map(t => [t.name, t.z]))")
    return hashlib.sha256(data.encode()).hexdigest()


def open_sidebar(pg) -> None:
    """The sidebar starts collapsed (the figures get the width): open it."""
    button = pg.locator('[data-testid="stExpandSidebarButton"]')
    if button.count():
        button.first.click()
        pg.wait_for_timeout(500)


def header_boxes(pg) -> list[dict]:
    """Bounding boxes of the grid's column-header lines (text with 'σ=' or 't=')."""
    return pg.eval_on_selector_all(f"{GRID} .annotation-text tspan, {GRID} .annotation-text", """els => els
        .filter(e => /σ=|t[=≈<]|cos /.test(e.textContent) && !e.querySelector('tspan'))
        .map(e => { const b = e.getBoundingClientRect();
                    return {text: e.textContent, x: b.left, y: b.top, w: b.width, h: b.height}; })""")


def test_first_screen_click_back_and_share(server, page, browser):
    """At 1280x720: /sensitivity is an address, the image and the whole field grid are on the first screen with
    tiles of at least 90 px; every click counts; Back and Forward each undo one click; a copied URL reopens the
    same view; switching pages keeps the pixel."""
    page.goto(server + "/sensitivity?unet=false")
    maps_ready(page, "pixel row 14, col 14")
    assert page.url.startswith(server + "/sensitivity")  # not rewritten to "/", no "page not found"
    assert not page.get_by_text("Page not found").count()
    for selector in (PICKER, GRID):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["y"] >= 0, selector
        assert box["x"] + box["width"] <= VIEWPORT["width"] and box["y"] + box["height"] <= VIEWPORT["height"], \
            f"{selector} leaves the first screen: {box}"
    tile = page.eval_on_selector(GRID, "gd => gd._fullLayout.xaxis.l2p(28) - gd._fullLayout.xaxis.l2p(0)")
    assert tile >= 90, f"map tiles of {tile:.0f} px"

    before = grid_digest(page)
    click_pixel(page, 7, 5)  # the first click after the page loaded
    maps_ready(page, "pixel row 7, col 5", timeout=60_000)
    assert "pixel=7%2C5" in page.url or "pixel=7,5" in page.url
    first = grid_digest(page)
    assert first != before, "the maps did not change after the click"
    click_pixel(page, 20, 3)
    maps_ready(page, "pixel row 20, col 3", timeout=60_000)
    page.go_back()
    maps_ready(page, "pixel row 7, col 5", timeout=60_000)  # one press: the previous pixel
    page.go_forward()
    maps_ready(page, "pixel row 20, col 3", timeout=60_000)
    page.go_back()
    maps_ready(page, "pixel row 7, col 5", timeout=60_000)

    context = browser.new_context(viewport=VIEWPORT)  # the URL reproduces the view in a fresh browser
    other = context.new_page()
    other.goto(page.url)
    maps_ready(other, "pixel row 7, col 5")
    assert grid_digest(other) == first
    context.close()

    open_sidebar(page)  # another page keeps the pixel
    page.get_by_role("link", name="Principal components").click()
    settle(page, "Correlation with pixel (row 7, col 5)")


def test_headers_of_twelve_noise_levels_never_overlap(server, page):
    timesteps = "&".join(f"t={t}" for t in (999, 900, 800, 700, 600, 500, 400, 300, 200, 100, 50, 0))
    page.goto(f"{server}/sensitivity?{timesteps}")
    maps_ready(page, "12 noise levels")
    boxes = header_boxes(page)
    assert len(boxes) >= 24, boxes  # two or three lines per column
    for a in boxes:
        for b in boxes:
            if a is b:
                continue
            apart = a["x"] + a["w"] <= b["x"] + 0.5 or b["x"] + b["w"] <= a["x"] + 0.5 \
                or a["y"] + a["h"] <= b["y"] + 0.5 or b["y"] + b["h"] <= a["y"] + 0.5
            assert apart, f"{a['text']!r} overlaps {b['text']!r}"
    grid = page.locator(GRID).bounding_box()
    assert grid["x"] + grid["width"] <= VIEWPORT["width"]


def test_switch_the_data_set(server, page):
    page.goto(server + "/sensitivity?unet=false")
    maps_ready(page, "pixel row 14, col 14")
    open_sidebar(page)
    box = page.locator(".st-key-dataset")
    box.click()
    page.keyboard.type("faces")
    page.keyboard.press("Enter")
    maps_ready(page, "training images of 25x25")
    assert "dataset=faces" in page.url
    click_pixel(page, 3, 20, size=25)
    maps_ready(page, "pixel row 3, col 20", timeout=60_000)


def test_shipped_diffusers_network_has_its_rows_on_fashion_mnist(server, page):
    """Fashion-MNIST's shipped diffusers UNet2DModel (issue 25): its own row of fields on Sensitivity (behind the
    toggle under the grid, in the URL), and its own samples on Samples."""
    pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install diffusers==0.42.1")
    page.goto(server + "/sensitivity?t=500&t=100&nets=true")
    maps_ready(page, "How local?")
    if not page.get_by_text("fashion-mnist", exact=False).count():
        pytest.skip("the default data set here is not Fashion-MNIST (not installed)")
    names = page.eval_on_selector(GRID, "gd => gd.data.map(t => t.name)")
    assert "diffusers UNet (DDPM) mean |J|" in names, names
    page.goto(server + "/samples?models=diffusers-unet&n=4")
    settle(page, "Trajectories")
    assert page.locator(".st-key-samples_diffusers-unet .js-plotly-plot").count() == 1
    assert not page.locator('[data-testid="stException"]').count()


PAGE_WAITS = {  # url path -> text that shows the page has finished its computations
    "sensitivity": "How local?",
    "samples": "Trajectories",
    "components": "Which pixels vary together?",
    "jacobian": "Dimensions kept against noise",
    "experiments": "What the numbers say",
    "generalisation": "start from the same noise",  # in both states: subset networks shipped, or what it waits for
    "your_data": "Imported data sets",
}


# the samplers that take seconds on a CPU (the analytical denoiser and the patch machines take minutes there)
SAMPLE_QUERY = "?models=unet&models=wiener&models=optimal&n=8"


@pytest.mark.parametrize("url_path", list(PAGE_WAITS))
def test_screenshot_every_page(server, page, url_path):
    from ui.navigation import PAGES

    assert url_path in {p.url_path for p in PAGES}
    query = SAMPLE_QUERY if url_path == "samples" else ""
    page.goto(f"{server}/{url_path}{query}")
    settle(page, PAGE_WAITS[url_path])  # every page shows its default view without a click
    page.mouse.move(0, 0)  # no hover tooltip in the screenshot
    assert not page.locator('[data-testid="stException"]').count(), "the page shows a traceback"
    settle(page)  # the README shows each page's first screen at a projector's 1280x720
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{url_path}.png"))
    assert (SHOTS / f"{url_path}.png").stat().st_size > 20_000
