"""The background worker: ``python -m locality_core.views.worker THREADS NICE``, started by the server's job
queue (`views.jobs`). Reads tasks as JSON lines on stdin, runs each (`jobs.run_task`: skipped when already
computed), writes events as JSON lines on stdout: {"event": "progress", "fraction", "text"} at most every
`jobs.PROGRESS_EVERY_S`, then {"event": "done", "cpu_s"} or {"event": "failed", "error"}. Each task runs on as
many threads (torch's and numpy's BLAS) as other processes leave cores free when it starts
(`jobs.threads_for_now`), at most THREADS.
Ends when stdin closes or the server (`$LOCALITY_WARMUP_PARENT`) ends. Anything else the library prints goes to
stderr (the log)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import torch

from locality_core import settings
from locality_core.views.catalogue import Task
from locality_core.views.jobs import PROGRESS_EVERY_S, run_task, threads_for_now, use_threads


def exit_with_parent(pid: int, every: float = 5.0) -> None:
    """End this process once process ``pid`` (the server) has ended, even if it was killed."""
    def watch():
        while os.getppid() == pid:
            time.sleep(every)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="worker-parent-watch").start()


def main(argv: list[str]) -> int:
    threads, nice = int(argv[0]), int(argv[1])
    events = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints go to the log, never into the events
    if nice:
        os.nice(nice)
    torch.set_num_threads(threads)
    if settings.WARMUP_PARENT.text().isdigit():
        exit_with_parent(int(settings.WARMUP_PARENT.text()))

    def send(**event) -> None:
        events.write(json.dumps(event) + "\n")

    last = [0.0]

    def progress(fraction: float, text: str) -> None:
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S:
            last[0] = time.monotonic()
            send(event="progress", fraction=float(fraction), text=str(text))

    for line in sys.stdin:
        task = Task.from_json(line)
        if not task.ready():  # as many threads as other processes leave cores free now
            use_threads(threads_for_now(threads))
        try:
            cpu, _ = run_task(task, progress)
        except Exception as exc:  # reported to the server, which marks the job failed and goes on
            send(event="failed", error=f"{type(exc).__name__}: {exc}")
        else:
            send(event="done", cpu_s=round(cpu, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
