"""Samples: the same initial noise through several denoisers, side by side with the nearest training image."""

import numpy as np
import pandas as pd
import streamlit as st
import torch

from locality_core.denoisers.registry import list_denoisers
from locality_core.schedule import ddim_sigmas
from locality_core.views.warmup import DEFAULTS
from ui import loading, sample_rows
from ui.figures import images_png, tiles_figure
from ui.layout import explain
from ui.state import current_view, noise_label
from ui.widgets import png_download, show

PREFERRED = DEFAULTS.sample_denoisers  # what the warm-up samples ahead of time

view = current_view()
data, stats = loading.require_data(view)
data_key = (view.dataset, view.params_json, "")

st.title("Samples")
explain(view,
    "Every denoiser here starts from the **same** pure noise and follows the same DDIM schedule (t = 900 → 0). "
    "If the paper is right, the analytical denoiser, built from the data's statistics alone, produces nearly the "
    "same images as the trained UNet, while the empirical optimal denoiser can only reproduce training images: "
    "compare each sample with its nearest training image. The table measures how close each model's samples "
    "are to the UNet's.")

specs = {s.name: s for s in list_denoisers()}
status = {name: loading.denoiser_status(name, data) for name in specs}
available = [n for n in specs if status[n][0]]
unavailable = [n for n in specs if not status[n][0]]
if unavailable:
    with st.expander(f"Not available here: {', '.join(unavailable)}"):
        for n in unavailable:
            st.markdown(f"**{specs[n].title}**: {status[n][1]}")

c1, c2, c3, c4 = st.columns([2.2, 0.8, 0.8, 0.9])
names = c1.multiselect("Denoisers", available, default=[n for n in PREFERRED if n in available], key="models",
                       bind="query-params", help="; ".join(f"{n}: {specs[n].title}" for n in available))
n = int(c2.selectbox("Samples", [4, 8, 16], index=[4, 8, 16].index(DEFAULTS.sample_n), key="n", bind="query-params"))
steps = int(c3.selectbox("DDIM steps", [10, 20, 50], index=[10, 20, 50].index(DEFAULTS.sample_steps), key="steps",
                         bind="query-params", help="10 is the papers' reference sampler (t = 900, 800, ..., 0)."))
with c4.popover("Denoiser options", icon=":material/tune:"):
    softmax = st.radio("Analytical denoiser's softmax", ["exact", "per batch"], key="an_softmax",
                       bind="query-params",
                       captions=["over all N training images (the paper's formula, the default)",
                                 "normalised within each batch of 512 training images and averaged, as the public "
                                 "reference code does (differs by up to about 1 in pixel value at t ≤ 500)"])
    boundary = st.radio("ELS patches at the border", ["broken", "equivariant"], key="els_boundary",
                        bind="query-params",
                        captions=["zero padding: a border patch knows it is at the border (Kamb & Ganguli's "
                                  "boundary-broken variant, the default)",
                                  "every patch compared with every patch, wherever it lies"])
    st.caption(f"Seed {view.seed}, device {view.device} (sidebar). The same seed gives the same initial noise.")
OPTIONS = {"analytical": {"batch_normalised": True} if softmax == "per batch" else {},
           "els": {"boundary": boundary} if boundary != "broken" else {}}
if not names:
    st.info("Choose at least one denoiser.")
    st.stop()

# ---------------------------------------------------------------- final samples and nearest training images
st.subheader("Samples and their nearest training images")
st.caption("For each denoiser: a row of samples, then the training image nearest to each (Euclidean distance on "
           "pixels in [-1, 1]). A distance near 0 means the sample copies a training image. Fast denoisers appear "
           "first; the others fill in as they finish.")
columns = min(n, 8)  # 16 samples: two rows of samples, then two rows of their nearest images
names = sample_rows.order(names)
slots = {name: st.empty() for name in names}
results, images, titles = {}, [], []
for name in names:
    with slots[name].container():
        note, bar = st.empty(), st.empty()
        try:
            results[name] = sample_rows.sample(data_key, name, n, steps, view.seed, view.device, OPTIONS.get(name),
                                     on_miss=lambda name=name, note=note: note.caption(
                                         sample_rows.wait_text(view.dataset, name, n, steps)),
                                     progress=lambda f, text, bar=bar: bar.progress(min(max(f, 0.0), 1.0), text=text))
        except loading.USER_ERRORS as exc:
            loading.show_error(exc, specs[name].title)
            continue
    final = results[name]["x0_hat"][-1]
    idx, dist = sample_rows.nearest(data_key, final)
    row_images = list(final) + list(data.train[idx].numpy())
    row_titles = [f"#{i}" for i in range(n)] + [f"L2 {d:.1f}" for d in dist]
    images += row_images
    titles += [f"{name} {t}" if i < n else f"nearest: {t}" for i, t in enumerate(row_titles)]
    with slots[name].container():
        variant = ", ".join(f"{k}={v}" for k, v in (OPTIONS.get(name) or {}).items())
        st.markdown(f"**{specs[name].title}**" + (f" ({variant})" if variant else "") +
                    ", then the nearest training images" + (
            f" (ran on {results[name]['device']} instead of {view.device})"
            if results[name]["device"] != view.device else ""))
        show(tiles_figure(np.stack(row_images), row_titles, columns=columns, kind="image"), f"samples_{name}",
             f"{view.dataset}-samples-{name}-seed{view.seed}")
names = [name for name in names if name in results]
if not names:
    st.stop()
sigmas = ddim_sigmas(steps)
finals = {name: results[name]["x0_hat"][-1] for name in names}
png_download("Download the samples (PNG)", lambda: images_png(images, titles, columns=columns),
             f"{view.dataset}-samples-seed{view.seed}.png", key="samples_png")

# ---------------------------------------------------------------- metrics against the UNet
st.subheader("How close to the UNet?")
if "unet" in names:
    from locality_core.analysis.metrics import agreement

    ref = torch.from_numpy(finals["unet"])
    table = []
    for name in names:
        if name == "unet":
            continue
        a = agreement(torch.from_numpy(finals[name]), ref)
        table.append({"denoiser": specs[name].title, "r² vs UNet": a["r2"], "Pearson (mean)": a["pearson"],
                      "Pearson (median)": a["pearson_median"], "MSE vs UNet": a["mse"],
                      "nearest training image (mean L2)": float(np.mean(
                          sample_rows.nearest(data_key, finals[name])[1]))})
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
        x = results[name]["x"][step][:k] / np.sqrt(1 + sigma**2)  # shown at the DDPM scale x_t
        tiles += list(x) + list(results[name]["x0_hat"][step][:k])
        labels += [f"{name}: x" if i == 0 else "" for i in range(k)] + [f"{name}: x̂₀" if i == 0 else "" for i in
                                                                        range(k)]
    show(tiles_figure(np.stack(tiles), labels, columns=k, kind="image"), "traj_grid",
         f"{view.dataset}-trajectories-step{step}")
    st.caption(f"Step {step + 1} of {len(sigmas)}, {noise_label(sigma)}: for each denoiser the input x (scaled by "
               "1/√(1+σ²) to the DDPM range) and its estimate x̂₀ of the clean image. Early steps decide the "
               "coarse layout, late steps the details.")


trajectories()
