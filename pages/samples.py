"""Samples: the same initial noise through several denoisers, side by side with the nearest training image."""

import numpy as np
import pandas as pd
import streamlit as st
import torch

from locality_core.denoisers import list_denoisers
from ui import data as D
from ui import sampling as S
from ui.figures import images_png, tiles_figure
from ui.state import current_view, noise_label
from ui.widgets import png_download, run_button, show

PREFERRED = ("unet", "analytical", "wiener", "optimal")

view = current_view()
data, stats = D.require_data(view)
data_key = (view.dataset, view.params_json, "")

st.title("Samples")
st.markdown(
    "Every denoiser here starts from the **same** pure noise and follows the same DDIM schedule (t = 900 → 0). "
    "If the paper is right, the analytical denoiser, built from the data's statistics alone, produces nearly the "
    "same images as the trained UNet, while the empirical optimal denoiser can only reproduce training images: "
    "compare each sample with its nearest training image. The table measures how close each model's samples "
    "are to the UNet's.")

specs = {s.name: s for s in list_denoisers()}
status = {name: D.denoiser_status(name, data) for name in specs}
available = [n for n in specs if status[n][0]]
unavailable = [n for n in specs if not status[n][0]]
if unavailable:
    with st.expander(f"Not available here: {', '.join(unavailable)}"):
        for n in unavailable:
            st.markdown(f"**{specs[n].title}**: {status[n][1]}")

if D.optional_module("sampling") is None:
    st.info("The samplers (locality_core/sampling.py) are not part of this installation yet.")
    st.stop()

c1, c2, c3, c4 = st.columns([2.2, 0.8, 0.8, 0.9])
names = c1.multiselect("Denoisers", available, default=[n for n in PREFERRED if n in available], key="models",
                       bind="query-params", help="; ".join(f"{n}: {specs[n].title}" for n in available))
n = int(c2.selectbox("Samples", [4, 8, 16], index=1, key="n", bind="query-params"))
steps = int(c3.selectbox("DDIM steps", [10, 20, 50], index=0, key="steps", bind="query-params",
                         help="10 is the papers' reference sampler (t = 900, 800, ..., 0)."))
c4.caption(f"Seed {view.seed}, device {view.device} (sidebar). The same seed gives the same initial noise.")
if not names:
    st.info("Choose at least one denoiser.")
    st.stop()

key = S.run_key(data_key, tuple(names), n, steps, view.seed, view.device)
if not run_button("Sample", "sample_go", S.is_cached(key), type="primary",
                  note="Analytical, optimal and patch machines compare the noisy image with every training image at "
                       "every step: on a CPU that takes seconds to minutes per denoiser (progress below)."):
    st.stop()
bar = st.empty()
try:
    result = S.sample(key, progress=lambda f, text: bar.progress(min(max(f, 0.0), 1.0), text=text))
except D.USER_ERRORS as exc:
    D.show_error(exc, "Sampling")
    st.stop()
finally:
    bar.empty()

sigmas = result["sigmas"]
finals = {name: result["x0_hat"][name][-1] for name in names}
moved = [name for name in names if result["devices"][name] != view.device]
if moved:
    st.caption(f"Ran on cpu instead of {view.device}: {', '.join(moved)}.")

# ---------------------------------------------------------------- final samples and nearest training images
st.subheader("Samples and their nearest training images")
images, titles = [], []
for name in names:
    idx, dist = S.nearest(data_key, finals[name])
    images += list(finals[name]) + list(data.train[idx].numpy())
    titles += [f"{name} #{i}" for i in range(n)] + [f"nearest: L2 {d:.1f}" for d in dist]
columns = min(n, 8)  # 16 samples: two rows of samples, then two rows of their nearest images
show(tiles_figure(np.stack(images), titles, columns=columns, kind="image"), "samples_grid",
     f"{view.dataset}-samples-seed{view.seed}")
st.caption("For each denoiser: a row of samples, then the training image nearest to each (Euclidean distance on "
           "pixels in [-1, 1]). A distance near 0 means the sample copies a training image.")
png_download("Download the samples (PNG)", lambda: images_png(images, titles, columns=columns),
             f"{view.dataset}-samples-seed{view.seed}.png", key="samples_png")

# ---------------------------------------------------------------- metrics against the UNet
st.subheader("How close to the UNet?")
if "unet" in names:
    from locality_core.metrics import agreement

    ref = torch.from_numpy(finals["unet"])
    table = []
    for name in names:
        if name == "unet":
            continue
        a = agreement(torch.from_numpy(finals[name]), ref)
        table.append({"denoiser": specs[name].title, "r² vs UNet": a["r2"], "Pearson (mean)": a["pearson"],
                      "Pearson (median)": a["pearson_median"], "MSE vs UNet": a["mse"],
                      "nearest training image (mean L2)": float(np.mean(S.nearest(data_key, finals[name])[1]))})
    if table:
        st.dataframe(pd.DataFrame(table).set_index("denoiser").style.format("{:.3f}"), width="stretch")
    st.caption("Final samples from the same noise, compared pixel by pixel with the UNet's: r² = 1 − Σ(x−y)² / "
               "(d·Var(y)) with y the UNet's sample (the public code's definition); Pearson correlation of the "
               "mean-centred images (Kamb & Ganguli's statistic); mean squared difference per pixel. Higher r² and "
               "Pearson, lower MSE: closer to the network.")
else:
    why = "" if status.get("unet", (False, ""))[0] else f" {status['unet'][1]}"
    st.info("Add the UNet to the denoisers to compare against it." + why, icon=":material/model_training:")


# ---------------------------------------------------------------- trajectories
@st.fragment
def trajectories():
    st.subheader("Trajectories")
    step = st.slider("Step", 0, len(sigmas) - 1, len(sigmas) // 2, key="sample_step",
                     format="%d", help="Each DDIM step: the noisy input x and the denoiser's estimate x̂₀.")
    sigma = float(sigmas[step])
    k = min(n, 8)
    tiles, labels = [], []
    for name in names:
        x = result["x"][name][step][:k] / np.sqrt(1 + sigma**2)  # shown at the DDPM scale x_t
        tiles += list(x) + list(result["x0_hat"][name][step][:k])
        labels += [f"{name}: x" if i == 0 else "" for i in range(k)] + [f"{name}: x̂₀" if i == 0 else "" for i in
                                                                        range(k)]
    show(tiles_figure(np.stack(tiles), labels, columns=k, kind="image"), "traj_grid",
         f"{view.dataset}-trajectories-step{step}")
    st.caption(f"Step {step + 1} of {len(sigmas)}, {noise_label(sigma)}: for each denoiser the input x (scaled by "
               "1/√(1+σ²) to the DDPM range) and its estimate x̂₀ of the clean image. Early steps decide the "
               "coarse layout, late steps the details.")


trajectories()
