"""Sensitivity: which input pixels does a denoiser's output pixel listen to, at each noise level?

First screen (1280x720 and up): the clickable image on the left, the field grid (noise levels as columns) on
the right, sized to the width the browser reports. Below: what the numbers say (sentences computed from them),
the locality curve, the table, downloads and the trained-linear-denoiser experiment.
"""

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from locality_core.analysis.claims import effective_rank, field_claims
from locality_core.analysis.fields import (
    Field,
    cosine_similarity,
    field_is_cached,
    half_max_sizes,
    locality_sizes,
    wiener_field,
)
from locality_core.denoisers.analytical import default_theta
from locality_core.denoisers.diffusers_import import list_networks
from locality_core.denoisers.registry import list_denoisers
from locality_core.views.page_data import els_patches, sensitivity_table
from ui import loading
from ui.figures import CONTRASTS, SCALES, grid_png, is_flat, locality_plot, map_grid, noise_header
from ui.layout import explain, page_header, split_widths
from ui.linear import linear_fit_section
from ui.state import View, current_view
from ui.widgets import PREVIEW_N, file_download, mask_maps, model_maps, picker, png_download, preview_field, show


@dataclass(frozen=True)
class Controls:
    background: np.ndarray  # the picture to click on (C, H, W)
    signed: bool
    unet: bool
    masks: bool
    patch: bool
    scale: str
    contrast: str
    threshold: str
    theta: float

    @property
    def mode(self) -> str:
        return "signed" if self.signed else "abs"


def controls(data, stats) -> Controls:
    """The row of controls above the grid (every one in the URL)."""
    cols = st.columns([1.35, 0.75, 0.8, 0.8, 0.95, 0.8, 0.9], vertical_alignment="center")
    flat_mean = is_flat(stats.mean.reshape(data.shape))  # natural patches, random fields: nothing to click on
    background = cols[0].segmented_control(
        "Picture to click on", ["mean image", "test image"], default="test image" if flat_mean else "mean image",
        key="bg", bind="query-params", required=True, label_visibility="collapsed")
    image_index = 0
    if background == "test image":
        image_index = int(cols[1].number_input("Test image #", 0, len(data.test) - 1, 0, key="img",
                                               bind="query-params", label_visibility="collapsed",
                                               help="Index of the test image to click on."))
    signed = cols[2].toggle("Signed", key="signed", bind="query-params",
                            help="Off: mean |J| (where the pixel listens). On: mean J with its sign "
                                 "(positive red, negative blue).")
    unet = cols[3].toggle("UNet", value=True, key="unet", bind="query-params",
                          help="Jacobians of the trained network at 32 noisy test images per noise level; "
                               f"a first view from {PREVIEW_N} images appears at once.")
    masks = cols[4].toggle("Analytical", value=True, key="masks", bind="query-params",
                           help="The paper's analytical denoiser: each output pixel averages training images "
                                "over its own neighbourhood, read off the Wiener matrix by a threshold.")
    patch = cols[5].toggle("ELS", value=True, key="els", bind="query-params",
                           help="Kamb & Ganguli's patch machine: each output pixel is built from the P x P "
                                "patch around it, P growing with noise (their calibrated schedule).")
    with cols[6].popover("Display", icon=":material/tune:"):
        scale = st.radio("Colour scale", list(SCALES), format_func=SCALES.get, key="scale", bind="query-params",
                         help="Fields differ in magnitude by orders across noise levels; 'each map' shows their "
                              "shapes, 'per column' compares the rows of one noise level, 'per row' one denoiser "
                              "across noise.")
        contrast = st.radio("Contrast", list(CONTRASTS), format_func=CONTRASTS.get, key="contrast",
                            bind="query-params")
        threshold = st.radio("Analytical mask threshold relative to", ["global", "row"], key="mask_mode",
                             bind="query-params", captions=["max |M| over the whole matrix (the paper's)",
                                                            "each row's own max |M| (robust)"])
        theta = st.number_input("θ", 1e-4, 0.5, float(default_theta(data.shape)), format="%.4f", key="theta",
                                bind="query-params", help="Input n is in the neighbourhood of output m when "
                                                          "|M[n, m]| ≥ θ max|M|, M = P_σ with each row divided by "
                                                          "its diagonal.")
    picture = stats.mean.reshape(data.shape) if background == "mean image" else data.test[image_index].numpy()
    return Controls(picture, signed, unet, masks, patch, scale, contrast, threshold, float(theta))


def field_table(view: View, stats, sizes, cosines, masks, patch_sizes, extents, wiener: Field,
                others: dict[str, Field]) -> pd.DataFrame:
    table = sensitivity_table(stats, view.sigmas, sizes, cosines, masks, patch_sizes, extents)
    for title, field in others.items():  # the other trained networks: their squares and cosines, as the UNet's
        table[f"{title} half-max square (px)"] = list(half_max_sizes(field))
        table[f"{title} 50 % square (px)"] = list(sizes[title][:, 0])
        table[f"cos({title}, Wiener)"] = [f"{cosine_similarity(a, b):.2f}" for a, b in
                                          zip(field.map("abs"), wiener.map("abs"))]
    columns = [" ".join(noise_header(s)) for s in view.sigmas]
    return pd.DataFrame(table, index=columns).T.astype(str)


def fields_npz(view: View, pixel, rows) -> bytes:
    """Every map of the grid with its noise levels and pixel, as a NumPy .npz (raw values, not rescaled)."""
    buf = io.BytesIO()
    arrays = {label.split("<br>")[0].lower().replace(" ", "_"): np.asarray(maps) for label, maps, _ in rows}
    np.savez_compressed(buf, sigmas=np.asarray(view.sigmas), pixel=np.asarray(pixel), **arrays)
    return buf.getvalue()


def grid_rows(c: Controls, wiener: Field, unet: Field | None, masks, patch, stage: str,
              others: dict[str, Field] | None = None) -> list:
    """The grid's rows; ``others``: the other trained networks' fields by title (their cosines to Wiener are in
    the table below)."""
    rows = [("Wiener<br>" + ("P<sub>σ</sub> row" if c.signed else "|P<sub>σ</sub> row|"), wiener.map(c.mode), c.mode)]
    if unet is not None:
        label = "UNet<br>" + ("mean J" if c.signed else "mean |J|") + (f" ({PREVIEW_N} img)" if stage == "preview"
                                                                       else "")
        rows.append((label, unet.map(c.mode), c.mode))
    for title, field in (others or {}).items():
        rows.append((f"{title}<br>{'mean J' if c.signed else 'mean |J|'}", field.map(c.mode), c.mode))
    if masks is not None:
        rows.append(("Analytical<br>mask", masks[0], "mask"))
    if patch is not None:
        rows.append(("ELS<br>patch", patch[0], "mask"))
    return rows


def draw_grid(view: View, c: Controls, width: int, pixel, wiener: Field, unet: Field | None, masks, patch, slot,
              stage: str, others: dict[str, Field] | None = None) -> list | None:
    """The field grid in ``slot`` (replacing what was there); returns the UNet-Wiener cosine per level."""
    cosines = None if unet is None else [cosine_similarity(a, b) for a, b in zip(unet.map("abs"), wiener.map("abs"))]
    titles = [noise_header(s) + ([f"cos {cos:.2f}"] if cosines else []) for s, cos in
              zip(view.sigmas, cosines or [None] * len(view.sigmas))]
    rows = grid_rows(c, wiener, unet, masks, patch, stage, others)
    with slot.container():
        if stage == "pending":
            st.caption(":material/hourglass_top: The other trained networks' rows are being computed (32 noisy "
                       "images per noise level, then cached); they appear below the UNet's when done.")
        if stage == "preview":
            st.caption(f":material/hourglass_top: UNet row from {PREVIEW_N} noisy images per noise level; the "
                       "32-image average replaces it in a few seconds (then cached).")
        show(map_grid(rows, titles, pixel=pixel, page_width=width, scale=c.scale, contrast=c.contrast),
             "field_grid" + {"final": "", "preview": "_preview", "pending": "_pending"}[stage],
             f"{view.dataset}-fields-r{pixel[0]}c{pixel[1]}")
    return cosines


def details(view: View, c: Controls, data, stats, pixel, wiener: Field, unet: Field | None, cosines, masks,
            patch, others: dict[str, Field] | None = None) -> None:
    """Below the first screen: findings, locality curve, table, downloads."""
    C, H, W = data.shape
    sizes = {"wiener": locality_sizes(wiener)}
    extents = {"wiener": half_max_sizes(wiener)}  # what the sentences use: the extent the colour scale shows
    if unet is not None:
        sizes["unet"] = locality_sizes(unet)
        extents["unet"] = half_max_sizes(unet)
    sizes.update({title: locality_sizes(field) for title, field in (others or {}).items()})
    variance = np.diag(stats.cov).reshape(C, H, W)[:, pixel[0], pixel[1]]
    claims = field_claims(list(view.sigmas), extents["wiener"], rank=effective_rank(stats.eigvals), d=stats.d,
                          n_train=stats.n, unet_sizes=extents.get("unet"), cosines=cosines,
                          constant_pixel=not np.any(variance > 0))
    explain(view, "Each map shows how strongly the chosen **output** pixel of a denoiser depends on every "
                  "**input** pixel at one noise level (the Jacobian row ∂D(x, σ)ₘ/∂x, averaged over noisy test "
                  "images). The Wiener filter's field follows from the data's covariance alone; where the trained "
                  "UNet's field looks the same, its locality comes from the data, not from the convolutions.")
    left, right = st.columns([1.2, 1], gap="medium")
    with right:
        st.markdown(f"**What the numbers say** (pixel row {pixel[0]}, col {pixel[1]})")
        st.markdown("\n".join(f"- {claim.text}" for claim in claims), help="Each sentence is computed from the "
                    "numbers on this page for this data set and pixel.")
        scale_text = SCALES[c.scale] + ("" if c.contrast == "linear" else ", square-root contrast")
        st.caption(f"Colours: {scale_text}; signed maps are symmetric around 0. Hover a map for raw values. "
                   "**How local?** The sentences use the half-max square: the side of the smallest centred square "
                   "holding every pixel where a field reaches half its maximum, the extent the colours show. The "
                   "curve shows the squares holding 50 / 75 / 95 % of a field's absolute mass (capped at the "
                   "image), which a faint floor over the whole image can widen.")
        if unet is not None and loading.field_precision() == "bfloat16":
            st.caption("UNet Jacobians use bfloat16 matrix products, which this CPU runs natively (maps within "
                       "cosine 0.999 of float32, tested).")
        if patch is not None:
            st.caption(f"ELS patch sizes from the schedule: {patch[2]}.")
        if masks is not None:
            st.caption(f"Analytical mask: θ = {masks[3]:.3g} ({c.threshold} threshold). A mask that fills the image "
                       "means every input pixel is in the neighbourhood at that noise level.")
    with left:
        show(locality_plot(list(view.sigmas), sizes, titles={"wiener": "Wiener", "unet": "UNet"},
                           image_side=max(H, W), height=340), "locality_plot",
             f"{view.dataset}-locality-r{pixel[0]}c{pixel[1]}")
    st.dataframe(field_table(view, stats, sizes, cosines, masks, None if patch is None else patch[1], extents,
                             wiener, others or {}), width="stretch")
    rows = grid_rows(c, wiener, unet, masks, patch, "final", others)
    titles = [" ".join(noise_header(s)) for s in view.sigmas]
    name = f"{view.dataset}-fields-r{pixel[0]}c{pixel[1]}"
    a, b = st.columns(2)
    with a:
        png_download("Download the maps (PNG)", lambda: grid_png(
            rows, titles, pixel=pixel, scale=c.scale, contrast=c.contrast,
            title=f"{view.dataset}: pixel (row {pixel[0]}, col {pixel[1]})"), f"{name}.png", key="grid_png")
    with b:
        file_download("Download the raw fields (.npz)", lambda: fields_npz(view, pixel, rows), f"{name}.npz",
                      "application/octet-stream", key="grid_npz")


def unet_row(view: View, c: Controls, data, width: int, pixel, wiener: Field, masks, patch, progress_slot,
             grid_slot) -> Field | None:
    """The UNet's fields at the pixel: a shared job when new, with a quick 4-image preview drawn meanwhile."""
    precision = loading.field_precision()

    def preview() -> None:
        progress_slot.progress(0.0, text=f"UNet: a first view from {PREVIEW_N} noisy images per noise level…")
        draw_grid(view, c, width, pixel, wiener, preview_field("unet", data, pixel, view.sigmas, view.seed,
                                                               precision), masks, patch, grid_slot, "preview")

    abs_m, signed_m = model_maps("unet", "UNet", view.ref, pixel, view.sigmas, view.seed, precision=precision,
                                 slot=progress_slot, on_miss=preview)
    return Field(pixel, view.sigmas, abs_m, signed_m)


def other_network_specs(data) -> list:
    """The trained networks other than the UNet available for this data set (a diffusers UNet, shipped or
    imported)."""
    return [spec for spec in list_denoisers() if spec.network and spec.name != "unet"
            and loading.denoiser_status(spec.name, data)[0]]


def other_networks_toggle(specs: list) -> list:
    """The networks of ``specs`` to show, by a toggle under the grid: on by default only for a network the user
    imported (a shipped one would push the ELS row off a projector's first screen)."""
    if not specs:
        return []
    imported = set(list_networks())
    on = st.toggle(f"Rows for the other trained networks: {', '.join(spec.title for spec in specs)}", key="nets",
                   value=any(spec.name in imported for spec in specs), bind="query-params",
                   help="Their Jacobians at 32 noisy test images per noise level, like the UNet's (Fashion-MNIST's "
                        "diffusers UNet: about 7 CPU seconds per pixel the first time, then cached); their cosines "
                        "to Wiener are in the table below.")
    return specs if on else []


def fields_cached(view: View, data, name: str, pixel) -> bool:
    precision = loading.field_precision()
    return all(field_is_cached(data, name, pixel, [s], n=32, seed=view.seed, precision=precision)
               for s in view.sigmas)


def other_networks(view: View, specs: list, pixel, slot) -> dict[str, Field]:
    """The fields of the networks ``specs`` by title: shared jobs like the UNet's."""
    fields = {}
    for spec in specs:
        try:
            abs_m, signed_m = model_maps(spec.name, spec.title, view.ref, pixel, view.sigmas, view.seed,
                                         precision=loading.field_precision(), slot=slot)
        except loading.USER_ERRORS as exc:
            loading.show_error(exc, spec.title)
            continue
        fields[spec.title] = Field(pixel, view.sigmas, abs_m, signed_m)
    return fields


@st.fragment
def pixel_and_maps(view: View, c: Controls, data, stats) -> None:
    """The picker and the grid (a click reruns this fragment only), then the details below."""
    picker_width, grid_width = split_widths()
    left, right = st.columns([picker_width, grid_width], gap="small")
    with left:
        pixel = picker(c.background, data.shape, size=picker_width)
    with loading.single_thread_blas():
        wiener = wiener_field(stats, pixel, view.sigmas)
    masks = patch = None
    try:
        if c.masks:
            masks = mask_maps(view.ref, data, pixel, view.sigmas, c.theta, c.threshold)
        if c.patch:
            patch = els_patches(data, pixel, view.sigmas)
    except (*loading.USER_ERRORS, ValueError) as exc:
        loading.show_error(exc, "Masks")
    unet_ok, unet_message = loading.denoiser_status("unet", data)
    with right:
        progress_slot, grid_slot = st.empty(), st.empty()
        if c.unet and not unet_ok:
            st.info(f"UNet row not shown: {unet_message}", icon=":material/model_training:")
    unet = None
    if c.unet and unet_ok:
        try:
            unet = unet_row(view, c, data, grid_width, pixel, wiener, masks, patch, progress_slot, grid_slot)
        except loading.USER_ERRORS as exc:
            with right:
                loading.show_error(exc, "UNet")
    with right:
        specs = other_networks_toggle(other_network_specs(data))
    if not all(fields_cached(view, data, spec.name, pixel) for spec in specs):  # the first screen does not wait
        draw_grid(view, c, grid_width, pixel, wiener, unet, masks, patch, grid_slot, "pending")
    others = other_networks(view, specs, pixel, progress_slot)
    cosines = draw_grid(view, c, grid_width, pixel, wiener, unet, masks, patch, grid_slot, "final", others)
    details(view, c, data, stats, pixel, wiener, unet, cosines, masks, patch, others)


def main() -> None:
    view = current_view()
    data, stats = loading.require_data(view.ref)
    page_header("Sensitivity fields", view, data)
    c = controls(data, stats)
    pixel_and_maps(view, c, data, stats)
    with st.expander("Does gradient descent find the Wiener filter? (trained linear denoiser)",
                     icon=":material/trending_down:"):
        linear_fit_section(view, data, stats)


main()
