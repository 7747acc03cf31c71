"""Locality follows the data: change the data's statistics and watch the fields change with them."""

from dataclasses import dataclass

import numpy as np
import streamlit as st

from locality_core.analysis.claims import comparison_claim, mask_fill_claim, pattern_share_claim
from locality_core.analysis.fields import half_max_sizes, wiener_field
from locality_core.analysis.transforms import unpermute_map, w_template
from locality_core.denoisers.models import find_weights
from locality_core.views.defaults import DEFAULTS
from locality_core.views.refs import DataRef
from ui import loading
from ui.figures import grid_png, is_flat, map_grid, noise_header, tiles_figure
from ui.layout import explain, split_widths
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
              "That adds s²wwᵀ to the covariance: pixels on the W become correlated with the whole W, so their "
              "fields can take its shape (how much, the sentences under the maps say). The paper trains a network "
              "on such data and finds W-shaped fields in it: the data, not the architecture, sets the locality.",
    "class": "With one class only, the statistics are specialised: the leading principal components take the "
             "object's shape, so at high noise a field can follow the object's outline rather than a blob "
             "around the pixel. Compare the two rows.",
    "alpha": "Gaussian random fields with power spectrum 1/f^α: the larger α, the longer the correlations. The "
             "theory predicts wider denoising fields from longer correlations; the sentences under the maps say, "
             "from the numbers, at which noise levels that holds here.",
}

@dataclass(frozen=True)
class Experiment:
    kind: str
    base: DataRef         # the original data (the chosen data set, or a random field of the first alpha)
    modified: DataRef     # the data with changed statistics
    names: tuple[str, str]  # how the two rows are called


def choose(view: View) -> Experiment:
    """The experiment and its settings (all in the URL)."""
    c0, c1, c2, c3 = st.columns([2.2, 1, 1, 1], vertical_alignment="bottom")
    kind = BY_LABEL[c0.segmented_control("Experiment", list(EXPERIMENTS.values()),
                                         default=EXPERIMENTS[DEFAULTS.experiment], key="exp", bind="query-params",
                                         required=True)]
    if not view.present:
        st.info(STORY[kind], icon=":material/lightbulb:")
    if kind == "alpha":
        alpha_a = c1.slider("α of the original fields", 0.0, 6.0, DEFAULTS.alpha_a, 0.25, key="alpha_a",
                            bind="query-params")
        alpha_b = c2.slider("α of the modified fields", 0.0, 6.0, DEFAULTS.alpha_b, 0.25, key="alpha_b",
                            bind="query-params")
        n_train = int(c3.select_slider("Training fields", [2000, 5000, 20000], value=DEFAULTS.alpha_n_train,
                                       key="alpha_n", bind="query-params"))
        return Experiment(kind, DataRef.of("grf", {"alpha": alpha_a, "n_train": n_train}),
                          DataRef.of("grf", {"alpha": alpha_b, "n_train": n_train}),
                          (f"α = {alpha_a:g}", f"α = {alpha_b:g}"))
    if kind == "permute":
        modified = view.ref.with_transform("permute", seed=int(c1.number_input(
            "Permutation seed", 0, 10_000, DEFAULTS.permute_seed, key="perm_seed", bind="query-params")))
    elif kind == "inject":
        modified = view.ref.with_transform("inject", strength=float(c1.slider(
            "Strength s", 0.0, 3.0, DEFAULTS.inject_strength, 0.1, key="w_strength", bind="query-params",
            help="Amplitude of the W relative to pixel values in [-1, 1].")), seed=view.seed)
    else:
        base = loading.require_data(view.ref)[0]
        if not base.class_names or base.train_labels is None:
            st.warning(f"{view.dataset} has no class labels: choose a labelled data set (Fashion-MNIST, MNIST) in "
                       "the sidebar.")
            st.stop()
        modified = view.ref.with_transform("class", label=int(c1.selectbox(
            "Class", range(len(base.class_names)), index=DEFAULTS.experiment_class, key="exp_class",
            bind="query-params", format_func=lambda i: base.class_names[i])))
    return Experiment(kind, view.ref, modified, ("Original", "Modified"))


def picture(e: Experiment, mdata, mstats) -> tuple[np.ndarray, str]:
    """What to click on: the mean image (with the W brightened for the W experiment), or a training image when
    the mean is flat (random fields have mean zero: a uniform grey square shows nothing)."""
    mean = mstats.mean.reshape(mdata.shape)
    if e.kind == "inject":
        w = w_template(*mdata.shape[1:])
        return np.where(w[None] > 0, np.clip(mean + 0.6, -1, 1), mean), "Mean, W brightened"
    if is_flat(mean):
        return mdata.train[0].numpy(), "A training image"
    return mean, "Mean image"


def claims_of(view: View, e: Experiment, pixel, orig, mod, masks, shape) -> list:
    """Sentences computed from the maps: where the fields widen or narrow, the W's share, where masks fill."""
    _, h, w = shape
    sizes_o, sizes_m = half_max_sizes(orig), half_max_sizes(mod)  # the extent the colours show
    said = ("the original data", "the modified data") if e.kind != "alpha" else e.names
    claims = [comparison_claim(list(view.sigmas), sizes_o, sizes_m, *said)]
    if e.kind == "inject":
        template = w_template(h, w) > 0
        share = [float(m[0][template].sum() / m[0].sum()) for m in (orig.map("abs"), mod.map("abs"))]
        claims.append(pattern_share_claim(share[0], share[1], bool(template[pixel])))
    covered = [int((m > 0).sum()) for m in masks[0]]  # pixels the mask touches (masks[1] counts C x H x W inputs)
    claims.append(mask_fill_claim(list(view.sigmas), covered, h * w))
    return [c for c in claims if c is not None]


@st.fragment
def fields(view: View, e: Experiment, data, stats, mdata, mstats) -> None:
    """The picker, the Wiener fields of both data sets and the modified data's masks (a click reruns this only)."""
    _, H, W = data.shape
    picker_width, grid_width = split_widths()
    left, right = st.columns([picker_width, grid_width], gap="small")
    image, title = picture(e, mdata, mstats)
    with left:
        pixel = picker(image, data.shape, key="exp_picker", title=title, size=picker_width)
    source = pixel  # the original pixel whose values the clicked pixel holds (itself, unless shuffled)
    if e.kind == "permute":
        source = divmod(int(mdata.params["perm"][pixel[0] * W + pixel[1]]), W)
    with loading.single_thread_blas():
        orig = wiener_field(stats, source, view.sigmas)
        mod = wiener_field(mstats, pixel, view.sigmas)
    name_a, name_b = e.names
    rows = [(f"{name_a}<br>Wiener", orig.map("abs"), "abs"), (f"{name_b}<br>Wiener", mod.map("abs"), "abs")]
    outlines = [source, pixel]
    if e.kind == "permute":
        rows.append(("Modified,<br>unpermuted", unpermute_map(mod.map("abs"), mdata.params["perm"]), "abs"))
        outlines.append(source)
    masks = mask_maps(e.modified, mdata, pixel, view.sigmas, None, "global")
    rows.append((f"{name_b}<br>mask", masks[0], "mask"))
    outlines.append(pixel)
    titles = [noise_header(s) for s in view.sigmas]
    with right:
        show(map_grid(rows, titles, pixel=outlines, page_width=grid_width), "exp_grid",
             f"{e.modified.name}-experiment-fields")
    st.markdown("**What the numbers say** (pixel row {}, col {})\n".format(*pixel) +
                "\n".join(f"- {c.text}" for c in claims_of(view, e, pixel, orig, mod, masks, data.shape)))
    if e.kind == "permute":
        st.caption(f"In the shuffled images pixel (row {pixel[0]}, col {pixel[1]}) holds what was pixel (row "
                   f"{source[0]}, col {source[1]}): the first row is that original pixel's field, the third the "
                   "shuffled field put back in place. They are the same maps.")
    show(tiles_figure(mdata.train[:8].numpy(), [f"#{i}" for i in range(8)], columns=8, kind="image",
                      page_width=min(900, grid_width)), "exp_samples", f"{e.modified.name}-modified-samples")
    st.caption(f"Eight training images of the modified data: {loading.public(mdata.description)}")
    png_download("Download the maps (PNG)", lambda: grid_png(rows, [" ".join(t) for t in titles], pixel=outlines,
                                                             title=f"{EXPERIMENTS[e.kind]}: pixel (row {pixel[0]}, "
                                                                   f"col {pixel[1]})"),
                 f"{e.modified.name}-experiment-r{pixel[0]}c{pixel[1]}.png", key="exp_png")
    if find_weights(mdata.name) is not None:
        st.caption("A UNet trained on this modified data exists; its fields are on the Sensitivity page when this "
                   "data set is selected.")
    else:
        st.caption("No network has been trained on this modified data here: the statement about networks above is "
                   "the paper's finding, not a computation of this app.")


def main() -> None:
    view = current_view()
    st.title("Locality follows the data")
    explain(view, "If the locality of a denoiser comes from the data's statistics, changing the statistics must "
                  "change the fields in a predictable way. Pick an experiment: the Wiener fields (and the analytical "
                  "denoiser's masks) of the original and the modified data are recomputed from their covariances, "
                  "live.")
    e = choose(view)
    data, stats = loading.require_data(e.base)
    mdata, mstats = loading.require_data(e.modified)
    fields(view, e, data, stats, mdata, mstats)


main()
