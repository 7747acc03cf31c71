"""Power-law fit of ranked eigenvalues: recovers a known exponent; variance shares."""

import numpy as np
import pytest

from locality_core.stats.covariance import compute_stats
from locality_core.stats.spectrum import correlation_row, power_law_fit, variance_share


@pytest.mark.parametrize("beta", [0.8, 1.5, 2.5])
def test_power_law_fit_recovers_exponent(beta):
    k = np.arange(1, 785)
    lam = 3.0 * k ** (-beta)
    fit = power_law_fit(lam, k_min=1, k_max=500)
    assert fit.beta == pytest.approx(beta, rel=1e-9)
    assert fit.amplitude == pytest.approx(3.0, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(fit(k[:10]), lam[:10])


def test_power_law_fit_default_range_stops_at_99_percent():
    k = np.arange(1, 401)
    lam = k ** -1.2
    lam[300:] = 1e-12  # a noise floor the fit must not see
    fit = power_law_fit(lam)
    assert fit.k_max <= 300 and fit.k_min == 2
    assert fit.beta == pytest.approx(1.2, rel=1e-6)


def test_power_law_fit_needs_three_points():
    with pytest.raises(ValueError):
        power_law_fit(np.array([1.0, 0.5, 0.0, 0.0]))


def test_variance_share():
    share = variance_share(np.array([3.0, 1.0, 0.0]))
    np.testing.assert_allclose(share, [0.75, 1.0, 1.0])


@pytest.mark.parametrize("c", [1, 3])
def test_correlation_row_matches_the_full_matrix(c):
    import torch

    x = torch.randn(300, c, 5, 4, generator=torch.Generator().manual_seed(0))
    x = x + x.roll(1, -1)
    stats = compute_stats(x)
    full = stats.correlation()
    row = correlation_row(stats, (2, 3), channel=c - 1)
    m = (c - 1) * 20 + 2 * 4 + 3
    np.testing.assert_allclose(row.reshape(-1), full[m], atol=1e-12)
    assert row.reshape(-1)[m] == pytest.approx(1.0)
