"""Importing the user's images: folders and zips, limits, bad files, the registry's user:<name> entries."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from locality_core.data import registry, user
from locality_core.data.base import DatasetError


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("LOCALITY_DATA_DIR", str(home))
    registry._load_cached.cache_clear()
    yield home
    registry._load_cached.cache_clear()


def random_images(n: int, size: tuple[int, int] = (8, 6), mode: str = "L", seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = size if mode == "L" else (*size, 3)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def write_pngs(folder: Path, images: list[np.ndarray], prefix: str = "img") -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, arr in enumerate(images):
        name = f"{prefix}_{i:03d}.png"
        Image.fromarray(arr).save(folder / name)
        written[name] = arr
    return written


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_folder_import_round_trip_and_registry(tmp_path, isolated_home):
    src = tmp_path / "mine"
    written = write_pngs(src / "nested", random_images(12))
    (src / ".DS_Store").write_bytes(b"\x00junk")
    before = snapshot(src)
    report = user.import_images(src, "my-set")
    assert snapshot(src) == before
    assert (report.n_train, report.n_test, report.shape) == (11, 1, (1, 8, 6)) and report.skipped == []
    assert report.path == isolated_home / "user" / "my-set.npz"
    assert "user:my-set" in [s.name for s in registry.list_datasets()]
    data = registry.load_dataset("user:my-set")
    with np.load(report.path, allow_pickle=False) as npz:
        train_files, test_files = list(npz["train_files"]), list(npz["test_files"])
    assert sorted(train_files + test_files) == sorted(f"nested/{n}" for n in written)
    expected = np.stack([written[f.split("/")[1]] for f in train_files]).astype(np.float32) / 255 * 2 - 1
    assert torch.equal(data.train[:, 0], torch.from_numpy(expected))
    meta = json.loads(report.path.with_suffix(".json").read_text())
    assert meta["n_train"] == 11 and meta["mode"] == "L" and meta["source"] == str(src.resolve())


def test_split_is_deterministic_by_name():
    names = [f"f{i}.png" for i in range(50)]
    train, test = user.split_by_name(names)
    assert len(test) == 5 and set(train).isdisjoint(test) and sorted(train + test) == sorted(names)
    assert user.split_by_name(list(reversed(names))) == (train, test)
    assert user.split_by_name(names[:10])[1] != user.split_by_name(names[10:20])[1]


def test_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="0 readable images; at least 10"):
        user.import_images(tmp_path / "empty", "e")


def test_non_images_are_listed_and_refused(tmp_path):
    src = tmp_path / "fake"
    src.mkdir()
    for i in range(12):
        (src / f"note_{i}.png").write_text("not an image at all")
    with pytest.raises(DatasetError) as err:
        user.import_images(src, "fake")
    assert "0 readable images" in str(err.value) and "note_0.png" in str(err.value)


def test_mixed_sizes_need_a_size_then_work_with_skips(tmp_path):
    src = tmp_path / "mixed"
    write_pngs(src, random_images(8, (8, 6)), "small")
    write_pngs(src, random_images(4, (10, 10), seed=1), "square")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError) as err:
        user.import_images(src, "mixed")
    assert "images have 2 different sizes" in str(err.value) and "choose a size" in str(err.value)
    assert "8x6 (8 images" in str(err.value)
    report = user.import_images(src, "mixed", size=(5, 5), mode="RGB")
    assert report.shape == (3, 5, 5) and report.n_train + report.n_test == 12
    assert [f for f, _ in report.skipped] == ["broken.png"]
    assert registry.load_dataset("user:mixed").train.shape[1:] == (3, 5, 5)


def test_rgb_and_transparency(tmp_path):
    src = tmp_path / "rgba"
    src.mkdir()
    for i in range(10):
        rgba = np.full((4, 4, 4), 200, dtype=np.uint8)
        rgba[..., 3] = 0
        rgba[0, 0] = [10, 20, 30, 255]
        Image.fromarray(rgba, "RGBA").save(src / f"{i}.png")
    user.import_images(src, "rgba", mode="RGB")
    data = registry.load_dataset("user:rgba")
    pixels = ((data.train + 1) / 2 * 255).round()
    assert pixels[0, :, 0, 0].tolist() == [10, 20, 30] and pixels[:, :, 1:, 1:].max() == 0


def test_zip_import_reads_in_memory(tmp_path, isolated_home):
    images = random_images(10, (7, 7), seed=2)
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, arr in enumerate(images):
            zf.writestr(f"folder/sub/{i}.png", png_bytes(arr))
        zf.writestr("__MACOSX/folder/._0.png", b"resource fork")
        zf.writestr("folder/readme.txt", "hello")
    report = user.import_images(archive, "zipped")
    assert report.n_train + report.n_test == 10 and report.skipped[0][0] == "folder/readme.txt"
    assert sorted(p.name for p in (isolated_home / "user").iterdir()) == ["zipped.json", "zipped.npz"]
    assert not (tmp_path / "folder").exists()


def test_zip_with_dotdot_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(10):
            zf.writestr(f"{i}.png", png_bytes(random_images(1)[0]))
        zf.writestr("../../escape.png", png_bytes(random_images(1)[0]))
    with pytest.raises(DatasetError, match="unsafe path"):
        user.import_images(archive, "evil")


def test_zip_bomb_is_refused_before_decompressing(tmp_path, monkeypatch):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.png", bytes(20_000_000))
    assert archive.stat().st_size < 100_000
    read_calls = []
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a, **k: read_calls.append(a) or b"")
    with pytest.raises(DatasetError, match="20,000,000 bytes"):
        user.import_images(archive, "bomb", max_total_bytes=10_000_000)
    assert read_calls == []


def test_too_many_files_are_refused(tmp_path):
    write_pngs(tmp_path / "many", random_images(12, (2, 2)))
    with pytest.raises(DatasetError, match="max_images=11"):
        user.import_images(tmp_path / "many", "many", max_images=11)


def test_pixel_bomb_is_skipped(tmp_path, monkeypatch):
    src = tmp_path / "bombs"
    write_pngs(src, random_images(10, (8, 8)))
    Image.new("L", (64, 64)).save(src / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    report = user.import_images(src, "bombs", size=(8, 8))
    assert report.skipped[0][0] == "huge.png" and "decompression-bomb" in report.skipped[0][1]


def test_large_images_need_a_size(tmp_path):
    write_pngs(tmp_path / "big", random_images(10, (300, 20)))
    with pytest.raises(DatasetError, match="larger than 256 on a side; choose a size"):
        user.import_images(tmp_path / "big", "big")
    assert user.import_images(tmp_path / "big", "big", size=(30, 2)).shape == (1, 30, 2)


@pytest.mark.parametrize("name", ["", "../evil", "a b", "x/y", "é", "a" * 65, "user:x"])
def test_bad_names_are_refused(tmp_path, name):
    write_pngs(tmp_path / "ok", random_images(10))
    with pytest.raises(DatasetError, match="invalid data set name"):
        user.import_images(tmp_path / "ok", name)


def test_bad_arguments_are_refused(tmp_path):
    write_pngs(tmp_path / "ok", random_images(10))
    with pytest.raises(DatasetError, match="mode"):
        user.import_images(tmp_path / "ok", "x", mode="CMYK")
    with pytest.raises(DatasetError, match="size"):
        user.import_images(tmp_path / "ok", "x", size=(0, 5))
    with pytest.raises(DatasetError, match="neither a folder nor a .zip"):
        user.import_images(tmp_path / "nothing-here", "x")


def test_corrupt_npz_gives_dataset_error(isolated_home):
    folder = isolated_home / "user"
    folder.mkdir(parents=True)
    (folder / "broken.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    assert "user:broken" in [s.name for s in registry.list_datasets()]
    with pytest.raises(DatasetError, match="corrupt"):
        registry.load_dataset("user:broken")
    np.savez(folder / "objects.npz", train=np.array([{"a": 1}], dtype=object), test=np.zeros((1, 1, 2, 2), np.uint8))
    with pytest.raises(DatasetError, match="corrupt"):
        registry.load_dataset("user:objects")
    np.savez(folder / "floats.npz", train=np.zeros((2, 1, 2, 2)), test=np.zeros((1, 1, 2, 2)))
    with pytest.raises(DatasetError, match="uint8"):
        registry.load_dataset("user:floats")


def test_reimport_and_delete(tmp_path):
    write_pngs(tmp_path / "a", random_images(10, (4, 4), seed=0))
    write_pngs(tmp_path / "b", random_images(20, (4, 4), seed=1))
    user.import_images(tmp_path / "a", "same")
    assert len(registry.load_dataset("user:same").train) == 9
    user.import_images(tmp_path / "b", "same")
    assert len(registry.load_dataset("user:same").train) == 18
    user.delete_user_dataset("same")
    assert "user:same" not in [s.name for s in registry.list_datasets()]
    with pytest.raises(DatasetError, match="no imported data set user:same"):
        registry.load_dataset("user:same")
    with pytest.raises(DatasetError, match="no imported data set"):
        user.delete_user_dataset("same")
    assert len(list((tmp_path / "a").iterdir())) == 10
