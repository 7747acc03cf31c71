"""Jacobian bases, the trained linear denoiser, locality following the data, oversized data, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from locality_core.analysis import basis as basis_mod
from locality_core.analysis.basis import full_jacobian, jacobian_basis, jacobian_by_copies, trace_estimate, wiener_basis
from locality_core.analysis.fields import locality_size, wiener_field
from locality_core.analysis.linear_fit import fit_linear_denoiser
from locality_core.cli.main import main
from locality_core.data import load_dataset
from locality_core.denoisers.unet import EDMDenoiser, UNetConfig
from locality_core.denoisers.wiener import WienerDenoiser
from locality_core.stats.covariance import compute_stats, get_stats
from locality_core.store.memory import TooLargeError


def small_data(seed=0, n=400, side=4):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(side * side, side * side)) * 0.3
    x = rng.normal(size=(n, side * side)) @ mix
    return torch.from_numpy(np.tanh(x)).reshape(n, 1, side, side).float()


# ---------------------------------------------------------------- Jacobian eigenbasis

def test_full_jacobian_of_wiener_is_P_and_basis_matches_pca():
    data = small_data()
    stats = compute_stats(data)
    w = WienerDenoiser.from_stats(stats)
    y = data[0].double()
    J = full_jacobian(w, y, 0.7, batch=5).numpy()  # batch smaller than d: exercises the chunking
    np.testing.assert_allclose(J, w.P(0.7).numpy(), atol=1e-12)
    numeric = jacobian_basis(w, y, 0.7)
    exact = wiener_basis(stats, 0.7)
    np.testing.assert_allclose(numeric.eigvals, exact.eigvals, atol=1e-10)
    assert numeric.trace == pytest.approx(exact.trace, abs=1e-10)
    assert numeric.asymmetry < 1e-12
    # eigenvectors agree up to sign (eigenvalues here are distinct)
    overlap = np.abs(np.sum(numeric.eigvecs[:, :3] * exact.eigvecs[:, :3], axis=0))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-8)


def tiny_unet():
    unet = EDMDenoiser(UNetConfig(channels=1, image_size=8, base=8, mults=(1, 2), blocks=1, emb_dim=16, groups=4))
    torch.nn.init.normal_(unet.net.conv_out.weight, std=0.05)  # untrained, but not c_skip times the identity
    return unet


def _no_fallback(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("full_jacobian fell back to one copy per row")
    monkeypatch.setattr(basis_mod, "jacobian_by_copies", refuse)


def test_batched_jacobian_of_wiener_is_P_sigma_in_float64(monkeypatch):
    _no_fallback(monkeypatch)  # the vmap-over-vjp path itself, not the fallback
    stats = compute_stats(small_data())
    w = WienerDenoiser.from_stats(stats)
    for sigma in (0.1, 0.7, 5.0):
        J = full_jacobian(w, small_data()[3].double(), sigma, batch=7).numpy()
        np.testing.assert_allclose(J, w.P(sigma).numpy(), atol=1e-12)


def test_batched_jacobian_of_a_unet_equals_one_copy_per_row(monkeypatch):
    torch.manual_seed(0)
    unet = tiny_unet()
    unet = unet.eval()  # float32: its sigma embedding is float32 by design
    y = torch.randn(1, 8, 8)
    reference = jacobian_by_copies(unet, y, 0.8, batch=64).numpy()
    off_diagonal = reference - np.diag(np.diag(reference))
    assert np.abs(off_diagonal).max() > 1e-3  # a real Jacobian, not a multiple of the identity
    _no_fallback(monkeypatch)
    np.testing.assert_allclose(full_jacobian(unet, y, 0.8, batch=13).numpy(), reference, atol=2e-5)


def test_bfloat16_jacobian_is_close_to_float32():
    torch.manual_seed(0)
    unet = tiny_unet()
    unet.eval()
    y = torch.randn(1, 8, 8)
    exact = full_jacobian(unet, y, 0.8)
    low = full_jacobian(unet, y, 0.8, precision="bfloat16")
    assert low.dtype == torch.float32 and not torch.equal(low, exact)  # really computed in bfloat16
    assert float((low - exact).norm() / exact.norm()) < 0.05


def test_trace_estimate_is_within_its_stated_error_of_the_exact_trace():
    stats = compute_stats(small_data())
    w = WienerDenoiser.from_stats(stats)
    sigmas = [5.0, 0.7, 0.1]
    ys = small_data()[:3].double()
    est, err = trace_estimate(w, ys, sigmas, probes=400, seed=1)
    exact = np.array([np.trace(w.P(s).numpy()) for s in sigmas])
    assert np.all(err > 0) and np.all(err < 0.2 * exact)
    assert np.all(np.abs(est - exact) < 4 * err)


def test_jacobian_of_a_nonsymmetric_map_reports_asymmetry():
    M = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)

    def denoiser(x, sigma):
        return (x.reshape(len(x), 2) @ M.T).reshape(x.shape)

    b = jacobian_basis(denoiser, torch.zeros(1, 1, 2, dtype=torch.float64), 1.0)
    assert b.trace == pytest.approx(2.0)
    assert b.asymmetry == pytest.approx(np.linalg.norm(M - M.T) / np.linalg.norm(M))
    np.testing.assert_allclose(b.eigvals, [2.0, 0.0], atol=1e-12)  # eigenvalues of (M + M^T) / 2


# ---------------------------------------------------------------- the trained linear denoiser

def test_trained_linear_denoiser_converges_on_small_data():
    data = small_data(n=2000)
    stats = compute_stats(data)
    P = WienerDenoiser.from_stats(stats).P(0.5).numpy()
    fit = fit_linear_denoiser(data, 0.5, P, steps=600, batch=256, lr=1e-2, record_every=100)
    assert fit.rel_error[0] == pytest.approx(1.0)  # starts at A = 0
    assert fit.rel_error[-1] < 0.1
    assert fit.fields.shape == (len(fit.steps), 1, 1, 4, 4)
    np.testing.assert_allclose(fit.b, (np.eye(16) - P) @ stats.mean, atol=0.05)


@pytest.mark.slow
def test_trained_linear_denoiser_reaches_wiener_on_fashion_mnist(fashion, fashion_stats):
    """Acceptance: within 5 % (relative Frobenius) of P(sigma = 1) on Fashion-MNIST."""
    P = WienerDenoiser.from_stats(fashion_stats).P(1.0).numpy()
    fit = fit_linear_denoiser(fashion.train, 1.0, P, steps=4000, batch=512, lr=2e-3, record_every=500)
    assert fit.rel_error[-1] < 0.05, fit.rel_error


# ---------------------------------------------------------------- locality follows the data

def test_grf_field_width_grows_with_alpha():
    """A larger spectral exponent means longer correlations, so a wider Wiener field at sigma = 1
    (the 50 % square, interpolated between odd sizes: the integer sizes of alpha 2 and 3 tie at 7).
    Measured on the generator's exact covariance: with 20,000 samples the estimation noise of the
    covariance adds spurious far-away mass to the weak alpha = 1 field and hides the trend."""
    from locality_core.data.grf import grf_covariance
    from locality_core.stats.covariance import DataStats, eigendecomposition

    widths = []
    for alpha in (1.0, 2.0, 3.0):
        cov = grf_covariance(alpha)
        vals, vecs = eigendecomposition(cov)
        stats = DataStats(np.zeros(784), cov, vals, vecs, 1, (1, 28, 28), f"grf-{alpha}")
        f = wiener_field(stats, (14, 14), [1.0])
        widths.append(locality_size(f.map()[0], (14, 14), 0.5, interpolate=True))
    assert widths[0] + 0.3 < widths[1] and widths[1] + 0.3 < widths[2], widths
    sampled = get_stats(load_dataset("grf", alpha=3.0))  # and the sampled data follow the same covariance
    assert np.abs(sampled.cov - grf_covariance(3.0)).max() < 0.01


def test_oversized_data_set_is_refused_with_a_size_hint(monkeypatch):
    monkeypatch.setenv("LOCALITY_MEMORY_BUDGET_GB", "0.001")
    with pytest.raises(TooLargeError, match=r"GiB.*at most about \d+x\d+"):
        compute_stats(torch.zeros(10, 3, 32, 32))


# ---------------------------------------------------------------- the CLI

def test_cli_stats_json_and_field_npy(fashion, tmp_path, capsys):
    assert main(["stats", "fashion-mnist", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["components_90_95_99"] == [84, 187, 459]
    out = tmp_path / "f.npy"
    assert main(["field", "fashion-mnist", "--denoiser", "wiener", "--pixel", "14,14", "--sigmas", "0.5,2",
                 "--out", str(out)]) == 0
    maps = np.load(out)
    assert maps.shape == (2, 28, 28)
    exact = np.abs(WienerDenoiser().fit(fashion).P(2.0).numpy()[14 * 28 + 14]).reshape(28, 28)
    np.testing.assert_allclose(maps[1], exact, atol=1e-12)
    png = tmp_path / "f.png"
    assert main(["field", "fashion-mnist", "--pixel", "3,4", "--sigmas", "1", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_clear_line(capsys):
    assert main(["stats", "no-such-set"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown data set 'no-such-set'") and "Traceback" not in err
    assert main(["field", "mnist-5k", "--pixel", "40,1"]) == 2
    assert "outside the 28x28 image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["field", "mnist-5k", "--pixel", "1,1", "--sigmas", "a,b"])


def test_cli_eval_json_wiener(capsys):
    assert main(["eval", "mnist-5k", "--denoiser", "wiener", "--n", "100", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["t"] for r in rows] == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    mse = [r["mse"] for r in rows]
    assert all(a >= b for a, b in zip(mse, mse[1:]))  # less noise, smaller error
    assert mse[-1] < 1.1e-4  # at sigma = 0.01 the error is about sigma^2 per pixel or less
