"""Figures of the Memorisation-to-generalisation page (no streamlit here): the A/B sample pairs with their nearest
training images, and the curves against N for the networks and the analytical denoiser."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ui.figures import MODEL_COLOURS, font, fs, tiles_figure

KIND_TITLES = {"unet": "networks", "analytical": "analytical"}
KIND_COLOURS = {"unet": MODEL_COLOURS["unet"], "analytical": MODEL_COLOURS["analytical"]}


def pair_figure(sides: dict[str, dict], nearest: dict[str, np.ndarray], columns: int = 8,
                tile_px: int = 74) -> tuple[go.Figure, list[np.ndarray], list[str]]:
    """Rows: A's samples, the nearest image of subset A to each, B's samples, the nearest image of subset B.

    ``sides``: {"A": side arrays, "B": ...} (`generalisation.side_arrays`); ``nearest``: {"A": (n, C, H, W)
    training images}. Returns the figure and its tiles and titles (for a PNG download)."""
    images, titles = [], []
    for split in ("A", "B"):
        samples = sides[split]["samples"][:columns]
        images += list(samples) + list(nearest[split][:columns])
        titles += [f"{split} #{i + 1}" for i in range(len(samples))]
        titles += [f"L2 {d:.1f}" for d in sides[split]["dist_own"][:columns]]
    return tiles_figure(np.stack(images), titles, columns=columns, kind="image", tile_px=tile_px), images, titles


def _layout(fig: go.Figure, title: str, y_title: str, n: int | None, log_y: bool = False) -> go.Figure:
    if n is not None:
        fig.add_vline(x=n, line=dict(color="#999999", dash="dot", width=1))
    fig.update_xaxes(title=dict(text="N", standoff=4), type="log", dtick=1, tickformat=",d", showgrid=True,
                     gridcolor="#e5e5e5")  # 1,000 and 10,000 (the default mixes 1000 and 10k)
    fig.update_yaxes(title=dict(text=y_title, standoff=8), automargin=True, type="log" if log_y else "linear",
                     showgrid=True, gridcolor="#e5e5e5", tickformat=".2g" if log_y else None,
                     dtick="D2" if log_y else None)
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", font=font(15)), height=400,
                      font=font(13), margin=dict(l=56, r=10, t=16 + 1.4 * fs(15), b=10), plot_bgcolor="white",
                      paper_bgcolor="white", legend=dict(orientation="h", x=0, y=-0.2, yanchor="top"))
    return fig


def _trace(fig: go.Figure, rows: list[dict], key: str, name: str, colour: str, dash: str = "solid") -> None:
    fig.add_trace(go.Scatter(x=[r["n"] for r in rows], y=[r[key] for r in rows], name=name, mode="lines+markers",
                             line=dict(width=3, color=colour, dash=dash), marker=dict(size=8)))


def similarity_figure(tables: dict[str, list[dict]], n: int | None = None) -> go.Figure:
    """Mean A-B cosine similarity of the samples against N, one line per kind."""
    fig = go.Figure()
    for kind, rows in tables.items():
        _trace(fig, rows, "cosine", KIND_TITLES[kind], KIND_COLOURS[kind])
    fig.update_yaxes(range=[min([0.0] + [r["cosine"] for rows in tables.values() for r in rows]) - 0.02, 1.02])
    return _layout(fig, "A-B similarity of samples", "cosine A vs B", n)


def distance_figure(tables: dict[str, list[dict]], n: int | None = None) -> go.Figure:
    """Distance of the samples to their own subset's nearest image; dotted: held-out images to the same subset."""
    fig = go.Figure()
    for kind, rows in tables.items():
        _trace(fig, rows, "dist_own", f"{KIND_TITLES[kind]}: samples", KIND_COLOURS[kind])
    rows = next(iter(tables.values()))
    _trace(fig, rows, "heldout_nn", "test images", "#555555", dash="dot")
    fig.add_hline(y=rows[0]["train_nn"], line=dict(color="#999999", dash="dash", width=1),
                  annotation_text="typical neighbour distance", annotation_position="top left",
                  annotation_font=dict(size=fs(12), color="#555555"))
    return _layout(fig, "Nearest own training image", "L2 distance", n)


def mse_figure(tables: dict[str, list[dict]], t: int, n: int | None = None) -> go.Figure:
    """Denoising MSE at t on own training images (solid) and held-out images (dashed) against N."""
    fig = go.Figure()
    for kind, rows in tables.items():
        _trace(fig, rows, f"train_mse_t{t}", f"{KIND_TITLES[kind]}: training", KIND_COLOURS[kind])
        _trace(fig, rows, f"heldout_mse_t{t}", f"{KIND_TITLES[kind]}: held-out", KIND_COLOURS[kind], dash="dash")
    return _layout(fig, f"Denoising error, t = {t}", "MSE per pixel", n, log_y=True)
