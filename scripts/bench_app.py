"""Latency of the Sensitivity page's click: p50 / p95 of click-to-Wiener-maps and click-to-UNet-maps.

Compute-only timings replay the library calls the page makes after a click (in the same order, with the same
caches): Wiener field, locality sizes, analytical mask columns and the figure, then the UNet fields at every
noise level: the first view (4 images per level, all levels in one batch), the full fields (32 images, one call
per level), cold (empty disk cache) and cached (disk cache hit), in the app's precision (bfloat16 where the CPU
runs it natively), and the full fields in float32 as the baseline. With --browser it also clicks pixels in a real
headless Chromium against `streamlit run app.py` and times click-to-caption-and-maps.

    python scripts/bench_app.py                       # default data set (Fashion-MNIST when installed)
    python scripts/bench_app.py --dataset grf --clicks 50 --browser

Without trained UNet weights the UNet timings use an untrained network of the same architecture (same cost),
and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentiles(times: list[float]) -> dict:
    a = np.asarray(times) * 1000
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1)}


def random_pixels(n: int, shape, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    _, h, w = shape
    return [(int(r), int(c)) for r, c in zip(rng.integers(0, h, n), rng.integers(0, w, n))]


def wiener_click(stats, pixel, sigmas, analytical) -> None:
    """What the page computes for the Wiener and mask rows after a click, and the figure it sends."""
    from locality_core.analysis.fields import locality_sizes, wiener_field
    from ui.figures import map_grid

    field = wiener_field(stats, pixel, sigmas)
    locality_sizes(field)
    rows = [("Wiener", field.map("abs"), "abs")]
    if analytical is not None:
        rows.append(("mask", np.stack([analytical.mask_column(stats, pixel, s).map for s in sigmas]), "mask"))
    map_grid(rows, [str(s) for s in sigmas], pixel=pixel).to_json()


def unet_for(dataset):
    """The trained UNet when there is one, else an untrained one of the default architecture (for timing)."""
    from locality_core.denoisers.registry import DenoiserError, get_denoiser

    try:
        return get_denoiser("unet", dataset), "trained weights"
    except DenoiserError:
        from locality_core.denoisers.training import default_unet_config
        from locality_core.denoisers.unet import EDMDenoiser

        model = EDMDenoiser(default_unet_config(dataset)).eval().requires_grad_(False)
        return model, "untrained weights of the default architecture (no trained UNet here; same cost)"


def unet_click(model, dataset, pixel, sigmas, cache, *, seed: int = 0, n: int = 32, precision: str = "float32",
               batched: bool = False) -> None:
    """The page's UNet field calls (disk-cached), for a denoiser object rather than a registry name: one call per
    noise level (the full fields, with progress), or all levels in one call (``batched``: the first view)."""
    import torch

    from locality_core.analysis.fields import autograd_field
    from locality_core.store.cache import CacheKind

    for group in ([sigmas] if batched else [[s] for s in sigmas]):
        key = CacheKind("bench-field").key(dataset.fingerprint, f"{pixel}", ",".join(f"{s:.6g}" for s in group),
                                           n, seed, precision)

        def compute(group=group):
            f = autograd_field(model, dataset.test[:n], pixel, group, generator=torch.Generator().manual_seed(seed),
                               precision=precision)
            return {"abs_mean": f.abs_mean, "signed_mean": f.signed_mean}

        cache.get_or_compute(key, compute)


def compute_bench(args) -> dict:
    from locality_core.data import default_dataset_name, load_dataset
    from locality_core.schedule import REFERENCE_SIGMAS
    from locality_core.stats.covariance import get_stats
    from locality_core.store.cache import ArrayCache
    from ui.loading import configure_threads, field_precision, single_thread_blas, torch_threads
    from ui.widgets import PREVIEW_N

    configure_threads()  # as app.py does
    name = args.dataset or default_dataset_name()
    dataset = load_dataset(name)
    stats = get_stats(dataset)
    sigmas = list(REFERENCE_SIGMAS)
    try:
        from locality_core.denoisers import analytical
    except ImportError:
        analytical = None
    out = {"dataset": name, "shape": list(dataset.shape), "noise_levels": len(sigmas), "cpus": os.cpu_count(),
           "torch_threads": torch_threads()}

    pixels = random_pixels(args.clicks, dataset.shape)
    if analytical is not None:  # masks are computed once per noise level, then read from disk: warm them
        for s in sigmas:
            analytical.cached_mask(stats, s)
    times = []
    for p in pixels:
        t = time.perf_counter()
        with single_thread_blas():  # as the page does
            wiener_click(stats, p, sigmas, analytical)
        times.append(time.perf_counter() - t)
    out["click_to_wiener_maps"] = percentiles(times)

    model, weights = unet_for(dataset)
    precision = field_precision()
    out["unet_weights"], out["precision"] = weights, precision
    unet_pixels = pixels[:args.unet_clicks]
    runs = {"click_to_unet_first_view_cold": {"n": PREVIEW_N, "precision": precision, "batched": True},
            "click_to_unet_maps_cold": {"n": 32, "precision": precision},
            "click_to_unet_maps_cold_float32": {"n": 32, "precision": "float32"}}
    for label, options in runs.items():
        with tempfile.TemporaryDirectory() as tmp:
            cache = ArrayCache(tmp)
            cold, cached = [], []
            for p in unet_pixels:
                t = time.perf_counter()
                unet_click(model, dataset, p, sigmas, cache, **options)
                cold.append(time.perf_counter() - t)
            if label == "click_to_unet_maps_cold":  # the page's cache hit: the full fields, read back
                for p in unet_pixels:
                    t = time.perf_counter()
                    unet_click(model, dataset, p, sigmas, cache, **options)
                    cached.append(time.perf_counter() - t)
                out["click_to_unet_maps_cached"] = percentiles(cached)
        out[label] = percentiles(cold)
    return out


def browser_bench(args) -> dict:
    """Clicks in a real Chromium: time from the click to the caption naming the pixel and the maps redrawn."""
    import socket
    import subprocess
    import urllib.request

    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    if args.dataset:
        env["LOCALITY_APP_DATASET"] = args.dataset
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.fileWatcherType", "none"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    out = {}
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            for label, query in (("wiener_only", "?unet=false"), ("with_unet", "")):
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                out[label] = _browser_clicks(page, url + "/" + query, args.browser_clicks)
                page.close()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    return out


def _browser_clicks(page, url: str, clicks: int) -> dict:
    picker, grid = ".st-key-picker .js-plotly-plot", ".st-key-field_grid .js-plotly-plot"
    page.goto(url)
    page.wait_for_selector(grid, timeout=600_000)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=600_000)
    shape = page.eval_on_selector(picker, "gd => [gd._fullLayout.yaxis.range[0] + 0.5, "
                                          "gd._fullLayout.xaxis.range[1] + 0.5]")
    h, w = int(round(shape[0])), int(round(shape[1]))
    times = []
    for r, c in random_pixels(clicks, (1, h, w), seed=1):
        if page.get_by_text(f"Pixel (row {r}, col {c})").count():
            continue  # already shown: a click would be a repeat (an empty selection)
        before = page.eval_on_selector(grid, "gd => JSON.stringify(gd.layout.shapes && gd.layout.shapes[0])")
        x, y = page.eval_on_selector(picker, """(gd, [r, c]) => { const L = gd._fullLayout,
            b = gd.getBoundingClientRect();
            return [b.left + L._size.l + L.xaxis.l2p(c), b.top + L._size.t + L.yaxis.l2p(r)]; }""", [r, c])
        t = time.perf_counter()
        page.mouse.click(x, y)
        page.get_by_text(f"Pixel (row {r}, col {c})").first.wait_for(timeout=600_000)
        page.wait_for_function("([sel, before]) => { const gd = document.querySelector(sel); return gd && "
                               "JSON.stringify(gd.layout.shapes && gd.layout.shapes[0]) !== before; }",
                               arg=[grid, before], timeout=600_000)
        times.append(time.perf_counter() - t)
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=600_000)
    return percentiles(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="registry name (default: the app's default data set)")
    parser.add_argument("--clicks", type=int, default=40, help="pixels for the Wiener timings")
    parser.add_argument("--unet-clicks", type=int, default=5, help="pixels for the UNet timings (cold + cached)")
    parser.add_argument("--browser", action="store_true", help="also time clicks in a real headless Chromium")
    parser.add_argument("--browser-clicks", type=int, default=12)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    result = {"compute": compute_bench(args)}
    if args.browser:
        result["browser"] = browser_bench(args)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    c = result["compute"]
    print(f"data set {c['dataset']} {tuple(c['shape'])}, {c['noise_levels']} noise levels, {c['cpus']} CPUs, "
          f"{c['torch_threads']} torch thread(s); UNet: {c['unet_weights']}; UNet Jacobians in {c['precision']}")
    print(f"{'compute only':<32} {'n':>4} {'p50 ms':>9} {'p95 ms':>9}")
    for label in ("click_to_wiener_maps", "click_to_unet_first_view_cold", "click_to_unet_maps_cold",
                  "click_to_unet_maps_cached", "click_to_unet_maps_cold_float32"):
        r = c[label]
        print(f"{label:<32} {r['n']:>4} {r['p50_ms']:>9} {r['p95_ms']:>9}")
    for label, r in result.get("browser", {}).items():
        print(f"{'browser, ' + label:<32} {r['n']:>4} {r['p50_ms']:>9} {r['p95_ms']:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
