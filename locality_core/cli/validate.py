"""One validation layer for what users type: CLI arguments and URL parameters.

Every check raises `InvalidInput` (a ValueError) whose message is one sentence saying what is wrong and what to
do. The ``*_arg`` wrappers turn them into argparse types, so that a bad value fails before anything is loaded.

Ranges
    noise level   finite, in (0, SIGMA_MAX]: the app's typed range, above every schedule's top (157 for DDPM)
    counts        integers >= 1 (and <= an upper bound where one is given)
    pixel         (row, col) inside the image
    --out         a file (not a folder) whose parent folder exists and is writable, outside /proc, /sys, /dev
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

SIGMA_MAX = 1000.0
SYSTEM_TREES = ("/proc", "/sys", "/dev")


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


def count(value: int, what: str, maximum: int | None = None) -> int:
    value = int(value)
    if value < 1 or (maximum is not None and value > maximum):
        upper = f" and at most {maximum:,}" if maximum is not None else ""
        raise InvalidInput(f"{what} must be at least 1{upper}, got {value}.")
    return value


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
    return parse


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line on stderr, with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")
