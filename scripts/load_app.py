"""Load and soak test: N concurrent browser sessions clicking pixels on the Sensitivity page, on several data sets,
while the server's memory is sampled.

Each session is its own browser context (its own Streamlit session). Session i opens the page on data set
``i mod len(--datasets)``, clicks random pixels, and with ``--minutes`` keeps doing so, moving to the next data set
every ``--clicks`` clicks, until the time is up. The time from a click to the caption naming that pixel and the
maps redrawn is recorded. Reports p50 / p95 / max over all clicks, per-session counts, errors (a traceback on the
page counts as one), and the resident memory of the server and its worker processes over time (sampled every
``--sample-s`` seconds), with the load average.

    python scripts/load_app.py                              # starts `streamlit run app.py` itself
    python scripts/load_app.py --sessions 8 --clicks 6      # the campaign's case: 8 sessions x 6 clicks
    python scripts/load_app.py --minutes 20 --neighbour     # a soak, beside a CPU-bound neighbour process
    python scripts/load_app.py --url http://host:8501       # against a running server (no memory samples)
    python scripts/load_app.py --sessions 8 --clicks 10 --unet   # with the UNet row (heavier)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
PICKER, GRID = ".st-key-picker [data-testid=pixel-picker]", ".st-key-field_grid .js-plotly-plot"
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
# the picker is an image with one PNG pixel per image pixel: its natural size is the image's (H, W)
SHAPE = "el => { const img = el.querySelector('img'); return [img.naturalHeight, img.naturalWidth]; }"
FIRST_SHAPE = "gd => JSON.stringify(gd.layout && gd.layout.shapes && gd.layout.shapes[0])"
DATASETS = ("grf", "mnist-5k", "faces", "textures", "fashion-mnist", "natural-patches")


def start_server(dataset: str | None, warmup: bool = False) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    if dataset:
        env["LOCALITY_APP_DATASET"] = dataset
    if not warmup:
        env["LOCALITY_WARMUP"] = "0"
    entry = os.environ.get("LOCALITY_APP_ENTRY", "app.py")  # serve.py: the ASGI entry point
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", entry, "--server.headless", "true",
                             "--server.port", str(port), "--server.fileWatcherType", "none"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("streamlit did not start")


# ---------------------------------------------------------------- memory of the server, over time

def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *_descendants(kid)]
    return found


class MemorySampler(threading.Thread):
    """(seconds since start, server MB, its workers' MB, load average) every ``every`` seconds."""

    def __init__(self, pid: int, every: float):
        super().__init__(daemon=True)
        self.pid, self.every, self.start_time = pid, every, time.time()
        self.samples: list[tuple[float, float, float, float]] = []
        self.halt = threading.Event()

    def sample(self) -> None:
        workers = sum(_rss_mb(p) for p in _descendants(self.pid))
        self.samples.append((time.time() - self.start_time, _rss_mb(self.pid), workers, os.getloadavg()[0]))

    def run(self) -> None:
        self.sample()
        while not self.halt.wait(self.every):
            self.sample()


# ---------------------------------------------------------------- one browser session

async def click_pixels(page, clicks: int, rng, timeout_ms: int, times: list, errors: list) -> None:
    h, w = await page.eval_on_selector(PICKER, SHAPE)
    shown = None
    for _ in range(clicks):
        r, c = int(rng.integers(0, h)), int(rng.integers(0, w))
        if (r, c) == shown:
            continue
        await page.wait_for_selector(GRID, timeout=timeout_ms)  # a rerun may be redrawing it
        before = await page.eval_on_selector(GRID, FIRST_SHAPE)
        box = await page.locator(PICKER).bounding_box()
        x, y = box["x"] + (c + 0.5) * box["width"] / w, box["y"] + (r + 0.5) * box["height"] / h
        t = time.perf_counter()
        await page.mouse.click(x, y)
        await page.get_by_text(f"pixel row {r}, col {c}").first.wait_for(timeout=timeout_ms)
        await page.wait_for_function(
            "([sel, before]) => { const gd = document.querySelector(sel); return gd && gd.layout && "
            "JSON.stringify(gd.layout.shapes && gd.layout.shapes[0]) !== before; }",
            arg=[GRID, before], timeout=timeout_ms)
        times.append(time.perf_counter() - t)
        shown = (r, c)
        await page.wait_for_selector(IDLE, timeout=timeout_ms)
        if await page.locator('[data-testid="stException"]').count():
            errors.append("traceback shown on the page")
            return


async def session(browser, url: str, index: int, args) -> dict:
    context = await browser.new_context(viewport={"width": 1600, "height": 1000})
    page = await context.new_page()
    times, errors, loads, opened = [], [], [], []
    deadline = time.time() + 60 * args.minutes
    rng = np.random.default_rng(100 if args.same_pixels else 100 + index)
    round_ = 0
    try:
        await asyncio.sleep(0.5 * index)  # arrivals half a second apart, then all click at once
        while True:
            name = args.datasets[(index + round_) % len(args.datasets)]
            query = f"?dataset={name}" + ("" if args.unet else "&unet=false")
            t = time.perf_counter()
            await page.goto(f"{url}/{query}", timeout=args.timeout * 1000)
            await page.wait_for_selector(GRID, timeout=args.timeout * 1000)
            await page.wait_for_selector(IDLE, timeout=args.timeout * 1000)
            loads.append(time.perf_counter() - t)
            opened.append(name)
            await click_pixels(page, args.clicks, rng, args.timeout * 1000, times, errors)
            round_ += 1
            if errors or time.time() >= deadline:
                break
    except Exception as exc:  # noqa: BLE001 - report, don't stop the other sessions
        errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    finally:
        await context.close()
    return {"session": index, "loads": loads, "datasets": opened, "times": times, "errors": errors}


async def run(url: str, args) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=args.chromium, args=ARGS)
        try:
            return await asyncio.gather(*(session(browser, url, i, args) for i in range(args.sessions)))
        finally:
            await browser.close()


# ---------------------------------------------------------------- the report

def report(args, results: list[dict], sampler: MemorySampler | None, wall: float, load_before: float) -> int:
    all_times = np.array([x for r in results for x in r["times"]]) * 1000
    errors = [(r["session"], e) for r in results for e in r["errors"]]
    how = ("with" if args.unet else "without") + " the UNet row" + (", same pixels" if args.same_pixels else "") + \
        (", beside a CPU-bound neighbour" if args.neighbour else "")
    print(f"{args.sessions} concurrent sessions on {', '.join(args.datasets)}, {len(all_times)} clicks in "
          f"{wall:.1f} s ({how}), {os.cpu_count()} CPUs, load average "
          f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after; memory budget "
          f"{os.environ.get('LOCALITY_MEMORY_BUDGET_GB', '2 (default)')} GiB")
    if len(all_times):
        print(f"click to maps: p50 {np.percentile(all_times, 50):.0f} ms, p95 {np.percentile(all_times, 95):.0f} ms, "
              f"max {all_times.max():.0f} ms")
    for r in results:
        loads = ", ".join(f"{n} {s:.1f} s" for n, s in zip(r["datasets"], r["loads"], strict=False))
        print(f"  session {r['session']}: {len(r['times'])} clicks; page loads: {loads}"
              + (f"; errors: {r['errors']}" if r["errors"] else ""))
    if sampler is not None and sampler.samples:
        print("memory over time (resident, MB):\n      s   server  workers  load")
        for t, server, workers, load in sampler.samples:
            print(f"  {t:5.0f}  {server:7.0f}  {workers:7.0f}  {load:4.1f}")
        peak = max(s[1] for s in sampler.samples)
        print(f"server peak {peak:.0f} MB, last {sampler.samples[-1][1]:.0f} MB; workers peak "
              f"{max(s[2] for s in sampler.samples):.0f} MB")
    print(f"errors: {len(errors)}")
    return 1 if errors else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running app (default: start one)")
    parser.add_argument("--dataset", help="the default data set of a started app, e.g. 'grf:n_train=2000'")
    parser.add_argument("--datasets", nargs="+", default=None,
                        help=f"data sets the sessions open, one each in turn (default: those available of "
                             f"{', '.join(DATASETS)})")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--clicks", type=int, default=6, help="clicks per session and data set")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="keep clicking (the next data set every --clicks clicks) this long: a soak")
    parser.add_argument("--neighbour", action="store_true",
                        help="run `python -c 'while True: pass'` beside the server for the whole test")
    parser.add_argument("--warmup", action="store_true", help="leave the started server's warm-up on")
    parser.add_argument("--sample-s", type=float, default=15.0, help="seconds between memory samples")
    parser.add_argument("--unet", action="store_true", help="keep the UNet row on (default: Wiener and masks)")
    parser.add_argument("--same-pixels", action="store_true",
                        help="every session clicks the same pixels (a class following the lecturer): shared results")
    parser.add_argument("--timeout", type=int, default=300, help="seconds to wait for one response")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    if args.datasets is None:
        sys.path.insert(0, str(ROOT))
        from locality_core.data import get_spec

        args.datasets = [n for n in DATASETS if get_spec(n).availability()[0]]

    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.neighbour else None
    proc, sampler, url = None, None, args.url
    if url is None:
        proc, url = start_server(args.dataset, args.warmup)
        sampler = MemorySampler(proc.pid, args.sample_s)
        sampler.start()
    load_before = os.getloadavg()[0]
    try:
        t = time.perf_counter()
        results = asyncio.run(run(url.rstrip("/"), args))
        wall = time.perf_counter() - t
    finally:
        if sampler is not None:
            sampler.sample()
            sampler.halt.set()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    return report(args, results, sampler, wall, load_before)


if __name__ == "__main__":
    sys.exit(main())
