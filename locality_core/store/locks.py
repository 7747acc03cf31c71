"""Inter-process locks that survive their owner's death: one lock file per name, held with ``flock``.

Glossary
    lock file   ``<folder>/<sha256 of the name>.lock``; while held it records its owner as JSON
    owner       {"pid", "host", "started", "heartbeat", "what"}; ``heartbeat`` is refreshed every
                ``heartbeat_s`` by a daemon thread of the owning process. Read back defensively (`read_owner`):
                a field of the wrong type (a crafted or half-written file) is dropped, never raised on
    dead owner  the kernel drops an ``flock`` when its process exits, SIGKILL included: the next waiter
                gets the lock at once and reports the previous owner it took over from
    stale owner the lock is held but the recorded heartbeat is older than ``stale_s`` (a hung process, or a
                holder on another host of a network file system): the waiter unlinks the lock file, so
                the next holder locks a fresh file, and says so
    break guard ``<hash>.break``, held (briefly, never by a computation) while a waiter re-reads a stale owner
                and unlinks: two waiters that both saw the same stale owner break it once, and the second
                never unlinks the fresh file the first one has just locked

A waiter calls ``notify`` (default: a line on stderr) once when it starts waiting, and once when it takes a
lock over. POSIX only (``fcntl``), like the rest of the project's deployment.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HEARTBEAT_S = 10.0
STALE_S = 120.0
POLL_S = 0.05


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def lock_path(folder: str | Path, name: str) -> Path:
    return Path(folder) / (hashlib.sha256(name.encode()).hexdigest()[:32] + ".lock")


OWNER_FIELDS = {"pid": int, "host": str, "started": float, "heartbeat": float, "what": str}


def _field(value, kind: type):
    """``value`` as ``kind``, or None when it is not one (bools are not numbers; infinities are not times)."""
    if kind is str:
        return value[:200] if isinstance(value, str) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if kind is int:
        return value if isinstance(value, int) else None
    return float(value) if math.isfinite(value) else None


def read_owner(path: Path) -> dict:
    """The owner recorded in a lock file: only the fields of `OWNER_FIELDS` that have the right type; {} when
    there is no record or it is unreadable. Never raises: the file may be anything."""
    try:
        owner = json.loads(path.read_text() or "{}")
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(owner, dict):
        return {}
    fields = {name: _field(owner.get(name), kind) for name, kind in OWNER_FIELDS.items()}
    return {name: value for name, value in fields.items() if value is not None}


def _describe(owner: dict) -> str:
    if not owner:
        return "an unknown process"
    beat = owner.get("heartbeat", owner.get("started"))
    age = f"last heartbeat {time.time() - beat:.0f} s ago" if beat is not None else "no heartbeat recorded"
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} ({owner.get('what', 'a computation')}, {age})"


def _stale(owner: dict, stale_s: float) -> bool:
    beat = owner.get("heartbeat")
    return isinstance(beat, (int, float)) and time.time() - beat > stale_s


def _try_lock(path: Path) -> int | None:
    """An open, exclusively locked descriptor of ``path`` (still the file at ``path``), or None."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    try:  # the file may have been unlinked by a waiter that broke a stale lock: then lock the new one
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


def _write_owner(fd: int, owner: dict) -> None:
    data = json.dumps(owner).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _heartbeat(fd: int, owner: dict, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        owner["heartbeat"] = time.time()
        with contextlib.suppress(OSError):
            _write_owner(fd, owner)


def _break_stale(path: Path, stale_s: float, notify: Callable[[str], None]) -> bool:
    """Unlink ``path`` if its owner is (still) stale, under the break guard; True when this call broke it."""
    guard = os.open(path.with_suffix(".break"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        owner = read_owner(path)  # again, under the guard: another waiter may have broken and re-taken it
        if not _stale(owner, stale_s):
            return False
        notify(f"note: breaking the lock {path.name} of {_describe(owner)}: no heartbeat for more "
               f"than {stale_s:.0f} s.")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return True
    finally:
        os.close(guard)  # closing drops the flock


def _took_over(fd: int, path: Path, notify: Callable[[str], None]) -> dict:
    """The record a previous owner left in the lock just taken (its owner died holding it), said once; on any
    error the lock is released before the error goes up (a leaked descriptor would block this process)."""
    try:
        previous = read_owner(path)
        if previous.get("pid") is not None:
            notify(f"note: took over the lock {path.name} from {_describe(previous)}, which has exited.")
        return previous
    except BaseException:
        os.close(fd)
        raise


def _acquire(path: Path, what: str, stale_s: float, notify: Callable[[str], None]) -> tuple[int, dict]:
    waited = False
    while True:
        fd = _try_lock(path)
        if fd is not None:
            return fd, _took_over(fd, path, notify)
        previous = read_owner(path)
        if _stale(previous, stale_s):
            _break_stale(path, stale_s, notify)
            continue
        if not waited:
            notify(f"note: waiting for {_describe(previous)} to finish {what} (lock {path}).")
            waited = True
        time.sleep(POLL_S)


@contextlib.contextmanager
def owned_lock(folder: str | Path, name: str, what: str = "", *, stale_s: float = STALE_S,
               heartbeat_s: float = HEARTBEAT_S, notify: Callable[[str], None] = _stderr) -> Iterator[Path]:
    """Hold the lock ``name`` in ``folder`` (created if needed) for the duration of the ``with`` block."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder, name)
    fd, _ = _acquire(path, what or name, stale_s, notify)
    stop = threading.Event()
    beat = None
    try:  # from here on, any error (even in writing the record) releases the lock
        now = time.time()
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": now, "heartbeat": now,
                 "what": what or name}
        beat = threading.Thread(target=_heartbeat, args=(fd, owner, stop, heartbeat_s), daemon=True)
        _write_owner(fd, owner)
        beat.start()
        yield path
    finally:
        stop.set()
        if beat is not None and beat.is_alive():
            beat.join()
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # a clean release leaves no owner record behind
        os.close(fd)
