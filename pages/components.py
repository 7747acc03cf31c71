"""Principal components: the data statistics that the Wiener filter, and by the paper's account the UNet, use."""

import numpy as np
import pandas as pd
import streamlit as st

from locality_core.analysis.claims import effective_rank, rank_claim
from locality_core.denoisers.wiener import passing_components, wiener_gain
from locality_core.stats.spectrum import correlation_row, power_law_fit
from ui import loading
from ui.figures import ABS_SCALE, cumulative_plot, gains_plot, images_png, noise_header, spectrum_plot, tiles_figure
from ui.layout import explain, page_header
from ui.picker import colour_bar
from ui.state import View, current_view
from ui.widgets import picker, png_download, show

PER_PAGE = 16


def summary_metrics(view: View, data, stats) -> None:
    C, H, W = data.shape
    summary = stats.summary()
    cols = st.columns(5)
    cols[0].metric("Training images", f"{stats.n:,}")
    cols[1].metric("Dimensions d", f"{stats.d:,}", help=f"{C} x {H} x {W}")
    cols[2].metric("Total variance tr Σ", f"{stats.trace:.4g}")
    counts = summary["components_90_95_99"]
    for col, q, n in zip(cols[3:], (0.90, 0.99), (counts[0], counts[2]), strict=True):
        col.metric(f"Components for {int(q * 100)} %", f"{n:,}")


def eigen_images(view: View, data, stats) -> None:
    """Eigen-images, paged."""
    C, H, W = data.shape
    st.subheader("Eigen-images")
    n_pages = max(1, min(50, -(-stats.d // PER_PAGE)))
    page = st.pagination(n_pages, key="pc_page", bind="query-params", max_visible_pages=9)
    first = (page - 1) * PER_PAGE
    ks = np.arange(first, min(first + PER_PAGE, stats.d))
    images = stats.eigvecs[:, ks].T.reshape(len(ks), C, H, W)
    share = stats.eigvals / stats.trace
    titles = [f"#{k + 1}: {100 * share[k]:.2g} %" for k in ks]
    show(tiles_figure(images, titles, columns=8), "eigen_images", f"{view.dataset}-components-{first + 1}-{ks[-1] + 1}")
    st.caption(f"Components {first + 1} to {ks[-1] + 1} of {stats.d:,}, each scaled to its own largest |value| "
               "(red positive, blue negative), titled with its share of the variance. The leading ones are broad, "
               "smooth patterns; later ones oscillate faster. On nearly stationary data they look like Fourier modes; "
               "on specialised data (faces, one clothing class) they take the objects' shapes.")
    png_download("Download these eigen-images (PNG)",
                 lambda: images_png(list(images / np.abs(images).reshape(len(ks), -1).max(1)[:, None, None, None]),
                                    [f"#{k + 1}" for k in ks], columns=8),
                 f"{view.dataset}-components-{first + 1}-{ks[-1] + 1}.png", key="pc_png")


def spectrum(view: View, stats) -> None:
    """The spectrum with its power-law fit, and the cumulative variance."""
    left, right = st.columns(2)
    with left:
        st.subheader("Spectrum")
        try:
            fit = power_law_fit(stats.eigvals)
            fit_args = (fit.amplitude, fit.beta, fit.k_min, fit.k_max)
        except ValueError as exc:
            fit, fit_args = None, None
            st.info(f"No power-law fit: {exc}")
        show(spectrum_plot(stats.eigvals, fit_args), "spectrum", f"{view.dataset}-spectrum")
        if fit is not None:
            how = "fall as a power law" if fit.r2 >= 0.95 else "follow a power law only roughly"
            st.caption(f"Eigenvalues {how}, λ_k ≈ {fit.amplitude:.3g} · k^(−{fit.beta:.2f}) (least squares in "
                       f"log-log over ranks {fit.k_min}–{fit.k_max}, R² = {fit.r2:.3f}). The steeper the fall, the "
                       "fewer components carry the signal.")
    with right:
        st.subheader("Cumulative variance")
        marks = {q: stats.components_for(q) for q in (0.90, 0.95, 0.99)}
        show(cumulative_plot(stats.eigvals, marks), "cumulative", f"{view.dataset}-cumulative-variance")
        st.caption("Share of the total variance held by the first k components. " +
                   ", ".join(f"{int(q * 100)} % needs {n:,}" for q, n in marks.items()) + f" of {stats.d:,}.")


def gains(view: View, stats) -> None:
    """What survives denoising at each noise level."""
    st.subheader("What survives denoising at each noise level")
    show(gains_plot(stats.eigvals, list(view.sigmas), view.labels), "gains", f"{view.dataset}-wiener-gains")
    table = pd.DataFrame({
        "components with λ > σ²": [passing_components(stats.eigvals, s) for s in view.sigmas],
        "effective dimension tr P_σ": [f"{float(wiener_gain(stats.eigvals, s).sum()):.1f}" for s in view.sigmas],
    }, index=[" ".join(noise_header(s)) for s in view.sigmas]).T
    st.dataframe(table.astype(str), width="stretch")
    st.caption("A component passes when its signal-to-noise ratio λ/σ² exceeds 1 (gain above one half). tr P_σ, the "
               "sum of the gains, is how many dimensions the Wiener filter keeps. Few components pass at high noise, "
               "and each is spread over the image: the sensitivity fields are broad. "
               + rank_claim(effective_rank(stats.eigvals), stats.d, stats.n).text)


@st.fragment
def correlation_section(data, stats) -> None:
    C = data.shape[0]
    st.subheader("Which pixels vary together?")
    channel = 0
    if C > 1:
        channel = st.segmented_control("Channel", list(range(C)), default=0, key="corr_channel",
                                       format_func=lambda c: "RGB"[c] if C == 3 else str(c), required=True)
    def correlation_map(p):
        return correlation_row(stats, p, channel)[channel]  # with the same channel of every other pixel

    def bar(p):
        m = correlation_map(p)
        return colour_bar(ABS_SCALE, float(m.min()), float(m.max()), "correlation (from its lowest to its highest)")

    left, right = st.columns([1, 1.2], gap="medium")
    with left:
        pixel = picker(correlation_map, data.shape, kind="range", key="corr_picker", size=360, bar=bar,
                       title=lambda p: f"Correlation with pixel (row {p[0]}, col {p[1]})")
    corr = correlation_row(stats, pixel, channel)
    with right:
        st.caption(f"Pixel (row {pixel[0]}, col {pixel[1]})")
        st.markdown(
            "Click a pixel: the map shows its correlation with every other pixel across the training set, "
            "coloured from the lowest value in the map (dark) to the highest (bright) so that its contrast shows "
            "even when every value is high; the bar gives the values. This row of the covariance "
            "is where the Wiener filter's field of that pixel comes from at high noise, when only the leading "
            "components pass. The pixel is shared with the Sensitivity page.")
        near = corr[channel].copy()
        near[pixel] = np.nan
        st.metric("Strongest correlation with another pixel", f"{np.nanmax(near):.3f}")


def main() -> None:
    view = current_view()
    data, stats = loading.require_data(view.ref)
    page_header("Principal components", view, data)
    explain(view, "The covariance of the training images, Σ = U diag(λ) Uᵀ, is all the Wiener filter knows. Each "
                  "principal component (a column of U) is a pattern of pixels that vary together; its eigenvalue λₖ "
                  "is how much they vary. Denoising keeps component k with gain λₖ/(λₖ+σ²), so the noise level "
                  "decides which patterns survive, and with them how wide the sensitivity fields are.")
    summary_metrics(view, data, stats)
    eigen_images(view, data, stats)
    spectrum(view, stats)
    gains(view, stats)
    correlation_section(data, stats)


main()
