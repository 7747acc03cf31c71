"""Sensitivity: which input pixels does a denoiser's output pixel listen to, at each noise level?

First screen (1280x720 and up): the clickable image on the left, the field grid (noise levels as columns) on
the right, sized to the width the browser reports. Below: what the numbers say (sentences computed from them),
the locality curve, the table, downloads and the trained-linear-denoiser experiment.
"""

import io

import numpy as np
import pandas as pd
import streamlit as st

from locality_core.analysis.claims import effective_rank, field_claims
from locality_core.analysis.fields import Field, cosine_similarity, locality_sizes, wiener_field
from locality_core.denoisers.analytical import default_theta
from locality_core.denoisers.patches import resolve_schedule, square_mask
from locality_core.denoisers.wiener import passing_components
from ui import loading
from ui.figures import CONTRASTS, SCALES, grid_png, is_flat, locality_plot, map_grid, noise_header
from ui.layout import explain, page_header, split_widths
from ui.linear import linear_fit_section
from ui.state import current_view
from ui.widgets import PREVIEW_N, file_download, mask_maps, model_maps, picker, png_download, preview_field, show

view = current_view()
data, stats = loading.require_data(view)
C, H, W = data.shape
data_key = (view.dataset, view.params_json, "")

page_header("Sensitivity fields", view, data)
picker_width, grid_width = split_widths()

controls = st.columns([1.35, 0.75, 0.8, 0.8, 0.95, 0.8, 0.9], vertical_alignment="center")
flat_mean = is_flat(stats.mean)  # natural patches, random fields: a uniform square shows nothing to click on
background = controls[0].segmented_control(
    "Picture to click on", ["mean image", "test image"], default="test image" if flat_mean else "mean image",
    key="bg", bind="query-params", required=True, label_visibility="collapsed")
image_index = 0
if background == "test image":
    image_index = int(controls[1].number_input("Test image #", 0, len(data.test) - 1, 0, key="img",
                                               bind="query-params", label_visibility="collapsed",
                                               help="Index of the test image to click on."))
signed = controls[2].toggle("Signed", key="signed", bind="query-params",
                            help="Off: mean |J| (where the pixel listens). On: mean J with its sign "
                                 "(positive red, negative blue).")
use_unet = controls[3].toggle("UNet", value=True, key="unet", bind="query-params",
                              help="Jacobians of the trained network at 32 noisy test images per noise level; "
                                   f"a first view from {PREVIEW_N} images appears at once.")
use_mask = controls[4].toggle("Analytical", value=True, key="masks", bind="query-params",
                              help="The paper's analytical denoiser: each output pixel averages training images "
                                   "over its own neighbourhood, read off the Wiener matrix by a threshold.")
use_patch = controls[5].toggle("ELS", value=True, key="els", bind="query-params",
                               help="Kamb & Ganguli's patch machine: each output pixel is built from the P x P "
                                    "patch around it, P growing with noise (their calibrated schedule).")
with controls[6].popover("Display", icon=":material/tune:"):
    scale = st.radio("Colour scale", list(SCALES), format_func=SCALES.get, key="scale", bind="query-params",
                     help="Fields differ in magnitude by orders across noise levels; 'each map' shows their shapes, "
                          "'per column' compares the rows of one noise level, 'per row' one denoiser across noise.")
    contrast = st.radio("Contrast", list(CONTRASTS), format_func=CONTRASTS.get, key="contrast",
                        bind="query-params")
    threshold = st.radio("Analytical mask threshold relative to", ["global", "row"], key="mask_mode",
                         bind="query-params", captions=["max |M| over the whole matrix (the paper's)",
                                                        "each row's own max |M| (robust)"])
    theta = st.number_input("θ", 1e-4, 0.5, float(default_theta(data.shape)), format="%.4f", key="theta",
                            bind="query-params", help="Input n is in the neighbourhood of output m when |M[n, m]| ≥ "
                                                      "θ max|M|, M = P_σ with each row divided by its diagonal.")
mode = "signed" if signed else "abs"
bg_image = stats.mean.reshape(C, H, W) if background == "mean image" else data.test[image_index].numpy()
unet_ok, unet_message = loading.denoiser_status("unet", data)
precision = loading.field_precision()
rank = effective_rank(stats.eigvals)


def els_square(pixel: tuple[int, int], size: int) -> np.ndarray:
    """(H, W) 0/1: the pixel's column of the ELS machine's `patches.square_mask` (its P x P patch, clipped at the
    border). The square is separable: rows near the pixel's row times columns near its column, each the column of
    a one-pixel-wide image's mask, so no (d, d) mask is built per click."""
    rows = square_mask((1, H, 1), size)[:, pixel[0]]
    cols = square_mask((1, 1, W), size)[:, pixel[1]]
    return np.outer(rows, cols).astype(float)


def els_patches(pixel: tuple[int, int]) -> tuple[np.ndarray, list[int], str]:
    """The ELS patch around the pixel at each sigma, P from the machine's schedule: (S, H, W) maps, sizes, source."""
    schedule = resolve_schedule(data, "els")
    sizes = [schedule.size_for(s) for s in view.sigmas]
    return np.stack([els_square(pixel, p) for p in sizes]), sizes, schedule.source


def field_table(sizes: dict[str, np.ndarray], cosines, masks, patch_sizes) -> pd.DataFrame:
    """Per noise level (columns): components passing, 50 % squares (of ``sizes``, `locality_sizes` per
    field), the UNet-Wiener cosine, mask sizes."""
    table = {"components with λ > σ²": [passing_components(stats.eigvals, s) for s in view.sigmas],
             "Wiener 50 % square (px)": list(sizes["wiener"][:, 0])}
    if "unet" in sizes:
        table["UNet 50 % square (px)"] = list(sizes["unet"][:, 0])
        table["cos(UNet, Wiener)"] = [f"{c:.2f}" for c in cosines]
    if masks is not None:
        table["analytical mask: inputs"] = masks[1]
        table["analytical mask: max |M|"] = [f"{m:.3g}" for m in masks[2]]
    if patch_sizes is not None:
        table["ELS patch size P"] = patch_sizes
    columns = [" ".join(noise_header(s)) for s in view.sigmas]
    return pd.DataFrame(table, index=columns).T.astype(str)


def fields_npz(pixel, rows) -> bytes:
    """Every map of the grid with its noise levels and pixel, as a NumPy .npz (raw values, not rescaled)."""
    buf = io.BytesIO()
    arrays = {label.split("<br>")[0].lower().replace(" ", "_"): np.asarray(maps) for label, maps, _ in rows}
    np.savez_compressed(buf, sigmas=np.asarray(view.sigmas), pixel=np.asarray(pixel), **arrays)
    return buf.getvalue()


def grid_rows(wiener: Field, unet: Field | None, masks, patch, stage: str) -> list:
    rows = [("Wiener<br>" + ("P<sub>σ</sub> row" if signed else "|P<sub>σ</sub> row|"), wiener.map(mode), mode)]
    if unet is not None:
        rows.append(("UNet<br>" + ("mean J" if signed else "mean |J|") + (f" ({PREVIEW_N} img)" if stage == "preview"
                                                                          else ""), unet.map(mode), mode))
    if masks is not None:
        rows.append(("Analytical<br>mask", masks[0], "mask"))
    if patch is not None:
        rows.append(("ELS<br>patch", patch[0], "mask"))
    return rows


def draw_grid(pixel, wiener: Field, unet: Field | None, masks, patch, slot, stage: str) -> list:
    cosines = None if unet is None else [cosine_similarity(a, b) for a, b in zip(unet.map("abs"), wiener.map("abs"))]
    titles = [noise_header(s) + ([f"cos {c:.2f}"] if cosines else []) for s, c in
              zip(view.sigmas, cosines or [None] * len(view.sigmas))]
    rows = grid_rows(wiener, unet, masks, patch, stage)
    with slot.container():
        if stage == "preview":
            st.caption(f":material/hourglass_top: UNet row from {PREVIEW_N} noisy images per noise level; the "
                       "32-image average replaces it in a few seconds (then cached).")
        show(map_grid(rows, titles, pixel=pixel, page_width=grid_width, scale=scale, contrast=contrast),
             "field_grid" + ("" if stage == "final" else "_preview"),
             f"{view.dataset}-fields-r{pixel[0]}c{pixel[1]}")
    return cosines


def details(pixel, wiener: Field, unet: Field | None, cosines, masks, patch) -> None:
    """Below the first screen: findings, locality curve, table, downloads."""
    sizes = {"wiener": locality_sizes(wiener)}
    if unet is not None:
        sizes["unet"] = locality_sizes(unet)
    variance = np.diag(stats.cov).reshape(C, H, W)[:, pixel[0], pixel[1]]
    claims = field_claims(list(view.sigmas), sizes["wiener"][:, 0], rank=rank, d=stats.d, n_train=stats.n,
                          unet_sizes=None if unet is None else sizes["unet"][:, 0], cosines=cosines,
                          constant_pixel=not np.any(variance > 0))
    explain(view, "Each map shows how strongly the chosen **output** pixel of a denoiser depends on every "
                  "**input** pixel at one noise level (the Jacobian row ∂D(x, σ)ₘ/∂x, averaged over noisy test "
                  "images). The Wiener filter's field follows from the data's covariance alone; where the trained "
                  "UNet's field looks the same, its locality comes from the data, not from the convolutions.")
    left, right = st.columns([1.2, 1], gap="medium")
    with right:
        st.markdown(f"**What the numbers say** (pixel row {pixel[0]}, col {pixel[1]})")
        st.markdown("\n".join(f"- {c.text}" for c in claims), help="Each sentence is computed from the numbers "
                    "on this page for this data set and pixel.")
        scale_text = SCALES[scale] + ("" if contrast == "linear" else ", square-root contrast")
        st.caption(f"Colours: {scale_text}; signed maps are symmetric around 0. Hover a map for raw values. "
                   "**How local?** The curve shows the side of the smallest centred square holding 50 / 75 / 95 % "
                   "of a field's absolute mass (capped at the image).")
        if unet is not None and precision == "bfloat16":
            st.caption("UNet Jacobians use bfloat16 matrix products, which this CPU runs natively (maps within "
                       "cosine 0.999 of float32, tested).")
        if patch is not None:
            st.caption(f"ELS patch sizes from the schedule: {patch[2]}.")
        if masks is not None:
            st.caption(f"Analytical mask: θ = {masks[3]:.3g} ({threshold} threshold). A mask that fills the image "
                       "means every input pixel is in the neighbourhood at that noise level.")
    with left:
        show(locality_plot(list(view.sigmas), sizes, titles={"wiener": "Wiener", "unet": "UNet"},
                           image_side=max(H, W), height=340), "locality_plot",
             f"{view.dataset}-locality-r{pixel[0]}c{pixel[1]}")
    st.dataframe(field_table(sizes, cosines, masks, None if patch is None else patch[1]), width="stretch")
    rows = grid_rows(wiener, unet, masks, patch, "final")
    titles = [" ".join(noise_header(s)) for s in view.sigmas]
    name = f"{view.dataset}-fields-r{pixel[0]}c{pixel[1]}"
    a, b = st.columns(2)
    with a:
        png_download("Download the maps (PNG)", lambda: grid_png(rows, titles, pixel=pixel, scale=scale,
                                                                 contrast=contrast, title=(
            f"{view.dataset}: pixel (row {pixel[0]}, col {pixel[1]})")), f"{name}.png", key="grid_png")
    with b:
        file_download("Download the raw fields (.npz)", lambda: fields_npz(pixel, rows), f"{name}.npz",
                      "application/octet-stream", key="grid_npz")


@st.fragment
def pixel_and_maps():
    left, right = st.columns([picker_width, grid_width], gap="small")
    with left:
        pixel = picker(bg_image, data.shape, size=picker_width)
    with loading.single_thread_blas():
        wiener = wiener_field(stats, pixel, view.sigmas)
    masks = patch = None
    try:
        if use_mask:
            masks = mask_maps(data_key, pixel, view.sigmas, theta, threshold)
        if use_patch:
            patch = els_patches(pixel)
    except (*loading.USER_ERRORS, ValueError) as exc:
        loading.show_error(exc, "Masks")
    with right:
        progress_slot = st.empty()
        grid_slot = st.empty()
        if use_unet and not unet_ok:
            st.info(f"UNet row not shown: {unet_message}", icon=":material/model_training:")
    unet = None
    if use_unet and unet_ok:
        def preview() -> None:  # a level of the full fields is not cached: a quick first view meanwhile
            progress_slot.progress(0.0, text=f"UNet: a first view from {PREVIEW_N} noisy images per noise level…")
            draw_grid(pixel, wiener, preview_field("unet", data, pixel, view.sigmas, view.seed, precision), masks,
                      patch, grid_slot, "preview")

        try:
            abs_m, signed_m = model_maps("unet", "UNet", data, pixel, view.sigmas, view.seed, precision=precision,
                                         slot=progress_slot, on_miss=preview)
            unet = Field(pixel, view.sigmas, abs_m, signed_m)
        except loading.USER_ERRORS as exc:
            with right:
                loading.show_error(exc, "UNet")
    cosines = draw_grid(pixel, wiener, unet, masks, patch, grid_slot, "final")
    details(pixel, wiener, unet, cosines, masks, patch)


pixel_and_maps()

with st.expander("Does gradient descent find the Wiener filter? (trained linear denoiser)",
                 icon=":material/trending_down:"):
    linear_fit_section(view, data, stats, data_key)
