"""Memory: what is available, and whether a data set's statistics fit.

Glossary
    available   bytes of memory available now (MemAvailable), or $LOCALITY_MAX_MEMORY_GB
    covariance  a (d, d) float64 matrix; the statistics hold a few of them (covariance, eigenvectors, eigh's
                workspace): ``covariance_bytes(d)``
"""

from __future__ import annotations

import os

from locality_core import settings

BYTES_PER_COVARIANCE = 4  # Sigma, U, eigh workspace and a margin, each d x d float64


class TooLargeError(MemoryError):
    """The statistics of this data set would not fit in memory; the message says how much they need."""


def covariance_bytes(d: int) -> int:
    return BYTES_PER_COVARIANCE * d * d * 8


def available_memory() -> int:
    """Bytes of memory available now ($LOCALITY_MAX_MEMORY_GB overrides, e.g. for tests or shared hosts)."""
    if settings.MAX_MEMORY_GB.number() is not None:
        return int(settings.MAX_MEMORY_GB.number() * 2**30)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(d: int, shape: tuple[int, ...] | None = None) -> None:
    need, have = covariance_bytes(d), available_memory()
    if need > have:
        what = f"images of shape {tuple(shape)} (d = {d:,})" if shape else f"d = {d:,} pixels"
        channels = shape[0] if shape else 1
        side = int(((have / (BYTES_PER_COVARIANCE * 8)) ** 0.5 / channels) ** 0.5)
        raise TooLargeError(f"the covariance of {what} needs about {need / 2**30:.1f} GiB of memory, "
                            f"but only {have / 2**30:.1f} GiB are available. Use images of at most about "
                            f"{side}x{side} pixels (resize them when importing).")
