"""The view's state: what lives in the URL, how it is parsed, and the `View` every page reads.

Glossary
    URL keys    every widget that defines the view is bound to a query parameter (``bind="query-params"``)
                under its key: ``dataset``, ``ds_<param>`` (data set options), ``t`` (timesteps), ``sigma``
                (typed noise levels), ``seed``, ``device``, ``present`` (presentation mode), ``row``, ``col``
                (the pixel), ``img`` (background image), ``signed``, and each page's own controls; the page is
                the URL path. A shared link reproduces the view.
    View        the sidebar's choices, resolved: data set name and options, noise levels (sigma, high to low),
                seed, torch device. app.py stores it in session state; pages read it with `current_view()`.
    $LOCALITY_APP_DATASET  the default data set, optionally with options: ``grf:n_train=2000,n_test=200``
                (tests and demos use it to start on a small data set)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from locality_core import settings
from locality_core.schedule import REFERENCE_TIMESTEPS, T_DEFAULT, format_noise_level, t_to_sigma
from locality_core.views.defaults import default_pixel, view_sigma  # the warm-up fills this pixel's fields ahead
from locality_core.views.refs import DataRef

ENV_DATASET = settings.APP_DATASET.name
VIEW_KEY = "_view"
MAX_SIGMAS = 12
# timesteps offered in the sidebar: the reference DDIM grid and the points halfway between, plus t = 999
T_OPTIONS = [T_DEFAULT - 1] + list(range(950, -1, -50))


@dataclass(frozen=True)
class View:
    """What the sidebar chose. ``sigmas``: high to low."""

    dataset: str
    params: tuple[tuple[str, object], ...]
    sigmas: tuple[float, ...]
    seed: int
    device: str
    present: bool = False  # presentation mode: explanations hidden, larger text

    @property
    def ref(self) -> DataRef:
        """The chosen data set as a small hashable value (what cached functions and jobs take)."""
        return DataRef.of(self.dataset, self.params)

    @property
    def labels(self) -> list[str]:
        return [noise_label(s) for s in self.sigmas]


def current_view() -> View:
    """The View that app.py resolved for this rerun."""
    view = st.session_state.get(VIEW_KEY)
    if view is None:
        # A page ran without the frame: a link to a page of a freshly started server, before any session ran
        # app.py, runs the page file alone (Streamlit's legacy pages/ folder mode). Registering the navigation
        # leaves that mode; the rerun goes through app.py to the same page.
        from ui.navigation import build_pages

        st.navigation(build_pages(), position="hidden")
        st.rerun()
    return view


def set_view(view: View) -> None:
    st.session_state[VIEW_KEY] = view


# ---------------------------------------------------------------- parsing

def parse_dataset_env(text: str | None = None) -> tuple[str | None, dict]:
    """``"grf:n_train=2000,alpha=3"`` -> ("grf", {"n_train": 2000, "alpha": 3}); unset -> (None, {})."""
    text = settings.APP_DATASET.text() if text is None else text
    if not text.strip():
        return None, {}
    try:
        ref = DataRef.parse(text)
    except ValueError as exc:
        raise ValueError(f"{ENV_DATASET}: {exc}") from None
    return ref.name, dict(ref.params)


def parse_sigmas(text: str) -> list[float]:
    """``"60, 3.4, 0.1"`` -> [60.0, 3.4, 0.1]; ValueError naming the bad entry."""
    out = []
    for item in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"{item!r} is not a number") from None
        if not (np.isfinite(value) and 0 < value <= 1000):
            raise ValueError(f"noise levels must lie in (0, 1000], got {item}")
        out.append(value)
    return out


def resolve_sigmas(timesteps: list[int], typed: str) -> tuple[list[float], str | None]:
    """Noise levels from the chosen timesteps and the typed sigmas, high to low, deduplicated.

    Returns (sigmas, problem); with no valid choice the reference grid is used and ``problem`` says why.
    """
    problem = None
    sigmas = [float(t_to_sigma(int(t))) for t in timesteps]
    if typed.strip():
        try:
            sigmas += parse_sigmas(typed)
        except ValueError as exc:
            problem = f"Typed noise levels ignored: {exc}."
    unique = sorted({view_sigma(s) for s in sigmas}, reverse=True)
    if not unique:
        problem = problem or "No noise level chosen: showing the reference DDIM grid."
        unique = [view_sigma(float(t_to_sigma(t))) for t in REFERENCE_TIMESTEPS]
    if len(unique) > MAX_SIGMAS:
        problem = f"At most {MAX_SIGMAS} noise levels at once: showing the {MAX_SIGMAS} highest."
        unique = unique[:MAX_SIGMAS]
    return unique, problem


def noise_label(sigma: float) -> str:
    return format_noise_level(sigma)


# ---------------------------------------------------------------- the pixel

PIXEL_URL_KEY = "pixel"  # ?pixel=ROW,COL: one query parameter, so that a click is one step of the history
PIXEL_STORE = "_pixel"   # the pixel in plain session state: it outlives pages that draw no pixel widget


def parse_pixel(text, shape: tuple[int, int, int]) -> tuple[int, int] | None:
    """``"5,9"`` -> (5, 9), clamped to an image of ``shape``; None for anything else."""
    try:
        r, c = (int(float(v)) for v in str(text).replace(";", ",").split(","))
    except (TypeError, ValueError, OverflowError):  # OverflowError: ?pixel=1e999,3
        return None
    return clamp_pixel((r, c), shape)


def clamp_pixel(pixel: tuple[int, int], shape: tuple[int, int, int]) -> tuple[int, int]:
    _, h, w = shape
    return int(min(max(pixel[0], 0), h - 1)), int(min(max(pixel[1], 0), w - 1))


def stored_pixel(shape: tuple[int, int, int]) -> tuple[int, int]:
    """The pixel of this session, clamped to ``shape``: the last one chosen on any page, else a link's
    ``?row=..&col=..`` (the older form of ``?pixel=..``), else the image centre."""
    pixel = st.session_state.get(PIXEL_STORE)
    if pixel is None and "row" in st.query_params and "col" in st.query_params:
        pixel = parse_pixel(f"{st.query_params['row']},{st.query_params['col']}", shape)
        for key in ("row", "col"):  # now carried by ?pixel=
            del st.query_params[key]
    return clamp_pixel(pixel, shape) if pixel is not None else default_pixel(shape)
