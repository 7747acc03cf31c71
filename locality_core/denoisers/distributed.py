"""The training set sharded over torch.distributed ranks: statistics and softmax denoisers (optimal, analytical,
LS) whose every rank gets the single-process result.

Glossary
    rank, world   this process's index and the number of processes; `init` joins the group that torchrun
                  describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...): gloo on CPUs, NCCL on GPUs
    shard         the training images one rank holds, a disjoint part of all N (`shard_bounds`: contiguous,
                  sizes differing by at most 1; any split works, empty shards included)
    Moments       stats.Moments (n, mean, m2) of a shard. Over ranks (`all_reduce_moments`): every rank's
                  (n, mean) gathered, then one all_reduce SUM of m2 + n (mean - mu)(mean - mu)^T, the pairwise
                  merge `stats.merge_moments` of all shards at once
    SoftmaxState  softmax.SoftmaxState (m, s, acc) of a shard's candidates. Over ranks (`all_merge_states`):
                  all_reduce MAX of m, each rank rescales its s and acc to that max (`softmax.rescaled`), then
                  one all_reduce SUM each: the log-sum-exp merge `softmax.merge_states` of all shards at once
    Shard         `base.Shard`: a rank's images, the merge over ranks, and (collectives, on first use) the mean
                  and statistics of all shards. `shard_denoiser` hands one to a denoiser's ``fit_shard``, which
                  fits to it (optimal, analytical, LS) or says why it cannot

Collectives pair up by call order: every rank calls the same functions with the same inputs (same noise, same
sigmas) in the same order. One process needs none of this: the hooks default to None.
"""

from __future__ import annotations

import atexit
import functools
import os
from collections.abc import Callable
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from locality_core import settings
from locality_core.data import Dataset
from locality_core.denoisers.analytical import AnalyticalDenoiser
from locality_core.denoisers.base import Denoiser, Shard
from locality_core.denoisers.optimal import OptimalDenoiser
from locality_core.denoisers.patches import LSDenoiser, resolve_schedule
from locality_core.denoisers.registry import DenoiserError
from locality_core.denoisers.softmax import SoftmaxState, rescaled
from locality_core.stats.covariance import (
    DataStats,
    Moments,
    covariance,
    data_moments,
    eigendecomposition,
    stats_arrays,
    stats_from_arrays,
    stats_key,
)
from locality_core.store.cache import ArrayCache, default_cache
from locality_core.store.memory import check_fits


def collective_timeout() -> timedelta:
    """$LOCALITY_DIST_TIMEOUT_S (default 600 s): the longest a rank waits in a collective (or to join the group)
    for the others. A rank that died or hangs makes the others fail with an error after at most this long, and
    torchrun then ends the run; a dead peer's closed connection usually fails them at once."""
    seconds = settings.DIST_TIMEOUT_S.number()
    return timedelta(seconds=seconds if seconds is not None and seconds > 0 else 600)


def init(backend: str | None = None) -> tuple[int, int]:
    """Join the process group described by torchrun's environment (once); returns (rank, world). The group is
    left at exit (`shutdown`)."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise ValueError("no process group to join: start the command under torchrun, e.g. "
                             "`torchrun --nproc-per-node 2 -m locality_core precompute DATASET --distributed`")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=collective_timeout())
        atexit.register(shutdown)
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    """Leave the process group, if this process is in one. A process that exits without it can abort while
    the interpreter shuts down ("terminate called without an active exception": gloo's threads still hold
    tensors); `init` registers this to run at exit, while the interpreter is whole."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """[start, stop) of each rank's contiguous shard of n items; sizes differ by at most 1."""
    edges = [r * n // world for r in range(world + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def shard_of(train: torch.Tensor, rank: int | None = None, world: int | None = None) -> torch.Tensor:
    """This rank's shard of ``train`` (N, ...), a view (rank and world default to the process group's)."""
    rank = dist.get_rank() if rank is None else rank
    world = dist.get_world_size() if world is None else world
    start, stop = shard_bounds(len(train), world)[rank]
    return train[start:stop]


def _device(group=None) -> torch.device:
    """Where collectives of this group need their tensors: the current GPU for NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" \
        else torch.device("cpu")


def _all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM, group=None) -> torch.Tensor:
    """A reduced copy of ``t`` (moved to the group's device and back)."""
    work = t.to(_device(group), copy=True)
    dist.all_reduce(work, op=op, group=group)
    return work.to(t.device)


# ---------------------------------------------------------------- statistics

def all_reduce_moments(local: Moments, group=None) -> Moments:
    """The moments of all shards together, on every rank, from this rank's ``local`` moments."""
    head = torch.from_numpy(np.concatenate([[float(local.n)], local.mean])).to(_device(group))
    gathered = [torch.empty_like(head) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, head, group=group)
    table = torch.stack(gathered).cpu().numpy()                       # (world, 1 + d): n_r, mean_r
    counts, means = table[:, 0], table[:, 1:]
    n = int(counts.sum())
    mean = (counts[:, None] * means).sum(0) / max(n, 1)
    delta = local.mean - mean
    m2 = _all_reduce(torch.from_numpy(local.m2 + local.n * np.outer(delta, delta)), group=group)
    return Moments(n, mean, m2.numpy())


def _broadcast(arrays: list[np.ndarray], group=None) -> list[np.ndarray]:
    """Group rank 0's ``arrays`` on every rank (others pass arrays of the same shapes)."""
    src = 0 if group is None else dist.get_global_rank(group, 0)
    out = []
    for a in arrays:
        t = torch.from_numpy(np.ascontiguousarray(a)).to(_device(group))
        dist.broadcast(t, src=src, group=group)
        out.append(t.cpu().numpy())
    return out


def sharded_stats(shard: torch.Tensor, *, fingerprint: str = "", chunk_size: int = 4096,
                  progress: Callable[[float, str], None] | None = None, group=None) -> DataStats:
    """`stats.compute_stats` of all shards together, on every rank: partial moments here, merged over ranks;
    the eigendecomposition on rank 0 only, broadcast (every rank then holds the same masks)."""
    shape = tuple(shard.shape[1:])
    d = int(np.prod(shape))
    check_fits(d, shape)
    moments = all_reduce_moments(data_moments(shard, chunk_size=chunk_size, progress=progress), group)
    cov = covariance(moments)
    if progress:
        progress(0.8, f"eigendecomposition of a {d} x {d} matrix (rank 0)")
    eig = eigendecomposition(cov) if dist.get_rank(group) == 0 else (np.empty(d), np.empty((d, d)))
    eigvals, eigvecs = _broadcast(list(eig), group)
    if progress:
        progress(1.0, "done")
    return DataStats(moments.mean, cov, eigvals, eigvecs, moments.n, shape, fingerprint)  # type: ignore[arg-type]


def _all_ranks(flag: bool, group=None) -> bool:
    return bool(_all_reduce(torch.tensor([int(flag)]), op=dist.ReduceOp.MIN, group=group).item())


def sharded_get_stats(dataset: Dataset, shard: torch.Tensor, *, cache: ArrayCache | None = None,
                      progress: Callable[[float, str], None] | None = None, group=None) -> DataStats:
    """`stats.get_stats` of ``dataset`` computed from the ranks' shards: read from the cache when every rank
    has it, else computed by `sharded_stats` and stored by each machine's first rank (LOCAL_RANK 0)."""
    cache = cache or default_cache()
    key = stats_key(dataset)
    a = cache.get(key)
    if not _all_ranks(a is not None, group):
        s = sharded_stats(shard, fingerprint=dataset.fingerprint, progress=progress, group=group)
        if int(os.environ.get("LOCAL_RANK", dist.get_rank(group))) == 0:
            cache.set(key, stats_arrays(s))
        dist.barrier(group=group)  # stored before any rank goes on to read it (e.g. to build a Wiener denoiser)
        return s
    return stats_from_arrays(a, dataset)


# ---------------------------------------------------------------- softmax denoisers

def all_merge_states(state: SoftmaxState, group=None) -> SoftmaxState:
    """The log-sum-exp merge of every rank's ``state`` (disjoint candidates), on every rank: m (B, ...)
    reduced by MAX, s and acc rescaled to it and summed. Empty states (m = -inf) contribute nothing."""
    m = _all_reduce(state.m, op=dist.ReduceOp.MAX, group=group)
    local = rescaled(state, m)
    return SoftmaxState(m, _all_reduce(local.s, group=group), _all_reduce(local.acc, group=group))


def global_mean(shard: torch.Tensor, group=None) -> torch.Tensor:
    """The float64 mean image of all shards together (shape of one item), on every rank."""
    local = torch.cat([shard.flatten(1).sum(0, dtype=torch.float64),
                       torch.tensor([float(len(shard))], dtype=torch.float64)])
    total = _all_reduce(local, group=group)
    return (total[:-1] / total[-1].clamp(min=1)).view(shard.shape[1:])


def make_shard(shard: torch.Tensor, *, stats: Callable[[], DataStats] | None = None, group=None) -> Shard:
    """This rank's `Shard` of ``shard`` (n_r, C, H, W): states merged over the group, the mean of all shards,
    and their statistics (``stats``, default `sharded_stats`), each computed on first use and kept."""
    stats = stats or (lambda: sharded_stats(shard, group=group))
    return Shard(shard, functools.partial(all_merge_states, group=group),
                 functools.cache(lambda: global_mean(shard, group)), functools.cache(stats))


def shard_denoiser(denoiser: nn.Module, shard: torch.Tensor, *, stats: DataStats | None = None,
                   group=None) -> nn.Module:
    """Fit a softmax denoiser (optimal, analytical or LS) on this rank's ``shard`` (n_r, C, H, W) so that its
    outputs are those of the denoiser fitted on all shards together, on every rank (`Denoiser.fit_shard`;
    others raise and say why). The analytical denoiser's masks need the statistics of all shards: ``stats``
    (default: `sharded_stats`)."""
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"{type(denoiser).__name__} is not a denoiser: it cannot be sharded")
    return denoiser.fit_shard(make_shard(shard, stats=None if stats is None else lambda: stats, group=group))


# ---------------------------------------------------------------- what the CLI runs under torchrun

SHARDABLE = ("optimal", "analytical", "ls")


def is_leader() -> bool:
    """True on rank 0 (and in a process that is not part of a group): the rank that prints and writes."""
    return not dist.is_initialized() or dist.get_rank() == 0


def dataset_stats(dataset: Dataset, progress: Callable[[float, str], None] | None = None) -> DataStats:
    """Statistics of ``dataset`` with every rank streaming its shard (joins torchrun's group first)."""
    init()
    return sharded_get_stats(dataset, shard_of(dataset.train), progress=progress)


def sharded_denoisers(dataset: Dataset, names: list[str]) -> dict[str, nn.Module]:
    """The registry's optimal / analytical / LS denoisers (default options) of ``dataset``, each rank holding
    its shard of the training set; every rank gets the outputs of the unsharded ones."""
    builders = {"optimal": OptimalDenoiser, "analytical": AnalyticalDenoiser,
                "ls": lambda: LSDenoiser(resolve_schedule(dataset, "ls"))}
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise DenoiserError(f"{', '.join(unknown)} cannot run sharded; sharded denoisers: {', '.join(SHARDABLE)}")
    init()
    shard = shard_of(dataset.train)
    part = make_shard(shard, stats=lambda: sharded_get_stats(dataset, shard))   # one of each collective for all
    return {name: builders[name]().fit_shard(part) for name in names}
