"""The memory budget: estimates that bound the real peak, refusals that say the number and how to change the
limit, builds in flight that share the budget, and caches that stay inside it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fault_helpers import peak_growth, write_images

from locality_core.data import registry
from locality_core.store import memory
from locality_core.store.memory import BUDGET, BoundedCache, MemoryBudget, TooLargeError

ISSUE_URL = {"n_train": 200_000, "n_test": 200_000}  # the campaign's URL (test_faults_data.py: its peak on main)


def _available(name: str) -> bool:
    return registry.get_spec(name).availability()[0]


# (data set, options): the registered data sets at the extremes of their options that fit this machine
EXTREMES = [
    ("grf", ISSUE_URL), ("grf", {}), ("grf", {"n_train": 1, "n_test": 1}),
    ("textures", {"stride": 1}), ("textures", {}), ("textures", {"stride": 500}),
    ("natural-patches", {}), ("natural-patches", {"stride": 1, "max_per_photo": 3000, "max_per_test_photo": 3000}),
    ("natural-patches", {"max_per_photo": 1, "max_per_test_photo": 1, "scales": (4,)}),
    ("fashion-mnist", {}), ("mnist", {}), ("mnist-5k", {}), ("faces", {}), ("cifar10", {}),
]


@pytest.mark.slow  # about 2 minutes: every data set built in a fresh process, twice 3 GB at the top
@pytest.mark.parametrize(("name", "options"), EXTREMES, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={w}" for k, w in v.items()) or "defaults")
def test_the_estimate_bounds_the_measured_peak(tmp_path, name, options):
    """What the budget is checked against is an upper bound: a fresh process (no decoded copy on disk) loading
    the data set grows by less than its estimate."""
    if not _available(name):
        pytest.skip(registry.get_spec(name).availability()[1])
    merged = {**registry.get_spec(name).params, **options}
    estimate = registry.estimate_bytes(name, merged)
    growth, out = peak_growth(
        "from locality_core.data import load_dataset",
        f"data = load_dataset({name!r}, **{options!r})\nprint('IMAGES', len(data.train) + len(data.test))",
        env={"LOCALITY_MEMORY_BUDGET_GB": "64", "LOCALITY_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert "IMAGES" in out, out[-2000:]
    assert growth <= estimate, f"{name} {options}: measured {growth / 2**20:.0f} MiB > estimate {estimate / 2**20:.0f}"
    print(f"{name} {options}: measured {growth / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB")


@pytest.mark.slow
@pytest.mark.parametrize(("channels", "side"), [(1, 28), (3, 32)])
def test_the_statistics_estimate_bounds_the_measured_peak(tmp_path, channels, side):
    d = channels * side * side
    growth, out = peak_growth(
        "import torch\nfrom locality_core.data import Dataset\nfrom locality_core.stats.covariance import get_stats\n"
        f"x = torch.randn(6000, {channels}, {side}, {side})\ndata = Dataset('x', x, x[:10], 'fp-{d}', 'random')",
        "get_stats(data)", env={"LOCALITY_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert 0 < growth <= memory.statistics_bytes(d), out[-1000:]


@pytest.mark.slow
def test_the_import_and_load_estimates_bound_the_measured_peak(tmp_path):
    """An import of 300 files of 200x200 RGB to 64x64, then loading it: each within its estimate."""
    from locality_core.data import user

    source = write_images(tmp_path / "src", 300, 200, "RGB")
    env = {"LOCALITY_DATA_DIR": str(tmp_path / "home"), "LOCALITY_CACHE_DIR": str(tmp_path / "cache")}
    need, _, _ = user.import_peak_bytes(user.folder_entries(source), (64, 64), "RGB")
    growth, out = peak_growth("from locality_core.data import user",
                              f"user.import_images({str(source)!r}, 'est', size=(64, 64), mode='RGB')", env=env)
    assert 0 < growth <= need, out[-1000:]
    growth, out = peak_growth("from locality_core.data import load_dataset\nfrom locality_core.data import user",
                              "print('EST', user.load_peak_bytes('est'))\nload_dataset('user:est')", env=env)
    estimate = int(next(line.split()[1] for line in out.splitlines() if line.startswith("EST")))
    assert 0 < growth <= estimate, out[-1000:]


def test_a_refusal_says_the_number_and_how_to_change_the_limit(monkeypatch):
    monkeypatch.setenv("LOCALITY_MEMORY_BUDGET_GB", "1")
    start = time.time()
    with pytest.raises(TooLargeError) as info:
        registry.load_dataset("grf", n_train=10**6)
    text = str(info.value)
    # the fields alone are 4 bytes x 1,002,000 x 784 = 2.93 GiB; the estimate adds 3 %, one chunk and a margin
    assert "3.12 GiB" in text and "1.00 GiB" in text and "LOCALITY_MEMORY_BUDGET_GB" in text
    assert "smaller counts" in text and time.time() - start < 2


def test_builds_in_flight_share_the_budget(monkeypatch):
    """Two builds of 60 % each: the second waits for the first, never both at once; one that cannot get room in
    time is refused with a sentence, not left waiting."""
    monkeypatch.setenv("LOCALITY_MEMORY_BUDGET_GB", str(1000 / 2**30))
    budget, events = MemoryBudget(), []

    def build(tag: str, hold: float):
        with budget.reserve(600, tag):
            events.append(("start", tag, budget.in_flight()))
            time.sleep(hold)
        events.append(("end", tag))

    first = threading.Thread(target=build, args=("a", 0.5))
    first.start()
    time.sleep(0.1)
    with pytest.raises(TooLargeError, match="try again"):
        with budget.reserve(600, "impatient", wait_s=0.1):
            pass
    build("b", 0.0)
    first.join()
    assert [e[:2] for e in events] == [("start", "a"), ("end", "a"), ("start", "b"), ("end", "b")]
    assert all(e[2] <= 1000 for e in events if e[0] == "start")
    with pytest.raises(TooLargeError, match="more than this process's memory budget"):
        with budget.reserve(2000, "huge"):
            pass


def test_a_reservation_makes_the_caches_give_way(monkeypatch):
    monkeypatch.setenv("LOCALITY_MEMORY_BUDGET_GB", str(100_000 / 2**30))
    budget = MemoryBudget()
    cache = BoundedCache("c", budget=budget)
    for i in range(8):
        cache.set(i, np.zeros(1000))  # 8 kB each
    assert len(cache) == 8 and budget.held() == 64_000
    with budget.reserve(60_000, "a build"):
        assert budget.held() + budget.in_flight() <= 100_000 and 0 not in cache and 7 in cache


def test_the_library_caches_stay_within_a_small_budget(monkeypatch):
    """Many data sets loaded one after the other: what the process keeps never passes the budget."""
    monkeypatch.setenv("LOCALITY_MEMORY_BUDGET_GB", "0.3")
    for seed in range(8):
        registry.load_dataset("grf", n_train=10_000, n_test=100, seed=100 + seed)  # 32 MB each, 108 MB to build
        assert BUDGET.held() + BUDGET.in_flight() <= memory.budget_bytes()
    assert len(registry._load_cached.cache) < 8


def test_shared_storage_is_counted_once():
    data = registry.load_dataset("grf", n_train=500, n_test=10, seed=7)
    blocks = memory.storages({"data": data, "again": data, "view": data.train[10:], "array": data.train.numpy()})
    assert sum(blocks.values()) < data.train.nbytes + data.test.nbytes + 64 * 1024
