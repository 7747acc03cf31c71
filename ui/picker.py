"""The clickable image: a small in-repo component (st.components.v2) that reports the pixel under a click.

Why not a plotly chart: plotly's "event+select" click mode loses clicks (the first click after a page loads
never reached the server, in 3 of 3 tries in Chromium; plotly.js issue 6898), and a heat map reports no click
at all. Here the image is a PNG shown with square pixels; the chosen pixel is outlined in cyan, the pixel under
the mouse in white with its row and column written below, and every click is one trigger to the server.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import numpy as np
import streamlit as st
from PIL import Image

from ui.figures import MARK, colour_map, to_display

_CSS = f"""
.lp-frame {{ position: relative; cursor: crosshair; user-select: none; }}
.lp-img {{ width: 100%; height: 100%; display: block; image-rendering: pixelated; }}
.lp-sel {{ position: absolute; border: 3px solid {MARK}; box-sizing: border-box; pointer-events: none; }}
.lp-hover {{ position: absolute; border: 1px solid #fff; outline: 1px solid #000; box-sizing: border-box;
             pointer-events: none; display: none; }}
.lp-tip {{ font: 13px "Source Sans Pro", sans-serif; color: #555; height: 18px; margin-top: 2px; }}
.lp-bar {{ display: none; font: 12px "Source Sans Pro", sans-serif; color: #333; margin-top: 4px; }}
.lp-grad {{ height: 10px; border-radius: 2px; }}
.lp-ticks {{ display: flex; justify-content: space-between; }}
"""

_JS = """
export default function(component) {
    const { data, setTriggerValue, parentElement } = component;
    let root = parentElement.querySelector('.lp-root');
    if (!root) {
        root = document.createElement('div');
        root.className = 'lp-root';
        root.innerHTML = '<div class="lp-frame" data-testid="pixel-picker"><img class="lp-img" draggable="false"' +
            ' alt="image to click on"/><div class="lp-sel"></div><div class="lp-hover"></div></div>' +
            '<div class="lp-tip"></div><div class="lp-bar"><div class="lp-grad"></div>' +
            '<div class="lp-ticks"><span class="lp-lo"></span><span class="lp-mid"></span>' +
            '<span class="lp-hi"></span></div></div>';
        parentElement.appendChild(root);
    }
    const frame = root.querySelector('.lp-frame'), img = root.querySelector('.lp-img');
    const sel = root.querySelector('.lp-sel'), hover = root.querySelector('.lp-hover');
    const tip = root.querySelector('.lp-tip');
    const { src, h, w, row, col, width, hint, bar } = data;
    const barEl = root.querySelector('.lp-bar');
    barEl.style.display = bar ? 'block' : 'none';
    barEl.style.width = width + 'px';
    if (bar) {
        root.querySelector('.lp-grad').style.background = bar.gradient;
        root.querySelector('.lp-lo').textContent = bar.lo;
        root.querySelector('.lp-mid').textContent = bar.label;
        root.querySelector('.lp-hi').textContent = bar.hi;
    }
    const height = Math.round(width * h / w);
    frame.style.width = width + 'px';
    frame.style.height = height + 'px';
    if (img.getAttribute('src') !== src) img.setAttribute('src', src);
    const place = (el, r, c) => {
        el.style.left = (c * width / w) + 'px'; el.style.top = (r * height / h) + 'px';
        el.style.width = (width / w) + 'px'; el.style.height = (height / h) + 'px';
    };
    const at = (e) => {
        const box = frame.getBoundingClientRect();
        const c = Math.floor((e.clientX - box.left) / box.width * w);
        const r = Math.floor((e.clientY - box.top) / box.height * h);
        return [Math.min(Math.max(r, 0), h - 1), Math.min(Math.max(c, 0), w - 1)];
    };
    place(sel, row, col);
    tip.textContent = hint;
    frame.onmousemove = (e) => {
        const [r, c] = at(e);
        place(hover, r, c); hover.style.display = 'block';
        tip.textContent = 'row ' + r + ', col ' + c + ': click to choose';
    };
    frame.onmouseleave = () => { hover.style.display = 'none'; tip.textContent = hint; };
    frame.onclick = (e) => {
        const [r, c] = at(e);
        place(sel, r, c);
        setTriggerValue('click', { row: r, col: c });
    };
}
"""

_component = st.components.v2.component("locality_pixel_picker", css=_CSS, js=_JS)


def image_url(background: np.ndarray, kind: str = "image") -> str:
    """A PNG data URL of an image (C, H, W) in [-1, 1] (``kind`` "image") or of a map (H, W) coloured by
    ``kind`` ("abs", "signed", "mask", "range"), one PNG pixel per image pixel (the browser enlarges it)."""
    if kind == "image":
        shown = to_display(background)
        if shown.ndim == 2:
            shown = (np.clip((shown + 1) / 2, 0, 1) * 255 + 0.5).astype(np.uint8)
    else:
        shown = colour_map(background, kind)
    buf = io.BytesIO()
    Image.fromarray(shown).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def clicked_pixel(state) -> tuple[int, int] | None:
    """The (row, col) of a click trigger in the component's state, else None."""
    try:
        click = state["click"]
        return int(click["row"]), int(click["col"])
    except (KeyError, TypeError, ValueError):
        return None


def colour_bar(scale: list, lo: float, hi: float, label: str) -> dict:
    """A colour bar under the picker: a CSS gradient of a plotly colour scale and its end values."""
    stops = ", ".join(f"{colour} {100 * pos:.0f}%" for pos, colour in scale)
    return {"gradient": f"linear-gradient(to right, {stops})", "lo": f"{lo:.2f}", "hi": f"{hi:.2f}", "label": label}


def pixel_picker(background: np.ndarray, shape: tuple[int, int, int], pixel: tuple[int, int], *, key: str,
                 on_pick: Callable[[tuple[int, int]], None], kind: str = "image", width: int = 300,
                 hint: str = "Click a pixel", bar: dict | None = None) -> None:
    """Draw the clickable image with ``pixel`` outlined, and ``bar`` (see `colour_bar`) under it; a click calls
    ``on_pick((row, col))`` before the rerun."""
    _, h, w = shape

    def on_click():
        picked = clicked_pixel(st.session_state.get(key))
        if picked is not None and 0 <= picked[0] < h and 0 <= picked[1] < w:
            on_pick(picked)

    _component(key=key, data={"src": image_url(background, kind), "h": h, "w": w, "row": int(pixel[0]),
                              "col": int(pixel[1]), "width": int(width), "hint": hint, "bar": bar},
               on_click_change=on_click)
