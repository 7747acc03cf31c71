"""Benchmark of the core (not a test): statistics and fields, each next to a plain baseline timed in the same run.

    python scripts/bench_core.py [--quick]

Prints a table: our streamed, cached statistics vs plain np.cov + np.linalg.eigh on the same arrays
(fashion-mnist, natural-patches); the Wiener fields of one pixel at 10 sigmas (closed form) vs forming
P_sigma densely; the UNet fields of one pixel at 10 sigmas with n = 32, cold and cached; one full Jacobian.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch

from locality_core.data import DatasetError, load_dataset
from locality_core.denoisers.wiener import wiener_matrix
from locality_core.schedule import REFERENCE_SIGMAS
from locality_core.stats.covariance import compute_stats, get_stats
from locality_core.store.cache import ArrayCache


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fashion-mnist only")
    args = parser.parse_args()
    rows = []
    cache = ArrayCache(tempfile.mkdtemp(prefix="bench-cache-"))
    names = ["fashion-mnist"] + ([] if args.quick else ["natural-patches"])
    for name in names:
        try:
            ds = load_dataset(name)
        except DatasetError as exc:
            print(f"skip {name}: {exc}")
            continue
        x = ds.train.reshape(len(ds.train), -1).double().numpy()
        t_plain, _ = timed(lambda x=x: np.linalg.eigh(np.cov(x, rowvar=False)))
        t_ours, _ = timed(lambda ds=ds: compute_stats(ds.train))
        t_cold, _ = timed(lambda ds=ds: get_stats(ds, cache=cache))
        t_hit, stats = timed(lambda ds=ds: get_stats(ds, cache=cache), repeat=3)
        rows.append((f"statistics {name} (N={len(x)}, d={x.shape[1]})", t_plain, t_ours, "np.cov + eigh"))
        rows.append((f"statistics {name}, cold via cache / cache hit", t_cold, t_hit, "cold"))
        if name == "fashion-mnist":
            from locality_core.analysis.fields import wiener_field

            sig = list(REFERENCE_SIGMAS)
            t_dense, _ = timed(lambda s=stats, sig=sig: [wiener_matrix(s.eigvecs, s.eigvals, v)[406] for v in sig])
            t_field, _ = timed(lambda s=stats, sig=sig: wiener_field(s, (14, 14), sig), repeat=5)
            rows.append(("Wiener fields, 1 pixel x 10 sigmas", t_dense, t_field, "dense P per sigma"))
            unet_rows(ds, cache, rows)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads\n")
    print(f"{'what':<58} {'baseline s':>11} {'ours s':>9} {'ratio':>7}  baseline")
    for what, base, ours, label in rows:
        ratio = f"{base / ours:7.1f}" if base == base and ours > 0 else "      -"
        print(f"{what:<58} {base:>11.4f} {ours:>9.4f} {ratio}  {label}")


def unet_rows(ds, cache, rows):
    from locality_core.analysis.basis import full_jacobian
    from locality_core.analysis.fields import denoiser_field
    from locality_core.denoisers.registry import DenoiserError, get_denoiser

    try:
        unet = get_denoiser("unet", ds)
    except DenoiserError as exc:
        print(f"skip UNet rows: {exc}")
        return
    sig = list(REFERENCE_SIGMAS)
    t_cold, _ = timed(lambda: denoiser_field(ds, "unet", (14, 14), sig, n=32, cache=cache))
    t_hit, _ = timed(lambda: denoiser_field(ds, "unet", (14, 14), sig, n=32, cache=cache), repeat=5)
    rows.append(("UNet fields, 1 pixel x 10 sigmas, n=32: cold / cached", t_cold, t_hit, "cold"))
    t_jac, _ = timed(lambda: full_jacobian(unet, ds.test[0] + 0.5 * torch.randn(1, 28, 28), 0.5))
    rows.append(("UNet full 784 x 784 Jacobian (batched VJPs)", float("nan"), t_jac, "-"))


if __name__ == "__main__":
    main()
