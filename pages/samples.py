"""Samples: the same initial noise through several denoisers, side by side with the nearest training image.

First screen: the UNet and the analytical denoiser side by side (the paper's comparison), each sample above its
nearest training image; below, the other denoisers, the agreement table and the trajectories. Every denoiser's
run is a shared job (`ui.sample_rows`): it survives the tab, and another session sees its progress.
"""

import time

import numpy as np
import pandas as pd
import streamlit as st
import torch

from locality_core.analysis.metrics import agreement
from locality_core.denoisers.registry import list_denoisers
from locality_core.schedule import ddim_sigmas
from locality_core.views.defaults import DEFAULTS
from ui import loading, sample_rows, waiting
from ui.figures import images_png, tiles_figure
from ui.layout import explain
from ui.state import View, current_view, noise_label
from ui.widgets import png_download, show

SIDE_BY_SIDE = ("unet", "analytical")
SAMPLE_COUNTS, STEP_COUNTS = [4, 8, 16], [10, 20, 50]


def controls(available: list[str], specs: dict, view: View) -> tuple[list[str], int, int, dict]:
    """The denoisers, sample count, steps and denoiser options chosen (all in the URL)."""
    c1, c2, c3, c4 = st.columns([2.2, 0.8, 0.8, 0.9])
    names = c1.multiselect("Denoisers", available, default=[n for n in DEFAULTS.sample_denoisers if n in available],
                           key="models", bind="query-params",
                           help="; ".join(f"{n}: {specs[n].title}" for n in available))
    n = int(c2.selectbox("Samples", SAMPLE_COUNTS, index=SAMPLE_COUNTS.index(DEFAULTS.sample_n), key="n",
                         bind="query-params"))
    steps = int(c3.selectbox("DDIM steps", STEP_COUNTS, index=STEP_COUNTS.index(DEFAULTS.sample_steps), key="steps",
                             bind="query-params", help="10 is the papers' reference sampler (t = 900, 800, ..., 0)."))
    with c4.popover("Denoiser options", icon=":material/tune:"):
        softmax = st.radio("Analytical denoiser's softmax", ["exact", "per batch"], key="an_softmax",
                           bind="query-params",
                           captions=["over all N training images (the paper's formula, the default)",
                                     "normalised within each batch of 512 training images and averaged, as the "
                                     "public reference code does (differs by up to about 1 in pixel value at "
                                     "t ≤ 500)"])
        boundary = st.radio("ELS patches at the border", ["broken", "equivariant"], key="els_boundary",
                            bind="query-params",
                            captions=["zero padding: a border patch knows it is at the border (Kamb & Ganguli's "
                                      "boundary-broken variant, the default)",
                                      "every patch compared with every patch, wherever it lies"])
        st.caption(f"Seed {view.seed}, device {view.device} (sidebar). The same seed gives the same initial noise.")
    options = {"analytical": {"batch_normalised": True} if softmax == "per batch" else {},
               "els": {"boundary": boundary} if boundary != "broken" else {}}
    return sample_rows.order(names), n, steps, options


def row_tiles(view: View, data, name: str, final: np.ndarray) -> tuple[list, list[str]]:
    """One denoiser's samples, then the training image nearest to each, with their titles."""
    idx, dist = sample_rows.nearest(view.ref, final)
    images = list(final) + list(data.train[idx].numpy())
    titles = [f"#{i}" for i in range(len(final))] + [f"L2 {d:.1f}" for d in dist]
    return images, titles


def draw_row(slot, view: View, data, spec, name: str, run: dict, options: dict, columns: int, page_width: int,
             tile_px: int = 150):
    images, titles = row_tiles(view, data, name, run["x0_hat"][-1])
    with slot.container():
        variant = ", ".join(f"{k}={v}" for k, v in options.items())
        moved = f" (ran on {run['device']} instead of {view.device})" if run["device"] != view.device else ""
        st.markdown(f"**{spec.title}**" + (f" ({variant})" if variant else "") + ", then the nearest training "
                    f"images{moved}")
        show(tiles_figure(np.stack(images), titles, columns=columns, kind="image", page_width=page_width,
                          tile_px=tile_px),
             f"samples_{name}", f"{view.dataset}-samples-{name}-seed{view.seed}")
    return images, [f"{name} {t}" if i < len(images) // 2 else f"nearest: {t}" for i, t in enumerate(titles)]


def sample_all(view: View, data, specs: dict, names: list[str], n: int, steps: int, options: dict) -> dict:
    """Every chosen denoiser's run, drawn as soon as it is done: the UNet and the analytical denoiser side by side
    first, the others below. Returns {name: run} of those that ran."""
    pair = [m for m in names if m in SIDE_BY_SIDE]
    rest = [m for m in names if m not in SIDE_BY_SIDE]
    slots = {}
    if pair:
        cols = st.columns(len(pair), gap="medium")
        slots.update({m: col.empty() for m, col in zip(pair, cols)})
    slots.update({m: st.empty() for m in rest})
    fast_first = [m for m in names if m in sample_rows.FAST] + [m for m in names if m not in sample_rows.FAST]
    jobs = {m: sample_rows.start(view.ref, m, n, steps, view.seed, options.get(m), view.device) for m in fast_first}
    results, drawn, pending = {}, {}, list(fast_first)
    while pending:  # draw each run as soon as its job is done; the others show their progress meanwhile
        for m in list(pending):
            job = jobs[m]
            if job is not None and not job.done_event.is_set():
                waiting.show_progress(slots[m], job, sample_rows.what(m, n, steps))
                continue
            pending.remove(m)
            try:
                results[m] = sample_rows.sample(view.ref, m, n, steps, view.seed, options.get(m), view.device,
                                                slot=slots[m])
            except loading.USER_ERRORS as exc:
                with slots[m].container():
                    loading.show_error(exc, specs[m].title)
                continue
            side = m in pair and len(pair) == 2
            # side by side: four columns of tiles small enough that samples and nearest images fit at 1280x720
            drawn[m] = draw_row(slots[m], view, data, specs[m], m, results[m], options.get(m) or {},
                                4 if side else min(n, 8), page_width=460 if side else 940, tile_px=72 if side else 150)
        if pending:
            time.sleep(waiting.POLL_S)
    images = [image for m in names if m in drawn for image in drawn[m][0]]
    titles = [title for m in names if m in drawn for title in drawn[m][1]]
    results = {m: results[m] for m in names if m in results}
    if images:
        png_download("Download the samples (PNG)", lambda: images_png(images, titles, columns=min(n, 8)),
                     f"{view.dataset}-samples-seed{view.seed}.png", key="samples_png")
    return results


def agreement_table(view: View, specs: dict, status: dict, results: dict) -> None:
    st.subheader("How close to the UNet?")
    if "unet" not in results:
        why = "" if status.get("unet", (False, ""))[0] else f" {status['unet'][1]}"
        st.info("Add the UNet to the denoisers to compare against it." + why, icon=":material/model_training:")
        return
    ref = torch.from_numpy(results["unet"]["x0_hat"][-1])
    table = []
    for name, run in results.items():
        if name == "unet":
            continue
        final = run["x0_hat"][-1]
        a = agreement(torch.from_numpy(final), ref)
        table.append({"denoiser": specs[name].title, "r² vs UNet": a["r2"], "Pearson (mean)": a["pearson"],
                      "Pearson (median)": a["pearson_median"], "MSE vs UNet": a["mse"],
                      "nearest training image (mean L2)": float(np.mean(sample_rows.nearest(view.ref, final)[1]))})
    if table:
        st.dataframe(pd.DataFrame(table).set_index("denoiser").style.format("{:.3f}"), width="stretch")
    st.caption("Final samples from the same noise, compared pixel by pixel with the UNet's: r² = 1 − Σ(x−y)² / "
               "(d·Var(y)) with y the UNet's sample (the public code's definition); Pearson correlation of the "
               "mean-centred images (Kamb & Ganguli's statistic); mean squared difference per pixel. Higher r² and "
               "Pearson, lower MSE: closer to the network. Over these few samples only: `locality compare` gives "
               "the ranking over many trajectories with confidence intervals.")


@st.fragment
def trajectories(view: View, results: dict, n: int, steps: int) -> None:
    st.subheader("Trajectories")
    sigmas = ddim_sigmas(steps)
    step = st.slider("Step", 0, len(sigmas) - 1, len(sigmas) // 2, key="sample_step", format="%d",
                     help="Each DDIM step: the noisy input x and the denoiser's estimate x̂₀.")
    sigma = float(sigmas[step])
    k = min(n, 8)
    tiles, labels = [], []
    for name, run in results.items():
        x = run["x"][step][:k] / np.sqrt(1 + sigma**2)  # shown at the DDPM scale x_t
        tiles += list(x) + list(run["x0_hat"][step][:k])
        labels += [f"{name}: x" if i == 0 else "" for i in range(k)] + [f"{name}: x̂₀" if i == 0 else ""
                                                                        for i in range(k)]
    show(tiles_figure(np.stack(tiles), labels, columns=k, kind="image"), "traj_grid",
         f"{view.dataset}-trajectories-step{step}")
    st.caption(f"Step {step + 1} of {len(sigmas)}, {noise_label(sigma)}: for each denoiser the input x (scaled by "
               "1/√(1+σ²) to the DDPM range) and its estimate x̂₀ of the clean image. Early steps decide the "
               "coarse layout, late steps the details.")


def main() -> None:
    view = current_view()
    data, _ = loading.require_data(view.ref)
    st.title("Samples")
    explain(view,
            "Every denoiser here starts from the **same** pure noise and follows the same DDIM schedule (t = 900 → "
            "0). If the paper is right, the analytical denoiser, built from the data's statistics alone, produces "
            "nearly the same images as the trained UNet, while the empirical optimal denoiser can only reproduce "
            "training images: compare each sample with its nearest training image.")
    specs = {s.name: s for s in list_denoisers()}
    status = {name: loading.denoiser_status(name, data) for name in specs}
    available = [n for n in specs if status[n][0]]
    names, n, steps, options = controls(available, specs, view)
    unavailable = [n for n in specs if not status[n][0]]
    if not names:
        st.info("Choose at least one denoiser.")
        st.stop()
    results = sample_all(view, data, specs, names, n, steps, options)
    if unavailable:
        with st.expander(f"Not available here: {', '.join(unavailable)}"):
            for m in unavailable:
                st.markdown(f"**{specs[m].title}**: {status[m][1]}")
    if results:
        agreement_table(view, specs, status, results)
        trajectories(view, results, n, steps)


main()
