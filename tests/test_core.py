"""The core: noise levels, streamed statistics, the Wiener denoiser, sensitivity fields, locality summaries.

Oracles: np.cov and a one-shot covariance, the closed-form Gaussian posterior mean computed with a linear
solve, autograd Jacobians against the closed-form P_sigma, and the reference numbers of METHODS section 10.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locality_core import schedule
from locality_core.analysis.fields import (
    autograd_field,
    cosine_similarity,
    locality_size,
    locality_sizes,
    wiener_field,
    window_shares,
)
from locality_core.data import Dataset
from locality_core.denoisers.wiener import WienerDenoiser, passing_components, wiener_matrix
from locality_core.stats.covariance import DataStats, compute_stats, eigendecomposition, streaming_moments

# ---------------------------------------------------------------- noise levels

REFERENCE_SIGMAS = [60.82, 25.74, 12.02, 6.174, 3.443, 2.041, 1.240, 0.7236, 0.3423, 0.0100]


def test_reference_grid_matches_methods():
    assert schedule.REFERENCE_TIMESTEPS == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    np.testing.assert_allclose(schedule.REFERENCE_SIGMAS, REFERENCE_SIGMAS, rtol=2e-3)


def test_sigma_t_roundtrip_and_alpha_bar():
    ts = np.array([0, 1, 17, 250, 500, 998, 999])
    np.testing.assert_allclose(schedule.sigma_to_t(schedule.t_to_sigma(ts)), ts, atol=1e-9)
    sig = schedule.t_to_sigma(ts)
    np.testing.assert_allclose(schedule.alpha_bar_of_sigma(sig), schedule.ddpm_alpha_bar()[ts], rtol=1e-12)
    assert schedule.initial_scale(60.8223) == pytest.approx(np.sqrt(1 / schedule.ddpm_alpha_bar()[900]), rel=1e-5)
    with pytest.raises(ValueError):
        schedule.t_to_sigma(1000)


def test_karras_schedule_endpoints():
    s = schedule.karras_sigmas(12, 0.01, 80.0)
    assert s[0] == pytest.approx(80.0) and s[-1] == pytest.approx(0.01) and all(np.diff(s) < 0)


# ---------------------------------------------------------------- statistics

@pytest.mark.parametrize("chunk", [1, 7, 64, 500, 10_000])
def test_streaming_covariance_equals_np_cov(chunk):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12)) + 5.0  # offset: tests the shift
    mean, cov, n = streaming_moments(x[i:i + chunk] for i in range(0, len(x), chunk))
    assert n == 500
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_compute_stats_chunks_and_eigendecomposition():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(300, 2, 3, 3)))
    one = compute_stats(x, chunk_size=10_000)
    many = compute_stats(x, chunk_size=13)
    np.testing.assert_allclose(one.cov, many.cov, atol=1e-13)
    assert np.all(np.diff(one.eigvals) <= 0)
    np.testing.assert_allclose((one.eigvecs * one.eigvals) @ one.eigvecs.T, one.cov, atol=1e-12)
    np.testing.assert_allclose(one.eigvecs.T @ one.eigvecs, np.eye(18), atol=1e-12)


def test_components_for_variance():
    vals, _ = eigendecomposition(np.diag([4.0, 3.0, 2.0, 1.0]))
    stats = DataStats(np.zeros(4), np.diag(vals), vals, np.eye(4), 10, (1, 2, 2), "")
    assert [stats.components_for(s) for s in (0.4, 0.7, 0.9, 1.0)] == [1, 2, 3, 4]


def test_fashion_mnist_reference_statistics(fashion_stats):
    """METHODS section 10: top-5 eigenvalues to 0.1 %, 84 / 187 / 459 components for 90 / 95 / 99 %."""
    np.testing.assert_allclose(fashion_stats.eigvals[:5], [79.24, 48.45, 16.43, 13.53, 10.50], rtol=1e-3)
    assert fashion_stats.trace == pytest.approx(272.87, rel=1e-4)
    assert [fashion_stats.components_for(s) for s in (0.90, 0.95, 0.99)] == [84, 187, 459]


def test_fashion_mnist_wiener_mse_and_passing_components(fashion, fashion_stats):
    """METHODS section 10: Wiener MSE on the first 2,000 test images within 2 %, and components with SNR > 1."""
    from locality_core.denoisers.evaluate import heldout_mse

    wiener = WienerDenoiser.from_stats(fashion_stats)
    ts = [900, 700, 500, 300, 100]
    sigmas = [schedule.t_to_sigma(t) for t in ts]
    mse = heldout_mse(wiener, fashion.test[:2000], sigmas)
    np.testing.assert_allclose(mse, [0.340, 0.284, 0.162, 0.0875, 0.0312], rtol=0.02)
    assert [passing_components(fashion_stats.eigvals, s) for s in sigmas] == [0, 0, 4, 16, 140]



def test_noisy_heldout_is_one_seeded_draw_scaled_per_sigma():
    from locality_core.analysis.fields import noisy_inputs
    from locality_core.denoisers.evaluate import grid_seed, heldout_mse, noisy_heldout

    x0 = torch.tanh(torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(1)))
    sigmas = [4.0, 0.5]
    x = noisy_heldout(x0, sigmas, 7)
    eps = torch.randn((2, 3, 2, 5, 5), generator=torch.Generator().manual_seed(7))
    assert x.shape == (2, 3, 2, 5, 5) and x.dtype == x0.dtype
    assert torch.equal(x, x0 + torch.tensor(sigmas).view(-1, 1, 1, 1, 1) * eps)
    assert torch.equal(x, noisy_heldout(x0, sigmas, generator=torch.Generator().manual_seed(7)))
    one = torch.randn((3, 2, 5, 5), generator=torch.Generator().manual_seed(7))
    assert torch.equal(noisy_heldout(x0, 0.5, 7), (x0 + 0.5 * one)[None])           # a scalar sigma: S = 1
    flat, sig = noisy_inputs(x0, sigmas, torch.Generator().manual_seed(7))
    assert torch.equal(flat, x.flatten(0, 1)) and sig.tolist() == [4.0] * 3 + [0.5] * 3
    # the evaluation: grid point i has its own seed, so each sigma's noise is the same whatever the grid
    seen = []
    heldout_mse(lambda xb, s: seen.append(xb) or xb, x0, [1.0, 2.0], seed=3)
    assert torch.equal(seen[1], noisy_heldout(x0, 2.0, grid_seed(1, 3))[0]) and grid_seed(1, 3) == 3001

# ---------------------------------------------------------------- the Wiener denoiser

def gaussian_stats(d_side=3, channels=1, seed=0) -> DataStats:
    """Exact statistics of a known Gaussian (not estimated), as DataStats."""
    rng = np.random.default_rng(seed)
    d = channels * d_side * d_side
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + 0.05 * np.eye(d)
    mean = rng.normal(size=d)
    vals, vecs = eigendecomposition(cov)
    return DataStats(mean, cov, vals, vecs, 10**6, (channels, d_side, d_side), "gaussian")


@pytest.mark.parametrize("sigma", [0.05, 0.7, 4.0])
def test_wiener_is_the_gaussian_posterior_mean(sigma):
    """Closed form: E[x0 | x] = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu), computed by a linear solve."""
    stats = gaussian_stats()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, stats.d)) * 2
    posterior = stats.mean + (x - stats.mean) @ np.linalg.solve(stats.cov + sigma**2 * np.eye(stats.d), stats.cov)
    w = WienerDenoiser.from_stats(stats)
    out = w(torch.from_numpy(x).reshape(5, *stats.shape), sigma).reshape(5, -1).numpy()
    np.testing.assert_allclose(out, posterior, atol=1e-10)
    np.testing.assert_allclose(w.P(sigma).numpy(), wiener_matrix(stats.eigvecs, stats.eigvals, sigma), atol=1e-12)


def test_wiener_fitted_on_samples_matches_sample_posterior():
    rng = np.random.default_rng(4)
    x0 = torch.from_numpy(rng.normal(size=(400, 1, 2, 3)) * [1.0, 0.2, 3.0] + 0.5)
    w = WienerDenoiser().fit(Dataset.from_tensor(x0))
    flat = x0.reshape(400, -1).numpy()
    mu, cov = flat.mean(0), np.cov(flat, rowvar=False)
    y = rng.normal(size=(3, 6))
    expected = mu + (y - mu) @ np.linalg.solve(cov + 0.25 * np.eye(6), cov)
    np.testing.assert_allclose(w(torch.from_numpy(y).reshape(3, 1, 2, 3), 0.5).reshape(3, -1).numpy(), expected,
                               atol=1e-10)


def test_wiener_per_sample_sigma_and_dtype():
    stats = gaussian_stats()
    w = WienerDenoiser.from_stats(stats)
    x = torch.randn(3, *stats.shape)
    sig = torch.tensor([0.1, 1.0, 10.0])
    batch = w(x, sig)
    assert batch.dtype == torch.float32
    for i in range(3):
        torch.testing.assert_close(batch[i], w(x[i:i + 1], float(sig[i]))[0])
    with pytest.raises(RuntimeError, match="not fitted"):
        WienerDenoiser()(x, 1.0)


# ---------------------------------------------------------------- sensitivity fields

@pytest.mark.parametrize("channels", [1, 3])
def test_autograd_field_of_wiener_equals_closed_form(channels):
    stats = gaussian_stats(d_side=4, channels=channels, seed=channels)
    w = WienerDenoiser.from_stats(stats)
    sigmas = [0.1, 1.0, 5.0]
    x0 = torch.from_numpy(np.random.default_rng(0).normal(size=(6, *stats.shape)))
    auto = autograd_field(w, x0, (1, 2), sigmas, generator=torch.Generator().manual_seed(0))
    exact = wiener_field(stats, (1, 2), sigmas)
    np.testing.assert_allclose(auto.signed_mean, exact.signed_mean, atol=1e-12)
    np.testing.assert_allclose(auto.abs_mean, exact.abs_mean, atol=1e-12)
    assert auto.map().shape == (3, 4, 4)
    # the field is row m of P: check one entry by hand
    P = w.P(1.0).numpy()
    m = 0 * 16 + 1 * 4 + 2
    np.testing.assert_allclose(exact.signed_mean[1, 0, 0].ravel(), P[m, :16], atol=1e-12)


def test_window_shares_and_locality_size():
    delta = np.zeros((9, 9))
    delta[4, 4] = 1.0
    ks, shares = window_shares(delta, (4, 4))
    assert ks[0] == 1 and shares[0] == 1.0
    uniform = np.ones((9, 9))
    ks, shares = window_shares(uniform, (4, 4))
    np.testing.assert_allclose(shares, ks**2 / 81)
    assert locality_size(uniform, (4, 4), 0.5) == 7  # 49/81 >= 0.5 > 25/81
    # interpolated: 25/81 at k=5, 49/81 at k=7 -> 5 + 2 * (40.5 - 25) / 24
    assert locality_size(uniform, (4, 4), 0.5, interpolate=True) == pytest.approx(5 + 2 * 15.5 / 24)
    assert locality_size(delta, (4, 4), 0.5, interpolate=True) == 1
    corner = np.ones((5, 5))
    ks, shares = window_shares(corner, (0, 0))
    assert ks[-1] == 9 and shares[-1] == 1.0  # from a corner the window must reach across the image
    # ... but only the pixels inside the image count: k = 7 holds 16/25 >= 50 % with 4 x 4 pixels inside
    assert locality_size(corner, (0, 0), 0.5) == 4
    assert locality_size(corner, (0, 0), 0.95) == 5 and locality_size(corner, (0, 0), 0.95, interpolate=True) <= 5
    wide, narrow = np.ones((28, 28)), np.zeros((28, 28))  # near the border a wider field still reads wider
    narrow[:21, :21] = 1.0
    assert 28 >= locality_size(wide, (0, 0), 0.5) > locality_size(narrow, (0, 0), 0.5)
    assert locality_size(uniform, (4, 4), 0.5) == 7  # away from the border: k itself
    assert cosine_similarity(uniform, 2 * uniform) == pytest.approx(1.0)


def test_fashion_fields_widen_with_noise(fashion_stats):
    """The reading of METHODS 2: at low noise P -> I (the field is the pixel), at high noise it is broad."""
    f = wiener_field(fashion_stats, (14, 14), [0.01, 0.34, 3.44])
    sizes = locality_sizes(f)
    assert sizes[0, 0] == 1
    assert sizes[0, 0] < sizes[1, 0] < sizes[2, 0]
