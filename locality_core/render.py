"""Pillow-only figures: maps in a colour scale, image grids, labels. No plotting library needed.

Glossary
    to_uint8_image   (C, H, W) image in [-1, 1] -> PIL image
    heat             (H, W) map -> RGB PIL image; 'abs' maps use a sequential scale from 0 to the max,
                     'signed' maps a diverging one symmetric around 0
    paste_grid       the one image-grid renderer: rows of tiles, upscaled with nearest neighbour, a fixed gap
                     apart; the CLI's figures and the app's PNG downloads (``ui.figures.grid_png``) draw with it
    labelled_grid    `paste_grid` with row and column labels and a title
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# (position, RGB) anchors: a perceptually ordered dark-to-bright scale and a blue-white-red diverging one.
SEQUENTIAL = [(0.0, (13, 8, 135)), (0.25, (126, 3, 168)), (0.5, (204, 71, 120)), (0.75, (248, 149, 64)),
              (1.0, (240, 249, 33))]
DIVERGING = [(0.0, (33, 102, 172)), (0.5, (247, 247, 247)), (1.0, (178, 24, 43))]


def apply_colormap(values: np.ndarray, anchors=SEQUENTIAL) -> np.ndarray:
    """values in [0, 1] (any shape) -> uint8 RGB (..., 3) by linear interpolation between anchors."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    pos = np.array([a[0] for a in anchors])
    cols = np.array([a[1] for a in anchors], dtype=np.float64)
    rgb = np.stack([np.interp(v, pos, cols[:, i]) for i in range(3)], axis=-1)
    return rgb.round().astype(np.uint8)


def heat(field_map: np.ndarray, mode: str = "abs", vmax: float | None = None) -> Image.Image:
    m = np.asarray(field_map, dtype=np.float64)
    if mode == "signed":
        scale = vmax or float(np.abs(m).max()) or 1.0
        return Image.fromarray(apply_colormap(0.5 + 0.5 * m / scale, DIVERGING))
    scale = vmax or float(np.abs(m).max()) or 1.0
    return Image.fromarray(apply_colormap(np.abs(m) / scale))


def to_uint8_image(x: np.ndarray) -> Image.Image:
    """(C, H, W) or (H, W) image in [-1, 1] -> PIL image (L or RGB)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    u8 = ((np.clip(a, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    return Image.fromarray(u8.transpose(1, 2, 0) if u8.ndim == 3 else u8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        return ImageFont.load_default()


def paste_grid(canvas: Image.Image, tiles: list[list[Image.Image]], origin: tuple[int, int],
               cell: tuple[int, int], pad: int) -> list[list[tuple[int, int]]]:
    """Paste rows of ``tiles`` onto ``canvas``, each as RGB upscaled to ``cell`` (w, h) by nearest neighbour,
    ``pad`` pixels apart, the first at ``origin`` (x, y); returns each tile's top-left corner, row by row."""
    (x0, y0), (w, h) = origin, cell
    corners = []
    for i, row in enumerate(tiles):
        corners.append([(x0 + j * (w + pad), y0 + i * (h + pad)) for j in range(len(row))])
        for tile, xy in zip(row, corners[-1], strict=True):
            canvas.paste(tile.convert("RGB").resize((w, h), Image.NEAREST), xy)
    return corners


def labelled_grid(tiles: list[list[Image.Image]], row_labels: list[str], col_labels: list[str], *,
                  scale: int = 4, title: str | None = None, pad: int = 4) -> Image.Image:
    """A grid of equally sized tiles (rows x cols), each upscaled ``scale`` times, with labels."""
    rows, cols = len(tiles), max(len(r) for r in tiles)
    tw, th = tiles[0][0].size
    tw, th = tw * scale, th * scale
    font = _font(14)
    label_w = max([int(font.getlength(s)) for s in row_labels] + [0]) + 3 * pad
    top = (24 if title else 0) + 20
    width = label_w + cols * (tw + pad) + pad
    if title:
        width = max(width, int(_font(16).getlength(title)) + 2 * pad)
    height = top + rows * (th + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill="black", font=_font(16))
    for j, label in enumerate(col_labels):
        draw.text((label_w + j * (tw + pad), top - 18), label, fill="black", font=font)
    for i in range(rows):
        y = top + i * (th + pad)
        draw.text((pad, y + th // 2 - 7), row_labels[i] if i < len(row_labels) else "", fill="black", font=font)
    paste_grid(canvas, tiles, (label_w, top), (tw, th), pad)
    return canvas


def mark_pixel(img: Image.Image, pixel: tuple[int, int], color=(0, 255, 0)) -> Image.Image:
    """An RGB copy of ``img`` with one pixel (row, col) painted ``color``."""
    out = img.convert("RGB")
    out.putpixel((pixel[1], pixel[0]), color)
    return out
