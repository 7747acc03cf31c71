"""An on-disk cache of numpy arrays that never unpickles, computes each value once, and heals itself.

Glossary
    key       a string: what was computed, from which data (fingerprint), with which code version
    entry     a dict of named numpy arrays, stored as one ``.npz`` blob behind a sha256 header
    compute   a function returning such a dict; run at most once per key across threads and processes

Why not diskcache's defaults: diskcache pickles values (CVE-2025-69872: whoever can write the cache folder
runs code in the app) and its ``memoize`` lets concurrent processes compute the same cold value. Here
values are raw bytes (diskcache stores bytes without pickling), reads refuse any pickled entry, every
value carries a checksum (a truncated or corrupted entry is a miss: dropped and recomputed), and cold
values are computed under a ``diskcache.Lock`` held in a second cache that never evicts.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import diskcache
import numpy as np

MAGIC = b"LXC1"
CODE_VERSION = "1"  # bump when a cached computation changes meaning
DEFAULT_SIZE_LIMIT = 8 * 2**30

Arrays = dict[str, np.ndarray]


class _NoPickleDisk(diskcache.Disk):
    """A diskcache Disk that refuses to unpickle anything, keys or values."""

    def fetch(self, mode, filename, value, read):
        if mode == diskcache.core.MODE_PICKLE:
            raise ValueError("refusing a pickled cache entry")
        return super().fetch(mode, filename, value, read)

    def get(self, key, raw):
        if not raw:
            raise ValueError("refusing a pickled cache key")
        return super().get(key, raw)


def default_cache_dir() -> Path:
    env = os.environ.get("LOCALITY_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "locality-explorer"


def encode(arrays: Arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    payload = buf.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


def decode(blob: bytes) -> Arrays:
    """Inverse of `encode`; raises ValueError on anything but an intact entry."""
    if not isinstance(blob, bytes) or blob[:4] != MAGIC:
        raise ValueError("not a Locality Explorer cache entry")
    digest, payload = blob[4:36], blob[36:]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("cache entry checksum mismatch (truncated or corrupted)")
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


class ArrayCache:
    """Named-array cache in ``directory`` (default ``$LOCALITY_CACHE_DIR`` or ``~/.cache/locality-explorer``)."""

    def __init__(self, directory: str | Path | None = None, size_limit: int = DEFAULT_SIZE_LIMIT):
        self.directory = Path(directory) if directory else default_cache_dir()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self._values = diskcache.Cache(str(self.directory / "values"), disk=_NoPickleDisk,
                                       size_limit=size_limit, eviction_policy="least-recently-used")
        self._locks = diskcache.Cache(str(self.directory / "locks"), disk=_NoPickleDisk, eviction_policy="none")

    @staticmethod
    def make_key(kind: str, *parts) -> str:
        return "/".join([f"v{CODE_VERSION}", kind, *(str(p) for p in parts)])

    def get(self, key: str) -> Arrays | None:
        """The entry, or None when missing or damaged (a damaged entry is deleted)."""
        try:
            blob = self._values.get(key, default=None, read=False)
            return None if blob is None else decode(blob)
        except Exception:  # truncated file, checksum mismatch, pickled entry, I/O error: all a miss
            self.delete(key)
            return None

    def set(self, key: str, arrays: Arrays) -> None:
        self._values.set(key, encode(arrays))

    def delete(self, key: str) -> None:
        try:
            self._values.delete(key)
        except Exception:
            pass

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def get_or_compute(self, key: str, compute: Callable[[], Arrays], *, lock_timeout: float = 3600) -> Arrays:
        """Check, lock, check again, compute: a cold key is computed once even by concurrent processes."""
        hit = self.get(key)
        if hit is not None:
            return hit
        with diskcache.Lock(self._locks, "lock:" + key, expire=lock_timeout):
            hit = self.get(key)
            if hit is not None:
                return hit
            value = {k: np.asarray(v) for k, v in compute().items()}
            self.set(key, value)
            return value

    def clear(self) -> None:
        self._values.clear()

    def volume(self) -> int:
        """Bytes on disk."""
        return self._values.volume()


_default: ArrayCache | None = None


def default_cache() -> ArrayCache:
    """The process-wide cache in `default_cache_dir()` (re-created if the environment points elsewhere)."""
    global _default
    if _default is None or _default.directory != default_cache_dir():
        _default = ArrayCache()
    return _default
