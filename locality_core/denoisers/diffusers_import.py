"""Importing a network of one's own: a diffusers `UNet2DModel` folder, checked, as a denoiser of one data set.

Glossary
    network folder  ``config.json`` + ``diffusion_pytorch_model.safetensors`` + ``scheduler_config.json``
                    (beside them, or in ``../scheduler/`` as in a saved pipeline); a folder or a .zip of one
    import          every check below, then a copy of the three files and the record ``network.json`` in
                    ``<data home>/networks/NAME`` (`network_dir`); the network is then the denoiser NAME, for its
                    data set only
    network.json    the import record: data set and its fingerprint, the network's pixel range, prediction type,
                    parameter count, and the sha256 of the three files (checked at every load; cache ids name
                    the network by them, `network_id`)
    shipped         a network folder with its record under ``<model dir of the data set>/diffusers-unet``
                    (`models.model_dirs`): Fashion-MNIST's ships in ``assets/models/fashion-mnist/diffusers-unet``

The checks, in order, each refusal one sentence saying what to do. Files: safetensors only (a pickle ``.bin``
runs code when it is loaded), small JSON files. ``config.json``, before anything is built: a UNet2DModel,
unconditional (no class embedding, no cross-attention), a positional time embedding, as many channels in and out
as the data set has, ``sample_size`` its height and width. Then the architecture is built on the meta device (no
memory): its parameter count must be under `MAX_PARAMETERS` and fit the memory budget, and only then is the
weights file read, at most 8 bytes per parameter. ``scheduler_config.json``: a DDPM beta schedule (linear,
scaled_linear, squaredcos_cap_v2 or explicit trained_betas) and a prediction type (epsilon, sample,
v_prediction). The safetensors header: exactly the architecture's tensors and shapes, float dtypes; the values
finite.

diffusers is an optional extra (``pip install 'locality-explorer[diffusers]'``): it is imported only when a
network is checked or loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from locality_core.data import Dataset, DatasetError
from locality_core.data.download import data_home
from locality_core.data.user import Entry, folder_entries, read_counted, zip_entries
from locality_core.denoisers.diffusers_unet import PREDICTION_TYPES, DiffusersDenoiser
from locality_core.denoisers.models import ModelError, config_sha256, file_sha256, model_dirs
from locality_core.store.locks import owned_lock
from locality_core.store.memory import budget_bytes, gib

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
SCHEDULER = "scheduler_config.json"
RECORD = "network.json"
RECORD_FORMAT = "locality-diffusers-v1"
SHIPPED = "diffusers-unet"                    # the folder name of a shipped network beside a data set's unet.pt
FILES = (CONFIG, SCHEDULER, WEIGHTS)
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_JSON_BYTES = 2**20
MAX_PARAMETERS = 200_000_000
LOAD_BYTES_PER_PARAMETER = 12                # the file's bytes, the tensors read from them, the network
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PIXEL_RANGES = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0)}
TIMESTEP_RULE = "interpolated linearly in log-SNR between the network's integer steps (clamped to 0 .. T-1)"
INSTALL = "pip install 'locality-explorer[diffusers]' (or pip install diffusers==0.42.1)"


class NetworkError(ModelError):
    """A network folder cannot be imported or loaded; the message says why and what to do."""


def require_diffusers():
    """The diffusers module, or NetworkError saying how to install it."""
    try:
        import diffusers  # optional extra: only imported networks need it, the core install does not
    except ImportError as exc:
        raise NetworkError(f"importing a diffusers network needs the optional package diffusers: {INSTALL}.") from exc
    return diffusers


# ---------------------------------------------------------------- the checks of config.json

def _sample_size(config: dict) -> tuple[int, int] | None:
    size = config.get("sample_size")
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return int(size[0]), int(size[1])
    return None


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_conditioning(config: dict) -> None:
    """NetworkError for anything but an unconditional UNet2DModel with a positional time embedding."""
    cls = config.get("_class_name")
    blocks = [str(b) for key in ("down_block_types", "up_block_types") for b in _as_list(config.get(key))]
    blocks.append(str(config.get("mid_block_type")))
    if cls == "UNet2DConditionModel" or any("CrossAttn" in b for b in blocks) or \
            config.get("cross_attention_dim") is not None or config.get("encoder_hid_dim") is not None:
        raise NetworkError("this network is text-conditional (cross-attention on a prompt): its output depends on "
                           "the prompt, not on (x, sigma) alone, and Locality Explorer analyses unconditional "
                           "denoisers D(x, sigma); import an unconditional UNet2DModel.")
    if cls != "UNet2DModel":
        raise NetworkError(f"config.json describes a {cls or 'model of no _class_name'}, not a diffusers "
                           "UNet2DModel; import the folder that model.save_pretrained(...) of a UNet2DModel wrote.")
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise NetworkError("this network is class-conditional (class_embed_type / num_class_embeds): its output "
                           "depends on a class label, not on (x, sigma) alone, and Locality Explorer analyses "
                           "unconditional denoisers D(x, sigma); import an unconditional UNet2DModel.")
    embedding = config.get("time_embedding_type", "positional")
    if embedding != "positional":
        raise NetworkError(f"this network's time embedding is {embedding!r}; only 'positional' (DDPM timesteps) is "
                           "supported: a 'fourier' one takes sigma itself (a score-SDE network), a 'learned' one "
                           "only integer steps.")


def check_shape(config: dict, dataset: Dataset) -> None:
    """Channels in and out, and sample_size, against the data set's (C, H, W)."""
    c, h, w = dataset.shape
    c_in, c_out = config.get("in_channels", 3), config.get("out_channels", 3)
    if c_in != c_out:
        raise NetworkError(f"this network takes {c_in} channels and returns {c_out} (a learned variance?); a "
                           "denoiser returns an image like its input: import a network with in_channels = "
                           "out_channels.")
    if c_in != c:
        raise NetworkError(f"this network takes {c_in}-channel images but {dataset.name} has {c} "
                           f"({'grayscale' if c == 1 else 'RGB'}); import it for a data set with {c_in} channels.")
    size = _sample_size(config)
    if size != (h, w):
        raise NetworkError(f"this network was built for {config.get('sample_size')!r} pixels (sample_size) but "
                           f"{dataset.name} has {h}x{w} images; import it for a data set of its resolution.")


def meta_parameters(config: dict) -> tuple[int, dict[str, tuple[int, ...]]]:
    """The architecture's parameter count and its state dict's shapes, built on the meta device (no memory)."""
    diffusers = require_diffusers()
    try:
        with torch.device("meta"):
            net = diffusers.UNet2DModel.from_config(config)
    except Exception as exc:  # any malformed configuration: diffusers raises what its constructor raises
        raise NetworkError(f"config.json does not describe a buildable UNet2DModel ({type(exc).__name__}: "
                           f"{exc}).") from exc
    return sum(p.numel() for p in net.parameters()), {k: tuple(v.shape) for k, v in net.state_dict().items()}


def check_size(parameters: int) -> None:
    need = parameters * LOAD_BYTES_PER_PARAMETER
    if parameters > MAX_PARAMETERS or need > budget_bytes():
        raise NetworkError(f"this network has {parameters:,} parameters: loading it needs about {gib(need)}, more "
                           f"than the limit of {MAX_PARAMETERS:,} parameters or the memory budget of "
                           f"{gib(budget_bytes())} (LOCALITY_MEMORY_BUDGET_GB); import a smaller network.")


# ---------------------------------------------------------------- the checks of scheduler_config.json

def scheduler_settings(scheduler: dict) -> dict:
    """The beta schedule and prediction type of ``scheduler_config.json``, checked (diffusers' defaults for
    missing keys)."""
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise NetworkError(f"scheduler_config.json says prediction_type {prediction!r}; supported: "
                           f"{', '.join(PREDICTION_TYPES)}.")
    betas = {k: scheduler.get(k, default) for k, default in (("num_train_timesteps", 1000), ("beta_start", 1e-4),
                                                              ("beta_end", 0.02), ("beta_schedule", "linear"),
                                                              ("trained_betas", None))}
    if betas["trained_betas"] is None and betas["beta_schedule"] not in BETA_SCHEDULES:
        raise NetworkError(f"scheduler_config.json has beta_schedule {betas['beta_schedule']!r}; supported: "
                           f"{', '.join(BETA_SCHEDULES)}, or explicit trained_betas.")
    if scheduler.get("rescale_betas_zero_snr"):
        raise NetworkError("scheduler_config.json rescales the betas to zero terminal SNR: its last step has no "
                           "finite sigma; not supported.")
    if not isinstance(betas["num_train_timesteps"], int) or not 2 <= betas["num_train_timesteps"] <= 100_000:
        raise NetworkError("scheduler_config.json needs num_train_timesteps, an integer from 2 to 100,000.")
    return {**betas, "prediction_type": prediction}


def alphas_cumprod(settings: dict) -> np.ndarray:
    """alpha_bar_t (T,) exactly as diffusers' DDPMScheduler computes it (the network's training arithmetic)."""
    diffusers = require_diffusers()
    kwargs = {k: v for k, v in settings.items() if k != "prediction_type"}
    try:
        a = diffusers.DDPMScheduler(**kwargs).alphas_cumprod.double().numpy()
    except Exception as exc:  # a malformed schedule (e.g. trained_betas of the wrong length)
        raise NetworkError(f"scheduler_config.json does not give a valid DDPM schedule ({exc}).") from exc
    if not (np.all(np.isfinite(a)) and np.all(a > 0) and np.all(a < 1) and np.all(np.diff(a) < 0)):
        raise NetworkError("scheduler_config.json gives a schedule whose alpha_bar is not strictly decreasing "
                           "inside (0, 1); check its betas.")
    return a


# ---------------------------------------------------------------- the weights file

FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


def safetensors_header(data: bytes) -> dict:
    """The JSON header of a safetensors file (tensor name -> {"dtype", "shape", "data_offsets"}), read without
    loading any tensor."""
    if len(data) < 8 or (n := int.from_bytes(data[:8], "little")) > len(data) - 8:
        raise NetworkError(f"{WEIGHTS} is not a safetensors file (its header is cut short); save the network again "
                           "with save_pretrained(..., safe_serialization=True).")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as exc:
        raise NetworkError(f"{WEIGHTS} has an unreadable header ({exc}); save the network again.") from exc
    if not isinstance(header, dict):
        raise NetworkError(f"{WEIGHTS} has an unreadable header; save the network again.")
    header.pop("__metadata__", None)
    return header


def check_header(header: dict, expected: dict[str, tuple[int, ...]]) -> None:
    """Exactly the architecture's tensors, with its shapes, in float dtypes."""
    missing, extra = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or extra:
        raise NetworkError(f"{WEIGHTS} does not fit config.json ({len(missing)} tensors missing, e.g. {missing[:2]}, "
                           f"{len(extra)} unexpected, e.g. {extra[:2]}); export the two from the same network.")
    for name, shape in expected.items():
        entry = header[name]
        if not isinstance(entry, dict) or entry.get("dtype") not in FLOAT_DTYPES or \
                tuple(entry.get("shape", ())) != shape:
            raise NetworkError(f"{WEIGHTS}: tensor {name} is {entry.get('dtype')} {entry.get('shape')}, but "
                               f"config.json's architecture needs a float {list(shape)}; export the two from the "
                               "same network.")


def build_network(config: dict, weights: bytes, expected: dict[str, tuple[int, ...]]) -> torch.nn.Module:
    """The UNet2DModel of ``config`` with the safetensors ``weights`` (checked), float32, in eval mode, frozen."""
    diffusers = require_diffusers()
    import safetensors.torch  # installed with diffusers (the optional extra)

    check_header(safetensors_header(weights), expected)
    try:
        state = safetensors.torch.load(weights)
    except Exception as exc:  # a damaged file: safetensors raises its own error types
        raise NetworkError(f"{WEIGHTS} cannot be read ({exc}); save the network again.") from exc
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:
        raise NetworkError(f"{WEIGHTS} has non-finite values (NaN or infinity) in {len(bad)} tensors, e.g. "
                           f"{bad[0]}; the training diverged: export an earlier checkpoint.")
    net = diffusers.UNet2DModel.from_config(config)
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval().requires_grad_(False)


# ---------------------------------------------------------------- reading a folder or a .zip

@dataclass(frozen=True)
class NetworkFiles:
    """The three files of a network folder: their bytes as read, and the two JSON files parsed."""

    blobs: dict[str, bytes]   # CONFIG, SCHEDULER, WEIGHTS -> bytes
    config: dict
    scheduler: dict
    source: str

    @property
    def weights(self) -> bytes:
        return self.blobs[WEIGHTS]


def _locate(paths: set[str], source: str) -> tuple[str, str, str]:
    """(config, scheduler config, weights) paths among a folder's or archive's ``paths``."""
    dirs = sorted({str(PurePosixPath(p).parent) for p in paths if PurePosixPath(p).name == CONFIG and any(
        PurePosixPath(q).parent == PurePosixPath(p).parent and PurePosixPath(q).name.startswith(
            "diffusion_pytorch_model") for q in paths)})
    if not dirs:
        raise NetworkError(f"{source} holds no network folder: a config.json with a {WEIGHTS} beside it (what "
                           "UNet2DModel.save_pretrained writes).")
    if len(dirs) > 1:
        raise NetworkError(f"{source} holds several networks ({', '.join(dirs)}); point at one of them.")
    unet = PurePosixPath(dirs[0])
    weights = unet / WEIGHTS
    if str(weights) not in paths:
        pickles = [p for p in paths if PurePosixPath(p).parent == unet and p.endswith(PICKLES)]
        if pickles:
            raise NetworkError(f"{source} has its weights as a pickle file ({PurePosixPath(pickles[0]).name}), which "
                               "can run arbitrary code when loaded, so it is never opened here; save the network "
                               "as safetensors: UNet2DModel.from_pretrained(folder).save_pretrained(folder, "
                               "safe_serialization=True).")
        raise NetworkError(f"{source} has no single {WEIGHTS} beside config.json (sharded or variant weights are "
                           "not supported); save the network with save_pretrained(folder).")
    for scheduler in (unet / SCHEDULER, unet.parent / "scheduler" / SCHEDULER):
        if str(scheduler) in paths:
            return str(unet / CONFIG), str(scheduler), str(weights)
    raise NetworkError(f"{source} has no {SCHEDULER} (beside config.json, or in ../scheduler/): it gives the noise "
                       "schedule and the prediction type, without which D(x, sigma) cannot be computed; save it "
                       "with scheduler.save_pretrained(folder).")


def _read_json(entry: Entry, name: str) -> tuple[dict, bytes]:
    """A JSON object file (at most `MAX_JSON_BYTES`), parsed, and its bytes."""
    rel, size, opener = entry
    if size > MAX_JSON_BYTES:
        raise NetworkError(f"{rel} is {size:,} bytes, more than a configuration file may be ({MAX_JSON_BYTES:,}).")
    try:
        blob = read_counted(opener, size, MAX_JSON_BYTES, rel)
        value = json.loads(blob)
    except (OSError, ValueError, DatasetError) as exc:
        raise NetworkError(f"{rel} is not a readable JSON file ({exc}).") from exc
    if not isinstance(value, dict):
        raise NetworkError(f"{rel} holds a JSON {type(value).__name__}, not an object: it is not a {name}.")
    return value, blob


def _read_entries(entries: list[Entry], source: str, dataset: Dataset) -> tuple[NetworkFiles, int, dict]:
    """The checked files of a network, the parameter count and the architecture's shapes: config.json checked
    and built on the meta device before the weights are read."""
    by_path = {e[0]: e for e in entries}
    config_path, scheduler_path, weights_path = _locate(set(by_path), source)
    config, config_blob = _read_json(by_path[config_path], "UNet configuration")
    check_conditioning(config)
    check_shape(config, dataset)
    parameters, expected = meta_parameters(config)
    check_size(parameters)
    scheduler, scheduler_blob = _read_json(by_path[scheduler_path], "scheduler configuration")
    scheduler_settings(scheduler)
    rel, size, opener = by_path[weights_path]
    most = 8 * parameters + MAX_JSON_BYTES * 16  # float64 tensors and a generous header
    if size > most:
        raise NetworkError(f"{rel} is {size:,} bytes, more than {most:,} for {parameters:,} parameters; export "
                           "the weights of this configuration.")
    try:
        weights = read_counted(opener, size, most, rel)
    except (OSError, DatasetError) as exc:
        raise NetworkError(f"{rel} cannot be read ({exc}).") from exc
    blobs = {CONFIG: config_blob, SCHEDULER: scheduler_blob, WEIGHTS: weights}
    return NetworkFiles(blobs, config, scheduler, source), parameters, expected


def read_network(source: str | Path, dataset: Dataset) -> tuple[NetworkFiles, int, dict]:
    """Read and check the network folder or .zip ``source`` for ``dataset`` (everything but the tensors)."""
    source = Path(source).expanduser()
    if source.is_dir():
        return _read_entries(folder_entries(source), str(source), dataset)
    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            try:
                entries = zip_entries(archive)
            except DatasetError as exc:
                raise NetworkError(str(exc)) from exc
            return _read_entries(entries, str(source), dataset)
    raise NetworkError(f"{source} is neither a network folder nor a .zip of one.")


# ---------------------------------------------------------------- importing, finding and loading

def networks_home() -> Path:
    return data_home() / "networks"


def network_dir(name: str) -> Path:
    """Where the imported network ``name`` lives; NetworkError for a name that could not be a folder's."""
    if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
        return networks_home() / name
    raise NetworkError(f"invalid network name {name!r}: use 1 to 64 letters, digits, '-' or '_'.")


def list_networks() -> list[str]:
    """Names of the imported networks (folders with a record), sorted."""
    home = networks_home()
    if not home.is_dir():
        return []
    return sorted(p.name for p in home.iterdir() if NAME_PATTERN.fullmatch(p.name) and (p / RECORD).is_file())


def shipped_dir(dataset_name: str) -> Path | None:
    """The shipped (or user-placed) network folder of a data set, first in `models.model_dirs` order."""
    for d in model_dirs(dataset_name):
        if (d / SHIPPED / RECORD).is_file():
            return d / SHIPPED
    return None


def parse_pixel_range(text: str | tuple) -> tuple[float, float]:
    key = text if isinstance(text, str) else ",".join(f"{v:g}" for v in text)
    if key.replace(" ", "") not in PIXEL_RANGES:
        raise NetworkError(f"pixel range must be one of {', '.join(PIXEL_RANGES)} (the range the network was "
                           f"trained on), got {text!r}.")
    return PIXEL_RANGES[key.replace(" ", "")]


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def import_network(source: str | Path, name: str, dataset: Dataset, *, pixel_range: str = "-1,1",
                   directory: Path | None = None, source_label: str | None = None) -> dict:
    """Check the network at ``source`` for ``dataset`` and copy it with its record into ``directory`` (default
    `network_dir(name)`), replacing what was there; returns the record. ``source_label``: what the record says
    it came from (default the path of ``source``)."""
    network_dir(name)  # a valid name, wherever it goes
    lo, hi = parse_pixel_range(pixel_range)
    files, parameters, expected = read_network(source, dataset)
    build_network(files.config, files.weights, expected)  # the tensors too: finite, loadable
    settings = scheduler_settings(files.scheduler)
    record = {"format": RECORD_FORMAT, "name": name, "dataset": dataset.name, "fingerprint": dataset.fingerprint,
              "source": source_label or files.source, "pixel_range": [lo, hi],
              "prediction_type": settings["prediction_type"],
              "num_train_timesteps": settings["num_train_timesteps"], "timestep": TIMESTEP_RULE,
              "parameters": parameters, "sha256": {f: _sha256(blob) for f, blob in files.blobs.items()}}
    directory = Path(directory) if directory is not None else network_dir(name)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with owned_lock(data_home() / ".locks", f"network:{directory.resolve()}", what=f"importing the network {name}"):
        tmp = directory.with_name(f".{directory.name}.importing")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for f, blob in files.blobs.items():
            (tmp / f).write_bytes(blob)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
    return record


def read_record(directory: Path) -> dict:
    """The import record of a network folder; NetworkError when it is missing or damaged."""
    try:
        record = json.loads((Path(directory) / RECORD).read_text())
    except (OSError, ValueError) as exc:
        raise NetworkError(f"the network record {Path(directory) / RECORD} cannot be read ({exc}); import the "
                           "network again.") from exc
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or \
            not isinstance(record.get("sha256"), dict):
        raise NetworkError(f"{Path(directory) / RECORD} is not a network record of this version; import the network "
                           "again.")
    return record


def check_record(directory: Path, record: dict, dataset: Dataset) -> None:
    """The record names this data set (same fingerprint)."""
    if record.get("dataset") != dataset.name or record.get("fingerprint") != dataset.fingerprint:
        raise NetworkError(f"the network in {directory} was imported for {record.get('dataset')!r} (fingerprint "
                           f"{str(record.get('fingerprint'))[:12]}), not for {dataset.name!r} here (fingerprint "
                           f"{dataset.fingerprint[:12]}); import it again with --dataset {dataset.name}.")


def network_id(directory: Path) -> str:
    """What cache keys name a network by: a hash of its record (the sha256 of its three files, pixel range,
    data set), 16 hex digits."""
    record = read_record(directory)
    return config_sha256({k: record.get(k) for k in ("sha256", "pixel_range", "fingerprint", "timestep")})[:16]


def load_network(directory: Path, dataset: Dataset) -> DiffusersDenoiser:
    """The imported network in ``directory`` as a denoiser of ``dataset``: its record, the sha256 of its files,
    and every import check again."""
    directory = Path(directory)
    record = read_record(directory)
    check_record(directory, record, dataset)
    for f in FILES:
        if not (directory / f).is_file() or file_sha256(directory / f) != record["sha256"].get(f):
            raise NetworkError(f"{directory / f} is missing or does not match the sha256 in {RECORD}: it was "
                               "damaged or replaced; import the network again.")
    files, _, expected = read_network(directory, dataset)
    net = build_network(files.config, files.weights, expected)
    schedule = alphas_cumprod(scheduler_settings(files.scheduler))
    return DiffusersDenoiser(net, schedule, record["prediction_type"], tuple(record["pixel_range"]))
