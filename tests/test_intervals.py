"""Bootstrap intervals against hand computation and the exact bootstrap distribution of a toy set."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from locality_core.analysis.intervals import (
    Interval,
    mean_interval,
    order_sentence,
    paired_difference,
    ranking,
    resample_indices,
)


def test_interval_from_given_resamples_by_hand():
    values = [1.0, 2.0, 4.0]
    idx = np.array([[0, 0, 0], [0, 1, 2], [2, 2, 1], [1, 1, 1]])
    # resample means 1, 7/3, 10/3, 2; sorted 1, 2, 7/3, 10/3. The 2.5 % point lies 0.075 of the way from the
    # first to the second (3 gaps x 0.025), the 97.5 % point 0.925 of the way from the third to the fourth.
    iv = mean_interval(values, indices=idx)
    assert iv.mean == pytest.approx(7 / 3) and iv.n == 3
    assert iv.lo == pytest.approx(1 + 0.075 * (2 - 1))
    assert iv.hi == pytest.approx(7 / 3 + 0.925 * (10 / 3 - 7 / 3))


def test_interval_matches_the_exact_bootstrap_distribution_of_a_toy_set():
    """For n = 4 every one of the 4^4 resamples is equally likely: their means' 2.5 / 97.5 % points are the exact
    bootstrap interval, which 20,000 random resamples must reproduce to within their Monte Carlo error."""
    values = np.array([0.1, 0.5, 0.6, 1.4])
    exact = np.sort([values[list(t)].mean() for t in itertools.product(range(4), repeat=4)])
    lo, hi = np.quantile(exact, [0.025, 0.975])
    iv = mean_interval(values, n_boot=20_000, seed=3)
    assert iv.lo == pytest.approx(lo, abs=0.03) and iv.hi == pytest.approx(hi, abs=0.03)
    # by hand: sorted, the means start 0.1 (1 resample), 0.2 (4: three 0.1 and a 0.5), 0.225 (4: three 0.1 and a
    # 0.6), so index 0.025 x 255 = 6.4 is 0.225; they end 1.175 (4), 1.2 (4), 1.4 (1), so index 248.6 is 1.175
    assert lo == pytest.approx(0.225, abs=1e-12) and hi == pytest.approx(1.175, abs=1e-12)


def test_resamples_are_seeded_and_shared():
    assert np.array_equal(resample_indices(5, 7, seed=1), resample_indices(5, 7, seed=1))
    assert resample_indices(5, 7).shape == (7, 5) and resample_indices(5, 7).max() < 5


def test_paired_difference_cancels_what_items_share():
    """Two denoisers whose scores move together by item: their separate intervals overlap, the paired one does
    not include 0 (b beats a on every item)."""
    rng = np.random.default_rng(0)
    hardness = rng.normal(0.0, 1.0, 32)
    a, b = hardness, hardness + 0.1 + rng.normal(0.0, 0.01, 32)
    assert mean_interval(a).overlaps(mean_interval(b))
    diff = paired_difference(b, a)
    assert diff.excludes(0.0) and diff.lo > 0.09 and diff.hi < 0.11
    with pytest.raises(ValueError, match="same items"):
        paired_difference(a, b[:5])


def test_ranking_orders_and_says_which_steps_the_data_support():
    rng = np.random.default_rng(1)
    base = rng.normal(0.5, 0.2, 40)
    scores = {"close": base + 0.001 * rng.normal(size=40), "best": base + 0.2, "other": base}
    rank = ranking(scores)
    assert rank["best"] == "best" and rank["order"][0] == "best" and rank["n"] == 40
    assert rank["steps"][0]["supported"] and not rank["steps"][1]["supported"]
    assert rank["vs_best"]["best"]["mean"] == 0.0 and rank["vs_best"]["other"]["wins"] == 0
    sentence = order_sentence(rank, "r^2")
    assert "n = 40" in sentence and "best " in sentence and " > " in sentence and " ≈ " in sentence
    low = ranking({"x": [1.0, 2.0, 3.0], "y": [0.0, 1.0, 2.0]}, higher_is_better=False)
    assert low["best"] == "y" and low["vs_best"]["x"]["mean"] == 1.0


def test_interval_text_and_one_value():
    assert Interval(0.748, 0.631, 0.835, 32).text() == "0.748 [0.631, 0.835]"
    one = mean_interval([2.0])
    assert (one.lo, one.hi, one.n) == (2.0, 2.0, 1)
    with pytest.raises(ValueError):
        mean_interval([])
