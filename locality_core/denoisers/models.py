"""Saving, finding and loading trained UNet weights, safely, and only for the data they were trained on.

The weights format (``unet.pt``, `save_weights` / `load_weights`, nothing else writes or reads it): a dict
{"format": "locality-unet-v1", "unet_config", "state_dict", "fingerprint" (of the training data), "dataset"},
plain tensors and builtins only, so it loads with ``torch.load(weights_only=True)``.

Search order for the weights of data set NAME: ``$LOCALITY_MODEL_DIR/NAME``, the user's model folder
(``<data home>/models/NAME``, where `locality train` writes by default), then the weights shipped in
``locality_core/assets/models/NAME`` (package data: found through `importlib.resources`, so an installed wheel
has them too).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import os
import warnings
import zipfile
from pathlib import Path

import torch

from locality_core import settings
from locality_core.data import Dataset
from locality_core.data.registry import data_home
from locality_core.data.subsets import subset_tag, training_subset
from locality_core.denoisers.unet import EDMDenoiser, UNetConfig
from locality_core.store.files import atomic_write

ASSETS_MODELS = Path(str(importlib.resources.files("locality_core") / "assets" / "models"))
WEIGHTS = "unet.pt"
CARD = "card.json"
WEIGHTS_FORMAT = "locality-unet-v1"


class ModelError(RuntimeError):
    """Weights missing, unreadable or trained on other data; the message says what to do."""


def user_model_dir(name: str) -> Path:
    return data_home() / "models" / name.replace(":", "_")


def model_dirs(name: str) -> list[Path]:
    dirs = []
    if settings.MODEL_DIR.is_set():
        dirs.append(settings.MODEL_DIR.path() / name.replace(":", "_"))
    return dirs + [user_model_dir(name), ASSETS_MODELS / name.replace(":", "_")]


def find_weights(name: str) -> Path | None:
    for d in model_dirs(name):
        if (d / WEIGHTS).is_file():
            return d / WEIGHTS
    return None


def how_to_train(name: str) -> str:
    return (f"No trained UNet for {name!r}. Train one with `locality train {name}` (about 2 hours on 2 CPU "
            f"cores, minutes on a GPU: add --device cuda); it is saved to {user_model_dir(name)}.")


def _short(fingerprint: str, other: str) -> str:
    """The first 12 characters of ``fingerprint``, or all of it when that prefix does not tell it from ``other``
    (a subset's fingerprint is its data set's plus a suffix)."""
    return fingerprint if fingerprint[:12] == other[:12] else fingerprint[:12]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@functools.lru_cache(maxsize=64)
def _short_sha256(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(Path(path))[:16]


def weights_id(path: Path) -> str:
    """The first 16 hex digits of a weights file's sha256, hashed once per file version (path, mtime, size):
    what cache keys name a network by, so that retrained weights never reuse its cached results."""
    info = Path(path).stat()
    return _short_sha256(str(path), info.st_mtime_ns, info.st_size)


def config_sha256(config: dict) -> str:
    """sha256 of a configuration as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def card_hashes(directory: Path) -> dict:
    """What a card records to pin its weights: {"unet.pt": sha256 of the file, "unet_config": of its config}."""
    blob = torch.load(Path(directory) / WEIGHTS, map_location="cpu", weights_only=True)
    return {WEIGHTS: file_sha256(Path(directory) / WEIGHTS), "unet_config": config_sha256(blob["unet_config"])}


def write_card(directory: str | Path, card: dict) -> dict:
    """Write ``card`` as ``<directory>/card.json`` with its ``sha256`` field pinned to the weights there; returns
    that field."""
    directory = Path(directory)
    card["sha256"] = card_hashes(directory)
    atomic_write(directory / CARD, lambda f: f.write((json.dumps(card, indent=2) + "\n").encode()))
    return card["sha256"]


def write_card_hash(directory: str | Path) -> dict:
    """Add (or refresh) the ``sha256`` field of ``<directory>/card.json`` from the weights there; returns it.

    For cards written before cards carried hashes (user-trained models, networks trained by older code)."""
    card_path = Path(directory) / CARD
    return write_card(directory, json.loads(card_path.read_text()) if card_path.is_file() else {})


def read_card(card_path: Path) -> dict:
    """The model card at ``card_path`` as a dict; ModelError when it is there but is not a readable JSON object
    (a folder, a dangling link, no permission, damaged bytes): a damaged card is refused, never skipped."""
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ModelError(f"the model card {card_path} cannot be read ({exc.__class__.__name__}: {exc}); restore it, "
                         "or retrain.") from exc
    if not isinstance(card, dict):
        raise ModelError(f"the model card {card_path} is damaged: it holds a JSON {type(card).__name__}, not an "
                         "object; restore it, or retrain.")
    return card


def verify_card(path: Path, config: dict) -> None:
    """Check ``path`` (unet.pt) and its ``config`` against the hashes of the card beside it.

    No card at all is accepted (weights saved by hand for an experiment). A card without a ``sha256`` field, from
    before cards carried one, is accepted with a warning when it names its data set (every card ever written
    does); any other card that is not a JSON object with both hashes is refused as damaged."""
    card_path = path.parent / CARD
    if not card_path.exists() and not card_path.is_symlink():
        return
    card = read_card(card_path)
    hashes = card.get("sha256")
    if hashes is None and "sha256" not in card and isinstance(card.get("dataset"), str):
        warnings.warn(f"{card_path} records no sha256 of its weights (a card older than the check): {path} is "
                      "loaded unchecked. Add the hashes with `python -c \"from locality_core.denoisers.models import "
                      f"write_card_hash; write_card_hash('{path.parent}')\"`.", stacklevel=3)
        return
    if not isinstance(hashes, dict) or not all(isinstance(hashes.get(k), str) for k in (WEIGHTS, "unet_config")):
        raise ModelError(f"the model card {card_path} is damaged: it does not hold the sha256 of {WEIGHTS} and of "
                         "its configuration; restore it, or retrain.")
    if hashes[WEIGHTS] != file_sha256(path):
        raise ModelError(f"{path} does not match the sha256 in its model card: the file was damaged or replaced; "
                         "restore it or retrain.")
    if hashes["unet_config"] != config_sha256(config):
        raise ModelError(f"the configuration in {path} does not match the sha256 in its model card; restore the "
                         "file or retrain.")


def check_state_dict(config: UNetConfig, state: dict, path: Path) -> None:
    """Keys, shapes and finiteness of ``state`` against ``config``'s architecture, built on the meta device
    (no memory allocated, whatever the configuration claims)."""
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds no state dict; delete it and retrain.")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in EDMDenoiser(config).state_dict().items()}
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelError(f"{path} does not fit its architecture ({len(missing)} missing keys, e.g. {missing[:2]}, "
                         f"{len(extra)} unexpected, e.g. {extra[:2]}); delete it and retrain.")
    wrong = [k for k, shape in expected.items() if tuple(state[k].shape) != shape]
    if wrong:
        raise ModelError(f"{path} has tensors of the wrong shape for its architecture (e.g. {wrong[0]}: "
                         f"{tuple(state[wrong[0]].shape)} instead of {expected[wrong[0]]}); delete it and retrain.")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelError(f"{path} has non-finite values (NaN or infinity) in {len(bad)} tensors, e.g. {bad[0]}; "
                         "delete it and retrain.")


def save_weights(path: str | Path, config: UNetConfig, state_dict: dict, *, fingerprint: str, dataset: str) -> Path:
    """Write ``path`` (unet.pt) in the weights format (module docstring), atomically; returns the path.

    ``fingerprint`` and ``dataset``: the training data's fingerprint and name (`load_weights` checks the first)."""
    path = Path(path)
    blob = {"format": WEIGHTS_FORMAT, "unet_config": config.to_dict(), "state_dict": state_dict,
            "fingerprint": fingerprint, "dataset": dataset}
    atomic_write(path, lambda f: torch.save(blob, f))
    return path


def check_weights_file(path: Path) -> None:
    """ModelError, in one sentence, unless ``path`` is (or links to) a regular file in PyTorch's zip format: a
    link to a text file or to nothing would otherwise fail inside torch.load ("list index out of range")."""
    target = f" (a link to {os.path.realpath(path)})" if Path(path).is_symlink() else ""
    if not Path(path).is_file():
        raise ModelError(f"{path}{target} is not a file; restore the weights or retrain.")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path}{target} is not a weights file saved by `locality train` (PyTorch's zip format): "
                         "restore the weights or retrain.")


def load_weights(path: Path, dataset: Dataset | None = None) -> EDMDenoiser:
    """Load ``unet.pt`` with ``weights_only=True`` after checking it: the card's sha256 of the file and its
    configuration, the state dict's keys, shapes and finiteness, and the data's fingerprint."""
    check_weights_file(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        config = UNetConfig.from_dict(blob["unet_config"])
    except Exception as exc:  # any unreadable or foreign file: explain, never unpickle arbitrary code
        raise ModelError(f"{path} is not a readable Locality Explorer UNet ({exc}); delete it and retrain.") from exc
    verify_card(path, blob["unet_config"])
    if dataset is not None and blob.get("fingerprint") != dataset.fingerprint:
        theirs, ours = str(blob.get("fingerprint")), dataset.fingerprint
        raise ModelError(f"{path} was trained on data with fingerprint {_short(theirs, ours)}, but "
                         f"{dataset.name!r} here has {_short(ours, theirs)}: the data differ. "
                         f"Retrain with `locality train {dataset.name}`.")
    check_state_dict(config, blob.get("state_dict"), path)
    model = EDMDenoiser(config)
    model.load_state_dict(blob["state_dict"])
    return model.eval().requires_grad_(False)


def load_unet(dataset: Dataset) -> EDMDenoiser:
    path = find_weights(dataset.name)
    if path is None:
        raise ModelError(how_to_train(dataset.name))
    return load_weights(path, dataset)


# ---------------------------------------------------------------- networks trained on disjoint subsets

SUBSETS = "subsets"
TRAIN_SUBSETS = "scripts/train_subsets.sh"


def subset_dirs(name: str) -> list[Path]:
    """Folders holding a data set's subset networks, ``<model dir>/subsets/nN-S/``, in `model_dirs` order."""
    return [d / SUBSETS for d in model_dirs(name)]


def find_subset_weights(name: str, n: int, split: str) -> Path | None:
    for d in subset_dirs(name):
        if (d / subset_tag(n, split) / WEIGHTS).is_file():
            return d / subset_tag(n, split) / WEIGHTS
    return None


def subset_family(name: str) -> list[int]:
    """Subset sizes N (ascending) for which both the A and the B network of ``name`` are found."""
    sizes = set()
    for d in subset_dirs(name):
        for weights in d.glob(f"n*-A/{WEIGHTS}"):
            n = weights.parent.name[1:-2]
            if n.isdigit() and find_subset_weights(name, int(n), "B") is not None:
                sizes.add(int(n))
    return sorted(sizes)


def how_to_train_subsets(name: str, n: int | None = None, split: str | None = None) -> str:
    which = "networks nN-A and nN-B" if n is None else f"network n{n}-{split}"
    where = user_model_dir(name) / SUBSETS
    return (f"No {which} trained on subsets of {name!r} here. Train them with `locality train {name} --subset N "
            f"--split A|B --base 16` (saved to {where}/nN-S), or the whole family of fashion-mnist with `bash "
            f"{TRAIN_SUBSETS}`, then copy its runs/subsets/nN-S folders there.")


def load_subset_unet(dataset: Dataset, n: int, split: str) -> EDMDenoiser:
    """The network trained on subset ``split`` of ``n`` images of ``dataset`` (the full data set); weights
    trained on any other subset are refused (the subset's fingerprint names N, split and the indices' hash)."""
    path = find_subset_weights(dataset.name, n, split)
    if path is None:
        raise ModelError(how_to_train_subsets(dataset.name, n, split))
    return load_weights(path, training_subset(dataset, n, split))
