"""The lecture table: how soon after start every default view is ready, and what a speaker waits for afterwards.

By default (as a talk runs it): `streamlit run serve.py` on an empty cache, left untouched while its background
worker warms up; the time from the server's start at which each data set's last default view (tiers 1 to 3 of
`locality_core.views.plan`: landing views, the analytical samples, the other experiments) is ready, with each
task's CPU seconds from the worker's record; then every page's default view of each data set in a fresh tab of a
headless Chromium at 1280x720, timed from the address to its figures drawn and the script idle (the warm-up goes on
beside it, as in a talk). Then the interactive waits, in this process on the warmed cache: a new Jacobian basis
(another test image), a new experiment (another permutation, another alpha), new-seed samples. Each row beside its
target (issue 21).

    python scripts/bench_lecture.py                        # both lecture data sets, idle machine
    python scripts/bench_lecture.py --neighbour            # the same beside a CPU-bound process
    python scripts/bench_lecture.py --inline               # the warm-up's tasks in this process, pages by AppTest
    python scripts/bench_lecture.py fashion-mnist --inline --cache DIR   # time what DIR is missing

Times are wall seconds from the start of the run; CPU seconds are the worker's per task, the server process's per
page view, this process's per interactive wait (all threads). On a shared machine CPU seconds are the steadier
measure; the load average is printed with the table.
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
# every page's default view, by the figures it draws (the keys of their containers)
PAGE_FIGURES = (("sensitivity", ("field_grid",)), ("samples", ("samples_unet", "samples_analytical")),
                ("jacobian", ("jb_spectrum",)), ("experiments", ("exp_grid",)), ("components", ("eigen_images",)),
                ("generalisation", ("gen_curves_cos", "gen_pair_unet", "gen_pair_analytical")))
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
PAGES = ("pages/sensitivity.py", "pages/samples.py", "pages/jacobian.py", "pages/experiments.py",
         "pages/components.py", "pages/generalisation.py")


def timed(fn) -> tuple[float, float]:
    """(wall s, CPU s) of ``fn()``, on the threads the server's job queue would give it now."""
    from locality_core.views.jobs import cpu_seconds, threads_for_now, use_threads

    use_threads(threads_for_now(os.cpu_count() or 1))
    start, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - start, cpu_seconds() - cpu


def warmup_rows(names: list[str], start: float) -> dict[str, list]:
    """The default-view tiers of every data set in talk order (all landing views first, then each data set's slow
    and other views, as the server does):
    per data set, a "ready at" row and one row per task."""
    from locality_core.views.jobs import run_task

    rows: dict[str, list] = {n: [] for n in names}
    ready = {}
    for name, task in default_view_tasks(names):
        cpu, wall = run_task(task)
        rows[name].append((label(name, task.title), wall, cpu, None))
        ready[name] = time.perf_counter() - start
        print(f"[{ready[name]:7.1f} s] {task.title[:70]}: {wall:.1f} s wall, {cpu:.1f} CPU s", file=sys.stderr,
              flush=True)
    return {n: [("every default view ready, s from start", ready[n], sum(r[2] for r in rows[n]),
                 READY_TARGET_S.get(n))] + rows[n] for n in names}


def label(name: str, title: str) -> str:
    return f"  {title[len(name) + 2:] if title.startswith(name) else title}"[:66]


def default_view_tasks(names: list[str]) -> list[tuple[str, object]]:
    """[(data set, Task)] of every page's default view, in the warm-up's order."""
    from locality_core.views import plan
    from locality_core.views.refs import DataRef

    views = plan.default_views([(DataRef.of(n), DataRef.of(n).load()) for n in names])
    return list(dict.fromkeys((ref.name, task) for ref, task in views))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_rows(names: list[str], cache: Path, folder: Path, budget_s: float) -> dict[str, list]:
    """The real server on an empty cache, untouched until every default view is ready (or ``budget_s``), then each
    page's default view in a fresh tab: per data set, a "ready at" row, one row per task, one per page."""
    sys.path.insert(0, str(ROOT / "tests"))
    from playwright.sync_api import sync_playwright
    from servers import ARGS, CHROMIUM, running

    from locality_core.views.jobs import read_record
    from locality_core.views.plan import LECTURE_DATASETS

    tasks = default_view_tasks(names)  # loads the data sets here, with this process's own cache folder
    warm = "1" if set(names) == set(LECTURE_DATASETS) else ";".join(names)  # "1": as `make app` (the whole plan)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LOCALITY_CACHE_DIR": str(cache), "LOCALITY_WARMUP": warm}
    env.pop("LOCALITY_JOBS", None)  # the server chooses its workers, as `make app` does
    rows: dict[str, list] = {n: [] for n in names}
    start = time.time()
    with running("serve.py", env, folder / "server.log") as url:
        os.environ["LOCALITY_CACHE_DIR"] = str(cache)  # read_record: the server's record of its jobs
        done: set = set()
        while len(done) < len(tasks) and time.time() - start < budget_s:
            record = read_record()
            for _, task in tasks:
                entry = record.get(task.key)
                if task.key not in done and entry and ("cpu_s" in entry or entry.get("error")):
                    done.add(task.key)
                    print(f"[{entry['when'] - start:7.1f} s] {task.title[:70]}: {entry.get('cpu_s', 0):.1f} CPU s"
                          f"{' ERROR ' + entry['error'] if entry.get('error') else ''}", file=sys.stderr, flush=True)
            time.sleep(1)
        record = read_record()
        for n in names:
            mine = [t for name, t in tasks if name == n]
            entries = [record.get(t.key, {}) for t in mine]
            missing = [t.title for t, e in zip(mine, entries, strict=True) if "cpu_s" not in e]
            ready = max(e["when"] for e in entries if "when" in e) - start if not missing else float(budget_s)
            what = "every default view ready, s from start" + (f" (NOT: {len(missing)} missing)" if missing else "")
            rows[n].append((what, ready, sum(e.get("cpu_s", 0.0) for e in entries), READY_TARGET_S.get(n)))
            rows[n] += [(label(n, t.title) + (" ERROR" if e.get("error") else ""), e.get("wall_s", float("nan")),
                         e.get("cpu_s", float("nan")), None) for t, e in zip(mine, entries, strict=True)]
        server_pid = streamlit_pid(url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for n in names:
                rows[n] += page_rows_in_browser(browser, url, n, server_pid)
            browser.close()
    return rows


def page_figures(name: str) -> list[tuple[str, tuple[str, ...]]]:
    """PAGE_FIGURES for data set ``name``, less what it cannot draw: the UNet's samples without a UNet, the
    Jacobian without a network, the Memorisation figures without subset networks (the page then says how to train
    them, and the row waits for that message)."""
    from locality_core.analysis.generalisation import family_sizes
    from locality_core.views.defaults import jacobian_denoiser
    from locality_core.views.plan import _available
    from locality_core.views.refs import DataRef

    data = DataRef.of(name).load()
    drop = set() if _available("unet", data) else {"samples_unet"}
    drop |= set() if jacobian_denoiser(data) else {"jb_spectrum"}
    drop |= set() if family_sizes(data) else {"gen_curves_cos", "gen_pair_unet", "gen_pair_analytical"}
    return [(page, tuple(f for f in figures if f not in drop)) for page, figures in PAGE_FIGURES]


def streamlit_pid(url: str) -> int:
    """The process id of the `streamlit run` serving ``url`` (found by its port on the command line)."""
    port = url.rsplit(":", 1)[1]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"streamlit" in b" ".join(argv) and port.encode() in argv:
            return int(proc.name)
    raise RuntimeError(f"no streamlit process serves {url}")


def page_rows_in_browser(browser, url: str, name: str, server_pid: int) -> list:
    """Every page's default view of data set ``name``, from the address to its figures drawn and the script idle:
    each in a new tab of one browser profile (the first with an empty browser cache, as a first visitor; the others
    with Streamlit's code cached, as a speaker's browser has it), then each by one press in the open tab's top bar
    (the page changes without loading the app again). CPU s: the server process's."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    rows, page = [], None
    try:
        for i, (page_name, figures) in enumerate(page_figures(name)):
            if page is not None:
                page.close()
            page = context.new_page()
            wall, cpu, waited = timed_view(page, server_pid, figures,
                                           lambda tab=page, p=page_name: tab.goto(f"{url}/{p}?dataset={name}"))
            rows.append((f"page {page_name}, {'first visit' if i == 0 else 'new tab'}"
                         + (" (waited for a job)" if waited else ""), wall, cpu, PAGE_TARGET_S))
        for page_name, figures in page_figures(name):
            link = page.locator(f'[data-testid="stTopNavLink"][href$="/{page_name}"]')
            wall, cpu, waited = timed_view(page, server_pid, figures, link.click)
            rows.append((f"page {page_name}, one press in the top bar" + (" (waited for a job)" if waited else ""),
                         wall, cpu, PAGE_TARGET_S))
    finally:
        context.close()
    return rows


def timed_view(page, server_pid: int, figures: tuple[str, ...], go) -> tuple[float, float, bool]:
    """(wall s, server CPU s, whether it waited for a job) from ``go()`` to ``figures`` drawn and the script idle
    (a page without figures: its message)."""
    start, cpu = time.perf_counter(), process_cpu_seconds(server_pid)
    go()
    for figure in figures:
        page.locator(f".st-key-{figure} .js-plotly-plot").first.wait_for(timeout=600_000)
    if not figures:  # the Memorisation page without subset networks says how to train them
        page.locator('[data-testid="stAlert"]', has_text="waits for networks").first.wait_for(timeout=600_000)
    page.wait_for_selector(IDLE, timeout=600_000)
    wall, cpu = time.perf_counter() - start, process_cpu_seconds(server_pid) - cpu
    return wall, cpu, "Computed by" in page.inner_text("body")


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


def lecture_table(names: list[str], cache_dir: str | None = None, with_neighbour: bool = False,
                  inline: bool = False, budget_s: float = 1800) -> dict[str, list]:
    """{data set: [(what, wall s, CPU s, target or None)]}."""
    import torch

    with tempfile.TemporaryDirectory() as tmp, neighbour(with_neighbour):
        cache = Path(cache_dir or Path(tmp) / "cache")
        os.environ["LOCALITY_CACHE_DIR"] = str(Path(tmp) / "here")  # this process's own, until it reads the cache
        os.environ["LOCALITY_WARMUP"] = "0"  # the headless page runs must not queue a warm-up of their own
        os.environ["LOCALITY_JOBS"] = "inline"
        torch.set_num_threads(os.cpu_count() or 1)  # as the background worker runs (--inline: on an idle machine)
        if inline:
            os.environ["LOCALITY_CACHE_DIR"] = str(cache)
            out = warmup_rows(names, time.perf_counter())
            for name in names:
                out[name] += page_rows(name)
        else:
            out = server_rows(names, cache, Path(tmp), budget_s)
        os.environ["LOCALITY_CACHE_DIR"] = str(cache)
        for name in names:
            out[name] += interactive_rows(name)
    return out


def print_table(table: dict[str, list], title: str, load_before: float) -> None:
    print(f"\n{title} (load average at the start: {load_before:.1f}, {os.cpu_count()} cores)")
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
    parser.add_argument("--inline", action="store_true",
                        help="the warm-up's tasks in this process and the pages by AppTest, not the real server and "
                             "a browser")
    parser.add_argument("--budget", type=float, default=1800, help="seconds to wait for the warm-up (default 1800)")
    args = parser.parse_args(argv)
    if args.cache and not args.inline:
        parser.error("--cache times what a folder is missing, in this process: use it with --inline")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    load_before = os.getloadavg()[0]
    table = lecture_table(args.datasets, args.cache, args.neighbour, args.inline, args.budget)
    print_table(table, load_before=load_before, title=("beside a CPU-bound process" if args.neighbour else "alone")
                + (", in this process" if args.inline else ", the real server and a browser"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
