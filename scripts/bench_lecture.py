"""The lecture table: how soon after start every default view is ready, and what a speaker waits for afterwards.

Per data set, into a fresh cache: the warm-up's talk plan up to the default views of every page (tiers 1 to 3 of
`locality_core.views.plan`: landing views, the analytical samples, the other experiments) run in order, as the
server's background worker runs it (every core), with the time from start at which the data set's last default
view is ready, and each task's CPU seconds; then each page's default view as a headless page run (AppTest: the
script, its cached calls, its figures), and the interactive waits: a new Jacobian basis (another test image), a
new experiment (another permutation, another alpha), new-seed samples. Each row beside its target (issue 21).

    python scripts/bench_lecture.py                                   # both lecture data sets, idle machine
    python scripts/bench_lecture.py --neighbour                       # the same beside a CPU-bound process
    python scripts/bench_lecture.py fashion-mnist --cache DIR         # time what DIR is missing

Times are wall seconds from the start of the run; CPU seconds are this process's (all threads). On a shared
machine CPU seconds are the steadier measure; the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_TARGET_S = {"fashion-mnist": 300, "natural-patches": 900}  # every default view, from a cold start
BASIS_TARGET_S = {"fashion-mnist": 5, "natural-patches": 20}
PAGE_TARGET_S, SAMPLES_TARGET_S, EXPERIMENT_TARGET_S = 2, 2, 30
PAGES = ("pages/sensitivity.py", "pages/samples.py", "pages/jacobian.py", "pages/experiments.py",
         "pages/components.py", "pages/generalisation.py")


def cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn) -> tuple[float, float]:
    start, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - start, cpu_seconds() - cpu


def warmup_rows(names: list[str], start: float) -> dict[str, list]:
    """The default-view tiers of every data set in talk order (all landing views first, then each data set's slow
    and other views, as the server does):
    per data set, a "ready at" row and one row per task."""
    from locality_core.views import plan
    from locality_core.views.jobs import run_task
    from locality_core.views.refs import DataRef

    loaded = [(DataRef.of(n), DataRef.of(n).load()) for n in names]
    ordered = [(r.name, t) for r, d in loaded for t in plan.landing(r, d)]
    ordered += [(r.name, t) for i, (r, d) in enumerate(loaded)
                for t in plan.slow_samples(r, d) + plan.other_experiments(r, d, i == 0)]
    rows: dict[str, list] = {n: [] for n in names}
    ready = {}
    for name, task in dict.fromkeys(ordered):
        cpu, wall = run_task(task)
        rows[name].append((f"  {task.title[len(name) + 2:] if task.title.startswith(name) else task.title}"[:66],
                           wall, cpu, None))
        ready[name] = time.perf_counter() - start
    return {n: [("every default view ready, s from start", ready[n], sum(r[2] for r in rows[n]),
                 READY_TARGET_S.get(n))] + rows[n] for n in names}


def page_rows(name: str) -> list:
    """Each page's default view after the warm-up, as a second visitor's script run (data set loaded)."""
    from streamlit.testing.v1 import AppTest

    os.environ["LOCALITY_APP_DATASET"] = name
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=3600)
    at.run()
    rows = []
    for page in PAGES:
        wall, cpu = timed(lambda page=page: at.switch_page(page).run())
        problems = [e.value for e in at.exception] + [e.value for e in at.error]
        rows.append((f"page {Path(page).stem}" + (f" (ERROR: {problems[0][:40]})" if problems else ""), wall, cpu,
                     PAGE_TARGET_S))
    return rows


def interactive_rows(name: str) -> list:
    """What a speaker waits for after the warm-up: a new basis, a new experiment, new-seed samples."""
    from locality_core.views import plan
    from locality_core.views.catalogue import Task
    from locality_core.views.defaults import DEFAULTS, field_precision, jacobian_denoiser
    from locality_core.views.refs import DataRef

    ref = DataRef.of(name)
    data = ref.load()
    rows = []
    model = jacobian_denoiser(data)
    if model is not None:
        task = Task.of("leading_basis", ref, name=model, image=1, sigma=DEFAULTS.jacobian_sigma(), seed=0,
                       precision=field_precision(), k=DEFAULTS.jacobian_pairs)
        rows.append((f"new Jacobian basis: {model}, {DEFAULTS.jacobian_pairs} leading pairs", *timed(task.run),
                     BASIS_TARGET_S.get(name)))
    permuted = plan._masks(ref.with_transform("permute", seed=1))
    rows.append(("new experiment: shuffled pixels, seed 1", *timed(permuted.run), EXPERIMENT_TARGET_S))
    alpha = plan._masks(DataRef.of("grf", {"alpha": 3.0, "n_train": DEFAULTS.alpha_n_train}))
    rows.append(("new experiment: GRF alpha 3", *timed(alpha.run), EXPERIMENT_TARGET_S))
    for denoiser in DEFAULTS.sample_denoisers:
        task = Task.of("samples", ref, name=denoiser, n=DEFAULTS.sample_n, steps=DEFAULTS.sample_steps, seed=4242,
                       options=())
        target = SAMPLES_TARGET_S if denoiser in DEFAULTS.fast_samplers else None
        try:
            rows.append((f"new-seed samples: {denoiser} ({DEFAULTS.sample_n})", *timed(task.run), target))
        except Exception as exc:  # a denoiser not available here: say so in the table
            rows.append((f"new-seed samples: {denoiser}: {type(exc).__name__}", 0.0, 0.0, None))
    return [(w, wall, cpu, target) for w, wall, cpu, target in rows]


@contextlib.contextmanager
def neighbour(on: bool):
    """A CPU-bound process beside the benchmark (a busy loop on one core), or nothing."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()


def lecture_table(names: list[str], cache_dir: str | None = None, with_neighbour: bool = False) -> dict[str, list]:
    """{data set: [(what, wall s, CPU s, target or None)]}."""
    import torch

    with tempfile.TemporaryDirectory() as tmp, neighbour(with_neighbour):
        os.environ["LOCALITY_CACHE_DIR"] = cache_dir or tmp
        os.environ["LOCALITY_WARMUP"] = "0"  # the headless page runs must not queue a warm-up of their own
        os.environ["LOCALITY_JOBS"] = "inline"
        torch.set_num_threads(os.cpu_count() or 1)  # as the background worker runs
        out = warmup_rows(names, time.perf_counter())
        for name in names:
            out[name] += page_rows(name) + interactive_rows(name)
    return out


def print_table(table: dict[str, list], title: str) -> None:
    print(f"\n{title} (load average before: {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores)")
    print(f"{'':<68} {'wall s':>8} {'CPU s':>8} {'target':>7}  ok")
    for name, rows in table.items():
        print(f"--- {name}")
        for what, wall, cpu, target in rows:
            ok = "" if target is None else ("yes" if wall <= target else "NO")
            print(f"{what:<68} {wall:>8.1f} {cpu:>8.1f} {'' if target is None else target:>7}  {ok}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", default=["fashion-mnist", "natural-patches"])
    parser.add_argument("--cache", help="an existing cache folder (default: a fresh one, so the warm-up is cold)")
    parser.add_argument("--neighbour", action="store_true", help="run beside a CPU-bound process")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    table = lecture_table(args.datasets, args.cache, args.neighbour)
    print_table(table, "beside a CPU-bound process" if args.neighbour else "alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
