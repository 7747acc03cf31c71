"""Shared test set-up: a project-local cache (never the user's), and the data sets tests need."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LOCALITY_CACHE_DIR", str(ROOT / ".cache" / "test"))
os.environ.setdefault("LOCALITY_WARMUP", "0")  # no background warm-up from the apps the tests run
os.environ.setdefault("LOCALITY_JOBS", "inline")  # headless page runs compute in their own script run (tests of the
#                                                   job queue and the browser tests of it ask for it explicitly)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed: `apt-get install dataset-fashion-mnist` (make test does it as root)")


@pytest.fixture(scope="session")
def fashion():
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed: `apt-get install dataset-fashion-mnist`")
    from locality_core.data import load_dataset

    return load_dataset("fashion-mnist")


@pytest.fixture(scope="session")
def fashion_stats(fashion):
    from locality_core.stats.covariance import get_stats

    return get_stats(fashion)


@pytest.fixture(scope="session")
def natural_patches():
    from locality_core.data import load_dataset, natural

    ok, why = natural.availability()
    if not ok:
        pytest.skip(why)
    return load_dataset("natural-patches")
