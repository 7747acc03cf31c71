"""Geometry-adaptive harmonic bases (Kadkhodaie et al., ICLR 2024): the Jacobian's eigen-view of a denoiser.

Glossary
    J             full Jacobian dD(y, sigma)/dy at one noisy image y, (d, d), row m = output coordinate m
    symmetrised   (J + J^T) / 2; a denoiser that is a gradient (the posterior mean) has a symmetric J
    eigvals       shrinkage factors (mostly in [0, 1]), descending; their sum tr J is the effective
                  dimensionality the denoiser keeps at this sigma
    eigvecs       an image-adapted basis (columns); for the Wiener denoiser J = P_sigma exactly, so the
                  eigenvectors are the principal components and eigvals = lambda / (lambda + sigma^2),
                  the same for every image: the contrast with a network is the point
    asymmetry     ||J - J^T||_F / ||J||_F, how far the network is from a conservative field
    leading       the k largest eigenpairs of (J + J^T) / 2 without J: block Krylov (block Lanczos with full
                  reorthogonalisation) on products (J v + J^T v) / 2, J v by forward-mode AD and J^T v by reverse
                  mode, each a batch of vectors per pass; Rayleigh-Ritz on the Krylov space. Each pair comes with
                  its residual ||S v - lambda v|| (v of unit norm), the bound on its error that the page reports.
                  For the Fashion-MNIST UNet, 16 pairs take about half the CPU time of the full Jacobian (8 pairs,
                  a third) and agree with its eigenvalues to 1e-4; for 32 x 32 x 3 images, d = 3,072, the full
                  Jacobian costs 4x more and the leading pairs about the same
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import vjp, vmap

from locality_core.analysis.fields import _precision_context
from locality_core.denoisers.base import LinearDenoiser
from locality_core.denoisers.evaluate import noisy_heldout
from locality_core.denoisers.registry import denoiser_cache_id, get_denoiser, get_spec
from locality_core.denoisers.wiener import WienerDenoiser
from locality_core.stats.covariance import DataStats
from locality_core.store.cache import cache_kind, default_cache


@dataclass(frozen=True, eq=False)
class JacobianBasis:
    sigma: float
    eigvals: np.ndarray    # (d,) descending
    eigvecs: np.ndarray    # (d, d) columns
    trace: float           # tr J (= sum of eigvals)
    asymmetry: float
    shape: tuple[int, int, int]

    def eigenimages(self, k: int) -> np.ndarray:
        """(k, C, H, W) leading eigenvectors as images."""
        return self.eigvecs[:, :k].T.reshape(k, *self.shape)


def full_jacobian(denoiser, y: torch.Tensor, sigma: float, batch: int = 128, precision: str = "float32"
                  ) -> torch.Tensor:
    """(d, d) Jacobian of ``denoiser`` at one image ``y`` (C, H, W), row m = output coordinate m.

    One forward pass, then the pull-back of ``batch`` unit output vectors at a time (``torch.func.vmap`` over
    ``vjp``): the forward activations are shared by all d rows. A denoiser that vmap cannot batch (data-dependent
    Python control flow) falls back to `jacobian_by_copies`, which gives the same rows at a higher cost.
    ``precision`` "bfloat16" runs the matrix products in bfloat16 (autocast), as the Sensitivity fields do where
    the CPU runs it natively: 2-3x less CPU time on the Fashion-MNIST UNet, J within about 1 % (relative
    Frobenius norm) and eigenvalues within about 0.3 % of float32; the result has y's dtype either way.
    """
    with _precision_context(precision, y.device):
        try:
            J = _jacobian_vmap(denoiser, y, sigma, batch)
        except (RuntimeError, NotImplementedError):
            J = jacobian_by_copies(denoiser, y, sigma, batch)
    return J.to(y.dtype)


def _jacobian_vmap(denoiser, y: torch.Tensor, sigma: float, batch: int) -> torch.Tensor:
    d = y.numel()
    with torch.enable_grad():
        _, pull = vjp(lambda v: denoiser(v.unsqueeze(0), float(sigma)).reshape(d), y.detach())
        eye = torch.eye(d, dtype=y.dtype, device=y.device)
        rows = [vmap(pull)(eye[start:start + batch])[0].reshape(-1, d) for start in range(0, d, batch)]
    return torch.cat(rows).detach()


def jacobian_by_copies(denoiser, y: torch.Tensor, sigma: float, batch: int = 128) -> torch.Tensor:
    """(d, d) Jacobian, ``batch`` copies of y through the denoiser at once, each pulling back one unit vector."""
    d = y.numel()
    rows = []
    for start in range(0, d, batch):
        idx = torch.arange(start, min(d, start + batch))
        ys = y.detach().unsqueeze(0).repeat(len(idx), 1, 1, 1).requires_grad_(True)
        with torch.enable_grad():
            out = denoiser(ys, float(sigma)).reshape(len(idx), d)
            onehot = torch.zeros_like(out)
            onehot[torch.arange(len(idx)), idx] = 1.0
            (grad,) = torch.autograd.grad(out, ys, grad_outputs=onehot)
        rows.append(grad.reshape(len(idx), d).detach())
    return torch.cat(rows)


def trace_estimate(denoiser, ys: torch.Tensor, sigmas, probes: int = 32, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Hutchinson estimates of tr J at each noisy image ys[i] (S, C, H, W) and its sigmas[i], all in one batch.

    tr J = E[v^T J v] for Rademacher v; returns (estimate, standard error), each (S,), from ``probes`` draws
    (the error is the sample standard deviation over sqrt(probes): a stated error, not a bound).
    """
    sig = torch.as_tensor([float(s) for s in sigmas], dtype=ys.dtype, device=ys.device)
    gen = torch.Generator().manual_seed(seed)
    v = (torch.randint(0, 2, (probes, *ys.shape), generator=gen) * 2 - 1).to(ys.dtype).to(ys.device)
    with torch.enable_grad():
        _, pull = vjp(lambda x: denoiser(x, sig), ys.detach())
        quad = (vmap(pull)(v)[0] * v).flatten(2).sum(-1).detach()  # (probes, S): v^T J v
    mean = quad.mean(0).double().cpu().numpy()
    err = (quad.std(0) / np.sqrt(probes)).double().cpu().numpy() if probes > 1 else np.full_like(mean, np.inf)
    return mean, err


LEADING = 16     # eigenpairs of a network's Jacobian the page shows (the spectrum's head, 8 eigenvectors)
KRYLOV_STEPS = 4  # block Krylov steps: the space is (steps + 1) blocks of k + 8 vectors


@dataclass(frozen=True, eq=False)
class LeadingBasis:
    sigma: float
    eigvals: np.ndarray     # (k,) descending
    eigvecs: np.ndarray     # (d, k) columns, unit norm
    residuals: np.ndarray   # (k,) ||S v - lambda v||: an eigenvalue of S lies within this of lambda
    asymmetry: float        # ||J - J^T||_F / ||J||_F estimated from the random start block
    products: int           # Jacobian-vector products (forward and reverse) spent
    shape: tuple[int, int, int]

    def eigenimages(self, k: int) -> np.ndarray:
        return self.eigvecs[:, :k].T.reshape(k, *self.shape)


def symmetric_products(denoiser, y: torch.Tensor, sigma: float, precision: str = "float32"):
    """``apply(V)`` -> (J V^T + J^T V^T)^T / 2 for a batch V (b, d) of vectors at image ``y`` (C, H, W), and the
    two parts: one reverse pass (the forward shared by all b) and one batched forward-mode pass (b copies of y, each
    with its own tangent: the denoiser keeps batch elements apart)."""
    shape, d = tuple(y.shape), y.numel()

    def apply(V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        V = V.to(y.dtype)
        with _precision_context(precision, y.device):
            with torch.enable_grad():
                _, pull = vjp(lambda x: denoiser(x.unsqueeze(0), float(sigma)).reshape(d), y.detach())
                jt = vmap(pull)(V)[0].reshape(len(V), d)
            with torch.no_grad(), fwAD.dual_level():
                copies = y.detach().unsqueeze(0).expand(len(V), *shape).contiguous()
                out = denoiser(fwAD.make_dual(copies, V.reshape(len(V), *shape).contiguous()), float(sigma))
                jv = fwAD.unpack_dual(out).tangent.reshape(len(V), d)
        return jv.to(y.dtype).detach(), jt.to(y.dtype).detach()

    return apply


def leading_basis(denoiser, y: torch.Tensor, sigma: float, k: int = LEADING, *, steps: int = KRYLOV_STEPS,
                  seed: int = 0, precision: str = "float32") -> LeadingBasis:
    """The ``k`` largest eigenpairs of (J + J^T) / 2 at ``y`` by block Krylov and Rayleigh-Ritz (see the glossary),
    with their residuals. The small linear algebra runs in float64."""
    apply = symmetric_products(denoiser, y, sigma, precision)
    d, block = y.numel(), min(y.numel(), k + 8)
    gen = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, block, generator=gen, dtype=torch.float64))[0]
    blocks, images, asym = [], [], None
    for step in range(steps + 1):
        jv, jt = (t.double().T for t in apply(Q.T))
        if asym is None:  # Q is random and orthonormal: sum ||A q||^2 estimates ||A||_F^2 b / d for any A
            asym = float(((jv - jt).norm() / jv.norm().clamp_min(1e-300)).item())
        blocks.append(Q)
        images.append((jv + jt) / 2)
        if step == steps or sum(b.shape[1] for b in blocks) + block > d:
            break
        W = images[-1].clone()
        for _ in range(2):  # full reorthogonalisation, twice: the Krylov blocks stay orthonormal in float64
            for P in blocks:
                W -= P @ (P.T @ W)
        Q = torch.linalg.qr(W)[0]
    basis, image = torch.cat(blocks, 1), torch.cat(images, 1)
    T = basis.T @ image
    theta, Y = torch.linalg.eigh((T + T.T) / 2)
    theta, Y = theta.flip(0)[:k], Y.flip(1)[:, :k]
    vecs = basis @ Y
    residuals = (image @ Y - vecs * theta).norm(dim=0)
    return LeadingBasis(float(sigma), theta.numpy(), vecs.float().numpy(), residuals.numpy(), asym,
                        2 * block * len(blocks), tuple(y.shape))


def basis_from_jacobian(J: np.ndarray, sigma: float, shape: tuple[int, int, int]) -> JacobianBasis:
    J = np.asarray(J, dtype=np.float64)
    sym = (J + J.T) / 2
    vals, vecs = np.linalg.eigh(sym)
    order = np.argsort(vals)[::-1]
    norm = np.linalg.norm(J)
    asym = float(np.linalg.norm(J - J.T) / norm) if norm > 0 else 0.0
    return JacobianBasis(float(sigma), vals[order], np.ascontiguousarray(vecs[:, order]), float(np.trace(J)), asym,
                         tuple(shape))


def jacobian_basis(denoiser, y: torch.Tensor, sigma: float, batch: int = 128) -> JacobianBasis:
    """Eigendecomposition of the symmetrised Jacobian of ``denoiser`` at ``y`` (C, H, W)."""
    J = full_jacobian(denoiser, y, sigma, batch).double().numpy()
    return basis_from_jacobian(J, sigma, tuple(y.shape))


def wiener_basis(stats: DataStats, sigma: float) -> JacobianBasis:
    """The exact Wiener counterpart: principal components with gains lambda / (lambda + sigma^2), descending
    like the eigenvalues (the gain is monotone in lambda)."""
    return linear_basis(WienerDenoiser.from_stats(stats), sigma)


def linear_basis(denoiser: LinearDenoiser, sigma: float) -> JacobianBasis:
    """Closed-form basis of any linear denoiser: its Jacobian is the same at every image."""
    vals, vecs, asymmetry = denoiser.jacobian_eigh(sigma)
    return JacobianBasis(float(sigma), vals, vecs, float(vals.sum()), asymmetry, tuple(denoiser.shape))


def noisy_test_image(dataset, image_index: int, sigma: float, seed: int = 0) -> torch.Tensor:
    """Test image ``image_index`` plus noise of ``sigma`` from ``seed`` (C, H, W): the one draw every Jacobian of
    the dashboard is taken at (`denoiser_basis`, the tr J estimate)."""
    if not 0 <= image_index < len(dataset.test):
        raise ValueError(f"image index {image_index} is outside the test set (0..{len(dataset.test) - 1})")
    return noisy_heldout(dataset.test[image_index][None], float(sigma), seed)[0, 0]


def denoiser_basis(dataset, name: str, image_index: int, sigma: float, *, seed: int = 0, cache=None,
                   precision: str = "float32") -> tuple[JacobianBasis, np.ndarray]:
    """Basis of registered denoiser ``name`` at test image ``image_index`` plus noise from ``seed``.

    Returns the basis and the noisy image y (C, H, W). Linear ones (Wiener) are exact and instant; others are cached
    on disk by (data, denoiser id, image, sigma, seed, precision), with the time the Jacobian took
    (`last_basis_seconds`). ``precision``: see `full_jacobian`.
    """
    y = noisy_test_image(dataset, image_index, sigma, seed)
    if get_spec(name).linear:
        return linear_basis(get_denoiser(name, dataset), sigma), y.numpy()
    cache = cache or default_cache()

    def compute():
        start = time.perf_counter()
        J = full_jacobian(get_denoiser(name, dataset), y, sigma, precision=precision)
        b = basis_from_jacobian(J.double().numpy(), sigma, dataset.shape)
        cache.set(_timing_key(dataset, name), {"seconds": np.array(time.perf_counter() - start)})
        return {"eigvals": b.eigvals, "eigvecs": b.eigvecs.astype(np.float32), "trace": np.array(b.trace),
                "asymmetry": np.array(b.asymmetry)}

    a = cache.get_or_compute(_basis_key(dataset, name, image_index, sigma, seed, precision), compute)
    return JacobianBasis(float(sigma), a["eigvals"], a["eigvecs"], float(a["trace"]), float(a["asymmetry"]),
                         tuple(dataset.shape)), y.numpy()


BASES = cache_kind("basis-eig")
TIMINGS = cache_kind("timing-basis")
LEADING_BASES = cache_kind("basis-leading")


def denoiser_leading_basis(dataset, name: str, image_index: int, sigma: float, *, seed: int = 0, k: int = LEADING,
                           precision: str = "float32", cache=None) -> tuple[LeadingBasis, np.ndarray]:
    """The ``k`` leading eigenpairs of registered denoiser ``name``'s symmetrised Jacobian at the image
    `denoiser_basis` takes (same image, same noise), cached; and the noisy image y (C, H, W)."""
    y = noisy_test_image(dataset, image_index, sigma, seed)
    cache = cache or default_cache()
    key = LEADING_BASES.key(dataset.fingerprint, denoiser_cache_id(name, dataset), image_index, f"{float(sigma):.6g}",
                            seed, k, precision)

    def compute():
        b = leading_basis(get_denoiser(name, dataset), y, sigma, k, seed=seed, precision=precision)
        return {"eigvals": b.eigvals, "eigvecs": b.eigvecs, "residuals": b.residuals,
                "asymmetry": np.array(b.asymmetry), "products": np.array(b.products)}

    a = cache.get_or_compute(key, compute)
    return LeadingBasis(float(sigma), a["eigvals"], a["eigvecs"], a["residuals"], float(a["asymmetry"]),
                        int(a["products"]), tuple(dataset.shape)), y.numpy()


TRACE_ESTIMATES = cache_kind("trace-estimate")
PROBES = 32  # random probes per noise level of the tr J estimate


def _estimate_key(dataset, name: str, image_index: int, sigmas, seed: int, probes: int) -> str:
    return TRACE_ESTIMATES.key(dataset.fingerprint, denoiser_cache_id(name, dataset), image_index,
                               ",".join(f"{float(s):.6g}" for s in sigmas), seed, probes)


def denoiser_trace_estimates(dataset, name: str, image_index: int, sigmas, *, seed: int = 0, probes: int = PROBES,
                             cache=None) -> tuple[np.ndarray, np.ndarray]:
    """Hutchinson tr J and its standard error at each sigma, at the noisy images `denoiser_basis` takes (same
    image, same noise), all levels in one batched pass; cached."""
    cache = cache or default_cache()

    def compute():
        ys = torch.stack([noisy_test_image(dataset, image_index, s, seed) for s in sigmas])
        est, err = trace_estimate(get_denoiser(name, dataset), ys, list(sigmas), probes=probes, seed=seed)
        return {"estimate": est, "error": err}

    a = cache.get_or_compute(_estimate_key(dataset, name, image_index, sigmas, seed, probes), compute)
    return a["estimate"], a["error"]


def trace_estimates_are_cached(dataset, name: str, image_index: int, sigmas, *, seed: int = 0, probes: int = PROBES,
                               cache=None) -> bool:
    return _estimate_key(dataset, name, image_index, sigmas, seed, probes) in (cache or default_cache())


def leading_basis_is_cached(dataset, name: str, image_index: int, sigma: float, *, seed: int = 0, k: int = LEADING,
                            precision: str = "float32", cache=None) -> bool:
    key = LEADING_BASES.key(dataset.fingerprint, denoiser_cache_id(name, dataset), image_index, f"{float(sigma):.6g}",
                            seed, k, precision)
    return key in (cache or default_cache())


def _basis_key(dataset, name: str, image_index: int, sigma: float, seed: int, precision: str = "float32"
               ) -> str:
    # the eigendecomposition is stored (eigenvectors in float32), not J: no eigh on a cache hit
    return BASES.key(dataset.fingerprint, denoiser_cache_id(name, dataset), image_index, f"{float(sigma):.6g}", seed,
                     *(() if precision == "float32" else (precision,)))


def _timing_key(dataset, name: str) -> str:
    return TIMINGS.key(dataset.fingerprint, denoiser_cache_id(name, dataset))


def basis_is_cached(dataset, name: str, image_index: int, sigma: float, *, seed: int = 0, cache=None,
                    precision: str = "float32") -> bool:
    """Whether `denoiser_basis` with these arguments reads the disk cache (linear ones: always, closed form)."""
    cache = cache or default_cache()
    return get_spec(name).linear or _basis_key(dataset, name, image_index, sigma, seed, precision) in cache


def last_basis_seconds(dataset, name: str, cache=None) -> float | None:
    """How long the last full Jacobian of ``name`` on ``dataset`` took here (measured), or None."""
    hit = (cache or default_cache()).get(_timing_key(dataset, name))
    return None if hit is None else float(hit["seconds"])
