"""Memory: one budget for what requests make a process build and keep, and caches bounded by bytes.

Glossary
    budget       $LOCALITY_MEMORY_BUDGET_GB (default `DEFAULT_BUDGET_GB`), the most memory that this process's
                 builds in flight and its in-memory caches hold together: a server's resident memory stays
                 below its baseline (interpreter, libraries) plus the budget, however it is used
    estimate     an upper bound on the peak memory one build takes (a data set with its options, an import,
                 statistics, a sampling run), in bytes, known before anything is allocated; a build whose
                 estimate exceeds the budget is refused (`TooLargeError`, with the number and how to change it)
    reservation  a build's estimate, held while it runs (`MemoryBudget.reserve`): the caches give way to it,
                 least recently used first; when other builds hold the rest, it waits (at most `WAIT_S`)
    storage      a block of memory that arrays share (a tensor's storage, a numpy array's root buffer),
                 counted once however many cached entries reach it (`storages`)
    BoundedCache a least-recently-used cache whose entries are counted in bytes against the budget: the
                 library's data sets, denoisers, kept cache entries and values a cache folder could not take
    covariance   a (d, d) float64 matrix; statistics hold a few of them (covariance, eigenvectors, eigh's
                 workspace): ``covariance_bytes(d)``

What is not counted: interpreter and library code, Streamlit's own caches of small results, per-click work,
and anything a caller holds on to after a cache dropped it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator

import numpy as np
import torch

from locality_core import settings

BYTES_PER_COVARIANCE = 6  # Sigma, U, the cross products, eigh's copy and workspace, each d x d float64
DEFAULT_BUDGET_GB = 2.0   # a 2-core, 8 GB laptop: the OS, a browser and the server's ~0.7 GB baseline beside it
WAIT_S = 60.0             # how long a build waits for others to finish before it is refused
GIB = 2**30


class TooLargeError(MemoryError):
    """A computation would not fit in the memory budget; the message says how much it needs and what to do."""


def budget_bytes() -> int:
    """$LOCALITY_MEMORY_BUDGET_GB in bytes (the default when unset, not a number, or not positive)."""
    gb = settings.MEMORY_BUDGET_GB.number()
    return int((gb if gb is not None and gb > 0 else DEFAULT_BUDGET_GB) * GIB)


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n < 10 * GIB else f"{n / GIB:.0f} GiB"


def over_budget(what: str, need: int, advice: str) -> TooLargeError:
    """The refusal of a build of ``need`` bytes: the numbers, the advice, and how to raise the limit."""
    return TooLargeError(f"{what} would need up to {gib(need)} of memory, more than this process's memory budget "
                         f"of {gib(budget_bytes())}; {advice}, or raise the budget (environment variable "
                         f"{settings.MEMORY_BUDGET_GB.name}, in GiB) where the machine has the memory.")


def covariance_bytes(d: int) -> int:
    return BYTES_PER_COVARIANCE * d * d * 8


def statistics_bytes(d: int, chunk: int = 4096) -> int:
    """Upper bound on the memory of computing the statistics of d pixels from chunks of ``chunk`` images: the
    d x d matrices and three float64 copies of a chunk (measured: 15.0 d x d floats at d = 784, 6.4 at 3,072)."""
    return covariance_bytes(d) + 3 * chunk * d * 8


def check_fits(d: int, shape: tuple[int, ...] | None = None) -> None:
    """TooLargeError when the statistics of ``d`` pixels would not fit in the budget; the message gives the
    largest square image that would."""
    need, have = statistics_bytes(d), budget_bytes()
    if need > have:
        what = f"images of shape {tuple(shape)} (d = {d:,})" if shape else f"d = {d:,} pixels"
        channels = shape[0] if shape else 1
        side = int(((have / (BYTES_PER_COVARIANCE * 8)) ** 0.5 / channels) ** 0.5)
        raise over_budget(f"the statistics (covariance and eigenvectors) of {what}", need,
                          f"use images of at most about {side}x{side} pixels (resize them when importing)")


# ---------------------------------------------------------------- counting bytes

def _array_storage(a: np.ndarray) -> tuple[tuple, int] | None:
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    if root.nbytes == 0:
        return None
    return ("mem", root.__array_interface__["data"][0]), root.nbytes


def _tensor_storage(t: torch.Tensor) -> tuple[tuple, int] | None:
    if t.device.type == "meta":
        return None
    storage = t.untyped_storage()
    return (("mem", storage.data_ptr()), storage.nbytes()) if storage.nbytes() else None


def storages(obj, *, depth: int = 8) -> dict[tuple, int]:
    """{storage: bytes} of every array and tensor reachable from ``obj`` (through containers, dataclasses,
    modules and attributes, ``depth`` levels deep), each counted once; other objects by `sys.getsizeof`. A
    tensor made from a numpy array and the array share one storage (same address)."""
    found: dict[tuple, int] = {}
    seen: set[int] = set()

    def walk(o, level: int) -> None:
        if id(o) in seen or level > depth:
            return
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            block = _tensor_storage(o)
        elif isinstance(o, np.ndarray):
            block = _array_storage(o)
        else:
            block = (("obj", id(o)), sys.getsizeof(o, 64))
            for child in _children(o):
                walk(child, level + 1)
        if block is not None:
            found[block[0]] = block[1]

    walk(obj, 0)
    return found


ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), type)


def _children(o) -> Iterator:
    if isinstance(o, ATOMS):
        return iter(())
    if isinstance(o, dict):
        return itertools.chain(o.keys(), o.values())
    if isinstance(o, (list, tuple, set, frozenset)):
        return iter(o)
    if isinstance(o, torch.nn.Module):
        return itertools.chain(o.parameters(), o.buffers(), vars(o).values())
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return (getattr(o, f.name) for f in dataclasses.fields(o))
    if hasattr(o, "__dict__") and not isinstance(o, type):
        return iter(vars(o).values())
    return iter(())


def nbytes(obj) -> int:
    """Bytes of the arrays and tensors reachable from ``obj``, shared storage counted once."""
    return sum(storages(obj).values())


# ---------------------------------------------------------------- the budget

@dataclasses.dataclass
class _Entry:
    value: object
    blocks: dict[tuple, int]
    stamp: int


class MemoryBudget:
    """The process's budget: builds in flight (`reserve`) and the entries of every `BoundedCache` together stay
    within `budget_bytes()`. One lock guards the accounting of all caches, never a computation."""

    def __init__(self):
        self.lock = threading.Condition(threading.RLock())
        self._caches: weakref.WeakSet[BoundedCache] = weakref.WeakSet()
        self._blocks: dict[tuple, list[int]] = {}  # storage -> [bytes, entries holding it]
        self._held = 0                            # bytes of distinct storages held by cache entries
        self._in_flight = 0                       # bytes reserved by builds running now
        self._stamps = itertools.count()
        self._local = threading.local()

    def stamp(self) -> int:
        return next(self._stamps)

    def held(self) -> int:
        with self.lock:
            return self._held

    def in_flight(self) -> int:
        with self.lock:
            return self._in_flight

    def register(self, cache: BoundedCache) -> None:
        with self.lock:
            self._caches.add(cache)

    def add_blocks(self, blocks: dict[tuple, int]) -> None:
        for key, size in blocks.items():
            entry = self._blocks.setdefault(key, [size, 0])
            if entry[1] == 0:
                self._held += size
            entry[1] += 1

    def remove_blocks(self, blocks: dict[tuple, int]) -> None:
        for key in blocks:
            entry = self._blocks[key]
            entry[1] -= 1
            if entry[1] == 0:
                self._held -= entry[0]
                del self._blocks[key]

    def new_bytes(self, blocks: dict[tuple, int]) -> int:
        """What holding ``blocks`` would add: the storages no cached entry holds yet."""
        return sum(size for key, size in blocks.items() if key not in self._blocks)

    def make_room(self, need: int) -> bool:
        """Drop cached entries, least recently used first over all caches, until ``need`` more bytes fit;
        whether they do. Call with the lock held."""
        limit = budget_bytes()
        while self._held + self._in_flight + need > limit:
            candidates = [(c.oldest(), c) for c in self._caches if len(c)]
            if not candidates:
                return False
            (key, _), cache = min(candidates, key=lambda pair: pair[0][1])
            cache.evict(key)
        return True

    @contextlib.contextmanager
    def reserve(self, need: int, what: str, advice: str = "choose a smaller one", wait_s: float = WAIT_S):
        """Hold ``need`` bytes for a build while the ``with`` block runs. TooLargeError at once when ``need``
        exceeds the whole budget, or after ``wait_s`` when other builds keep holding the rest (a build inside
        another one of the same thread does not wait for it)."""
        need = int(need)
        if need > budget_bytes():
            raise over_budget(what, need, advice)
        nested = getattr(self._local, "depth", 0) > 0
        deadline = time.monotonic() + (0.0 if nested else wait_s)
        with self.lock:
            while not self.make_room(need):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TooLargeError(
                        f"{what} needs up to {gib(need)} of memory, and other computations hold "
                        f"{gib(self._in_flight)} of this process's budget of {gib(budget_bytes())} "
                        f"({settings.MEMORY_BUDGET_GB.name}); try again in a minute.")
                self.lock.wait(min(left, 1.0))
            self._in_flight += need
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1
            with self.lock:
                self._in_flight -= need
                self.lock.notify_all()


BUDGET = MemoryBudget()


class BoundedCache:
    """Least recently used first out, counted in bytes against `BUDGET` (shared storage once), and at most
    ``max_entries`` entries. ``get_or_compute`` computes a missing key once even when threads ask together.
    Values are shared, not copied: treat them as read-only. ``size`` gives what an entry holds (default: the
    value; a function cache counts its arguments too, which its entries keep alive)."""

    def __init__(self, name: str, max_entries: int | None = None, budget: MemoryBudget = BUDGET):
        self.name, self.max_entries, self.budget = name, max_entries, budget
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        budget.register(self)
        weakref.finalize(self, _release, budget, self._entries)  # a cache that is gone holds no bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self.budget.lock:
            return key in self._entries

    def get(self, key: Hashable, default=None):
        with self.budget.lock:
            entry = self._entries.get(key)
            if entry is None:
                return default
            entry.stamp = self.budget.stamp()
            self._entries.move_to_end(key)
            return entry.value

    def set(self, key: Hashable, value, counted=None) -> bool:
        """Keep ``value`` (its bytes: those reachable from ``counted``, default the value itself), making room
        in the budget; False when it cannot fit even alone (it is then not kept)."""
        blocks = storages(value if counted is None else counted)
        with self.budget.lock:
            self.delete(key)
            if not self.budget.make_room(self.budget.new_bytes(blocks)):
                return False
            self.budget.add_blocks(blocks)
            self._entries[key] = _Entry(value, blocks, self.budget.stamp())
            while self.max_entries is not None and len(self._entries) > self.max_entries:
                self.evict(next(iter(self._entries)))
            return True

    def get_or_compute(self, key: Hashable, compute: Callable[[], object], counted: Callable | None = None):
        """The value of ``key``, computed by ``compute()`` once (concurrent callers wait for the first);
        ``counted(value)``: what the entry holds, when more than the value."""
        hit = self.get(key, _MISSING)
        if hit is not _MISSING:
            return hit
        with self.budget.lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            hit = self.get(key, _MISSING)
            if hit is not _MISSING:
                return hit
            try:
                value = compute()
                self.set(key, value, None if counted is None else counted(value))
                return value
            finally:
                with self.budget.lock:
                    self._key_locks.pop(key, None)

    def oldest(self) -> tuple[Hashable, int]:
        """(key, stamp) of the least recently used entry of a cache that is not empty (budget's lock held)."""
        key, entry = next(iter(self._entries.items()))
        return key, entry.stamp

    def evict(self, key: Hashable) -> None:
        with self.budget.lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self.budget.remove_blocks(entry.blocks)

    delete = evict

    def clear(self) -> None:
        with self.budget.lock:
            for key in list(self._entries):
                self.evict(key)

    def volume(self) -> int:
        """Bytes of the distinct storages this cache's entries hold."""
        with self.budget.lock:
            blocks: dict[tuple, int] = {}
            for entry in self._entries.values():
                blocks.update(entry.blocks)
            return sum(blocks.values())


_MISSING = object()


def _release(budget: MemoryBudget, entries: OrderedDict) -> None:
    with budget.lock:
        for entry in entries.values():
            budget.remove_blocks(entry.blocks)
        entries.clear()


def bounded_cache(function=None, *, key: Callable[..., Hashable] | None = None, max_entries: int | None = None):
    """Decorator: memoise a function in a `BoundedCache` (like functools.lru_cache, bounded by bytes). An entry
    counts its key with its value (the arguments in a key stay alive with it). ``key``: the cache key from the
    arguments (default: all of them). The wrapper has ``cache`` and ``clear()`` (also named
    ``cache_clear()``, as functools names it)."""
    def decorate(f):
        cache = BoundedCache(f"{f.__module__}.{f.__qualname__}", max_entries)

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            k = key(*args, **kwargs) if key is not None else (args, tuple(sorted(kwargs.items())))
            return cache.get_or_compute(k, lambda: f(*args, **kwargs), counted=lambda v: (k, v))

        wrapper.cache, wrapper.clear, wrapper.cache_clear = cache, cache.clear, cache.clear
        return wrapper

    return decorate(function) if function is not None else decorate
