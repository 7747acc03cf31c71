"""Synthetic stationary Gaussian random fields with a power-law spectrum, 28x28.

A field is white noise filtered in Fourier space: ``x = ifft2(fft2(w) * A)``, ``w ~ N(0, I)``, with amplitude
``A(f) = f^(-alpha/2)`` so that the power spectrum is ``1 / f^alpha``. ``f`` is the radial frequency in cycles
per pixel (numpy's fftfreq); the zero frequency, where 1/f^alpha is infinite, gets the amplitude of the lowest
non-zero frequency (one cycle per image). Zeroing it instead would force every field's spatial mean to 0, and
then every denoising field would integrate to 0: a broad negative lobe over the whole image that hides how
the field's width follows alpha. Boundaries are periodic, so the covariance is exactly circulant (stationary).
Larger alpha puts more power at low frequencies: longer correlations, smoother fields, and, by the theory,
wider denoising fields at every noise level (METHODS.md section 8).

Scaling to [-1, 1]: A is scaled so that every pixel has standard deviation exactly ``STD`` = 0.3, then values
are clipped to [-1, 1]. At 0.3 the bound is 3.3 standard deviations, so about 0.1 % of pixels are clipped; the
clipped fraction of the training set is reported in ``Dataset.params``. ``grf_covariance`` is the exact
covariance before clipping.

Randomness: the training set uses ``numpy.random.default_rng([seed, 0])``, the test set ``[seed, 1]``; the
same seed gives the same white noise whatever alpha, so changing alpha reshapes the same fields.
"""

from __future__ import annotations

import numpy as np
import torch

from locality_core.data.base import Dataset, DatasetError, fingerprint

SIZE = 28
STD = 0.3
CHUNK = 1024  # fields generated at a time: about 64 MB of FFT work (80 bytes per pixel)


def grf_amplitude(alpha: float, height: int = SIZE, width: int = SIZE, std: float = STD) -> np.ndarray:
    """(H, W) Fourier amplitude f^(-alpha/2) (f = 0 treated as one cycle per image), scaled so that each
    pixel's std is ``std``."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    f = np.maximum(np.sqrt(fy**2 + fx**2), 1.0 / max(height, width))
    amp = f ** (-alpha / 2.0)
    return amp * std / np.sqrt(np.mean(amp**2))


def grf_autocovariance(alpha: float, height: int = SIZE, width: int = SIZE, std: float = STD) -> np.ndarray:
    """(H, W) covariance between pixels ``(0, 0)`` and ``(dy, dx)`` (periodic lags), before clipping."""
    return np.real(np.fft.ifft2(grf_amplitude(alpha, height, width, std) ** 2))


def grf_covariance(alpha: float, height: int = SIZE, width: int = SIZE, std: float = STD) -> np.ndarray:
    """(d, d) exact covariance of the flattened fields (d = H * W), before clipping."""
    acov = grf_autocovariance(alpha, height, width, std)
    rows, cols = np.divmod(np.arange(height * width), width)
    return acov[(rows[:, None] - rows[None, :]) % height, (cols[:, None] - cols[None, :]) % width]


def _field_chunks(n: int, alpha: float, rng: np.random.Generator, height: int, width: int, std: float):
    """(start, fields) of ``n`` float64 fields (not clipped), ``CHUNK`` at a time."""
    amp = grf_amplitude(alpha, height, width, std)
    for start in range(0, n, CHUNK):
        white = rng.standard_normal((min(n, start + CHUNK) - start, height, width))
        yield start, np.real(np.fft.ifft2(np.fft.fft2(white, norm="ortho") * amp, norm="ortho"))


def sample_grf(n: int, alpha: float, rng: np.random.Generator, height: int = SIZE, width: int = SIZE,
               std: float = STD) -> np.ndarray:
    """(n, H, W) float64 fields, not clipped. Generated in chunks to bound memory."""
    out = np.empty((n, height, width))
    for start, fields in _field_chunks(n, alpha, rng, height, width, std):
        out[start:start + len(fields)] = fields
    return out


def clipped_images(n: int, alpha: float, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
    """float32 (n, 1, SIZE, SIZE) fields clipped to [-1, 1], and how many pixels were clipped: each chunk is
    clipped in float64 and then rounded to float32, the values of clipping `sample_grf`'s whole array, but the
    peak memory is the float32 result plus one chunk's work (not 20 bytes per pixel)."""
    out = np.empty((n, 1, SIZE, SIZE), dtype=np.float32)
    clipped = 0
    for start, fields in _field_chunks(n, alpha, rng, SIZE, SIZE, STD):
        clipped += int(np.count_nonzero(np.abs(fields) > 1.0))
        out[start:start + len(fields), 0] = np.clip(fields, -1.0, 1.0)
    return torch.from_numpy(out), clipped


BYTES_PER_CHUNK_PIXEL = 96  # white noise, two complex FFTs, the real part, |x| and the clipped copy: 80, rounded up
MARGIN = 32 * 2**20         # the allocator's and the interpreter's own share (measured: 4 MiB for 2 fields)


def peak_bytes(n_train: int = 20000, n_test: int = 2000, **_) -> int:
    """Upper bound on the memory `load_grf` takes: the float32 fields plus one chunk's work, 3 % and a margin
    above (measured: 1,263 MiB for the 400,000 fields of the campaign's URL, where the exact sum is 1,270)."""
    chunk = min(CHUNK, max(int(n_train), int(n_test)))
    exact = 4 * (int(n_train) + int(n_test)) * SIZE * SIZE + chunk * SIZE * SIZE * BYTES_PER_CHUNK_PIXEL
    return int(1.03 * exact) + MARGIN


def load_grf(alpha: float = 2.0, n_train: int = 20000, n_test: int = 2000, seed: int = 0) -> Dataset:
    """Gaussian random fields with spectrum 1/f^alpha, (1, 28, 28) in [-1, 1]."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 6.0:
        raise DatasetError(f"grf: alpha must lie in [0, 6], got {alpha}")
    if int(n_train) < 1 or int(n_test) < 1:
        raise DatasetError(f"grf: n_train and n_test must be positive, got {n_train}, {n_test}")
    x_train, n_clipped = clipped_images(int(n_train), alpha, np.random.default_rng([seed, 0]))
    x_test, _ = clipped_images(int(n_test), alpha, np.random.default_rng([seed, 1]))
    clipped = n_clipped / x_train.numel()
    recipe = f"grf:v2:alpha={alpha}:n_train={n_train}:n_test={n_test}:seed={seed}:size={SIZE}:std={STD}:clip"
    return Dataset(
        name="grf", train=x_train, test=x_test, fingerprint=fingerprint(x_train, x_test, recipe=recipe),
        description=(f"Gaussian random fields, power spectrum 1/f^{alpha:g}: {n_train:,} training and {n_test:,} "
                     f"test fields, 28x28, pixel std {STD} ({100 * clipped:.2f} % of pixels clipped to [-1, 1])"),
        params={"alpha": alpha, "n_train": n_train, "n_test": n_test, "seed": seed, "std": STD,
                "clipped_fraction": clipped},
    )
