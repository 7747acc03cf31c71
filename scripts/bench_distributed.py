"""Sharded statistics and analytical denoiser: k local gloo ranks against one process, in one run.

    .venv/bin/python scripts/bench_distributed.py                       # 1 and 2 ranks, t = 500
    .venv/bin/python scripts/bench_distributed.py --ranks 1,2,4 --t 900,500,100 --batch 8

Fashion-MNIST, all N = 60,000 training images (``--n-train`` fewer). One process runs with ``--threads``
threads (default 2) and with 1; each rank runs with 1 thread (torchrun's default; numpy's BLAS too), ranks
started by torch.multiprocessing on 127.0.0.1. Statistics are computed once untimed (first touch of the pages),
then timed. Timed between barriers: the statistics (moments streamed and merged, then
eigh on rank 0 and its broadcast) and one call of the analytical denoiser per noise level (masks and plans
built before timing). Prints seconds, speed-up over one process, the scaling efficiency T(1 rank) / (k T(k)),
the per-rank throughput in GFLOP/s of the plan's distance GEMMs, and from it a paper estimate for N = 1,000,000
images of d = 12,288 (64x64x3) on k GPUs. Ranks beyond the machine's cores are oversubscribed: the script says
so. The load average is printed: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locality_core.data import Dataset, load_dataset  # noqa: E402
from locality_core.denoisers import distributed  # noqa: E402
from locality_core.denoisers.analytical import AnalyticalDenoiser  # noqa: E402
from locality_core.denoisers.masked_engine import executed_flop  # noqa: E402
from locality_core.denoisers.softmax import PRECISION  # noqa: E402
from locality_core.schedule import REFERENCE_SIGMAS, REFERENCE_TIMESTEPS  # noqa: E402
from locality_core.stats.covariance import compute_stats, get_stats  # noqa: E402

BIG_N, BIG_D = 1_000_000, 12_288
ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
GPU_FP32_PEAK = 67e12  # H100 / H200 SXM, FP32 without tensor cores (NVIDIA data sheet)


def sigmas_of(text: str) -> list[float]:
    return [REFERENCE_SIGMAS[REFERENCE_TIMESTEPS.index(int(t))] for t in text.split(",")]


def inputs(dataset, batch: int, sigma: float) -> torch.Tensor:
    x0 = dataset.test[:batch]
    return x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))


def timed(fn, barrier=lambda: None) -> float:
    barrier()
    start = time.perf_counter()
    fn()
    barrier()
    return time.perf_counter() - start


def run_measurements(train, stats, dataset, args, barrier=lambda: None, make=None) -> dict:
    """{"stats": s, sigma: s, ...} for one process (make=None) or one rank (make = shard_denoiser on its shard)."""
    stats_fn = make["stats"] if make else (lambda: compute_stats(train))
    stats_fn()                                                # first touch of the pages, untimed
    out = {"stats": timed(stats_fn, barrier)}
    den = make["den"]() if make else AnalyticalDenoiser(cache=False).fit(Dataset.from_tensor(train, stats=stats))
    for sigma in sigmas_of(args.t):
        x = inputs(dataset, args.batch, sigma)
        den.plan_for(sigma, args.batch)
        with torch.no_grad():
            out[sigma] = timed(lambda x=x, s=sigma: den(x, s), barrier)
    out["work"] = {s: den.plan_for(s, args.batch).work for s in sigmas_of(args.t)}
    out["flop"] = {s: executed_flop(den.plan_for(s, args.batch), args.batch,
                                    PRECISION.masked.form(torch.float32, s, args.batch).compensated)
                   for s in sigmas_of(args.t)}
    return out


def rank_main(rank: int, world: int, port: int, train, args, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        dataset = load_dataset("fashion-mnist")
        stats = get_stats(dataset) if len(train) == len(dataset.train) else compute_stats(train)
        shard = distributed.shard_of(train)
        make = {"stats": lambda: distributed.sharded_stats(shard),
                "den": lambda: distributed.shard_denoiser(AnalyticalDenoiser(cache=False), shard, stats=stats)}
        result = run_measurements(train, stats, dataset, args, barrier=dist.barrier, make=make)
        if rank == 0:
            torch.save(result, f"{out_dir}/result.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_ranks(k: int, train, args) -> dict:
    """Rank 0's measurements with k ranks; every rank's BLAS with 1 thread, as torchrun sets it."""
    out = tempfile.mkdtemp()
    saved = {v: os.environ.get(v) for v in ONE_THREAD}
    os.environ.update(dict.fromkeys(ONE_THREAD, "1"))
    try:
        mp.spawn(rank_main, args=(k, free_port(), train, args, out), nprocs=k, join=True)
    finally:
        for v, value in saved.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value
    return torch.load(f"{out}/result.pt")


def matmul_gflops() -> float:
    a, b = torch.randn(4096, 784), torch.randn(784, 784)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 4096 * 784 * 784 / (time.perf_counter() - start) / 1e9


def report(rows: dict, args, n: int, peak1: float) -> None:
    sigmas = sigmas_of(args.t)
    cols = ["stats"] + sigmas
    heads = ["statistics"] + [f"t={REFERENCE_TIMESTEPS[REFERENCE_SIGMAS.index(s)]}" for s in sigmas]
    base, one = rows["1 process"], rows.get("1 rank")
    print(f"{'':<24}" + "".join(f"{h:>22}" for h in heads))
    for name, r in rows.items():
        cells = []
        for c in cols:
            cell = f"{r[c]:.2f}s x{base[c] / r[c]:.2f}"
            k = r.get("ranks")
            if k and one:
                cell += f" e{one[c] / (k * r[c]):.2f}"
            cells.append(cell)
        print(f"{name:<24}" + "".join(f"{cell:>22}" for cell in cells))
    print("(x = speed-up over one process with its threads; e = scaling efficiency T(1 rank) / (k T(k ranks)))")
    if one:
        estimate(one, sigmas, n, args.batch, peak1)


def estimate(one: dict, sigmas: list[float], n: int, batch: int, peak1: float) -> None:
    print(f"\nper-rank throughput (1 rank, 1 thread; 1-thread GEMM peak measured now: {peak1:.0f} GFLOP/s):")
    for s in sigmas:
        flops = n * one["flop"][s]                            # as executed (`masked_engine.executed_flop`)
        rate = flops / one[s] / 1e9
        frac = one["work"][s] / 784**2
        share = rate / peak1
        per_image_step = BIG_N * BIG_D**2 * one["flop"][s] / 784**2 / batch / (share * GPU_FP32_PEAK)
        print(f"  sigma={s:.4g}: {rate:.1f} GFLOP/s ({share:.0%} of the GEMM peak), plan work {frac:.0%} of d^2. "
              f"N = 1e6, d = 12,288 at the same share of a GPU's FP32 peak (67 TFLOP/s), same plan share: "
              + ", ".join(f"k={k}: {per_image_step / k:.1f} s" for k in (1, 8, 64)) + " per image per step")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--t", default="500", help="DDIM timesteps (of 900, 800, ..., 0)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="threads of the one-process run")
    p.add_argument("--n-train", type=int, default=60000)
    args = p.parse_args(argv)
    dataset = load_dataset("fashion-mnist")
    train = dataset.train[:args.n_train]
    stats = get_stats(dataset) if len(train) == len(dataset.train) else compute_stats(train)
    cores = os.cpu_count()
    print(f"fashion-mnist N = {len(train)}, {args.batch} input(s) per call, {cores} cores, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    torch.set_num_threads(1)
    peak1 = matmul_gflops()
    rows = {}
    torch.set_num_threads(args.threads)
    rows["1 process"] = run_measurements(train, stats, dataset, args)
    torch.set_num_threads(1)
    with threadpool_limits(1):                                # numpy's BLAS too (the statistics)
        rows["1 process, 1 thread"] = run_measurements(train, stats, dataset, args)
    for k in (int(v) for v in args.ranks.split(",")):
        name = f"{k} rank{'s' if k > 1 else ''}" + (" (oversubscribed)" if k > cores else "")
        rows[name] = {**with_ranks(k, train, args), "ranks": k}
    report(rows, args, len(train), peak1)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
