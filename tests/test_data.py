"""Data sets: the registry, every loader, and the download paths on fixture files served from file:// URLs."""

from __future__ import annotations

import hashlib
import inspect
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from locality_core.data import cifar10, faces, grf, idx, natural, registry, textures
from locality_core.data import download as dl
from locality_core.data.base import DatasetError, to_signed_unit
from locality_core.data.bundled import bundled_file, read_image, window_std

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own empty data home, online mode, and an empty load cache."""
    home = tmp_path / "home"
    monkeypatch.setenv("LOCALITY_DATA_DIR", str(home))
    monkeypatch.delenv("LOCALITY_OFFLINE", raising=False)
    registry._load_cached.cache_clear()
    yield home
    registry._load_cached.cache_clear()


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def signed(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / 255.0 * 2.0 - 1.0


# ---------------------------------------------------------------- the registry

def test_unknown_name_lists_known_names():
    with pytest.raises(DatasetError) as err:
        registry.load_dataset("no-such-set")
    for known in ("fashion-mnist", "cifar10", "natural-patches", "faces", "textures", "grf"):
        assert known in str(err.value)


def test_unknown_parameter_is_refused():
    with pytest.raises(DatasetError, match="alpha"):
        registry.load_dataset("grf", alpah=1.0)


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_spec_params_match_the_loader_signature(name):
    spec = registry.REGISTRY[name]
    signature = inspect.signature(spec.load).parameters
    for key, value in spec.params.items():
        assert key in signature and signature[key].default == value, (name, key)
    assert spec.name == name and spec.title and spec.description


def test_summary_reports_availability_and_sizes():
    rows = {s.name: registry.dataset_summary(s) for s in registry.list_datasets()}
    assert rows["cifar10"]["available"] is False and cifar10.URL in rows["cifar10"]["message"]
    assert rows["faces"]["available"] and (rows["faces"]["n_train"], rows["faces"]["n_test"]) == (180, 20)
    assert rows["grf"]["shape"] == (1, 28, 28) and rows["grf"]["params"]["alpha"] == 2.0
    exact = registry.dataset_summary(registry.get_spec("textures"), load=True)
    assert (exact["n_train"], exact["n_test"]) == textures.texture_counts(6)


def test_default_dataset_is_available():
    assert registry.get_spec(registry.default_dataset_name()).availability()[0]


def test_to_signed_unit_maps_uint8_and_channels_last():
    pixels = np.zeros((1, 2, 2, 3), dtype=np.uint8)  # channels last
    pixels[0, 1, 0] = [0, 128, 255]
    out = to_signed_unit(pixels)
    assert out.shape == (1, 3, 2, 2) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0, :, 1, 0].numpy(), [-1.0, 128 / 255 * 2 - 1, 1.0], atol=1e-7)
    assert out[0, :, 0, 0].tolist() == [-1.0, -1.0, -1.0]


# ---------------------------------------------------------------- downloads and IDX

def write_idx_fixture(folder: Path, n_train: int = 6, n_test: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for fname, arr in arrays.items():
        idx.write_idx(folder / fname, arr)
    return arrays


def test_idx_download_from_file_url(tmp_path, monkeypatch, isolated_home):
    server = tmp_path / "server"
    arrays = write_idx_fixture(server)
    monkeypatch.setitem(idx.SOURCES["mnist"], "url", server.as_uri() + "/")
    monkeypatch.setitem(idx.SOURCES["mnist"], "md5", {f: md5_of(server / f) for f in arrays})
    monkeypatch.setitem(idx.SOURCES["mnist"], "system_dirs", [])
    data = registry.load_dataset("mnist")
    assert data.notice is None
    assert torch.equal(data.train, torch.from_numpy(signed(arrays["train-images-idx3-ubyte.gz"])[:, None]))
    assert torch.equal(data.test, torch.from_numpy(signed(arrays["t10k-images-idx3-ubyte.gz"])[:, None]))
    assert data.train_labels.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()
    assert sorted(p.name for p in (isolated_home / "mnist").iterdir()) == sorted(arrays)


def test_wrong_md5_raises_and_keeps_nothing(tmp_path):
    src = idx.write_idx(tmp_path / "x.gz", np.zeros((2, 28, 28), np.uint8))
    dest = tmp_path / "dl" / "x.gz"
    with pytest.raises(DatasetError, match="checksum mismatch"):
        dl.download(src.as_uri(), dest, "0" * 32, progress=False)
    assert not dest.exists() and not dest.with_name("x.gz.part").exists()
    dl.download(src.as_uri(), dest, md5_of(src), progress=False)
    assert dest.read_bytes() == src.read_bytes()


def test_network_error_raises_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="could not download"):
        dl.download((tmp_path / "absent.gz").as_uri(), tmp_path / "out.gz", None, progress=False)
    assert not (tmp_path / "out.gz.part").exists()


def test_truncated_idx_raises(tmp_path):
    arr = np.arange(4 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(4, 28, 28)
    whole_gz = idx.write_idx(tmp_path / "a.gz", arr).read_bytes()
    (tmp_path / "cut.gz").write_bytes(whole_gz[: len(whole_gz) // 2])
    whole_raw = idx.write_idx(tmp_path / "a.idx", arr).read_bytes()
    (tmp_path / "cut.idx").write_bytes(whole_raw[:-10])
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "a.gz"), arr)
    for name in ("cut.gz", "cut.idx"):
        with pytest.raises(DatasetError, match="truncated|unreadable"):
            idx.read_idx(tmp_path / name)


def test_offline_mnist_falls_back_to_the_subset(monkeypatch):
    monkeypatch.setenv("LOCALITY_OFFLINE", "1")
    monkeypatch.setitem(idx.SOURCES["mnist"], "system_dirs", [])
    data = registry.load_dataset("mnist")
    assert data.name == "mnist-5k" and "5,000" in data.notice and len(data.train) == 4000


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_full():
    data = registry.load_dataset("fashion-mnist")
    assert data.train.shape == (60000, 1, 28, 28) and data.test.shape == (10000, 1, 28, 28)
    raw = idx.read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(data.test[:50, 0], torch.from_numpy(signed(raw[:50])))
    assert data.train_labels.bincount().tolist() == [6000] * 10
    assert data.train.min() == -1 and data.train.max() == 1 and len(data.class_names) == 10


def test_mnist_5k():
    data = registry.load_dataset("mnist-5k")
    assert (len(data.train), len(data.test)) == (4000, 1000) and data.shape == (1, 28, 28)
    assert data.train_labels.bincount().tolist() == [400] * 10 and data.test_labels.bincount().tolist() == [100] * 10
    assert data.train.min() == -1 and data.train.max() == 1
    mean_digit = data.train[data.train_labels == 1].mean(0)[0]  # ones: a vertical stroke in the middle columns
    assert mean_digit[:, 12:16].mean() > mean_digit[:, :6].mean() + 0.5


# ---------------------------------------------------------------- CIFAR-10 on fixture archives

def py2_pickle(obj) -> bytes:
    """Pickle ``obj`` the way Python 2's cPickle wrote the CIFAR batches: protocol 2, strings as BINSTRING,
    numpy's module named numpy.core.multiarray."""
    buf = io.BytesIO()
    pickler = pickle._Pickler(buf, protocol=2)
    pickler.dispatch = dict(pickler.dispatch)

    def save_bytes(self, value):
        n = len(value)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + value if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + value)
        self.memoize(value)

    pickler.dispatch[bytes] = save_bytes
    pickler.dispatch[str] = lambda self, text: save_bytes(self, text.encode("latin1"))
    pickler.dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def make_cifar_archive(path: Path, per_batch: int = 3, seed: int = 0) -> dict[str, tuple[np.ndarray, list]]:
    """A tar.gz laid out like cifar-10-python.tar.gz, with ``per_batch`` random images per batch."""
    rng = np.random.default_rng(seed)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in cifar10.TRAIN_BATCHES + cifar10.TEST_BATCHES:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, per_batch).tolist()
            batches[name] = (data, labels)
            raw = py2_pickle({"batch_label": name, "labels": labels, "data": data,
                              "filenames": [f"img_{i}.png" for i in range(per_batch)]})
            info = tarfile.TarInfo(f"{cifar10.FOLDER}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return batches


def test_cifar10_download_and_load(tmp_path, monkeypatch, isolated_home):
    archive = tmp_path / "server" / cifar10.ARCHIVE
    archive.parent.mkdir()
    batches = make_cifar_archive(archive)
    monkeypatch.setattr(cifar10, "URL", archive.as_uri())
    monkeypatch.setattr(cifar10, "MD5", md5_of(archive))
    assert registry.get_spec("cifar10").availability()[0] is False
    data = registry.load_dataset("cifar10")
    expected = np.concatenate([batches[b][0] for b in cifar10.TRAIN_BATCHES]).reshape(-1, 3, 32, 32)
    assert data.train.shape == (15, 3, 32, 32) and data.test.shape == (3, 3, 32, 32)
    assert torch.equal(data.train, torch.from_numpy(signed(expected)))
    assert torch.equal(data.test, torch.from_numpy(signed(batches["test_batch"][0].reshape(-1, 3, 32, 32))))
    assert data.test_labels.tolist() == batches["test_batch"][1]
    assert data.class_names[0] == "airplane" and len(data.class_names) == 10
    assert (isolated_home / "cifar10" / cifar10.FOLDER / "data_batch_5").is_file()
    monkeypatch.setenv("LOCALITY_OFFLINE", "1")  # now found unpacked on disk: no network needed
    registry._load_cached.cache_clear()
    assert registry.get_spec("cifar10").availability()[0]
    assert registry.load_dataset("cifar10").fingerprint == data.fingerprint


def test_cifar10_archive_in_data_dir_is_unpacked_offline(tmp_path, monkeypatch, isolated_home):
    root = isolated_home / "cifar10"
    root.mkdir(parents=True)
    batches = make_cifar_archive(root / cifar10.ARCHIVE, per_batch=2, seed=1)
    monkeypatch.setenv("LOCALITY_OFFLINE", "1")
    data = cifar10.load_cifar10(progress=False, md5=md5_of(root / cifar10.ARCHIVE))
    assert torch.equal(data.test, torch.from_numpy(signed(batches["test_batch"][0].reshape(-1, 3, 32, 32))))


def test_cifar10_offline_without_files_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("LOCALITY_OFFLINE", "1")
    with pytest.raises(DatasetError) as err:
        registry.load_dataset("cifar10")
    assert "LOCALITY_OFFLINE" in str(err.value) and cifar10.URL in str(err.value)


def test_cifar10_wrong_md5_keeps_nothing(tmp_path, isolated_home):
    archive = tmp_path / cifar10.ARCHIVE
    make_cifar_archive(archive)
    with pytest.raises(DatasetError, match="checksum"):
        cifar10.load_cifar10(progress=False, url=archive.as_uri(), md5="0" * 32)
    assert not any((isolated_home / "cifar10").iterdir())


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_calling_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DatasetError, match="refusing to load"):
        cifar10.read_batch(batch)
    assert not marker.exists()
    with pytest.raises(DatasetError, match="refusing"):
        cifar10.safe_unpickle(pickle.dumps(eval))  # any other global, even a builtin


def test_py3_pickles_load_too(tmp_path):
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    for protocol in (2, 4, 5):
        (tmp_path / "b").write_bytes(pickle.dumps({b"data": data, b"labels": [3, 4]}, protocol=protocol))
        images, labels = cifar10.read_batch(tmp_path / "b")
        np.testing.assert_array_equal(images.reshape(2, -1), data)
        assert labels.tolist() == [3, 4]


def test_bad_batch_contents_are_refused(tmp_path):
    (tmp_path / "b").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DatasetError, match="3072"):
        cifar10.read_batch(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DatasetError):
        cifar10.read_batch(tmp_path / "c")


@pytest.fixture
def tarfile_without_filter(monkeypatch):
    """tarfile as Python 3.11.0-3.11.3 have it (Debian 12's 3.11.2): no data_filter, and extractall() refuses a
    filter= argument with the TypeError those versions raise."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)  # 3.11.0-3.11.3 have none to remove
    original = tarfile.TarFile.extractall

    def extractall(self, path=".", members=None, *, numeric_owner=False, **kwargs):
        if kwargs:
            raise TypeError(f"extractall() got an unexpected keyword argument {next(iter(kwargs))!r}")
        return original(self, path, members, numeric_owner=numeric_owner)

    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)


def test_cifar10_unpacks_with_the_tarfile_of_python_3_11_2(tmp_path, isolated_home, tarfile_without_filter):
    archive = tmp_path / cifar10.ARCHIVE
    batches = make_cifar_archive(archive, per_batch=2, seed=2)
    data = cifar10.load_cifar10(progress=False, url=archive.as_uri(), md5=md5_of(archive))
    expected = np.concatenate([batches[b][0] for b in cifar10.TRAIN_BATCHES]).reshape(-1, 3, 32, 32)
    assert torch.equal(data.train, torch.from_numpy(signed(expected)))
    assert data.test_labels.tolist() == batches["test_batch"][1]


@pytest.mark.parametrize("python", ["3.11.4+", "3.11.2"])
def test_unpacked_files_get_no_mode_bits_from_the_archive(tmp_path, request, python):
    if python == "3.11.2":
        request.getfixturevalue("tarfile_without_filter")
    archive = tmp_path / "modes.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("folder/setuid")
        info.size, info.mode = 3, 0o4777
        tar.addfile(info, io.BytesIO(b"abc"))
    out = dl.extract_tar(archive, tmp_path / "out", max_bytes=1000)
    unpacked = out / "folder" / "setuid"
    assert unpacked.read_bytes() == b"abc"
    assert not unpacked.stat().st_mode & (0o4000 | 0o002), oct(unpacked.stat().st_mode)


@pytest.mark.parametrize("python", ["3.11.4+", "3.11.2"])
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_archive_members_are_refused(tmp_path, request, kind, python):
    if python == "3.11.2":
        request.getfixturevalue("tarfile_without_filter")
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        if kind == "symlink":
            info = tarfile.TarInfo("cifar-10-batches-py/link")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info = tarfile.TarInfo("../escaped" if kind == "dotdot" else "/tmp/escaped")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    dest = tmp_path / "dest" / "inner"
    with pytest.raises(DatasetError, match="refused"):
        dl.extract_tar(archive, dest, max_bytes=1000)
    assert not (tmp_path / "dest" / "escaped").exists() and not dest.exists()


def test_archive_too_large_when_unpacked_is_refused(tmp_path):
    archive = tmp_path / "big.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("big")
        info.size = 200_000
        tar.addfile(info, io.BytesIO(bytes(200_000)))
    with pytest.raises(DatasetError, match="unpack to 200,000 bytes"):
        dl.extract_tar(archive, tmp_path / "out", max_bytes=100_000)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- data sets of the shipped sample files

def test_natural_patches_sizes_and_held_out_photos(natural_patches):
    patches = natural_patches
    assert len(patches.train) >= 50_000 and 2_000 <= len(patches.test) <= 10_000
    assert patches.shape == (3, 32, 32) and patches.train.dtype == torch.float32
    train_photos = set(patches.train_labels.unique().tolist())
    test_photos = set(patches.test_labels.unique().tolist())
    assert train_photos.isdisjoint(test_photos) and len(train_photos) == len(natural.TRAIN_PHOTOS)
    assert {patches.class_names[i] for i in test_photos} == set(natural.TEST_PHOTOS)
    assert patches.train.min() >= -1 and patches.train.max() <= 1


def test_natural_patches_are_not_flat_and_every_photo_counts_equally(natural_patches):
    std_in_unit_range = natural_patches.train.flatten(1).std(dim=1, correction=0) / 2
    assert std_in_unit_range.min() >= 0.02 - 1e-4
    counts = natural_patches.train_labels.bincount()
    assert counts.max() <= natural.DEFAULTS["max_per_photo"] and counts.min() >= 0.9 * counts.max()


def test_natural_patch_content_is_a_crop_of_its_reduced_photo(tmp_path):
    """photo_patches against an independent oracle: a 1100x1300 photo is box-reduced by 2 (step 1, shorter side
    near 512) and then by the scale, so a scale-2 patch is the mean of 4x4 pixel blocks of the file."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (1100, 1300, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    assert natural.base_reduction(1100, 1300) == 2 and natural.base_reduction(400, 900) == 1
    out = natural.photo_patches(tmp_path / "photo.png", stride=32, scales=(2,), min_std=0.0, limit=10**6,
                                rng=np.random.default_rng(0))
    side = 1100 // 4 // 32  # patches per column at the 4x4 reduction (the last partial block row is dropped)
    assert len(out) == side * (1300 // 4 // 32)
    r, c = 2, 3  # the patch at lattice row 2, column 3, in (row, col) order
    block = pixels[r * 128:(r + 1) * 128, c * 128:(c + 1) * 128].astype(np.float64)
    oracle = block.reshape(32, 4, 32, 4, 3).mean(axis=(1, 3)).transpose(2, 0, 1)
    got = out[r * (1300 // 4 // 32) + c].astype(np.float64)
    assert np.abs(got - oracle).max() <= 1.0  # PIL rounds each mean to an integer


def test_natural_patches_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(natural.TEST_PHOTOS, "ladybird", (natural.MATE, "/nonexistent/LadyBird.jpg"))
    ok, why = natural.availability()
    assert not ok and "apt-get install mate-backgrounds plasma-workspace-wallpapers" in why
    with pytest.raises(DatasetError, match="apt-get install"):
        natural.load_natural_patches(scales=(4,), stride=64)


def test_natural_patches_deterministic_and_parameterised():
    ok, why = natural.availability()
    if not ok:
        pytest.skip(why)
    a = registry.load_dataset("natural-patches", scales=[4], stride=16)
    registry._load_cached.cache_clear()
    b = registry.load_dataset("natural-patches", scales=(4,), stride=16)
    c = registry.load_dataset("natural-patches", scales=(4,), stride=16, min_std=0.1)
    assert a.fingerprint == b.fingerprint and torch.equal(a.train, b.train)
    assert c.fingerprint != a.fingerprint and len(c.train) < len(a.train)


def test_window_std_matches_numpy():
    image = np.random.default_rng(0).integers(0, 256, (20, 23, 3), dtype=np.uint8)
    std = window_std(image, 5)
    assert std.shape == (16, 19)
    for r, c in [(0, 0), (15, 18), (7, 3)]:
        np.testing.assert_allclose(std[r, c], (image[r:r + 5, c:c + 5] / 255.0).std(), atol=1e-10)


def test_faces():
    data = registry.load_dataset("faces")
    assert data.train.shape == (180, 1, 25, 25) and data.test.shape == (20, 1, 25, 25)
    assert torch.equal(data.train[90 + 4], data.train[4].flip(-1))
    assert torch.equal(data.test[10 + 2], data.test[2].flip(-1))
    raw = faces.read_faces()
    np.testing.assert_allclose(data.test[0, 0].numpy(), raw[90] * 2 - 1, atol=1e-6)
    train_keys = {row.numpy().tobytes() for row in data.train}
    assert not any(row.numpy().tobytes() in train_keys for row in data.test)


def test_textures_regions_and_labels():
    data = registry.load_dataset("textures")
    assert (len(data.train), len(data.test)) == textures.texture_counts(6)
    assert data.shape == (1, 28, 28) and data.class_names == ("brick", "grass", "gravel")
    brick = read_image(bundled_file("brick.png"), "L")
    np.testing.assert_array_equal(data.train[0, 0].numpy(), signed(brick[:28, :28]))
    np.testing.assert_array_equal(data.test[0, 0].numpy(), signed(brick[384:412, :28]))
    n_train, n_test = (n // 3 for n in textures.texture_counts(6))
    assert data.train_labels.tolist() == [0] * n_train + [1] * n_train + [2] * n_train
    assert data.test_labels.bincount().tolist() == [n_test] * 3


# ---------------------------------------------------------------- Gaussian random fields

def lag_correlation(fields: np.ndarray, lag: int) -> float:
    """Mean correlation between pixels ``lag`` apart horizontally (periodic), over all positions and fields."""
    x = fields - fields.mean()
    return float((x * np.roll(x, lag, axis=-1)).mean() / (x * x).mean())


def test_grf_correlation_grows_with_alpha():
    corr = [lag_correlation(registry.load_dataset("grf", alpha=a, n_train=1000, n_test=10).train.numpy(), 3)
            for a in (1.0, 2.0, 3.0)]
    assert corr[0] < corr[1] < corr[2]
    expected = [grf.grf_autocovariance(a)[0, 3] / grf.STD**2 for a in (1.0, 2.0, 3.0)]
    np.testing.assert_allclose(corr, expected, atol=0.05)


def test_grf_covariance_matches_theory():
    data = grf.load_grf(alpha=2.0, n_train=6000, n_test=10, seed=3)
    x = data.train.flatten(1).double().numpy()
    assert data.params["clipped_fraction"] < 0.005
    np.testing.assert_allclose(np.cov(x.T), grf.grf_covariance(2.0), atol=0.01)
    assert abs(x.mean()) < 0.01 and data.train.abs().max() <= 1


def test_grf_field_means_carry_the_dc_power_and_seeded():
    a = grf.load_grf(n_train=50, n_test=5, seed=1)
    b = grf.load_grf(n_train=50, n_test=5, seed=1)
    c = grf.load_grf(n_train=50, n_test=5, seed=2)
    assert a.fingerprint == b.fingerprint and torch.equal(a.test, b.test) and a.fingerprint != c.fingerprint
    unclipped = grf.sample_grf(4000, 2.0, np.random.default_rng(0))
    means = unclipped.mean(axis=(1, 2))
    # f = 0 gets the lowest frequency's power: a field's spatial mean ~ N(0, amp[0, 0]^2 / (H W))
    expected_var = grf.grf_amplitude(2.0)[0, 0] ** 2 / 28**2
    assert means.var() == pytest.approx(expected_var, rel=0.1)
    assert abs(means.mean()) < 4 * np.sqrt(expected_var / 4000)
    assert not torch.equal(a.train[:5], a.test)


def test_grf_rejects_bad_parameters():
    with pytest.raises(DatasetError, match="alpha"):
        grf.load_grf(alpha=-1.0, n_train=10, n_test=10)
    with pytest.raises(DatasetError, match="positive"):
        grf.load_grf(n_train=0)

