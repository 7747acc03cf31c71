"""Jacobian basis: the denoiser's own eigen-view at one noisy image (Kadkhodaie et al.), beside the Wiener one.

The Wiener basis is exact and instant (the principal components); a network's basis is a shared job the first
time (`ui.basis_panels`), then a disk-cache hit.
"""

import numpy as np
import streamlit as st

from locality_core.analysis.basis import PROBES, denoiser_basis
from locality_core.denoisers.registry import list_denoisers
from locality_core.denoisers.wiener import wiener_gain
from locality_core.views.defaults import DEFAULTS, jacobian_denoiser
from ui import basis_panels, loading, waiting
from ui.figures import PAGE_WIDTH, images_png, line_plot, tiles_figure
from ui.layout import explain
from ui.state import View, current_view, noise_label
from ui.widgets import png_download, run_button, show

N_VECTORS = 8
EXACT = "jb_exact"  # session state: the exact tr J asked for (its task's key: that image, those levels)


def controls(view: View, data) -> tuple[int, float, str | None, dict]:
    """Test image, noise level and denoiser (all in the URL); returns them and each denoiser's availability."""
    models = [s for s in list_denoisers() if not s.linear]
    status = {s.name: loading.denoiser_status(s.name, data) for s in models}
    names = [s.name for s in models]
    default = jacobian_denoiser(data) or (names[0] if names else None)
    labels = list(view.labels)
    c1, c2, c3 = st.columns([1, 1.2, 1.2])
    image_index = int(c1.number_input("Test image #", 0, len(data.test) - 1, DEFAULTS.jacobian_image, key="img",
                                      bind="query-params"))
    label = c2.selectbox("Noise level", labels, index=labels.index(noise_label(DEFAULTS.jacobian_sigma(view.sigmas))),
                         key="jb_sigma", bind="query-params")
    name = c3.selectbox("Denoiser", names, index=names.index(default) if default in names else 0, key="jb_model",
                        bind="query-params",
                        format_func=lambda n: n + ("" if status[n][0] else " (not available)")) if names else None
    return image_index, view.sigmas[labels.index(label)], name, status


def network_basis(view: View, data, name: str | None, status: dict, image_index: int, sigma: float):
    """The denoiser's leading eigenpairs (a shared job when new), or None with a message saying why there are
    none."""
    if name is None:
        st.info("No trained or data-driven denoiser is registered besides Wiener.")
        return None
    if not status[name][0]:
        st.info(f"{name}: {status[name][1]}", icon=":material/model_training:")
        return None
    try:
        return basis_panels.leading(view.ref, name, image_index, sigma, view.seed)
    except loading.USER_ERRORS as exc:
        loading.show_error(exc, name)
        return None


def inputs_and_spectrum(view: View, data, stats, sigma: float, image_index: int, y, wiener_b, name, model_b,
                        trace: tuple[float, float] | None) -> None:
    left, right = st.columns([1, 2.2])
    with left:
        column = int(PAGE_WIDTH / 3.2) - 10  # the left of columns [1, 2.2]: a wider figure would be shrunk into it
        x0 = data.test[image_index].numpy()
        show(tiles_figure(np.stack([x0, y / np.sqrt(1 + sigma**2)]), ["clean x₀", "noisy y"], columns=2,
                          kind="image", page_width=column), "jb_inputs", f"{view.dataset}-jacobian-input")
        st.caption(f"The noisy image at {noise_label(sigma)} is shown divided by √(1+σ²), the DDPM scale, so that "
                   "it fits the gray range.")
        metrics = {"Wiener tr J": f"{wiener_b.trace:.1f}"}
        if trace is not None:
            value, error = trace
            metrics[f"{name} tr J"] = f"{value:.1f}" if error == 0 else f"{value:.1f} ± {error:.1f} (estimate)"
        if model_b is not None:
            metrics[f"{name} asymmetry ‖J−Jᵀ‖/‖J‖"] = f"≈ {model_b.asymmetry:.3f}"
        for metric_label, value in metrics.items():
            st.metric(metric_label, value)
    with right:
        curves = {"Wiener": wiener_b.eigvals}
        if model_b is not None:
            curves[name] = model_b.eigvals
        fig = line_plot(np.arange(1, stats.d + 1), curves, x_title="rank", y_title="eigenvalue of (J+Jᵀ)/2",
                        log_x=True, height=360)
        for trace_ in fig.data:  # the network's few leading eigenvalues: points on the Wiener filter's curve
            if trace_.name == name:
                trace_.x, trace_.mode = np.arange(1, len(model_b.eigvals) + 1), "lines+markers"
        show(fig, "jb_spectrum", f"{view.dataset}-jacobian-eigenvalues")
        st.caption("Eigenvalues in decreasing order. Wiener's are the gains λ/(λ+σ²) of the principal components, "
                   "the same for every image; a network's depend on the image: " + spectrum_sentence(name, model_b)
                   + ("" if model_b is None else f" The network's {len(model_b.eigvals)} leading eigenpairs come "
                      "from block Krylov iterations on Jacobian-vector products; each eigenvalue is within "
                      f"{float(np.max(model_b.residuals)):.1g} of the exact one (its residual)."))


def spectrum_sentence(name: str | None, model_b) -> str:
    """What the network's leading eigenvalues are, read off them (not assumed)."""
    if model_b is None:
        return "choose a network to compare."
    top = ", ".join(f"{v:.2f}" for v in model_b.eigvals[:4])
    above = int(np.sum(model_b.eigvals > 1.0))
    return (f"here {name}'s four largest are {top}" + (f", and {above} exceed 1 (it amplifies those directions)"
                                                       if above else "") + ".")


def eigenvectors(view: View, rows: list) -> None:
    st.subheader(f"Top {N_VECTORS} eigenvectors")
    vectors, titles = [], []
    for row_name, b in rows:
        st.markdown(f"**{row_name}**: eigenvector number and eigenvalue above each")
        row_titles = [f"#{i + 1}: {v:.2f}" for i, v in enumerate(b.eigvals[:N_VECTORS])]
        show(tiles_figure(b.eigenimages(N_VECTORS), row_titles, columns=N_VECTORS), f"jb_vectors_{row_name}",
             f"{view.dataset}-jacobian-eigenvectors-{row_name}")
        vectors.append(b.eigenimages(N_VECTORS))
        titles += [f"{row_name} {t.split(':')[0]}" for t in row_titles]
    vectors = np.concatenate(vectors)
    st.caption("Each eigenvector scaled to its largest |value|. Wiener's are the data's principal components "
               "whatever the image; the network's follow the contours of this image.")
    scaled = list(vectors / np.abs(vectors).reshape(len(vectors), -1).max(1)[:, None, None, None])
    png_download("Download the eigenvectors (PNG)", lambda: images_png(scaled, titles, columns=N_VECTORS),
                 f"{view.dataset}-jacobian-eigenvectors.png", key="jb_png")


def network_trace(view: View, data, name: str | None, status: dict, image_index: int
                  ) -> tuple[list[float], list[float]] | None:
    """The network's tr J at every level: exact (full Jacobians, a job) once asked for or cached, else the
    Hutchinson estimate (a job too, in the warm-up); (values, standard errors: 0 when exact), or None."""
    if name is None or not status[name][0]:
        return None
    task = basis_panels.trace_task(view.ref, name, image_index, view.sigmas, view.seed)
    try:
        if st.session_state.get(EXACT) == task.key or waiting.is_ready(task):
            return waiting.result(task, what=basis_panels.exact_what(data, name, len(view.sigmas))), \
                [0.0] * len(view.sigmas)
        est, err = basis_panels.estimates(view.ref, name, image_index, view.sigmas, view.seed)
        return list(est), list(err)
    except loading.USER_ERRORS as exc:
        loading.show_error(exc, name)
        return None


def trace_curve(view: View, stats, name: str | None, traces, image_index: int) -> None:
    """tr J against sigma: Wiener's exact; the network's exact once computed (a job behind a button), else a
    Hutchinson estimate with error bars."""
    st.subheader("Dimensions kept against noise: tr J")
    trace = {"Wiener": [float(wiener_gain(stats.eigvals, s).sum()) for s in view.sigmas]}
    errors = {}
    if traces is not None:
        values, err = traces
        if any(err):
            trace[f"{name} (estimate)"], errors[f"{name} (estimate)"] = values, err
            exact = basis_panels.trace_task(view.ref, name, image_index, view.sigmas, view.seed).key
            run_button(f"Exact tr J of {name} at every noise level (a full Jacobian each)", "jb_all", False,
                       on_click=lambda: st.session_state.update({EXACT: exact}))
        else:
            trace[name] = values
    fig = line_plot(list(view.sigmas), trace, x_title="noise level σ (high noise on the left)",
                    y_title="tr J (dimensions kept)", log_x=True, log_y=True, markers=True, height=360)
    basis_panels.add_error_bars(fig, errors)
    fig.update_xaxes(autorange="reversed")
    show(fig, "jb_trace", f"{view.dataset}-jacobian-trace")
    note = (" Network Jacobians in bfloat16, which this CPU runs natively (2-3x faster; eigenvalues within about "
            "0.3 % of float32)." if loading.field_precision() == "bfloat16" and name is not None else "")
    if errors:
        note += (f" The {name} curve is a Hutchinson estimate (mean of vᵀJv over {PROBES} random ±1 probes v; error "
                 "bars: one standard error), not the exact trace: the button above computes the exact one.")
    st.caption(f"At test image #{image_index}. High noise keeps few dimensions, low noise nearly all {stats.d:,}. "
               "The Wiener filter's count is the same for every image; a network's depends on the image." + note)


def main() -> None:
    view = current_view()
    data, stats = loading.require_data(view.ref)
    st.title("Jacobian basis")
    explain(view,
            "Near a noisy image $y$ any denoiser acts like a linear map: its Jacobian $J = \\partial D/\\partial y$. "
            "The eigenvectors of $(J+J^T)/2$ are the directions it keeps, and the eigenvalues how much of each "
            "(shrinkage factors, mostly between 0 and 1); their sum $\\mathrm{tr}\\,J$ counts the dimensions kept. "
            "For the Wiener filter this is exact and the same for every image: the principal components with gains "
            "$\\lambda/(\\lambda+\\sigma^2)$. A trained network adapts its basis to the image (Kadkhodaie et al., "
            "ICLR 2024): the contrast between the two is the point.")
    image_index, sigma, name, status = controls(view, data)
    wiener_b, y = denoiser_basis(data, "wiener", image_index, sigma, seed=view.seed)
    model_b = network_basis(view, data, name, status, image_index, sigma)
    traces = network_trace(view, data, name, status, image_index)
    here = None if traces is None else (traces[0][view.sigmas.index(sigma)], traces[1][view.sigmas.index(sigma)])
    inputs_and_spectrum(view, data, stats, sigma, image_index, y, wiener_b, name, model_b, here)
    eigenvectors(view, [("Wiener", wiener_b)] + ([(name, model_b)] if model_b is not None else []))
    trace_curve(view, stats, name, traces, image_index)


main()
