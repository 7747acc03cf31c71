"""A diffusers `UNet2DModel` (a variance-preserving DDPM network) as a Denoiser D(x, sigma) -> x0_hat.

Glossary
    y            the project's noisy image, variance-exploding: y = x0 + sigma * n, pixels in [-1, 1]
    pixel range  (lo, hi): the range the network was trained on; y_net = a * y + b maps [-1, 1] onto it
                 (a = (hi - lo) / 2, b = (hi + lo) / 2), so the network sees noise a * sigma
    abar         alpha_bar = 1 / (1 + sigma_net^2): the exact VP level of that noise (sigma_net^2 = (1 - abar) / abar)
    x_t          the network's input, variance-preserving: x_t = sqrt(abar) * y_net
    log-SNR      lambda = log(abar / (1 - abar)) = -2 log sigma_net
    t(sigma)     the network's timestep: its own schedule's lambda_t (t = 0 .. T-1, `alphas_cumprod` exactly as
                 diffusers' scheduler computes it in training, float32) interpolated linearly in log-SNR, so a
                 level on the grid gets its integer step and one between two steps a fractional one (the
                 sinusoidal time embedding takes any real t); clamped to [0, T-1] outside the grid
    prediction   what the network outputs: "epsilon" (the noise), "sample" (x0) or "v_prediction"
                 (v = sqrt(abar) eps - sqrt(1 - abar) x0); each gives x0_net exactly (`x0_from_prediction`)

Shapes: x (B, C, H, W), sigma a float or a (B,) tensor. The network runs in its parameters' dtype (float32
unless ``.double()``), the conversion and the output in x's. UNet2DModel's GroupNorm and attention act within
one image, so batch elements never mix.
"""

from __future__ import annotations

import numpy as np
import torch

from locality_core.denoisers.base import Denoiser, as_batch_sigma

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def log_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """lambda_t = log(abar_t / (1 - abar_t)), float64; decreasing in t."""
    a = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.log(a) - np.log1p(-a)


def timestep_of_sigma(sigma_net: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Continuous timesteps of noise levels ``sigma_net`` (in the network's pixel units): linear interpolation
    of t in log-SNR on the schedule's ``grid`` = lambda_t (T,), clamped to [0, T-1]."""
    lam = -2.0 * np.log(np.asarray(sigma_net, dtype=np.float64))
    steps = np.arange(len(grid), dtype=np.float64)
    return np.interp(lam, grid[::-1], steps[::-1])  # np.interp wants increasing abscissae; clamps at both ends


def x0_from_prediction(out: torch.Tensor, y_net: torch.Tensor, sigma_net: torch.Tensor, prediction: str
                       ) -> torch.Tensor:
    """The network's estimate of x0 (its pixel range) from its output ``out``, with y_net = x_t / sqrt(abar).

    epsilon: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) = y_net - sigma_net eps
    sample:  x0 = out
    v:       x0 = sqrt(abar) x_t - sqrt(1 - abar) v = abar y_net - sqrt(1 - abar) v
    """
    s = sigma_net.view(-1, 1, 1, 1)
    if prediction == "epsilon":
        return y_net - s * out
    if prediction == "sample":
        return out
    if prediction == "v_prediction":
        abar = 1.0 / (1.0 + s**2)
        return abar * y_net - torch.sqrt(1.0 - abar) * out
    raise ValueError(f"prediction type must be one of {PREDICTION_TYPES}, got {prediction!r}")


class DiffusersDenoiser(Denoiser):
    """D(x, sigma) of a diffusers UNet2DModel ``net`` trained with the DDPM schedule ``alphas_cumprod`` (T,)
    to predict ``prediction``, on pixels in ``pixel_range``."""

    def __init__(self, net: torch.nn.Module, alphas_cumprod: np.ndarray, prediction: str,
                 pixel_range: tuple[float, float] = (-1.0, 1.0)):
        super().__init__()
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"prediction type must be one of {PREDICTION_TYPES}, got {prediction!r}")
        self.net = net
        self.prediction = prediction
        self.log_snr_grid = log_snr(alphas_cumprod)
        lo, hi = (float(v) for v in pixel_range)
        self.scale, self.offset = (hi - lo) / 2.0, (hi + lo) / 2.0

    def timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        """(B,) sigma in the project's units -> (B,) continuous timesteps of the network, float64 on CPU."""
        sigma_net = sigma.detach().double().cpu().numpy() * self.scale
        return torch.from_numpy(timestep_of_sigma(sigma_net, self.log_snr_grid))

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        sigma = as_batch_sigma(sigma, x)
        if len(x) == 0:  # GroupNorm refuses an empty batch
            return x.clone()
        sigma_net = sigma * self.scale
        y_net = x * self.scale + self.offset
        x_t = y_net / torch.sqrt(1.0 + sigma_net**2).view(-1, 1, 1, 1)
        net_dtype = next(self.net.parameters()).dtype  # float32 unless the module was cast (``.double()``)
        t = self.timesteps(sigma).to(device=x.device, dtype=net_dtype)
        out = self.net(x_t.to(net_dtype), t).sample.to(x.dtype)
        return (x0_from_prediction(out, y_net, sigma_net, self.prediction) - self.offset) / self.scale
