"""The trained linear denoiser: gradient descent finds the Wiener filter (the paper's first experiment).

Glossary
    A, b          the affine denoiser x0_hat = A x + b, trained by Adam on noisy pairs (x0 + sigma eps, x0)
    P_sigma       the closed form it converges to: A -> P_sigma, b -> (I - P_sigma) mu
    rel_error     ||A - P_sigma||_F / ||P_sigma||_F along the iterations
    field         row m of A as an image: the trained model's sensitivity field of pixel m

For speed the model is parametrised around the data mean, x0_hat = A (x - mu) + c (so b = c - A mu): the
same family of affine maps, with the offset decoupled from A so that Adam does not chase it. The returned
(and recorded) A is the Polyak average of the iterates over the second half of training, which removes
most of the minibatch noise that a single iterate carries in its d^2 entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .fields import check_pixel


@dataclass(frozen=True, eq=False)
class LinearFitResult:
    A: np.ndarray              # (d, d) trained matrix
    b: np.ndarray              # (d,) trained offset
    sigma: float
    steps: np.ndarray          # (K,) iterations at which the curves were recorded
    rel_error: np.ndarray      # (K,) relative Frobenius distance to P_sigma
    pixel: tuple[int, int]
    fields: np.ndarray         # (K, C, C, H, W) row(s) of A for the pixel's channels at those iterations
    target_field: np.ndarray   # (C, C, H, W) the same rows of P_sigma


def fit_linear_denoiser(train: torch.Tensor, sigma: float, P: np.ndarray, *, pixel: tuple[int, int] | None = None,
                        steps: int = 1500, batch: int = 512, lr: float = 2e-3, record_every: int = 25,
                        antithetic: bool = True, seed: int = 0,
                        progress: Callable[[float, str], None] | None = None) -> LinearFitResult:
    """Fit x0_hat = A x + b to (x0 + sigma eps, x0) pairs from ``train`` (N, C, H, W) with Adam.

    ``P``: the closed-form P_sigma (d, d) to measure against. The learning rate decays linearly to 2 %, and
    the result is the average of the iterates of the second half. ``antithetic``: each clean image comes
    with noise +eps and -eps, a variance reduction that leaves the objective unchanged.
    """
    n, (c, h, w) = len(train), tuple(train.shape[1:])
    d = c * h * w
    pixel = check_pixel(pixel if pixel is not None else (h // 2, w // 2), (c, h, w))
    rows = [ch * h * w + pixel[0] * w + pixel[1] for ch in range(c)]
    data = train.reshape(n, d).float()
    mu = data.mean(0)
    gen = torch.Generator().manual_seed(seed)
    A = torch.zeros(d, d, requires_grad=True)
    offset = mu.clone().requires_grad_(True)
    opt = torch.optim.Adam([A, offset], lr=lr)
    P64 = np.asarray(P, dtype=np.float64)
    p_norm = np.linalg.norm(P64)
    record_steps, errors, fields = [], [], []
    average, averaged = torch.zeros(d, d), 0
    tail_start = steps // 2

    def current() -> np.ndarray:
        return (average / averaged if averaged else A.detach()).double().numpy()

    def record(step: int):
        a = current()
        record_steps.append(step)
        errors.append(float(np.linalg.norm(a - P64) / p_norm))
        fields.append(a[rows].reshape(c, c, h, w).copy())

    for step in range(steps):
        if step % record_every == 0:
            record(step)
            if progress:
                progress(step / steps, f"step {step}/{steps}: relative distance to P {errors[-1]:.3f}")
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
    record(steps)
    if progress:
        progress(1.0, f"done: relative distance to P {errors[-1]:.3f}")
    a = current()
    b = offset.detach().double().numpy() - a @ mu.double().numpy()
    return LinearFitResult(a, b, float(sigma), np.array(record_steps), np.array(errors), pixel,
                           np.stack(fields), P64[rows].reshape(c, c, h, w))
