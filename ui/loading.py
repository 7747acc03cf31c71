"""Calls into locality_core shared by every page, and the one place that turns errors into messages.

Glossary
    DataRef       a data set as a small value (`locality_core.views.refs`): name, options, transform; what pages
                  pass to cached functions instead of the data set itself
    require_data  load the data set and its statistics (a shared job the first time, with a progress bar), or
                  show what went wrong and stop

The library keeps the data sets (by name, options and file stamp; transformed ones by their base's fingerprint)
and their statistics (in memory per fingerprint, and on disk); this module adds st.cache_resource only for what
the library does not keep: the BLAS thread controller and the imports' stamps.

User-facing failures (DatasetError, DenoiserError, ModelError, TooLargeError) become st.error / st.info with
what to do, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import re

import streamlit as st

from locality_core import settings
from locality_core.data import Dataset, DatasetError
from locality_core.data.download import data_home
from locality_core.data.registry import file_stamp
from locality_core.data.user import PREFIX
from locality_core.denoisers.models import ASSETS_MODELS, ModelError
from locality_core.denoisers.registry import DenoiserError, denoiser_cache_id
from locality_core.denoisers.registry import get_spec as get_denoiser_spec
from locality_core.stats.covariance import DataStats
from locality_core.store.cache import default_cache_dir
from locality_core.store.memory import TooLargeError
from locality_core.views import defaults as views_defaults
from locality_core.views.catalogue import Task
from locality_core.views.refs import DataRef
from ui import waiting

USER_ERRORS = (DatasetError, DenoiserError, ModelError, TooLargeError, waiting.JobFailed)


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


def dataset(ref: DataRef) -> Dataset:
    """The data set of ``ref`` (the library keeps data sets by name, options and file stamp, transformed ones by
    their base's fingerprint, so a re-imported data set is never served from an old entry)."""
    forget_if_reimported(ref.name)
    return ref.load()


def stats(ref: DataRef, slot=None) -> DataStats:
    """Statistics: from memory after the first time; computed as a shared job (progress in ``slot``) when new."""
    return waiting.result(Task.of("stats", ref), slot, what="Data statistics (computed once, then cached)")


_FOLDERS = None


def public(text: str) -> str:
    """A library message as a visitor may read it: the server's own folders named by what they are, any other
    absolute path shortened to its last part (a page is no place to show a server's file system)."""
    global _FOLDERS
    if _FOLDERS is None:
        _FOLDERS = [(str(data_home() / "models"), "the server's model folder"),
                    (str(data_home()), "the server's data folder"), (str(default_cache_dir()), "the server's cache"),
                    (str(ASSETS_MODELS), "the shipped models")]
    for folder, name in _FOLDERS:
        text = text.replace(folder, name)
    return re.sub(r"(?<![\w.])~?/(?:[\w.+-]+/)+([\w.+-]+)", r"…/\1", text)


def show_error(exc: BaseException, what: str = "") -> None:
    """A user-facing failure as a message (with what to do, which the library's messages carry); a failed job
    shows its error's message the same way."""
    prefix = f"{what}: " if what else ""
    kind = exc.kind if isinstance(exc, waiting.JobFailed) else type(exc).__name__
    exc = public(str(exc))
    if kind == TooLargeError.__name__:
        st.error(f"{prefix}{exc}", icon=":material/memory:")
    elif kind in (DenoiserError.__name__, ModelError.__name__):
        st.info(f"{prefix}{exc}", icon=":material/model_training:")
    else:
        st.error(f"{prefix}{exc}", icon=":material/error:")


def require_data(ref: DataRef) -> tuple[Dataset, DataStats]:
    """The data set and its statistics (computed as a shared job with a progress bar the first time), or a message
    and st.stop()."""
    try:
        with st.spinner(f"Loading {ref.label}…"):
            data = dataset(ref)
        if data.notice:
            st.info(public(data.notice))
        return data, stats(ref)
    except USER_ERRORS as exc:
        show_error(exc, f"Data set {ref.label!r}")
    except waiting.JobFailed as exc:
        show_error(exc, f"Data set {ref.label!r}")
    except (ValueError, TypeError) as exc:  # bad options typed into the URL
        st.error(f"Data set {ref.name!r} cannot be loaded with options {dict(ref.params)}: {exc}. "
                 "Reset the data set options in the sidebar.")
    st.stop()


# ---------------------------------------------------------------- denoisers

def denoiser_status(name: str, data: Dataset) -> tuple[bool, str]:
    """(usable, message): whether denoiser ``name`` is registered and available for ``data``, and why not."""
    try:
        ok, message = get_denoiser_spec(name).availability(data)
    except USER_ERRORS as exc:
        ok, message = False, str(exc)
    return ok, public(message)


def denoiser_id(name: str, data: Dataset, **options) -> str:
    """Changes whenever the denoiser's outputs could (weights hash, options): part of every cache key."""
    return denoiser_cache_id(name, data, **options)


def field_precision() -> str:
    """Precision of the dashboard's network Jacobians: bfloat16 where the CPU runs it natively (3-5x faster,
    maps within cosine 0.999 of float32, see `locality_core.analysis.fields`), else float32.
    $LOCALITY_FIELD_PRECISION overrides. The warm-up precomputes fields at this precision."""
    return views_defaults.field_precision()
