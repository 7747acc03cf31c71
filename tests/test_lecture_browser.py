"""A talk, in a real headless Chromium against `streamlit run serve.py`: long work as jobs that survive the tab, the
warm-up filling every default view before anyone asks, presentation mode's figure text, a page's own address, an
unusable cache folder and home, and the retry of a lazily loaded chunk that failed.

Each test starts its own server (its own cache folder and settings) on a free port. Run with `pytest -m browser`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

import pytest
import torch
from servers import CHROMIUM, running

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
VIEWPORT = {"width": 1280, "height": 720}
LONG = 300_000  # ms
SMALL_GRF = "grf:n_train=300,n_test=16"

if not Path(CHROMIUM).exists():
    pytest.skip(f"Chromium not found at {CHROMIUM}: `apt-get install chromium`", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


@contextlib.contextmanager
def serve(tmp_path: Path, **env):
    """`streamlit run serve.py` with ``env`` on a free port; yields its URL; stops it and checks its log."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "LOCALITY_CACHE_DIR": str(tmp_path / "cache"), **env}
    full.pop("LOCALITY_JOBS", None)  # the server chooses, as a deployment does (the tests' inline mode is for AppTest)
    with running("serve.py", full, tmp_path / "server.log", healthy_within_s=120) as url:
        yield url


def open_page(browser, url: str):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(url)
    return context, page


def tiny_unet(model_dir: Path, dataset: str = SMALL_GRF) -> None:
    """An untrained small UNet saved for ``dataset`` (its fields and bases cost a fraction of a second)."""
    from locality_core.denoisers.models import save_weights
    from locality_core.denoisers.unet import EDMDenoiser, UNetConfig
    from locality_core.views.refs import DataRef

    data = DataRef.parse(dataset).load()
    torch.manual_seed(0)
    model = EDMDenoiser(UNetConfig(base=8, mults=(1, 2), blocks=1, emb_dim=16, groups=4))
    (model_dir / "grf").mkdir(parents=True, exist_ok=True)
    save_weights(model_dir / "grf" / "unet.pt", model.config, model.state_dict(), fingerprint=data.fingerprint,
                 dataset="grf")


def test_a_page_address_opens_that_page_on_a_fresh_server(browser, tmp_path):
    with serve(tmp_path, LOCALITY_WARMUP="0", LOCALITY_APP_DATASET=SMALL_GRF) as url:
        context, page = open_page(browser, url + "/components")
        try:
            page.get_by_role("heading", name="Principal components").wait_for(timeout=LONG)
        finally:
            context.close()


def test_closing_the_tab_keeps_the_job_and_a_new_session_attaches_to_it(browser, tmp_path):
    """Samples of the analytical denoiser: the first tab closes after a few seconds; a new session finds the same
    job further along (its time counted from the first tab's request, not from zero), then its result."""
    address = "/samples?models=analytical&n=4"
    with serve(tmp_path, LOCALITY_WARMUP="0", LOCALITY_APP_DATASET="grf:n_test=64") as url:
        context, page = open_page(browser, url + address)
        page.get_by_text(re.compile(r"Now: analytical: step")).first.wait_for(timeout=LONG)
        first_seen = time.time()
        context.close()  # the speaker closes the tab
        time.sleep(4)
        context, page = open_page(browser, url + address)
        try:
            text = page.get_by_text(re.compile(r"Computed by the server for \d+ s")).first
            text.wait_for(timeout=LONG)
            seconds = int(re.search(r"for (\d+) s", text.inner_text()).group(1))
            assert seconds >= time.time() - first_seen - 1  # the job kept running: not restarted for this session
            page.locator(".st-key-samples_analytical .js-plotly-plot").wait_for(timeout=LONG)
        finally:
            context.close()
    record = json.loads((tmp_path / "cache" / "jobs.json").read_text())
    runs = [k for k in record if k.startswith("samples/") and '"analytical"' in k]
    assert len(runs) == 1 and record[runs[0]]["wall_s"] > 4  # computed once, by one job


def test_after_the_warm_up_every_default_view_computes_nothing_and_presentation_text_is_large(browser, tmp_path):
    """The server warms up a small data set by itself; then each page's default view opens without a job (no
    "Computed by" progress), and in presentation mode the field grid's headers are at least 20 px."""
    from locality_core.views import plan as plan_module
    from locality_core.views.refs import DataRef

    tiny_unet(tmp_path / "models")
    env = {"LOCALITY_WARMUP": SMALL_GRF, "LOCALITY_APP_DATASET": SMALL_GRF,
           "LOCALITY_MODEL_DIR": str(tmp_path / "models"), "LOCALITY_FIELD_PRECISION": "float32"}
    os.environ.update({"LOCALITY_MODEL_DIR": env["LOCALITY_MODEL_DIR"], "LOCALITY_FIELD_PRECISION": "float32",
                       "LOCALITY_CACHE_DIR": str(tmp_path / "cache")})
    try:  # the default views of every page (tiers 1-3 of the plan: not tr J and the field grid, which no page opens)
        ref = DataRef.parse(SMALL_GRF)
        keys = [t.key for _, t in plan_module.default_views([(ref, ref.load())])]
    finally:
        for name in ("LOCALITY_MODEL_DIR", "LOCALITY_FIELD_PRECISION", "LOCALITY_CACHE_DIR"):
            os.environ.pop(name, None)
    with serve(tmp_path, **env) as url:
        record_path = tmp_path / "cache" / "jobs.json"
        deadline = time.time() + 600
        while True:  # untouched: nobody opens a page while the warm-up runs
            record = json.loads(record_path.read_text()) if record_path.exists() else {}
            if all(k in record for k in keys):
                break
            assert time.time() < deadline, f"warm-up unfinished: {[k for k in keys if k not in record][:3]}"
            time.sleep(2)
        assert not any(record[k].get("error") for k in keys), [record[k] for k in keys if record[k].get("error")]
        for path, figures in [("/sensitivity", ["field_grid"]),
                              ("/samples", ["samples_unet", "samples_analytical"]),  # the paper's comparison
                              ("/jacobian", ["jb_spectrum"]),
                              ("/experiments", ["exp_grid"]),
                              ("/components", ["eigen_images"])]:
            context, page = open_page(browser, url + path)
            try:
                for figure in figures:  # .first: a rerun may draw the new chart beside the old for a moment
                    page.locator(f".st-key-{figure} .js-plotly-plot").first.wait_for(timeout=LONG)
                page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=LONG)
                assert "Computed by" not in page.inner_text("body"), f"{path} waited for a job"
            finally:
                context.close()
        context, page = open_page(browser, url + "/sensitivity?present=true")
        try:
            page.locator(".st-key-field_grid .js-plotly-plot").first.wait_for(timeout=LONG)
            # the element carries its class from the start of Plotly's drawing, its layout only once drawn, and a
            # rerun may replace it: read the header sizes in one step, once a drawn grid has them
            sizes = page.wait_for_function(
                "() => { const gd = document.querySelector('.st-key-field_grid .js-plotly-plot');"
                " const notes = gd && gd._fullLayout && gd.layout && gd.layout.annotations;"
                " return notes ? notes.filter(a => a.yref === 'paper' && a.y === 1).map(a => a.font.size) : null; }",
                timeout=LONG).json_value()
            assert sizes and min(sizes) >= 20, sizes
        finally:
            context.close()


def test_an_unusable_cache_folder_and_home_with_the_warm_up_on_still_show_the_pages(browser, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    with serve(tmp_path, HOME=str(home), LOCALITY_CACHE_DIR="/proc/locality-cache", LOCALITY_WARMUP=SMALL_GRF,
               LOCALITY_APP_DATASET=SMALL_GRF) as url:
        context, page = open_page(browser, url + "/sensitivity")
        try:
            page.get_by_text("The cache folder cannot be used").wait_for(timeout=LONG)
            page.locator(".st-key-field_grid .js-plotly-plot").wait_for(timeout=LONG)
        finally:
            context.close()


def test_a_chunk_that_fails_to_load_is_retried_by_a_reload(browser, tmp_path):
    """Streamlit's lazily loaded PlotlyChart code fails once (as under heavy load): the page reloads by itself and
    shows its charts."""
    with serve(tmp_path, LOCALITY_WARMUP="0", LOCALITY_APP_DATASET=SMALL_GRF) as url:
        # without a failure there is no reload (the script's own strings in the page once looked like an error)
        context, page = open_page(browser, url + "/components")
        try:
            page.locator(".st-key-eigen_images .js-plotly-plot").wait_for(timeout=LONG)
            page.wait_for_timeout(2500)  # the page's check runs a second after the last change
            assert page.evaluate("sessionStorage.getItem('locality-chunk-reload')") is None
        finally:
            context.close()
        context = browser.new_context(viewport=VIEWPORT)
        failed = []

        def fail_once(route):
            if not failed:
                failed.append(route.request.url)
                route.abort()
            else:
                route.continue_()

        context.route(re.compile(r".*PlotlyChart.*\.js"), fail_once)
        page = context.new_page()
        try:
            page.goto(url + "/components")
            page.locator(".st-key-eigen_images .js-plotly-plot").wait_for(timeout=LONG)
            assert failed, "the chunk was never requested"
        finally:
            context.close()
