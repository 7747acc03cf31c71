"""Uncertainty of a claim: bootstrap intervals of means, paired differences, and which orderings they support.

Every comparison in the project rests on a few dozen samples (trajectories, seeds, images), so each mean it
states comes with a 95 % interval, and an order between two denoisers is said only when the data support it.

Glossary
    bootstrap   resample the n per-item values with replacement ``n_boot`` times (seeded), take the mean of
                each resample; the interval is the 2.5 and 97.5 percentiles of those means (percentile
                bootstrap, ``LEVEL`` = 0.95)
    paired      two denoisers scored on the SAME items (the same noise seeds): the interval of the mean of the
                per-item differences a_i - b_i, resampled as pairs. Much narrower than comparing two separate
                intervals, because what is common to an item (a hard seed) cancels
    supported   an order "a before b" is supported when the paired interval of a - b (better minus worse)
                excludes 0; otherwise the two are "within noise" of each other (written a ≈ b)
    overlap     two intervals share a point: the sentences then say "within noise"
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

LEVEL = 0.95
N_BOOT = 10_000
SEED = 0


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    n: int

    def excludes(self, value: float = 0.0) -> bool:
        return value < self.lo or value > self.hi

    def overlaps(self, other: Interval) -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def text(self, digits: int = 3) -> str:
        """'0.748 [0.631, 0.835]'"""
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"

    def to_dict(self) -> dict:
        return asdict(self)


def resample_indices(n: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """(n_boot, n) indices drawn with replacement from range(n), from ``np.random.default_rng(seed)``. The same
    indices serve every denoiser of a comparison, so their intervals come from the same resamples."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(means: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` share of the resampled means (linear interpolation between order statistics)."""
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.asarray(means, dtype=np.float64), [tail, 1.0 - tail])
    return float(lo), float(hi)


def mean_interval(values, *, indices: np.ndarray | None = None, level: float = LEVEL, n_boot: int = N_BOOT,
                  seed: int = SEED) -> Interval:
    """Mean of ``values`` (n,) and its percentile-bootstrap interval (resamples ``indices`` (n_boot, n), drawn
    by `resample_indices` when not given)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("no values to average")
    if v.size == 1:
        return Interval(float(v[0]), float(v[0]), float(v[0]), 1)
    idx = resample_indices(v.size, n_boot, seed) if indices is None else indices
    lo, hi = percentile_interval(v[idx].mean(axis=1), level)
    return Interval(float(v.mean()), lo, hi, int(v.size))


def paired_difference(a, b, **options) -> Interval:
    """Mean of a_i - b_i over the items both were scored on, with its bootstrap interval (pairs resampled)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same items: {a.size} against {b.size}")
    return mean_interval(a - b, **options)


def ranking(scores: dict[str, np.ndarray], *, higher_is_better: bool = True, level: float = LEVEL,
            n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """Means with intervals, the paired difference of each denoiser to the best, and the supported order.

    ``scores``: name -> per-item values (n,), the same items for every name. Returns
    {"order": names best first, "best": name, "n": n, "intervals": {name: Interval dict},
     "vs_best": {name: paired Interval dict of (name - best), "wins": items where name beats the best},
     "steps": [{"better", "worse", "difference": Interval dict, "supported": bool}] between neighbours in order,
     "higher_is_better": bool, "level": level}.
    """
    names = list(scores)
    n = len(np.asarray(scores[names[0]]).ravel())
    idx = resample_indices(n, n_boot, seed) if n > 1 else None
    opts = {"indices": idx, "level": level}
    intervals = {k: mean_interval(scores[k], **opts) for k in names}
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(names, key=lambda k: -sign * intervals[k].mean)
    best = order[0]
    vs_best = {}
    for k in order:
        diff = paired_difference(scores[k], scores[best], **opts)
        better = sign * (np.asarray(scores[k], float).ravel() - np.asarray(scores[best], float).ravel()) > 0
        vs_best[k] = {**diff.to_dict(), "wins": int(better.sum())}
    steps = []
    for better, worse in zip(order, order[1:], strict=False):
        diff = paired_difference(scores[better], scores[worse], **opts)
        steps.append({"better": better, "worse": worse, "difference": diff.to_dict(), "supported": diff.excludes(0)})
    return {"order": order, "best": best, "n": n, "higher_is_better": higher_is_better, "level": level,
            "intervals": {k: intervals[k].to_dict() for k in names}, "vs_best": vs_best, "steps": steps}


def order_sentence(rank: dict, what: str, digits: int = 3) -> str:
    """The order of `ranking`'s result and nothing more: neighbours joined by ">" where their paired interval
    excludes 0, by "≈" (within noise) where it does not. "a ≈ b > c" says nothing about a against c but that
    a's mean is higher."""
    iv = rank["intervals"]

    def named(k: str) -> str:
        return f"{k} {Interval(**iv[k]).text(digits)}"

    text = named(rank["order"][0])
    for step in rank["steps"]:
        text += (" > " if step["supported"] else " ≈ ") + named(step["worse"])
    return (f"{what} (mean [{rank['level']:.0%} interval], n = {rank['n']}; > where the paired difference "
            f"excludes 0, ≈ within noise): {text}.")
