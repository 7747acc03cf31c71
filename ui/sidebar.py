"""The shared sidebar: data set (with its options), noise levels, seed, torch device. Returns a `View`.

Every widget is bound to a URL query parameter (see `ui.state`), so a link reproduces the view. Data set
availability is cached for a minute (st.cache_data): it looks for files, and the sidebar asks on every rerun.
"""

from __future__ import annotations

import streamlit as st
import torch

from locality_core.data import DatasetError, default_dataset_name, get_spec, list_datasets
from locality_core.views import defaults
from ui import waiting
from ui.loading import public
from ui.state import T_OPTIONS, View, noise_label, parse_dataset_env, resolve_sigmas

MAX_COUNT = 200_000


@st.cache_data(ttl=60, show_spinner=False)
def availability(name: str) -> tuple[bool, str]:
    try:
        return get_spec(name).availability()
    except DatasetError as exc:
        return False, str(exc)


def _default_dataset(names: list[str]) -> tuple[str, dict]:
    try:
        env_name, env_params = parse_dataset_env()
    except ValueError as exc:
        st.sidebar.warning(str(exc))
        env_name, env_params = None, {}
    if env_name in names:
        return env_name, env_params
    return default_dataset_name(), {}


def _option_widget(name: str, key: str, default):
    """A widget for one scalar data set option; None for options that are not scalars (kept at default)."""
    label = key.replace("_", " ")
    wkey = f"{name}.{key}"
    if isinstance(default, bool):
        return st.toggle(label, value=default, key=wkey, bind="query-params")
    if isinstance(default, int):
        lo = 0 if key == "seed" else 1
        return int(st.number_input(label, lo, MAX_COUNT, min(max(default, lo), MAX_COUNT), step=1, key=wkey,
                                   bind="query-params"))
    if isinstance(default, float):
        if key == "alpha":
            return float(st.slider("alpha (spectrum 1/f^alpha)", 0.0, 6.0, default, 0.25, key=wkey,
                                   bind="query-params"))
        return float(st.number_input(label, value=default, key=wkey, bind="query-params"))
    return None


def dataset_options(name: str, env_params: dict) -> tuple[tuple[str, object], ...]:
    """Options that differ from the data set's defaults, as sorted pairs (a stable cache key)."""
    spec = get_spec(name)
    if not spec.params:
        return ()
    chosen = {}
    with st.expander("Data set options", expanded=name == "grf"):
        for key, base in spec.params.items():
            default = env_params.get(key, base)
            if type(default) is not type(base) and isinstance(base, float):
                default = float(default)
            value = _option_widget(name, key, default)
            if value is not None and value != base:
                chosen[key] = value
    return tuple(sorted(chosen.items()))


def render_sidebar() -> View:
    """Draw the sidebar; return the view it defines."""
    specs = list_datasets()
    names = [s.name for s in specs]
    titles = {s.name: s.title for s in specs}
    default, env_params = _default_dataset(names)
    with st.sidebar:
        st.subheader("Data")
        # options are the registry names (not titles): they are what a shared link carries, ?dataset=faces
        name = st.selectbox(
            "Data set", names, index=names.index(default) if default in names else 0, key="dataset",
            bind="query-params", help="Every page uses this data set. See 'All data sets' below for what "
                                      "each one is and which are available here.")
        ok, message = availability(name)
        if ok:
            st.caption(f"**{titles[name]}.** {public(get_spec(name).description)}")
        else:
            st.warning(f"**{titles[name]}** is not available here: {public(message)}")
        with st.expander("All data sets"):
            for spec in specs:
                usable, why = availability(spec.name)
                st.markdown(f"{':material/check_circle:' if usable else ':material/block:'} `{spec.name}`: "
                            f"{spec.title}" + ("" if usable else f" — *unavailable: {why}*"))
        params = dataset_options(name, env_params if name == default else {})

        st.subheader("Noise levels")
        timesteps = st.multiselect(
            "DDPM timesteps t", T_OPTIONS, default=list(defaults.DEFAULTS.timesteps), key="t", bind="query-params",
            help="The reference sampler (DDIM, 10 steps) visits t = 900, 800, ..., 0. Each t is a noise level "
                 "σ = sqrt((1 - ᾱ_t) / ᾱ_t).")
        typed = st.text_input("…and/or noise levels σ", key="sigma", bind="query-params",
                              placeholder="e.g. 5, 0.5, 0.05",
                              help="Comma-separated σ values, added to the timesteps above.")
        sigmas, problem = resolve_sigmas(timesteps, typed)
        if problem:
            st.warning(problem)
        st.caption("Showing " + ", ".join(noise_label(s) for s in sigmas))

        st.subheader("Computation")
        seed = int(st.number_input("Seed", 0, 2**31 - 1, defaults.DEFAULTS.seed, key="seed", bind="query-params",
                                   help="Noise draws of every computation that needs randomness."))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        device = st.selectbox("Torch device", devices, key="device", bind="query-params",
                              help="Where the Samples page runs its denoisers ('cuda' is offered when a GPU is "
                                   "present). Sensitivity fields and Jacobians are computed on the CPU and cached.")
        present = st.toggle("Presentation mode", key="present", bind="query-params",
                            help="For a projector: explanations hidden, larger text. It is part of the URL, so a "
                                 "prepared link opens in it.")
        warmup_status()
    return View(name, params, tuple(sigmas), seed, device, present)


def warmup_status() -> None:
    """What the server computes ahead: how many of the default views are done, and which runs now (as of this
    rerun: a timer would make the page's running indicator blink at a projector)."""
    counts = waiting.queue_counts()
    if not counts["total"]:
        return
    now = counts["running"]
    st.caption(f"**Prepared views**: {counts['done']} of {counts['total']} ready" +
               (f"; now: {now}" if now else "") + (f"; {counts['failed']} failed" if counts["failed"] else ""))
