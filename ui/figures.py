"""Figure builders: plotly figures for the pages, Pillow PNGs for downloads. No streamlit here.

Glossary
    image     (C, H, W) float array in [-1, 1] (a data image, the mean image, an eigen-image)
    map       (H, W) float array (a sensitivity field, a correlation map, a mask)
    kind      how a map is coloured: "abs" (0 .. max, Magma), "signed" (-max .. max, red-blue), "mask" (0/1)

Every map is scaled to its own maximum: fields differ in magnitude by orders across noise levels, and what
the figures show is their shape. Hover gives the raw values.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable

import numpy as np
import plotly.colors as pcolors
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageFont

from locality_core.render import paste_grid
from locality_core.schedule import timestep_label

FONT = dict(size=15)
PRESENT_MIN = 20  # px: the smallest figure text in presentation mode (read at a projector from the back row)
# Presentation mode, asked when a figure is built: `ui.layout` points it at the session's view (this module stays
# free of streamlit, so its figures can be built and tested anywhere)
text_minimum: Callable[[], int] = lambda: 0  # noqa: E731


def fs(size: float) -> int:
    """A font size in px, at least the presentation minimum when presentation mode is on."""
    return int(max(round(size), text_minimum()))


def font(size: float = FONT["size"]) -> dict:
    return dict(size=fs(size))


def _rgb_scale(colours: list[str]) -> list[list]:
    """A plotly colour scale with 'rgb(r, g, b)' stops (the app's frontend rewrote some '#rrggbb' stops)."""
    rgb = [pcolors.hex_to_rgb(c) if c.startswith("#") else pcolors.unlabel_rgb(c) for c in colours]
    return [[i / (len(rgb) - 1), "rgb({:.0f}, {:.0f}, {:.0f})".format(*c)] for i, c in enumerate(rgb)]


ABS_SCALE = _rgb_scale(pcolors.sequential.Magma)
SIGNED_SCALE = _rgb_scale(pcolors.diverging.RdBu[::-1])
MASK_SCALE = _rgb_scale(["#f2f2f2", "#1f6fb2"])
MARK = "#00e5ff"  # the chosen pixel: cyan reads on Magma, gray images and red-blue maps alike
MODEL_COLOURS = {"wiener": "#1f77b4", "unet": "#d62728", "analytical": "#2ca02c", "linear": "#9467bd",
                 "optimal": "#8c564b", "els": "#ff7f0e", "ls": "#e377c2"}
LEVEL_DASH = {0.5: "solid", 0.75: "dash", 0.95: "dot"}


def plotly_config(filename: str) -> dict:
    """Modebar with a PNG download at 3x scale under a meaningful file name."""
    return {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"],
            "toImageButtonOptions": {"format": "png", "filename": filename, "scale": 3}}


FLAT_STD = 0.02  # a mean image this uniform (natural patches, random fields) shows nothing to click on


def is_flat(image: np.ndarray) -> bool:
    """Whether an image (C, H, W) varies so little across its pixels that it shows nothing: each channel's own
    spread (a uniform brown square has three different channel levels, and no structure)."""
    image = np.asarray(image, dtype=np.float64)
    return float(image.reshape(image.shape[0], -1).std(axis=1).max()) < FLAT_STD


def to_display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W) float for grayscale, (H, W, 3) uint8 for colour."""
    image = np.asarray(image, dtype=np.float64)
    if image.shape[0] == 1:
        return image[0]
    rgb = np.clip((image[:3].transpose(1, 2, 0) + 1) / 2, 0, 1)
    return (rgb * 255 + 0.5).astype(np.uint8)


def _square_axes(fig: go.Figure, h: int, w: int, row=None, col=None, visible: bool = False) -> None:
    fig.update_xaxes(range=[-0.5, w - 0.5], showgrid=False, zeroline=False, visible=visible, constrain="domain",
                     row=row, col=col)
    fig.update_yaxes(range=[h - 0.5, -0.5], showgrid=False, zeroline=False, visible=visible, constrain="domain",
                     row=row, col=col)


def _z_range(m: np.ndarray, kind: str) -> tuple[float, float, object]:
    """(low, high, colour scale) of a map: "abs" 0..max, "signed" -max..max, "mask" 0/1, "range" min..max (a
    map whose values all lie in a narrow band, such as correlations of 0.6 to 1, keeps its contrast)."""
    if kind == "mask":
        return 0.0, 1.0, MASK_SCALE
    if kind == "range":
        lo, hi = float(np.min(m)), float(np.max(m))
        return lo, (hi if hi > lo else lo + 1.0), ABS_SCALE
    top = float(np.max(np.abs(m))) or 1.0
    return (-top, top, SIGNED_SCALE) if kind == "signed" else (0.0, top, ABS_SCALE)


# ---------------------------------------------------------------- grids of maps

PAGE_WIDTH = 940  # px: the wide layout's page on a 1400 px screen; fixed-size figures are drawn at most this wide
CHAR_EM = 0.62  # width of an average character in em (Source Sans, digits and "σ=.")
SCALES = {"surround": "each map to its max |value| around the pixel (the pixel itself may saturate)",
          "map": "each map to its own max |value|", "column": "one scale per column (rows comparable)",
          "row": "one scale per row (noise levels comparable)"}
CONTRASTS = {"linear": "linear", "sqrt": "square root (weak values visible)"}


def noise_header(sigma: float) -> list[str]:
    """Two short header lines for a noise level: 't=300', 'σ=1.24' (typed levels off the grid: 't≈312')."""
    return [timestep_label(sigma), f"σ={sigma:.3g}"]


def scaled_maps(rows: list[tuple[str, np.ndarray, str]], scale: str = "map", contrast: str = "linear",
                pixels: list | None = None) -> list[np.ndarray]:
    """Each row's maps (S, H, W) divided by the chosen maximum |value| (``SCALES``), clipped to [-1, 1] ([0, 1]
    for "abs" and masks), then square-rooted with their sign for ``contrast="sqrt"``. Signed maps stay symmetric
    around 0 in every mode. "surround" leaves out each row's pixel (``pixels``): at low noise a field is a
    spike on the pixel, and scaled by the spike everything around it would be white."""
    if scale not in SCALES or contrast not in CONTRASTS:
        raise ValueError(f"unknown scale {scale!r} or contrast {contrast!r}")
    tops = {}
    fields = [np.abs(np.asarray(m, np.float64)) for _, m, kind in rows if kind != "mask"]
    if scale == "column" and fields:
        tops["column"] = np.max([f.reshape(len(f), -1).max(1) for f in fields], axis=0)  # (S,)
    out = []
    for i, (_, maps, kind) in enumerate(rows):
        maps = np.asarray(maps, np.float64)
        if kind == "mask":
            out.append((maps != 0).astype(np.float64))
            continue
        per_map = np.abs(maps).reshape(len(maps), -1).max(1)
        if scale == "surround":
            around = np.abs(maps).copy()
            if pixels is not None and pixels[i] is not None:
                around[:, pixels[i][0], pixels[i][1]] = 0.0
            per_map = around.reshape(len(maps), -1).max(1)
        top = {"map": per_map, "surround": per_map, "row": np.full(len(maps), per_map.max()),
               "column": tops.get("column")}[scale]
        z = np.clip(maps / np.where(top > 0, top, 1.0)[:, None, None], -1.0, 1.0)
        out.append(np.sign(z) * np.sqrt(np.abs(z)) if contrast == "sqrt" else z)
    return out


def _colorbar(kind: str, scale: str, contrast: str, length: int) -> dict:
    """A horizontal colour bar under the grid, ticks in units of the scale's maximum."""
    fractions = [0, 0.1, 0.5, 1] if contrast == "sqrt" else [0, 0.5, 1]
    pos = [np.sqrt(f) if contrast == "sqrt" else f for f in fractions]
    labels = ["0"] + [f"{f:g}" for f in fractions[1:-1]] + ["max"]
    if kind == "signed":
        pos = [-p for p in pos[:0:-1]] + pos
        labels = ["−" + lab for lab in labels[:0:-1]] + labels
    title = {"map": "× map's max", "surround": "× max around the pixel", "column": "× column's max",
             "row": "× row's max"}[scale]
    return dict(orientation="h", x=1.0, xanchor="right", y=0, yanchor="top", ypad=4, len=length, lenmode="pixels",
                thickness=10, tickvals=pos, ticktext=labels, tickfont=font(12),
                title=dict(text=title + (" (√ contrast)" if contrast == "sqrt" else ""), side="right",
                           font=font(12)), outlinewidth=0)


def map_grid(rows: list[tuple[str, np.ndarray, str]], col_titles: list, *, pixel=None, page_width: int = PAGE_WIDTH,
             max_cell: int = 200, scale: str = "surround", contrast: str = "linear", colorbar: bool = True
             ) -> go.Figure:
    """Rows of maps: ``rows`` = (label, maps (S, H, W), kind); one column per entry of ``col_titles`` (a string
    with <br> line breaks, or a list of lines).

    ``pixel``: (row, col) outlined in every map, or a list with one (row, col) or None per row. ``page_width``: the
    figure's width in px (the space the page has); the maps get the rest after the row labels, at most
    ``max_cell`` px each. Header lines are sized to fit their column, so they never run into each other.

    Drawn as one heatmap per row on a single pair of axes, maps separated by transparent gaps: a click on the
    Sensitivity page redraws it in a few milliseconds (subplots cost a third of a second to build). Colours
    follow ``scale`` and ``contrast`` (see `scaled_maps`), shown by a colour bar; hover gives raw values.
    """
    if text_minimum():  # presentation mode: a row is named by its first line (the denoiser), large enough to read
        rows = [(label.split("<br>")[0], maps, kind) for label, maps, kind in rows]
    n_rows, n_cols = len(rows), len(col_titles)
    h, w = rows[0][1].shape[-2:]
    titles = [t if isinstance(t, list) else t.split("<br>") for t in col_titles]
    label_lines = max(len(label.split("<br>")) for label, _, _ in rows)
    label_width = 16 + round(1.3 * fs(14)) * label_lines  # labels stand rotated beside their row: maps get the width
    gap = max(1, round(0.04 * max(h, w)))
    step_x, step_y = w + gap, h + gap
    full_w, full_h = n_cols * step_x - gap, n_rows * step_y - gap
    right = 6 + 2 * (fs(12) - 12)  # room for the colour bar's last tick label
    zoom = min(max_cell / max(h, w), (page_width - label_width - right) / full_w)  # screen pixels per map pixel
    cell_px = zoom * step_x
    longest = max(len(line) for lines in titles for line in lines)
    head_font = fs(np.clip((cell_px - 6) / (CHAR_EM * longest), 9, 15))
    label_chars = max(len(re.sub(r"<[^>]+>", "", line)) for label, _, _ in rows for line in label.split("<br>"))
    # rotated, a label must fit its row's height: as large as that allows (up to the presentation size)
    label_font = int(np.clip((zoom * h - 4) / (0.6 * label_chars), 9, max(14, text_minimum())))
    per_row = pixel if isinstance(pixel, list) else [pixel] * n_rows
    z_rows = scaled_maps(rows, scale, contrast, per_row)
    traces, notes, shapes = [], [], []
    bar_kind = next((kind for _, _, kind in rows if kind != "mask"), None)
    for i, ((label, maps, kind), scaled) in enumerate(zip(rows, z_rows)):
        z = np.full((full_h, full_w), np.nan, dtype=np.float32)  # float32: half the bytes sent per click
        raw = np.full((full_h, full_w), np.nan, dtype=np.float32)
        for j in range(n_cols):
            y0, x0 = i * step_y, j * step_x
            z[y0:y0 + h, x0:x0 + w] = scaled[j]
            raw[y0:y0 + h, x0:x0 + w] = maps[j]
        zmin, zmax = (-1.0, 1.0) if kind == "signed" else (0.0, 1.0)
        colours = {"signed": SIGNED_SCALE, "mask": MASK_SCALE}.get(kind, ABS_SCALE)
        plain = label.replace("<br>", " ")
        if kind == "mask":  # 0/1: the heatmap's own value says it all, no raw values to send
            hover = dict(hovertemplate=f"{plain}<br>%{{z:.0f}}<extra></extra>")
        else:
            hover = dict(customdata=raw, hovertemplate=f"{plain}<br>%{{customdata:.3g}}<extra></extra>")
        bar = colorbar and kind == bar_kind and i == next(k for k, r in enumerate(rows) if r[2] == bar_kind)
        traces.append(go.Heatmap(z=z, zmin=zmin, zmax=zmax, colorscale=colours, showscale=bool(bar),
                                 colorbar=_colorbar(kind, scale, contrast, int(min(360, 0.45 * page_width)))
                                 if bar else None, hoverongaps=False, name=plain, **hover))
        notes.append(dict(text=f"<b>{label}</b>", xref="paper", yref="y", x=0, xanchor="right", xshift=-4,
                          y=i * step_y + (h - 1) / 2, yanchor="middle", textangle=-90, showarrow=False,
                          font=dict(size=label_font)))
    for j, lines in enumerate(titles):
        notes.append(dict(text="<br>".join(lines), xref="x", yref="paper", x=j * step_x + (w - 1) / 2, y=1,
                          yanchor="bottom", showarrow=False, font=dict(size=head_font)))
    if colorbar and any(kind == "mask" for _, _, kind in rows):
        notes.append(dict(text=f"<span style='color:{MASK_SCALE[-1][1]}'>■</span> inside the mask or patch",
                          xref="paper", yref="paper", x=0, y=0, xanchor="left", yanchor="top", yshift=-6,
                          showarrow=False, font=font(12)))
    for i, p in enumerate(per_row):  # an outline around the pixel in every map, leaving its value visible
        if p is not None:
            r, c = p
            shapes += [dict(type="rect", x0=j * step_x + c - 0.5, x1=j * step_x + c + 0.5, y0=i * step_y + r - 0.5,
                            y1=i * step_y + r + 0.5, line=dict(color=MARK, width=1)) for j in range(n_cols)]
    # one validation for all annotations and shapes (adding them one by one is quadratic in plotly)
    fig = go.Figure(traces, layout=dict(annotations=notes, shapes=shapes))
    _square_axes(fig, full_h, full_w)
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    top = 10 + round(1.25 * head_font) * max(len(lines) for lines in titles)
    bottom = 24 + 2 * fs(12) if colorbar else 6
    # a fixed size (`show` draws it at its own width), its plot area shaped like the maps: no blank bands
    fig.update_layout(width=int(round(zoom * full_w) + label_width + right),
                      height=round(zoom * full_h) + top + bottom,
                      margin=dict(l=label_width, r=right, t=top, b=bottom), font=font(),
                      plot_bgcolor="white",
                      paper_bgcolor="white", dragmode=False, hovermode="closest")
    return fig


def locality_plot(sigmas: list[float], sizes: dict[str, np.ndarray], levels=(0.5, 0.75, 0.95),
                  titles: dict[str, str] | None = None, image_side: int | None = None, height: int = 430) -> go.Figure:
    """Locality size (smallest k x k square holding 50/75/95 % of the field's mass) against sigma, per model."""
    fig = go.Figure()
    titles = titles or {}
    for name, table in sizes.items():
        table = np.asarray(table)
        for q_i, q in enumerate(levels):
            fig.add_trace(go.Scatter(
                x=sigmas, y=table[:, q_i], mode="lines+markers", name=f"{titles.get(name, name)}, {int(q * 100)} %",
                line=dict(color=MODEL_COLOURS.get(name, None), dash=LEVEL_DASH.get(q, "solid"), width=3),
                marker=dict(size=8), hovertemplate="σ=%{x:.3g}: %{y} px square<extra>%{fullData.name}</extra>"))
    fig.update_xaxes(type="log", title="noise level σ (high noise on the left)", autorange="reversed", dtick=1)
    fig.update_yaxes(title="square size k (pixels)", rangemode="tozero", automargin=True)
    if image_side:  # sizes are capped at the image side: the axis ends there, its last tick says so
        fig.add_hline(y=image_side, line=dict(color="gray", dash="dot"))
        ticks = [v for v in np.linspace(0, image_side, 5).round().astype(int)[:-1]] + [image_side]
        fig.update_yaxes(range=[0, image_side * 1.04], tickvals=ticks,
                         ticktext=[str(v) for v in ticks[:-1]] + [f"{image_side} (image)"])
    fig.update_layout(height=height, font=font(), margin=dict(l=60, r=20, t=30, b=50),
                      legend=dict(orientation="v", x=1.01, y=1), plot_bgcolor="white", paper_bgcolor="white")
    fig.update_xaxes(automargin=True)
    fig.update_xaxes(showgrid=True, gridcolor="#e5e5e5")
    fig.update_yaxes(showgrid=True, gridcolor="#e5e5e5")
    return fig


def line_plot(x, ys: dict[str, np.ndarray], *, x_title: str, y_title: str, log_x: bool = False, log_y: bool = False,
              height: int = 380, markers: bool = False) -> go.Figure:
    fig = go.Figure()
    for name, y in ys.items():
        fig.add_trace(go.Scatter(x=np.asarray(x), y=np.asarray(y), name=name, mode="lines+markers" if markers
                                 else "lines", line=dict(width=3, color=MODEL_COLOURS.get(name.lower()))))
    fig.update_xaxes(title=x_title, type="log" if log_x else "linear", showgrid=True, gridcolor="#e5e5e5",
                     dtick=1 if log_x else None)
    fig.update_yaxes(title=y_title, type="log" if log_y else "linear", showgrid=True, gridcolor="#e5e5e5",
                     dtick=1 if log_y else None)
    fig.update_layout(height=height, font=font(), margin=dict(l=60, r=20, t=30, b=50), plot_bgcolor="white",
                      paper_bgcolor="white", legend=dict(x=1.01, y=1))
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


# ---------------------------------------------------------------- Pillow PNGs (downloads)

def _lut(scale) -> np.ndarray:
    """(256, 3) uint8 lookup table of a plotly colour scale."""
    stops = scale
    pos = np.array([s[0] for s in stops])
    rgb = np.array([pcolors.hex_to_rgb(c) if c.startswith("#") else pcolors.unlabel_rgb(c) for _, c in stops], float)
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, pos, rgb[:, k]) for k in range(3)], 1).round().astype(np.uint8)


def _paint(values: np.ndarray, lo: float, hi: float, scale) -> np.ndarray:
    """Values from ``lo`` to ``hi`` -> (H, W, 3) uint8 through a plotly colour scale (clipped at both ends)."""
    idx = np.clip((np.asarray(values, float) - lo) / (hi - lo or 1.0) * 255, 0, 255).astype(np.uint8)
    return _lut(scale)[idx]


def colour_map(m: np.ndarray, kind: str) -> np.ndarray:
    """(H, W) map -> (H, W, 3) uint8, coloured like the plotly figures (its range from `_z_range`)."""
    return _paint(m, *_z_range(m, kind))


def _font_path() -> str | None:
    """A TrueType font with Greek letters (σ, θ, λ): Debian's DejaVu, else the copy inside matplotlib."""
    candidates = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
    try:
        import matplotlib

        candidates.append(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf",
                                       "DejaVuSans.ttf"))
    except ImportError:
        pass
    return next((p for p in candidates if os.path.isfile(p)), None)


FONT_PATH = _font_path()
GREEK = {"σ": "sigma", "θ": "theta", "λ": "lambda", "₀": "0", "x̂": "x_hat", "ᵀ": "^T", "²": "^2", "→": "->"}


def _font(size: int):
    if FONT_PATH:
        return ImageFont.truetype(FONT_PATH, size)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _plain(text: str) -> str:
    """Figure text for a PNG: plotly's <sub>/<b> tags dropped, Greek spelled out when no font has it."""
    text = re.sub(r"<sub>(.*?)</sub>", r"_\1", text)
    text = re.sub(r"<sup>(.*?)</sup>", r"^\1", text)
    text = re.sub(r"</?b>", "", text)
    if not FONT_PATH:
        for letter, word in GREEK.items():
            text = text.replace(letter, word)
    return text


def grid_png(rows: list[tuple[str, np.ndarray, str]], col_titles: list[str], *, pixel=None, title: str = "",
             cell: int = 168, scale: str = "surround", contrast: str = "linear") -> bytes:
    """The same grid as `map_grid`, coloured by the same ``scale`` and ``contrast`` (`scaled_maps`), as a crisp
    PNG (nearest-neighbour upscaling), for slides; the scale is named under the title."""
    if text_minimum():  # presentation mode: a row is named by its first line (the denoiser), large enough to read
        rows = [(label.split("<br>")[0], maps, kind) for label, maps, kind in rows]
    n_rows, n_cols = len(rows), len(col_titles)
    h, w = rows[0][1].shape[-2:]
    zoom = max(1, cell // max(h, w))
    cw, ch = w * zoom, h * zoom
    pad, left, top = 8, 190, 70 + (58 if title else 0)
    img = Image.new("RGB", (left + n_cols * (cw + pad), top + n_rows * (ch + pad)), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(22), _font(17)
    if title:
        draw.text((pad, 6), _plain(title), fill="black", font=font)
        draw.text((pad, 34), _plain("colours: " + SCALES[scale] + ("" if contrast == "linear" else ", √ contrast")),
                  fill="#555555", font=small)
    for j, text in enumerate(col_titles):
        for k, line in enumerate(_plain(text).split("<br>")):
            draw.text((left + j * (cw + pad), top - 62 + 22 * k), line, fill="black", font=small)
    per_row = pixel if isinstance(pixel, list) else [pixel] * n_rows
    scaled = scaled_maps(rows, scale, contrast, per_row)
    for i, (label, _, _) in enumerate(rows):
        y = top + i * (ch + pad)
        lines = _plain(label).split("<br>")
        for k, line in enumerate(lines):
            draw.text((pad, y + ch // 2 - 12 + 22 * (k - (len(lines) - 1) / 2)), line, fill="black", font=small)
    tiles = [[Image.fromarray(_colour_scaled(z, row[2])) for z in maps[:n_cols]] for row, maps in zip(rows, scaled)]
    for corners, mark in zip(paste_grid(img, tiles, (left, top), (cw, ch), pad), per_row):
        for x, y in corners if mark is not None else ():
            r, c = mark
            draw.rectangle([x + c * zoom, y + r * zoom, x + (c + 1) * zoom - 1, y + (r + 1) * zoom - 1],
                           outline=MARK, width=max(1, zoom // 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _colour_scaled(z: np.ndarray, kind: str) -> np.ndarray:
    """A map already scaled to [-1, 1] ("signed") or [0, 1] (`scaled_maps`) -> (H, W, 3) uint8, as `map_grid`
    colours it."""
    if kind == "signed":
        return _paint(z, -1.0, 1.0, SIGNED_SCALE)
    return _paint(z, 0.0, 1.0, MASK_SCALE if kind == "mask" else ABS_SCALE)


def images_png(images: list[np.ndarray], titles: list[str], *, cell: int = 168, columns: int | None = None) -> bytes:
    """Images (C, H, W) in [-1, 1] side by side (wrapping after ``columns``), titled, as a PNG."""
    columns = columns or len(images)
    h, w = images[0].shape[-2:]
    scale = max(1, cell // max(h, w))
    cw, ch, pad, top = w * scale, h * scale, 10, 30
    n_rows = -(-len(images) // columns)
    img = Image.new("RGB", (columns * (cw + pad) + pad, n_rows * (ch + pad + top) + pad), "white")
    draw = ImageDraw.Draw(img)
    font = _font(17)
    for k, (image, text) in enumerate(zip(images, titles)):
        shown = to_display(image)
        if shown.ndim == 2:
            shown = (np.clip((shown + 1) / 2, 0, 1) * 255 + 0.5).astype(np.uint8)
        tile = Image.fromarray(shown).resize((cw, ch), Image.Resampling.NEAREST)
        x, y = pad + (k % columns) * (cw + pad), pad + (k // columns) * (ch + pad + top)
        draw.text((x, y), _plain(text), fill="black", font=font)
        img.paste(tile, (x, y + top))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def tiles_figure(images: np.ndarray, titles: list[str], *, columns: int = 8, kind: str = "signed",
                 page_width: int = PAGE_WIDTH, tile_px: int = 150) -> go.Figure:
    """Small multiples: ``images`` (K, C, H, W), each scaled to its own max |value|, in rows of ``columns``.

    Grayscale: one heatmap (red-blue for "signed", gray for "image"). Colour: one RGB image with 0 at mid-gray,
    channels scaled by the tile's max |value| ("signed") or shown as they are ("image"). A title above each.
    The figure has a fixed size (tiles of at most ``tile_px`` pixels, at most ``page_width`` wide): show it at
    its own width, since a stretched figure keeps its height and pads the equal-aspect tiles with blank space.
    """
    images = np.asarray(images, dtype=np.float64)
    k, c, h, w = images.shape
    gap = max(1, round(0.15 * max(h, w)))
    step_x = w + gap
    full_w = columns * step_x - gap
    zoom = min(tile_px / max(h, w), (page_width - 8) / full_w)  # screen pixels per image pixel
    title_px = fs(13)
    step_y = h + gap + max(3, round(0.25 * h), int(np.ceil(1.3 * title_px / zoom)))  # a title above each row
    n_rows = -(-k // columns)
    full_h = n_rows * step_y
    if c == 1:
        canvas = np.full((full_h, full_w), np.nan, dtype=np.float32)
    else:
        canvas = np.full((full_h, full_w, 3), 255, dtype=np.uint8)
    notes = []
    for i in range(k):
        y0, x0 = (i // columns) * step_y + (step_y - h), (i % columns) * step_x
        tile = images[i]
        top = float(np.max(np.abs(tile))) or 1.0
        if c == 1:
            canvas[y0:y0 + h, x0:x0 + w] = tile[0] / top if kind == "signed" else tile[0]
        else:
            scaled = tile[:3] / top if kind == "signed" else tile[:3]
            canvas[y0:y0 + h, x0:x0 + w] = (np.clip((scaled.transpose(1, 2, 0) + 1) / 2, 0, 1) * 255
                                            + 0.5).astype(np.uint8)
        notes.append(dict(text=titles[i], x=x0 + (w - 1) / 2, y=y0 - 0.6, xref="x", yref="y", yanchor="bottom",
                          showarrow=False, font=dict(size=title_px)))
    if c == 1:
        scale = SIGNED_SCALE if kind == "signed" else _rgb_scale(["#000000", "#ffffff"])
        trace = go.Heatmap(z=canvas, zmin=-1.0, zmax=1.0, colorscale=scale, showscale=False, hoverinfo="skip")
    else:
        trace = go.Image(z=canvas, hoverinfo="skip")
    fig = go.Figure(trace, layout=dict(annotations=notes))
    _square_axes(fig, full_h, full_w)
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    fig.update_layout(width=round(zoom * full_w) + 8, height=round(zoom * full_h) + 8, margin=dict(l=4, r=4, t=4, b=4),
                      font=font(), plot_bgcolor="white", paper_bgcolor="white", dragmode=False)
    return fig


def spectrum_plot(eigvals: np.ndarray, fit: tuple[float, float, int, int] | None) -> go.Figure:
    """Eigenvalues against their rank on log-log axes, with the power-law fit lambda_k = A k^(-beta)."""
    k = np.arange(1, len(eigvals) + 1)
    keep = eigvals > 0
    fig = go.Figure(go.Scatter(x=k[keep], y=eigvals[keep], mode="lines", name="eigenvalues λ<sub>k</sub>",
                               line=dict(width=3, color=MODEL_COLOURS["wiener"])))
    if fit is not None:
        amplitude, beta, k0, k1 = fit
        kk = np.arange(k0, k1 + 1)
        fig.add_trace(go.Scatter(x=kk, y=amplitude * kk ** (-beta), mode="lines", name=f"fit ∝ k<sup>−{beta:.2f}</sup>",
                                 line=dict(width=3, dash="dash", color="#d62728")))
    fig.update_xaxes(type="log", title="component k", showgrid=True, gridcolor="#e5e5e5", dtick=1)
    fig.update_yaxes(type="log", title=dict(text="variance λ<sub>k</sub>", standoff=12), showgrid=True,
                     gridcolor="#e5e5e5", exponentformat="power", automargin=True)
    # the legend above the plot: inside it, it covered the start of the curve on some data sets
    fig.update_layout(height=400, font=font(), margin=dict(l=70, r=20, t=50, b=50), plot_bgcolor="white",
                      paper_bgcolor="white", legend=dict(orientation="h", x=0, y=1.02, yanchor="bottom"))
    return fig


def cumulative_plot(eigvals: np.ndarray, marks: dict[float, int]) -> go.Figure:
    """Share of the total variance held by the first k components, with the 90/95/99 % points marked."""
    share = np.cumsum(eigvals) / eigvals.sum()
    k = np.arange(1, len(eigvals) + 1)
    fig = go.Figure(go.Scatter(x=k, y=share * 100, mode="lines", name="cumulative variance",
                               line=dict(width=3, color=MODEL_COLOURS["wiener"]), showlegend=False))
    fig.add_trace(go.Scatter(x=list(marks.values()), y=[q * 100 for q in marks], mode="markers+text",
                             text=[f"{int(q * 100)} %" for q in marks], textposition="bottom right",
                             marker=dict(size=10, color="#d62728"), showlegend=False))
    fig.add_annotation(text="<br>".join(f"{int(q * 100)} % of the variance: {n} components" for q, n in marks.items()),
                       xref="paper", yref="paper", x=0.98, y=0.04, xanchor="right", yanchor="bottom", align="right",
                       showarrow=False)
    fig.update_xaxes(type="log", title="number of components k", showgrid=True, gridcolor="#e5e5e5", dtick=1,
                     range=[0, np.log10(len(eigvals)) + 0.2])  # room right of the last marker for its label
    fig.update_yaxes(title="variance held (%)", range=[0, 101], showgrid=True, gridcolor="#e5e5e5")
    fig.update_layout(height=380, font=font(), margin=dict(l=60, r=20, t=20, b=50), plot_bgcolor="white",
                      paper_bgcolor="white")
    return fig


def gains_plot(eigvals: np.ndarray, sigmas: list[float], labels: list[str]) -> go.Figure:
    """Wiener gains lambda_k / (lambda_k + sigma^2) against k, one curve per noise level."""
    k = np.arange(1, len(eigvals) + 1)
    colours = pcolors.sample_colorscale("Viridis", np.linspace(0, 0.9, max(2, len(sigmas))))
    fig = go.Figure()
    for s, label, colour in zip(sigmas, labels, colours):
        fig.add_trace(go.Scatter(x=k, y=eigvals / (eigvals + s**2), mode="lines", name=label,
                                 line=dict(width=2.5, color=colour)))
    fig.add_hline(y=0.5, line=dict(color="gray", dash="dot"), annotation_text="λ = σ²: half passes",
                  annotation_position="bottom left")
    fig.update_xaxes(type="log", title="component k", showgrid=True, gridcolor="#e5e5e5", dtick=1)
    fig.update_yaxes(title="gain λ/(λ+σ²)", range=[0, 1.02], showgrid=True, gridcolor="#e5e5e5")
    fig.update_layout(height=400, font=font(), margin=dict(l=60, r=20, t=20, b=50), plot_bgcolor="white",
                      paper_bgcolor="white", legend=dict(x=1.01, y=1))
    return fig
