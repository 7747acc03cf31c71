"""Agreement metrics against hand-computed values, and the memorisation check against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locality_core.analysis.metrics import (
    agreement,
    mean_rows,
    mse_scores,
    nearest_training,
    pearson_scores,
    r2_scores,
    same_input_agreement,
)


def test_r2_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    y = torch.tensor([[1.0, 2.0, 3.0, 5.0]])
    # Var(y), unbiased: mean 2.75, squared deviations 3.0625 + 0.5625 + 0.0625 + 5.0625 = 8.75, / 3
    want = 1.0 - 1.0 / (4 * 8.75 / 3)
    assert float(r2_scores(x, y)[0]) == pytest.approx(want, abs=1e-12)
    assert float(r2_scores(y, y)[0]) == 1.0
    assert float(r2_scores(y, x)[0]) != pytest.approx(want)            # the reference goes second


def test_r2_is_averaged_per_sample():
    y = torch.tensor([[0.0, 2.0], [0.0, 4.0]])       # unbiased variances 2 and 8
    x = torch.tensor([[1.0, 2.0], [0.0, 5.0]])       # squared errors 1 and 1
    assert agreement(x, y)["r2"] == pytest.approx(((1 - 1 / 4) + (1 - 1 / 16)) / 2)


def test_pearson_by_hand():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 1, 4, 4, generator=g), torch.randn(5, 1, 4, 4, generator=g)
    want = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(x.numpy(), y.numpy(), strict=True)]
    assert np.allclose(pearson_scores(x, y).numpy(), want, atol=1e-12)
    assert torch.allclose(pearson_scores(x, 3 * x + 1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(pearson_scores(x, -x), -torch.ones(5, dtype=torch.float64))
    a = agreement(x, y)
    assert a["pearson"] == pytest.approx(np.mean(want)) and a["pearson_median"] == pytest.approx(np.median(want))


def test_mse():
    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([[[[1.0, 1, 1, 1]]], [[[2.0, 0, 0, 0]]]]).view(2, 1, 2, 2)
    assert torch.allclose(mse_scores(x, y), torch.tensor([1.0, 1.0], dtype=torch.float64))


def test_nearest_training_equals_brute_force():
    g = torch.Generator().manual_seed(1)
    train = torch.randn(300, 1, 5, 5, generator=g)
    samples = torch.cat([train[[17, 250]], torch.randn(4, 1, 5, 5, generator=g)])
    idx, dist = nearest_training(samples, train, chunk_size=64)
    brute = torch.cdist(samples.flatten(1).double(), train.flatten(1).double())
    assert torch.equal(idx, brute.argmin(1)) and torch.allclose(dist, brute.min(1).values, atol=1e-6)
    assert idx[:2].tolist() == [17, 250] and float(dist[:2].max()) < 1e-6


def test_nearest_training_is_exact_where_float32_cannot_tell_the_candidates_apart():
    """Training images 1e-6 apart (below float32's resolution of these distances), exact duplicates, float64
    samples and an excluded index: the answer is the float64 brute force's, lowest index among exact ties."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(40, 3 * 8 * 8, generator=g, dtype=torch.float64)
    near = base[:10] + 1e-6 * torch.randn(10, base.shape[1], generator=g, dtype=torch.float64)
    train64 = torch.cat([base, near, base[:5]])  # 40 + 10 near twins + 5 exact duplicates
    train = train64.float().view(-1, 3, 8, 8)
    samples = (train64[:12].float().double() + 3e-7 * torch.randn(12, base.shape[1], generator=g,
                                                                   dtype=torch.float64)).view(-1, 3, 8, 8)
    for exclude in (None, torch.arange(12)):
        idx, dist = nearest_training(samples, train, chunk_size=7, exclude=exclude)
        brute = (samples.flatten(1)[:, None] - train.flatten(1).double()[None]).pow(2).sum(-1).sqrt()  # no GEMM
        if exclude is not None:
            brute[torch.arange(12), exclude] = float("inf")
        best = brute.min(1).values
        first = torch.stack([(row == m).nonzero()[0, 0] for row, m in zip(brute, best, strict=True)])
        assert torch.equal(idx, first) and torch.allclose(dist, best, rtol=0, atol=1e-12)
    # exact duplicates: the lower index wins (base[i] at i, its copy at 50 + i)
    idx, _ = nearest_training(train[50:55], train)
    assert idx.tolist() == [0, 1, 2, 3, 4]
    # nothing left to compare with: no distance, as the float64 scan gave
    _, dist = nearest_training(train[:1], train[:1], exclude=torch.tensor([0]))
    assert dist.isinf().all()


def test_same_input_agreement_of_a_denoiser_with_itself_and_a_worse_one():
    from locality_core.denoisers.wiener import WienerDenoiser
    from locality_core.stats.covariance import compute_stats

    g = torch.Generator().manual_seed(2)
    data = torch.tanh(torch.randn(200, 1, 4, 4, generator=g))
    w = WienerDenoiser.from_stats(compute_stats(data))
    rows = same_input_agreement(w, w, data[:6], [10.0, 1.0, 0.1], seed=3)
    assert [r["sigma"] for r in rows] == [10.0, 1.0, 0.1]
    assert all(r["r2"] == pytest.approx(1.0) and r["mse"] == pytest.approx(0.0, abs=1e-12) for r in rows)
    worse = same_input_agreement(lambda x, s: 0.5 * w(x, s), w, data[:6], [1.0], seed=3)
    assert worse[0]["r2"] < 1.0 and mean_rows(worse)["mse"] > 0


def test_agreement_scores_reuse_cached_items_and_a_larger_n_adds_only_new_ones(tmp_path):
    """With cache ids, a second comparison (here against another reference) calls a cached denoiser no more and
    gives the same numbers as computing everything afresh; a larger n calls it on the new items only."""
    from locality_core.analysis.metrics import agreement_scores
    from locality_core.data import Dataset
    from locality_core.denoisers.wiener import WienerDenoiser
    from locality_core.stats.covariance import compute_stats
    from locality_core.store.cache import ArrayCache

    g = torch.Generator().manual_seed(5)
    images = torch.tanh(torch.randn(120, 1, 4, 4, generator=g))
    data = Dataset("toy", images[:100], images[100:], "toy-fingerprint", "toy data")
    w = WienerDenoiser.from_stats(compute_stats(data.train))
    calls = []

    def counted(x, s):
        calls.append(len(x))
        return 0.9 * w(x, s)

    kw = {"sigmas": [5.0, 0.5], "n": 3, "seed": 1, "batch_size": 2}
    cache = ArrayCache(tmp_path)
    first = agreement_scores(data, {"scaled": counted}, w, cache_ids={"scaled": "scaled-v1"}, cache=cache, **kw)
    assert calls
    calls.clear()
    again = agreement_scores(data, {"scaled": counted}, lambda x, s: w(x, s), cache_ids={"scaled": "scaled-v1"},
                             cache=cache, **kw)
    assert not calls
    fresh = agreement_scores(data, {"scaled": counted}, w, **kw)
    for key in ("r2_same_input", "r2_trajectory", "pearson_trajectory", "mse_same_input", "mse_trajectory"):
        a, b, c = (r["scores"]["scaled"][key] for r in (first, again, fresh))
        assert a.shape == (3,)
        np.testing.assert_allclose(a, b, rtol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-6)
    assert first["scores"]["scaled"]["r2_same_input"].max() < 1.0
    calls.clear()
    more = agreement_scores(data, {"scaled": counted}, w, cache_ids={"scaled": "scaled-v1"}, cache=cache,
                            **{**kw, "n": 5})
    assert sum(calls) == 2 * 2 + 2 * 2      # 2 new trajectories x 2 steps, 2 new images x 2 noise levels
    np.testing.assert_allclose(more["scores"]["scaled"]["r2_trajectory"][:3],
                               first["scores"]["scaled"]["r2_trajectory"], rtol=1e-6)
