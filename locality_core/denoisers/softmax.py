"""The exact streaming softmax that every softmax denoiser here shares (optimal, analytical, LS, ELS).

Glossary
    candidates  the things a softmax averages over (training images, patches), K per chunk, N in all
    logit_k     the score of candidate k; value_k what it contributes (an image, a pixel, a patch centre)
    state       SoftmaxState(m, s, acc) of a chunk of candidates: m = max logit, s = sum exp(logit - m),
                acc = sum exp(logit - m) * value. Two states merge exactly (rescale both to the larger max),
                so a softmax over N candidates streams through chunks without ever holding N logits
    finish      acc / s: the softmax-weighted average of the values
    shard_merge a hook (`ShardMerge`) that merges one shard's state with the other shards' (torch.distributed,
                see `distributed.all_merge_states`)
    threads     within one process, `threaded_state` splits the candidates over threads of one torch thread
                each and merges their states the same way
    precision   `PRECISION`: per engine, the noise levels below which float32 inputs are computed in float64
                and below which squared distances are summed from direct rather than expanded terms

Shapes: shared weights m, s (B,), acc (B, F); per coordinate (one softmax per (row, feature)) all (B, F).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import torch
import torch.autograd.forward_ad as fwAD

EXP_FLOOR = -87.0    # exp(x) for x below this takes a slow path (float32 underflow); see `exp_shifted`
THREAD_SHARD_MIN = 512  # candidates per thread at least in `threaded_map` (fewer: start-up and merge outweigh it)
T = TypeVar("T")


# ---------------------------------------------------------------- precision

class WorkForm(NamedTuple):
    """How one call computes its squared distances: in ``dtype``, from ``direct`` terms (x - x0)^2 or from
    expanded ones (x0 (x0 - 2 x) on centred images, ||x0||^2 - 2 x.x0 for whole images); ``compensated``: a
    batch's cross form sums x0^2, -2 x x0 and x^2 - sigma^2 interleaved in one GEMM, so that its partial sums
    stay near the distance (the mask engine's `masked_engine._compensated_weights`)."""

    dtype: torch.dtype
    direct: bool
    compensated: bool = False


@dataclass(frozen=True)
class Switches:
    """The noise levels where one engine changes form (see `Precision`).

    float64_below  float32 inputs are computed in float64 below this sigma
    direct_below   the terms are direct below this sigma, expanded from it up (engines that sum per-pixel terms)
    compensated_below  from float64_below up to this sigma a batch's cross form is compensated (the mask engine;
                   in any dtype, so that float64 runs the same path)
    batch          the switches of a call with several inputs, where they differ from one input's (None: same)
    """

    float64_below: float = 0.0
    direct_below: float = 0.0
    compensated_below: float = 0.0
    batch: Switches | None = None

    def form(self, dtype: torch.dtype, sigma: float | torch.Tensor, n_inputs: int = 1) -> WorkForm:
        """The form of a call with ``n_inputs`` inputs of ``dtype`` at ``sigma`` (a float, or a tensor of one
        sigma per input: the smallest decides)."""
        switches = self if n_inputs == 1 or self.batch is None else self.batch
        low = float(sigma) if not isinstance(sigma, torch.Tensor) else min(sigma.reshape(-1).tolist(), default=math.inf)
        wide = dtype == torch.float32 and low < switches.float64_below
        compensated = switches.float64_below <= low < switches.compensated_below
        return WorkForm(torch.float64 if wide else dtype, low < switches.direct_below, compensated)


@dataclass(frozen=True)
class Precision:
    """Where each softmax engine computes float32 inputs in float64, and which terms it sums: one place for
    every engine's measured switches. Float64 inputs stay float64.

    Why: a logit is a squared distance times 1 / (2 sigma^2), and the softmax sees differences between logits,
    so round-off in a distance is amplified by 1 / (2 sigma^2) and matters below some sigma. Where depends on
    how an engine forms its distances, so each engine keeps its own measured numbers:
    - expanded terms (||x0||^2 - 2 x.x0, or x0c (x0c - 2 xc) on images centred on the training mean): the
      k-independent ||x||^2 dropped, so no large constant, but the two parts cancel, and their round-off grows
      with 1 / sigma^2. Direct terms (x - x0)^2 do not cancel: exact for the near neighbours that decide a
      low-noise softmax, but at high noise every (x - x0)^2 is large and their round-off grows with the
      distance they sum. Engines that sum per-pixel terms (LS, the mask engine) switch from direct to expanded
      at ``direct_below``, and keep float32 direct terms until the logit scale passes 200 (sigma 0.05)
    - optimal (whole-image distances, expanded): float64 below sigma 2, where logits are distances / 2 sigma^2
      and float32 round-off in ||x0||^2 - 2 x.x0 (sums over all d pixels) would move them by O(1)
    - els (patch distances by one GEMM, expanded, uncentred): float64 below sigma 0.5
    - ls (box sums of per-pixel terms, centred): direct below sigma 1, expanded above; float64 below 0.05
    - masked (the analytical denoiser's engine, centred), measured on Fashion-MNIST with 20,000 training images,
      4 inputs one at a time, float32 against float64: one input sums direct terms below sigma 0.4 (1.6-5.0e-6,
      up to 1.1e-5 near sigma 1, where a mask sums hundreds of noisy terms) and expanded ones from 0.4 up
      (1.5-6.3e-6, 9.6e-6 at 0.2); float32 down to 0.05, since its logits come from one GEMM over the terms and
      float32 runs at 2.4x float64's GEMM rate. A batch keeps the cross form, whose gathered rows serve every
      input (direct terms are per input: B times the gathered data, and GEMMs of a block's few columns run at a
      quarter of the cross form's rate). Its two GEMMs, sum x0c^2 and -2 sum x x0c, are large and cancel: in
      float32 to 1.7e-5 at sigma 0.34 and 2-3e-5 below, past the 1e-5 the engine is held to. Below sigma 1 a
      batch sums them interleaved with x^2 - sigma^2 in one GEMM instead (``compensated``: twice the FLOP, but
      partial sums near the distance), measured on Fashion-MNIST, 8 inputs, against float64: 1.3-4.2e-6 from
      sigma 0.15 to 0.99 with 20,000 training images, up to 7.4e-6 at 0.05-0.1 (1.4e-5 with 2,000), so it is
      float64 below 0.15
    """

    optimal: Switches
    els: Switches
    ls: Switches
    masked: Switches


PRECISION = Precision(
    optimal=Switches(float64_below=2.0),
    els=Switches(float64_below=0.5),
    ls=Switches(float64_below=0.05, direct_below=1.0),
    masked=Switches(float64_below=0.05, direct_below=0.4, batch=Switches(float64_below=0.15, compensated_below=1.0)),
)


# ---------------------------------------------------------------- states

class SoftmaxState(NamedTuple):
    """Partial softmax of some candidates. Shared weights: m, s (B,), acc (B, F); per coordinate: all (B, F)."""

    m: torch.Tensor
    s: torch.Tensor
    acc: torch.Tensor


ShardMerge = Callable[[SoftmaxState], SoftmaxState]  # merges one shard's state with the other shards'


def finite_or_zero(m: torch.Tensor) -> torch.Tensor:
    """The max used as the exp reference: rows whose logits are all -inf get 0 (their exps are then 0, not nan)."""
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _per_row(scale: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    return scale[..., None] if scale.ndim < acc.ndim else scale


def exp_shifted(logits: torch.Tensor, ref: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """exp(max(logits - ref, EXP_FLOOR)). The floor keeps exp off its slow underflow path (5-10x slower below
    -87 in float32); it turns weights below e^-87 ~ 1.6e-38 (relative to the largest, 1) into 1.6e-38, far below
    the resolution of any sum that contains the largest."""
    if inplace:
        return logits.sub_(ref).clamp_(min=EXP_FLOOR).exp_()
    return torch.exp((logits - ref).clamp(min=EXP_FLOOR))


def softmax_state(logits: torch.Tensor, values: torch.Tensor, *, dim: int = 1, inplace: bool = False
                  ) -> SoftmaxState:
    """State of one chunk of K candidates; ``dim`` is the candidate dimension of ``logits``.

    logits (B, K), values (K, F): one softmax per row, weights shared by the F features (matrix product).
    logits (B, K, F) with values (K, F) (dim=1), or (B, F, K) with values (F, K) (dim=2): one softmax per
    (row, feature), the analytical denoiser's form.
    ``inplace``: overwrite ``logits`` (per-feature form, no autograd) to save memory traffic.
    A softmax whose logits are all -inf gets s = acc = 0 (so `finish` gives nan, like a one-shot softmax).
    """
    m = logits.amax(dim=dim)
    ref = finite_or_zero(m).unsqueeze(dim)
    if logits.ndim == 2:
        p = exp_shifted(logits, ref)
        s, acc = p.sum(1), p @ values
    elif not inplace or (torch.is_grad_enabled() and (logits.requires_grad or values.requires_grad)):
        p = exp_shifted(logits, ref)
        s, acc = p.sum(dim), (p * values).sum(dim)
    else:
        p = exp_shifted(logits, ref, inplace=True)  # the memory-bound hot loop of the analytical denoiser
        s = p.sum(dim)
        acc = p.mul_(values).sum(dim)
    empty = torch.isneginf(m)
    if bool(empty.any()):
        s, acc = s.masked_fill(empty, 0.0), acc.masked_fill(empty if acc.ndim == empty.ndim else empty[..., None], 0.0)
    return SoftmaxState(m, s, acc)


def empty_state(rows: tuple[int, ...], acc: tuple[int, ...], *, dtype: torch.dtype, m_dtype: torch.dtype | None = None,
                device: torch.device | str = "cpu") -> SoftmaxState:
    """The state of no candidates (m = -inf, s = acc = 0): merging it into any state changes nothing. Shapes
    as in `SoftmaxState`: ``rows`` of m and s, ``acc`` of acc; m in ``m_dtype`` (default ``dtype``)."""
    m = torch.full(rows, -torch.inf, dtype=m_dtype or dtype, device=device)
    return SoftmaxState(m, torch.zeros(rows, dtype=dtype, device=device), torch.zeros(acc, dtype=dtype, device=device))


def rescaled(state: SoftmaxState, m: torch.Tensor, *, exp: Callable = torch.exp) -> SoftmaxState:
    """``state`` with its sums expressed relative to ``m`` (>= state.m): s and acc times exp(state.m - m)."""
    scale = exp(state.m - finite_or_zero(m)).to(state.s.dtype)
    return SoftmaxState(m, state.s * scale, state.acc * _per_row(scale, state.acc))


def merge_states(a: SoftmaxState, b: SoftmaxState, *, exp: Callable = torch.exp) -> SoftmaxState:
    """Exact merge: both partial sums rescaled to the larger running max. ``exp=torch.exp2`` for states in
    base-2 units (logits times log2 e, as the mask engine keeps them)."""
    m = torch.maximum(a.m, b.m)
    a, b = rescaled(a, m, exp=exp), rescaled(b, m, exp=exp)
    return SoftmaxState(m, a.s + b.s, a.acc + b.acc)


def finish(state: SoftmaxState) -> torch.Tensor:
    """The softmax-weighted average (B, F); nan where every logit of a softmax was -inf."""
    return state.acc / _per_row(state.s, state.acc)


def merge_all(states: Iterable[SoftmaxState], *, exp: Callable = torch.exp) -> SoftmaxState | None:
    """All states merged into one (None when there are none); ``exp`` as in `merge_states`."""
    total = None
    for state in states:
        total = state if total is None else merge_states(total, state, exp=exp)
    return total


def threaded_state(state_of: Callable[[slice], SoftmaxState], n: int, *, inputs: Iterable[torch.Tensor | None]
                   ) -> SoftmaxState:
    """``state_of(slice(0, n))``, the softmax state of ``n`` candidates, computed as one contiguous slice of them
    per torch thread (`threaded_map`), the slices' states merged exactly. ``inputs``: every tensor the
    computation reads (None entries are skipped)."""
    return merge_all(threaded_map(state_of, n, inputs=inputs))


def threaded_map(work: Callable[[slice], T], n: int, *, inputs: Iterable[torch.Tensor | None], align: int = 1
                 ) -> list[T]:
    """``work`` of contiguous slices that cover range(n), one slice per torch thread, each in its own Python
    thread running torch with one thread; the results in slice order. Slices start at multiples of ``align``.
    ``inputs``: every tensor the computation reads (None entries are skipped).

    Why: with several threads every torch operation ends in a wait for all of them, and a call of the mask
    engine is thousands of operations. Under CPU contention each wait is for a descheduled thread (the
    engine's 2-thread calls slowed 2.6-2.7x beside one busy process, split over threads 1.5-1.7x), and alone
    the waits cost 10-20 %. Shards share nothing but the inputs, so each thread runs alone.

    Shards run in other threads, outside the caller's autograd and torch.func transforms, so a call through which
    a derivative could flow (`derivative_free`) is not split: [work(slice(0, n))]. Nor is one with a single torch
    thread (so also one inside a shard), fewer than THREAD_SHARD_MIN candidates (or ``align``) per thread, or
    inputs off the CPU. An interrupt or a shard's error takes effect once the running shards finish.
    ``torch.set_num_threads(1)`` in a worker also sets the process default that threads read when they first
    use torch. As soon as every worker holds its one thread (a barrier), the caller sets its own count again,
    which makes that count the default; a thread whose first use of torch falls inside that window of
    microseconds keeps one thread (the app sets the count of its script threads on every rerun, see
    `ui.data.configure_threads`).
    """
    inputs = [t for t in inputs if t is not None]
    shards = min(torch.get_num_threads(), n // max(THREAD_SHARD_MIN, align))
    if shards <= 1 or any(t.device.type != "cpu" for t in inputs) or not derivative_free(inputs):
        return [work(slice(0, n))]
    bounds = [n * i // shards // align * align for i in range(shards)] + [n]
    ready, caller_threads = threading.Barrier(shards + 1, timeout=60.0), torch.get_num_threads()

    def shard(i: int) -> T:
        torch.get_num_threads()  # torch's lazy per-thread set-up first: it would reset the count on first use
        torch.set_num_threads(1)
        ready.wait()
        with torch.no_grad():
            return work(slice(bounds[i], bounds[i + 1]))

    with ThreadPoolExecutor(shards, thread_name_prefix="softmax-shard") as pool:
        try:
            futures = [pool.submit(shard, i) for i in range(shards)]
            ready.wait()
        except BaseException:
            ready.abort()  # workers waiting at the barrier raise instead of waiting for ever
            raise
        finally:
            torch.set_num_threads(caller_threads)
        return [f.result() for f in futures]


def derivative_free(tensors: list[torch.Tensor]) -> bool:
    """Whether no derivative can flow through a computation on ``tensors``: none requires grad while grad mode is
    on, none carries a forward-mode tangent, and no torch.func transform (grad, jvp, vmap, jacfwd ...) is active.
    Where torch does not say whether a transform is active, the answer is no."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if any(fwAD.unpack_dual(t).tangent is not None for t in tensors):
        return False
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    return peek is not None and peek() is None


def reduce_states(states: Iterable[SoftmaxState]) -> torch.Tensor:
    """Merge the states of all chunks and return the weighted average."""
    total = merge_all(states)
    if total is None:
        raise ValueError("no candidates: the softmax needs at least one chunk")
    return finish(total)


def streaming_softmax_average(chunks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """sum_k softmax_k(logits) values_k over all chunks of candidates, exactly (running max, rescaled sums).

    ``chunks`` yields (logits, values) pairs shaped as in `softmax_state`; the result equals
    `softmax_average` on the concatenated chunks, for any chunking.
    """
    return reduce_states(softmax_state(logits, values) for logits, values in chunks)


def softmax_average(logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """One-shot reference of `streaming_softmax_average` (all K candidates at once)."""
    w = torch.softmax(logits, dim=1)
    return w @ values if logits.ndim == 2 else (w * values).sum(1)
