"""Long work in the dashboard: every view function a page needs goes through the server's job queue
(`locality_core.views.jobs`), so that it survives the tab, is shared by every session that asks for it, and shows
its progress and time left wherever it is awaited.

Glossary
    result      ``result(task, slot)``: the task's result; at once when it is computed, else its job (started,
                or attached to when another session or the warm-up runs it) with a progress bar in ``slot``
                until it is done. Closing the tab stops the waiting, never the job
    warm-up     the talk plan (`locality_core.views.plan`) queued behind everything a person asks for, once per
                server process: by `serve.py`'s start-up hook as soon as the server starts, else (``streamlit
                run app.py``) at the first page view. $LOCALITY_WARMUP=0 turns it off
"""

from __future__ import annotations

import sys
import threading
import time

import streamlit as st

from locality_core import settings
from locality_core.store.cache import default_cache
from locality_core.views.catalogue import Task
from locality_core.views.jobs import BACKGROUND, INTERACTIVE, Job, JobQueue, server_queue
from locality_core.views.plan import plan, warmup_datasets

POLL_S = 0.4


class JobFailed(RuntimeError):
    """A job ended with an error; ``kind`` is the exception's class name (a user-fixable one keeps its message)."""

    def __init__(self, job: Job):
        self.kind, _, message = (job.error or "").partition(": ")
        super().__init__(message or job.error or "failed")


_warmup_started = threading.Event()


def start_warmup(queue: JobQueue | None = None) -> bool:
    """Queue the talk plan once per process, behind anything a person asks for; planning (which loads the lecture
    data sets) runs in a thread of its own. Returns whether this call started it."""
    if _warmup_started.is_set() or not settings.WARMUP.flag():
        return False
    _warmup_started.set()
    queue = queue or server_queue()
    if queue.mode == "inline":  # headless page tests: nothing runs in the background
        return False

    def queue_plan() -> None:
        try:
            datasets = warmup_datasets()
            if datasets != []:
                queue.submit_all(plan(datasets), BACKGROUND)
        except Exception as exc:  # the warm-up is a convenience: the pages compute what they need without it
            print(f"warning: the warm-up could not be planned ({type(exc).__name__}: {exc}); each page computes "
                  "its views when they are first opened.", file=sys.stderr)

    threading.Thread(target=queue_plan, name="jobs-plan", daemon=True).start()
    return True


def queue() -> JobQueue:
    q = server_queue()
    start_warmup(q)
    return q


def start(task: Task) -> Job | None:
    """Start (or join) the job of ``task`` without waiting: None when it is computed already, or in inline mode
    (where `result` computes it)."""
    q = queue()
    if q.mode == "inline" or is_ready(task):
        return None
    return q.submit(task, INTERACTIVE)


def running(task: Task) -> Job | None:
    """The job of ``task`` when this server runs it or has it queued (a person or the warm-up asked), else None."""
    job = queue().job(task.key)
    return job if job is not None and job.state in ("queued", "running") else None


def show_progress(slot, job: Job, what: str | None = None) -> None:
    slot.progress(job.fraction, text=wait_text(queue(), job, what))


def result(task: Task, slot=None, *, what: str | None = None, on_miss=None):
    """The result of ``task``; when it must be computed, ``on_miss()`` runs first (a page's quick preview), then its
    job's progress is shown in ``slot`` (a new st.empty() by default) until it is done. Raises `JobFailed` when
    the job fails. In inline mode the task runs here, each cache entry looked up once."""
    q = queue()
    if q.mode == "inline":
        return task.run(on_miss=on_miss)
    if task.ready():
        return task.run()
    if on_miss is not None:
        on_miss()
    job = q.submit(task, INTERACTIVE)
    slot = st.empty() if slot is None else slot
    try:
        while not job.done_event.wait(POLL_S):
            slot.progress(job.fraction, text=wait_text(q, job, what))
    finally:
        slot.empty()
    if job.state == "failed":
        raise JobFailed(job)
    return task.run()  # a cache hit now


def wait_text(q: JobQueue, job: Job, what: str | None = None) -> str:
    """One line for a progress bar: what runs, for how long, and how long it has left (or what it waits for)."""
    title = what or job.task.title
    if job.state == "queued":
        ahead = q.position(job)
        return f"{title}: waiting for {ahead} job{'s' if ahead != 1 else ''} ahead of it (shared by every session)"
    left = job.time_left()
    eta = f", about {left:.0f} s left" if left is not None else ""
    who = "the warm-up" if job.priority == BACKGROUND else "the server"
    now = f" Now: {job.text}." if job.text else ""
    return (f"{title}.{now} Computed by {who} for {time.time() - (job.started or time.time()):.0f} s{eta}; it goes "
            "on if you leave this page.")


def queue_counts() -> dict:
    """The server's jobs at a glance: total, done, failed, and the title of the one running (or "")."""
    jobs = queue().jobs()
    running = next((j.task.title for j in jobs if j.state == "running"), "")
    return {"total": len(jobs), "done": sum(j.state == "done" for j in jobs),
            "failed": sum(j.state == "failed" for j in jobs), "running": running}


def cache_warning() -> str | None:
    """One sentence when results cannot be kept on disk (an unusable cache folder or home): what to do."""
    if not default_cache().memory_only:
        return None
    return ("The cache folder cannot be used (see the server's log), so results are kept in this server's memory "
            "only and computed again after a restart: point $LOCALITY_CACHE_DIR at a writable folder.")


def is_ready(task: Task) -> bool:
    try:
        return task.ready()
    except Exception:  # a data set that cannot load: the page's own call shows why
        return False
