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

    interval    each mean over seeds or samples comes with its 95 % bootstrap interval (`analysis.intervals`,
                resampling seeds: a seed's A and B samples stay together), keys ``<name>_lo`` / ``<name>_hi``;
                a trend is called monotone only when the intervals of neighbouring N do not overlap
    copies      samples whose distance to their own subset is below ``COPY_REL`` of the typical neighbour
                distance: counted, with how many samples there are, instead of claiming "every sample"

Samples: noise seeds ``SEED .. SEED + n - 1`` (sample i from `sampling.initial_noise` with its own seed, each
sample cached on its own: `sampling.seed_samples`), DDIM with ``STEPS`` steps. ``N_SAMPLES`` = 64 seeds for
`locality generalisation` (the README's table); the page's default view and the warm-up read the first
``PAGE_SAMPLES`` = 16 of them, so that they cost what they did; the CLI then adds only seeds 16-63.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from locality_core.analysis.intervals import mean_interval, resample_indices
from locality_core.analysis.metrics import nearest_training
from locality_core.analysis.sampling import seed_samples
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
N_SAMPLES = 64     # the CLI's and the README's table: intervals narrow enough to say "within noise" or not
PAGE_SAMPLES = 16  # the page and the warm-up: the first 16 of the same seeds, as cheap as before
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


def _with_interval(row: dict, name: str, values, indices: np.ndarray | None) -> None:
    iv = mean_interval(values, indices=indices)
    row[name], row[f"{name}_lo"], row[f"{name}_hi"] = iv.mean, iv.lo, iv.hi


def pair_row(n: int, a: dict[str, np.ndarray], b: dict[str, np.ndarray], mean: torch.Tensor, train_nn: float,
             mse_timesteps: tuple[int, ...] = MSE_TIMESTEPS) -> dict:
    """One row of the table from the A and B sides (`side_arrays`) of size ``n``: means with 95 % intervals
    (seeds resampled, the same resamples for every quantity), counts of copies."""
    sa, sb = torch.from_numpy(a["samples"]), torch.from_numpy(b["samples"])
    seeds = len(sa)
    idx = resample_indices(seeds) if seeds > 1 else None
    own = np.stack([a["dist_own"], b["dist_own"]], axis=1)          # (seeds, 2): a seed's two samples together
    row = {"n": int(n), "n_samples": 2 * seeds, "n_seeds": seeds, "train_nn": float(train_nn),
           "dist_own_max": float(own.max()), "heldout_nn": float((a["heldout_nn"] + b["heldout_nn"]) / 2)}
    _with_interval(row, "cosine", centred_cosine(sa, sb, mean).numpy(), idx)
    _with_interval(row, "mse_ab", pair_mse(sa, sb).numpy(), idx)
    _with_interval(row, "dist_own", own.mean(1), idx)
    _with_interval(row, "dist_other", (a["dist_other"] + b["dist_other"]) / 2, idx)
    _with_interval(row, "dist_own_rel", own.mean(1) / train_nn, idx)
    row["dist_own_vs_heldout"] = row["dist_own"] / row["heldout_nn"]
    row["copies"] = int((own < COPY_REL * train_nn).sum())
    row["max_copy_distance"] = float(COPY_REL * train_nn)
    for i, t in enumerate(mse_timesteps):
        row[f"train_mse_t{t}"] = float((a["train_mse"][i] + b["train_mse"][i]) / 2)
        row[f"heldout_mse_t{t}"] = float((a["heldout_mse"][i] + b["heldout_mse"][i]) / 2)
    return row


# ---------------------------------------------------------------- one side

@torch.no_grad()
def side_evaluation(denoiser: Callable, own: torch.Tensor, heldout: torch.Tensor, *, n_eval: int, seed: int = SEED,
                    batch: int = 8, mse_timesteps: tuple[int, ...] = MSE_TIMESTEPS) -> dict[str, np.ndarray]:
    """What does not depend on the samples: train_mse / heldout_mse (len(mse_timesteps),) on ``n_eval`` own
    training and held-out images, heldout_nn (scalar) the mean distance of held-out images to ``own``."""
    mse_sigmas = [float(t_to_sigma(t)) for t in mse_timesteps]
    train_mse = heldout_mse(denoiser, own[:n_eval], mse_sigmas, seed=seed, batch=batch)
    test_mse = heldout_mse(denoiser, heldout[:n_eval], mse_sigmas, seed=seed, batch=batch)
    heldout_nn = float(nearest_training(heldout[:n_eval], own)[1].mean())
    return {"train_mse": np.array(train_mse), "heldout_mse": np.array(test_mse), "heldout_nn": np.array(heldout_nn)}


def sample_distances(samples: torch.Tensor, own: torch.Tensor, other: torch.Tensor) -> dict[str, np.ndarray]:
    """Each sample's nearest image in its own and in the other subset: own_idx / dist_own, other_idx /
    dist_other (n,)."""
    own_idx, dist_own = nearest_training(samples, own)
    other_idx, dist_other = nearest_training(samples, other)
    return {"samples": samples.numpy(), "own_idx": own_idx.numpy(), "dist_own": dist_own.numpy(),
            "other_idx": other_idx.numpy(), "dist_other": dist_other.numpy()}


def side_arrays(denoiser: Callable, own: torch.Tensor, other: torch.Tensor, heldout: torch.Tensor, *,
                n_samples: int, steps: int = STEPS, seed: int = SEED, batch: int = 8, n_eval: int | None = None,
                ids: tuple | None = None, cache: ArrayCache | None = None,
                progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Everything measured on one denoiser built from the images ``own`` (N, C, H, W); ``other``: the other
    subset, ``heldout``: test images. Arrays: samples (n, C, H, W) from noise seeds seed .. seed + n - 1
    (each kept in the cache on its own under ``ids``), `sample_distances` and `side_evaluation` (on ``n_eval``
    images, default ``N_EVAL``; cached under ``ids`` too, as it does not depend on the number of seeds)."""
    sigmas = ddim_sigmas(steps)
    n_eval = N_EVAL if n_eval is None else n_eval

    def report(done: int, missing: int) -> None:
        if progress:
            progress(0.9 * done / missing, f"samples: {done} of {missing} not yet cached")

    samples = seed_samples(denoiser, list(range(seed, seed + n_samples)), sigmas, shape=tuple(own.shape[1:]),
                           ids=ids, batch_size=batch, cache=cache, progress=report)
    if progress:
        progress(0.9, "denoising MSE on training and held-out images")

    def evaluate() -> dict[str, np.ndarray]:
        return side_evaluation(denoiser, own, heldout, n_eval=n_eval, seed=seed, batch=batch)

    evaluation = evaluate() if ids is None else (cache or default_cache()).get_or_compute(
        EVALUATIONS.key(*ids, seed, n_eval, ",".join(map(str, MSE_TIMESTEPS))), evaluate)
    return {**sample_distances(samples, own, other), **evaluation}


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


SIDES = cache_kind("generalisation-side", 2)
EVALUATIONS = cache_kind("generalisation-evaluation")
TRAIN_NN = cache_kind("generalisation-train-nn")


def side_key(dataset: Dataset, kind: str, n: int, split: str, n_samples: int | None = None) -> str:
    return SIDES.key(dataset.fingerprint, side_id(dataset, kind, n, split), n, split, _seeds(n_samples), STEPS, SEED,
                     N_EVAL, ",".join(map(str, MSE_TIMESTEPS)))


def _seeds(n_samples: int | None) -> int:
    """None: the page's default (read when called, so that a test may lower it)."""
    return PAGE_SAMPLES if n_samples is None else int(n_samples)


def side(dataset: Dataset, kind: str, n: int, split: str, *, n_samples: int | None = None,
         cache: ArrayCache | None = None, progress: Progress | None = None) -> dict[str, np.ndarray]:
    """`side_arrays` of one denoiser, computed once and kept in the disk cache (its samples and its evaluation
    also on their own, so that more seeds compute only the new samples)."""
    cache = cache or default_cache()

    def compute() -> dict[str, np.ndarray]:
        own = training_subset(dataset, n, split).train
        other = training_subset(dataset, n, other_split(split)).train
        batch = 16 if kind == "unet" else 8  # the analytical engine plans for batches of up to 8
        return side_arrays(build_denoiser(dataset, kind, n, split), own, other, dataset.test,
                           n_samples=_seeds(n_samples), batch=batch,
                           ids=(dataset.fingerprint, side_id(dataset, kind, n, split)), cache=cache,
                           progress=progress)

    return cache.get_or_compute(side_key(dataset, kind, n, split, n_samples), compute,
                                keep=True)  # read every rerun


def side_is_cached(dataset: Dataset, kind: str, n: int, split: str, cache: ArrayCache | None = None,
                   n_samples: int | None = None) -> bool:
    cache = cache or default_cache()
    return side_key(dataset, kind, n, split, n_samples) in cache


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


def table(dataset: Dataset, kind: str = "unet", sizes: list[int] | None = None, *, n_samples: int | None = None,
          cache: ArrayCache | None = None, progress: Progress | None = None) -> list[dict]:
    """One `pair_row` per N (ascending) for denoisers of ``kind`` over ``n_samples`` seeds (default
    ``PAGE_SAMPLES``); sizes default to the trained family."""
    sizes = sorted(family_sizes(dataset) if sizes is None else sizes)
    mean = training_mean(dataset)
    train_nn = train_nn_distance(dataset, cache)
    rows = []
    for i, n in enumerate(sizes):
        pair = {}
        for j, split in enumerate(("A", "B")):
            done = (2 * i + j) / (2 * len(sizes))
            report = part(progress, done, done + 1 / (2 * len(sizes)), f"{kind} N = {n:,} {split}: ")
            pair[split] = side(dataset, kind, n, split, n_samples=n_samples, cache=cache, progress=report)
        rows.append(pair_row(n, pair["A"], pair["B"], mean, train_nn))
    if progress:
        progress(1.0, f"{kind}: done")
    return rows


def is_cached(dataset: Dataset, kind: str = "unet", sizes: list[int] | None = None,
              cache: ArrayCache | None = None, n_samples: int | None = None) -> bool:
    """Whether every side of ``table(dataset, kind, sizes, n_samples=n_samples)`` is on disk (no computation)."""
    sizes = family_sizes(dataset) if sizes is None else sizes
    return all(side_is_cached(dataset, kind, n, s, cache, n_samples) for n in sizes for s in ("A", "B"))


def precompute(dataset: Dataset | str, progress: Progress | None = None, *, kinds: tuple[str, ...] = KINDS,
               n_samples: int | None = None, cache: ArrayCache | None = None) -> dict[str, list[dict]]:
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

        out[kind] = table(dataset, kind, sizes, n_samples=n_samples, cache=cache, progress=report)
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
    cos_text = (f"{cos:.2f} [95 % interval {row['cosine_lo']:.2f}, {row['cosine_hi']:.2f} over {row['n_seeds']} "
                "seeds]" if "cosine_lo" in row else f"{cos:.2f}")
    out = [f"At N = {n:,} the A and B samples from the same noise are {alike}: mean cosine similarity {cos_text} "
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
    if "copies" in row:
        out.append(f"{row['copies']} of {row['n_samples']} samples are copies (closer than "
                   f"{row['max_copy_distance']:.2f} to an image of their own subset; the farthest lies "
                   f"{row['dist_own_max']:.2f} from it).")
    train, test = row[f"train_mse_t{t}"], row[f"heldout_mse_t{t}"]
    knows = ("denoises its own training images better than new ones: it knows them" if test >= KNOWS_TRAINING * train
             else "denoises new images about as well as its training images")
    out.append(f"At t = {t} each denoiser {knows} (MSE {train:.4f} on training, {test:.4f} on held-out images).")
    return out


def _span(row: dict, key: str) -> tuple[float, float]:
    """The value's 95 % interval when the row has one (``key_lo`` / ``key_hi``), else the value itself."""
    return (row[f"{key}_lo"], row[f"{key}_hi"]) if f"{key}_lo" in row else (row[key], row[key])


def _apart(a: dict, b: dict, key: str) -> bool:
    """Whether two rows differ beyond noise: their intervals do not overlap (without intervals: the printed values
    differ)."""
    (alo, ahi), (blo, bhi) = _span(a, key), _span(b, key)
    if f"{key}_lo" in a and f"{key}_lo" in b:
        return ahi < blo or bhi < alo
    return f"{a[key]:.3g}" != f"{b[key]:.3g}"


def _value(row: dict, key: str) -> str:
    return f"{row[key]:.3g} [{row[key + '_lo']:.3g}, {row[key + '_hi']:.3g}]" if f"{key}_lo" in row else \
        f"{row[key]:.3g}"


def _runs(flat: list[int], rows: list[dict]) -> list[str]:
    """'N = a to N = b' for each run of consecutive steps i -> i + 1 listed in ``flat``."""
    out, start = [], None
    for i in range(len(rows)):
        if i in flat and start is None:
            start = i
        if i not in flat and start is not None:
            out.append(f"N = {rows[start]['n']:,} to N = {rows[i]['n']:,}")
            start = None
    return out


def trend(rows: list[dict], key: str) -> str:
    """'rises from a at N = .. to b at N = ..', the N where it moves the other way, and where it is flat within
    noise, for a value in ``rows``. With intervals (``key_lo`` / ``key_hi``, shown in brackets) a move counts
    only where the intervals do not overlap, so "monotonically" means every step is beyond noise."""
    if len(rows) < 2:
        return f"is {_value(rows[0], key)} at N = {rows[0]['n']:,} (one N so far)" if rows else "has no value yet"
    first, last = rows[0], rows[-1]
    if not _apart(first, last, key):  # neither "rises" nor "falls"
        values = [r[key] for r in rows]
        noise = " (within noise)" if f"{key}_lo" in first else ""
        return (f"is about the same at N = {first['n']:,} ({_value(first, key)}) and N = {last['n']:,} "
                f"({_value(last, key)}){noise}, between {min(values):.3g} and {max(values):.3g} in between")
    up = last[key] > first[key]
    steps = range(len(rows) - 1)
    flat = [i for i in steps if not _apart(rows[i], rows[i + 1], key)]
    breaks = [rows[i + 1]["n"] for i in steps if i not in flat and (rows[i + 1][key] > rows[i][key]) != up]
    text = (f"{'rises' if up else 'falls'} from {_value(first, key)} at N = {first['n']:,} to {_value(last, key)} at "
            f"N = {last['n']:,}")
    flats = ("flat within noise from " + " and from ".join(_runs(flat, rows))) if flat and f"{key}_lo" in first else ""
    if breaks:
        back = f"it {'falls' if up else 'rises'} at N = " + ", ".join(f"{n:,}" for n in breaks)
        return text + ", not monotonically: " + "; ".join(filter(None, (back, flats)))
    return text + (f", but {flats}" if flats else ", monotonically")
