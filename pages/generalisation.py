"""Memorisation to generalisation: two denoisers built from disjoint training subsets A and B of N images, sampled
from the same noise (Kadkhodaie et al. 2024), for networks and for the analytical denoiser."""

import json

import streamlit as st

from locality_core.analysis import generalisation
from locality_core.denoisers.models import find_subset_weights, how_to_train_subsets
from locality_core.views.catalogue import Task
from ui import loading, subset_figures, waiting
from ui.figures import images_png
from ui.layout import explain
from ui.state import current_view
from ui.widgets import png_download, run_button, show


def table(data, ref, kind: str, sizes) -> list[dict]:
    """Rows of ``kind`` for ``sizes``: a shared job when something is not cached (its progress on the page)."""
    try:
        return waiting.result(Task.of("memorisation", ref, kind=kind, sizes=tuple(sizes)),
                              what=f"Memorisation: {kind} denoisers of N = {', '.join(f'{n:,}' for n in sizes)}")
    except loading.USER_ERRORS as exc:
        loading.show_error(exc, "Subset networks")
        st.stop()


def pair(data, tables: dict, kind: str, n: int, key: str) -> None:
    sides = {s: generalisation.side(data, kind, n, s) for s in "AB"}
    nearest = {s: generalisation.subset_images(data, n, s, sides[s]["own_idx"]).numpy() for s in "AB"}
    fig, images, titles = subset_figures.pair_figure(sides, nearest, columns=5, tile_px=56)
    show(fig, key, f"{data.name}-generalisation-{kind}-n{n}")
    row = next(r for r in tables[kind] if r["n"] == n)
    st.caption(" ".join(generalisation.describe(row)))
    png_download("PNG", lambda: images_png(images, titles, columns=5), f"{data.name}-{kind}-n{n}.png", f"{key}_png")


def pairs(view, data, tables: dict, ready: list[int], n: int) -> None:
    """The networks' A and B samples at N beside the analytical denoiser's (a job behind a button when new)."""
    left, right = st.columns(2)
    with left:
        st.markdown("**Networks** (each sample above its nearest training image)")
        pair(data, tables, "unet", n, "gen_pair_unet")
    with right:
        st.markdown("**Analytical denoiser** (Lukoianov et al.), the same way")
        task = Task.of("memorisation", view.ref, kind="analytical", sizes=(n,))
        if n in ready:
            pair(data, tables, "analytical", n, "gen_pair_analytical")
        elif waiting.running(task) or run_button(
                "Compute the analytical version", "gen_analytical_go", False,
                note="It compares every pixel's neighbourhood with every training image at every step. Measured on "
                     "one busy CPU core, per subset: seconds up to N = 1,000, 5 minutes at N = 10,000, 19 at "
                     "N = 30,000. Computed once for everyone, and it goes on if you leave the page."):
            table(data, view.ref, "analytical", [n])  # this N only, not the family; cached, so the rerun finds it
            st.rerun()
    st.caption("Rows: the A network's samples (one per noise seed), the image of subset A nearest to each (L2 "
               "distance above it), then the same for B from the same seeds. Distance 0: a copy of a training image.")


def curves(data, tables: dict, n: int) -> None:
    st.subheader("Against N")
    t = st.radio("Denoising error at DDPM timestep t", generalisation.MSE_TIMESTEPS, index=1, key="gen_t",
                 bind="query-params", horizontal=True)
    c1, c2, c3 = st.columns(3)
    with c1:
        show(subset_figures.similarity_figure(tables, n), "gen_curves_cos", f"{data.name}-generalisation-similarity")
    with c2:
        show(subset_figures.distance_figure(tables, n), "gen_curves_dist", f"{data.name}-generalisation-distance")
    with c3:
        show(subset_figures.mse_figure(tables, t, n), "gen_curves_mse", f"{data.name}-generalisation-mse")
    lines = []
    for kind, rows in tables.items():
        ratios = [{**r, "ratio": r[f"heldout_mse_t{t}"] / r[f"train_mse_t{t}"]} for r in rows]
        name = subset_figures.KIND_TITLES[kind].capitalize()
        lines.append(f"**{name}**: the A-B cosine similarity {generalisation.trend(rows, 'cosine')}; the distance "
                     f"to the nearest own training image, relative to the typical neighbour distance "
                     f"({rows[0]['train_nn']:.2f}), {generalisation.trend(rows, 'dist_own_rel')}; the held-out / "
                     f"training MSE ratio at t = {t} {generalisation.trend(ratios, 'ratio')}.")
    if "analytical" not in tables:
        lines.append("The analytical denoiser's curves appear once it is computed (button above).")
    st.markdown("\n\n".join(lines))


def card_note(data, sizes: list[int]) -> str:
    """How the networks were trained, read from their model cards."""
    cards = []
    for m in sizes:
        path = find_subset_weights(data.name, m, "A")
        if path is not None and (path.parent / "card.json").is_file():
            cards.append(json.loads((path.parent / "card.json").read_text()))
    if not cards:
        return ""
    recipes = {(c["unet_config"]["base"], c["steps"], c["train_config"]["batch"], c["train_config"]["seed"])
               for c in cards}
    text = "; ".join(f"base {b} channels, {s:,} steps of batch {bt}, seed {sd}" for b, s, bt, sd in sorted(recipes))
    return f"Networks: the same UNet for every N ({text}). "


def main() -> None:
    view = current_view()
    data, _ = loading.require_data(view.ref)
    st.title("Memorisation to generalisation")
    explain(view, "Two denoisers built from **disjoint** sets A and B of N training images start from the same noise. "
                  "Memorising, each copies its own training images and A and B differ; generalising, both draw the "
                  "same new image.")
    sizes = generalisation.family_sizes(data)
    if not sizes:
        st.info("This page waits for networks trained on disjoint subsets. " + loading.public(
            how_to_train_subsets(data.name)),
                icon=":material/model_training:")
        st.stop()
    n = st.select_slider("Training images per denoiser, N (A and B each)", sizes, value=sizes[0], key="gen_n",
                         bind="query-params")  # no format_func: the URL holds the formatted value
    tables = {"unet": table(data, view.ref, "unet", sizes)}
    ready = [m for m in sizes if all(generalisation.side_is_cached(data, "analytical", m, s) for s in "AB")]
    if ready:
        tables["analytical"] = table(data, view.ref, "analytical", ready)
    pairs(view, data, tables, ready, n)
    curves(data, tables, n)
    st.caption(card_note(data, sizes) + f"{generalisation.PAGE_SAMPLES} noise seeds (`locality generalisation`: "
               f"{generalisation.N_SAMPLES}), DDIM {generalisation.STEPS} steps (t = 900 → 0); brackets: 95 % "
               "bootstrap intervals over seeds, \"within noise\" where they overlap. Cosine similarity after "
               "subtracting the data set's mean image. Typical neighbour "
               "distance: the median distance from a training image to the nearest other one; dotted: held-out test "
               f"images to the nearest image of a subset of size N. MSE on up to {generalisation.N_EVAL} own training "
               f"images (all of them when N is smaller) and {generalisation.N_EVAL} held-out images.")


main()
