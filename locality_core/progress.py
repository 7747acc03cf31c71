"""The one progress protocol: ``progress(fraction, text)``, fraction in [0, 1], text saying what runs now.

Every long computation of the library takes ``progress: Progress | None``; a cache miss is announced separately
by the cache's ``on_miss()`` (see `store.cache.ArrayCache.get_or_compute`), never disguised as a fraction.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, fraction: float, text: str) -> None: ...


def part(progress: Progress | None, start: float, stop: float, prefix: str = "") -> Progress | None:
    """The progress of one part of a computation that spans [start, stop] of the whole (None stays None)."""
    if progress is None:
        return None

    def report(fraction: float, text: str) -> None:
        progress(start + (stop - start) * min(max(fraction, 0.0), 1.0), prefix + text)

    return report
