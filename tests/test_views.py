"""The default views: every view function is ready after it runs, the warm-up plan runs them in the order a talk
needs, the job queue shares and orders them, and the pages ask for exactly the cache entries the warm-up fills
(after the plan, every page's default view computes nothing)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from locality_core.denoisers.models import save_weights
from locality_core.denoisers.unet import EDMDenoiser, UNetConfig
from locality_core.store.cache import ArrayCache
from locality_core.views import catalogue, defaults, jobs, plan
from locality_core.views.catalogue import Task
from locality_core.views.jobs import BACKGROUND, INTERACTIVE, JobQueue, run_task
from locality_core.views.refs import DataRef

ROOT = Path(__file__).resolve().parent.parent
SMALL = defaults.Defaults(timesteps=(900, 500, 100), grid_step=14)  # three levels, a 2 x 2 grid: seconds
GRF = DataRef.of("grf", {"n_train": 300, "n_test": 16})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A private cache and model folder, the small defaults, and a tiny untrained UNet for the small GRF."""
    root = tmp_path_factory.mktemp("views")
    mp = pytest.MonkeyPatch()
    mp.setenv("LOCALITY_CACHE_DIR", str(root / "cache"))
    mp.setenv("LOCALITY_MODEL_DIR", str(root / "models"))
    mp.setenv("LOCALITY_FIELD_PRECISION", "float32")
    mp.setattr(defaults, "DEFAULTS", SMALL)
    data = GRF.load()
    torch.manual_seed(0)
    model = EDMDenoiser(UNetConfig(base=8, mults=(1, 2), blocks=1, emb_dim=16, groups=4))
    torch.nn.init.normal_(model.net.conv_out.weight, std=0.05)
    (root / "models" / "grf").mkdir(parents=True)
    save_weights(root / "models" / "grf" / "unet.pt", model.config, model.state_dict(), fingerprint=data.fingerprint,
                 dataset="grf")
    yield root, data
    mp.undo()


def grf_plan() -> list[Task]:
    """The plan of the small GRF (its own options, so not `plan.plan(["grf"])`), every tier."""
    data = GRF.load()
    return list(dict.fromkeys(plan.landing(GRF, data) + plan.slow_samples(GRF, data)
                              + plan.other_experiments(GRF, data, with_alpha=False) + plan.long_views(GRF, data)))


@pytest.fixture(scope="module")
def warmed(world):
    """The whole plan of the small GRF run once (about 20 s): (data, {task key: (CPU s, wall s)})."""
    return world[1], {task.key: run_task(task) for task in grf_plan()}


# ---------------------------------------------------------------- view functions and tasks

def test_task_keys_are_stable_values_and_survive_json():
    a = Task.of("samples", GRF, name="unet", n=8, steps=10, seed=0, options={})
    b = Task.of("samples", GRF, seed=0, steps=10, n=8, name="unet", options={})
    assert a == b and a.key == b.key and hash(a) == hash(b)  # parameters in any order: one job
    c = Task.of("field", GRF.with_transform("inject", strength=1.0, seed=0), name="unet", pixel=[14, 14],
                sigmas=[3.44, 0.34], n=32, seed=0, precision="float32")
    assert Task.from_json(c.to_json()) == c and "W injected" in c.title
    with pytest.raises(ValueError, match="unknown view function"):
        Task.of("no-such-view", GRF)


@pytest.mark.slow
def test_every_view_function_is_ready_after_it_runs_and_then_computes_nothing(warmed, monkeypatch):
    data, _ = warmed
    tasks = grf_plan()
    assert {t.view for t in tasks} >= set(catalogue.VIEWS) - {"trace", "memorisation", "linear_fit"}
    trace = Task.of("trace", GRF, name="unet", image=0, sigmas=SMALL.sigmas, seed=0, precision="float32")
    assert trace.ready()  # the plan's tr J tier computed the bases at every default level
    fit = Task.of("linear_fit", GRF, sigma=1.24, pixel=(3, 4), steps=20, seed=0)
    assert not fit.ready()
    fit.run()
    extra = [trace, fit]
    monkeypatch.setattr(ArrayCache, "set", lambda self, key, arrays: pytest.fail(f"computed again: {key}"))
    for task in tasks + extra:
        assert task.ready(), task.title
        task.run()  # every entry is read back, none computed


@pytest.mark.slow
def test_the_plan_records_cpu_seconds_and_the_cli_prints_them(warmed, capsys):
    _, times = warmed
    record = jobs.read_record()
    computed = [key for key, (cpu, wall) in times.items() if wall > 0]
    assert computed and all(record[key]["cpu_s"] >= 0 and record[key]["wall_s"] > 0 for key in computed)
    from locality_core.cli.main import print_plan

    print_plan(grf_plan())
    out = capsys.readouterr().out
    assert "to do" not in out and "cached" in out and "CPU s" in out.splitlines()[0]


# ---------------------------------------------------------------- the pages read what the warm-up wrote

@pytest.mark.slow
@pytest.mark.parametrize("page", ["pages/sensitivity.py", "pages/samples.py", "pages/jacobian.py",
                                  "pages/components.py", "pages/experiments.py"])
def test_after_the_plan_each_default_view_computes_nothing(warmed, monkeypatch, page):
    """The pages and the warm-up call the same view functions with the same defaults: after the plan, a page's
    default view (with the sidebar's default noise levels) is all cache hits."""
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LOCALITY_APP_DATASET", "grf:n_train=300,n_test=16")
    monkeypatch.setattr(ArrayCache, "set", lambda self, key, arrays: pytest.fail(f"{page} computed {key}"))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page(page).run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]


# ---------------------------------------------------------------- the order a talk needs

@pytest.mark.parametrize("name", ["mnist-5k", "natural-patches"])
def test_every_experiment_the_plan_warms_up_can_be_built(name):
    """natural-patches' classes are photographs and its test photographs are others: no "one class" experiment
    there (the lecture bench stopped on it), while a labelled data set keeps it; each planned data set loads."""
    ref = DataRef.of(name)
    try:
        data = ref.load()
    except Exception as exc:  # natural-patches needs Debian's photographs
        pytest.skip(f"{name} is not available here: {exc}")
    refs = plan.experiment_refs(ref, data)
    assert ("class" in refs) == (name == "mnist-5k")
    for r in [r for rs in refs.values() for r in rs]:
        assert r.load().train.shape[0] >= 2


def test_the_plan_is_breadth_first_lecture_sets_first_large_n_last(monkeypatch):
    """Landing views of both lecture data sets come before the slow analytical samples; the large-N memorisation
    sides come last; no task twice."""
    monkeypatch.setattr(defaults, "DEFAULTS", SMALL)
    tasks = plan.plan()
    names = [t.ref.name for t in tasks]
    present = [n for n in plan.LECTURE_DATASETS if n in names]
    if not present:
        pytest.skip("neither lecture data set is available here")
    assert len(tasks) == len(set(tasks))
    assert names[0] == present[0]
    slow = [i for i, t in enumerate(tasks) if t.view == "samples" and dict(t.params)["name"] == "analytical"
            and t.ref.name in present]
    landing_ends = [max(i for i, t in enumerate(tasks) if t.ref.name == n and t.view == "stats") for n in present]
    assert slow and min(slow) > max(landing_ends)  # every lecture set's landing view before the first slow row
    memo = [i for i, t in enumerate(tasks) if t.view == "memorisation" and dict(t.params)["kind"] == "analytical"]
    if len(slow) > 1 and memo and tasks[memo[0]].ref.name == present[0]:  # the first set complete before the
        assert memo[0] < slow[1]                                             # second one's analytical samples
    if len(memo) > 1:  # the analytical side at the page's first N in tier 3, the others at the very end
        assert memo[1:] == list(range(len(tasks) - len(memo) + 1, len(tasks)))


# ---------------------------------------------------------------- the job queue

class Gate:
    """A view function that runs until released, reporting progress: to watch a job while it runs."""

    def __init__(self):
        self.release, self.started, self.runs = threading.Event(), threading.Event(), []

    def __call__(self, data, *, tag: str, progress=None):
        self.runs.append(tag)
        self.started.set()
        if progress:
            progress(0.5, f"half of {tag}")
        if not self.release.wait(20):
            raise TimeoutError("never released")
        if tag == "broken":
            raise ValueError("this view cannot be computed")
        return tag


@pytest.fixture
def gate(monkeypatch):
    g = Gate()
    monkeypatch.setitem(catalogue.VIEWS, "gate", catalogue.ViewFunction("gate", g, lambda data, tag: False,
                                                                        lambda tag: f"gate {tag}"))
    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(Path(__file__).parent.parent / ".cache" / "test-jobs"))
    return g


def _task(tag: str) -> Task:
    return Task.of("gate", GRF, tag=tag)


def _wait_for(predicate, timeout: float = 20.0) -> None:
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        time.sleep(0.02)


def test_a_second_request_attaches_to_the_running_job(gate):
    q = JobQueue("thread")
    try:
        first = q.submit(_task("a"))
        gate.started.wait(10)
        _wait_for(lambda: first.fraction == 0.5)
        again = q.submit(_task("a"))  # another session asks for the same view while it runs
        assert again is first and again.text == "half of a" and gate.runs == ["a"]
        gate.release.set()
        assert q.wait(first, 20) and first.state == "done" and first.cpu_s is not None
    finally:
        gate.release.set()
        q.close()


def test_nothing_of_the_warm_up_starts_while_a_person_waits_and_a_wanted_view_jumps_the_queue(gate):
    q = JobQueue("thread")
    try:
        person = q.submit(_task("person"), INTERACTIVE)
        gate.started.wait(10)
        warm = q.submit_all([_task("w1"), _task("w2")], BACKGROUND)
        time.sleep(0.3)
        assert warm[0].state == "queued" and gate.runs == ["person"]  # the warm-up yields while a person waits
        promoted = q.submit(_task("w2"), INTERACTIVE)  # someone opens the view the warm-up would do last
        assert promoted is warm[1] and promoted.priority == INTERACTIVE
        gate.release.set()
        for job in (person, *warm):
            assert q.wait(job, 20) and job.state == "done"
        assert gate.runs.index("w2") < gate.runs.index("w1")
    finally:
        gate.release.set()
        q.close()


def test_a_failed_job_says_why_and_the_worker_goes_on(gate):
    q = JobQueue("thread")
    gate.release.set()
    try:
        broken, fine = q.submit(_task("broken")), q.submit(_task("fine"))
        assert q.wait(broken, 20) and q.wait(fine, 20)
        assert broken.state == "failed" and broken.error == "ValueError: this view cannot be computed"
        assert fine.state == "done"
        assert jobs.read_record()[broken.key]["error"].startswith("ValueError")
    finally:
        q.close()


def test_inline_mode_computes_in_the_caller(gate):
    gate.release.set()
    q = JobQueue("inline")
    job = q.submit(_task("here"))
    assert job.state == "done" and gate.runs == ["here"]


@pytest.mark.slow
def test_a_background_worker_process_fills_the_disk_cache_the_server_reads(tmp_path, monkeypatch):
    """The process mode end to end: a real worker process computes a view at lower priority, reports progress and
    CPU seconds, and the result is a cache hit in this process."""
    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(defaults, "DEFAULTS", SMALL)
    task = Task.of("samples", GRF, name="wiener", n=2, steps=3, seed=5, options={})
    assert not task.ready()
    q = JobQueue("process", threads=1)
    try:
        job = q.submit(task, BACKGROUND)
        assert q.wait(job, 120), job.describe()
        assert job.state == "done" and job.where == "worker", job.error
        assert job.cpu_s is not None and job.cpu_s > 0
    finally:
        q.close()
    monkeypatch.setattr(ArrayCache, "set", lambda self, key, arrays: pytest.fail(f"computed again: {key}"))
    assert task.ready() and task.run()["x0_hat"].shape == (3, 2, 1, 28, 28)


# ---------------------------------------------------------------- threads for the cores others leave free

def test_threads_follow_the_cores_other_processes_leave_free(monkeypatch):
    """The arithmetic, on made-up kernel counters: 2 cores, 100 ticks each over the window."""
    def free(idle_ticks: int, own_s: float, cores: int = 2) -> float | None:
        readings = iter([(1000, 10_000), (1000 + idle_ticks, 10_000 + 100 * cores)])
        own = iter([5.0, 5.0 + own_s])
        return jobs.cores_free(0.1, ticks=lambda: next(readings), own=lambda: next(own), sleep=lambda s: None,
                               cores=cores)

    assert free(200, 0.0) == pytest.approx(2.0)  # an idle machine
    assert free(100, 0.0) == pytest.approx(1.0)  # one core busy with somebody else's process
    assert free(100, 0.1) == pytest.approx(2.0)  # ... with this process: it is ours to use
    assert free(0, 0.0) == pytest.approx(0.0)
    assert [jobs.threads_for_now(2, f) for f in (2.0, 1.8, 1.6, 1.0, 0.0)] == [2, 2, 1, 1, 1]
    assert jobs.threads_for_now(4, 16.0) == 4
    assert jobs.cores_free(0.0, ticks=lambda: None, sleep=lambda s: None) is None
    monkeypatch.setattr(jobs, "cores_free", lambda: None)  # no kernel counters here: every thread it may use
    assert jobs.threads_for_now(3) == 3


def test_use_threads_sets_torch_and_numpy_blas():
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    try:
        jobs.use_threads(1)
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert torch.get_num_threads() == 1 and blas and set(blas) == {1}
    finally:
        jobs.use_threads(before)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads the kernel's /proc/stat")
def test_a_cpu_bound_neighbour_takes_a_core_away():
    """A real busy process beside this one: at least half a core fewer free than there are cores (whatever else
    runs on the machine can only lower the count further)."""
    import subprocess

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        free = jobs.cores_free(0.5)
    finally:
        busy.kill()
    cores = os.cpu_count() or 1
    assert free is not None and free <= cores - 0.5, (free, cores)
