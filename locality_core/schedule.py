"""Noise levels: the one place where DDPM timesteps meet sigma.

Glossary
    t           DDPM timestep, 0 .. T-1 (T = 1000), linear betas 1e-4 .. 0.02
    alpha_bar   prod_{s <= t} (1 - beta_s)
    sigma       noise level of the variance-exploding form x_sigma = x0 + sigma * eps
                sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), x_sigma = x_t / sqrt(alpha_bar_t)

Everything in the core speaks sigma; users may think in t, so both are shown.
"""

from __future__ import annotations

import math

import numpy as np

T_DEFAULT = 1000
BETA_START = 1e-4
BETA_END = 0.02


def ddpm_alpha_bar(T: int = T_DEFAULT, beta_start: float = BETA_START, beta_end: float = BETA_END) -> np.ndarray:
    """alpha_bar_t for t = 0 .. T-1 (float64, shape (T,))."""
    betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    return np.cumprod(1.0 - betas)


_ALPHA_BAR = ddpm_alpha_bar()
_SIGMAS = np.sqrt((1.0 - _ALPHA_BAR) / _ALPHA_BAR)


def t_to_sigma(t: int | np.ndarray) -> float | np.ndarray:
    """Exact sigma of DDPM timestep(s) t (integers 0 .. 999)."""
    t_arr = np.asarray(t)
    if np.any(t_arr < 0) or np.any(t_arr >= T_DEFAULT) or not np.issubdtype(t_arr.dtype, np.integer):
        raise ValueError(f"t must be integers in [0, {T_DEFAULT - 1}], got {t!r}")
    out = _SIGMAS[t_arr]
    return float(out) if out.ndim == 0 else out


def sigma_to_t(sigma: float | np.ndarray) -> float | np.ndarray:
    """Continuous DDPM timestep of a noise level (inverse of `t_to_sigma`, interpolated in log sigma).

    Values below sigma(0) = 0.01 map below 0 and above sigma(999) map above 999 by linear extrapolation
    in log sigma, so round-tripping the grid is exact and anything else still gets a sensible label.
    """
    log_s = np.log(np.asarray(sigma, dtype=np.float64))
    log_grid = np.log(_SIGMAS)
    t = np.interp(log_s, log_grid, np.arange(T_DEFAULT, dtype=np.float64))
    lo, hi = log_s < log_grid[0], log_s > log_grid[-1]
    slope_lo = 1.0 / (log_grid[1] - log_grid[0])
    slope_hi = 1.0 / (log_grid[-1] - log_grid[-2])
    t = np.where(lo, (log_s - log_grid[0]) * slope_lo, t)
    t = np.where(hi, T_DEFAULT - 1 + (log_s - log_grid[-1]) * slope_hi, t)
    return float(t) if t.ndim == 0 else t


def alpha_bar_of_sigma(sigma: float | np.ndarray) -> float | np.ndarray:
    """alpha_bar = 1 / (1 + sigma^2), exact for any sigma."""
    return 1.0 / (1.0 + np.asarray(sigma, dtype=np.float64) ** 2)


def ddim_timesteps(steps: int = 10, t_start: int = 900) -> list[int]:
    """The reference DDIM visiting order: steps evenly spaced timesteps from t_start down to 0.

    steps=10, t_start=900 gives 900, 800, ..., 100, 0 (the papers' reference sampler).
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if steps == 1:
        return [t_start]
    return [int(round(t_start - i * t_start / (steps - 1))) for i in range(steps)]


def ddim_sigmas(steps: int = 10, t_start: int = 900) -> list[float]:
    """Sigmas of `ddim_timesteps`, high to low (10 steps: 60.82, 25.74, ..., 0.3423, 0.0100)."""
    return [float(t_to_sigma(t)) for t in ddim_timesteps(steps, t_start)]


REFERENCE_TIMESTEPS: list[int] = ddim_timesteps()
REFERENCE_SIGMAS: list[float] = ddim_sigmas()


def karras_sigmas(n: int, sigma_min: float = 0.01, sigma_max: float = 80.0, rho: float = 7.0) -> list[float]:
    """EDM's schedule (Karras et al. 2022): n sigmas from sigma_max down to sigma_min."""
    if n < 2:
        return [sigma_max]
    ramp = np.linspace(0.0, 1.0, n)
    inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return [float(s) for s in inv**rho]


def initial_scale(sigma_start: float) -> float:
    """Factor turning a N(0, I) draw into the sigma-form start: x = z / sqrt(alpha_bar) = z * sqrt(1 + sigma^2)."""
    return math.sqrt(1.0 + sigma_start**2)


def timestep_label(sigma: float) -> str:
    """"t=300" for a level of the DDPM grid, "t≈312" between grid points, "t<0" below sigma(0) = 0.01. A level
    rounded to 6 digits may sit 1e-8 off its grid point: within 0.05 of an integer counts as on it."""
    t = float(sigma_to_t(sigma))
    if t <= -0.05:
        return "t<0"
    t = max(t, 0.0)
    return f"t={t:.0f}" if abs(t - round(t)) < 0.05 else f"t≈{t:.0f}"


def format_noise_level(sigma: float, ascii: bool = False) -> str:
    """'t=300 (σ=1.24)' style label (``ascii``: 'sigma='); t is rounded to the nearest integer timestep."""
    t = sigma_to_t(sigma)
    t_label = f"{max(t, 0.0):.0f}" if t > -0.05 else "<0"
    return f"t={t_label} ({'sigma' if ascii else chr(0x3C3)}={sigma:.3g})"
