"""The lecture table (issue 11): warm-up time per data set, then what a speaker waits for after it.

Per data set: the warm-up (`locality_core.views.warmup`, every default view) on ``--threads`` torch threads into a fresh
cache (or an existing one with --cache, which then times only what is missing); then, with the app's thread
setting, each page's default view as an AppTest run (the script, its cached library calls and its figures, no
browser), a pixel click to the first UNet view (4 images per level, all levels in one batched pass), a new
Jacobian basis (another test image) and new-seed samples of the fast denoisers. Targets from the issue.

    python scripts/bench_app.py --lecture --dataset fashion-mnist
    python scripts/bench_lecture.py fashion-mnist natural-patches [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WARMUP_TARGET_S = {"fashion-mnist": 600, "natural-patches": 1200}
BASIS_TARGET_S = {"fashion-mnist": 5, "natural-patches": 20}
PAGE_TARGET_S, CLICK_TARGET_S, SAMPLES_TARGET_S = 2, 1, 2
PAGES = ("pages/sensitivity.py", "pages/samples.py", "pages/jacobian.py", "pages/experiments.py",
         "pages/components.py")


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads): on a shared machine the CPU time is the steadier
    measure of the work; on a quiet one the wall time is about CPU time / threads."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def warmup_rows(name: str, threads: int) -> list[tuple[str, float, float | None]]:
    import torch

    from locality_core.views import warmup

    torch.set_num_threads(threads)
    rows = []
    for entry in warmup.tasks([name]):
        seconds = timed(lambda entry=entry: warmup.run([entry]))
        failed = " (FAILED)" if "/".join(entry) in warmup.read_status()["errors"] else ""
        rows.append((f"  warm-up: {entry[1]}{failed}", *seconds, None))
    total = tuple(sum(r[i] for r in rows) for i in (1, 2))
    return [(f"warm-up, all tasks ({threads} threads)", *total, WARMUP_TARGET_S.get(name))] + rows


def page_rows(name: str) -> list[tuple[str, float, float | None]]:
    """Each page's default view after the warm-up: an AppTest run of the page (the data set already loaded by a
    first run, as on a server that has served one visitor)."""
    from streamlit.testing.v1 import AppTest

    os.environ["LOCALITY_APP_DATASET"] = name
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=1800)
    at.run()
    rows = []
    for page in PAGES:
        seconds = timed(lambda page=page: at.switch_page(page).run())
        problems = [e.value for e in at.exception] + [e.value for e in at.error]
        rows.append((f"page {Path(page).stem}" + (f" (ERROR: {problems[0][:60]})" if problems else ""), *seconds,
                     PAGE_TARGET_S))
    return rows


def interactive_rows(name: str) -> list[tuple[str, float, float | None]]:
    import torch

    from locality_core.analysis.basis import basis_from_jacobian, full_jacobian, jacobian_by_copies
    from locality_core.analysis.sampling import cached_trajectory
    from locality_core.data import load_dataset
    from locality_core.views.warmup import DEFAULTS
    from scripts.bench_app import unet_click, unet_for
    from ui.loading import configure_threads, field_precision

    configure_threads()  # as app.py does
    data = load_dataset(name)
    model, _ = unet_for(data)
    sigmas, sigma = list(DEFAULTS.sigmas), DEFAULTS.jacobian_sigma()
    y = data.test[1] + sigma * torch.randn(data.test[1].shape, generator=torch.Generator().manual_seed(7))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from locality_core.store.cache import ArrayCache

        cache = ArrayCache(tmp)
        unet_click(model, data, (3, 5), sigmas, cache, n=4, precision=field_precision(), batched=True)  # warm code
        rows.append(("pixel click -> first UNet view", *timed(lambda: unet_click(
            model, data, (5, 9), sigmas, cache, n=4, precision=field_precision(), batched=True)), CLICK_TARGET_S))
        rows.append((f"new Jacobian basis (image 1, {field_precision()})", *timed(lambda: basis_from_jacobian(
            full_jacobian(model, y, sigma, precision=field_precision()).double().numpy(), sigma, data.shape)),
            BASIS_TARGET_S.get(name)))
        rows.append(("  the same in float32", *timed(lambda: basis_from_jacobian(
            full_jacobian(model, y, sigma).double().numpy(), sigma, data.shape)), None))
        rows.append(("  the same, one copy per row (before)", *timed(lambda: basis_from_jacobian(
            jacobian_by_copies(model, y, sigma).double().numpy(), sigma, data.shape)), None))
        for denoiser in ("unet", "wiener", "optimal"):
            seconds = timed(lambda d=denoiser: cached_trajectory(data, d, DEFAULTS.sample_n, DEFAULTS.sample_steps,
                                                                 12345, cache=cache))
            rows.append((f"new-seed samples: {denoiser} ({DEFAULTS.sample_n})", *seconds, SAMPLES_TARGET_S))
    return rows


def lecture_table(names: list[str], threads: int = 2, cache_dir: str | None = None, warm: bool = True
                  ) -> dict[str, list]:
    """{data set: [(what, wall s, CPU s, target or None)]}; the cache is a fresh folder unless ``cache_dir``;
    ``warm=False`` skips the warm-up rows (views timed on whatever ``cache_dir`` holds)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LOCALITY_CACHE_DIR"] = cache_dir or tmp
        os.environ["LOCALITY_WARMUP"] = "0"  # the AppTest runs must not start a second warm-up
        for name in names:
            out[name] = (warmup_rows(name, threads) if warm else []) + page_rows(name) + interactive_rows(name)
    return out


def print_table(table: dict[str, list]) -> None:
    print(f"{'':<48} {'wall s':>9} {'CPU s':>9} {'target':>7}  ok (wall)")
    for name, rows in table.items():
        print(f"--- {name}")
        for what, wall, cpu, target in rows:
            ok = "" if target is None else ("yes" if wall <= target else "NO")
            print(f"{what:<48} {wall:>9.2f} {cpu:>9.2f} {'' if target is None else target:>7}  {ok}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", default=["fashion-mnist", "natural-patches"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the warm-up (default 2)")
    parser.add_argument("--cache", help="an existing cache folder (default: a fresh one, so the warm-up is cold)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up rows (use with --cache)")
    args = parser.parse_args(argv)
    print_table(lecture_table(args.datasets, args.threads, args.cache, warm=not args.no_warmup))
    return 0


if __name__ == "__main__":
    sys.exit(main())
