"""Faults of the app on a shared server: other sessions' imports, read-only deployments, unknown addresses."""

from __future__ import annotations

import io
import re
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from locality_core.data import user  # noqa: E402
from ui import deep_paths, not_found  # noqa: E402

PAGE = "pages/your_data.py"


@pytest.fixture(autouse=True)
def app_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALITY_APP_DATASET", "grf:n_train=600,n_test=64")
    monkeypatch.setenv("LOCALITY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOCALITY_OFFLINE", "1")
    monkeypatch.delenv("LOCALITY_READ_ONLY", raising=False)


def zip_of_images(n: int = 12, side: int = 8) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            png = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(png, format="PNG")
            zf.writestr(f"{i}.png", png.getvalue())
    return buf.getvalue()


def import_elsewhere(tmp_path: Path, name: str) -> None:
    """An import by another session (or the CLI)."""
    archive = tmp_path / f"{name}.zip"
    archive.write_bytes(zip_of_images())
    user.import_images(archive, name)


def your_data() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.switch_page(PAGE).run()
    return at


def upload(at: AppTest, name: str) -> AppTest:
    at.file_uploader[0].set_value((f"{name}.zip", zip_of_images(), "application/zip"))
    at.text_input(key="import_name").set_value(name)
    at.selectbox(key="import_size").set_value(16)
    return at.button(key="import_go").click().run()


def button_keys(at: AppTest) -> set[str]:
    return {b.key for b in at.button}


def test_a_session_deletes_only_what_it_imported(tmp_path):
    import_elsewhere(tmp_path, "theirs")
    at = your_data()
    assert "del_theirs" not in button_keys(at) and "use_theirs" in button_keys(at)
    upload(at, "mine")
    assert not at.exception and "del_mine" in button_keys(at)
    at.button(key="del_mine").click().run()
    assert user.list_user_datasets() == ["theirs"]


def test_a_session_cannot_overwrite_another_sessions_import(tmp_path):
    import_elsewhere(tmp_path, "theirs")
    at = upload(your_data(), "theirs")
    assert any("exists already" in e.value for e in at.error)
    assert user.read_arrays("theirs")[0].shape[2:] == (8, 8)  # untouched


def test_sessions_propose_different_default_names():
    first, second = your_data(), your_data()
    assert first.text_input(key="import_name").value != second.text_input(key="import_name").value


def test_read_only_turns_uploads_and_deletion_off(tmp_path, monkeypatch):
    import_elsewhere(tmp_path, "shown")
    monkeypatch.setenv("LOCALITY_READ_ONLY", "1")
    at = your_data()
    assert not at.exception and not at.get("file_uploader")
    assert any("read-only" in i.value for i in at.info)
    keys = button_keys(at)
    assert "use_shown" in keys and not any(k and k.startswith("del_") for k in keys) and "import_go" not in keys


@pytest.mark.parametrize(("url", "expected"), [
    ("http://h:1/nothing", "nothing"), ("http://h:1", None), ("http://h:1/", None), ("http://h:1/components", None),
    ("http://h:1/sensitivity", None)])
def test_unknown_path(monkeypatch, url, expected):
    monkeypatch.setattr(not_found.st, "context", types.SimpleNamespace(url=url))
    assert not_found.unknown_path() == expected


@pytest.mark.parametrize(("path", "target"), [
    ("/a/b/c", "/a"), ("/components/x", "/components"), ("/nothing", None), ("/", None),
    ("/_stcore/health", None), ("/static/js/index.js", None), ("/media/abc.png", None)])
def test_deep_paths_redirect_to_one_segment(path, target):
    assert deep_paths.redirect_target(path) == target


def test_page_relative_streamlit_routes_are_served_at_the_root():
    assert deep_paths.strip_page_prefix("/components/_stcore/stream") == "/_stcore/stream"
    assert deep_paths.strip_page_prefix("/app1/components/_stcore/stream", "app1") == "/app1/_stcore/stream"
    assert deep_paths.strip_page_prefix("/_stcore/stream") is None
    assert deep_paths.strip_page_prefix("/a/b/c") is None


def test_the_clients_base_probe_below_a_page_is_not_found():
    """Answered, the client would take /samples for the server's base and open the first page at /samples."""
    assert deep_paths.is_base_probe_below_page("/samples/_stcore/health")
    assert deep_paths.is_base_probe_below_page("/app1/samples/_stcore/host-config", "app1")
    assert not deep_paths.is_base_probe_below_page("/_stcore/health")
    assert not deep_paths.is_base_probe_below_page("/app1/_stcore/health", "app1")
    assert not deep_paths.is_base_probe_below_page("/samples/_stcore/stream")


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Chromium not found at /usr/bin/chromium")
def test_unknown_addresses_show_page_not_found_in_a_browser(monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    sys.path.insert(0, str(ROOT / "scripts"))
    from load_app import ARGS, start_server

    monkeypatch.setenv("LOCALITY_APP_ENTRY", "serve.py")
    proc, url = start_server("grf:n_train=600,n_test=64")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for path, shown in [("/nothing", "/nothing"), ("/a/b/c", "/a")]:
                page = browser.new_page()
                page.goto(url + path)
                # wait for the app's own message: Streamlit's "Page not found" dialog can show first
                page.get_by_text(f"There is no page at {shown}").wait_for(timeout=120_000)
                # the page links are drawn after the message, in a later delta of the same run: wait for them
                page.get_by_role("link", name="Sensitivity").first.wait_for(timeout=60_000)
                page.close()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)


def test_memory_bomb_url_options_show_a_message_and_build_nothing():
    from locality_core.data import natural

    if not natural.availability()[0]:
        pytest.skip(natural.availability()[1])
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    for key, value in {"dataset": "natural-patches", "natural-patches.stride": "1",
                       "natural-patches.max_per_photo": "200000"}.items():
        at.query_params[key] = value
    at.run()
    at.switch_page("pages/components.py").run()
    assert not at.exception
    assert any("GiB of memory" in e.value for e in at.error)


def test_the_page_html_gets_the_chunk_retry_and_nothing_else_does():
    """ChunkRetry puts its script at the top of a page's HTML (asked for uncompressed, not sent from its file), and
    leaves Streamlit's own routes and other content alone."""
    import asyncio

    import streamlit

    from ui.chunk_retry import PRELOAD, SCRIPT, ChunkRetry

    # the preload names Streamlit's Plotly chunk as installed (a renamed chunk would silently preload nothing)
    chunk = re.fullmatch(r'<script type="module">import\("\./static/js/(PlotlyChart\.[^"/]+\.js)"\)'
                         r'\.catch\(\(\) => \{\}\);</script>', PRELOAD)
    assert chunk and (Path(streamlit.__file__).parent / "static" / "static" / "js" / chunk[1]).is_file(), PRELOAD

    async def run(path: str, content_type: bytes, body: bytes):
        seen, out = {}, []

        async def app(scope, receive, send):
            seen.update(scope)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        async def send(message):
            out.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "extensions": {"http.response.pathsend": {}},
                 "headers": [(b"accept-encoding", b"gzip")]}
        await ChunkRetry(app)(scope, None, send)
        return seen, out

    seen, out = asyncio.run(run("/components", b"text/html; charset=utf-8", b"<html><head><title>x</title>"))
    body = out[-1]["body"]
    assert body.startswith(b"<html><head>" + (SCRIPT + PRELOAD).encode()) and body.endswith(b"<title>x</title>")
    assert dict(out[0]["headers"])[b"content-length"] == str(len(body)).encode()
    assert "http.response.pathsend" not in seen["extensions"] and not seen["headers"]
    for path in ("/_stcore/health", "/static/js/index.js", "/component/x"):
        _, out = asyncio.run(run(path, b"text/html", b"<head>"))
        assert out[-1]["body"] == b"<head>"


def test_messages_on_a_page_name_the_servers_folders_and_show_no_path():
    from locality_core.data.download import data_home
    from locality_core.denoisers.models import how_to_train
    from ui.loading import public

    text = public(how_to_train("faces"))
    assert str(data_home()) not in text and "the server's model folder" in text and "locality train faces" in text
    assert public("(/usr/share/datasets/fashion-mnist)") == "(…/fashion-mnist)"
    assert public("power spectrum 1/f^alpha, a ratio 1/2") == "power spectrum 1/f^alpha, a ratio 1/2"


@pytest.mark.parametrize(("given", "shown"), [("999,999", "27,27"), ("-5,3", "0,3"), ("4;9", "4,9")])
def test_a_pixel_outside_the_image_is_clamped_and_the_url_corrected(given, shown):
    """?pixel=999,999 shows the corner pixel, and the address says so (it kept 999,999 before)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.query_params["pixel"] = given
    at.query_params["dataset"] = "grf"
    at.run()
    assert not at.exception
    row, col = shown.split(",")
    assert any(f"pixel row {row}, col {col}" in m.value for m in [*at.markdown, *at.caption])
    # the hidden input bound to ?pixel= holds what is shown: Streamlit writes it into the address (AppTest keeps
    # the query it was given; the browser test of the pixel's URL sees the address itself)
    assert at.text_input(key="pixel").value == shown


def test_a_data_set_deleted_by_its_owner_leaves_a_session_viewing_it_working(tmp_path):
    """Session B explores user:shared when its owner (session A, or the CLI) deletes it: B's next rerun shows the
    default data set, with no traceback, and nothing else is touched. (It says nothing about the deletion: the
    sidebar's select box drops a value that is no longer among its options.)"""
    import_elsewhere(tmp_path, "shared")
    import_elsewhere(tmp_path, "other")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.query_params["dataset"] = "user:shared"
    at.run()
    assert not at.exception and at.selectbox(key="dataset").value == "user:shared"
    user.delete_user_dataset("shared")
    at.run()
    assert not at.exception and at.selectbox(key="dataset").value == "grf"
    assert user.list_user_datasets() == ["other"] and user.read_arrays("other")[0].shape[2:] == (8, 8)
