"""Agreement between denoisers (an analytical model vs the trained network), and a memorisation check.

Glossary
    r2          as the public code of Lukoianov et al. defines it: 1 - sum_j (x_j - y_j)^2 / (d * Var(y)),
                y the REFERENCE's image (the network's x0_hat), Var unbiased over its d pixels; per sample,
                then averaged. Not symmetric: the reference goes second
    pearson     correlation of the two mean-centred images (Kamb & Ganguli's statistic, which they call r^2);
                per sample, reported as mean and median
    mse         mean squared difference per pixel, per sample, averaged
    same input  both denoisers on the same noisy held-out images at the grid sigmas (score matching)
    trajectory  both samplers from the same initial noise; the final samples compared
    nearest     the training image closest in L2 to a sample, and that distance (memorisation check)
    item        one trajectory (noise seed ``seed + i``) or one held-out image with its noise; every score
                is computed per item, so that its mean comes with a bootstrap interval (`analysis.intervals`)
                and two denoisers are compared on the same items (paired differences)
    per-batch   the analytical denoiser's batch-normalised variant (the public code's) against the exact
                softmax (`per_batch_difference`)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from locality_core.analysis.intervals import ranking
from locality_core.analysis.sampling import cached_items, seed_samples
from locality_core.data import Dataset
from locality_core.denoisers.analytical import AnalyticalDenoiser
from locality_core.denoisers.evaluate import grid_seed, noisy_heldout
from locality_core.schedule import REFERENCE_SIGMAS, REFERENCE_TIMESTEPS, sigma_to_t
from locality_core.stats.covariance import DataStats, compute_stats
from locality_core.store.cache import cache_kind


def _flat(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(len(a), -1).double()


def r2_scores(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n,) r2 of x against the reference y, both (n, ...)."""
    x, y = _flat(x), _flat(y)
    return 1.0 - (x - y).pow(2).sum(1) / (y.shape[1] * y.var(dim=1, unbiased=True))


def pearson_scores(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n,) Pearson correlation of the mean-centred images x, y (n, ...)."""
    x, y = _flat(x), _flat(y)
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(1e-300)


def mse_scores(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n,) mean squared difference per pixel."""
    return (_flat(x) - _flat(y)).pow(2).mean(1)


def agreement(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """r2 (mean), pearson (mean and median) and mse (mean) of x against the reference y."""
    p = pearson_scores(x, y)
    return {"r2": float(r2_scores(x, y).mean()), "pearson": float(p.mean()), "pearson_median": float(p.median()),
            "mse": float(mse_scores(x, y).mean())}


@torch.no_grad()
def same_input_outputs(denoiser: Callable, x0: torch.Tensor, sigmas: list[float], *, seed: int = 0,
                       batch_size: int = 64) -> torch.Tensor:
    """(S, n, C, H, W): the denoiser on x0 + sigma * eps at each sigma (the evaluation's noise, `evaluate.grid_seed`,
    the same for every denoiser)."""
    out = []
    for i, sigma in enumerate(sigmas):
        x = noisy_heldout(x0, float(sigma), grid_seed(i, seed))[0]
        out.append(torch.cat([denoiser(x[s:s + batch_size], sigma) for s in range(0, len(x), batch_size)]))
    return torch.stack(out)


def _per_sigma_rows(ours: torch.Tensor, ref: torch.Tensor, sigmas: list[float]) -> list[dict]:
    return [{"sigma": float(sigma), "t": round(float(sigma_to_t(sigma)), 1), **agreement(a, b)}
            for sigma, a, b in zip(sigmas, ours, ref, strict=True)]


def same_input_agreement(denoiser: Callable, reference: Callable, x0: torch.Tensor, sigmas: list[float], *,
                         seed: int = 0, batch_size: int = 64) -> list[dict]:
    """Both denoisers on the same noisy inputs (`same_input_outputs`).

    Rows {"sigma", "t", "r2", "pearson", "pearson_median", "mse"}, one per sigma.
    """
    ours = same_input_outputs(denoiser, x0, sigmas, seed=seed, batch_size=batch_size)
    ref = same_input_outputs(reference, x0, sigmas, seed=seed, batch_size=batch_size)
    return _per_sigma_rows(ours, ref, sigmas)


def mean_rows(rows: list[dict], keys=("r2", "pearson", "mse")) -> dict[str, float]:
    """Average of each key over rows (e.g. over the sigmas of `same_input_agreement`)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


@torch.no_grad()
def nearest_training(samples: torch.Tensor, train: torch.Tensor, *, chunk_size: int = 4096,
                     exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (n,) of the training image nearest to each sample in L2, and the distance (n,), float64; the lowest
    index among exact ties.

    Exact as a float64 search, at float32 speed: a streamed float32 pass computes every squared distance
    ||s||^2 - 2 s.t + ||t||^2 together with a rigorous bound on its rounding error (`_float32_error_bound`), keeps
    the training images whose lower bound does not exceed the best upper bound so far, and recomputes those few in
    float64. (A float64 pass over 52,000 natural-patches images took 1.7 s per row of 8 samples on 2 cores.)
    ``exclude`` (n,): a training index per sample that does not count (the sample itself, when the samples are
    training images).
    """
    s = samples.reshape(len(samples), -1)
    s64, s32 = s.double(), s.float()
    s_norm = s64.pow(2).sum(1).sqrt()
    d = s.shape[1]
    c = _float32_error_bound(d)
    s_sq32 = s32.pow(2).sum(1)
    upper = torch.full((len(s),), float("inf"), dtype=torch.float64)
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (sample, train index, lower bound)
    for start in range(0, len(train), chunk_size):
        t = train[start:start + chunk_size].reshape(-1, d)
        t32 = t.float()
        t_sq32 = torch.linalg.vector_norm(t32, dim=1).square()  # no (chunk, d) temporary
        t_norm = (t_sq32.double() / (1.0 - c)).sqrt()  # at least ||t||: the float32 sum is within c of it
        d2 = (s_sq32[:, None] - 2.0 * s32 @ t32.T + t_sq32[None]).double()
        err = c * (s_norm[:, None] + t_norm[None]).pow(2)
        lower, high = d2 - err, d2 + err
        if exclude is not None:
            inside = (exclude >= start) & (exclude < start + len(t))
            rows, cols = inside.nonzero()[:, 0], exclude[inside] - start
            lower[rows, cols], high[rows, cols] = float("inf"), float("inf")
        upper = torch.minimum(upper, high.min(dim=1).values)
        row, col = ((lower <= upper[:, None]) & lower.isfinite()).nonzero(as_tuple=True)
        kept.append((row, col + start, lower[row, col]))
    if not kept:  # no training image: nothing is near
        return torch.zeros(len(s), dtype=torch.long), torch.full((len(s),), float("inf"), dtype=torch.float64)
    row, idx, lower = (torch.cat(parts) for parts in zip(*kept, strict=True))
    survive = lower <= upper[row]  # the bound only tightened after a chunk was screened
    row, idx = row[survive], idx[survive]
    exact = (s64[row] - train[idx].reshape(-1, d).double()).pow(2).sum(1)
    best = torch.full((len(s),), float("inf"), dtype=torch.float64).scatter_reduce(0, row, exact, "amin")
    at_best = exact == best[row]  # the lowest index among exact ties, as a float64 scan in order finds it
    best_idx = torch.full((len(s),), len(train), dtype=torch.long).scatter_reduce(0, row[at_best], idx[at_best],
                                                                                   "amin")
    return best_idx, best.clamp_min(0).sqrt()


def _float32_error_bound(d: int) -> float:
    """A factor c with |fl32(||s||^2 - 2 s.t + ||t||^2) - (||s - t||^2)| <= c (||s|| + ||t||)^2 for vectors of
    length ``d`` rounded to float32 first: gamma_{d+4} = (d + 4) u / (1 - (d + 4) u), u = 2^-24, which covers any
    summation order of the dot products and norms (Higham, Accuracy and Stability, 3.1) and the rounding of float64
    samples to float32, doubled for the final additions."""
    nu = (d + 4) * 2.0 ** -24
    return 2.0 * nu / (1.0 - nu)


SAME_INPUT_OUTPUTS = cache_kind("same-input-outputs")
METRICS = ("r2", "pearson", "mse")
HIGHER_IS_BETTER = {"r2": True, "pearson": True, "mse": False}


@torch.no_grad()
def same_input_items(denoiser: Callable, x0: torch.Tensor, sigmas: list[float], items: list[int], *, seed: int,
                     ids: tuple | None = None, batch_size: int = 8, cache=None) -> torch.Tensor:
    """(n, S, C, H, W): the denoiser on held-out image ``x0[i]`` plus noise at every sigma, the noise of item
    i one draw seeded ``seed + i`` (the same for every denoiser); each item cached on its own under ``ids``."""
    sigma_text = ",".join(f"{s:.6g}" for s in sigmas)
    keys = [None if ids is None else SAME_INPUT_OUTPUTS.key(*ids, sigma_text, seed + i) for i in items]

    def compute(idx: list[int]) -> np.ndarray:
        noisy = torch.cat([noisy_heldout(x0[items[i]:items[i] + 1], sigmas, seed + items[i]) for i in idx], dim=1)
        return torch.stack([denoiser(noisy[j], s) for j, s in enumerate(sigmas)], dim=1).float().numpy()

    return torch.from_numpy(cached_items(keys, compute, batch_size=batch_size, cache=cache))


def item_scores(ours_same: torch.Tensor, ref_same: torch.Tensor, ours_traj: torch.Tensor,
                ref_traj: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-item scores against the reference: "<metric>_trajectory" (n,) on the final samples and
    "<metric>_same_input" (n,) averaged over the sigmas, for metric in r2, pearson, mse."""
    fns = {"r2": r2_scores, "pearson": pearson_scores, "mse": mse_scores}
    out = {}
    for m, fn in fns.items():
        out[f"{m}_trajectory"] = fn(ours_traj, ref_traj).numpy()
        per_sigma = [fn(ours_same[:, j], ref_same[:, j]) for j in range(ours_same.shape[1])]
        out[f"{m}_same_input"] = torch.stack(per_sigma, dim=1).mean(1).numpy()
    return out


def agreement_scores(dataset, denoisers: dict[str, Callable], reference: Callable, *, sigmas: list[float],
                     n: int = 32, seed: int = 0, batch_size: int = 8, parts: tuple[str, ...] = ("trajectory",
                     "same_input"), progress: Callable[[str], None] | None = None,
                     cache_ids: dict[str, str] | None = None, cache=None) -> dict:
    """Every denoiser against ``reference`` on n items: trajectory i from noise seed ``seed + i`` (DDIM through
    ``sigmas``), and held-out test image i with noise seeded ``seed + i`` at every sigma (same input).

    Returns {"n", "seeds": [first, last], "scores": {name: `item_scores`}, "per_sigma": {name: [{"sigma", "t",
    "r2", "pearson", "mse"}]}}. ``cache_ids``: for the denoisers named there (the key "reference" for the
    reference) each item's output is kept in the disk cache under that id, so a larger n, another reference or
    another denoiser computes only what is new, and an interrupted run resumes.
    """
    cache_ids = cache_ids or {}
    items = list(range(n))
    seeds = [seed + i for i in items]
    shape = tuple(dataset.shape)

    def outputs(name: str, denoiser: Callable) -> dict[str, torch.Tensor]:
        ids = (dataset.fingerprint, cache_ids[name]) if name in cache_ids else None
        out = {}
        if "trajectory" in parts:
            if progress:
                progress(f"{name}: {n} trajectories")
            out["trajectory"] = seed_samples(denoiser, seeds, sigmas, shape=shape, ids=ids, batch_size=batch_size,
                                             cache=cache)
        if "same_input" in parts:
            if progress:
                progress(f"{name}: {n} held-out images x {len(sigmas)} noise levels")
            out["same_input"] = same_input_items(denoiser, dataset.test, sigmas, items, seed=seed, ids=ids,
                                                 batch_size=batch_size, cache=cache)
        return out

    ref = outputs("reference", reference)
    scores, per_sigma = {}, {}
    for name, denoiser in denoisers.items():
        ours = outputs(name, denoiser)
        empty = torch.zeros(n, 1, *shape)
        s = item_scores(ours.get("same_input", empty), ref.get("same_input", empty), ours.get("trajectory", empty),
                        ref.get("trajectory", empty))
        scores[name] = {k: v for k, v in s.items() if k.endswith(parts)}
        if "same_input" in parts:
            per_sigma[name] = _per_sigma_rows(ours["same_input"].transpose(0, 1), ref["same_input"].transpose(0, 1),
                                              sigmas)
    return {"n": n, "seeds": [seeds[0], seeds[-1]], "scores": scores, "per_sigma": per_sigma}


def comparison(result: dict) -> dict:
    """`agreement_scores` with its uncertainty: per score (e.g. "r2_trajectory") the `intervals.ranking` of the
    denoisers (means with 95 % bootstrap intervals, paired differences to the best, supported order), and one
    row per denoiser: {"denoiser", score: {"mean", "lo", "hi", "n"}, score + "_vs_best": paired interval}."""
    names = list(result["scores"])
    keys = list(result["scores"][names[0]]) if names else []
    rankings = {k: ranking({name: result["scores"][name][k] for name in names},
                           higher_is_better=HIGHER_IS_BETTER[k.split("_", 1)[0]]) for k in keys}
    rows = []
    for name in names:
        row = {"denoiser": name}
        for k, rank in rankings.items():
            row[k] = rank["intervals"][name]
            row[f"{k}_vs_best"] = rank["vs_best"][name]
        rows.append(row)
    return {"rankings": rankings, "rows": rows}


def per_batch_difference(dataset: Dataset, *, n_train: int = 10_000, n: int = 8, seed: int = 0,
                         sigmas: list[float] | None = None, theta: float | None = None,
                         stats: DataStats | None = None) -> list[dict]:
    """How far the analytical denoiser's batch-normalised variant (public code) is from the exact softmax, per
    sigma.

    Both built from the first ``n_train`` training images (statistics and masks from them too, unless
    ``stats`` is given), evaluated on the same noisy versions of the first ``n`` test images.
    Rows: t, sigma, max_abs_diff, mean_abs_diff.
    """
    sigmas = list(REFERENCE_SIGMAS if sigmas is None else sigmas)
    train = dataset.train[:n_train]
    stats = stats or compute_stats(train, fingerprint=f"{dataset.fingerprint}:first-{len(train)}")
    data = Dataset.from_tensor(train, stats=stats)
    exact = AnalyticalDenoiser(theta).fit(data)
    batched = AnalyticalDenoiser(theta, batch_normalised=True).fit(data)

    rows = []
    with torch.no_grad():
        for i, (sigma, x) in enumerate(zip(sigmas, noisy_heldout(dataset.test[:n], sigmas, seed), strict=True)):
            diff = (exact(x, sigma) - batched(x, sigma)).abs()
            t = REFERENCE_TIMESTEPS[i] if sigmas == list(REFERENCE_SIGMAS) else None
            rows.append({"t": t, "sigma": sigma, "max_abs_diff": float(diff.max()),
                         "mean_abs_diff": float(diff.mean())})
    return rows
