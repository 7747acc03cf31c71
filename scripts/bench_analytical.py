"""The analytical denoiser's engine against its previous per-block engine and the public code's computation.

    nice -n 5 .venv/bin/python scripts/bench_analytical.py              # about 8 minutes on 2 cores
    nice -n 5 .venv/bin/python scripts/bench_analytical.py --quick      # smoke run, about 2 minutes
    .venv/bin/python scripts/bench_analytical.py --reference-repo CHECKOUT    # + the public code, unmodified

Fashion-MNIST, noise levels t = 900, 500, 100, 0, a batch of noisy test images per call. All in one run, the
engines' calls alternated (engine order rotated every repeat), best of the repeats (on a shared machine the
least disturbed one; the GEMM peak likewise, measured between the calls):
  new        the engine in locality_core/denoisers/masked_engine.py (padded block groups, base-2 logits; with several
             threads the training set split over them, `softmax.threaded_state`)
  old        the per-block engine it replaced (copied below verbatim, on the same plan's blocks)
  stand-in   a re-implementation of the public code's arithmetic (faster than the public code): per batch of
             512 training images, squared differences (B, 512, d) @ binary mask (d, d) -> distances, softmax
             within the batch, batch results averaged (float32). Same numbers as the public code (1.4e-5), but
             torch.softmax and one in-place GEMM instead of its einsum and separate softmax passes make it
             1.2-1.6x faster than the public code: ratios against it understate the engine's lead
  public     with ``--reference-repo PATH`` (a checkout of github ottogin/locality-in-diffusion-models, which
             needs `diffusers`): its ``PCALocalityDenoiser.denoise`` itself, imported from the checkout and run
             unmodified on the same inputs (x_t = sqrt(abar_t) x_sigma), alternated with the others. Its Wiener
             SVD is written with its own ``save_wiener_filter`` from the statistics the other engines' masks come
             from, and its data loader is a torch DataLoader over the same training tensor in memory, batches of
             512 as its Fashion-MNIST config (its own loader, which re-reads the images each call, is slower)
  floor      the plan's FLOP / plain GEMM GFLOP/s measured in the same run: 2 N work per input image for the
             cross term plus 2 N work / B for the shared x0^2 term (`MaskPlan.work`)
Times are per image per step at the N stated in each table: the engines run on --n training images, and
--scale-to (default: no scaling) only rescales them linearly (their cost is linear in N), labelled so.
Tables for 1 and 2 torch threads, then the contention
ratio: the same calls alone and beside one CPU-bound neighbour process (a Python busy loop), alternated.
The machine's load average is printed with each table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from importlib import import_module
from importlib.machinery import ModuleSpec
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locality_core.denoisers.analytical import cached_mask, default_theta  # noqa: E402
from locality_core.denoisers.evaluate import noisy_heldout  # noqa: E402
from locality_core.denoisers.masked_engine import (  # noqa: E402
    REFERENCE_BATCH,
    Block,
    MaskPlan,
    masked_softmax_denoise,
    plan_mask,
)
from locality_core.denoisers.masked_engine import (  # noqa: E402
    executed_flop as analytical_executed_flop,
)
from locality_core.denoisers.softmax import (  # noqa: E402
    PRECISION,
    SoftmaxState,
    empty_state,
    finish,
    merge_states,
    softmax_state,
)
from locality_core.schedule import REFERENCE_SIGMAS, REFERENCE_TIMESTEPS  # noqa: E402
from locality_core.stats.covariance import get_stats, mean_float64  # noqa: E402

BLOCK_ELEMENTS = 1 << 18     # the old engine's chunk budget
OLD_FLOAT64_BELOW = 1.0      # the old engine's switch: float32 inputs in float64 below this sigma, any batch


# ---------------------------------------------------------------- the old per-block engine (commit 2b27b43)

def _block_weights(xf: torch.Tensor, plan: MaskPlan, scale: float) -> list[torch.Tensor]:
    """Per block the left factors of its two GEMMs, the softmax scale -1 / (2 sigma^2) folded in:
    ``scale * weight`` (c, r) for the x0^2 term and ``-2 scale * weight * x_b[rows]`` (B * c, r) for the cross
    term, so that one GEMM serves all B inputs. Flattened: [w_sq0, w_cross0, w_sq1, ...]."""
    out = []
    for b in plan.blocks:
        w = b.weight.to(xf) * scale
        out += [w, (-2.0 * w[None] * xf[:, None, b.rows]).reshape(len(xf) * len(b.cols), len(b.rows))]
    return out


def _block_logits(x0T: torch.Tensor, x0T_sq: torch.Tensor, blk: Block, w_sq: torch.Tensor, w_cross: torch.Tensor,
                  full: torch.Tensor | None, B: int) -> torch.Tensor:
    """(B, c, K) logits of one block's columns for a chunk x0T (d, K) of training images (transposed).

    logit = scale * sum_rows weight * (x0^2 - 2 x x0): the squared distance minus its k-independent part
    sum x^2, which the softmax ignores. Complement blocks: scale * full distance minus the complement.
    """
    d, K = x0T.shape
    c, r = len(blk.cols), len(blk.rows)
    if r == 0:
        part = x0T.new_zeros(B, c, K)
    else:
        g, g_sq = (x0T, x0T_sq) if r == d else (x0T.index_select(0, blk.rows), x0T_sq.index_select(0, blk.rows))
        part = (w_cross @ g).view(B, c, K)
        sq = (w_sq @ g_sq)[None]
        part = part + sq if part.requires_grad else part.add_(sq)
    return full[:, None, :] - part if blk.complement else part


def _chunk_size(plan: MaskPlan, B: int, N: int, chunk_size: int | None, batch_normalised: bool) -> int:
    widest = max(len(b.cols) for b in plan.blocks)
    if batch_normalised:
        return REFERENCE_BATCH
    return chunk_size or int(min(max(N, 1), max(256, BLOCK_ELEMENTS // (B * widest))))


def _chunk_block_states(x: torch.Tensor, sigma: float, train: torch.Tensor, plan: MaskPlan, chunk_size: int,
                        centre: torch.Tensor | None) -> Iterator[list[SoftmaxState]]:
    """Per chunk of ``chunk_size`` training images, the softmax state of every block of ``plan`` (plan order).

    Each chunk is transposed once so that blocks gather contiguous rows; each block's logits go straight into
    its streaming softmax while they are in cache. Under autograd each chunk is checkpointed.
    """
    B, d = x.shape
    dtype = torch.float64 if x.dtype == torch.float32 and sigma < OLD_FLOAT64_BELOW else x.dtype
    centre = torch.zeros(d, dtype=dtype, device=x.device) if centre is None else centre.to(x.device, dtype)
    xw = x.to(dtype) - centre
    scale = -1.0 / (2.0 * sigma**2)

    def chunk_states(xf: torch.Tensor, start: int, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = train[start:start + chunk_size].T.to(device=xf.device, dtype=x.dtype).contiguous()  # (d, K)
        x0T = values.to(dtype) - centre[:, None]
        x0T_sq = x0T * x0T
        full = scale * (x0T_sq.sum(0)[None] - 2.0 * (xf @ x0T)) if plan.needs_full else None  # (B, K)
        states = []
        for i, blk in enumerate(plan.blocks):
            logits = _block_logits(x0T, x0T_sq, blk, weights[2 * i], weights[2 * i + 1], full, B)
            v = values.index_select(0, blk.cols)
            if dtype == x.dtype:
                states += softmax_state(logits, v, dim=2, inplace=True)
            else:  # float64 logits of float32 inputs: shift by the max in float64, exponentiate in float32
                m = logits.amax(dim=2)
                st = softmax_state((logits - m[..., None]).to(x.dtype), v, dim=2, inplace=True)
                states += (m, st.s, st.acc)
        return tuple(states)

    weights = _block_weights(xw, plan, scale)
    grad = torch.is_grad_enabled() and x.requires_grad
    for start in range(0, len(train), chunk_size):
        if grad:
            flat = checkpoint(chunk_states, xw, start, *weights, use_reentrant=False)
        else:
            flat = chunk_states(xw, start, *weights)
        yield [SoftmaxState(*flat[i:i + 3]) for i in range(0, len(flat), 3)]


def masked_softmax_state(x: torch.Tensor, sigma: float, train: torch.Tensor, plan: MaskPlan, *,
                         chunk_size: int | None = None, centre: torch.Tensor | None = None) -> SoftmaxState:
    """The per-coordinate softmax state (m, s, acc each (B, d), output order) of the masked softmax denoiser
    over ``train`` (N, d), which may be empty (the empty state). States of disjoint shards merge exactly;
    `finish` gives x0_hat."""
    B, d = x.shape
    chunk_size = _chunk_size(plan, B, len(train), chunk_size, False)
    total = None
    for states in _chunk_block_states(x, sigma, train, plan, chunk_size, centre):
        total = states if total is None else [merge_states(a, b) for a, b in zip(total, states, strict=True)]
    if total is None:
        m_dtype = torch.float64 if x.dtype == torch.float32 and sigma < OLD_FLOAT64_BELOW else x.dtype
        return empty_state((B, d), (B, d), dtype=x.dtype, m_dtype=m_dtype, device=x.device)
    return SoftmaxState(*(torch.cat(parts, dim=1)[:, plan.inverse] for parts in zip(*total, strict=True)))


def old_denoise(x: torch.Tensor, sigma: float, train: torch.Tensor, plan: MaskPlan, centre: torch.Tensor
                ) -> torch.Tensor:
    return finish(masked_softmax_state(x, sigma, train, plan, centre=centre)).to(x.dtype)


# ---------------------------------------------------------------- the reference computation and the floor

def reference_compute(x: torch.Tensor, sigma: float, train: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The public code's computation: per batch of 512, (B, 512, d) squared differences @ mask (d, d), softmax
    within the batch, batch results averaged. x (B, d), train (N, d), mask (d, d) float32."""
    out = torch.zeros_like(x)
    batches = range(0, len(train), REFERENCE_BATCH)
    for s in batches:
        x0 = train[s:s + REFERENCE_BATCH]
        delta = (x[:, None, :] - x0[None]) ** 2                                   # (B, 512, d)
        dist = (delta.view(-1, x.shape[1]) @ mask).view(len(x), len(x0), -1)      # (B, 512, d)
        p = torch.softmax(dist.mul_(-1.0 / (2.0 * sigma**2)), dim=1)
        out += (p * x0[None]).sum(1)
    return out / len(batches)


def matmul_gflops(dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(8192, 784, dtype=dtype), torch.randn(784, 784, dtype=dtype)
    a @ b
    times = []
    for _ in range(5):
        times.append(timed(lambda: a @ b))
    return 2 * 8192 * 784 * 784 / min(times) / 1e9


def plan_flop(plan: MaskPlan, N: int, B: int) -> float:
    """FLOP per input image of the plan's distance GEMMs (cross term, and the x0^2 term shared by B inputs)."""
    return 2 * N * plan.work * ((B + 1) / B if B > 1 else 1.0)


def executed_flop(plan: MaskPlan, N: int, B: int, sigma: float) -> float:
    """FLOP per input image the new engine executes on float32 inputs, padding included."""
    compensated = PRECISION.masked.form(torch.float32, sigma, B).compensated
    return N * analytical_executed_flop(plan, B, compensated) / B


# ---------------------------------------------------------------- the public code itself, unmodified

STAND_IN = "re-implementation of the public code's arithmetic (faster than the public code)"


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision is not installed: the public code's own data loaders cannot run here")


def _unavailable_attribute(attr: str):
    if attr.startswith("__"):  # inspect and importlib probe __file__ and the like: say there is none
        raise AttributeError(attr)
    return _Unavailable


def _placeholder_torchvision() -> bool:
    """torchvision serves only the public code's data loaders (which this bench replaces by an in-memory one), yet
    its packages import it. When it is missing or not built for this torch, placeholder modules let them import;
    any use of one raises. True when placeholders were installed (the bench says so)."""
    try:
        import_module("torchvision.transforms")
        return False
    except Exception:  # missing, or compiled for another torch ("operator torchvision::nms does not exist")
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    for name in ("torchvision", "torchvision.datasets", "torchvision.transforms"):
        module = types.ModuleType(name)
        module.__spec__ = ModuleSpec(name, None)  # diffusers asks find_spec whether torchvision exists
        module.__getattr__ = _unavailable_attribute
        sys.modules[name] = module
    sys.modules["torchvision"].datasets = sys.modules["torchvision.datasets"]
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    return True


def public_engine(repo: Path, train: torch.Tensor, shape: tuple[int, int, int], stats, xs: dict, theta: float,
                  workdir: Path):
    """``t -> x0_hat (B, d)`` from the checkout's ``PCALocalityDenoiser`` (see the module docstring)."""
    if not (repo / "src" / "local_diffusion" / "models" / "pca_locality.py").is_file():
        raise SystemExit(f"--reference-repo {repo}: no src/local_diffusion/models/pca_locality.py there; give a "
                         "checkout of github.com/ottogin/locality-in-diffusion-models")
    sys.path.insert(0, str(repo / "src"))
    if _placeholder_torchvision():
        print("public code: torchvision unavailable here; placeholders stand in for it (its data loaders only)")
    models, data = import_module("local_diffusion.models.pca_locality"), import_module("local_diffusion.data")
    wiener = import_module("local_diffusion.utils.wiener")
    C, H, W = shape
    images = train.view(-1, C, H, W)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=REFERENCE_BATCH)
    bundle = data.DatasetBundle(name="fashion_mnist", dataset=loader.dataset, dataloader=loader, resolution=H,
                                in_channels=C, split="train", postprocess=lambda x: x)
    U, LA, Vh = torch.linalg.svd(torch.as_tensor(stats.cov, dtype=torch.float64))
    wiener.save_wiener_filter(U.float(), LA.float(), Vh.float(), torch.as_tensor(stats.mean).float(), workdir)
    model = models.PCALocalityDenoiser(bundle, "cpu", 10, params={"wiener_path": str(workdir),
                                                                  "mask_threshold": theta})
    model.train(bundle)

    def run(t: int) -> torch.Tensor:
        abar = model.scheduler.alphas_cumprod[t]
        return model.denoise((abar.sqrt() * xs[t]).view(-1, C, H, W), torch.tensor(t)).flatten(1)

    return run


# ---------------------------------------------------------------- timing

def neighbour() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timed(fn) -> float:
    """Seconds of ``clock``: wall time, or this process's CPU time (``--clock cpu``: on a shared machine the time
    the calls computed, without the time they waited for a core; with several threads their CPU times add up)."""
    start = clock()
    fn()
    return clock() - start


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def setup(fashion, stats, train, B: int, ts: list[int], sigmas: dict, centre: torch.Tensor,
          repo: Path | None = None) -> tuple[dict, dict]:
    """Inputs, plans and the engines for calls of B inputs (the public code's too, given its checkout)."""
    noisy = noisy_heldout(fashion.test[:B], list(sigmas.values()), 0)
    xs = {t: x.flatten(1) for t, x in zip(sigmas, noisy, strict=True)}
    masks = {t: cached_mask(stats, s)[0] for t, s in sigmas.items()}
    plans = {t: plan_mask(masks[t], tuple(fashion.shape), batch=B) for t in ts}
    maskf = {t: torch.from_numpy(masks[t]).float() for t in ts}
    engines = {
        "new": lambda t: masked_softmax_denoise(xs[t], sigmas[t], train, plans[t], centre=centre),
        "old": lambda t: old_denoise(xs[t], sigmas[t], train, plans[t], centre),
        "stand-in": lambda t: reference_compute(xs[t], sigmas[t], train, maskf[t]),
    }
    if repo is not None:
        workdir = Path(tempfile.mkdtemp(prefix="public-wiener-"))
        engines["public"] = public_engine(repo, train, tuple(fashion.shape), stats, xs,
                                          default_theta(tuple(fashion.shape)), workdir)
    return engines, {"plans": plans, "masks": masks}


def table(engines, info, ts, sigmas, B, args, scale) -> None:
    """One table: per image per step (scaled to --scale-to), engines alternated, median of the repeats."""
    peaks = {torch.float32: [], torch.float64: []}
    times = {(e, t): [] for e in engines for t in ts}
    with torch.no_grad():
        for name in engines:                                  # warm-up (allocator, thread pool)
            engines[name](ts[-1])
        for rep in range(args.repeats):
            for dtype, v in peaks.items():                    # the GEMM peak, measured between the calls too
                v.append(matmul_gflops(dtype))
            order = list(engines)[rep % len(engines):] + list(engines)[:rep % len(engines)]
            for t in ts:
                for name in order:
                    times[name, t].append(timed(lambda n=name, t=t: engines[n](t)) * scale / B)
    r = {k: min(v) for k, v in times.items()}           # best of the repeats: the least disturbed by others
    peak32, peak64 = max(peaks[torch.float32]), max(peaks[torch.float64])
    print(f"\n{torch.get_num_threads()} thread(s), {B} input(s) per call, load average {load()}; plain GEMM "
          f"8192x784 @ 784x784: {peak32:.0f} GFLOP/s float32, {peak64:.0f} float64; {args.clock} seconds per image "
          f"per step {args.n_text}; stand-in: {STAND_IN}")
    names = [*engines, "floor"]
    ratios = [(k, "new") for k in engines if k not in ("new", "old")] + [("new", "floor"), ("old", "new")]
    print(f"{'t':>4} " + " ".join(f"{k + ' s':>10}" for k in names) + " "
          + " ".join(f"{a + '/' + b:>14}" for a, b in ratios))
    tot = dict.fromkeys(names, 0.0)

    def line(label, row) -> str:
        return (f"{label:>4} " + " ".join(f"{row[k]:>10.3f}" for k in names) + " "
                + " ".join(f"{row[a] / row[b]:>14.2f}" for a, b in ratios))

    for t in ts:
        peak = peak64 if PRECISION.masked.form(torch.float32, sigmas[t], B).dtype == torch.float64 else peak32
        row = {k: r[k, t] for k in engines} | {"floor": plan_flop(info["plans"][t], args.scale_to, B) / (peak * 1e9)}
        for k in tot:
            tot[k] += row[k]
        print(line(str(t), row))
    print(line("sum", tot))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: N = 2,000, 1 repeat, contention at t = 0 only")
    p.add_argument("--n", type=int, default=6000, help="training images the engines run on")
    p.add_argument("--scale-to", type=int, default=None,
                   help="rescale the times linearly to this N (default: none, times at --n as measured)")
    p.add_argument("--reference-repo", type=Path, default=None,
                   help="a checkout of the public code (github ottogin/locality-in-diffusion-models): also time "
                        "its PCALocalityDenoiser itself, unmodified, alternated with the others")
    p.add_argument("--batch", default="8,1", help="noisy inputs per call (tables for each; contention: the first)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--t", default="900,500,100,0", help="noise levels (timesteps)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--no-contention", action="store_true")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or this process's CPU seconds (right for 1 thread on a busy machine)")
    args = p.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    if args.quick:
        args.n, args.repeats = 2000, 1
    from locality_core.data import load_dataset

    fashion = load_dataset("fashion-mnist")
    stats = get_stats(fashion)
    train = fashion.train[:args.n].flatten(1).contiguous()
    centre = mean_float64(train)
    args.scale_to = args.scale_to or len(train)
    N, d, scale = len(train), train.shape[1], args.scale_to / len(train)
    args.n_text = (f"at N = {N:,} training images" if args.scale_to == N else
                   f"measured at N = {N:,} and scaled linearly to N = {args.scale_to:,}")
    batches = [int(v) for v in args.batch.split(",")]
    ts = [int(t) for t in args.t.split(",")]
    sigmas = {t: REFERENCE_SIGMAS[REFERENCE_TIMESTEPS.index(t)] for t in ts}
    setups = {B: setup(fashion, stats, train, B, ts, sigmas, centre, args.reference_repo) for B in batches}
    print(f"torch {torch.__version__}; Fashion-MNIST, times per image per step {args.n_text}; load average "
          f"{load()}")
    for B, (engines, info) in setups.items():
        with torch.no_grad():                                 # new = old, to float32 round-off
            worst = max(float((engines["new"](t) - engines["old"](t)).abs().max()) for t in ts)
            print(f"{B} input(s) per call: max |new - old| over the noise levels {worst:.1e}")
            if "public" in engines:                           # the stand-in gives the public code's numbers
                gap = max(float((engines["public"](t) - engines["stand-in"](t)).abs().max()) for t in ts)
                print(f"  max |public code - stand-in| {gap:.1e}")
        for t in ts:
            plan = info["plans"][t]
            kinds = [("all rows" if grp.rows is None else "gathered") + (" complement" if grp.complement else "")
                     for grp in plan.groups]
            padded = executed_flop(plan, N, B, sigmas[t]) / plan_flop(plan, N, B)
            print(f"  t = {t}: sigma {sigmas[t]:.4g}, mask {info['masks'][t].mean():.1%} full, {len(plan.blocks)} "
                  f"blocks of {plan.tile}x{plan.tile} in {len(plan.groups)} groups ({', '.join(sorted(set(kinds)))}); "
                  f"plan work {plan.work / d**2:.0%} of d^2; executed {padded:.2f}x the plan's FLOP")

    for threads in [int(v) for v in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for B, (engines, info) in setups.items():
            table(engines, info, ts, sigmas, B, args, scale)

    if args.no_contention:
        return 0
    torch.set_num_threads(2)
    B = batches[0]
    engines = setups[B][0]
    cts = [ts[-1]] if args.quick else ts
    alone = {e: [] for e in engines}
    beside = {e: [] for e in engines}
    with torch.no_grad():
        for _ in range(max(1, args.repeats - 1)):
            for name in engines:
                alone[name].append(sum(timed(lambda n=name, t=t: engines[n](t)) for t in cts))
                proc = neighbour()
                try:
                    time.sleep(0.2)
                    beside[name].append(sum(timed(lambda n=name, t=t: engines[n](t)) for t in cts))
                finally:
                    stop(proc)
    print(f"\ncontention: 2 threads, {B} inputs per call, t = {', '.join(map(str, cts))} per round, alone and "
          f"beside one busy-loop process (alternated), load average {load()}")
    print(f"{'engine':>10} {'alone s':>8} {'beside s':>9} {'ratio':>6}")
    for name in engines:
        a, b = statistics.median(alone[name]) * scale / B, statistics.median(beside[name]) * scale / B
        print(f"{name:>10} {a:>8.3f} {b:>9.3f} {b / a:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
