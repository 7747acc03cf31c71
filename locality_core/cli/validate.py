"""One validation layer for what users type: CLI arguments and URL parameters.

Every check raises `InvalidInput` (a ValueError) whose message is one sentence saying what is wrong and what to
do. The ``*_arg`` wrappers turn them into argparse types, so that a bad value fails before anything is loaded.

Ranges
    noise level   finite, in (0, SIGMA_MAX]: the app's typed range, above every schedule's top (157 for DDPM)
    counts        integers from 1 to an upper bound (the ``MAX_*`` constants below): every count that sizes an
                  allocation or a loop has one, so ``--n 100000000`` is one sentence, not a 313 GB allocation
    seed          an integer in [0, 2**63)
    pixel         (row, col) inside the image
    --out         a file (not a folder) whose parent folder exists and is writable, outside /proc, /sys, /dev

Values that begin with '-' (``--pixel -1,3``, ``--sigmas -inf``) reach these checks: `Parser` reads any token
of the form -<digit>, -.<digit>, -inf or -nan as a value, not as an option (argparse alone says "expected one
argument").
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

SIGMA_MAX = 1000.0
SYSTEM_TREES = ("/proc", "/sys", "/dev")
SEED_MAX = 2**63 - 1

# upper bounds of the counts users type (the CLI's options name them); each is far above any useful value
MAX_SAMPLES = 1024        # samples, noisy inputs or held-out images a command draws and keeps
MAX_IMAGES = 100_000      # test images an evaluation streams through, or training images ELS fits to
MAX_STEPS = 1_000_000     # training steps
MAX_DDIM_STEPS = 900      # DDIM steps from t = 900 (one per DDPM timestep)
MAX_BATCH = 1024          # images per denoiser call or per training step
MAX_TOP = 4096            # eigenvalues or eigenvectors listed
MAX_THREADS = 256
MAX_BASE = 256            # UNet channels at full resolution
MAX_SUBSET = 10_000_000   # training images of a subset network
MAX_PATCH = 511           # patch side of the LS / ELS machines (2 x 256 - 1: the whole of the largest image)


class InvalidInput(ValueError):
    """A value typed by a user is out of range; the message says what to type instead."""


def sigma(value: float, what: str = "noise level") -> float:
    value = float(value)
    if not math.isfinite(value) or not 0 < value <= SIGMA_MAX:
        raise InvalidInput(f"{what} must be a finite number in (0, {SIGMA_MAX:g}], got {value!r}.")
    return value


def sigma_list(text: str) -> list[float]:
    """``"60,3.4,0.1"`` -> [60.0, 3.4, 0.1]; every entry a valid noise level, at least one."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise InvalidInput(f"expected comma-separated noise levels such as 60,3.4,0.1, got {text!r}.")
    try:
        values = [float(s) for s in items]
    except ValueError:
        raise InvalidInput(f"expected comma-separated numbers such as 60,3.4,0.1, got {text!r}.") from None
    return [sigma(v) for v in values]


def _integer(value, what: str, lo: int, hi: int, out_of_range: str) -> int:
    """``value`` as an integer in [lo, hi]; ``out_of_range`` is the sentence's middle when it lies outside."""
    try:
        value = int(value)
    except ValueError:
        raise InvalidInput(f"{what} must be a whole number from {lo} to {hi:,}, got {value!r}.") from None
    if not lo <= value <= hi:
        raise InvalidInput(f"{what} must {out_of_range}, got {value:,}.")
    return value


def count(value: int, what: str, maximum: int) -> int:
    """An integer in [1, maximum]."""
    return _integer(value, what, 1, maximum, f"be at least 1 and at most {maximum:,}")


def seed(value: int, what: str = "--seed") -> int:
    """A random seed: an integer in [0, 2**63) (numpy refuses negative seeds, torch wraps large ones)."""
    return _integer(value, what, 0, SEED_MAX, f"lie in 0..{SEED_MAX:,}")


def odd_sizes(text: str, what: str, maximum: int) -> list[int]:
    """``"3,5,7"`` -> [3, 5, 7]: at least one odd patch size, each in [1, maximum]."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        sizes = [int(s) for s in items]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 or s > maximum or s % 2 == 0 for s in sizes):
        raise InvalidInput(f"{what} must be a comma list of odd sizes from 1 to {maximum}, such as 3,5,7, "
                           f"got {text!r}.")
    return sizes


def int_pair(text: str, what: str) -> tuple[int, int]:
    try:
        a, b = (int(s) for s in str(text).split(","))
    except ValueError:
        raise InvalidInput(f"{what} must be two integers separated by a comma, got {text!r}.") from None
    return a, b


def pixel(rc: tuple[int, int], shape: tuple[int, ...]) -> tuple[int, int]:
    """(row, col) inside an image of shape (C, H, W)."""
    h, w = shape[-2:]
    r, c = rc
    if not (0 <= r < h and 0 <= c < w):
        raise InvalidInput(f"pixel ({r}, {c}) lies outside the {h}x{w} image: use a row in 0..{h - 1} and a "
                           f"column in 0..{w - 1}.")
    return r, c


def index(i: int, size: int, what: str) -> int:
    if not 0 <= i < size:
        raise InvalidInput(f"{what} must lie in 0..{size - 1}, got {i}.")
    return i


def names(text: str, known: list[str], what: str = "denoiser") -> list[str]:
    """A comma list of known names, at least one."""
    out = [s.strip() for s in str(text).split(",") if s.strip()]
    if not out:
        raise InvalidInput(f"name at least one {what}; known: {', '.join(known)}.")
    unknown = [n for n in out if n not in known]
    if unknown:
        raise InvalidInput(f"unknown {what} {unknown[0]!r}; known: {', '.join(known)}.")
    return out


def out_file(path: str | Path, suffixes: tuple[str, ...] = ()) -> Path:
    """An output file we can write: the right suffix, a writable existing parent folder, not a folder itself."""
    path = Path(path).expanduser()
    resolved = path.resolve()
    if suffixes and path.suffix not in suffixes:
        raise InvalidInput(f"the output file must end in {' or '.join(suffixes)}, got {path.name!r}.")
    if any(str(resolved) == t or str(resolved).startswith(t + "/") for t in SYSTEM_TREES):
        raise InvalidInput(f"cannot write {path} inside a system folder; choose a path in your own folders.")
    if resolved.is_dir():
        example = path / ("out" + (suffixes[0] if suffixes else ""))
        raise InvalidInput(f"{path} is a folder; give a file name inside it, e.g. {example}.")
    parent = resolved.parent
    if not parent.is_dir():
        raise InvalidInput(f"the folder {parent} does not exist; create it first or choose another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidInput(f"the folder {parent} is not writable; choose another path.")
    return path


def arg(check: Callable, *fixed) -> Callable[[str], object]:
    """An argparse ``type=`` from a check: ``arg(count, "--n")`` parses an int and checks it."""
    def parse(text: str):
        try:
            return check(text, *fixed)
        except InvalidInput as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid value.") from None
    parse.check = check  # what the tests read to find every bounded option
    return parse


VALUE_WITH_A_DASH = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line on stderr, with exit status 2, and that reads a token
    such as ``-1,3`` or ``-inf`` as a value (none of the options starts with a digit, "inf" or "nan"), so that the
    checks above explain it. Subparsers are of this class too (argparse gives them their parent's)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse's own pattern (Python 3.11-3.13) admits only -5 and -.5: "-1,3" would be read as an option
        self._negative_number_matcher = VALUE_WITH_A_DASH

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")
