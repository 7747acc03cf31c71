"""The leading eigenpairs of a Jacobian's symmetric part from Jacobian-vector products only, against the full
Jacobian's eigendecomposition (the oracle), and the residuals they report."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from locality_core.analysis.basis import basis_from_jacobian, full_jacobian, leading_basis, symmetric_products
from locality_core.denoisers.unet import EDMDenoiser, UNetConfig


class Affine(nn.Module):
    """D(x, sigma) = A x: a known, non-symmetric Jacobian."""

    def __init__(self, A: torch.Tensor, shape):
        super().__init__()
        self.A, self.shape = A, shape

    def forward(self, x, sigma):
        return (x.flatten(1) @ self.A.T).reshape(len(x), *self.shape)


def test_products_are_the_jacobian_and_its_transpose():
    torch.manual_seed(0)
    shape = (1, 4, 5)
    A = torch.randn(20, 20, dtype=torch.float64)
    apply = symmetric_products(Affine(A, shape), torch.randn(shape, dtype=torch.float64), 1.0)
    V = torch.randn(3, 20, dtype=torch.float64)
    jv, jt = apply(V)
    torch.testing.assert_close(jv, V @ A.T)
    torch.testing.assert_close(jt, V @ A)


def test_leading_pairs_of_a_known_matrix_with_their_residuals_and_asymmetry():
    torch.manual_seed(1)
    d, shape = 64, (1, 8, 8)
    U = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0]
    S = U @ torch.diag(0.9 ** torch.arange(d, dtype=torch.float64)) @ U.T  # decaying, like a denoiser's
    K = torch.randn(d, d, dtype=torch.float64)
    A = S + 0.02 * (K - K.T)  # symmetric part S, a small antisymmetric part
    b = leading_basis(Affine(A, shape), torch.zeros(shape, dtype=torch.float64), 1.0, k=6)
    exact = np.sort(np.linalg.eigvalsh(S.numpy()))[::-1][:6]
    assert np.all(np.abs(b.eigvals - exact) <= b.residuals + 1e-9)
    np.testing.assert_allclose(b.eigvals, exact, atol=1e-6)
    V = torch.from_numpy(b.eigvecs).double()
    actual = (S @ V - V * torch.from_numpy(b.eigvals)).norm(dim=0).numpy()
    np.testing.assert_allclose(b.residuals, actual, atol=1e-6)  # the reported residual is the real one
    true_asym = float((A - A.T).norm() / A.norm())
    assert abs(b.asymmetry - true_asym) < 0.35 * true_asym  # an estimate from one random block of 14
    assert b.products == 2 * 14 * 4  # blocks of k + 8 = 14 until the Krylov space would pass d = 64


def test_leading_pairs_of_a_network_match_its_full_jacobian():
    torch.manual_seed(0)
    model = EDMDenoiser(UNetConfig(channels=1, image_size=12, base=8, mults=(1, 2), blocks=1, emb_dim=16,
                                   groups=4)).eval()
    torch.nn.init.normal_(model.net.conv_out.weight, std=0.3)  # a spread spectrum, as a trained network has
    y = torch.randn(1, 12, 12)
    J = full_jacobian(model, y, 0.7).double().numpy()
    full = basis_from_jacobian(J, 0.7, (1, 12, 12))
    lead, more = leading_basis(model, y, 0.7, k=8), leading_basis(model, y, 0.7, k=8, steps=7)
    assert full.eigvals[0] - full.eigvals[8] > 0.1  # not a degenerate cluster: the comparison means something
    S, V = (J + J.T) / 2, lead.eigvecs.astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(S @ V - V * lead.eigvals, axis=0), lead.residuals, atol=1e-4)
    # each value lies within its residual of an exact eigenvalue, and never above the exact one of its rank
    # (Cauchy interlacing of Rayleigh-Ritz values); a longer Krylov space is closer
    gaps = np.abs(lead.eigvals[:, None] - full.eigvals[None]).min(1)
    assert np.all(gaps <= lead.residuals + 1e-5)
    assert np.all(lead.eigvals <= full.eigvals[:8] + 1e-5)
    assert np.abs(more.eigvals - full.eigvals[:8]).max() < np.abs(lead.eigvals - full.eigvals[:8]).max()
    assert np.abs(lead.eigvals - full.eigvals[:8]).max() < 1e-2
