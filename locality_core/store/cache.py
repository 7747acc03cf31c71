"""An on-disk cache of numpy arrays that never unpickles, computes each value once, and heals itself.

Glossary
    key       a string: what was computed, from which data (fingerprint), with which code version
    entry     a dict of named numpy arrays, stored as one ``.npz`` blob behind a sha256 header
    compute   a function returning such a dict; run at most once per key across threads and processes
    kept      an entry asked for with ``keep=True``, also held decoded in this process's memory (a
              `memory.BoundedCache`: least recently used first out, within the process's memory budget)
    layers    where values live: the folder's database (`open_values`), read-only when the folder is
              (`ReadOnlyValues`), and in memory the values the folder could not take (read-only, full disk,
              unusable): reads look in memory, then on disk, so hits on disk are served whatever happens to writes

The cache story. (1) Disk, owned by the library: each cached function of `locality_core` builds its key from
its own arguments (data fingerprint, `denoisers.denoiser_cache_id`, sizes, seed), once per call, and the app,
the CLI and the warm-up call the same functions, so what one computes is a hit for the others (`locality
sample`, the Samples page and the warm-up share `sampling.cached_trajectory`). (2) Memory, in the library: what
every rerun reads, the statistics (`stats.get_stats` asks for ``keep=True``, so per data fingerprint), and
objects that are not arrays: the last data sets (`data.load_dataset`) and built denoisers
(`denoisers.get_denoiser`). (3) The dashboard adds at most one layer over a library call and never builds a
disk key; a module with such a layer says why at its top: st.cache_resource for objects all sessions share,
st.cache_data for small results the library does not keep (mask columns, nearest training images, tr J
estimates), `ui/memo.py` for results that draw their own progress or that a page asks about before computing
(linear fits, Jacobian bases). ``on_miss`` lets a page say what it waits for, without a second key lookup.

Why not diskcache's defaults: diskcache pickles values (CVE-2025-69872: whoever can write the cache folder
runs code in the app) and its ``memoize`` lets concurrent processes compute the same cold value. Here
values are raw bytes (diskcache stores bytes without pickling), reads refuse any pickled entry, every
value carries a checksum (a truncated or corrupted entry is a miss: dropped and recomputed), and cold
values are computed under a lock file (`locks.owned_lock`) that the owner's death releases at once.
A damaged sqlite file is moved aside (its value files deleted with it) and a fresh cache started; a read-only
folder is served read-only (its entries are hits; what is computed anew is kept in memory, with one warning);
a full disk keeps its hits; an unusable folder gives an in-memory cache.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import diskcache
import numpy as np

from locality_core import settings
from locality_core.store.locks import owned_lock
from locality_core.store.memory import BoundedCache

MAGIC = b"LXC1"
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
    if settings.CACHE_DIR.is_set():
        return settings.CACHE_DIR.path()
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


class MemoryValues:
    """The part of diskcache's interface the cache uses, in memory: blobs in a `memory.BoundedCache` (least
    recently used first out, within the process's memory budget). Holds the values no folder could take."""

    def __init__(self, name: str):
        self._blobs = BoundedCache(name)

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, key: str) -> bool:
        return key in self._blobs

    def get(self, key: str, default=None, read: bool = False):
        return self._blobs.get(key, default)

    def set(self, key: str, blob: bytes) -> None:
        self._blobs.set(key, blob)

    def delete(self, key: str) -> None:
        self._blobs.delete(key)

    def clear(self) -> None:
        self._blobs.clear()

    def volume(self) -> int:
        return self._blobs.volume()


class ReadOnlyValues:
    """diskcache's values read straight from its sqlite file opened read-only (``mode=ro``, or ``immutable=1``
    when SQLite cannot share a read-only folder's write-ahead log): a read-only cache folder still serves its
    entries. Writing raises OSError (the cache keeps new values in memory instead)."""

    def __init__(self, folder: Path):
        self._disk = _NoPickleDisk(str(folder))
        self._lock = threading.Lock()
        db = (folder / "cache.db").resolve()
        if not db.is_file():
            raise sqlite3.OperationalError(f"no cache database in {folder}")
        last: sqlite3.Error | None = None
        for flags in ("mode=ro", "mode=ro&immutable=1"):
            try:
                self._db = sqlite3.connect(f"file:{db}?{flags}", uri=True, check_same_thread=False)
                self._db.execute("SELECT COUNT(*) FROM Cache").fetchone()
                return
            except sqlite3.Error as exc:
                last = exc
        raise last

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM Cache").fetchone()[0]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone() is not None

    def get(self, key: str, default=None, read: bool = False):
        with self._lock:
            row = self._db.execute("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1",
                                   (key,)).fetchone()
        return default if row is None else self._disk.fetch(*row, False)

    def set(self, key: str, blob: bytes) -> None:
        raise OSError(errno.EROFS, "the cache folder is read-only")

    def delete(self, key: str) -> None:
        """Nothing on a read-only disk is changed (a damaged entry stays a miss)."""

    def clear(self) -> None:
        """Nothing on a read-only disk is changed."""

    def volume(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COALESCE(SUM(size), 0) FROM Cache").fetchone()[0]


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _damaged(exc: BaseException) -> bool:
    """Whether a sqlite error says the file itself is damaged (rather than unreachable or read-only)."""
    text = str(exc).lower()
    return type(exc) is sqlite3.DatabaseError or "malformed" in text or "not a database" in text


def _make_private_dir(directory: Path, warn: Callable[[str], None] = _warn) -> None:
    """Create ``directory`` readable by its owner only. An existing folder keeps its mode (it may be shared on
    purpose), with a warning when anyone else may write to it: whoever can write the cache can plant wrong
    numbers in it (never code: entries are not unpickled)."""
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return
    mode = directory.stat().st_mode
    if mode & 0o022 and not mode & 0o1000:  # group- or world-writable, and not sticky like /tmp
        warn(f"warning: the cache folder {directory} is writable by other users, who could store wrong results "
             f"in it; `chmod go-w {directory}` unless it is shared on purpose.")


def _read_only(exc: BaseException) -> bool:
    """Whether an error opening the folder's database says it cannot be written (but may be read)."""
    text = str(exc).lower()
    return isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EROFS or "readonly" in text \
        or "read-only" in text


def remove_value_files(folder: Path, older_than: float) -> int:
    """Delete the value files (diskcache's ``*.val``) in ``folder`` last written before ``older_than``: those of
    a database moved aside, which no database refers to any more. Files written since belong to a fresh database
    (another process may have started one). Returns how many were deleted."""
    removed = 0
    for path in folder.rglob("*.val"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < older_than:
                path.unlink()
                removed += 1
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()  # only the empty ones go
    return removed


def open_values(folder: Path, size_limit: int, warn: Callable[[str], None] = _warn):
    """diskcache in ``folder``; a damaged ``cache.db`` is moved aside with its value files (with a warning) and a
    fresh one started; a folder that cannot be written is opened read-only (`ReadOnlyValues`)."""
    options = {"disk": _NoPickleDisk, "size_limit": size_limit, "eviction_policy": "least-recently-used"}
    try:
        cache = diskcache.Cache(str(folder), **options)
        cache.get("probe:health", default=None)  # reads the tables: a damaged file fails here at the latest
        return cache
    except (sqlite3.DatabaseError, OSError) as exc:
        if _read_only(exc) and not _damaged(exc):
            return ReadOnlyValues(folder)
        if not isinstance(exc, sqlite3.DatabaseError) or not _damaged(exc):
            raise
        found = time.time()
        db = folder / "cache.db"
        aside = db.with_name(f"cache.db.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.replace(db, aside)
        for extra in ("cache.db-wal", "cache.db-shm"):
            (folder / extra).unlink(missing_ok=True)
        removed = remove_value_files(folder, found)
        warn(f"warning: the cache database {db} was damaged ({exc}); moved it to {aside.name}, deleted the "
             f"{removed} value files it referred to, and started a fresh cache.")
        return diskcache.Cache(str(folder), **options)


@dataclass(frozen=True)
class CacheKind:
    """One cached computation: a name, unique in the project, and a version declared beside its code. Bump the
    version when what it computes changes meaning: only its own entries are recomputed. Every key is
    ``kind.key(*parts)``: "v<version>/<name>/<part>/...", parts being what the value depends on (data
    fingerprint, denoiser id, sizes, seed)."""

    name: str
    version: int = 1

    def key(self, *parts) -> str:
        return "/".join([f"v{self.version}", self.name, *(str(p) for p in parts)])


KINDS: dict[str, CacheKind] = {}


def cache_kind(name: str, version: int = 1) -> CacheKind:
    """Declare a cached computation (once per name: two computations never share keys)."""
    if name in KINDS:
        raise ValueError(f"cache kind {name!r} declared twice")
    KINDS[name] = CacheKind(name, version)
    return KINDS[name]


class ArrayCache:
    """Named-array cache in ``directory`` (default ``$LOCALITY_CACHE_DIR`` or ``~/.cache/locality-explorer``).

    A read-only folder is served read-only (``read_only``): its entries are hits, results computed anew are kept
    in memory. A folder that stops taking writes (full disk, turned read-only) keeps serving its hits, new results
    in memory. A folder that cannot be used at all (not a folder, a database that cannot be opened) gives an
    in-memory cache. ``memory_only``: new results stay in this process's memory (no usable folder, or a read-only
    one), so another process cannot see them. Each case is said once, in one line.
    """

    def __init__(self, directory: str | Path | None = None, size_limit: int = DEFAULT_SIZE_LIMIT,
                 warn: Callable[[str], None] = _warn):
        self.directory = Path(directory) if directory else default_cache_dir()
        self.memory_only = self.read_only = False
        self._warn = warn
        self._said: set[str] = set()
        self._thread_locks: dict[str, threading.Lock] = {}
        self._kept = BoundedCache(f"entries kept decoded from {self.directory}")  # read with keep=True
        self._memory = MemoryValues(f"values computed while {self.directory} took no writes")
        self._recorder = threading.local()  # `recording`: the keys this thread asks for
        self._values = self._lock_dir = None
        try:
            _make_private_dir(self.directory, warn)
            self._values = open_values(self.directory / "values", size_limit, warn)
        except (OSError, sqlite3.Error) as exc:
            self._say("unusable", f"warning: the cache folder {self.directory} cannot be used ({exc}); results are "
                      "kept in memory for this process only: fix the folder or point LOCALITY_CACHE_DIR elsewhere.")
            self.memory_only = True
            return
        if isinstance(self._values, ReadOnlyValues):
            self._read_only_now()
            return
        with contextlib.suppress(OSError):  # without it, computations are locked per thread only
            self._lock_dir = self.directory / "locks"
            self._lock_dir.mkdir(mode=0o700, exist_ok=True)

    def _say(self, what: str, message: str) -> None:
        if what not in self._said:
            self._said.add(what)
            self._warn(message)

    def _read_only_now(self) -> None:
        self.read_only = self.memory_only = True
        self._lock_dir = None
        self._say("read-only", f"warning: the cache folder {self.directory} is read-only: its results are served, "
                  "and what is computed anew is kept in memory for this process only.")

    def _write_failed(self, exc: BaseException) -> None:
        """A write to the folder failed: from now on new values stay in memory (a full disk is tried again)."""
        if _read_only(exc):
            self._read_only_now()
        elif getattr(exc, "errno", None) == errno.ENOSPC or "full" in str(exc).lower():
            self._say("full", f"warning: the disk of the cache folder {self.directory} is full: its results are "
                      "still served, and new ones are kept in memory until there is space again.")
        else:
            self._say("write", f"warning: the cache folder {self.directory} cannot be written ({exc}): its results "
                      "are still served, and new ones are kept in memory for this process only.")

    def _stored(self, key: str) -> bytes | None:
        """The entry's raw bytes, unverified: memory first (it holds what the folder could not take), then disk."""
        blob = self._memory.get(key)
        if blob is None and self._values is not None:
            blob = self._values.get(key, default=None, read=False)
        return blob

    def get(self, key: str) -> Arrays | None:
        """The entry, or None when missing or damaged (a damaged entry is deleted). Memory first: it holds what
        the folder could not take."""
        try:
            blob = self._stored(key)
            return None if blob is None else decode(blob)
        except Exception:  # truncated file, checksum mismatch, pickled entry, I/O error: all a miss
            self.delete(key)
            return None

    def set(self, key: str, arrays: Arrays) -> None:
        blob = encode(arrays)
        if self._values is not None and not self.read_only:
            try:
                self._values.set(key, blob)
                self._memory.delete(key)
                return
            except (OSError, sqlite3.Error) as exc:  # full, or turned read-only: the disk's hits stay served
                self._write_failed(exc)
        self._memory.set(key, blob)

    def delete(self, key: str) -> None:
        self._kept.delete(key)
        self._memory.delete(key)
        if self._values is not None:
            with contextlib.suppress(Exception):
                self._values.delete(key)

    def __contains__(self, key: str) -> bool:
        """Whether an entry exists, without reading it (a damaged one still reads as a miss, and is recomputed)."""
        if key in self._kept or key in self._memory:
            return True
        try:
            return self._values is not None and key in self._values
        except Exception:  # an unreadable database: nothing is known to be there
            return False

    @contextlib.contextmanager
    def _lock(self, key: str):
        """Across processes: a lock file that its owner's death releases; without a usable lock folder (memory
        only, read-only, a lock file that cannot be written): a thread lock."""
        lock = None
        if self._lock_dir is not None:
            try:
                lock = owned_lock(self._lock_dir, key, what=f"computing {key}")
                lock.__enter__()
            except OSError as exc:  # the lock folder became unusable
                self._say("locks", f"warning: no lock file can be made in {self._lock_dir} ({exc}); concurrent "
                          "processes may compute the same result twice.")
                self._lock_dir, lock = None, None
        if lock is None:
            with self._thread_locks.setdefault(key, threading.Lock()):
                yield
            return
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    @contextlib.contextmanager
    def recording(self):
        """Collect, in a list, the keys that this thread reads or computes through `get_or_compute` meanwhile (a
        prepared-cache pack lists the entries of each default view this way: they cannot drift from the code)."""
        outer = getattr(self._recorder, "keys", None)
        self._recorder.keys = keys = []
        try:
            yield keys
        finally:
            self._recorder.keys = outer
            if outer is not None:
                outer.extend(keys)

    def blob(self, key: str) -> bytes | None:
        """The entry's stored bytes (checksum header and all), verified; None when missing or damaged."""
        try:
            blob = self._stored(key)
            if blob is None:
                return None
            decode(blob)
            return blob
        except Exception:
            return None

    def get_or_compute(self, key: str, compute: Callable[[], Arrays], *, keep: bool = False,
                       on_miss: Callable[[], None] | None = None) -> Arrays:
        """Check, lock, check again, compute: a cold key is computed once even by concurrent processes.

        ``keep``: also hold the entry in this process's memory, so that later calls read no disk (values are
        shared, not copied: treat them as read-only). ``on_miss()`` runs once when the key is not cached,
        before waiting for another process that may be computing it: a page can say what it waits for.
        """
        keys = getattr(self._recorder, "keys", None)
        if keys is not None:
            keys.append(key)
        hit = self._kept.get(key) if keep else None
        if hit is not None:
            return hit
        hit = self.get(key)
        if hit is None:
            if on_miss is not None:
                on_miss()
            with self._lock(key):
                hit = self.get(key)
                if hit is None:
                    hit = {k: np.asarray(v) for k, v in compute().items()}
                    self.set(key, hit)
        if keep:
            self._kept.set(key, hit)
        return hit

    def clear(self) -> None:
        self._kept.clear()
        self._memory.clear()
        if self._values is not None:
            self._values.clear()

    def volume(self) -> int:
        """Bytes of the values on disk and of those kept in memory instead."""
        return (self._values.volume() if self._values is not None else 0) + self._memory.volume()


_default: ArrayCache | None = None


def default_cache() -> ArrayCache:
    """The process-wide cache in `default_cache_dir()` (re-created if the environment points elsewhere)."""
    global _default
    if _default is None or _default.directory != default_cache_dir():
        _default = ArrayCache()
    return _default
