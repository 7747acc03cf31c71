"""Sharded statistics and softmax denoisers: the merges as pure functions, then two real gloo ranks on localhost
whose outputs must equal one process's (float64, 1e-6), for an uneven split and for an empty shard."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from locality_core.data import Dataset
from locality_core.denoisers import distributed
from locality_core.denoisers.analytical import AnalyticalDenoiser
from locality_core.denoisers.masked_engine import masked_softmax_state, plan_mask
from locality_core.denoisers.optimal import OptimalDenoiser, optimal_state
from locality_core.denoisers.patches import ELSDenoiser, LSDenoiser, ls_state
from locality_core.denoisers.softmax import finish, merge_states
from locality_core.denoisers.wiener import WienerDenoiser, wiener_matrix
from locality_core.stats.covariance import compute_stats, data_moments, merge_moments, stats_key

SHAPE = (1, 6, 6)
N = 37
SIGMAS = (0.08, 0.6, 4.0)
SPLITS = {"uneven": [(0, 18), (18, 37)], "empty rank 1": [(0, 37), (37, 37)], "empty rank 0": [(0, 0), (0, 37)]}


def smooth_data(n: int = N, seed: int = 0) -> torch.Tensor:
    """(n, 1, 6, 6) float64 images with correlated neighbouring pixels, so masks are neither empty nor full."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    return torch.nn.functional.avg_pool2d(z, 3, stride=1).tanh()


def noisy_inputs(train: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One noisy input per sigma in SIGMAS (B = 3), and its (B,) sigmas."""
    g = torch.Generator().manual_seed(seed)
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)
    clean = smooth_data(len(SIGMAS), seed=seed + 10)
    return clean + sigma[:, None, None, None] * torch.randn(clean.shape, generator=g, dtype=torch.float64), sigma


def single_process(train: torch.Tensor) -> dict[str, torch.Tensor]:
    x, sigma = noisy_inputs(train)
    stats = compute_stats(train)
    data = Dataset.from_tensor(train, stats=stats)
    return {"mean": torch.from_numpy(stats.mean), "cov": torch.from_numpy(stats.cov),
            "eigvals": torch.from_numpy(stats.eigvals), "wiener": torch.from_numpy(wiener_matrix(stats.eigvecs,
                                                                                                stats.eigvals, 1.0)),
            "optimal": OptimalDenoiser(chunk_size=5).fit(data)(x, sigma),
            "analytical": AnalyticalDenoiser(cache=False, chunk_size=7).fit(data)(x, sigma),
            "ls": LSDenoiser(patch_size=3, chunk_size=4).fit(data)(x, sigma)}


# ---------------------------------------------------------------- the merges, without processes

def test_shard_bounds_cover_n_disjointly():
    for n, world in [(37, 2), (5, 4), (2, 3), (0, 2)]:
        bounds = distributed.shard_bounds(n, world)
        assert bounds[0][0] == 0 and bounds[-1][1] == n and len(bounds) == world
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        sizes = [b - a for a, b in bounds]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("cut", [0, 1, 18, 37])
def test_merged_moments_of_two_parts_equal_the_whole(cut):
    train = smooth_data()
    whole = data_moments(train)
    merged = merge_moments(data_moments(train[:cut], chunk_size=5), data_moments(train[cut:], chunk_size=7))
    assert merged.n == whole.n
    np.testing.assert_allclose(merged.mean, whole.mean, atol=1e-12)
    np.testing.assert_allclose(merged.m2, whole.m2, atol=1e-10)
    np.testing.assert_allclose(merged.m2 / (N - 1), np.cov(train.flatten(1).numpy().T), atol=1e-10)


@pytest.mark.parametrize("cut", [0, 18, 37])
def test_merged_softmax_states_of_two_shards_equal_one_process(cut):
    """The state each softmax denoiser returns for a shard (empty included) merges into the whole set's."""
    train = smooth_data()
    x, sigma = noisy_inputs(train)
    stats = compute_stats(train)
    centre = train.mean(0)
    for i, s in enumerate(SIGMAS):
        xi = x[i:i + 1]
        den = AnalyticalDenoiser(cache=False).fit(Dataset.from_tensor(train, stats=stats))
        plan = plan_mask(den._mask(s), SHAPE, batch=1)
        parts = {
            "optimal": lambda t, xi=xi, s=s: optimal_state(xi, s, t, chunk_size=4),
            "analytical": lambda t, xi=xi, s=s, plan=plan: masked_softmax_state(
                xi.flatten(1), s, t.flatten(1), plan, chunk_size=6, centre=centre.flatten()),
            "ls": lambda t, xi=xi, s=s: ls_state(xi, s, t, 3, chunk_size=5, centre=centre)}
        for name, state_of in parts.items():
            whole = finish(state_of(train))
            merged = finish(merge_states(state_of(train[:cut]), state_of(train[cut:])))
            torch.testing.assert_close(merged, whole, atol=1e-12, rtol=0, msg=f"{name} at sigma {s}")


def test_optimal_state_of_all_training_images_finishes_to_the_denoiser():
    train = smooth_data()
    x, sigma = noisy_inputs(train)
    out = finish(optimal_state(x, sigma, train)).view_as(x)
    torch.testing.assert_close(out, OptimalDenoiser().fit(Dataset.from_tensor(train))(x, sigma), atol=1e-12, rtol=0)
    empty = ls_state(x[:1], 1.0, train[:0], 3)
    assert empty.m.isneginf().all() and not empty.s.any() and not empty.acc.any()


# ---------------------------------------------------------------- two gloo ranks

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank: for each split, sharded statistics and denoisers on its shard; results saved per rank."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        train = smooth_data()
        x, sigma = noisy_inputs(train)
        results = {}
        for split, bounds in SPLITS.items():
            start, stop = bounds[rank]
            shard = train[start:stop]
            stats = distributed.sharded_stats(shard, chunk_size=5)
            optimal = distributed.shard_denoiser(OptimalDenoiser(chunk_size=5), shard)
            analytical = distributed.shard_denoiser(AnalyticalDenoiser(cache=False, chunk_size=7), shard, stats=stats)
            ls = distributed.shard_denoiser(LSDenoiser(patch_size=3, chunk_size=4), shard)
            results[split] = {
                "mean": torch.from_numpy(stats.mean), "cov": torch.from_numpy(stats.cov),
                "eigvals": torch.from_numpy(stats.eigvals),
                "wiener": torch.from_numpy(wiener_matrix(stats.eigvecs, stats.eigvals, 1.0)),
                "optimal": optimal(x, sigma), "analytical": analytical(x, sigma), "ls": ls(x, sigma)}
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank_main, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("rank", [0, 1])
def test_two_gloo_ranks_equal_one_process(two_ranks, split, rank):
    expected = single_process(smooth_data())
    got = two_ranks[rank][split]
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0, msg=f"{name}, split {split}, rank {rank}")


def test_sharding_refuses_approximations():
    """Each denoiser says why it cannot be sharded, before any collective (no process group here)."""
    with pytest.raises(ValueError, match="top_k"):
        distributed.shard_denoiser(OptimalDenoiser(top_k=3), smooth_data())
    with pytest.raises(ValueError, match="batch-normalised"):
        distributed.shard_denoiser(AnalyticalDenoiser(batch_normalised=True), smooth_data())
    with pytest.raises(TypeError, match="ELS cannot be sharded"):
        distributed.shard_denoiser(ELSDenoiser(patch_size=3), smooth_data())
    with pytest.raises(TypeError, match="WienerDenoiser cannot be sharded"):
        distributed.shard_denoiser(WienerDenoiser(), smooth_data())
    with pytest.raises(TypeError, match="cannot be sharded"):
        distributed.shard_denoiser(torch.nn.Identity(), smooth_data())


# ---------------------------------------------------------------- the CLI under torchrun

@pytest.mark.slow
def test_precompute_under_torchrun_caches_the_one_process_statistics(fashion, tmp_path):
    """`torchrun --nproc-per-node 2 -m locality_core precompute fashion-mnist --distributed` stores the
    statistics that one process computes (float64, 1e-6)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from locality_core.stats.covariance import get_stats
    from locality_core.store.cache import ArrayCache

    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "LOCALITY_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
                           str(_free_port()), "-m", "locality_core", "precompute", "fashion-mnist", "--distributed"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("statistics cached") == 1                  # rank 0 alone prints
    cache = ArrayCache(tmp_path)
    assert stats_key(fashion) in cache        # stored by the ranks
    sharded = get_stats(fashion, cache=cache)
    one = compute_stats(fashion.train)
    np.testing.assert_allclose(sharded.cov, one.cov, atol=1e-6, rtol=0)
    np.testing.assert_allclose(sharded.eigvals, one.eigvals, atol=1e-6, rtol=0)
    assert sharded.n == one.n == len(fashion.train)


# ---------------------------------------------------------------- a rank that dies or hangs

RANK_SCRIPT = """
import os, sys, time, torch, torch.distributed as dist
from locality_core.denoisers import distributed
rank, world = distributed.init("gloo")
if rank == 1:
    if sys.argv[1] == "dies":
        os._exit(3)
    time.sleep(300)  # hangs: never joins the collective
start = time.time()
try:
    dist.all_reduce(torch.ones(4))
    print("REDUCED", flush=True)
except Exception as exc:  # what the survivor sees
    print(f"FAILED after {time.time() - start:.1f} s: {type(exc).__name__}", flush=True)
    os._exit(1)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 10-25 s: two interpreters with torch, and a 5 s collective timeout
@pytest.mark.parametrize("fate", ["dies", "hangs"])
def test_a_rank_that_dies_or_hangs_ends_the_others_with_an_error(fate):
    """Rank 1 exits (or sleeps) before a collective: rank 0 fails with an error within LOCALITY_DIST_TIMEOUT_S
    (5 s here) plus a margin, instead of waiting 30 minutes (torch's default) or for ever."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "LOCALITY_DIST_TIMEOUT_S": "5", "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, fate], cwd=root, env={**env, "RANK": str(r),
                              "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    start = time.time()
    try:
        out, _ = ranks[0].communicate(timeout=90)
    finally:
        for p in ranks:
            p.kill()
            p.wait()
    assert ranks[0].returncode != 0 and "FAILED after" in out, out[-2000:]
    seconds = float(out.split("FAILED after ")[1].split(" s")[0])
    assert seconds < 5 + 15 and time.time() - start < 90, out[-2000:]


TORCHRUN_SCRIPT = """
import os, signal, time, torch, torch.distributed as dist
from locality_core.denoisers import distributed
rank, world = distributed.init("gloo")
if rank == 1:
    os.kill(os.getpid(), signal.SIGKILL)
dist.all_reduce(torch.ones(4))
time.sleep(300)
"""


@pytest.mark.slow  # 10-30 s
def test_torchrun_ends_the_run_when_a_rank_is_killed(tmp_path):
    """Under torchrun itself: rank 1 is SIGKILLed; torchrun ends rank 0 and exits with an error."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = tmp_path / "killed.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = {**os.environ, "LOCALITY_DIST_TIMEOUT_S": "5", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(_free_port()), str(script)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and time.time() - start < 90, done.stderr[-2000:]
    assert "Signal 9" in done.stderr or "SIGKILL" in done.stderr or "exitcode" in done.stderr, done.stderr[-2000:]
