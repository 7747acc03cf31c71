"""Faults of the disk cache and its locks: damaged files, read-only folders, owners killed mid-computation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import import_tiny

from locality_core.store import locks
from locality_core.store.cache import ArrayCache, encode

ROOT = Path(__file__).resolve().parent.parent
VALUE = {"x": np.arange(6.0)}


def _warm(folder: Path) -> None:
    ArrayCache(folder).set("k", VALUE)


def _scribble(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(os.urandom(4096))


@pytest.mark.parametrize("db", ["values", "locks"])
def test_damaged_sqlite_file_is_moved_aside(tmp_path, db):
    _warm(tmp_path)
    ArrayCache(tmp_path).get_or_compute("cold", lambda: VALUE)  # leaves something in locks/ as well
    old_locks = tmp_path / "locks" / "cache.db"  # the lock database of earlier versions, if any
    old_locks.write_bytes(b"SQLite format 3\0" + bytes(8192))
    _scribble(tmp_path / db / "cache.db")
    warnings = []
    cache = ArrayCache(tmp_path, warn=warnings.append)
    assert cache.get_or_compute("k", lambda: {"x": np.ones(2)})["x"].sum() > 0
    assert not cache.memory_only
    if db == "values":
        assert len(warnings) == 1 and "damaged" in warnings[0] and "cache.db" in warnings[0]
        assert list((tmp_path / "values").glob("cache.db.damaged-*"))
    assert ArrayCache(tmp_path, warn=warnings.append).get("k") is not None  # healed for the next process


def _read_only_as_root(monkeypatch) -> None:
    """Root ignores file modes: make sqlite answer as it does for everyone else on a read-only folder."""
    import sqlite3

    import locality_core.store.cache as cache_module

    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(cache_module.diskcache, "Cache", refuse)


BIG = {"x": np.arange(10_000.0)}  # 80 kB: diskcache keeps it in a value file beside the database


def test_a_read_only_cache_folder_serves_its_entries(tmp_path, monkeypatch):
    """A cache prepared before a class and mounted read-only: its entries are hits (nothing recomputed), what is
    new is computed and kept in memory, and that is said once."""
    _warm(tmp_path / "c")
    ArrayCache(tmp_path / "c").set("big", BIG)
    if os.geteuid() == 0:
        _read_only_as_root(monkeypatch)
    for p in [tmp_path / "c", *(tmp_path / "c").rglob("*")]:
        p.chmod(0o500 if p.is_dir() else 0o400)
    try:
        warnings = []
        cache = ArrayCache(tmp_path / "c", warn=warnings.append)
        assert cache.read_only and cache.memory_only  # hits from the folder, new results in memory
        never = lambda: pytest.fail("a hit of the read-only folder was computed again")  # noqa: E731
        assert cache.get_or_compute("k", never)["x"][-1] == 5
        assert cache.get_or_compute("big", never)["x"][-1] == 9999
        calls = []
        assert cache.get_or_compute("new", lambda: calls.append(1) or {"y": np.ones(3)})["y"].sum() == 3
        assert cache.get_or_compute("new", lambda: calls.append(1) or {"y": np.ones(3)})["y"].sum() == 3
        assert calls == [1] and "new" not in ArrayCache(tmp_path / "c", warn=lambda m: None)  # memory only
        assert len(warnings) == 1 and "read-only" in warnings[0] and "memory" in warnings[0]
    finally:
        for p in [tmp_path / "c", *(tmp_path / "c").rglob("*")]:
            p.chmod(0o700)


def test_a_full_disk_keeps_serving_its_hits(tmp_path, monkeypatch):
    import sqlite3

    cache = ArrayCache(tmp_path, warn=(warnings := []).append)
    cache.set("k", VALUE)
    cache.set("big", BIG)

    def full(key, blob):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(cache._values, "set", full)
    assert cache.get("k")["x"][-1] == 5 and cache.get("big")["x"][-1] == 9999  # hits kept
    for key in ("new", "newer"):
        assert cache.get_or_compute(key, lambda: {"y": np.ones(2)})["y"].sum() == 2
    assert cache.get("new") is not None and not cache.memory_only
    assert cache.get("k")["x"][-1] == 5 and cache.get("big")["x"][-1] == 9999  # and still, after the failures
    assert len(warnings) == 1 and "full" in warnings[0]
    monkeypatch.undo()
    cache.set("later", VALUE)  # space again: written to the folder
    assert "later" in ArrayCache(tmp_path, warn=lambda m: None)


def test_a_moved_aside_database_takes_its_value_files_along(tmp_path):
    cache = ArrayCache(tmp_path)
    for i in range(3):
        cache.set(f"big{i}", BIG)
    del cache
    assert len(list((tmp_path / "values").rglob("*.val"))) == 3
    time.sleep(0.05)
    _scribble(tmp_path / "values" / "cache.db")
    warnings = []
    fresh = ArrayCache(tmp_path, warn=warnings.append)
    assert not list((tmp_path / "values").rglob("*.val")), "orphaned value files left on disk"
    assert len(warnings) == 1 and "3 value files" in warnings[0]
    fresh.set("big", BIG)
    assert fresh.get("big")["x"][-1] == 9999 and len(list((tmp_path / "values").rglob("*.val"))) == 1


def test_values_path_that_is_a_file_falls_back_to_memory(tmp_path):
    (tmp_path / "values").write_text("not a folder")
    warnings = []
    cache = ArrayCache(tmp_path, warn=warnings.append)
    assert cache.memory_only and cache.get_or_compute("k", lambda: VALUE)["x"][-1] == 5
    assert len(warnings) == 1 and str(tmp_path) in warnings[0]


def test_existing_shared_folder_keeps_its_mode(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    warnings = []
    ArrayCache(shared, warn=warnings.append).set("k", VALUE)
    assert shared.stat().st_mode & 0o777 == 0o775
    assert len(warnings) == 1 and "writable by other users" in warnings[0]  # said, not silently used
    assert (shared / "locks").stat().st_mode & 0o077 == 0
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    warnings.clear()
    ArrayCache(private, warn=warnings.append).set("k", VALUE)
    assert warnings == []


def test_tampered_entry_with_a_valid_checksum_is_served(tmp_path):
    """The documented limit: the checksum catches damage, not deliberate rewriting by someone with write access."""
    cache = ArrayCache(tmp_path)
    cache.set("k", VALUE)
    cache._values.set("k", encode({"x": np.zeros(6)}))  # what an attacker with write access could do
    assert cache.get("k")["x"].sum() == 0


def test_stale_heartbeat_is_taken_over(tmp_path):
    path = locks.lock_path(tmp_path, "name")
    notes = []
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from locality_core.store import locks\n"
        "with locks.owned_lock(sys.argv[1], 'name', heartbeat_s=3600):\n"
        "    print('held', flush=True); time.sleep(60)\n"), str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        owner = json.loads(path.read_text())
        owner["heartbeat"] -= 1000  # as if the holder hung long ago
        path.write_text(json.dumps(owner))
        start = time.time()
        with locks.owned_lock(tmp_path, "name", stale_s=100, notify=notes.append):
            assert json.loads(path.read_text())["pid"] == os.getpid()
        assert time.time() - start < 5
        assert any("breaking" in n and str(holder.pid) in n for n in notes)
    finally:
        holder.kill()
        holder.wait()


def test_two_waiters_break_a_stale_lock_once(tmp_path):
    """Both waiters read the same stale owner; the first breaks the lock and takes a fresh file. The second must
    then find a live owner and leave that file alone (unlinking it would let two processes hold the lock)."""
    path = locks.lock_path(tmp_path, "name")
    path.write_text(json.dumps({"pid": 1, "host": "h", "started": 0.0, "heartbeat": time.time() - 1000}))
    seen_by_second = locks.read_owner(path)
    notes = []
    assert locks._break_stale(path, 100, notes.append)  # the first waiter breaks it ...
    fd = locks._try_lock(path)  # ... locks a fresh file and records itself
    assert fd is not None
    locks._write_owner(fd, {"pid": os.getpid(), "heartbeat": time.time()})
    inode = os.stat(path).st_ino
    try:
        assert locks._stale(seen_by_second, 100)  # what the second waiter read before the first broke it
        assert not locks._break_stale(path, 100, notes.append)
        assert os.stat(path).st_ino == inode and locks._try_lock(path) is None
        assert sum("breaking" in n for n in notes) == 1
    finally:
        os.close(fd)


SLOW_PRECOMPUTE = """
import pathlib, sys, time
import locality_core.stats.covariance as stats
def slow(*args, **kwargs):
    pathlib.Path(sys.argv[1]).write_text("started")
    time.sleep(120)
stats.compute_stats = slow
from locality_core.cli.main import main
main(["precompute", "user:tiny"])
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_precompute_then_a_rerun_finishes(tmp_path, monkeypatch, sig):
    env = {**os.environ, "LOCALITY_CACHE_DIR": str(tmp_path / "cache"), "LOCALITY_DATA_DIR": str(tmp_path / "data"),
           "OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("LOCALITY_DATA_DIR", env["LOCALITY_DATA_DIR"])
    import_tiny(tmp_path / "data", side=6)
    started = tmp_path / "started"
    victim = subprocess.Popen([sys.executable, "-c", SLOW_PRECOMPUTE, str(started)], cwd=ROOT, env=env,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert started.exists(), "the precompute did not start"
    victim.send_signal(sig)
    victim.wait(30)
    rerun = subprocess.run([sys.executable, "-m", "locality_core", "precompute", "user:tiny"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    assert "statistics cached" in rerun.stdout
    if sig == signal.SIGKILL:
        assert "took over" in rerun.stderr


def test_concurrent_threads_compute_a_shared_result_once(tmp_path):
    """Sessions of one server are threads: the same expensive result is computed once and shared."""
    from concurrent.futures import ThreadPoolExecutor

    cache = ArrayCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.3)
        return {"v": np.arange(3.0)}

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: cache.get_or_compute("same-pixel", compute), range(6)))
    assert len(calls) == 1 and all(r["v"][-1] == 2 for r in results)


def _in_thread(action, timeout: float = 10.0):
    """``action()`` in a daemon thread: its result or error, or TimeoutError when it hangs (a leaked lock)."""
    import threading

    outcome = {}

    def run():
        try:
            outcome["value"] = action()
        except BaseException as exc:  # reported to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"still waiting after {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.mark.parametrize("record", [
    {"pid": 1, "host": "h", "started": 0.0, "heartbeat": "abc"},
    {"pid": 1, "host": "h", "started": 0.0, "heartbeat": None},
    {"pid": 1},
    {"pid": 1, "heartbeat": [1, 2], "started": {"a": 1}, "host": 7, "what": None},
    {"pid": 1, "heartbeat": 1e400},
    [1, 2, 3],
    "a string",
    None,
], ids=["heartbeat-abc", "heartbeat-null", "pid-only", "wrong-types", "infinite", "list", "string", "null"])
def test_a_crafted_owner_record_never_leaks_the_lock(tmp_path, record):
    """A record left in a lock file (its owner died) that is not what the library writes: the lock is taken over
    with a note, and a later attempt in the same process gets it too, at once."""
    path = locks.lock_path(tmp_path, "name")
    path.write_text(json.dumps(record))
    notes = []

    def take():
        with locks.owned_lock(tmp_path, "name", notify=notes.append):
            return json.loads(path.read_text())["pid"]

    assert _in_thread(take) == os.getpid()
    path.write_text(json.dumps(record))  # the same garbage again, for the second attempt
    assert _in_thread(take) == os.getpid()
    assert all(isinstance(n, str) for n in notes)


def test_an_error_after_the_lock_is_taken_releases_it(tmp_path, monkeypatch):
    def broken(fd, owner):
        raise OSError("disk full")

    monkeypatch.setattr(locks, "_write_owner", broken)
    with pytest.raises(OSError, match="disk full"), locks.owned_lock(tmp_path, "name"):
        pass
    monkeypatch.undo()

    def take():
        with locks.owned_lock(tmp_path, "name"):
            return True

    assert _in_thread(take)


def test_describe_never_raises_on_a_garbage_owner(tmp_path):
    path = locks.lock_path(tmp_path, "x")
    for text in ['{"heartbeat": "abc", "pid": "x"}', "[", "\u00ff\u00fe", '{"started": null}', "1e999"]:
        path.write_text(text)
        assert isinstance(locks._describe(locks.read_owner(path)), str)


COUNTED_PRECOMPUTE = """
import sys, time
import locality_core.stats.covariance as stats
real = stats.compute_stats
def counted(*args, **kwargs):
    with open(sys.argv[1], "a") as log:
        log.write("computed\\n")
    time.sleep(1.0)  # long enough for the others to arrive while it computes
    return real(*args, **kwargs)
stats.compute_stats = counted
from locality_core.cli.main import main
sys.exit(main(["precompute", "user:tiny"]))
"""


@pytest.mark.slow  # 15-40 s: four interpreters with torch at once on two cores
def test_four_processes_doing_the_same_cold_precompute_compute_it_once(tmp_path, monkeypatch):
    """Four `locality precompute` started together on one cold cache: one computes, three wait and read its
    result; all end with the same statistics, and no lock is left held."""
    env = {**os.environ, "LOCALITY_CACHE_DIR": str(tmp_path / "cache"), "LOCALITY_DATA_DIR": str(tmp_path / "data"),
           "OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("LOCALITY_DATA_DIR", env["LOCALITY_DATA_DIR"])
    import_tiny(tmp_path / "data", side=6)
    log = tmp_path / "computed.log"
    procs = [subprocess.Popen([sys.executable, "-c", COUNTED_PRECOMPUTE, str(log)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    assert log.read_text().count("computed") == 1
    traces = {o[0].split("trace ")[1].split(",")[0] for o in outs}
    assert len(traces) == 1, traces
    assert sum("waiting for" in o[1] for o in outs) >= 1  # the others said whom they waited for
    for lock in (tmp_path / "cache" / "locks").glob("*.lock"):
        assert lock.read_text() == ""  # released cleanly: no owner record left
