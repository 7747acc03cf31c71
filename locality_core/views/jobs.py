"""Long work as shared jobs that belong to the server, not to a page's script run.

Glossary
    job          one `Task` being computed, keyed by ``task.key``: whoever asks for the same key (another browser
                 session, the warm-up) attaches to it and sees its progress and time left; closing a tab cancels
                 nothing; the result lands in the disk cache, where the page's own call then finds it
    interactive  a job a person waits for: run by a worker thread inside the server process, first come first
                 served, on every core that other processes leave free when it starts (`threads_for_now`)
    background   the warm-up: the talk plan (`views.plan`), run by a worker process at lower CPU priority
                 (nice 10) on the cores other processes leave free, while nobody waits; while an interactive job
                 is queued or running, no new background job starts (the one running finishes at its lower
                 priority). A background job a person asks for is promoted to interactive if it has not started
    modes        "process" (a background worker process: the default with a disk cache), "thread" (every job in
                 the server process: the fallback when the cache folder cannot be used, so that results in the
                 in-memory cache are seen by the pages), "inline" (a job runs in the caller's thread at once: the
                 CLI and headless page tests)
    record       ``jobs.json`` in the cache folder: per task key, the CPU seconds and wall seconds of its last
                 run and its last error; `locality precompute --plan` prints them. Unwritable: not recorded

A background worker is `python -m locality_core.views.worker` with pipes: tasks as JSON lines in, events
(progress, done, failed) as JSON lines out; it ends with the server.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from locality_core import settings
from locality_core.store.cache import default_cache, default_cache_dir
from locality_core.views.catalogue import Task

INTERACTIVE, BACKGROUND = 0, 1
BACKGROUND_NICE = 10
PROGRESS_EVERY_S = 0.25  # a worker reports progress at most this often


@dataclass
class Job:
    task: Task
    priority: int
    order: int
    state: str = "queued"           # queued, running, done, failed
    fraction: float = 0.0
    text: str = ""
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    cpu_s: float | None = None
    where: str = ""                 # "server" or "worker" once started
    done_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def key(self) -> str:
        return self.task.key

    @property
    def finished_ok(self) -> bool:
        return self.state == "done"

    def elapsed(self) -> float:
        return (self.finished or time.time()) - (self.started or time.time())

    def time_left(self) -> float | None:
        """Seconds left, from the time so far and the fraction done (None until a few per cent are done)."""
        if self.state != "running" or self.fraction < 0.03:
            return None
        return self.elapsed() / self.fraction * (1.0 - self.fraction)

    def describe(self) -> str:
        """What a page shows while it waits: the task, where it stands, the time left."""
        if self.state == "queued":
            return f"{self.task.title}: queued"
        if self.state == "failed":
            return f"{self.task.title}: failed ({self.error})"
        left = self.time_left()
        eta = f", about {left:.0f} s left" if left is not None else ""
        return f"{self.task.title}: {self.text or 'running'} ({self.fraction:.0%}, {self.elapsed():.0f} s{eta})"


# ---------------------------------------------------------------- the record of past runs

def record_path() -> Path:
    return default_cache_dir() / "jobs.json"


def read_record() -> dict[str, dict]:
    """{task key: {"cpu_s", "wall_s", "when", "error"}} of past runs; {} when there is none or it is unreadable."""
    try:
        record = json.loads(record_path().read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(key: str, **entry) -> None:
    """Add one run to the record (under a file lock: several servers and CLI runs share it); an unusable cache
    folder only loses the record."""
    path = record_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = read_record()
            record[key] = {**record.get(key, {}), **entry, "when": time.time()}
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(path)
    except OSError:
        pass


def cpu_seconds() -> float:
    """CPU seconds of this process so far, all threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_ticks() -> tuple[int, int] | None:
    """(idle, total) clock ticks of every core since boot, from /proc/stat's "cpu" line; None without it."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return ticks[3] + ticks[4], sum(ticks[:8])  # idle + iowait; user ... steal (guest is inside user)


def cores_free(window_s: float = 0.15, *, ticks: Callable[[], tuple[int, int] | None] = _cpu_ticks,
               own: Callable[[], float] = cpu_seconds, sleep: Callable[[float], None] = time.sleep,
               cores: int | None = None) -> float | None:
    """Cores that no other process used over the next ``window_s`` seconds: idle ones, plus what this process
    itself used (it is the one about to compute). None where the kernel's counters cannot be read."""
    cores = cores or os.cpu_count() or 1
    before, mine = ticks(), own()
    sleep(window_s)
    after, mine = ticks(), own() - mine
    if before is None or after is None or after[1] <= before[1]:
        return None
    idle = cores * (after[0] - before[0]) / (after[1] - before[1])
    return min(float(cores), idle + mine / window_s)


def threads_for_now(most: int, free: float | None = None) -> int:
    """Torch threads for a job about to start: at most ``most``, one per core that other processes leave free
    (``free``: `cores_free()` when not given), at least one. A torch thread that waits for a busy core stalls the
    others at every barrier, and they spin meanwhile: beside one CPU-bound process on 2 cores, 2 threads took
    42.5 CPU s for a Fashion-MNIST UNet field that takes 5.5 alone, and 17.9 for 8 UNet samples that take 0.8."""
    free = cores_free() if free is None else free
    return most if free is None else max(1, min(most, int(free + 0.3)))


def use_threads(n: int) -> None:
    """Run the next computations of this process on ``n`` threads: torch's, and numpy's BLAS (the statistics'
    eigendecomposition), which keeps its own pool."""
    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")


def run_task(task: Task, progress: Callable[[float, str], None] | None = None) -> tuple[float, float]:
    """Run ``task`` here (skipped when already computed); returns (CPU s, wall s) and records them."""
    if task.ready():
        return 0.0, 0.0
    cpu, wall = cpu_seconds(), time.perf_counter()
    try:
        task.run(progress=progress)
    except Exception as exc:
        write_record(task.key, error=f"{type(exc).__name__}: {exc}")
        raise
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    write_record(task.key, cpu_s=round(cpu, 2), wall_s=round(wall, 2), error=None)
    return cpu, wall


# ---------------------------------------------------------------- the queue

class JobQueue:
    """Jobs by key, one interactive worker thread, one background worker (a process, or a thread)."""

    def __init__(self, mode: str = "process", threads: int | None = None):
        if mode not in ("process", "thread", "inline"):
            raise ValueError(f"job mode must be process, thread or inline, got {mode!r}")
        self.mode = mode
        self.threads = threads or os.cpu_count() or 1
        self._lock = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._order = 0
        self._closed = False
        self._workers: list[threading.Thread] = []
        self._process: _WorkerProcess | None = None
        if mode != "inline":
            self._start_thread(self._serve, "jobs-interactive", roles=(INTERACTIVE,))
            if mode == "thread":
                self._start_thread(self._serve, "jobs-background", roles=(BACKGROUND,))
            else:
                self._start_thread(self._serve_process, "jobs-background-process", roles=(BACKGROUND,))

    def _start_thread(self, target, name: str, roles: tuple[int, ...]) -> None:
        thread = threading.Thread(target=target, args=(roles,), name=name, daemon=True)
        thread.start()
        self._workers.append(thread)

    # ------------------------------------------------------------ asking

    def submit(self, task: Task, priority: int = INTERACTIVE) -> Job:
        """The job of ``task``: the one running or queued under its key (promoted to ``priority`` if it waits at
        a lower one), or a new one. In inline mode it is run here and now."""
        with self._lock:
            job = self._jobs.get(task.key)
            if job is not None and job.state in ("queued", "running"):
                if job.state == "queued" and priority < job.priority:
                    job.priority = priority
                    self._lock.notify_all()
                return job
            self._order += 1
            job = self._jobs[task.key] = Job(task, priority, self._order)
            self._lock.notify_all()
        if self.mode == "inline":
            self._run_here(job)
        return job

    def submit_all(self, tasks: Iterable[Task], priority: int = BACKGROUND) -> list[Job]:
        return [self.submit(task, priority) for task in tasks]

    def job(self, key: str) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def jobs(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: (j.state != "running", j.priority, j.order))

    def position(self, job: Job) -> int:
        """How many jobs run or wait before ``job`` in its queue."""
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.state in ("queued", "running") and j is not job
                       and (j.state == "running" and j.priority == job.priority
                            or j.state == "queued" and (j.priority, j.order) < (job.priority, job.order)))

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        return job.done_event.wait(timeout)

    def busy(self) -> bool:
        """Whether anyone waits: an interactive job queued or running."""
        with self._lock:
            return any(j.priority == INTERACTIVE and j.state in ("queued", "running") for j in self._jobs.values())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._process is not None:
            self._process.stop()

    # ------------------------------------------------------------ working

    def _next(self, roles: tuple[int, ...]) -> Job | None:
        """The next job for a worker of ``roles`` (under the lock): interactive jobs first; a background job only
        while nobody waits."""
        queued = sorted((j for j in self._jobs.values() if j.state == "queued"), key=lambda j: (j.priority, j.order))
        for job in queued:
            if job.priority in roles and (job.priority == INTERACTIVE or not self.busy()):
                return job
        return None

    def _take(self, roles: tuple[int, ...]) -> Job | None:
        with self._lock:
            while not self._closed:
                job = self._next(roles)
                if job is not None:
                    job.state, job.started = "running", time.time()
                    return job
                self._lock.wait(1.0)
        return None

    def _progress(self, job: Job) -> Callable[[float, str], None]:
        def report(fraction: float, text: str) -> None:
            job.fraction, job.text = min(max(float(fraction), 0.0), 1.0), text
        return report

    def _finish(self, job: Job, cpu_s: float | None = None, error: str | None = None) -> None:
        with self._lock:
            job.finished, job.cpu_s, job.error = time.time(), cpu_s, error
            job.state = "failed" if error else "done"
            job.fraction = 1.0 if not error else job.fraction
            job.done_event.set()
            self._lock.notify_all()

    def _run_here(self, job: Job) -> None:
        job.state, job.started, job.where = "running", time.time(), "server"
        try:
            cpu, _ = run_task(job.task, self._progress(job))
        except Exception as exc:
            self._finish(job, error=f"{type(exc).__name__}: {exc}")
        else:
            self._finish(job, cpu_s=cpu)

    def _serve(self, roles: tuple[int, ...]) -> None:
        while (job := self._take(roles)) is not None:
            job.where = "server"
            if not job.task.ready():
                use_threads(threads_for_now(self.threads))
            try:
                cpu, _ = run_task(job.task, self._progress(job))
            except Exception as exc:  # a job's failure is its own: the worker goes on
                self._finish(job, error=f"{type(exc).__name__}: {exc}")
            else:
                self._finish(job, cpu_s=cpu)

    def _serve_process(self, roles: tuple[int, ...]) -> None:
        while (job := self._take(roles)) is not None:
            job.where = "worker"
            if self._process is None or not self._process.alive():
                try:
                    self._process = _WorkerProcess(self.threads)
                except OSError as exc:
                    self._finish(job, error=f"the background worker could not start ({exc})")
                    continue
            outcome = self._process.run(job.task, self._progress(job))
            self._finish(job, cpu_s=outcome.get("cpu_s"), error=outcome.get("error"))


class _WorkerProcess:
    """`python -m locality_core.views.worker` at nice 10: tasks in on stdin, events out on stdout."""

    def __init__(self, threads: int):
        env = {**os.environ, settings.WARMUP_PARENT.name: str(os.getpid()),
               "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        log = subprocess.DEVNULL
        if not default_cache().memory_only:
            try:
                default_cache_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
                log = open(default_cache_dir() / "worker.log", "ab")  # noqa: SIM115 (the child's, kept open)
            except OSError:
                log = subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "locality_core.views.worker", str(threads),
                                      str(BACKGROUND_NICE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=log, env=env, text=True, bufsize=1)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, task: Task, progress: Callable[[float, str], None]) -> dict:
        """Send one task, relay its progress, return its outcome {"cpu_s"} or {"error"}."""
        try:
            self.proc.stdin.write(task.to_json() + "\n")
            self.proc.stdin.flush()
            for line in self.proc.stdout:
                event = json.loads(line)
                if event["event"] == "progress":
                    progress(event["fraction"], event["text"])
                elif event["event"] in ("done", "failed"):
                    return event
        except (OSError, ValueError) as exc:
            return {"error": f"the background worker stopped ({exc})"}
        return {"error": f"the background worker ended (exit status {self.proc.wait()})"}

    def stop(self) -> None:
        if self.alive():
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


# ---------------------------------------------------------------- the server's queue

_queue: JobQueue | None = None
_queue_lock = threading.Lock()


def server_mode() -> str:
    """"process" with a usable disk cache, else "thread" (results in memory must be computed in this process);
    $LOCALITY_JOBS overrides ("inline" computes in the page's own script run, as headless tests need)."""
    chosen = settings.JOBS.text()
    if chosen in ("process", "thread", "inline"):
        return chosen
    return "thread" if default_cache().memory_only else "process"


def server_queue() -> JobQueue:
    """The process-wide queue (created on first use, in the mode `server_mode` gives)."""
    global _queue
    with _queue_lock:
        if _queue is None:
            _queue = JobQueue(server_mode())
        return _queue
