"""A process-wide memo for results whose computation reports progress to the page.

Why not st.cache_resource / st.cache_data: they record the elements a cached function draws and replay them
on a hit, which fails for a progress bar created outside the function (CacheReplayClosureError). Here the
compute function may draw anything; the memo only stores its return value. Like Streamlit's caches, it keeps
two sessions from computing the same key at once (a lock per key), and it holds at most ``max_entries``
values per namespace (least recently used dropped). Values are shared, not copied: treat them as read-only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

import streamlit as st

T = TypeVar("T")


class _Store:
    def __init__(self):
        self.lock = threading.Lock()
        self.values: dict[str, OrderedDict] = {}
        self.key_locks: dict[tuple, threading.Lock] = {}


@st.cache_resource(show_spinner=False)
def _store() -> _Store:
    return _Store()


def memo(namespace: str, key: Hashable, compute: Callable[[], T], max_entries: int = 8) -> T:
    """The value of ``key`` in ``namespace``, computed once by ``compute()`` (which may draw progress)."""
    store = _store()
    full = (namespace, key)
    with store.lock:
        values = store.values.setdefault(namespace, OrderedDict())
        if key in values:
            values.move_to_end(key)
            return values[key]
        key_lock = store.key_locks.setdefault(full, threading.Lock())
    with key_lock:
        with store.lock:
            if key in values:
                return values[key]
        value = compute()
        with store.lock:
            values[key] = value
            while len(values) > max_entries:
                values.popitem(last=False)
            store.key_locks.pop(full, None)
        return value


def cached(namespace: str, key: Hashable) -> bool:
    """Whether ``key`` is in the memo now (no computation)."""
    store = _store()
    with store.lock:
        return key in store.values.get(namespace, {})


def clear(namespace: str | None = None) -> None:
    store = _store()
    with store.lock:
        if namespace is None:
            store.values.clear()
        else:
            store.values.pop(namespace, None)
