"""Locality follows the data: change the data's statistics and watch the fields change with them."""

import numpy as np
import streamlit as st

from locality_core.experiments import unpermute_map, w_template
from locality_core.fields import locality_sizes, wiener_field
from locality_core.models import find_weights
from ui import data as D
from ui.figures import PAGE_WIDTH, grid_png, map_grid, tiles_figure
from ui.state import View, current_view
from ui.widgets import mask_maps, picker, png_download, show

# options of the experiment picker, as they appear in a shared link (?exp=W+pattern)
EXPERIMENTS = {
    "permute": "Shuffled pixels",
    "inject": "W pattern",
    "class": "One class",
    "alpha": "GRF alpha",
}
BY_LABEL = {v: k for k, v in EXPERIMENTS.items()}
# what the experiments show, after Lukoianov et al. (2025), section on data statistics (METHODS.md section 8)
STORY = {
    "permute": "Every image has its pixels moved by the same fixed permutation. The covariance is permuted with "
               "them, Σ' = ΠΣΠᵀ, so the Wiener field of a pixel is the old field moved along: scattered over the "
               "image, yet exactly local once the permutation is undone (third row). Locality is a property of "
               "which pixels are correlated, not of where they sit.",
    "inject": "Every image gets the same “W” template, times a random amplitude s·z (one z ~ N(0, 1) per image). "
              "That adds s²wwᵀ to the covariance: pixels on the W become correlated with the whole W, and their "
              "fields take its shape. The paper trains a network on such data and finds the same W-shaped fields "
              "in it: the evidence that the data, not the architecture, sets the locality.",
    "class": "With one class only, the statistics are specialised: the leading principal components have the "
             "object's shape, and at high noise the fields follow the object's outline rather than a blob "
             "around the pixel.",
    "alpha": "Gaussian random fields with power spectrum 1/f^α: the larger α, the longer the correlations, and the "
             "wider the denoising field at every noise level. A one-knob demonstration of the theory.",
}

view = current_view()
st.title("Locality follows the data")
st.markdown(
    "If the locality of a denoiser comes from the data's statistics, changing the statistics must change the "
    "fields in a predictable way. Pick an experiment: the Wiener fields (and the analytical denoiser's masks) of "
    "the original and the modified data are recomputed from their covariances, live.")

kind = BY_LABEL[st.segmented_control("Experiment", list(EXPERIMENTS.values()), default=EXPERIMENTS["inject"],
                                     key="exp", bind="query-params", required=True)]
st.info(STORY[kind], icon=":material/lightbulb:")

base_view, transform, params = view, "", {}
c1, c2, c3 = st.columns(3)
if kind == "alpha":
    alpha_a = c1.slider("α of the original fields", 0.0, 6.0, 2.0, 0.25, key="alpha_a")
    alpha_b = c2.slider("α of the modified fields", 0.0, 6.0, 4.0, 0.25, key="alpha_b")
    n_train = int(c3.select_slider("Training fields", [2000, 5000, 20000], value=5000, key="alpha_n"))
    base_view = View("grf", (("alpha", alpha_a), ("n_train", n_train)), view.sigmas, view.seed, view.device)
    mod_view = View("grf", (("alpha", alpha_b), ("n_train", n_train)), view.sigmas, view.seed, view.device)
else:
    mod_view = view
    if kind == "permute":
        params = {"seed": int(c1.number_input("Permutation seed", 0, 10_000, 0, key="perm_seed"))}
    elif kind == "inject":
        params = {"strength": float(c1.slider("Strength s", 0.0, 3.0, 1.0, 0.1, key="w_strength",
                                              help="Amplitude of the W relative to pixel values in [-1, 1].")),
                  "seed": view.seed}
    else:
        base = D.require_data(view)[0]
        if not base.class_names or base.train_labels is None:
            st.warning(f"{view.dataset} has no class labels: choose a labelled data set (Fashion-MNIST, MNIST) in "
                       "the sidebar.")
            st.stop()
        params = {"label": int(c1.selectbox("Class", range(len(base.class_names)), key="exp_class",
                                            format_func=lambda i: base.class_names[i]))}
    transform = D.transform_json(kind, **params)

data, stats = D.require_data(base_view)
mdata, mstats = D.require_data(mod_view, transform)
C, H, W = data.shape
mod_key = (mod_view.dataset, mod_view.params_json, transform)
analytical = D.optional_module("analytical")


@st.fragment
def fields():
    left, right = st.columns([1, 1.6], gap="medium")
    with left:
        pixel = picker(mstats.mean.reshape(C, H, W) if kind != "inject" else _with_template(),
                       data.shape, key="exp_picker", title="Click a pixel", size=380)
    with right:
        st.subheader(f"Pixel (row {pixel[0]}, col {pixel[1]})")
        st.caption(f"Pixel (row {pixel[0]}, col {pixel[1]}). Top: {mdata.description}")
        column = int(PAGE_WIDTH * 1.6 / 2.6) - 24  # the right of columns [1, 1.6]
        show(tiles_figure(mdata.train[:8].numpy(), [f"#{i}" for i in range(8)], columns=8, kind="image",
                          page_width=column), "exp_samples", f"{mod_view.dataset}-modified-samples")
        st.caption("Eight training images of the modified data.")
    labels = [lab.replace(" (", "<br>(") for lab in view.labels]
    source = pixel  # the original pixel whose values the clicked pixel holds (itself, unless shuffled)
    if kind == "permute":
        source = divmod(int(mdata.params["perm"][pixel[0] * W + pixel[1]]), W)
    with D.single_thread_blas():
        orig = wiener_field(stats, source, view.sigmas)
        mod = wiener_field(mstats, pixel, view.sigmas)
    rows = [("Original<br>Wiener |P row|", orig.map("abs"), "abs"),
            ("Modified<br>Wiener |P row|", mod.map("abs"), "abs")]
    outlines = [source, pixel]
    if kind == "permute":
        rows.append(("Modified,<br>unpermuted", unpermute_map(mod.map("abs"), mdata.params["perm"]), "abs"))
        outlines.append(source)
        st.caption(f"In the shuffled images pixel (row {pixel[0]}, col {pixel[1]}) holds what was pixel (row "
                   f"{source[0]}, col {source[1]}): the first row is that original pixel's field, the third the "
                   "shuffled field put back in place. They are the same maps.")
    if analytical is not None:
        masks = mask_maps(mod_key, pixel, view.sigmas, None, "global")
        rows.append((f"Modified<br>mask (θ={masks[3]:.3g})", masks[0], "mask"))
        outlines.append(pixel)
    show(map_grid(rows, labels, pixel=outlines), "exp_grid", f"{mod_view.dataset}-experiment-fields")
    sizes_o, sizes_m = locality_sizes(orig)[:, 0], locality_sizes(mod)[:, 0]
    st.caption("50 % squares (px), original → modified: " +
               ", ".join(f"{lab}: {a} → {b}" for lab, a, b in zip(view.labels, sizes_o, sizes_m)))
    png_download("Download the maps (PNG)", lambda: grid_png(rows, labels, pixel=outlines, title=(
        f"{EXPERIMENTS[kind]}: pixel (row {pixel[0]}, col {pixel[1]})")),
        f"{mod_view.dataset}-experiment-r{pixel[0]}c{pixel[1]}.png", key="exp_png")
    weights = find_weights(mdata.name)
    if weights is not None:
        st.caption(f"A UNet trained on this modified data exists ({weights}); its fields are on the Sensitivity "
                   "page when this data set is selected.")
    else:
        st.caption("No network has been trained on this modified data here: the statement about networks above is "
                   "the paper's finding, not a computation of this app.")


def _with_template():
    """The mean image with the W outlined: where the injected pattern sits."""
    img = mstats.mean.reshape(C, H, W).copy()
    w = w_template(H, W)
    return np.where(w[None] > 0, np.clip(img + 0.6, -1, 1), img)


fields()
