"""A process-wide memo for results whose computation reports progress to the page.

Why not st.cache_resource / st.cache_data: they record the elements a cached function draws and replay them
on a hit, which fails for a progress bar created outside the function (CacheReplayClosureError). Here the
compute function may draw anything; the memo only stores its return value. Like Streamlit's caches, it keeps
two sessions from computing the same key at once (a lock per key). Each namespace is a
`locality_core.store.memory.BoundedCache`: at most ``max_entries`` values, least recently used dropped, and
counted in bytes against the server's memory budget with the library's caches. Values are shared, not copied:
treat them as read-only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TypeVar

import streamlit as st

from locality_core.store.memory import BoundedCache

T = TypeVar("T")


class _Store:
    def __init__(self):
        self.lock = threading.Lock()
        self.namespaces: dict[str, BoundedCache] = {}

    def namespace(self, name: str, max_entries: int) -> BoundedCache:
        with self.lock:
            if name not in self.namespaces:
                self.namespaces[name] = BoundedCache(f"memo {name}", max_entries)
            return self.namespaces[name]


@st.cache_resource(show_spinner=False)
def _store() -> _Store:
    return _Store()


def memo(namespace: str, key: Hashable, compute: Callable[[], T], max_entries: int = 8) -> T:
    """The value of ``key`` in ``namespace``, computed once by ``compute()`` (which may draw progress)."""
    return _store().namespace(namespace, max_entries).get_or_compute(key, compute)


def cached(namespace: str, key: Hashable) -> bool:
    """Whether ``key`` is in the memo now (no computation)."""
    cache = _store().namespaces.get(namespace)
    return cache is not None and key in cache


def clear(namespace: str | None = None) -> None:
    store = _store()
    with store.lock:
        chosen = list(store.namespaces.values()) if namespace is None else \
            [store.namespaces[namespace]] if namespace in store.namespaces else []
    for cache in chosen:
        cache.clear()
