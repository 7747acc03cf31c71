"""What every command shares: loading a data set (its notice on stderr), a progress bar that appears only when
something is computed, and the errors a user can fix, which become one line on stderr and exit status 2."""

from __future__ import annotations

import functools
import sys

from tqdm.auto import tqdm

from locality_core.data import DatasetError, load_dataset
from locality_core.denoisers.models import ModelError
from locality_core.denoisers.registry import DenoiserError
from locality_core.stats.covariance import get_stats
from locality_core.store.memory import TooLargeError

USER_ERRORS = (DatasetError, DenoiserError, ModelError, TooLargeError, ValueError, OSError)  # PackError is a ValueError


def progress_bar(desc: str):
    """A (fraction, message) callback drawing a tqdm bar, created on the first update (so a cache hit
    prints nothing); returns (callback, close)."""
    bars = []

    def update(fraction: float, message: str = ""):
        if not bars:
            bars.append(tqdm(total=100, desc=desc, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}"))
        bars[0].n = int(round(100 * fraction))
        bars[0].set_postfix_str(message)
        bars[0].refresh()

    def close():
        for bar in bars:
            bar.close()

    return update, close


def load(name: str):
    dataset = load_dataset(name)
    if dataset.notice:
        print(f"note: {dataset.notice}", file=sys.stderr)
    return dataset


def statistics(dataset):
    update, close = progress_bar(f"statistics of {dataset.name}")
    try:
        return get_stats(dataset, progress=update)
    finally:
        close()


def friendly(command):
    """Run a command; turn user-fixable errors into 'error: ...' on stderr and exit status 2."""
    @functools.wraps(command)
    def run(args) -> int:
        try:
            return command(args)
        except USER_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return run
