"""Warm-up: compute, in priority order, everything the default view of every page reads, into the disk cache.

Glossary
    task       a named function ``task(dataset, progress)`` that fills the cache entries of one default view,
               through the same library calls (and so the same cache keys) the pages make
    TASKS      (data set, task) entries in priority order: Fashion-MNIST first, then natural-patches, then the
               other registered data sets. Another page adds its view with one line:
               ``TASKS.append(("fashion-mnist", "memorisation"))`` after ``register_task("memorisation", fn)``
    DEFAULTS   the default view of each page (noise levels, seed, sample count, image, pixel): the pages read
               them from here, so the warm-up and the pages cannot drift apart
    status     ``warmup.json`` in the cache folder, shared by every warm-up process under a file lock: the task
               each one runs now and when it started, how long each finished task took (measured), errors;
               pages turn it into "waits for X, running N s, took M s last time"

Each entry is computed through `ArrayCache.get_or_compute`, which locks the key across threads and processes:
two servers, or a server and a CLI run, never compute the same entry twice (the second waits and reads it).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tqdm.auto import tqdm

from locality_core import settings
from locality_core.analysis.basis import denoiser_basis
from locality_core.analysis.fields import PRECISIONS, denoiser_field, native_bfloat16
from locality_core.analysis.generalisation import precompute
from locality_core.analysis.sampling import cached_trajectory
from locality_core.analysis.transforms import inject_pattern
from locality_core.data import list_datasets, load_dataset
from locality_core.denoisers.analytical import cached_mask
from locality_core.denoisers.registry import REGISTRY as DENOISERS
from locality_core.denoisers.registry import list_denoisers
from locality_core.schedule import REFERENCE_TIMESTEPS, t_to_sigma
from locality_core.stats.covariance import get_stats
from locality_core.store.cache import default_cache_dir
from locality_core.store.files import atomic_write

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Defaults:
    seed: int = 0
    timesteps: tuple[int, ...] = tuple(REFERENCE_TIMESTEPS)
    sample_denoisers: tuple[str, ...] = ("unet", "analytical", "wiener", "optimal")
    sample_n: int = 8
    sample_steps: int = 10
    jacobian_image: int = 0
    jacobian_sigma_index: int = 4   # into `sigmas`, high to low: sigma = 3.44 (t = 500)
    field_n: int = 32
    inject_strength: float = 1.0
    grid_step: int = 7              # the coarse grid of pixels whose UNet fields are precomputed

    @property
    def sigmas(self) -> tuple[float, ...]:
        """High to low, as the sidebar resolves them."""
        return tuple(sorted({round(float(t_to_sigma(int(t))), 6) for t in self.timesteps}, reverse=True))

    def jacobian_sigma(self, sigmas=None) -> float:
        sigmas = self.sigmas if sigmas is None else sigmas
        return float(sigmas[min(self.jacobian_sigma_index, len(sigmas) - 1)])


DEFAULTS = Defaults()
FIRST_DATASETS = ("fashion-mnist", "natural-patches")
# the landing page (Sensitivity) first, then the cheap default views, then the long ones
TASK_ORDER = ("stats", "sensitivity", "samples-fast", "jacobian", "experiments", "trace", "samples-slow",
              "field-grid")
REGISTRY: dict[str, Callable] = {}


def register_task(name: str, fn: Callable | None = None):
    """Register ``fn(dataset, progress)`` as task ``name`` (usable as a decorator)."""
    def add(f):
        if name in REGISTRY:
            raise ValueError(f"warm-up task {name!r} registered twice")
        REGISTRY[name] = f
        return f
    return add(fn) if fn is not None else add


def default_tasks() -> list[tuple[str, str]]:
    """Every task of every registered data set available here without a download, Fashion-MNIST and
    natural-patches first."""
    names = [s.name for s in list_datasets() if not s.name.startswith("user:") and s.availability()[0]]
    ordered = [n for n in FIRST_DATASETS if n in names] + [n for n in names if n not in FIRST_DATASETS]
    entries = [(name, task) for name in ordered for task in TASK_ORDER]
    if "fashion-mnist" in names:  # the shipped subset family is Fashion-MNIST's: right after its cheap views
        entries.insert(entries.index(("fashion-mnist", "trace")), ("fashion-mnist", "memorisation"))
    return entries


TASKS: list[tuple[str, str]] = []  # filled on first use by `tasks()`; entries appended by other pages are kept


def tasks(datasets: list[str] | None = None) -> list[tuple[str, str]]:
    if not TASKS:
        TASKS.extend(default_tasks())
    return [t for t in TASKS if datasets is None or t[0] in datasets]


# ---------------------------------------------------------------- the default-view tasks

def _sigmas():
    return list(DEFAULTS.sigmas)


def default_pixel(shape) -> tuple[int, int]:
    return shape[1] // 2, shape[2] // 2


def default_field_precision() -> str:
    """Precision of network Jacobians in the app (fields and bases): bfloat16 where the CPU runs it natively,
    else float32; $LOCALITY_FIELD_PRECISION overrides."""
    env = settings.FIELD_PRECISION.text()
    if env in PRECISIONS:
        return env
    return "bfloat16" if native_bfloat16() else "float32"


def _available(name: str, dataset) -> bool:
    return name in DENOISERS and DENOISERS[name].availability(dataset)[0]


@register_task("stats")
def _stats(dataset, progress: Progress) -> None:
    get_stats(dataset)


@register_task("jacobian")
def jacobian_default(dataset, progress: Progress, sigmas=None) -> None:
    """The Jacobian page's default: the first non-linear denoiser's basis at the default image and sigma."""
    name = jacobian_denoiser(dataset)
    for sigma in sigmas or [DEFAULTS.jacobian_sigma()]:
        if name is not None:
            progress(f"{name} Jacobian basis at σ={sigma:.3g}")
            denoiser_basis(dataset, name, DEFAULTS.jacobian_image, sigma, seed=DEFAULTS.seed,
                           precision=default_field_precision())


def jacobian_denoiser(dataset) -> str | None:
    """The Jacobian page's default denoiser: the first available one that is not linear (the UNet, usually)."""
    return next((s.name for s in list_denoisers() if not s.linear and s.availability(dataset)[0]), None)


@register_task("trace")
def _trace(dataset, progress: Progress) -> None:
    """The tr J curve: the default basis at every default sigma."""
    jacobian_default(dataset, progress, sigmas=_sigmas())


def unet_fields(dataset, pixel, progress: Progress) -> None:
    """The Sensitivity page's UNet row at ``pixel``: one cached field per noise level, as the page reads them."""
    if not _available("unet", dataset):
        return
    for sigma in _sigmas():
        progress(f"UNet field at pixel {pixel}, σ={sigma:.3g}")
        denoiser_field(dataset, "unet", pixel, [sigma], n=DEFAULTS.field_n, seed=DEFAULTS.seed,
                       precision=default_field_precision())


def masks(stats, progress: Progress) -> None:
    """The analytical denoiser's masks at every default sigma (default theta, global threshold)."""
    for sigma in _sigmas():
        progress(f"analytical mask at σ={sigma:.3g}")
        cached_mask(stats, sigma, None, "global")


@register_task("sensitivity")
def _sensitivity(dataset, progress: Progress) -> None:
    masks(get_stats(dataset), progress)
    unet_fields(dataset, default_pixel(dataset.shape), progress)


@register_task("field-grid")
def _field_grid(dataset, progress: Progress) -> None:
    _, h, w = dataset.shape
    step = DEFAULTS.grid_step
    for row in range(step // 2, h, step):
        for col in range(step // 2, w, step):
            unet_fields(dataset, (row, col), progress)


@register_task("experiments")
def _experiments(dataset, progress: Progress) -> None:
    """"Locality follows the data", default experiment: the W injected at the default strength and seed."""
    progress("statistics of the data with the W injected")
    modified = inject_pattern(dataset, strength=DEFAULTS.inject_strength, mask="W", seed=DEFAULTS.seed)
    masks(get_stats(modified), progress)


def _samples(dataset, progress: Progress, fast: bool) -> None:
    for name in DEFAULTS.sample_denoisers:
        if (name in FAST_SAMPLERS) == fast and _available(name, dataset):
            progress(f"{DEFAULTS.sample_n} {name} samples, {DEFAULTS.sample_steps} DDIM steps")
            cached_trajectory(dataset, name, DEFAULTS.sample_n, DEFAULTS.sample_steps, DEFAULTS.seed)


@register_task("memorisation")
def _memorisation(dataset, progress: Progress) -> None:
    """Memorisation to generalisation: the subset networks' table (seconds; the page's default view), then the
    analytical denoisers built from each subset (minutes at N = 30,000; the page offers them behind a button
    until they are cached)."""
    precompute(dataset, progress=lambda fraction, text: progress(f"memorisation: {text}"))


FAST_SAMPLERS = ("unet", "wiener", "optimal")
register_task("samples-fast", lambda dataset, progress: _samples(dataset, progress, True))
register_task("samples-slow", lambda dataset, progress: _samples(dataset, progress, False))


# ---------------------------------------------------------------- running, and the status pages read

def status_path():
    return default_cache_dir() / "warmup.json"


def read_status() -> dict:
    """{"running": {pid: {"dataset", "task", "step", "started"}}, "durations": {"dataset/task": s}, "done": [...],
    "errors": {...}}; running entries of processes that have ended are dropped."""
    try:
        status = json.loads(status_path().read_text())
    except (OSError, ValueError):
        status = {}
    status.setdefault("durations", {})
    status.setdefault("done", [])
    status.setdefault("errors", {})
    status["running"] = {pid: r for pid, r in status.get("running", {}).items() if _alive(int(pid))}
    return status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _update_status(change: Callable[[dict], None]) -> None:
    """Read, change and write the status under a file lock: several warm-ups (two servers, a CLI run) share it."""
    path = status_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        status = read_status()
        change(status)
        atomic_write(path, lambda f: f.write(json.dumps(status).encode()))


def _run_one(name: str, task: str, loaded: dict, stop_on_error: bool) -> float:
    pid, start, started = str(os.getpid()), time.perf_counter(), time.time()

    def progress(step: str) -> None:
        _update_status(lambda s: s["running"].update({pid: {"dataset": name, "task": task, "step": step,
                                                            "started": started}}))

    error = None
    try:
        progress("starting")
        if name not in loaded:
            loaded[name] = load_dataset(name)
        REGISTRY[task](loaded[name], progress)
    except Exception as exc:  # one unavailable data set or denoiser must not stop the warm-up of the rest
        if stop_on_error:
            raise
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start

    def finish(s: dict) -> None:
        s["running"].pop(pid, None)
        s["durations"][f"{name}/{task}"] = seconds
        s["done"] = sorted(set(s["done"]) | {f"{name}/{task}"})
        if error:
            s["errors"][f"{name}/{task}"] = error
        else:
            s["errors"].pop(f"{name}/{task}", None)

    _update_status(finish)
    return seconds


def run(entries: list[tuple[str, str]] | None = None, *, datasets: dict | None = None,
        on_task: Callable[[str, str], None] | None = None, stop_on_error: bool = False) -> dict[str, float]:
    """Run ``entries`` (default: every task of `tasks()`) in order; returns seconds per "dataset/task".

    ``datasets`` maps names to already loaded `Dataset` objects (other options than the defaults, tests); the
    others are loaded with their default options, as the app's sidebar opens them. A data set that cannot be
    loaded, or a task that fails, is skipped (its error kept in the status) unless ``stop_on_error``.
    """
    entries = tasks() if entries is None else entries
    loaded, times = dict(datasets or {}), {}
    for name, task in entries:
        if on_task is not None:
            on_task(name, task)
        times[f"{name}/{task}"] = _run_one(name, task, loaded, stop_on_error)
    return times


def waiting_text(dataset: str, task: str) -> str | None:
    """What a page waits for when a warm-up is busy with ``dataset``'s ``task``, with a rough time; else None."""
    status = read_status()
    running = [r for r in status["running"].values() if r.get("dataset") == dataset and r.get("task") == task]
    if not running:
        return None
    elapsed = time.time() - float(running[0].get("started", time.time()))
    past = status["durations"].get(f"{dataset}/{task}")
    eta = f"; it took {past:.0f} s last time" if past else ""
    return (f"The warm-up is computing this view now ({running[0].get('step', task)}; running for {elapsed:.0f} s"
            f"{eta}). It appears here when it is done.")


def run_with_bar(entries: list[tuple[str, str]] | None = None) -> dict[str, float]:
    """`run` with a tqdm bar over the tasks (the CLI and ``python -m locality_core.views.warmup``)."""
    entries = tasks() if entries is None else entries
    bar = tqdm(total=len(entries), desc="warm-up", unit="task")

    def on_task(name: str, task: str) -> None:
        bar.set_postfix_str(f"{name}: {task}")

    times = {}
    for entry in entries:
        times.update(run([entry], on_task=on_task))
        bar.update(1)
    bar.close()
    return times


def exit_with_parent(pid: int, every: float = 5.0) -> None:
    """End this process (a server's background warm-up) once process ``pid`` (the server) has ended."""
    def watch():
        while _alive(pid) and os.getppid() == pid:
            time.sleep(every)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="warmup-parent-watch").start()


if __name__ == "__main__":  # the app's background warm-up: every data set, in priority order, on one thread
    import torch

    if settings.WARMUP_PARENT.text().isdigit():  # started by the app (ui/background.py)
        os.nice(19)  # here, not in a preexec_fn: that is unsafe in the threaded server that forks us
        exit_with_parent(int(settings.WARMUP_PARENT.text()))
    torch.set_num_threads(1)
    run_with_bar()
