"""Page frame shared by every page: a one-line header, the explanation (hidden in presentation mode), the CSS
that gives the figures the screen, and the split of the page's width between the clickable image and the
figures beside it."""

from __future__ import annotations

import streamlit as st

from locality_core.data import Dataset
from ui import chunk_retry, figures
from ui.state import VIEW_KEY, View
from ui.viewport import content_width

# Streamlit's wide layout keeps 6rem above and 5rem beside the page: at a projector's 1280x720 that pushes the
# key figure below the fold. The header bar (menu, sidebar arrow) stays; the page starts right under it.
CSS = """
<style>
[data-testid="stMainBlockContainer"] { padding-top: 3.7rem; padding-bottom: 3rem;
                                       padding-left: 1.25rem; padding-right: 1.25rem; }
[data-testid="stMainBlockContainer"] h1 { font-size: 1.7rem; padding: 0; }
[data-testid="stMainBlockContainer"] h1 + div, .stHeading + div { margin-top: -0.6rem; }
.st-key-pixel_url { display: none; }
</style>
"""
# presentation mode: the prose larger (the controls keep their size, so that a row of them still fits 1280 px)
PRESENT_CSS = """
<style>
[data-testid="stMainBlockContainer"] h1 { font-size: 2.1rem; }
[data-testid="stMarkdown"] [data-testid="stMarkdownContainer"] p,
[data-testid="stMarkdown"] [data-testid="stMarkdownContainer"] li { font-size: 1.3rem; }
[data-testid="stCaptionContainer"], [data-testid="stCaptionContainer"] p { font-size: 1.1rem; }
</style>
"""
GAP = 16  # px between st.columns(gap="small")


def apply_css(present: bool) -> None:
    st.html(CSS + (PRESENT_CSS if present else ""))
    st.html(chunk_retry.SCRIPT, unsafe_allow_javascript=True, width="content")


def presentation() -> bool:
    """Whether this session's view is in presentation mode (in any rerun, fragments included)."""
    view = st.session_state.get(VIEW_KEY)
    return bool(view is not None and view.present)


# every figure built in this process asks the session it is built for (see ui.figures.text_minimum)
figures.text_minimum = lambda: figures.PRESENT_MIN if presentation() else 0


def page_header(title: str, view: View, data: Dataset) -> None:
    """Title and, in one line below it, what the page shows: data set, image size, noise levels, seed. In
    presentation mode the data set joins the title and the line goes (the figures need the height)."""
    if view.present:
        st.title(f"{title} · {view.dataset}")
        return
    st.title(title)
    size = "x".join(str(s) for s in data.shape[1:]) + ("" if data.shape[0] == 1 else " RGB")
    st.caption(f"**{view.dataset}**: {len(data.train):,} training images of {size} · {len(view.sigmas)} noise "
               f"levels, high noise on the left · seed {view.seed} · settings: » top left")


def explain(view: View, text: str) -> None:
    """An explanation for a first-time reader; hidden in presentation mode, where the speaker says it."""
    if not view.present:
        st.caption(text)


def split_widths(min_picker: int = 180, max_picker: int = 400) -> tuple[int, int]:
    """(picker, figure) widths in px: the clickable image takes a sixth of the page's measured width (at 1280 px
    that leaves the ten-level field grid tiles of 90 px and more)."""
    width = content_width()
    picker = int(min(max(0.17 * width, min_picker), max_picker))
    return picker, width - picker - GAP
