"""Decoded data sets beside the cache: a second load maps the .npy files instead of decoding, gives the same
tensors and fingerprint, and a changed or damaged source or entry is decoded again."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from locality_core.data import idx, registry
from locality_core.data.decoded import META, entry_dir


@pytest.fixture
def idx_home(tmp_path, monkeypatch):
    """Fixture IDX files of 'mnist' (5 train, 3 test images) in a data home, and an empty cache."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "home" / "mnist"
    folder.mkdir(parents=True)
    for fname, shape in [("train-images-idx3-ubyte.gz", (5, 28, 28)), ("train-labels-idx1-ubyte.gz", (5,)),
                         ("t10k-images-idx3-ubyte.gz", (3, 28, 28)), ("t10k-labels-idx1-ubyte.gz", (3,))]:
        idx.write_idx(folder / fname, rng.integers(0, 10 if len(shape) == 1 else 256, shape, dtype=np.uint8))
    monkeypatch.setenv("LOCALITY_DATA_DIR", str(tmp_path / "home"))
    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(tmp_path / "cache"))
    return folder


def load(monkeypatch, *, decode_allowed: bool):
    calls = []
    real = registry.load_idx_split

    def counting(directory, split):
        calls.append(split)
        if not decode_allowed:
            raise AssertionError("decoded the IDX files although a valid decoded copy exists")
        return real(directory, split)

    monkeypatch.setattr(registry, "load_idx_split", counting)
    return registry._load_idx_dataset("mnist", "MNIST", registry.DIGITS), calls


def test_second_load_maps_the_decoded_copy(idx_home, monkeypatch):
    first, calls = load(monkeypatch, decode_allowed=True)
    assert calls == ["train", "test"]
    second, _ = load(monkeypatch, decode_allowed=False)
    for name in ("train", "test", "train_labels", "test_labels"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert second.fingerprint == first.fingerprint and second.train.dtype == torch.float32
    second.train[0] += 1.0                                          # copy-on-write: the file is untouched
    third, _ = load(monkeypatch, decode_allowed=False)
    assert torch.equal(third.train, first.train)


def test_changed_source_or_damaged_entry_is_decoded_again(idx_home, monkeypatch):
    first, _ = load(monkeypatch, decode_allowed=True)
    source = idx_home / "train-images-idx3-ubyte.gz"
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, calls = load(monkeypatch, decode_allowed=True)
    assert calls == ["train", "test"]
    sources = [idx_home / f for files in idx.SPLIT_FILES.values() for f in files]
    folder = entry_dir("mnist:idx:uint8/255*2-1", sources)
    assert (folder / META).exists()
    for npy in folder.glob("*.npy"):
        npy.write_bytes(b"not an array")
    again, calls = load(monkeypatch, decode_allowed=True)
    assert calls == ["train", "test"] and torch.equal(again.train, first.train)
    _, calls = load(monkeypatch, decode_allowed=False)                # rewritten: valid again


def test_atomic_writers_of_one_process_do_not_share_a_temporary_file(tmp_path):
    """Two sessions of one server are threads of one process: a writer that starts while another is half-way
    must not touch that one's temporary file (a name made from the pid would be the same), and a failed write
    leaves the old file and no temporary file behind."""
    from locality_core.store.files import atomic_write

    target = tmp_path / "train.npy"

    def slow_writer(f):
        f.write(b"first half,")
        atomic_write(target, lambda g: g.write(b"the other writer"))  # meanwhile, in another thread
        f.write(b" second half")

    atomic_write(target, slow_writer)
    assert target.read_bytes() == b"first half, second half"

    def failing(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"first half, second half" and list(tmp_path.iterdir()) == [target]
