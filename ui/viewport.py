"""The width the page has, measured in the browser, so that fixed-size figures (equal-aspect image grids, whose
height follows from their width) use the screen they are on: 1280 px at a projector, 1920 px on a desktop.

A tiny in-repo component (st.components.v2) reports the width of Streamlit's main block once on load and again
after each resize (rounded down to 20 px, so that small changes do not rerun the page). Until it has reported
(the first run of a session, and in AppTest, where components do not run) `content_width` assumes a 1280 px
window with the sidebar collapsed.
"""

from __future__ import annotations

import streamlit as st

DEFAULT_WIDTH = 1200  # px: the main block of a 1280 px window with the sidebar collapsed
MIN_WIDTH, MAX_WIDTH = 600, 2400
KEY = "_viewport"

_JS = """
export default function(component) {
    const { setStateValue } = component;
    const main = () => window.parent.document.querySelector('[data-testid="stMainBlockContainer"]')
        || document.querySelector('[data-testid="stMainBlockContainer"]');
    let last = null, timer = null;
    const report = () => {
        const el = main();
        if (!el) return;
        const style = getComputedStyle(el);
        const inner = el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        const width = Math.floor(inner / 20) * 20;
        if (width > 0 && width !== last) { last = width; setStateValue('width', width); }
    };
    report();
    const onResize = () => { clearTimeout(timer); timer = setTimeout(report, 300); };
    window.addEventListener('resize', onResize);
    const observer = new ResizeObserver(onResize);
    const el = main();
    if (el) observer.observe(el);
    return () => { window.removeEventListener('resize', onResize); observer.disconnect(); };
}
"""

_component = st.components.v2.component("locality_viewport", js=_JS)


def content_width() -> int:
    """The main block's inner width in px (measured; DEFAULT_WIDTH until the browser has reported)."""
    result = _component(key=KEY, on_width_change=lambda: None, height=0)
    width = getattr(result, "width", None) if result is not None else None
    if not isinstance(width, (int, float)) or width <= 0:
        return DEFAULT_WIDTH
    return int(min(max(width, MIN_WIDTH), MAX_WIDTH))
