"""The trained linear denoiser: gradient descent finds the Wiener filter (the paper's first experiment).

Glossary
    A, b          the affine denoiser x0_hat = A x + b (`AffineDenoiser`, buffers A_ and b_), trained by Adam on
                  noisy pairs (x0 + sigma eps, x0) at one noise level sigma (`train_affine`)
    P_sigma       the closed form it converges to: A -> P_sigma, b -> (I - P_sigma) mu
    rel_error     ||A - P_sigma||_F / ||P_sigma||_F along the iterations
    field         row m of A as an image: the trained model's sensitivity field of pixel m

For speed the model is parametrised around the data mean, x0_hat = A (x - mu) + c (so b = c - A mu): the
same family of affine maps, with the offset decoupled from A so that Adam does not chase it. The trained
(and recorded) A is the Polyak average of the iterates over the second half of training, which removes
most of the minibatch noise that a single iterate carries in its d^2 entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from locality_core.analysis.fields import check_pixel
from locality_core.data import Dataset
from locality_core.denoisers.base import LinearDenoiser, as_batch_sigma


class AffineDenoiser(LinearDenoiser):
    """x0_hat = A x + b, trained by Adam at one noise level ``sigma`` (`train_affine`): ``.fit(dataset)``.

    Learned (float64 buffers): A_ (d, d), b_ (d,). The map is the one trained at ``sigma``; forward takes the
    contract's sigma (checked for shape) but applies A_ and b_ at any level. ``callback(step, A)``: called
    every ``record_every`` steps and at the end with the current A (d, d) float64 (the average, once averaging
    started).
    """

    learned = ("A_", "b_")

    def __init__(self, sigma: float, *, steps: int = 1500, batch: int = 512, lr: float = 2e-3,
                 antithetic: bool = True, seed: int = 0, record_every: int = 25,
                 callback: Callable[[int, torch.Tensor], None] | None = None):
        super().__init__()
        self.sigma, self.steps, self.batch, self.lr = float(sigma), steps, batch, lr
        self.antithetic, self.seed, self.record_every, self.callback = antithetic, seed, record_every, callback
        self.shape: tuple[int, int, int] | None = None

    def fit(self, dataset: Dataset) -> AffineDenoiser:
        self.shape = tuple(dataset.shape)
        self.A_, self.b_ = train_affine(dataset.train, self.sigma, steps=self.steps, batch=self.batch, lr=self.lr,
                                        antithetic=self.antithetic, seed=self.seed, record_every=self.record_every,
                                        callback=self.callback)
        return self

    def jacobian_rows(self, indices: list[int], sigmas: list[float]) -> np.ndarray:
        """Rows ``indices`` of A (the same at every sigma): (S, len(indices), d), float64."""
        self.check_fitted()
        rows = self.A_[list(indices)].detach().cpu().double().numpy()
        return np.stack([rows] * len(sigmas))

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma scalar or (B,) (unused) -> A x + b (B, C, H, W) in x's dtype."""
        self.check_fitted()
        as_batch_sigma(sigma, x)
        return (x.flatten(1) @ self.A_.to(x).T + self.b_.to(x)).view_as(x)


def train_affine(train: torch.Tensor, sigma: float, *, steps: int = 1500, batch: int = 512, lr: float = 2e-3,
                 antithetic: bool = True, seed: int = 0, record_every: int = 25,
                 callback: Callable[[int, torch.Tensor], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit x0_hat = A x + b to (x0 + sigma eps, x0) pairs from ``train`` (N, C, H, W) with Adam: A (d, d) and
    b (d,), float64.

    The learning rate decays linearly to 2 %, and A is the average of the iterates of the second half.
    ``antithetic``: each clean image comes with noise +eps and -eps, a variance reduction that leaves the
    objective unchanged. ``callback(step, A)`` every ``record_every`` steps and after the last.
    """
    n, d = len(train), int(np.prod(train.shape[1:]))
    data = train.reshape(n, d).float()
    mu = data.mean(0)
    gen = torch.Generator().manual_seed(seed)
    A = torch.zeros(d, d, requires_grad=True)
    offset = mu.clone().requires_grad_(True)
    opt = torch.optim.Adam([A, offset], lr=lr)
    average, averaged = torch.zeros(d, d), 0
    tail_start = steps // 2

    def current() -> torch.Tensor:
        return (average / averaged if averaged else A.detach()).double()

    for step in range(steps):
        if callback and step % record_every == 0:
            callback(step, current())
        for group in opt.param_groups:
            group["lr"] = lr * (1.0 - 0.98 * step / steps)
        x0 = data[torch.randint(n, (batch // 2 if antithetic else batch,), generator=gen)]
        eps = torch.randn(x0.shape, generator=gen)
        if antithetic:  # pairs x0 +- sigma eps: the x0-eps cross terms of the gradient cancel exactly
            x0, eps = torch.cat([x0, x0]), torch.cat([eps, -eps])
        x = x0 + sigma * eps
        x0_hat = (x - mu) @ A.T + offset
        loss = (x0_hat - x0).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= tail_start:
            average += A.detach()
            averaged += 1
    if callback:
        callback(steps, current())
    a = current()
    return a, torch.from_numpy(offset.detach().double().numpy() - a.numpy() @ mu.double().numpy())


@dataclass(frozen=True, eq=False)
class LinearFitResult:
    denoiser: AffineDenoiser   # the trained A x + b
    sigma: float
    steps: np.ndarray          # (K,) iterations at which the curves were recorded
    rel_error: np.ndarray      # (K,) relative Frobenius distance to P_sigma
    pixel: tuple[int, int]
    fields: np.ndarray         # (K, C, C, H, W) row(s) of A for the pixel's channels at those iterations
    target_field: np.ndarray   # (C, C, H, W) the same rows of P_sigma

    @property
    def A(self) -> np.ndarray:
        """(d, d) trained matrix, float64."""
        return self.denoiser.A_.detach().cpu().numpy()

    @property
    def b(self) -> np.ndarray:
        """(d,) trained offset, float64."""
        return self.denoiser.b_.detach().cpu().numpy()


def fit_linear_denoiser(train: torch.Tensor, sigma: float, P: np.ndarray, *, pixel: tuple[int, int] | None = None,
                        steps: int = 1500, batch: int = 512, lr: float = 2e-3, record_every: int = 25,
                        antithetic: bool = True, seed: int = 0,
                        progress: Callable[[float, str], None] | None = None) -> LinearFitResult:
    """Train an `AffineDenoiser` on ``train`` (N, C, H, W) at ``sigma`` and record its way to ``P``, the
    closed-form P_sigma (d, d): the relative distance and the pixel's rows of A every ``record_every`` steps."""
    c, h, w = tuple(train.shape[1:])
    pixel = check_pixel(pixel if pixel is not None else (h // 2, w // 2), (c, h, w))
    rows = [ch * h * w + pixel[0] * w + pixel[1] for ch in range(c)]
    P64 = np.asarray(P, dtype=np.float64)
    p_norm = np.linalg.norm(P64)
    record_steps, errors, fields = [], [], []

    def record(step: int, A: torch.Tensor):
        a = A.numpy()
        record_steps.append(step)
        errors.append(float(np.linalg.norm(a - P64) / p_norm))
        fields.append(a[rows].reshape(c, c, h, w).copy())
        if progress:
            done = step >= steps
            progress(1.0 if done else step / steps,
                     f"done: relative distance to P {errors[-1]:.3f}" if done else
                     f"step {step}/{steps}: relative distance to P {errors[-1]:.3f}")

    denoiser = AffineDenoiser(sigma, steps=steps, batch=batch, lr=lr, antithetic=antithetic, seed=seed,
                              record_every=record_every, callback=record).fit(Dataset.from_tensor(train))
    denoiser.callback = None
    return LinearFitResult(denoiser, float(sigma), np.array(record_steps), np.array(errors), pixel,
                           np.stack(fields), P64[rows].reshape(c, c, h, w))
