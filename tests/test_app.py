"""The dashboard, headless (Streamlit's AppTest): every page renders on a tiny data set, one interaction per page,
the URL state, error messages instead of tracebacks.

The data set is injected with $LOCALITY_APP_DATASET (Gaussian random fields, 600 training images); a tiny untrained
UNet saved for exactly that data stands in for the trained one, so the model code paths run in seconds.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TINY = "grf:n_train=600,n_test=64"
TINY_PARAMS = {"n_train": 600, "n_test": 64}
TIMEOUT = 180
if str(ROOT) not in sys.path:  # the app's ui package lives beside app.py, not in the installed project
    sys.path.insert(0, str(ROOT))

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from ui.navigation import PAGES  # noqa: E402
from ui.state import parse_dataset_env, parse_sigmas, resolve_sigmas  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def app_env(tmp_path_factory):
    """Tiny data set by default, a private data folder (imports) and model folder (a tiny UNet for it)."""
    from locality_core.data import load_dataset
    from locality_core.denoisers.models import save_weights
    from locality_core.denoisers.unet import EDMDenoiser, UNetConfig

    root = tmp_path_factory.mktemp("app")
    saved = {k: os.environ.get(k) for k in ("LOCALITY_APP_DATASET", "LOCALITY_DATA_DIR", "LOCALITY_MODEL_DIR",
                                             "LOCALITY_OFFLINE")}
    os.environ.update(LOCALITY_APP_DATASET=TINY, LOCALITY_DATA_DIR=str(root / "data"),
                      LOCALITY_MODEL_DIR=str(root / "models"), LOCALITY_OFFLINE="1")
    data = load_dataset("grf", **TINY_PARAMS)
    torch.manual_seed(0)
    model = EDMDenoiser(UNetConfig(base=8, mults=(1, 2), blocks=1, emb_dim=16, groups=4))
    torch.nn.init.normal_(model.net.conv_out.weight, std=0.05)  # untrained, but not the identity
    (root / "models" / "grf").mkdir(parents=True)
    save_weights(root / "models" / "grf" / "unet.pt", model.config, model.state_dict(), fingerprint=data.fingerprint,
                 dataset="grf")
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run_page(path: str | None = None, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if path is not None and path != PAGES[0].path:
        at.switch_page(path).run()
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def texts(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [s.value for s in at.subheader]
                     + [i.value for i in at.info] + [w.value for w in at.warning])


def figure(at: AppTest, key_part: str) -> dict:
    """The plotly figure whose element id contains ``key_part`` (its widget key or chart key)."""
    for el in at.get("plotly_chart"):
        if key_part in el.proto.id:
            return json.loads(el.proto.spec)
    raise AssertionError(f"no plotly chart {key_part!r}: {[el.proto.id for el in at.get('plotly_chart')]}")


# ---------------------------------------------------------------- the frame

def test_every_page_file_is_registered():
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pages").glob("*.py") if p.name != "__init__.py"}
    registered = {p.path for p in PAGES}
    assert files == registered, f"not registered: {files - registered}; missing files: {registered - files}"
    assert sum(p.default for p in PAGES) == 1
    assert len({p.url_path for p in PAGES}) == len(PAGES)
    # each page's address is its file's stem: a link to a page works even on a fresh server (legacy pages/ mode)
    assert all(Path(p.path).stem == p.url_path for p in PAGES)
    assert "build_pages()" in (ROOT / "app.py").read_text()


@pytest.mark.parametrize("page", [p.path for p in PAGES], ids=[p.url_path for p in PAGES])
def test_every_page_renders(page):
    at = run_page(page)
    assert_clean(at)
    assert at.title, "every page has a title"
    words = " ".join([m.value for m in at.markdown] + [c.value for c in at.caption])
    assert len(words) > 150, "every page explains what it shows"
    if page.endswith("your_data.py"):  # instructions for an upload, not a lecture's explanation: always shown
        return
    present = run_page(page, query={"present": "true"})  # presentation mode: the speaker says it instead
    assert_clean(present)
    assert len(" ".join([m.value for m in present.markdown] + [c.value for c in present.caption])) < len(words)


def test_sidebar_defines_the_view():
    # AppTest drops the sidebar's elements from its tree after a rerun under st.navigation (the browser does
    # not): sidebar widgets are read on the first run, and changed through the URL or session state
    at = run_page(query={"sigma": "5, 0.5", "t": ["900", "300"]})
    assert_clean(at)
    assert at.selectbox(key="dataset").value == "grf"
    assert at.multiselect(key="t").value == [900, 300]
    assert "Showing t=900 (σ=60.8), t=565 (σ=5), t=300 (σ=1.24), t=144 (σ=0.5)" in texts(at)
    titles = [a["text"] for a in figure(at, "field_grid")["layout"]["annotations"] if "σ=" in a["text"]]
    # off the DDIM grid the timestep is approximate, and says so
    assert [t.split("<br>cos")[0] for t in titles] == ["t=900<br>σ=60.8", "t≈565<br>σ=5", "t=300<br>σ=1.24",
                                                       "t≈144<br>σ=0.5"]


def test_data_set_from_the_url():
    # (switching it in the sidebar is tested in the browser: AppTest loses sidebar state under st.navigation)
    assert "**grf**: 600 training images of 28x28" in texts(run_page())
    at = run_page(query={"dataset": "faces"})
    assert_clean(at)
    assert "**faces**: 180 training images of 25x25" in texts(at)


def test_unavailable_data_set_is_explained_not_raised():
    at = run_page(query={"dataset": "cifar10"})
    assert not at.exception
    assert at.error and "CIFAR" in at.error[0].value


def test_too_large_is_explained(monkeypatch):
    # checked on every call, even for statistics this process holds in memory already
    monkeypatch.setenv("LOCALITY_MEMORY_BUDGET_GB", "0.001")
    at = run_page(query={"dataset": "faces"})
    assert not at.exception
    assert at.error and "memory" in at.error[0].value


# ---------------------------------------------------------------- Sensitivity

def test_sensitivity_pixel_inputs_and_url():
    at = run_page(query={"row": "7", "col": "5"})  # the older form of a link still works ...
    assert_clean(at)
    assert "pixel row 7, col 5" in texts(at)
    grid_before = figure(at, "field_grid")
    at.number_input(key="row").set_value(20).run()
    assert "pixel row 20, col 5" in texts(at)  # (the URL itself is checked in the browser test)
    at = run_page(query={"pixel": "4,9"})
    assert "pixel row 4, col 9" in texts(at)
    assert figure(at, "field_grid")["layout"]["shapes"] != grid_before["layout"]["shapes"]


def test_sensitivity_rows_unet_and_signed_toggle():
    at = run_page()
    assert_clean(at)
    grid = figure(at, "field_grid")
    names = [t["name"] for t in grid["data"]]
    assert any(n.startswith("Wiener") for n in names) and any(n.startswith("UNet") for n in names)
    assert any(n.startswith("Analytical") for n in names)
    table = at.dataframe[0].value
    assert "cos(UNet, Wiener)" in table.index
    cos = table.loc["cos(UNet, Wiener)"].astype(float)
    assert ((cos >= -1) & (cos <= 1)).all()
    at.toggle(key="signed").set_value(True).run()
    assert_clean(at)
    assert figure(at, "field_grid")["data"][0]["zmin"] == -1.0


def test_sensitivity_cold_unet_shows_a_preview_then_the_full_fields():
    """A pixel nobody clicked before: the page first computes the 4-image preview (all levels at once), then the
    32-image fields per level, and ends on the full view."""
    from locality_core.analysis.fields import field_is_cached, field_key
    from locality_core.data import load_dataset
    from locality_core.schedule import REFERENCE_TIMESTEPS
    from locality_core.store.cache import default_cache
    from ui.widgets import PREVIEW_N

    data = load_dataset("grf", **TINY_PARAMS)
    pixel, sigmas = (3, 17), resolve_sigmas(REFERENCE_TIMESTEPS, "")[0]
    kw = {"seed": 0, "precision": "float32"}
    cache = default_cache()
    for n, levels in [(PREVIEW_N, sigmas)] + [(32, [s]) for s in sigmas]:  # cold, even after an earlier run
        cache.delete(field_key(data, "unet", pixel, levels, n, 0, "float32", {}))
    assert not field_is_cached(data, "unet", pixel, sigmas, n=PREVIEW_N, **kw)
    os.environ["LOCALITY_FIELD_PRECISION"] = "float32"
    try:
        at = run_page(query={"row": "3", "col": "17"})
    finally:
        os.environ.pop("LOCALITY_FIELD_PRECISION")
    assert_clean(at)
    assert field_is_cached(data, "unet", pixel, sigmas, n=PREVIEW_N, **kw)
    assert all(field_is_cached(data, "unet", pixel, [s], n=32, **kw) for s in sigmas)
    names = [t["name"] for t in figure(at, "field_grid")["data"]]
    assert any(n.startswith("UNet") and f"({PREVIEW_N} img)" not in n for n in names)
    assert "replaces it" not in texts(at)


def test_sensitivity_builds_each_unet_field_key_once_per_click(monkeypatch):
    """The page asks the library for each field once: no separate "is it cached?" lookup before computing."""
    from locality_core.analysis import fields

    built = []
    real = fields.field_key

    def counting(dataset, name, pixel, sigmas, *rest):
        built.append((name, tuple(pixel), tuple(sigmas), *rest[:2]))
        return real(dataset, name, pixel, sigmas, *rest)

    monkeypatch.setattr(fields, "field_key", counting)
    at = run_page(query={"pixel": "9,4"})
    assert_clean(at)
    assert built and len(built) == len(set(built)), built
    assert {n for _, _, _, n, _ in built} >= {32}


def test_sensitivity_without_unet_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALITY_MODEL_DIR", str(tmp_path))
    at = run_page(query={"dataset": "faces"})
    assert_clean(at)
    assert "locality train faces" in texts(at)


def test_trained_linear_denoiser_approaches_wiener(tmp_path):
    from locality_core.data import import_images

    archive = tmp_path / "small.zip"
    archive.write_bytes(_zip_of_images(300, bad=0, size=(8, 8), smooth=True))
    import_images(archive, "small8", mode="L")
    at = run_page(query={"dataset": "user:small8", "unet": "false"})
    assert_clean(at)
    at.selectbox(key="lin_steps").set_value(300)
    at.button(key="lin_go").click().run()
    assert_clean(at)
    note = next(c.value for c in at.caption if c.value.startswith("After 300 steps"))
    distance = float(note.split("A is ")[1].split("%")[0]) / 100
    assert 0 <= distance < 0.5  # Adam has moved A most of the way from 0 to P_sigma
    assert figure(at, "lin_fields")["data"][0]["name"].startswith("row of A")


@pytest.mark.parametrize("page", ["pages/sensitivity.py", "pages/components.py", "pages/experiments.py",
                                  "pages/jacobian.py"])
def test_colour_images(page, tmp_path):
    from locality_core.data import import_images

    archive = tmp_path / "rgb.zip"
    archive.write_bytes(_zip_of_images(60, bad=0, size=(12, 12, 3), smooth=True))
    import_images(archive, "rgb12", mode="RGB")
    at = run_page(page, query={"dataset": "user:rgb12", "unet": "false"})
    assert_clean(at)
    if page.endswith("jacobian.py"):
        assert any(m.label == "Wiener tr J" for m in at.metric)
    else:
        assert re.search(r"pixel \(?row 6, col 6", texts(at), re.IGNORECASE)


def test_clicked_pixel():
    from ui.picker import clicked_pixel, image_url

    assert clicked_pixel({"click": {"row": 7, "col": 5}}) == (7, 5)
    assert clicked_pixel({"click": None}) is None and clicked_pixel(None) is None and clicked_pixel({}) is None
    url = image_url(np.zeros((1, 6, 4)) - 1)
    png = Image.open(io.BytesIO(__import__("base64").b64decode(url.split(",", 1)[1])))
    assert png.size == (4, 6) and np.asarray(png).max() == 0  # one PNG pixel per image pixel, -1 is black


def test_url_state_parsing():
    assert parse_dataset_env("grf:n_train=600,alpha=3.5") == ("grf", {"n_train": 600, "alpha": 3.5})
    assert parse_dataset_env("user:mine") == ("user:mine", {})
    assert parse_dataset_env("") == (None, {})
    assert parse_sigmas("5, 0.5;0.05") == [5.0, 0.5, 0.05]
    with pytest.raises(ValueError):
        parse_sigmas("5, x")
    sigmas, problem = resolve_sigmas([900], "1, 1.0")
    assert sigmas[0] == pytest.approx(60.82, abs=0.01) and sigmas[1] == 1.0 and problem is None
    sigmas, problem = resolve_sigmas([], "")
    assert len(sigmas) == 10 and problem


# ---------------------------------------------------------------- the other pages

def test_components_pages_through_eigen_images():
    at = run_page("pages/components.py", query={"pc_page": "2"})
    assert_clean(at)
    titles = [a["text"] for a in figure(at, "eigen_images")["layout"]["annotations"]]
    assert titles[0].startswith("#17:")
    assert "Components 17 to 32" in texts(at)
    assert "Pixel (row 14, col 14)" in texts(at)


def test_jacobian_page_shows_the_unet_basis_without_a_click(monkeypatch, tmp_path):
    # cold: no basis on disk (an earlier run, a warm-up) nor in the process's memo (other tests' seed)
    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(tmp_path))
    at = run_page("pages/jacobian.py", query={"seed": "4242"})
    assert_clean(at)
    # no button before the basis (from the warm-up, or computed at once); only the optional exact tr J curve
    assert [b.key for b in at.button] == ["jb_all"]
    metrics = {m.label: m.value for m in at.metric if "tr J" in m.label}
    assert float(metrics["Wiener tr J"]) > 0
    assert metrics["unet tr J"].endswith("(estimate)") and float(metrics["unet tr J"].split()[0]) > 0
    for row in ("Wiener", "unet"):
        titles = [a["text"] for a in figure(at, f"jb_vectors_{row}")["layout"]["annotations"]]
        assert titles[0].startswith("#1: ") and max(len(t) for t in titles) <= 9  # short: never run into each other
    # the spectrum's sentence reads the network's eigenvalues shown above its eigenvectors (issue 24: it said they
    # "stay near 1" while they read 1.18, 0.68, 0.45, 0.40)
    shown = ", ".join(t.split(": ")[1] for t in titles[:4])
    assert f"unet's four largest are {shown}" in texts(at)
    trace = figure(at, "jb_trace")
    assert trace["layout"]["xaxis"]["autorange"] == "reversed"  # high noise on the left, as on Sensitivity
    estimate = [t for t in trace["data"] if t["name"] == "unet (estimate)"]  # exact curve not computed yet
    assert estimate and estimate[0]["error_y"]["visible"] and "Hutchinson estimate" in texts(at)
    at.button(key="jb_all").click().run()
    assert_clean(at)
    assert [t["name"] for t in figure(at, "jb_trace")["data"]] == ["Wiener", "unet"]
    exact = {m.label: m.value for m in at.metric if "tr J" in m.label}["unet tr J"]
    assert "estimate" not in exact and float(exact) > 0  # the exact trace replaces the estimate


def test_jacobian_controls_live_in_the_url():
    at = run_page("pages/jacobian.py", query={"img": "3", "jb_sigma": "t=100 (σ=0.342)"})
    assert_clean(at)
    assert at.number_input(key="img").value == 3
    assert at.selectbox(key="jb_sigma").value == "t=100 (σ=0.342)"
    assert "at t=100 (σ=0.342)" in texts(at)


@pytest.mark.parametrize("experiment, rows", [("W pattern", 3), ("Shuffled pixels", 4), ("GRF alpha", 3)])
def test_experiments(experiment, rows):
    at = run_page("pages/experiments.py", query={"exp": experiment})
    assert_clean(at)
    assert len(figure(at, "exp_grid")["data"]) == rows
    assert "→" in texts(at)


def test_shuffled_fields_unpermute_to_the_original_ones():
    import base64

    at = run_page("pages/experiments.py", query={"exp": "Shuffled pixels", "row": "3", "col": "9"})
    assert_clean(at)
    traces = figure(at, "exp_grid")["data"]

    def values(trace):
        raw = trace["customdata"]
        return np.frombuffer(base64.b64decode(raw["bdata"]), dtype=raw["dtype"]) if isinstance(raw, dict) else \
            np.asarray(raw, dtype=float).ravel()

    original, unpermuted = values(traces[0]), values(traces[2])  # each row's maps, NaN elsewhere
    original, unpermuted = original[np.isfinite(original)], unpermuted[np.isfinite(unpermuted)]
    assert len(original) == 10 * 28 * 28
    np.testing.assert_allclose(unpermuted, original, rtol=1e-4, atol=1e-9)
    assert "holds what was pixel" in texts(at)


def test_keep_one_class_needs_labels():
    at = run_page("pages/experiments.py", query={"exp": "One class"})
    assert not at.exception
    assert "no class labels" in texts(at)


def _zip_of_images(n: int, bad: int = 1, size=(20, 30), smooth: bool = False) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            pixels = rng.integers(0, 255, size).astype(float)
            if smooth:  # correlated neighbours, like real images
                pixels = (pixels + np.roll(pixels, 1, 0) + np.roll(pixels, 1, 1)) / 3
            img = Image.fromarray(pixels.astype(np.uint8))
            png = io.BytesIO()
            img.save(png, format="PNG")
            zf.writestr(f"imgs/{i:03d}.png", png.getvalue())
        for i in range(bad):
            zf.writestr(f"imgs/broken{i}.png", b"not an image")
    return buf.getvalue()


def test_your_data_upload_then_use_it():
    at = run_page("pages/your_data.py")
    assert_clean(at)
    at.file_uploader[0].set_value(("mine.zip", _zip_of_images(24), "application/zip"))
    at.text_input(key="import_name").set_value("mine")
    at.selectbox(key="import_size").set_value(16)
    at.button(key="import_go").click().run()
    assert_clean(at)
    assert any("Imported 24 images as `user:mine`" in s.value for s in at.success)
    assert any("broken0.png" in str(df.value) for df in at.dataframe)
    assert any("Statistics computed" in s.value for s in at.success)
    at.button(key="use_mine").click().run()
    assert at.session_state["dataset"] == "user:mine"
    at = run_page(query={"dataset": "user:mine"})  # every page lists it now
    assert_clean(at)
    assert "**user:mine**:" in texts(at) and "training images of 16x16" in texts(at)


def test_your_data_reports_a_bad_zip():
    at = run_page("pages/your_data.py")
    at.file_uploader[0].set_value(("few.zip", _zip_of_images(3, bad=0), "application/zip"))
    at.text_input(key="import_name").set_value("few")
    at.button(key="import_go").click().run()
    assert not at.exception
    assert at.error and "at least 10" in at.error[0].value
    at.file_uploader[0].set_value(("broken.zip", b"not a zip at all", "application/zip"))
    at.button(key="import_go").click().run()
    message = at.error[0].value
    assert "broken.zip" in message and "/tmp" not in message and "BytesIO" not in message  # the file, by name


def test_samples_appear_without_a_button_with_metrics_and_trajectories():
    at = run_page("pages/samples.py", query={"models": ["unet", "wiener"], "n": "4"})
    assert_clean(at)
    assert not at.button  # sampling starts by itself
    table = at.dataframe[-1].value
    assert list(table.index) == ["Wiener (linear)"]
    assert np.isfinite(table.to_numpy(dtype=float)).all() and (table["MSE vs UNet"] >= 0).all()
    for name in ("unet", "wiener"):  # one grid per denoiser: samples, then their nearest training images
        titles = [a["text"] for a in figure(at, f"samples_{name}")["layout"]["annotations"]]
        assert sum(t.startswith("L2 ") for t in titles) == 4 and titles[0] == "#0"
    at.slider(key="sample_step").set_value(0).run()
    assert "Step 1 of 10, t=900" in texts(at)


def test_png_downloads_are_real_images():
    from ui.figures import _plain, grid_png, images_png

    maps = np.random.default_rng(0).random((3, 10, 12))
    png = grid_png([("Wiener<br>|P<sub>σ</sub> row|", maps, "abs"), ("mask", maps > 0.5, "mask")],
                   ["t=900<br>(σ=60.8)"] * 3, pixel=(2, 3), title="title")
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.width > 3 * 12 and img.height > 2 * 10
    # coloured like the grid on screen: scaled around the pixel, a spike on it does not darken the rest
    spike = np.full((1, 10, 12), 0.1)
    spike[0, 2, 3] = 100.0
    def off_pixel(scale):  # the tile's pixel (5, 8): no title, one PNG pixel per map pixel, tiles from (190, 70)
        png = grid_png([("f", spike, "abs")], ["t"], pixel=(2, 3), cell=12, scale=scale)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), float)[70 + 5, 190 + 8].sum()
    assert off_pixel("surround") > 600 > 60 > off_pixel("map")  # bright (the surround's max) against black
    tiles = images_png([np.zeros((3, 10, 10)), np.ones((3, 10, 10))], ["a", "b"])
    assert Image.open(io.BytesIO(tiles)).mode == "RGB"
    assert "<" not in _plain("P<sub>σ</sub> <b>row</b>")


@pytest.mark.parametrize("shape,count,columns,width", [((1, 28, 28), 16, 8, None), ((3, 32, 32), 12, 4, None),
                                                       ((1, 28, 28), 2, 2, 380), ((3, 32, 32), 40, 8, None)])
def test_image_grids_have_no_blank_bands(shape, count, columns, width):
    """Equal-aspect grids are drawn at a fixed size whose plot area has the data's aspect ratio: a figure
    stretched to another width keeps its height, and plotly pads the tiles with blank space above and below."""
    from ui.figures import PAGE_WIDTH, map_grid, tiles_figure

    def aspect_error(fig):
        lay = fig.layout
        area_w = lay.width - lay.margin.l - lay.margin.r
        area_h = lay.height - lay.margin.t - lay.margin.b
        data_w = abs(lay.xaxis.range[1] - lay.xaxis.range[0])
        data_h = abs(lay.yaxis.range[1] - lay.yaxis.range[0])
        assert lay.width <= (width or PAGE_WIDTH)
        return abs((area_h / area_w) / (data_h / data_w) - 1)

    images = np.random.default_rng(0).uniform(-1, 1, (count, *shape))
    kwargs = {} if width is None else {"page_width": width}
    assert aspect_error(tiles_figure(images, [f"#{i}" for i in range(count)], columns=columns, **kwargs)) < 0.01
    rows = [("Wiener<br>|P<sub>σ</sub> row|", np.abs(images[:columns, 0]), "abs"),
            ("Analytical<br>mask (θ=0.005)", images[:columns, 0] > 0, "mask")]
    titles = [f"t={t}<br>(σ=1.0)<br>cos 0.97" for t in range(columns)]
    assert aspect_error(map_grid(rows, titles, pixel=(3, 4), **kwargs)) < 0.01


def test_map_scales():
    """Each scale divides by the right maximum; signed maps stay symmetric; the surround leaves the pixel out."""
    from ui.figures import scaled_maps

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 5, 5)), 10 * rng.normal(size=(3, 5, 5))
    a[:, 2, 2] = 100.0  # a spike on the pixel
    rows = [("A", a, "signed"), ("B", b, "signed"), ("M", a > 0, "mask")]
    per_map = scaled_maps(rows, "map")
    np.testing.assert_allclose(per_map[0], a / np.abs(a).reshape(3, -1).max(1)[:, None, None])
    assert per_map[2].max() == 1 and set(np.unique(per_map[2])) <= {0.0, 1.0}
    around = scaled_maps(rows, "surround", pixels=[(2, 2), (2, 2), None])[0]
    rest = np.abs(a).copy()
    rest[:, 2, 2] = 0
    np.testing.assert_allclose(around[0][rest[0] > 0], (a / rest.reshape(3, -1).max(1)[:, None, None])[0][rest[0] > 0])
    assert around[0, 2, 2] == 1.0  # the spike saturates
    column = scaled_maps(rows, "column")
    tops = np.maximum(np.abs(a).reshape(3, -1).max(1), np.abs(b).reshape(3, -1).max(1))
    np.testing.assert_allclose(column[1], b / tops[:, None, None])
    row = scaled_maps(rows, "row")
    np.testing.assert_allclose(row[1], b / np.abs(b).max())
    sqrt = scaled_maps(rows, "map", "sqrt")[1]
    np.testing.assert_allclose(sqrt, np.sign(per_map[1]) * np.sqrt(np.abs(per_map[1])))
    assert np.abs(sqrt).max() <= 1.0


def test_a_diffusers_network_gets_a_sensitivity_row_and_samples(app_env):
    """A diffusers UNet2DModel placed as the data set's `diffusers-unet` (as Fashion-MNIST's ships): its own row of
    fields on Sensitivity (behind a toggle, off for a shipped network) with its cosine to Wiener in the table, and
    its samples on Samples (removed afterwards)."""
    pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install diffusers==0.42.1")
    from diffusers_nets import save_network

    from locality_core.data import load_dataset
    from locality_core.denoisers.diffusers_import import SHIPPED, import_network

    target = app_env / "models" / "grf" / SHIPPED
    import_network(save_network(app_env / "diffusers-src", side=28), SHIPPED, load_dataset("grf", **TINY_PARAMS),
                   directory=target)
    try:
        at = run_page(query={"t": ["500", "100"]})  # a shipped one: off by default (the first screen's rows)
        assert_clean(at)
        assert not any(t["name"].startswith("diffusers") for t in figure(at, "field_grid")["data"])
        at.toggle(key="nets").set_value(True).run()
        assert_clean(at)
        names = [t["name"] for t in figure(at, "field_grid")["data"]]
        assert "diffusers UNet (DDPM) mean |J|" in names, names
        cos = at.dataframe[0].value.loc["cos(diffusers UNet (DDPM), Wiener)"].astype(float)
        assert len(cos) == 2 and ((cos >= -1) & (cos <= 1)).all()
        at = run_page("pages/samples.py", query={"models": ["diffusers-unet"], "n": "4"})
        assert_clean(at)
        titles = [a["text"] for a in figure(at, "samples_diffusers-unet")["layout"]["annotations"]]
        assert sum(t.startswith("L2 ") for t in titles) == 4
    finally:
        shutil.rmtree(target)


def test_your_data_imports_a_network_zip_and_refuses_a_pickle(app_env, tmp_path):
    """The "Your own network" section: a zip of a diffusers folder for the data set in the sidebar becomes a
    denoiser; a zip whose weights are a pickle is refused, naming the uploaded file and never the server's path."""
    pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install diffusers==0.42.1")
    from diffusers_nets import save_network

    from locality_core.denoisers.diffusers_import import network_dir
    from locality_core.denoisers.registry import list_denoisers

    def zipped(folder: Path) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for f in folder.iterdir():
                z.write(f, f"net/{f.name}")
        return buf.getvalue()

    at = run_page("pages/your_data.py")
    at.file_uploader(key="net_zip").set_value(("net.zip", zipped(save_network(tmp_path / "ok", side=28)),
                                               "application/zip"))
    at.text_input(key="net_name").set_value("page-net")
    at.run()  # the import button appears with an upload
    try:
        at.button(key="net_go").click().run()
        assert_clean(at)
        assert any("Imported `page-net` for grf" in s.value for s in at.success)
        assert "page-net" in [s.name for s in list_denoisers()]
        grid = figure(run_page(query={"t": ["500"]}), "field_grid")  # a network one imported: its row by default
        assert "page-net (your network) mean |J|" in [t["name"] for t in grid["data"]]
        at.file_uploader(key="net_zip").set_value(("pickled.zip", zipped(save_network(tmp_path / "bad", side=28,
                                                                                      safe=False)),
                                                   "application/zip")).run()
        at.button(key="net_go").click().run()
        message = at.error[0].value
        assert "pickled.zip" in message and "pickle" in message and "/tmp" not in message
    finally:
        shutil.rmtree(network_dir("page-net"), ignore_errors=True)
