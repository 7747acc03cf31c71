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

Shapes: shared weights m, s (B,), acc (B, F); per coordinate (one softmax per (row, feature)) all (B, F).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
import torch.autograd.forward_ad as fwAD

EXP_FLOOR = -87.0    # exp(x) for x below this takes a slow path (float32 underflow); see `exp_shifted`

# Precision of the squared-distance terms of float32 inputs in the engines that sum them per pixel (LS, the mask
# engine). At low noise the terms are "direct", (x - x0)^2: no cancellation, exact for the near neighbours that
# decide a low-noise softmax; float32 is exact enough until the logit scale 1 / (2 sigma^2) passes 200, so they
# are float64 below DIRECT_FLOAT64_BELOW. At higher noise, where noise makes every (x - x0)^2 large but the
# softmax only sees differences between training images, the terms are "expanded", x0c (x0c - 2 xc) on centred
# images: the k-independent part (x - centre)^2 dropped, an order of magnitude smaller, and so is the float32
# round-off. The direct terms' round-off grows with the distance they sum, the expanded terms' with
# 1 / sigma^2, so each engine measures where it switches (`patches.LS_EXPANDED_ABOVE`, `analytical.DIRECT_BELOW`)
DIRECT_FLOAT64_BELOW = 0.05
THREAD_SHARD_MIN = 512  # candidates per thread at least in `threaded_state` (fewer: start-up and merge outweigh it)


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
    per torch thread, each slice in its own Python thread running torch with one thread, the slices' states
    merged exactly. ``inputs``: every tensor the computation reads (None entries are skipped).

    Why: with several threads every torch operation ends in a wait for all of them, and a call of the mask
    engine is thousands of operations. Under CPU contention each wait is for a descheduled thread (the
    engine's 2-thread calls slowed 2.6-2.7x beside one busy process, split over threads 1.5-1.7x), and alone
    the waits cost 10-20 %. Shards share nothing but the inputs and merge exactly, so each thread runs alone.

    Shards run in other threads, outside the caller's autograd and torch.func transforms, so a call through which
    a derivative could flow (`derivative_free`) is not split. Nor is one with a single torch thread (so also
    one inside a shard), fewer than THREAD_SHARD_MIN candidates per thread, or inputs off the CPU. An interrupt
    or a shard's error takes effect once the running shards finish.
    ``torch.set_num_threads(1)`` in a worker also sets the process default that threads read when they first
    use torch. As soon as every worker holds its one thread (a barrier), the caller sets its own count again,
    which makes that count the default; a thread whose first use of torch falls inside that window of
    microseconds keeps one thread (the app sets the count of its script threads on every rerun, see
    `ui.data.configure_threads`).
    """
    inputs = [t for t in inputs if t is not None]
    shards = min(torch.get_num_threads(), n // THREAD_SHARD_MIN)
    if shards <= 1 or any(t.device.type != "cpu" for t in inputs) or not derivative_free(inputs):
        return state_of(slice(0, n))
    bounds = [n * i // shards for i in range(shards + 1)]
    ready, caller_threads = threading.Barrier(shards + 1, timeout=60.0), torch.get_num_threads()

    def shard(i: int) -> SoftmaxState:
        torch.get_num_threads()  # torch's lazy per-thread set-up first: it would reset the count on first use
        torch.set_num_threads(1)
        ready.wait()
        with torch.no_grad():
            return state_of(slice(bounds[i], bounds[i + 1]))

    with ThreadPoolExecutor(shards, thread_name_prefix="softmax-shard") as pool:
        try:
            futures = [pool.submit(shard, i) for i in range(shards)]
            ready.wait()
        except BaseException:
            ready.abort()  # workers waiting at the barrier raise instead of waiting for ever
            raise
        finally:
            torch.set_num_threads(caller_threads)
        return merge_all(f.result() for f in futures)


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
