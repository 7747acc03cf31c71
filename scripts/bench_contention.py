"""The analytical denoiser alone and beside CPU-bound neighbours, this tree's engine against a previous one.

    .venv/bin/python scripts/bench_contention.py                      # before = main's analytical.py
    .venv/bin/python scripts/bench_contention.py --before HEAD~3 --n-train 20000 --batch 8 --threads 2

The previous implementation is `git show REF:locality_core/analytical.py`, loaded as a module of this package,
so both run in the same process on the same inputs, statistics and masks (plans built before timing). For each
noise level the two are called alternately, first alone, then beside ``--neighbours`` processes that spin on
a core each; it prints seconds per call, the loaded / alone ratio of each, the after / before ratio, and the
largest difference between their outputs. The machine's load average is printed with the table: timings on a
shared machine are noisy, so compare ratios from one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from locality_core import analytical  # noqa: E402
from locality_core.data import load_dataset  # noqa: E402
from locality_core.schedule import REFERENCE_SIGMAS, REFERENCE_TIMESTEPS  # noqa: E402
from locality_core.stats import get_stats  # noqa: E402

SPIN = "while True: pass"


def previous_module(ref: str):
    """locality_core/analytical.py at git ``ref``, imported as ``locality_core._analytical_before``."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:locality_core/analytical.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "_analytical_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("locality_core._analytical_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def neighbours(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default="main", help="git ref of the previous analytical.py (default main)")
    p.add_argument("--n-train", type=int, default=60000)
    p.add_argument("--batch", type=int, default=1, help="inputs per call")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--neighbours", type=int, default=2, help="spinning processes beside the loaded calls")
    p.add_argument("--t", default="900,500,100", help="DDIM timesteps (of 900, 800, ..., 0)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset("fashion-mnist")
    stats = get_stats(dataset)
    train = dataset.train[:args.n_train]
    impls = {"before": previous_module(args.before).AnalyticalDenoiser().fit((train, stats)),
             "after": analytical.AnalyticalDenoiser().fit((train, stats))}
    x0 = dataset.test[:args.batch]
    print(f"analytical denoiser, fashion-mnist N = {len(train)}, {args.batch} input(s) per call, "
          f"{args.threads} thread(s), {args.neighbours} spinning neighbour(s); before = {args.before}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'t':>4} {'before s':>9} {'after s':>9} {'after/before':>12} | {'loaded: before':>14} {'after':>8} "
          f"{'ratio before':>12} {'ratio after':>11} | {'max |diff|':>10}")
    for t in (int(v) for v in args.t.split(",")):
        sigma = REFERENCE_SIGMAS[REFERENCE_TIMESTEPS.index(t)]
        x = x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            for den in impls.values():
                den.plan_for(sigma, args.batch)                       # masks and plans: built once, untimed
            outs = {k: den(x, sigma) for k, den in impls.items()}
            alone = {k: seconds(lambda d=den, x=x, s=sigma: d(x, s)) for k, den in impls.items()}
            procs = neighbours(args.neighbours)
            try:
                time.sleep(0.5)
                loaded = {k: seconds(lambda d=den, x=x, s=sigma: d(x, s)) for k, den in impls.items()}
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()
        diff = float((outs["after"] - outs["before"]).abs().max())
        print(f"{t:>4} {alone['before']:>9.2f} {alone['after']:>9.2f} {alone['after'] / alone['before']:>12.2f} | "
              f"{loaded['before']:>14.2f} {loaded['after']:>8.2f} {loaded['before'] / alone['before']:>12.2f} "
              f"{loaded['after'] / alone['after']:>11.2f} | {diff:>10.2e}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
