"""Sensitivity: which input pixels does a denoiser's output pixel listen to, at each noise level?"""

import numpy as np
import pandas as pd
import streamlit as st

from locality_core.fields import Field, cosine_similarity, locality_sizes, wiener_field
from locality_core.wiener import passing_components
from ui import data as D
from ui.figures import grid_png, locality_plot, map_grid
from ui.linear import linear_fit_section
from ui.state import current_view
from ui.widgets import PREVIEW_N, mask_maps, model_maps, picker, png_download, preview_maps, show

view = current_view()
data, stats = D.require_data(view)
C, H, W = data.shape
data_key = (view.dataset, view.params_json, "")
analytical = D.optional_module("analytical")
patches = D.optional_module("patches")

st.title("Sensitivity fields")
st.markdown(
    "Click a pixel of the image. Each map shows how strongly that **output** pixel of a denoiser depends on "
    "every **input** pixel at one noise level: the Jacobian row $\\partial D(x,\\sigma)_m/\\partial x$. "
    "The Wiener filter's field is exact and follows from the data's covariance alone; if the trained UNet's "
    "field looks the same, its locality comes from the data statistics, not from the convolutions.")

controls = st.columns([1.3, 0.9, 1, 1, 1.1])
background = controls[0].segmented_control(
    "Picture to click on", ["mean image", "test image"], default="mean image", key="bg", bind="query-params",
    required=True)
image_index = 0
if background == "test image":
    image_index = int(controls[1].number_input("Test image #", 0, len(data.test) - 1, 0, key="img",
                                               bind="query-params"))
signed = controls[2].toggle("Signed fields", key="signed", bind="query-params",
                            help="Off: mean |J| (where the pixel listens). On: mean J with its sign "
                                 "(positive red, negative blue).")
use_unet = controls[3].toggle("UNet row", value=True, key="unet", bind="query-params",
                              help="Jacobians of the trained network at 32 noisy test images per noise level. The "
                                   "first time, a quick view from 4 images appears at once and the full average "
                                   "replaces it after a few seconds; then cached.")
use_mask = controls[4].toggle("Analytical masks", value=analytical is not None, key="masks", bind="query-params",
                              disabled=analytical is None,
                              help="The paper's analytical denoiser: each output pixel averages training images "
                                   "over its own neighbourhood, read off the Wiener matrix by a threshold.")
use_patch = controls[4].toggle("ELS patches", value=patches is not None, key="els", bind="query-params",
                               disabled=patches is None,
                               help="Kamb & Ganguli's patch machine: each output pixel is built from the P x P "
                                    "patch around it, P growing with noise (their calibrated schedule).")
theta, threshold = None, "global"
if use_mask and analytical is not None:
    with st.popover("Mask threshold", icon=":material/tune:"):
        threshold = st.radio("Threshold relative to", ["global", "row"], key="mask_mode", bind="query-params",
                             captions=["max |M| over the whole matrix (the paper's)",
                                       "each row's own max |M| (robust)"])
        theta = st.number_input("θ", 1e-4, 0.5, float(analytical.default_theta(data.shape)), format="%.4f",
                                key="theta", bind="query-params",
                                help="Input n is in the neighbourhood of output m when |M[n, m]| ≥ θ max|M|, "
                                     "M = P_σ with each row divided by its diagonal.")
        st.caption("The global maximum of |M| comes from nearly constant border pixels whose tiny variance blows "
                   "their rows up, so the paper's global threshold is fragile; the table below shows max |M| at "
                   "each noise level.")
mode = "signed" if signed else "abs"
bg_image = stats.mean.reshape(C, H, W) if background == "mean image" else data.test[image_index].numpy()
unet_ok, unet_message = D.denoiser_status("unet", data)
precision = D.field_precision()


def els_patches(pixel: tuple[int, int]) -> tuple[np.ndarray, list[int], str]:
    """The P x P square around the pixel (clipped at the border) at each sigma, P from the ELS schedule."""
    schedule = patches.resolve_schedule(data, "els")
    sizes = [schedule.size_for(s) for s in view.sigmas]
    rows, cols = np.mgrid[0:H, 0:W]
    maps = np.stack([((np.abs(rows - pixel[0]) <= p // 2) & (np.abs(cols - pixel[1]) <= p // 2)).astype(float)
                     for p in sizes])
    return maps, sizes, schedule.source


def agreement_table(wiener: Field, unet: Field | None, masks, patch_sizes) -> pd.DataFrame:
    """Per noise level: components passing, 50 % squares, the UNet-Wiener cosine, mask sizes."""
    table = {"components with λ > σ²": [str(passing_components(stats.eigvals, s)) for s in view.sigmas],
             "Wiener 50 % square (px)": [str(k) for k in locality_sizes(wiener)[:, 0]]}
    if unet is not None:
        table["UNet 50 % square (px)"] = [str(k) for k in locality_sizes(unet)[:, 0]]
        table["cos(UNet, Wiener)"] = [f"{cosine_similarity(a, b):.2f}"
                                      for a, b in zip(unet.map(mode), wiener.map(mode))]
    if masks is not None:
        table["analytical mask: inputs"] = [str(n) for n in masks[1]]
        table["analytical mask: max |M|"] = [f"{m:.3g}" for m in masks[2]]
    if patch_sizes is not None:
        table["ELS patch size P"] = [str(p) for p in patch_sizes]
    return pd.DataFrame(table, index=list(view.labels)).T


def draw(pixel, wiener: Field, unet: Field | None, masks, patch, plot_slot, grid_slot, stage: str) -> None:
    """The locality plot, the map grid and the table; ``stage`` "preview" (few images, replaced when the full
    UNet fields arrive) or "final"."""
    rows = [("Wiener<br>" + ("P<sub>σ</sub> row" if signed else "|P<sub>σ</sub> row|"), wiener.map(mode), mode)]
    sizes = {"wiener": locality_sizes(wiener)}
    if unet is not None:
        n_label = f"<br>({PREVIEW_N} images)" if stage == "preview" else ""
        rows.append(("UNet<br>" + ("mean J" if signed else "mean |J|") + n_label, unet.map(mode), mode))
        sizes["unet"] = locality_sizes(unet)
    if masks is not None:
        rows.append((f"Analytical<br>mask (θ={masks[3]:.3g})", masks[0], "mask"))
    if patch is not None:
        rows.append(("ELS patch", patch[0], "mask"))
    suffix = "" if stage == "final" else "_preview"
    name = f"{view.dataset}-fields-r{pixel[0]}c{pixel[1]}"
    with plot_slot.container():
        show(locality_plot(list(view.sigmas), sizes, titles={"wiener": "Wiener", "unet": "UNet"},
                           image_side=max(H, W), height=360),
             "locality_plot" + suffix, f"{view.dataset}-locality-r{pixel[0]}c{pixel[1]}")
    table = agreement_table(wiener, unet, masks, None if patch is None else patch[1])
    titles = [lab.replace(" (", "<br>(") for lab in view.labels]
    if unet is not None:
        titles = [f"{t}<br>cos {c}" for t, c in zip(titles, table.loc["cos(UNet, Wiener)"])]
    with grid_slot.container():
        if stage == "preview":
            st.caption(f":material/hourglass_top: First view: UNet fields from {PREVIEW_N} noisy images per noise "
                       f"level. Averaging over 32 follows (progress above); it replaces this view and is cached.")
        show(map_grid(rows, titles, pixel=pixel), "field_grid" + suffix, name)
        st.dataframe(table, width="stretch")
        notes = []
        if unet is not None:
            notes.append("cos: cosine similarity of the UNet and Wiener maps in each column (1 = same shape).")
            if precision == "bfloat16":
                notes.append("UNet Jacobians are computed with bfloat16 matrix products, which this CPU runs "
                             "natively (3-5x faster; maps within cosine 0.999 of float32, tested).")
        if patch is not None:
            notes.append(f"ELS patch sizes from the schedule: {patch[2]}.")
        if notes:
            st.caption(" ".join(notes))
        if stage == "final":
            png_download("Download the maps (PNG)", lambda: grid_png(rows, titles, pixel=pixel, title=(
                f"{view.dataset}: pixel (row {pixel[0]}, col {pixel[1]})")), f"{name}.png", key="grid_png")


@st.fragment
def pixel_and_maps():
    left, right = st.columns([1, 1.5], gap="medium")
    with left:
        pixel = picker(bg_image, data.shape, title="Click a pixel", filename=f"{view.dataset}-picker")
    with D.single_thread_blas():
        wiener = wiener_field(stats, pixel, view.sigmas)
    masks = patch = None
    try:
        if use_mask and analytical is not None:
            masks = mask_maps(data_key, pixel, view.sigmas, theta, threshold)
        if use_patch and patches is not None:
            patch = els_patches(pixel)
    except (*D.USER_ERRORS, ValueError) as exc:
        D.show_error(exc, "Masks")
    with right:
        st.subheader(f"Pixel (row {pixel[0]}, col {pixel[1]})")
        st.caption(f"Pixel (row {pixel[0]}, col {pixel[1]}) of the {H}x{W} images of {view.dataset}: its "
                   f"fields at {len(view.sigmas)} noise levels below, high noise on the left.")
        plot_slot = st.empty()
        st.caption("**How local?** The smallest centred square holding 50 %, 75 % or 95 % of a field's absolute "
                   "mass. At high noise only a few principal components survive denoising and each spreads over "
                   "the image; at low noise almost all pass and the field collapses onto the pixel itself.")
        if use_unet and not unet_ok:
            st.info(f"UNet row not shown: {unet_message}", icon=":material/model_training:")
    progress_slot = st.empty()
    grid_slot = st.empty()
    unet = None
    if use_unet and unet_ok:
        try:
            preview = preview_maps("unet", data, data_key, pixel, view.sigmas, view.seed, precision=precision)
            if preview is not None:
                draw(pixel, wiener, Field(pixel, view.sigmas, *preview), masks, patch, plot_slot, grid_slot,
                     "preview")
            abs_m, signed_m = model_maps("unet", "UNet", data, data_key, pixel, view.sigmas, view.seed,
                                         precision=precision, slot=progress_slot)
            unet = Field(pixel, view.sigmas, abs_m, signed_m)
        except D.USER_ERRORS as exc:
            D.show_error(exc, "UNet")
    draw(pixel, wiener, unet, masks, patch, plot_slot, grid_slot, "final")


pixel_and_maps()

with st.expander("Does gradient descent find the Wiener filter? (trained linear denoiser)",
                 icon=":material/trending_down:"):
    linear_fit_section(view, data, stats, data_key)
