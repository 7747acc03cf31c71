"""The analytical denoiser's batch paths before and after: float32 batches below sigma 1, and the per-batch variant
split over threads.

    nice -n 5 .venv/bin/python scripts/bench_batch_paths.py                   # both tables, about 15 minutes
    nice -n 5 .venv/bin/python scripts/bench_batch_paths.py --only precision --n 60000

Fashion-MNIST, a batch of noisy test images per call (`evaluate.noisy_heldout`), N training images, nothing scaled:
  precision   1 torch thread, t = 100 / 300 / 500: the batch path in float64 below sigma 1 (before) against the
              compensated float32 form (after, `softmax.PRECISION.masked`), alternated per repeat; CPU seconds
              per image-step (process time / batch), and max |x0_hat - float64| of each, the float64 reference
              being the engine on float64 data (equal to the dense formula to 1e-12 in the tests)
  per-batch   2 torch threads, the batch-normalised variant (the public code's) before (one call over all
              threads) and after (the training set split over threads at batch boundaries, `softmax.threaded_map`),
              alone and beside one busy-loop process, alternated; CPU seconds of this process and wall seconds
              per image-step, and whether the split result equals the one-thread one
The machine's load average is printed with each table.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from locality_core.denoisers.softmax import PRECISION, Switches  # noqa: E402
from locality_core.schedule import t_to_sigma  # noqa: E402
from locality_core.stats.covariance import get_stats, mean_float64  # noqa: E402

# the mask engine's policy before the compensated form: a batch below sigma 1 in float64
BEFORE = dataclasses.replace(PRECISION, masked=Switches(0.05, 0.4, batch=Switches(float64_below=1.0)))


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


def precision_table(args) -> None:
    torch.set_num_threads(1)
    ts = [int(t) for t in args.t.split(",")]
    train, centre, inputs, plans = setup(args.n, args.batch, ts)
    train64 = train.double()
    policies = {"before": BEFORE, "after": PRECISION}
    cpu = {(p, t): [] for p in policies for t in ts}
    error = {}
    with torch.no_grad():
        for t in ts:
            sigma, x = inputs[t]
            want = masked_softmax_denoise(x.double(), sigma, train64, plans[t], centre=centre)
            for rep in range(args.repeats):
                for name in list(policies)[::1 if rep % 2 == 0 else -1]:
                    masked_engine.PRECISION = policies[name]
                    seconds, _, got = timed(lambda s=sigma, x=x, t=t: masked_softmax_denoise(x, s, train, plans[t],
                                                                                             centre=centre))
                    cpu[name, t].append(seconds / args.batch)
                    error[name, t] = float((got.double() - want).abs().max())
    masked_engine.PRECISION = PRECISION
    print(f"\nprecision: N = {args.n:,}, {args.batch} inputs per call, 1 thread, {args.repeats} repeats alternated, "
          f"load average {load()}")
    print(f"{'t':>4} {'sigma':>7} {'before s':>9} {'after s':>8} {'x':>5} {'before err':>11} {'after err':>10} "
          f"{'form':>22}")
    for t in ts:
        sigma = inputs[t][0]
        form = PRECISION.masked.form(torch.float32, sigma, args.batch)
        kind = f"{'float32' if form.dtype == torch.float32 else 'float64'}{' compensated' if form.compensated else ''}"
        before, after = statistics.median(cpu["before", t]), statistics.median(cpu["after", t])
        print(f"{t:>4} {sigma:>7.4f} {before:>9.3f} {after:>8.3f} {before / after:>5.2f} {error['before', t]:>11.1e} "
              f"{error['after', t]:>10.1e} {kind:>22}")


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
    p.add_argument("--only", choices=("precision", "per-batch"))
    p.add_argument("--n", type=int, default=60_000, help="training images, precision table")
    p.add_argument("--n-per-batch", type=int, default=10_000, help="training images, per-batch table")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--t", default="100,300,500", help="timesteps, precision table")
    p.add_argument("--t-per-batch", default="100,500", help="timesteps, per-batch table")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}; Fashion-MNIST; load average {load()}")
    if args.only in (None, "precision"):
        precision_table(args)
    if args.only in (None, "per-batch"):
        per_batch_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
