"""The trained linear denoiser experiment (locality_core.analysis.linear_fit): Adam on E||x0 - (A x + b)||^2 converges
to the Wiener filter P_sigma; its field of the chosen pixel approaches the closed form.

A fit is the "linear_fit" view function: a shared job behind a button (seconds to minutes), its small result
cached on disk, so that it is shown at once to whoever asks again.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from locality_core.data import Dataset
from locality_core.stats.covariance import DataStats
from locality_core.views.catalogue import Task
from ui import loading, waiting
from ui.figures import line_plot, map_grid
from ui.state import View, noise_label
from ui.widgets import current_pixel, run_button, show

STEP_CHOICES = (300, 1000, 1500, 3000)


@st.fragment
def linear_fit_section(view: View, data: Dataset, stats: DataStats) -> None:
    st.markdown(
        "The Wiener filter is also the best *affine* denoiser. Train one, $\\hat x_0 = A x + b$, by gradient "
        "descent on noisy training images and watch its matrix $A$ approach $P_\\sigma$: the field of the "
        "chosen pixel (a row of $A$) takes the closed-form shape. Locality is what the data's statistics "
        "make optimal, before any architecture enters.")
    pixel = current_pixel(data.shape)
    a, b, c = st.columns([1.2, 1, 1])
    sigma = a.selectbox("Noise level", list(view.sigmas), index=len(view.sigmas) // 2, format_func=noise_label,
                        key="lin_sigma")
    steps = b.selectbox("Adam steps", STEP_CHOICES, index=2, key="lin_steps",
                        help="Batches of 512 noisy training images per step.")
    d = data.d
    c.caption(f"A has {d * d:,} entries: roughly {max(1, steps * d * d * 512 * 6 / 4e10):.0f} s on 2 free CPU cores.")
    task = Task.of("linear_fit", view.ref, sigma=float(sigma), pixel=tuple(pixel), steps=int(steps), seed=view.seed)
    if not run_button("Train the linear denoiser", "lin_go", waiting.is_ready(task),
                      note=f"Pixel (row {pixel[0]}, col {pixel[1]}), {noise_label(sigma)}."):
        return
    try:
        result = waiting.result(task)
    except loading.USER_ERRORS as exc:
        loading.show_error(exc)
        return
    steps_rec, err = result["steps"], result["rel_error"]
    show(line_plot(steps_rec, {"‖A − P_σ‖ / ‖P_σ‖": err}, x_title="Adam step", y_title="relative distance to P_σ",
                   log_y=True, height=320), "lin_curve", f"{view.dataset}-linear-fit-curve")
    st.caption(f"After {int(steps_rec[-1])} steps the trained A is {err[-1]:.1%} away from P_σ (Frobenius norm).")
    steps_list = [int(v) for v in steps_rec]
    step = st.select_slider("Gradient step", steps_list, value=steps_list[-1], key="lin_step", bind="query-params",
                            help="The steps at which the fit was recorded; the figure shows the trained A there.")
    k = steps_list.index(int(step))
    fields = result["fields"].sum(axis=(1, 2))  # (K, H, W), channels summed
    target = result["target"].sum(axis=(0, 1))
    maps = np.stack([fields[k], target])
    show(map_grid([("row of A<br>/ row of P<sub>σ</sub>", maps, "signed")],
                  [f"trained A, step {steps_list[k]}", "P<sub>σ</sub> (closed form)"], pixel=pixel,
                  max_cell=220),
         "lin_fields", f"{view.dataset}-linear-fit-fields")
