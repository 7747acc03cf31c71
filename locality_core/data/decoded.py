"""Decoded data sets kept beside the cache as memory-mapped .npy files, so a cold process skips decoding.

Glossary
    source      the files a data set is decoded from (e.g. the four gzipped IDX files)
    stamp       (path, size, mtime) of every source file: a decoded copy is used only while it matches
    entry       a folder under <cache dir>/decoded/ named by a hash of the recipe and the source paths:
                one float32 or int64 .npy per array, and meta.json (stamp, fingerprint), written last, so
                an entry without a matching meta.json is a miss (interrupted writes included)
    loading     np.load(mmap_mode="c"): copy-on-write pages read from the page cache on first touch; the
                tensors are writable (writes stay private to the process) and no decode or float
                conversion runs. The fingerprint is stored, not recomputed

Any error reading an entry counts as a miss: it is decoded again and rewritten.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from locality_core.store.cache import default_cache_dir
from locality_core.store.files import atomic_write

META = "meta.json"


def stamp(paths: list[Path]) -> list[list]:
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def entry_dir(recipe: str, sources: list[Path]) -> Path:
    key = hashlib.sha256(json.dumps([recipe, [str(p.resolve()) for p in sources]]).encode()).hexdigest()[:24]
    return default_cache_dir() / "decoded" / key


def read_entry(folder: Path, sources: list[Path]) -> tuple[dict[str, torch.Tensor], str] | None:
    """The arrays (as tensors over memory maps) and the fingerprint of a valid entry, else None."""
    try:
        meta = json.loads((folder / META).read_text())
        if meta["stamp"] != stamp(sources):
            return None
        arrays = {name: torch.from_numpy(np.load(folder / f"{name}.npy", mmap_mode="c", allow_pickle=False))
                  for name in meta["arrays"]}
        return arrays, meta["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_entry(folder: Path, sources: list[Path], arrays: dict[str, torch.Tensor], fingerprint: str) -> None:
    """Each array written to a temporary name and renamed; meta.json last (its presence commits the entry)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    (folder / META).unlink(missing_ok=True)
    for name, tensor in arrays.items():
        atomic_write(folder / f"{name}.npy", lambda f, a=tensor.numpy(): np.save(f, a, allow_pickle=False))
    meta = {"stamp": stamp(sources), "fingerprint": fingerprint, "arrays": list(arrays)}
    atomic_write(folder / META, lambda f: f.write(json.dumps(meta).encode()))


def decoded(recipe: str, sources: list[Path], decode: Callable[[], tuple[dict[str, torch.Tensor], str]]
            ) -> tuple[dict[str, torch.Tensor], str]:
    """``decode() -> (arrays, fingerprint)`` of ``sources``, memory-mapped from the entry when it is valid,
    else decoded and stored (a read-only cache folder only costs the speed-up)."""
    folder = entry_dir(recipe, sources)
    found = read_entry(folder, sources)
    if found is not None:
        return found
    arrays, fp = decode()
    try:
        write_entry(folder, sources, arrays, fp)
    except OSError:
        pass
    return arrays, fp
