"""Memorisation to generalisation (Kadkhodaie, Guth, Simoncelli, Mallat, ICLR 2024): two denoisers of the same
kind built from two disjoint training subsets A and B of N images each, sampled from the same noise.

Glossary
    side        one denoiser (network or analytical) of one subset: its samples from the shared noise, each
                sample's nearest image in its own and in the other subset, and its denoising MSE on its own
                training images and on held-out test images. Cached on disk per side
    row         one N: what compares A with B, averaged over both sides (`pair_row`)
    cosine      cosine similarity of the A and B samples of one noise seed after subtracting the data set's
                mean image (the shared dark background would otherwise count as agreement); mean over seeds
    mse_ab      mean squared difference per pixel between the A and B samples of one seed, mean over seeds
    dist_own    L2 distance (pixels in [-1, 1]) from a sample to the nearest image of its own subset; mean over
                samples and both sides. dist_other: the same to the other subset. 0 means a copy
    train_nn    the typical distance between training images: the median, over probe training images, of the
                distance to the nearest other image of the full training set. dist_own_rel = dist_own / train_nn
                reads "small" on that scale
    heldout_nn  mean distance from held-out test images to the nearest image of a subset of size N: where a
                new image lies. A sample much closer to the subset than that is a copy, one about as far is new
    train_mse / heldout_mse   per-pixel denoising MSE on (up to ``N_EVAL``) own training images and on
                ``N_EVAL`` held-out test images, at t = 100 / 300 / 500. Equal: the denoiser does not know its
                training set

Samples: ``N_SAMPLES`` seeds of `sampling.initial_noise` (seed 0), DDIM with ``STEPS`` steps (t = 900 ... 0).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from locality_core.analysis.metrics import nearest_training
from locality_core.analysis.sampling import initial_noise, sample_ddim
from locality_core.data import Dataset, load_dataset
from locality_core.data.subsets import subset_fingerprint, subset_indices, training_subset
from locality_core.denoisers.analytical import AnalyticalDenoiser
from locality_core.denoisers.evaluate import heldout_mse
from locality_core.denoisers.models import (
    ModelError,
    find_subset_weights,
    how_to_train_subsets,
    load_subset_unet,
    subset_family,
    weights_id,
)
from locality_core.progress import Progress, part
from locality_core.schedule import ddim_sigmas, t_to_sigma
from locality_core.store.cache import ArrayCache, cache_kind, default_cache

SIZES = (10, 100, 1000, 10000, 30000)
KINDS = ("unet", "analytical")
N_SAMPLES = 16
STEPS = 10
SEED = 0
MSE_TIMESTEPS = (100, 300, 500)
N_EVAL = 64
NN_PROBES = 1000



# ---------------------------------------------------------------- pure metrics

def centred_cosine(a: torch.Tensor, b: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(n,) cosine similarity of a[i] - mean and b[i] - mean; a, b (n, C, H, W), mean (C, H, W)."""
    x, y = (a - mean).flatten(1).double(), (b - mean).flatten(1).double()
    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(1e-300)


def pair_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n,) mean squared difference per pixel between a[i] and b[i]."""
    return (a - b).flatten(1).double().pow(2).mean(1)


def typical_nn_distance(train: torch.Tensor, n_probes: int = NN_PROBES, seed: int = SEED) -> float:
    """Median over ``n_probes`` training images (seeded choice) of the L2 distance to the nearest OTHER
    training image: the scale on which a distance between images is small."""
    n = len(train)
    probes = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(n_probes, n)]
    return float(nearest_training(train[probes], train, exclude=probes)[1].median())


def pair_row(n: int, a: dict[str, np.ndarray], b: dict[str, np.ndarray], mean: torch.Tensor, train_nn: float,
             mse_timesteps: tuple[int, ...] = MSE_TIMESTEPS) -> dict:
    """One row of the table from the A and B sides (`side_arrays`) of size ``n``."""
    sa, sb = torch.from_numpy(a["samples"]), torch.from_numpy(b["samples"])
    both = {k: np.concatenate([a[k], b[k]]) for k in ("dist_own", "dist_other")}
    row = {"n": int(n), "cosine": float(centred_cosine(sa, sb, mean).mean()), "mse_ab": float(pair_mse(sa, sb).mean()),
           "dist_own": float(both["dist_own"].mean()), "dist_own_max": float(both["dist_own"].max()),
           "dist_other": float(both["dist_other"].mean()),
           "heldout_nn": float((a["heldout_nn"] + b["heldout_nn"]) / 2), "train_nn": float(train_nn)}
    row["dist_own_rel"] = row["dist_own"] / train_nn
    row["dist_own_vs_heldout"] = row["dist_own"] / row["heldout_nn"]
    for i, t in enumerate(mse_timesteps):
        row[f"train_mse_t{t}"] = float((a["train_mse"][i] + b["train_mse"][i]) / 2)
        row[f"heldout_mse_t{t}"] = float((a["heldout_mse"][i] + b["heldout_mse"][i]) / 2)
    return row


# ---------------------------------------------------------------- one side

@torch.no_grad()
def side_arrays(denoiser: Callable, own: torch.Tensor, other: torch.Tensor, heldout: torch.Tensor, *,
                n_samples: int = N_SAMPLES, steps: int = STEPS, seed: int = SEED, batch: int = N_SAMPLES,
                mse_timesteps: tuple[int, ...] = MSE_TIMESTEPS, n_eval: int = N_EVAL,
                progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Everything measured on one denoiser built from the images ``own`` (N, C, H, W); ``other``: the other
    subset, ``heldout``: test images. Arrays: samples (n, C, H, W), own_idx / dist_own, other_idx /
    dist_other (n,), train_mse / heldout_mse (len(mse_timesteps),), heldout_nn (scalar)."""
    sigmas = ddim_sigmas(steps)
    z = initial_noise(n_samples, tuple(own.shape[1:]), seed, sigmas[0])
    parts = []
    for start in range(0, n_samples, batch):
        def report(info: dict, start=start) -> None:
            if progress:
                done = (start + (info["step"] + 1) / steps * min(batch, n_samples - start)) / n_samples
                progress(0.9 * done, f"samples {start + 1}-{min(n_samples, start + batch)}: step "
                                     f"{info['step'] + 1}/{steps}")

        parts.append(sample_ddim(denoiser, z[start:start + batch], sigmas, callback=report))
    samples = torch.cat(parts).float()
    own_idx, dist_own = nearest_training(samples, own)
    other_idx, dist_other = nearest_training(samples, other)
    mse_sigmas = [float(t_to_sigma(t)) for t in mse_timesteps]
    if progress:
        progress(0.9, "denoising MSE on training and held-out images")
    train_mse = heldout_mse(denoiser, own[:n_eval], mse_sigmas, seed=seed, batch=batch)
    test_mse = heldout_mse(denoiser, heldout[:n_eval], mse_sigmas, seed=seed, batch=batch)
    heldout_nn = float(nearest_training(heldout[:n_eval], own)[1].mean())
    return {"samples": samples.numpy(), "own_idx": own_idx.numpy(), "dist_own": dist_own.numpy(),
            "other_idx": other_idx.numpy(), "dist_other": dist_other.numpy(), "train_mse": np.array(train_mse),
            "heldout_mse": np.array(test_mse), "heldout_nn": np.array(heldout_nn)}


def other_split(split: str) -> str:
    return "B" if split == "A" else "A"


def side_id(dataset: Dataset, kind: str, n: int, split: str) -> str:
    """What a side's results depend on besides the sampling settings: the network's weights (their hash), or
    the analytical denoiser's recipe and its subset (the subset's fingerprint)."""
    if kind == "unet":
        path = find_subset_weights(dataset.name, n, split)
        if path is None:
            raise ModelError(how_to_train_subsets(dataset.name, n, split))
        return f"unet-{weights_id(path)}"
    if kind == "analytical":
        return f"analytical-global-default-{subset_fingerprint(dataset, n, split)}"
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def subset_images(dataset: Dataset, n: int, split: str, idx: np.ndarray) -> torch.Tensor:
    """Training images ``idx`` (indices into subset (n, split), e.g. a side's own_idx) without copying the subset."""
    return dataset.train[subset_indices(len(dataset.train), n, split)[torch.as_tensor(idx)]]


def build_denoiser(dataset: Dataset, kind: str, n: int, split: str):
    """The network trained on subset (n, split), or the analytical denoiser fitted on it."""
    if kind == "unet":
        return load_subset_unet(dataset, n, split)

    return AnalyticalDenoiser().fit(training_subset(dataset, n, split))


SIDES = cache_kind("generalisation-side")
TRAIN_NN = cache_kind("generalisation-train-nn")


def side_key(dataset: Dataset, kind: str, n: int, split: str) -> str:
    return SIDES.key(dataset.fingerprint, side_id(dataset, kind, n, split), n, split, N_SAMPLES, STEPS, SEED, N_EVAL,
                     ",".join(map(str, MSE_TIMESTEPS)))


def side(dataset: Dataset, kind: str, n: int, split: str, *, cache: ArrayCache | None = None,
         progress: Progress | None = None) -> dict[str, np.ndarray]:
    """`side_arrays` of one denoiser, computed once and kept in the disk cache."""
    cache = cache or default_cache()

    def compute() -> dict[str, np.ndarray]:
        own = training_subset(dataset, n, split).train
        other = training_subset(dataset, n, other_split(split)).train
        batch = N_SAMPLES if kind == "unet" else 8  # the analytical engine plans for batches of up to 8
        return side_arrays(build_denoiser(dataset, kind, n, split), own, other, dataset.test, batch=batch,
                           progress=progress)

    return cache.get_or_compute(side_key(dataset, kind, n, split), compute, keep=True)  # read every rerun


def side_is_cached(dataset: Dataset, kind: str, n: int, split: str, cache: ArrayCache | None = None) -> bool:
    cache = cache or default_cache()
    return side_key(dataset, kind, n, split) in cache


# ---------------------------------------------------------------- the table

def train_nn_distance(dataset: Dataset, cache: ArrayCache | None = None) -> float:
    """`typical_nn_distance` of the full training set, cached."""
    cache = cache or default_cache()
    key = TRAIN_NN.key(dataset.fingerprint, NN_PROBES, SEED)
    return float(cache.get_or_compute(key, lambda: {"d": np.array(typical_nn_distance(dataset.train))},
                                      keep=True)["d"])  # read on every rerun of the page


_means: dict[str, torch.Tensor] = {}


def training_mean(dataset: Dataset) -> torch.Tensor:
    """The mean training image (C, H, W), float32 as the cosines use it: once per data set, not per page rerun
    (a few small images per data set fingerprint are kept)."""
    if not dataset.fingerprint:
        return dataset.train.mean(0)
    if dataset.fingerprint not in _means:
        _means[dataset.fingerprint] = dataset.train.mean(0)
    return _means[dataset.fingerprint]


def family_sizes(dataset: Dataset) -> list[int]:
    """Subset sizes N whose A and B networks are both found (see `models.subset_family`)."""
    return subset_family(dataset.name)


def table(dataset: Dataset, kind: str = "unet", sizes: list[int] | None = None, *,
          cache: ArrayCache | None = None, progress: Progress | None = None) -> list[dict]:
    """One `pair_row` per N (ascending) for denoisers of ``kind``; sizes default to the trained family."""
    sizes = sorted(family_sizes(dataset) if sizes is None else sizes)
    mean = training_mean(dataset)
    train_nn = train_nn_distance(dataset, cache)
    rows = []
    for i, n in enumerate(sizes):
        pair = {}
        for j, split in enumerate(("A", "B")):
            done = (2 * i + j) / (2 * len(sizes))
            report = part(progress, done, done + 1 / (2 * len(sizes)), f"{kind} N = {n:,} {split}: ")
            pair[split] = side(dataset, kind, n, split, cache=cache, progress=report)
        rows.append(pair_row(n, pair["A"], pair["B"], mean, train_nn))
    if progress:
        progress(1.0, f"{kind}: done")
    return rows


def is_cached(dataset: Dataset, kind: str = "unet", sizes: list[int] | None = None,
              cache: ArrayCache | None = None) -> bool:
    """Whether every side of ``table(dataset, kind, sizes)`` is on disk (no computation)."""
    sizes = family_sizes(dataset) if sizes is None else sizes
    return all(side_is_cached(dataset, kind, n, s, cache) for n in sizes for s in ("A", "B"))


def precompute(dataset: Dataset | str, progress: Progress | None = None, *, kinds: tuple[str, ...] = KINDS,
               cache: ArrayCache | None = None) -> dict[str, list[dict]]:
    """The warm-up's entry point: every table of the Memorisation-to-generalisation page for the trained
    family of ``dataset`` (a Dataset or a registered name), computed once and cached on disk; returns
    {kind: rows}. Networks first (seconds), then the analytical denoisers (minutes at N = 30,000)."""
    dataset = load_dataset(dataset) if isinstance(dataset, str) else dataset
    sizes = family_sizes(dataset)
    out = {}
    for i, kind in enumerate(kinds):
        def report(fraction: float, text: str, i=i) -> None:
            if progress:
                progress((i + fraction) / len(kinds), text)

        out[kind] = table(dataset, kind, sizes, cache=cache, progress=report)
    return out


# ---------------------------------------------------------------- words from the numbers

SAME_COSINE, SIMILAR_COSINE = 0.9, 0.7   # A-B cosine: "nearly the same image", "similar images"
COPY_REL = 0.5        # dist_own below half the typical distance between neighbouring training images: a copy
NEW_VS_HELDOUT = 0.8  # dist_own at least 0.8 x that of held-out images to the same subset: a new image
KNOWS_TRAINING = 1.5  # held-out MSE at least 1.5 x the training MSE: the denoiser knows its training images


def describe(row: dict, t: int = 300) -> list[str]:
    """Sentences about one row, each read off its numbers with the thresholds above (none is assumed)."""
    n, cos = row["n"], row["cosine"]
    alike = ("nearly the same image" if cos >= SAME_COSINE else "similar images" if cos >= SIMILAR_COSINE
             else "different images")
    out = [f"At N = {n:,} the A and B samples from the same noise are {alike}: mean cosine similarity {cos:.2f} "
           f"(1 = identical; thresholds {SIMILAR_COSINE} and {SAME_COSINE})."]
    rel, vs = row["dist_own_rel"], row["dist_own_vs_heldout"]
    where = (f"a copy of one of its training images ({rel:.2f} of the typical distance {row['train_nn']:.2f} between "
             "neighbouring training images)" if rel < COPY_REL else
             f"{'farther from' if vs >= 1 else 'nearly as far from'} its training images "
             f"{'than' if vs >= 1 else 'as'} new test images are ({vs:.2f} of their distance {row['heldout_nn']:.2f}): "
             "a new image" if vs >= NEW_VS_HELDOUT else
             f"between a copy and a new image ({vs:.2f} of the distance {row['heldout_nn']:.2f} of test images to "
             "the same training images)")
    out.append(f"A sample lies on average {row['dist_own']:.2f} from the nearest image of its own subset, {where}; "
               f"it lies {row['dist_other']:.2f} from the other subset.")
    train, test = row[f"train_mse_t{t}"], row[f"heldout_mse_t{t}"]
    knows = ("denoises its own training images better than new ones: it knows them" if test >= KNOWS_TRAINING * train
             else "denoises new images about as well as its training images")
    out.append(f"At t = {t} each denoiser {knows} (MSE {train:.4f} on training, {test:.4f} on held-out images).")
    return out


def trend(rows: list[dict], key: str) -> str:
    """'rises from a at N = .. to b at N = ..' plus the N where it moves the other way, for a value in ``rows``."""
    if len(rows) < 2:
        return f"is {rows[0][key]:.3g} at N = {rows[0]['n']:,} (one N so far)" if rows else "has no value yet"
    values = [r[key] for r in rows]
    if f"{values[-1]:.3g}" == f"{values[0]:.3g}":  # equal as printed: neither "rises" nor "falls"
        return (f"is about the same at N = {rows[0]['n']:,} and N = {rows[-1]['n']:,} ({values[0]:.3g}), "
                f"between {min(values):.3g} and {max(values):.3g} in between")
    up = values[-1] > values[0]
    breaks = [rows[i + 1]["n"] for i in range(len(values) - 1) if (values[i + 1] >= values[i]) != up
              and values[i + 1] != values[i]]
    text = (f"{'rises' if up else 'falls'} from {values[0]:.3g} at N = {rows[0]['n']:,} to {values[-1]:.3g} at "
            f"N = {rows[-1]['n']:,}")
    if breaks:
        back = "falls" if up else "rises"
        return text + f", not monotonically: it {back} at N = " + ", ".join(f"{n:,}" for n in breaks)
    return text + ", monotonically"
