"""Composite widgets shared by several pages: the pixel picker, model fields with progress, download buttons.

Model fields and masks are shared jobs the first time (`ui.waiting`), then the library's disk cache (a few small
entries per click). Analytical mask columns are cached here (st.cache_data): each is one column of a d x d mask
that the library keeps on disk only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import streamlit as st

from locality_core.analysis.fields import Field, denoiser_field
from locality_core.data import Dataset
from locality_core.denoisers.analytical import default_theta, mask_column
from locality_core.views.catalogue import Task
from locality_core.views.refs import DataRef
from ui import loading, waiting
from ui.figures import plotly_config
from ui.picker import pixel_picker
from ui.state import PIXEL_STORE, PIXEL_URL_KEY, default_pixel, parse_pixel, stored_pixel


def pixel_inputs(shape: tuple[int, int, int]) -> tuple[int, int]:
    """The pixel: one hidden text input bound to the URL (``?pixel=ROW,COL``, one history step per change) and
    row / column inputs that set it. The picker's clicks set it too; `stored_pixel` keeps it across pages."""
    _, h, w = shape
    pixel = stored_pixel(shape)
    current = st.session_state.get(PIXEL_URL_KEY, st.query_params.get(PIXEL_URL_KEY))  # widget, else a link
    shown = "{},{}".format(*(parse_pixel(current, shape) or pixel))  # clamped (?pixel=999,999), or readable
    if current is None:  # no value in the address: the input starts from the session's pixel
        st.session_state[PIXEL_URL_KEY] = shown
    elif str(current).strip() != shown:  # the address must say what is shown
        if PIXEL_URL_KEY in st.session_state:  # the input exists: its value wins over the address
            st.session_state[PIXEL_URL_KEY] = shown
        elif st.session_state.get("_pixel_fixed") != current:  # a link's first load, where the address wins:
            st.session_state["_pixel_fixed"] = current  # correct the address (not bound yet) and run again, once
            st.query_params[PIXEL_URL_KEY] = shown
            st.rerun()
    r0, c0 = default_pixel(shape)
    with st.container(key="pixel_url"):  # hidden by ui.layout.CSS: it is the URL's copy of the pixel
        # the image centre is the default, left out of the URL; Back to an address without ?pixel= restores it
        text = st.text_input("Pixel", f"{r0},{c0}", key=PIXEL_URL_KEY, bind="query-params",
                             label_visibility="collapsed")
    pixel = parse_pixel(text, shape) or pixel
    st.session_state[PIXEL_STORE] = pixel
    st.session_state["row"], st.session_state["col"] = pixel

    def typed():
        st.session_state[PIXEL_URL_KEY] = f"{st.session_state['row']},{st.session_state['col']}"

    a, b = st.columns(2)
    a.number_input("Row", 0, h - 1, step=1, key="row", on_change=typed)
    b.number_input("Column", 0, w - 1, step=1, key="col", on_change=typed)
    return pixel


def current_pixel(shape: tuple[int, int, int]) -> tuple[int, int]:
    """The session's pixel (before or without its inputs), clamped to the image."""
    return stored_pixel(shape)


def picker(background, shape: tuple[int, int, int], *, key: str = "picker", kind: str = "image", title="",
           size: int = 300, bar=None) -> tuple[int, int]:
    """A clickable image above row/column inputs; returns the chosen pixel.

    ``background``, ``title`` and ``bar`` (a colour bar, `ui.picker.colour_bar`) may be functions of the pixel
    (a correlation map of the chosen pixel). The
    inputs are created first (they read a shared link's ``?pixel=..``), the image is drawn above them. A click
    sets the pixel, and so the URL (one step of the browser's history).
    """
    def on_pick(pixel: tuple[int, int]) -> None:
        st.session_state[PIXEL_URL_KEY] = f"{pixel[0]},{pixel[1]}"
        st.session_state[PIXEL_STORE] = pixel

    chart = st.container()
    pixel = pixel_inputs(shape)
    image = background(pixel) if callable(background) else background
    text = title(pixel) if callable(title) else title
    with chart:
        if text:
            st.markdown(f"**{text}**")
        pixel_picker(image, shape, pixel, key=key, on_pick=on_pick, kind=kind, width=size,
                     bar=bar(pixel) if callable(bar) else bar)
    return pixel


PREVIEW_N = 4


def field_task(name: str, ref: DataRef, pixel: tuple[int, int], sigmas: tuple[float, ...], seed: int, n: int = 32,
               precision: str = "float32") -> Task:
    return Task.of("field", ref, name=name, pixel=tuple(pixel), sigmas=tuple(float(s) for s in sigmas), n=n,
                   seed=seed, precision=precision)


def model_maps(name: str, title: str, ref: DataRef, pixel: tuple[int, int], sigmas: tuple[float, ...], seed: int,
               n: int = 32, precision: str = "float32", slot=None,
               on_miss: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fields of a trained denoiser at every sigma, (S, C_out, C_in, H, W) abs and signed: a shared job when they
    are not cached (its progress in ``slot``), before which ``on_miss()`` runs once (the page draws a quick
    preview then)."""
    return waiting.result(field_task(name, ref, pixel, sigmas, seed, n, precision), slot, on_miss=on_miss,
                          what=f"{title}: Jacobians of {n} noisy test images at {len(sigmas)} noise levels (cached "
                               "afterwards)")


def preview_field(name: str, data: Dataset, pixel: tuple[int, int], sigmas: tuple[float, ...], seed: int,
                  precision: str = "float32") -> Field:
    """A quick first view while the full fields are computed: the fields from ``PREVIEW_N`` noisy images per level,
    all levels in one batched backward pass (a fraction of a second), cached like the full ones."""
    return denoiser_field(data, name, pixel, [float(s) for s in sigmas], n=PREVIEW_N, seed=seed, precision=precision)


def run_button(label: str, key: str, done: bool, note: str = "", **kwargs) -> bool:
    """True when a heavy result is already computed (``done``) or its button was just pressed. The button (and
    ``note`` above it) disappears once pressed, so the result appears in its place."""
    if done:
        return True
    slot = st.empty()
    with slot.container():
        if note:
            st.caption(note)
        pressed = st.button(label, key=key, icon=":material/play_arrow:", **kwargs)
    if pressed:
        slot.empty()
    return pressed


def show(fig, key: str, filename: str) -> None:
    """A plotly figure with its own colours (Streamlit's theme recolours heatmaps) and a PNG modebar button.

    A figure that sets its own width (equal-aspect image grids, whose height is computed for that width) is
    shown at it; others stretch to the page."""
    width = "content" if fig.layout.width else "stretch"
    # the toolbar stands upright at the right edge: across the top it covered titles and column headers on hover
    fig.update_layout(modebar=dict(orientation="v", bgcolor="rgba(255, 255, 255, 0.8)"))
    st.plotly_chart(fig, key=key, width=width, theme=None, config=plotly_config(filename))


@st.cache_data(max_entries=1024, show_spinner=False)
def _mask_column(ref: DataRef, pixel: tuple[int, int], sigma: float, theta: float | None,
                 mode: str) -> tuple[np.ndarray, int, float, float]:
    col = mask_column(loading.stats(ref), pixel, sigma, theta, mode)
    return col.map, col.size, col.max_abs_m, col.theta


def mask_maps(ref: DataRef, data: Dataset, pixel: tuple[int, int], sigmas: tuple[float, ...], theta: float | None,
              mode: str) -> tuple[np.ndarray, list[int], list[float], float]:
    """The analytical denoiser's mask column of ``pixel`` at every sigma: (S, H, W) maps, column sizes, max|M|
    per sigma and theta. The masks are a shared job the first time (float64, cached on disk), then one column per
    click is read (st.cache_data)."""
    if theta is not None and f"{theta:.6g}" == f"{default_theta(data.shape):.6g}":
        theta = None  # the default: the warm-up's masks
    waiting.result(Task.of("masks", ref, sigmas=tuple(float(s) for s in sigmas), theta=theta, mode=mode),
                   what="Analytical masks (computed once per noise level, then cached)")
    maps, sizes, tops, theta_used = [], [], [], theta
    with loading.single_thread_blas():
        for sigma in sigmas:
            m, size, top, theta_used = _mask_column(ref, pixel, float(sigma), theta, mode)
            maps.append(m)
            sizes.append(size)
            tops.append(top)
    return np.stack(maps), sizes, tops, theta_used


def png_download(label: str, build: Callable[[], bytes], filename: str, key: str) -> None:
    """A download button whose PNG is built only when clicked."""
    file_download(label, build, filename, "image/png", key)


def file_download(label: str, build: Callable[[], bytes], filename: str, mime: str, key: str) -> None:
    """A download button whose file is built only when clicked."""
    st.download_button(label, data=build, file_name=filename, mime=mime, key=key, icon=":material/download:",
                       on_click="ignore")
