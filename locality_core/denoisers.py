"""The hand-written registry of denoisers: every one meets D(x, sigma) -> x0_hat.

Glossary
    DenoiserSpec   name, title, one-line description, ``build(dataset, **options) -> denoiser``,
                   ``availability(dataset) -> (ok, message)`` and ``cache_id(dataset, **options)``: a string
                   that changes whenever the denoiser's outputs could (weights hash, options), used in cache keys
    get_denoiser   build (and keep, per process) the denoiser of a data set

The CLI, the app's select boxes and the parametrised tests all read this one table.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from .data import Dataset


class DenoiserError(RuntimeError):
    """A denoiser cannot be built for this data set; the message says what to do."""


@dataclass(frozen=True)
class DenoiserSpec:
    name: str
    title: str
    description: str
    build: Callable[..., object]
    availability: Callable[[Dataset], tuple[bool, str]] = lambda ds: (True, "computed from the data")
    cache_id: Callable[..., str] = lambda ds, **opts: ""
    options: dict = field(default_factory=dict)
    linear: bool = False  # closed-form Jacobian: fields need no autograd


REGISTRY: dict[str, DenoiserSpec] = {}


def register(spec: DenoiserSpec) -> DenoiserSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"denoiser {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> DenoiserSpec:
    if name not in REGISTRY:
        raise DenoiserError(f"unknown denoiser {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def list_denoisers() -> list[DenoiserSpec]:
    return list(REGISTRY.values())


def get_denoiser(name: str, dataset: Dataset, **options):
    """The denoiser ``name`` for ``dataset`` (built once per process and options)."""
    spec = get_spec(name)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise DenoiserError(f"denoiser {name!r} takes no option(s) {sorted(unknown)}; it takes "
                            f"{sorted(spec.options) or 'none'}")
    ok, message = spec.availability(dataset)
    if not ok:
        raise DenoiserError(message)
    return _build(name, dataset, tuple(sorted({**spec.options, **options}.items())))


@functools.lru_cache(maxsize=16)
def _build(name: str, dataset: Dataset, options: tuple):
    return REGISTRY[name].build(dataset, **dict(options))


def denoiser_cache_id(name: str, dataset: Dataset, **options) -> str:
    spec = get_spec(name)
    merged = {**spec.options, **options}
    return f"{name}:{spec.cache_id(dataset, **merged)}:{sorted(merged.items())}"


# ---------------------------------------------------------------- Wiener

def _build_wiener(dataset: Dataset):
    from .wiener import WienerDenoiser

    return WienerDenoiser().fit(dataset)


register(DenoiserSpec(
    "wiener", "Wiener (linear)",
    "The optimal linear denoiser mu + P_sigma (x - mu), built from the data covariance alone.",
    _build_wiener, linear=True, cache_id=lambda ds, **o: ds.fingerprint[:16]))


# ---------------------------------------------------------------- trained UNet

def _unet_availability(dataset: Dataset) -> tuple[bool, str]:
    from .models import find_weights, how_to_train

    path = find_weights(dataset.name)
    return (True, f"weights in {path}") if path else (False, how_to_train(dataset.name))


def _build_unet(dataset: Dataset):
    from .models import ModelError, load_unet

    try:
        return load_unet(dataset)
    except ModelError as exc:
        raise DenoiserError(str(exc)) from exc


@functools.lru_cache(maxsize=16)
def _file_sha(path: str, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _unet_cache_id(dataset: Dataset) -> str:
    from .models import find_weights

    path = find_weights(dataset.name)
    return _file_sha(str(path), path.stat().st_mtime) if path else "none"


register(DenoiserSpec(
    "unet", "UNet (trained)",
    "A convolutional UNet trained on the data set with the EDM loss (our own training run).",
    _build_unet, availability=_unet_availability, cache_id=lambda ds, **o: _unet_cache_id(ds)))
