"""The hand-written registry of denoisers: every one meets D(x, sigma) -> x0_hat.

Glossary
    DenoiserSpec   name, title, one-line description, ``build(dataset, **options) -> denoiser``,
                   ``availability(dataset) -> (ok, message)`` and ``cache_id(dataset, **options)``: a string
                   that changes whenever the denoiser's outputs could (weights hash, options), used in cache keys
    get_denoiser   build (and keep, per process, within the memory budget: `store.memory.bounded_cache`) the
                   denoiser of a data set
    network        a trained network (our UNet, a diffusers UNet2DModel shipped or imported): the pages show a
                   row of it wherever they show one of the UNet
    imported       networks imported with `import_network` (`locality import-model`) appear under their NAME,
                   read from disk on every call, like imported data sets

The CLI, the app's select boxes and the parametrised tests all read this one table.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from locality_core.data import Dataset
from locality_core.denoisers import diffusers_import
from locality_core.denoisers.analytical import AnalyticalDenoiser
from locality_core.denoisers.models import ModelError, find_weights, how_to_train, load_unet, weights_id
from locality_core.denoisers.optimal import OptimalDenoiser
from locality_core.denoisers.patches import ELSDenoiser, LSDenoiser, resolve_schedule
from locality_core.denoisers.wiener import WienerDenoiser
from locality_core.store.memory import TooLargeError, bounded_cache, check_fits


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
    network: bool = False  # a trained network: a row wherever the UNet has one


REGISTRY: dict[str, DenoiserSpec] = {}


def register(spec: DenoiserSpec) -> DenoiserSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"denoiser {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> DenoiserSpec:
    if name in REGISTRY:
        return REGISTRY[name]
    if name in diffusers_import.list_networks():
        return imported_spec(name)
    known = [*REGISTRY, *diffusers_import.list_networks()]
    raise DenoiserError(f"unknown denoiser {name!r}; known: {', '.join(known)}")


def list_denoisers() -> list[DenoiserSpec]:
    """The registered denoisers, then the imported networks (read from disk on every call)."""
    return list(REGISTRY.values()) + [imported_spec(n) for n in diffusers_import.list_networks()]


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
    merged = {**spec.options, **options}
    return _build(name, dataset, tuple(sorted(merged.items())), spec.cache_id(dataset, **merged))


@bounded_cache  # an entry counts its data set too: the cache keeps it alive (shared storage is counted once)
def _build(name: str, dataset: Dataset, options: tuple, identity: str):
    """``identity`` (the cache id: weights hash, ...) is in the key so that new weights are never served old."""
    return get_spec(name).build(dataset, **dict(options))


def denoiser_cache_id(name: str, dataset: Dataset, **options) -> str:
    spec = get_spec(name)
    merged = {**spec.options, **options}
    return f"{name}:{spec.cache_id(dataset, **merged)}:{sorted(merged.items())}"


# ---------------------------------------------------------------- Wiener

def _build_wiener(dataset: Dataset):
    return WienerDenoiser().fit(dataset)


register(DenoiserSpec(
    "wiener", "Wiener (linear)",
    "The optimal linear denoiser mu + P_sigma (x - mu), built from the data covariance alone.",
    _build_wiener, linear=True, cache_id=lambda ds, **o: ds.fingerprint[:16]))


# ---------------------------------------------------------------- trained UNet

def _unet_availability(dataset: Dataset) -> tuple[bool, str]:
    path = find_weights(dataset.name)
    return (True, f"weights in {path}") if path else (False, how_to_train(dataset.name))


def _build_unet(dataset: Dataset):
    try:
        return load_unet(dataset)
    except ModelError as exc:
        raise DenoiserError(str(exc)) from exc


def _unet_cache_id(dataset: Dataset) -> str:
    path = find_weights(dataset.name)
    return weights_id(path) if path else "none"


register(DenoiserSpec(
    "unet", "UNet (trained)",
    "A convolutional UNet trained on the data set with the EDM loss (our own training run).",
    _build_unet, availability=_unet_availability, cache_id=lambda ds, **o: _unet_cache_id(ds), network=True))


# ---------------------------------------------------------------- diffusers UNet2DModels: shipped and imported

def _network_availability(directory: Path | None, dataset: Dataset, missing: str) -> tuple[bool, str]:
    if directory is None:
        return False, missing
    if importlib.util.find_spec("diffusers") is None:
        return False, f"needs the optional package diffusers: {diffusers_import.INSTALL}"
    try:
        diffusers_import.check_record(directory, diffusers_import.read_record(directory), dataset)
    except ModelError as exc:
        return False, str(exc)
    return True, f"diffusers network in {directory}"


def _build_network(directory: Path | None, dataset: Dataset):
    if directory is None:
        raise DenoiserError(f"no diffusers network for {dataset.name!r} here.")
    return diffusers_import.load_network(directory, dataset)


def _network_cache_id(directory: Path | None) -> str:
    return diffusers_import.network_id(directory) if directory is not None else "none"


def import_network(source, name: str, dataset: Dataset, *, pixel_range: str = "-1,1") -> dict:
    """Import a diffusers UNet2DModel folder or .zip as the denoiser ``name`` of ``dataset``
    (`diffusers_import.import_network`); returns its record."""
    if name in REGISTRY:
        raise DenoiserError(f"{name!r} is the name of a built-in denoiser; choose another name.")
    return diffusers_import.import_network(source, name, dataset, pixel_range=pixel_range)


def imported_spec(name: str) -> DenoiserSpec:
    """The registry entry of an imported network."""
    directory = diffusers_import.network_dir(name)
    try:
        record = diffusers_import.read_record(directory)
        about = (f"{record.get('parameters', 0):,} parameters, {record.get('prediction_type')} prediction, "
                 f"imported for {record.get('dataset')} from {record.get('source')}")
    except ModelError as exc:
        about = str(exc)
    return DenoiserSpec(
        name, f"{name} (your network)",
        f"Your diffusers UNet2DModel ({about}); its timestep is {diffusers_import.TIMESTEP_RULE}.",
        lambda ds: _build_network(directory, ds),
        availability=lambda ds: _network_availability(directory, ds, f"no network {name!r} imported"),
        cache_id=lambda ds, **o: _network_cache_id(directory), network=True)


def _shipped_missing(dataset: Dataset) -> str:
    return (f"No diffusers network ships for {dataset.name!r}; import one of your own with `locality import-model "
            f"NAME FOLDER --dataset {dataset.name}`.")


register(DenoiserSpec(
    diffusers_import.SHIPPED, "diffusers UNet (DDPM)",
    "A diffusers UNet2DModel with attention blocks, trained with diffusers' own DDPM recipe (epsilon "
    f"prediction): a second architecture and loss. Its timestep is {diffusers_import.TIMESTEP_RULE}.",
    lambda ds: _build_network(diffusers_import.shipped_dir(ds.name), ds),
    availability=lambda ds: _network_availability(diffusers_import.shipped_dir(ds.name), ds, _shipped_missing(ds)),
    cache_id=lambda ds, **o: _network_cache_id(diffusers_import.shipped_dir(ds.name)), network=True))


# ---------------------------------------------------------------- empirical optimal (memorising) denoiser

def _build_optimal(dataset: Dataset, chunk_size: int = 4096, top_k: int | None = None):
    return OptimalDenoiser(chunk_size=chunk_size, top_k=top_k).fit(dataset)


register(DenoiserSpec(
    "optimal", "Optimal (empirical)",
    "The exact posterior mean when the data are the training set: a softmax over all N training images. "
    "It reproduces training images (memorisation). top_k keeps only the K nearest (an approximation).",
    _build_optimal, options={"chunk_size": 4096, "top_k": None},
    cache_id=lambda ds, **o: ds.fingerprint[:16]))


# ---------------------------------------------------------------- the paper's analytical denoiser

def _analytical_availability(dataset: Dataset) -> tuple[bool, str]:
    try:
        check_fits(dataset.d, dataset.shape)
    except TooLargeError as exc:
        return False, str(exc)
    return True, "computed from the data (masks from the Wiener matrix)"


def _build_analytical(dataset: Dataset, theta: float | None = None, threshold: str = "global",
                      batch_normalised: bool = False):

    return AnalyticalDenoiser(theta, threshold, batch_normalised=batch_normalised).fit(dataset)


register(DenoiserSpec(
    "analytical", "Analytical (Lukoianov et al.)",
    "Per output pixel, a softmax over all training images with distances over a locality mask read off the "
    "data's Wiener matrix (exact softmax; batch_normalised=True reproduces the reference code's per-batch "
    "variant).",
    _build_analytical, availability=_analytical_availability,
    options={"theta": None, "threshold": "global", "batch_normalised": False},
    cache_id=lambda ds, **o: ds.fingerprint[:16]))


# ---------------------------------------------------------------- Kamb & Ganguli's patch machines

def _patch_cache_id(dataset: Dataset, kind: str, schedule: str = "auto", patch_size: int | None = None,
                    **options) -> str:
    sizes = patch_size if patch_size is not None else resolve_schedule(dataset, kind, schedule).sizes
    return f"{dataset.fingerprint[:16]}:{sizes}"


def _build_ls(dataset: Dataset, schedule: str = "auto", patch_size: int | None = None):
    return LSDenoiser(resolve_schedule(dataset, "ls", schedule), patch_size).fit(dataset)


def _build_els(dataset: Dataset, schedule: str = "auto", patch_size: int | None = None, n_train: int | None = 2000,
               boundary: str = "broken", seed: int = 0):

    if boundary not in ("broken", "equivariant"):
        raise DenoiserError(f"ELS boundary must be 'broken' or 'equivariant', got {boundary!r}")
    return ELSDenoiser(resolve_schedule(dataset, "els", schedule), patch_size, n_train=n_train,
                       broken=boundary == "broken", seed=seed).fit(dataset)


register(DenoiserSpec(
    "ls", "LS patch machine (Kamb & Ganguli)",
    "Per pixel, a softmax over all training images of the distance between P x P patches at the same place; "
    "P grows with noise (calibrated schedule if saved, else the published one).",
    _build_ls, options={"schedule": "auto", "patch_size": None},
    cache_id=lambda ds, **o: _patch_cache_id(ds, "ls", **o)))

register(DenoiserSpec(
    "els", "ELS patch machine (Kamb & Ganguli)",
    "Per pixel, a softmax over every P x P patch of the training images (boundary-broken, zero padding); "
    "uses a random subset of n_train training images (default 2,000) for speed.",
    _build_els, options={"schedule": "auto", "patch_size": None, "n_train": 2000, "boundary": "broken", "seed": 0},
    cache_id=lambda ds, **o: _patch_cache_id(ds, "els", **o)))
