"""The analytical denoiser's batch paths before and after: the per-batch variant split over threads.

    nice -n 5 .venv/bin/python scripts/bench_batch_paths.py                   # about 6 minutes

Fashion-MNIST, a batch of noisy test images per call (`evaluate.noisy_heldout`), N training images, nothing scaled:
  per-batch   2 torch threads, the batch-normalised variant (the public code's) before (one call over all
              threads) and after (the training set split over threads at batch boundaries, `softmax.threaded_map`),
              alone and beside one busy-loop process, alternated; CPU seconds of this process and wall seconds
              per image-step, and whether the split result equals the one-thread one
The machine's load average is printed with each table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locality_core.data import load_dataset  # noqa: E402
from locality_core.denoisers import masked_engine  # noqa: E402
from locality_core.denoisers.analytical import cached_mask  # noqa: E402
from locality_core.denoisers.evaluate import noisy_heldout  # noqa: E402
from locality_core.denoisers.masked_engine import masked_softmax_denoise, plan_mask  # noqa: E402
from locality_core.schedule import t_to_sigma  # noqa: E402
from locality_core.stats.covariance import get_stats, mean_float64  # noqa: E402


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def timed(fn) -> tuple[float, float, torch.Tensor]:
    """(process CPU seconds, wall seconds, result) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, out


def setup(n: int, batch: int, ts: list[int]) -> tuple[torch.Tensor, torch.Tensor, dict, dict]:
    data = load_dataset("fashion-mnist")
    stats = get_stats(data)
    train = data.train[:n].flatten(1).contiguous()
    sigmas = {t: float(t_to_sigma(t)) for t in ts}
    xs = dict(zip(ts, noisy_heldout(data.test[:batch], list(sigmas.values()), 0).flatten(2), strict=True))
    plans = {t: plan_mask(cached_mask(stats, s)[0], tuple(data.shape), batch=batch) for t, s in sigmas.items()}
    return train, mean_float64(train), {t: (sigmas[t], xs[t]) for t in ts}, plans


def busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def per_batch_table(args) -> None:
    torch.set_num_threads(2)
    ts = [int(t) for t in args.t_per_batch.split(",")]
    train, centre, inputs, plans = setup(args.n_per_batch, args.batch, ts)
    split_map = masked_engine.threaded_map

    def unsplit(work, n, **_):
        return [work(slice(0, n))]

    def call(t: int) -> torch.Tensor:
        sigma, x = inputs[t]
        return masked_softmax_denoise(x, sigma, train, plans[t], centre=centre, batch_normalised=True)

    variants = {"before": unsplit, "after": split_map}
    runs = {(v, where): [] for v in variants for where in ("alone", "beside")}
    with torch.no_grad():
        equal = []
        for t in ts:
            split = call(t)
            torch.set_num_threads(1)
            equal.append(torch.equal(split, call(t)))
            torch.set_num_threads(2)
        for rep in range(args.repeats):
            for where in ("alone", "beside"):
                proc = busy() if where == "beside" else None
                try:
                    time.sleep(0.2 if proc else 0.0)
                    for name in list(variants)[::1 if rep % 2 == 0 else -1]:
                        masked_engine.threaded_map = variants[name]
                        spent = [timed(lambda t=t: call(t))[:2] for t in ts]
                        runs[name, where].append(tuple(sum(v) / args.batch for v in zip(*spent, strict=True)))
                finally:
                    if proc:
                        proc.kill()
                        proc.wait()
    masked_engine.threaded_map = split_map
    print(f"\nper-batch variant: N = {args.n_per_batch:,}, {args.batch} inputs per call, 2 threads, "
          f"t = {args.t_per_batch} summed, {args.repeats} repeats alternated, load average {load()}; split result "
          f"equals the one-thread one: {all(equal)}")
    print(f"{'':>7} {'alone cpu':>10} {'alone wall':>11} {'beside cpu':>11} {'beside wall':>12} {'slow-down':>10}")
    for name in variants:
        a_cpu, a_wall = (statistics.median(v) for v in zip(*runs[name, "alone"], strict=True))
        b_cpu, b_wall = (statistics.median(v) for v in zip(*runs[name, "beside"], strict=True))
        print(f"{name:>7} {a_cpu:>10.3f} {a_wall:>11.3f} {b_cpu:>11.3f} {b_wall:>12.3f} {b_wall / a_wall:>10.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("per-batch",))
    p.add_argument("--n-per-batch", type=int, default=10_000, help="training images, per-batch table")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--t-per-batch", default="100,500", help="timesteps, per-batch table")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}; Fashion-MNIST; load average {load()}")
    if args.only in (None, "per-batch"):
        per_batch_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
