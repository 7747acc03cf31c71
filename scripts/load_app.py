"""Load test: N concurrent browser sessions clicking pixels on the Sensitivity page.

Each session is its own browser context (its own Streamlit session), opens the page, then clicks random pixels;
the time from a click to the caption naming that pixel and the maps redrawn is recorded. Reports p50 / p95 /
max over all clicks, per-session counts and any errors (a traceback on the page counts as one).

    python scripts/load_app.py                          # starts `streamlit run app.py` itself
    python scripts/load_app.py --url http://host:8501   # against a running server
    python scripts/load_app.py --sessions 8 --clicks 10 --unet   # with the UNet row (heavier)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
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
FIRST_SHAPE = "gd => JSON.stringify(gd.layout.shapes && gd.layout.shapes[0])"


def start_server(dataset: str | None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    if dataset:
        env["LOCALITY_APP_DATASET"] = dataset
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


async def session(browser, url: str, index: int, clicks: int, timeout_ms: int, same_pixels: bool = False) -> dict:
    context = await browser.new_context(viewport={"width": 1600, "height": 1000})
    page = await context.new_page()
    times, errors = [], []
    try:
        await asyncio.sleep(0.5 * index)  # arrivals half a second apart, then all click at once
        t = time.perf_counter()
        await page.goto(url, timeout=timeout_ms)
        await page.wait_for_selector(GRID, timeout=timeout_ms)
        await page.wait_for_selector(IDLE, timeout=timeout_ms)
        first_load = time.perf_counter() - t
        h, w = await page.eval_on_selector(PICKER, SHAPE)
        rng = np.random.default_rng(100 if same_pixels else 100 + index)
        shown = None
        for _ in range(clicks):
            r, c = int(rng.integers(0, h)), int(rng.integers(0, w))
            if (r, c) == shown:
                continue
            before = await page.eval_on_selector(GRID, FIRST_SHAPE)
            box = await page.locator(PICKER).bounding_box()
            x, y = box["x"] + (c + 0.5) * box["width"] / w, box["y"] + (r + 0.5) * box["height"] / h
            t = time.perf_counter()
            await page.mouse.click(x, y)
            await page.get_by_text(f"pixel row {r}, col {c}").first.wait_for(timeout=timeout_ms)
            await page.wait_for_function(
                "([sel, before]) => { const gd = document.querySelector(sel); return gd && "
                "JSON.stringify(gd.layout.shapes && gd.layout.shapes[0]) !== before; }",
                arg=[GRID, before], timeout=timeout_ms)
            times.append(time.perf_counter() - t)
            shown = (r, c)
            await page.wait_for_selector(IDLE, timeout=timeout_ms)
            if await page.locator('[data-testid="stException"]').count():
                errors.append("traceback shown on the page")
                break
    except Exception as exc:  # noqa: BLE001 - report, don't stop the other sessions
        errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        first_load = float("nan")
    finally:
        await context.close()
    return {"session": index, "first_load_s": first_load, "times": times, "errors": errors}


async def run(url: str, args) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=args.chromium, args=ARGS)
        try:
            query = "" if args.unet else "?unet=false"
            return await asyncio.gather(*(session(browser, f"{url}/{query}", i, args.clicks, args.timeout * 1000,
                                                  args.same_pixels) for i in range(args.sessions)))
        finally:
            await browser.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running app (default: start one)")
    parser.add_argument("--dataset", help="data set for a started app, e.g. 'grf:n_train=2000'")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--clicks", type=int, default=8, help="clicks per session")
    parser.add_argument("--unet", action="store_true", help="keep the UNet row on (default: Wiener and masks)")
    parser.add_argument("--same-pixels", action="store_true",
                        help="every session clicks the same pixels (a class following the lecturer): shared results")
    parser.add_argument("--timeout", type=int, default=300, help="seconds to wait for one response")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)

    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.dataset)
    load_before = os.getloadavg()[0]
    try:
        t = time.perf_counter()
        results = asyncio.run(run(url.rstrip("/"), args))
        wall = time.perf_counter() - t
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
    all_times = np.array([x for r in results for x in r["times"]]) * 1000
    errors = [(r["session"], e) for r in results for e in r["errors"]]
    print(f"{args.sessions} concurrent sessions, {len(all_times)} clicks in {wall:.1f} s "
          f"({'with' if args.unet else 'without'} the UNet row{', same pixels' if args.same_pixels else ''}), "
          f"{os.cpu_count()} CPUs, load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after")
    if len(all_times):
        print(f"click to maps: p50 {np.percentile(all_times, 50):.0f} ms, p95 {np.percentile(all_times, 95):.0f} ms, "
              f"max {all_times.max():.0f} ms")
    for r in results:
        print(f"  session {r['session']}: first load {r['first_load_s']:.1f} s, {len(r['times'])} clicks"
              + (f", errors: {r['errors']}" if r["errors"] else ""))
    print(f"errors: {len(errors)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
