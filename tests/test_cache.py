"""The disk cache: hits, refusal of pickles, recovery from damage, one computation across processes."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

from locality_core.store.cache import ArrayCache, decode, encode


def test_roundtrip_and_hit(tmp_path):
    cache = ArrayCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(5.0), "b": np.eye(2, dtype=np.float32)}

    first = cache.get_or_compute("k", compute)
    second = cache.get_or_compute("k", compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(second["a"], np.arange(5.0))
    assert second["b"].dtype == np.float32 and first.keys() == second.keys()
    created = ArrayCache(tmp_path / "new").directory  # a folder the cache creates is private to its owner
    assert (created.stat().st_mode & 0o777) == 0o700


def test_pickled_entry_is_refused_and_recomputed(tmp_path):
    cache = ArrayCache(tmp_path)
    cache._values.set("k", {"payload": "a pickled dict"})  # diskcache pickles non-bytes values
    assert cache.get("k") is None
    assert cache.get_or_compute("k", lambda: {"x": np.ones(2)})["x"].sum() == 2


def test_corrupted_and_truncated_entries_are_recomputed(tmp_path):
    cache = ArrayCache(tmp_path)
    big = {"x": np.arange(100_000, dtype=np.float64)}  # large enough to live in its own file
    cache.set("k", big)
    files = [p for p in (tmp_path / "values").rglob("*.val")]
    assert files, "expected the entry to be stored as a file"
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])  # truncate
    assert cache.get("k") is None
    assert cache.get_or_compute("k", lambda: big)["x"][-1] == 99_999
    blob = bytearray(encode(big))
    blob[-10] ^= 0xFF  # flip a bit in the payload
    with pytest.raises(ValueError, match="checksum"):
        decode(bytes(blob))


def _worker(directory: str, log: str, out: str) -> None:
    cache = ArrayCache(directory)

    def compute():
        with open(log, "a") as f:
            f.write("computed\n")
        time.sleep(1.0)
        return {"v": np.array([42.0])}

    value = cache.get_or_compute("shared", compute)
    Path(out).write_text(str(float(value["v"][0])))


def test_concurrent_processes_compute_once(tmp_path):
    log = tmp_path / "log.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "c"), str(log), str(tmp_path / f"out{i}")))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert log.read_text().count("computed") == 1
    assert all((tmp_path / f"out{i}").read_text() == "42.0" for i in range(3))


def test_kept_entries_come_from_memory_and_on_miss_hears_misses_only(tmp_path, monkeypatch):
    cache = ArrayCache(tmp_path)
    misses = []
    first = cache.get_or_compute("k", lambda: {"a": np.arange(3.0)}, keep=True, on_miss=lambda: misses.append("k"))
    assert misses == ["k"]
    with monkeypatch.context() as m:
        m.setattr(ArrayCache, "get", lambda self, key: pytest.fail("read the disk for a kept entry"))
        again = cache.get_or_compute("k", lambda: pytest.fail("computed twice"), keep=True,
                                     on_miss=lambda: misses.append("again"))
        assert again["a"] is first["a"] and "k" in cache
    assert misses == ["k"]
    assert ArrayCache(tmp_path).get("k")["a"][-1] == 2  # on disk too: another process reads it there
    cache.delete("k")  # gone from memory as well
    assert "k" not in cache
    assert cache.get_or_compute("k", lambda: {"a": np.zeros(1)}, keep=True)["a"].tolist() == [0.0]


def test_statistics_are_read_from_disk_once_per_process(tmp_path, monkeypatch):
    """Every page reads the statistics on every rerun: after the first call they come from memory."""
    from locality_core.data import load_dataset
    from locality_core.stats.covariance import get_stats

    data = load_dataset("grf", n_train=50, n_test=4)
    cache = ArrayCache(tmp_path)
    first = get_stats(data, cache=cache)
    monkeypatch.setattr(ArrayCache, "get", lambda self, key: pytest.fail("read the statistics from disk again"))
    second = get_stats(data, cache=cache)
    assert second.cov is first.cov and second.fingerprint == data.fingerprint


def test_bounded_cache_evicts_the_least_recently_used_beyond_the_budget(monkeypatch):
    """The in-memory caches (data sets, denoisers, kept entries, the fallback, the dashboard's memos): least
    recently used out first, over all caches, once their distinct bytes pass the budget; an entry larger than the
    whole budget is not kept."""
    from locality_core.store.memory import BoundedCache, MemoryBudget

    monkeypatch.setenv("LOCALITY_MEMORY_BUDGET_GB", str((3 * 8000 + 2000) / 2**30))
    budget = MemoryBudget()  # of its own: the process's caches hold entries of other tests
    first, second = BoundedCache("first", budget=budget), BoundedCache("second", budget=budget)
    first.set("a", np.zeros(1000))
    second.set("b", np.zeros(1000))
    first.set("c", np.zeros(1000))
    assert first.get("a") is not None                      # "a" is now the most recently used
    second.set("d", np.zeros(1000))                        # 4 x 8000 bytes > the room: "b", the oldest, goes
    assert [k for k, c in zip("abcd", (first, second, first, second)) if c.get(k) is not None] == ["a", "c", "d"]
    shared = np.zeros(1000)
    first.set("e", shared)
    before = budget.held()
    second.set("f", shared[10:])                           # a view of "e": no byte more
    assert budget.held() == before and second.get("f") is not None
    assert not first.set("huge", np.zeros(10**6)) and "huge" not in first
