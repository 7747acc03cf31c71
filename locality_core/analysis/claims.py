"""Sentences that state a finding, computed from the numbers a page shows, never written in advance.

A fixed caption such as "fields shrink as noise falls" is true for Fashion-MNIST and false for a data set with
fewer images than pixels; every such sentence in the app comes from here, together with the numbers it rests
on (``Claim.facts``), so that a test can check each one against the numbers on the page.

Glossary
    sizes      half-max squares in pixels (`fields.half_max_size`: the side of the smallest centred square
               holding every pixel where a field's absolute map reaches half its maximum), one per noise level,
               sigma from high to low. Not the 50 %-mass square: a faint floor spread over the image, invisible
               on the maps' colour scale, can hold half the mass and make a field that looks like one pixel
               "15 px wide"; it cannot reach half the maximum
    rank       numerical rank of the covariance: eigenvalues above ``RANK_RTOL`` times the largest
    agree      cosine similarity of two fields' absolute maps at least ``AGREE_COSINE``
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RANK_RTOL = 1e-9
AGREE_COSINE = 0.9


@dataclass(frozen=True)
class Claim:
    kind: str                  # what is claimed, e.g. "shrinks", "grows", "rank-deficient", "agree"
    text: str                  # the sentence shown (markdown)
    facts: dict = field(default_factory=dict)


def effective_rank(eigvals: np.ndarray, rtol: float = RANK_RTOL) -> int:
    """Number of eigenvalues above ``rtol`` times the largest."""
    eigvals = np.asarray(eigvals, dtype=np.float64)
    top = float(eigvals.max()) if eigvals.size else 0.0
    return int((eigvals > rtol * top).sum()) if top > 0 else 0


def _sigma(s: float) -> str:
    return f"σ = {s:.3g}"


def trend_claim(sigmas: list[float], sizes: list[float], who: str = "Wiener") -> Claim:
    """How the half-max square of ``who``'s field changes from the highest to the lowest noise level shown."""
    sizes = [float(v) for v in sizes]
    first, last = sizes[0], sizes[-1]
    facts = {"sigmas": list(sigmas), "sizes": sizes, "first": first, "last": last}
    steps = np.diff(sizes)
    rises = [i for i, step in enumerate(steps) if step > 0]
    if last < first:
        text = (f"As noise falls the {who} field shrinks: its half-max square is {first:g} px at "
                f"{_sigma(sigmas[0])} and {last:g} px at {_sigma(sigmas[-1])}")
        if rises:
            i = rises[0]
            text += f", though not steadily (it grows from {_sigma(sigmas[i])} to {_sigma(sigmas[i + 1])})"
        return Claim("shrinks", text + ".", {**facts, "monotone": not rises})
    if last > first:
        return Claim("grows", f"Here the {who} field does **not** shrink as noise falls: its half-max square grows "
                              f"from {first:g} px at {_sigma(sigmas[0])} to {last:g} px at {_sigma(sigmas[-1])}.",
                     facts)
    if len(set(sizes)) == 1:
        return Claim("constant", f"The {who} field's half-max square stays at {first:g} px from "
                                 f"{_sigma(sigmas[0])} to {_sigma(sigmas[-1])}.", facts)
    i = int(np.argmin(sizes)) if min(sizes) < first else int(np.argmax(sizes))
    return Claim("returns", f"The {who} field does not shrink overall: its half-max square is {first:g} px at "
                            f"both {_sigma(sigmas[0])} and {_sigma(sigmas[-1])}, and {sizes[i]:g} px at "
                            f"{_sigma(sigmas[i])} in between.", {**facts, "between": i})


def rank_claim(rank: int, d: int, n_train: int) -> Claim:
    """What the covariance's rank does to the Wiener filter at low noise."""
    facts = {"rank": rank, "d": d, "n_train": n_train}
    if rank >= d:
        return Claim("full-rank", f"The covariance has full rank ({d:,} pixels, {n_train:,} training images): as "
                                  "σ → 0 every direction passes, P_σ → I and the Wiener field collapses onto the "
                                  "pixel itself.", facts)
    why = (f"only {n_train:,} training images for {d:,} pixels" if n_train <= d
           else f"{d - rank:,} directions of the {d:,} pixels carry no variance")
    return Claim("rank-deficient", f"The covariance has rank {rank:,} < d = {d:,} ({why}). Directions without "
                                   "variance are removed at every noise level, so as σ → 0 the Wiener filter "
                                   f"becomes a projection onto {rank:,} directions, not the identity: its fields "
                                   "need not shrink onto the pixel.", facts)


def agreement_claim(sigmas: list[float], cosines: list[float], other: str = "UNet") -> Claim:
    """Where the ``other`` field and the Wiener field agree in shape, and where they differ most."""
    cosines = [float(c) for c in cosines]
    agree = [c >= AGREE_COSINE for c in cosines]
    worst = int(np.argmin(cosines))
    facts = {"sigmas": list(sigmas), "cosines": cosines, "agree": sum(agree), "worst": worst}
    if all(agree):
        return Claim("agree", f"{other} and Wiener fields have the same shape (cosine ≥ {AGREE_COSINE}) at all "
                              f"{len(cosines)} noise levels; the lowest cosine is {cosines[worst]:.2f} at "
                              f"{_sigma(sigmas[worst])}.", facts)
    return Claim("disagree", f"{other} and Wiener fields agree (cosine ≥ {AGREE_COSINE}) at {sum(agree)} of "
                             f"{len(cosines)} noise levels and differ most at {_sigma(sigmas[worst])} "
                             f"(cosine {cosines[worst]:.2f}).", facts)


def size_gap_claim(sigmas: list[float], wiener: list[float], other: list[float], who: str = "UNet",
                   factor: float = 2.0) -> Claim | None:
    """The noise level where the two half-max squares differ most, when one is ``factor`` times the other."""
    wiener, other = np.asarray(wiener, float), np.asarray(other, float)
    ratio = np.maximum(wiener, other) / np.maximum(np.minimum(wiener, other), 1.0)
    i = int(np.argmax(ratio))
    if ratio[i] < factor:
        return None
    wider = "Wiener" if wiener[i] > other[i] else who
    return Claim("size-gap", f"At {_sigma(sigmas[i])} the {wider} field is the wider one: half-max squares of "
                             f"{other[i]:g} px ({who}) and {wiener[i]:g} px (Wiener).",
                 {"index": i, "wiener": float(wiener[i]), "other": float(other[i]), "wider": wider})


def field_claims(sigmas: list[float], wiener_sizes, *, rank: int, d: int, n_train: int,
                 unet_sizes=None, cosines=None, constant_pixel: bool = False) -> list[Claim]:
    """Every finding the Sensitivity page states about one pixel's fields (sizes: half-max squares, high σ first)."""
    if constant_pixel:  # no variance at all (a constant border): every field of it is zero, sizes mean nothing
        return [Claim("constant-pixel", "This pixel has the same value in every training image: the Wiener filter "
                                        "outputs the mean there whatever the input, so its field is zero. Choose "
                                        "another pixel.", {})]
    claims = [trend_claim(sigmas, wiener_sizes)] if len(sigmas) > 1 else []  # a trend needs two noise levels
    if len(sigmas) > 1 and (claims[0].kind != "shrinks" or rank < d):
        claims.append(rank_claim(rank, d, n_train))
    if cosines is not None:
        claims.append(agreement_claim(sigmas, cosines))
    if unet_sizes is not None:
        gap = size_gap_claim(sigmas, wiener_sizes, unet_sizes)
        if gap is not None:
            claims.append(gap)
    return claims


def comparison_claim(sigmas: list[float], sizes_a, sizes_b, name_a: str, name_b: str) -> Claim:
    """Where field B (half-max squares ``sizes_b``) is wider than field A, where narrower, where equal."""
    a, b = np.asarray(sizes_a, float), np.asarray(sizes_b, float)
    wider, narrower = np.flatnonzero(b > a), np.flatnonzero(b < a)
    facts = {"wider": wider.tolist(), "narrower": narrower.tolist(), "n": len(a)}

    def levels(idx):
        return ", ".join(f"{_sigma(sigmas[i])} ({a[i]:g} → {b[i]:g} px)" for i in idx)

    if len(wider) == len(a):
        return Claim("wider-everywhere", f"{name_b} gives a wider field than {name_a} at every noise level shown "
                                         f"(half-max squares, {name_a} → {name_b}: {levels(range(len(a)))}).", facts)
    if len(narrower) == len(a):
        return Claim("narrower-everywhere", f"{name_b} gives a narrower field than {name_a} at every noise level "
                                            f"shown ({levels(range(len(a)))}).", facts)
    parts = [f"wider at {len(wider)} of {len(a)} noise levels" + (f" ({levels(wider)})" if len(wider) else "")]
    if len(narrower):
        parts.append(f"narrower at {levels(narrower)}")
    if len(a) - len(wider) - len(narrower):
        parts.append(f"the same at {len(a) - len(wider) - len(narrower)}")
    return Claim("mixed", f"With {name_b} instead of {name_a} the field is " + "; ".join(parts) + ".", facts)


def mask_fill_claim(sigmas: list[float], mask_sizes, d_pixels: int, full: float = 0.95) -> Claim | None:
    """The noise levels at which the analytical mask covers (nearly) the whole image, if any."""
    filled = [i for i, n in enumerate(mask_sizes) if n >= full * d_pixels]
    if not filled:
        return None
    where = ", ".join(_sigma(sigmas[i]) for i in filled)
    return Claim("mask-full", f"At {where} the analytical mask covers at least {full:.0%} of the {d_pixels:,} "
                              "pixels: at high noise every input is in the neighbourhood, so no pattern can show in "
                              "the mask there.", {"filled": filled})


def pattern_share_claim(share_original: float, share_modified: float, on_pattern: bool, name: str = "W") -> Claim:
    """How much of a pixel's field lies on an injected pattern, before and after the injection."""
    facts = {"original": share_original, "modified": share_modified, "on_pattern": on_pattern}
    if not on_pattern:
        return Claim("off-pattern", f"This pixel is off the {name}; click a pixel on it (brightened in the "
                                    f"picture) to see fields take the {name}'s shape.", facts)
    if abs(share_modified - share_original) < 0.005:
        return Claim("pattern-same", f"At the highest noise level shown, {share_modified:.1%} of this pixel's field "
                                     f"lies on the {name} in the modified data, about the same as in the original "
                                     f"({share_original:.1%}).", facts)
    verb = "more" if share_modified > share_original else "less"
    return Claim("pattern-share", f"At the highest noise level shown, {share_modified:.0%} of this pixel's field "
                                  f"lies on the {name} in the modified data, against {share_original:.0%} in the "
                                  f"original: {verb} of it follows the {name}.", facts)
