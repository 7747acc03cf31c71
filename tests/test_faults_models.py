"""Faults of trained weights: damaged, tampered, non-finite, foreign or inflated files; training that would
silently replace a good model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fault_helpers import import_tiny

from locality_core.denoisers.models import (
    ASSETS_MODELS,
    CARD,
    ModelError,
    file_sha256,
    load_weights,
    save_weights,
    write_card_hash,
)
from locality_core.denoisers.unet import EDMDenoiser, UNetConfig

ROOT = Path(__file__).resolve().parent.parent
TINY = UNetConfig(channels=1, image_size=8, base=8, mults=(1, 2), blocks=1, emb_dim=16, sigma_data=0.5)


def save_model(folder: Path, config: UNetConfig = TINY, state: dict | None = None, card: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    state = EDMDenoiser(config).state_dict() if state is None else state
    save_weights(folder / "unet.pt", config, state, fingerprint="f" * 64, dataset="tiny")
    if card:
        (folder / CARD).write_text(json.dumps({"dataset": "tiny", "unet_config": config.to_dict()}))
        write_card_hash(folder)
    return folder / "unet.pt"


def test_intact_model_with_hash_loads(tmp_path):
    path = save_model(tmp_path)
    assert "sha256" in json.loads((tmp_path / CARD).read_text())
    assert isinstance(load_weights(path), EDMDenoiser)


def test_card_without_hash_still_loads_with_a_warning(tmp_path):
    """Cards of user-trained models written before cards carried hashes keep working, and say they are unchecked."""
    path = save_model(tmp_path, card=False)
    (tmp_path / CARD).write_text(json.dumps({"dataset": "tiny"}))
    with pytest.warns(UserWarning, match="no sha256"):
        assert isinstance(load_weights(path), EDMDenoiser)


def test_flipped_byte_in_tensor_data_is_refused(tmp_path):
    path = save_model(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # lands in tensor data: torch.load alone would accept it
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_weights(path)


def test_nan_tensors_are_refused_even_with_a_matching_hash(tmp_path):
    state = EDMDenoiser(TINY).state_dict()
    state[next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)][0] = float("nan")
    with pytest.raises(ModelError, match="non-finite"):
        load_weights(save_model(tmp_path, state=state))


def test_wrong_architecture_is_refused(tmp_path):
    other = UNetConfig(channels=1, image_size=8, base=16, mults=(1, 2), blocks=1, emb_dim=16, sigma_data=0.5)
    state = EDMDenoiser(other).state_dict()
    with pytest.raises(ModelError, match="wrong shape"):
        load_weights(save_model(tmp_path, state=state))


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_missing_or_extra_keys_are_refused(tmp_path, change):
    state = EDMDenoiser(TINY).state_dict()
    if change == "missing":
        state.pop(next(iter(state)))
    else:
        state["net.intruder"] = torch.zeros(3)
    with pytest.raises(ModelError, match="does not fit its architecture"):
        load_weights(save_model(tmp_path, state=state))


def test_inflated_configuration_is_refused_before_allocating(tmp_path):
    huge = UNetConfig(channels=1, image_size=8, base=8192, mults=(1, 2), blocks=1, emb_dim=16, sigma_data=0.5)
    path = save_model(tmp_path, state=EDMDenoiser(TINY).state_dict(), card=False)
    blob = torch.load(path, weights_only=True)
    blob["unet_config"] = huge.to_dict()  # about 16 GiB of parameters if it were built
    torch.save(blob, path)
    start = time.time()
    with pytest.raises(ModelError, match="wrong shape"):
        load_weights(path)
    assert time.time() - start < 10


def test_card_config_hash_catches_an_edited_configuration(tmp_path):
    path = save_model(tmp_path)
    blob = torch.load(path, weights_only=True)
    blob["unet_config"]["sigma_data"] = 0.9  # same shapes, different model
    torch.save(blob, path)
    card = json.loads((tmp_path / CARD).read_text())
    card["sha256"]["unet.pt"] = file_sha256(path)  # the file hash updated, the configuration hash not
    (tmp_path / CARD).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="configuration"):
        load_weights(path)


@pytest.mark.parametrize("name", sorted(p.name for p in ASSETS_MODELS.iterdir() if (p / "unet.pt").is_file()))
def test_shipped_cards_pin_their_weights(name):
    card = json.loads((ASSETS_MODELS / name / CARD).read_text())
    assert set(card["sha256"]) == {"unet.pt", "unet_config"}
    load_weights(ASSETS_MODELS / name / "unet.pt")


def _train(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOCALITY_DATA_DIR": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "locality_core", "train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("steps", ["0", "-1"])
def test_train_refuses_non_positive_steps_and_writes_nothing(tmp_path, monkeypatch, steps):
    monkeypatch.setenv("LOCALITY_DATA_DIR", str(tmp_path))
    import_tiny(tmp_path)
    done = _train("user:tiny", "--steps", steps, "--no-eval", home=tmp_path)
    assert done.returncode == 2 and "steps" in done.stderr and "Traceback" not in done.stderr
    assert not list((tmp_path / "models").rglob("unet.pt"))


@pytest.mark.slow  # 11-20 s on the shared 2-core machine
def test_train_never_replaces_a_model_unless_forced(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALITY_DATA_DIR", str(tmp_path))
    import_tiny(tmp_path)
    out = tmp_path / "out"
    save_model(out)
    before = (out / "unet.pt").read_bytes()
    done = _train("user:tiny", "--steps", "1", "--no-eval", "--out", str(out), "--batch", "4", home=tmp_path)
    assert done.returncode == 2 and "--force" in done.stderr
    assert (out / "unet.pt").read_bytes() == before
    forced = _train("user:tiny", "--steps", "1", "--no-eval", "--out", str(out), "--batch", "4", "--force",
                    home=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert (out / "unet.pt").read_bytes() != before and not list(out.glob(".*tmp"))
    load_weights(out / "unet.pt")  # the fresh card pins the fresh weights


@pytest.mark.parametrize("content", [b"{}", b'{"sha256": null}', b'{"sha256": {"unet.pt": 5}}', b'{"sha256": "abc"}',
                                     b"null", b"[]", b'"abc"', b"garbage", b"\xff\xfe", b""],
                         ids=["empty-object", "sha256-null", "sha256-number", "sha256-string", "null", "list",
                              "string", "garbage", "not-utf8", "empty-file"])
def test_a_damaged_card_is_refused_not_skipped(tmp_path, content):
    path = save_model(tmp_path)
    (tmp_path / CARD).write_bytes(content)
    with pytest.raises(ModelError, match="card"):
        load_weights(path)


@pytest.mark.parametrize("kind", ["folder", "dangling-link"])
def test_an_unreadable_card_is_refused_not_skipped(tmp_path, kind):
    path = save_model(tmp_path)
    (tmp_path / CARD).unlink()
    if kind == "folder":
        (tmp_path / CARD).mkdir()
    else:
        (tmp_path / CARD).symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(ModelError, match="cannot be read"):
        load_weights(path)


@pytest.mark.parametrize("target", ["text", "nothing", "folder"])
def test_a_weights_link_to_something_else_is_refused_in_a_sentence(tmp_path, target):
    folder = tmp_path / "m"
    folder.mkdir()
    other = tmp_path / "other"
    if target == "text":
        other.write_text("these are not weights\n" * 3)
    elif target == "folder":
        other.mkdir()
    (folder / "unet.pt").symlink_to(other)
    with pytest.raises(ModelError, match="not a weights file|not a file") as info:
        load_weights(folder / "unet.pt")
    assert "list index" not in str(info.value) and str(other) in str(info.value)
