"""Calls into locality_core shared by every page, and the one place that turns errors into messages.

Glossary
    data key      (name, params_json, transform_json): a data set, its options, and an optional transform of
                  `locality_core.analysis.transforms` as canonical JSON ({"kind": "permute"|"inject"|"class", ...})
    require_data  load the data set and its statistics with a progress bar, or show what went wrong and stop

The library caches the data sets (by name, options and file stamp) and their statistics (in memory per
fingerprint, and on disk); this module adds st.cache_resource only for objects that every session of the server
shares and the library does not keep: transformed data sets, the BLAS thread controller, the imports' stamps.

User-facing failures (DatasetError, DenoiserError, ModelError, TooLargeError) become st.error / st.info with
what to do, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable

import streamlit as st

from locality_core import settings
from locality_core.analysis import transforms as experiments
from locality_core.data import Dataset, DatasetError, load_dataset
from locality_core.data.registry import file_stamp
from locality_core.data.user import PREFIX
from locality_core.denoisers.models import ModelError
from locality_core.denoisers.registry import DenoiserError, denoiser_cache_id
from locality_core.denoisers.registry import get_spec as get_denoiser_spec
from locality_core.stats.covariance import DataStats, get_stats
from locality_core.store.memory import TooLargeError, bounded_cache
from ui.memo import clear as memo_clear
from ui.state import View

USER_ERRORS = (DatasetError, DenoiserError, ModelError, TooLargeError)


@st.cache_resource(show_spinner=False)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def torch_threads() -> int:
    """Intra-op threads for torch in the app: $LOCALITY_TORCH_THREADS, else half the cores (at least 1).

    A server answers several sessions at once, and on a shared machine a Jacobian on 2 cores with a busy
    neighbour took 8x longer than on 1 (4.2 s against 0.5 s per noise level): fewer threads per computation
    are the better default for interactive use."""
    env = settings.TORCH_THREADS.text()
    return max(1, int(env)) if env.isdigit() else max(1, (os.cpu_count() or 2) // 2)


def configure_threads() -> None:
    import torch

    if torch.get_num_threads() != torch_threads():
        torch.set_num_threads(torch_threads())


def single_thread_blas():
    """A context in which numpy's BLAS runs on one thread: per-click work is a few small matrix products, and a
    multi-threaded BLAS on a busy machine spends 50x their cost waking its threads. A no-op without
    threadpoolctl."""
    controller = _blas_controller()
    return controller.limit(limits=1, user_api="blas") if controller is not None else contextlib.nullcontext()


def transform_json(kind: str | None = None, **params) -> str:
    return json.dumps({"kind": kind, **params}, sort_keys=True) if kind else ""


def apply_transform(data: Dataset, spec: dict) -> Dataset:
    kind = spec.get("kind")
    if kind == "permute":
        return experiments.permute_pixels(data, seed=int(spec.get("seed", 0)))
    if kind == "inject":
        return experiments.inject_pattern(data, strength=float(spec.get("strength", 1.0)), mask="W",
                                          seed=int(spec.get("seed", 0)))
    if kind == "class":
        return experiments.keep_class(data, int(spec["label"]))
    raise DatasetError(f"unknown transform {kind!r}")


@st.cache_resource(show_spinner=False)
def _imported_stamps() -> dict[str, tuple]:
    """name -> file stamp of every imported data set this server has served (shared by all sessions)."""
    return {}


def forget_if_reimported(name: str) -> None:
    """When ``user:<name>`` was imported again (by any session or the CLI) since this server last served it,
    drop every in-memory result: caches keyed on the name would otherwise show the old data."""
    if not name.startswith(PREFIX):
        return
    try:
        stamp = file_stamp(name)
    except (OSError, DatasetError):
        return
    seen = _imported_stamps()
    if seen.setdefault(name, stamp) != stamp:
        seen[name] = stamp
        st.cache_data.clear()
        _transformed.clear()
        memo_clear()


@bounded_cache(key=lambda fingerprint, transform, _data: (fingerprint, transform))  # within the memory budget
def _transformed(fingerprint: str, transform: str, _data: Dataset) -> Dataset:
    return apply_transform(_data, json.loads(transform))


def dataset(name: str, params_json: str = "{}", transform: str = "") -> Dataset:
    """The data set (the library caches it by name, options and file stamp), transformed; transforms are
    cached by the data's fingerprint, so a re-imported data set is never served from an old entry."""
    forget_if_reimported(name)
    data = load_dataset(name, **json.loads(params_json))
    return _transformed(data.fingerprint, transform, data) if transform else data


def stats(name: str, params_json: str = "{}", transform: str = "",
          progress: Callable[[float, str], None] | None = None) -> DataStats:
    """Statistics, from the library's memory after the first time; ``progress`` hears a computation and may draw."""
    return get_stats(dataset(name, params_json, transform), progress=progress)


def show_error(exc: BaseException, what: str = "") -> None:
    """A user-facing failure as a message (with what to do, which the library's messages carry)."""
    prefix = f"{what}: " if what else ""
    if isinstance(exc, TooLargeError):
        st.error(f"{prefix}{exc}", icon=":material/memory:")
    elif isinstance(exc, (DenoiserError, ModelError)):
        st.info(f"{prefix}{exc}", icon=":material/model_training:")
    else:
        st.error(f"{prefix}{exc}", icon=":material/error:")


def require_data(view: View, transform: str = "") -> tuple[Dataset, DataStats]:
    """The data set and its statistics (computed with a progress bar the first time), or a message and st.stop()."""
    try:
        with st.spinner(f"Loading {view.dataset}…"):
            data = dataset(view.dataset, view.params_json, transform)
        if data.notice:
            st.info(data.notice)
        return data, stats_with_progress(view, transform)
    except USER_ERRORS as exc:
        show_error(exc, f"Data set {view.dataset!r}")
    except (ValueError, TypeError) as exc:  # bad options typed into the URL
        st.error(f"Data set {view.dataset!r} cannot be loaded with options {view.params_json}: {exc}. "
                 "Reset the data set options in the sidebar.")
    st.stop()


def stats_with_progress(view: View, transform: str = "") -> DataStats:
    slot = st.empty()

    def progress(fraction: float, text: str) -> None:
        slot.progress(min(max(fraction, 0.0), 1.0), text=f"Data statistics (computed once, then cached): {text}")

    try:
        return stats(view.dataset, view.params_json, transform, progress=progress)
    finally:
        slot.empty()


# ---------------------------------------------------------------- denoisers

def denoiser_status(name: str, data: Dataset) -> tuple[bool, str]:
    """(usable, message): whether denoiser ``name`` is registered and available for ``data``, and why not."""
    try:
        return get_denoiser_spec(name).availability(data)
    except USER_ERRORS as exc:
        return False, str(exc)


def denoiser_id(name: str, data: Dataset, **options) -> str:
    """Changes whenever the denoiser's outputs could (weights hash, options): part of every cache key."""
    return denoiser_cache_id(name, data, **options)


def field_precision() -> str:
    """Precision of the dashboard's network Jacobians: bfloat16 where the CPU runs it natively (3-5x faster,
    maps within cosine 0.999 of float32, see `locality_core.analysis.fields`), else float32.
    $LOCALITY_FIELD_PRECISION overrides. The warm-up precomputes fields at this precision."""
    from locality_core.views.warmup import default_field_precision

    return default_field_precision()
