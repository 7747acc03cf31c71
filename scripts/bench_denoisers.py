"""Benchmark every denoiser against the straightforward dense implementation of its formula.

    nice -n 10 .venv/bin/python scripts/bench_denoisers.py            # about 10 minutes on 2 free cores
    nice -n 10 .venv/bin/python scripts/bench_denoisers.py --quick    # smoke run, about a minute
    nice -n 10 .venv/bin/python scripts/bench_denoisers.py --natural-only   # the natural-patches table, 5 minutes

Prints, per data set (Fashion-MNIST, N = 60,000; natural-patches when registered and available):
  time per image per DDIM step (averaged over the 10 reference noise levels) of the fast implementation and of
  the straightforward dense one, the speed-up, the largest absolute difference between the two (float32, and
  against the dense formula in float64 on a small subset), and GFLOP/s (actual operations of the fast path;
  the dense formula's operations for the dense path), next to a plain torch matmul timed in the same run.
  Dense timings use a subset of the training images and are scaled to N (their cost is exactly linear in N).
Then the time of sampling 8 images x 10 DDIM steps with every denoiser on Fashion-MNIST.
Timings are wall-clock; the machine's load average and torch's thread count are printed with them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locality_core.analysis.metrics import per_batch_difference  # noqa: E402
from locality_core.data import Dataset  # noqa: E402
from locality_core.denoisers.analytical import AnalyticalDenoiser, analytical_dense, cached_mask  # noqa: E402
from locality_core.denoisers.optimal import OptimalDenoiser  # noqa: E402
from locality_core.denoisers.patches import ELSDenoiser, LSDenoiser, published_schedule_for, square_mask  # noqa: E402
from locality_core.denoisers.softmax import finish, merge_states, softmax_state  # noqa: E402
from locality_core.denoisers.wiener import WienerDenoiser, wiener_matrix  # noqa: E402
from locality_core.schedule import REFERENCE_SIGMAS  # noqa: E402
from locality_core.stats.covariance import get_stats  # noqa: E402


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def matmul_gflops() -> float:
    a, b = torch.randn(8192, 784), torch.randn(784, 784)
    a @ b
    _, t = timed(lambda: [a @ b for _ in range(5)])
    return 5 * 2 * 8192 * 784 * 784 / t / 1e9


def optimal_dense(x, sigma, train, chunk=512):
    """Straightforward: direct squared differences per batch of 512 images, exact streaming softmax."""
    xf, total = x.flatten(1), None
    for s in range(0, len(train), chunk):
        x0 = train[s:s + chunk].flatten(1)
        state = softmax_state(-((xf[:, None] - x0[None]) ** 2).sum(-1) / (2 * sigma**2), x0)
        total = state if total is None else merge_states(total, state)
    return finish(total).view_as(x)


def wiener_dense(stats, x, sigma):
    """Straightforward: form P_sigma (d^3) and apply it."""
    P = torch.from_numpy(wiener_matrix(stats.eigvecs, stats.eigvals, sigma)).float()
    mu = torch.from_numpy(stats.mean).float()
    return (mu + (x.flatten(1) - mu) @ P.T).view_as(x)


def max_diff(a, b) -> float:
    return max(float((u.double() - v.double()).abs().max()) for u, v in zip(a, b, strict=True))


def noisy(dataset, n, sigmas, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = dataset.test[:n]
    return [x0 + s * torch.randn(x0.shape, generator=g) for s in sigmas]


def bench_dataset(dataset, args, sigmas, peak):
    """Rows of the comparison table for one data set."""
    stats = get_stats(dataset)
    N, d, B = len(dataset.train), dataset.d, args.batch
    n_dense = min(N, args.dense_n)
    xs = noisy(dataset, B, sigmas)
    rows = []

    def run(fn, train_x):  # per image per step over the sigmas, each sigma with its own noisy input
        total, outs = 0.0, []
        with torch.no_grad():
            for x, s in zip(train_x, sigmas, strict=True):
                out, t = timed(fn, x, s)
                outs.append(out)
                total += t
        return total / (len(sigmas) * B), outs

    def add(name, fast, dense, fast_flops, dense_flops, diff, diff64="", note=""):
        t_fast, t_dense = fast, dense
        rows.append((name, t_fast, t_dense, t_dense / t_fast if t_dense else None, diff, diff64,
                     fast_flops / t_fast / 1e9 if fast_flops else None,
                     dense_flops / t_dense / 1e9 if dense_flops and t_dense else None, note))

    # Wiener
    w = WienerDenoiser.from_stats(stats)
    tf, of = run(w, xs)
    td, od = run(lambda x, s: wiener_dense(stats, x, s), xs)
    add("wiener", tf, td, 4 * d * d, 2 * d**3 / B + 2 * d * d, max_diff(of, od), note="dense forms P (d^3)")

    # optimal
    opt = OptimalDenoiser().fit(dataset)
    tf, of = run(opt, xs)
    td, od = run(lambda x, s: optimal_dense(x, s, dataset.train), xs)
    add("optimal", tf, td, 2 * N * d, 3 * N * d, max_diff(of, od), note="float64 distances below sigma 2")

    # analytical and LS: fast on all N, dense on a subset (scaled), differences on the subset
    masks = {s: cached_mask(stats, s)[0] for s in sigmas}
    sched = published_schedule_for(dataset)
    C, H, W = dataset.shape
    makers = {"analytical": (lambda train: AnalyticalDenoiser().fit(Dataset.from_tensor(train, stats=stats)),
                             masks.__getitem__),
              "ls": (lambda train: LSDenoiser(sched).fit(Dataset.from_tensor(train)),
                     lambda s: square_mask(dataset.shape, sched.size_for(s)))}
    for name, (make, mask_of) in makers.items():
        den = make(dataset.train)
        if name == "analytical":
            for s in sigmas:
                den.plan_for(s, args.batch)                       # plans per sigma and batch: built once, untimed
            flops = 2 * N * np.mean([den.plan_for(s, args.batch).work for s in sigmas]) * (B + 1) / B
            note = ""
        else:                                                     # the two band products of the box sums
            flops = 2 * N * H * W * (H + W)
            note = "box sums; "
        tf, _ = run(den, xs)
        sub = make(dataset.train[:n_dense])
        if name == "analytical":
            sub._plans = den._plans
        _, of = run(sub, xs)
        td, od = run(lambda x, s, m=mask_of: analytical_dense(x, s, dataset.train[:n_dense], m(s)), xs)
        small = dataset.train[:args.diff64_n]
        tiny = make(small)
        if name == "analytical":
            tiny._plans = den._plans
        x64 = [x[:2].double() for x in xs]
        o64 = [tiny(x.float(), s) for x, s in zip(x64, sigmas, strict=True)]
        r64 = [analytical_dense(x, s, small.double(), mask_of(s)) for x, s in zip(x64, sigmas, strict=True)]
        add(name, tf, td * N / n_dense, flops, 2 * N * d * d, max_diff(of, od),
            f"{max_diff(o64, r64):.1e}", note=f"{note}dense timed on N={n_dense:,}, scaled")

    # ELS on a subset, and the UNet
    els = ELSDenoiser(sched, n_train=args.els_n).fit(dataset)
    tf, _ = run(els, xs)
    add("els", tf, None, None, None, None, note=f"random subset of {len(els.train_):,} training images")
    unet, note = load_unet_or_random(dataset)
    tf, _ = run(unet, xs)
    add("unet", tf, None, None, None, None, note=note)
    return rows


def load_unet_or_random(dataset):
    from locality_core.denoisers.models import find_weights, load_weights
    from locality_core.denoisers.training import default_unet_config
    from locality_core.denoisers.unet import EDMDenoiser

    if find_weights(dataset.name):  # timing only: --quick's training subset may use the full set's weights
        return load_weights(find_weights(dataset.name)), "trained weights"
    return EDMDenoiser(default_unet_config(dataset)).eval(), "untrained (timing only)"


def print_table(title, rows, peak):
    print(f"\n{title}")
    print(f"{'denoiser':<11} {'fast s/img/step':>15} {'dense s/img/step':>16} {'speed-up':>8} "
          f"{'max|diff| f32':>13} {'vs dense f64':>12} {'GFLOP/s fast':>12} {'GFLOP/s dense':>13}  note")
    for name, tf, td, sp, diff, d64, gf, gd, note in rows:
        f = lambda v, fmt: "" if v is None else format(v, fmt)  # noqa: E731
        print(f"{name:<11} {tf:>15.4g} {f(td, '>16.4g')} {f(sp, '>8.2f')} {f(diff, '>13.1e')} {d64:>12} "
              f"{f(gf, '>12.1f')} {f(gd, '>13.1f')}  {note}")
    print(f"(plain torch matmul 8192x784 @ 784x784, float32, same run: {peak:.1f} GFLOP/s)")


def bench_sampling(dataset, args):
    from locality_core.analysis.sampling import sample_many

    sched = published_schedule_for(dataset)
    stats = get_stats(dataset)
    unet, note = load_unet_or_random(dataset)
    denoisers = {"wiener": WienerDenoiser.from_stats(stats), "optimal": OptimalDenoiser().fit(dataset),
                 "analytical": AnalyticalDenoiser().fit(dataset),
                 "ls": LSDenoiser(sched).fit(dataset),
                 "els": ELSDenoiser(sched, n_train=args.els_n).fit(dataset), "unet": unet}
    print(f"\nsampling {args.samples} images x 10 DDIM steps on {dataset.name} (N = {len(dataset.train):,}; "
          f"ELS on a random subset of {min(args.els_n, len(dataset.train)):,} images; unet: {note})")
    for name, den in denoisers.items():
        _, t = timed(lambda d=den, k=name: sample_many({k: d}, args.samples, 0, REFERENCE_SIGMAS,
                                                        shape=tuple(dataset.shape), batch_size=args.samples))
        print(f"  {name:<11} {t:8.1f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 5,000 training images, 2 inputs, 2 samples")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--batch", type=int, default=8, help="noisy inputs per call in the table")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--dense-n", type=int, default=10_000, help="training images for the dense timings")
    p.add_argument("--diff64-n", type=int, default=2000, help="training images for the float64 comparison")
    p.add_argument("--els-n", type=int, default=2000, help="ELS training subset")
    p.add_argument("--per-batch", action="store_true", help="also the per-batch vs exact difference (N=10,000)")
    p.add_argument("--natural-only", action="store_true", help="only the natural-patches table")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from locality_core.data import Dataset, load_dataset
    from locality_core.data.registry import REGISTRY

    fashion = load_dataset("fashion-mnist")
    if args.quick:
        fashion = Dataset("fashion-mnist", fashion.train[:5000], fashion.test, fashion.fingerprint + ":first-5000",
                          fashion.description)
        args.batch, args.samples, args.dense_n, args.diff64_n, args.els_n = 2, 2, 2000, 500, 200
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    peak = matmul_gflops()
    sigmas = list(REFERENCE_SIGMAS)
    if not args.natural_only:
        rows = bench_dataset(fashion, args, sigmas, peak)
        print_table(f"fashion-mnist, N = {len(fashion.train):,}, {args.batch} inputs per call, 10 reference sigmas",
                    rows, peak)

    if "natural-patches" not in REGISTRY:
        print("\nnatural-patches: not registered in this checkout; skipped")
    elif not REGISTRY["natural-patches"].availability()[0]:
        print(f"\nnatural-patches: unavailable ({REGISTRY['natural-patches'].availability()[1]}); skipped")
    else:
        natural = load_dataset("natural-patches")
        if args.quick:
            natural = Dataset("natural-patches", natural.train[:2000], natural.test,
                              natural.fingerprint + ":first-2000", natural.description)
        nat_args = argparse.Namespace(**{**vars(args), "batch": 1, "dense_n": min(args.dense_n, 2000),
                                         "diff64_n": min(args.diff64_n, 300)})
        nat_sigmas = [sigmas[0], sigmas[4], sigmas[8]]             # t = 900, 500, 100: one image, three steps
        rows = bench_dataset(natural, nat_args, nat_sigmas, peak)
        print_table(f"natural-patches, N = {len(natural.train):,}, 1 input, sigmas at t = 900 / 500 / 100",
                    rows, peak)

    if not args.natural_only:
        bench_sampling(fashion, args)
    if args.per_batch:
        print("\nper-batch (reference code) vs exact softmax, Fashion-MNIST, N = 10,000, 8 test images:")
        for r in per_batch_difference(load_dataset("fashion-mnist"), n_train=10_000, n=8):
            print(f"  t={r['t']:>3} sigma={r['sigma']:8.4g}  max|diff| {r['max_abs_diff']:.3f}  "
                  f"mean|diff| {r['mean_abs_diff']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
