"""Training the UNet denoiser: EDM loss, EMA weights, resumable checkpoints, an exported model + card.

Glossary
    TrainConfig    frozen description of a run (steps, batch, learning rate, noise distribution, EMA)
    checkpoint     ``<out>/checkpoint.pt``: model, EMA, optimiser, step, RNG, elapsed time; written every few
                   minutes and on interruption, so ``--resume`` continues where a run stopped
    weights        ``<out>/unet.pt``: EMA weights + config + data set fingerprint (loads with weights_only=True)
    card           ``<out>/card.json``: what the weights are and how good (held-out MSE next to Wiener's)

Training noise levels: ln sigma ~ N(p_mean, p_std^2) for most of a batch, and log-uniform over
[sigma_min, sigma_max] for a share ``uniform_share`` of it, so that the ends of the sampler's range
(sigma 0.01 and 60) are seen often enough to be denoised at least as well as by the Wiener filter.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import Dataset
from .unet import EDMDenoiser, UNetConfig

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "unet.pt"
CARD = "card.json"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 6000
    batch: int = 128
    lr: float = 5e-4
    warmup: int = 200
    decay_share: float = 0.3      # linear decay of the learning rate to 10 % over the last share of steps
    ema: float = 0.999
    p_mean: float = -0.6
    p_std: float = 1.6
    uniform_share: float = 0.2
    sigma_min: float = 0.005
    sigma_max: float = 100.0
    seed: int = 0
    checkpoint_minutes: float = 5.0

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {sorted(unknown)}")
        return cls(**d)


def default_unet_config(dataset: Dataset, base: int = 32) -> UNetConfig:
    """The architecture used for the shipped weights: 3 levels, ``base`` channels (32), one block per level."""
    c, h, w = dataset.shape
    if h != w:
        raise ValueError(f"the UNet needs square images, got {h}x{w}")
    sigma_data = float(dataset.train.std(dim=0).pow(2).mean().sqrt())  # std of the mean-centred data
    return UNetConfig(channels=c, image_size=h, base=base, mults=(1, 2, 2), blocks=1, sigma_data=round(sigma_data, 4))


def sample_sigmas(n: int, cfg: TrainConfig, generator: torch.Generator, device) -> torch.Tensor:
    """(n,) training noise levels: a log-normal bulk plus a log-uniform share over the full range."""
    log_normal = cfg.p_mean + cfg.p_std * torch.randn(n, generator=generator)
    lo, hi = math.log(cfg.sigma_min), math.log(cfg.sigma_max)
    log_uniform = lo + (hi - lo) * torch.rand(n, generator=generator)
    pick = torch.rand(n, generator=generator) < cfg.uniform_share
    return torch.where(pick, log_uniform, log_normal).exp().to(device)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup)
    decay_start = cfg.steps * (1 - cfg.decay_share)
    frac = min(1.0, max(0.0, (step - decay_start) / max(1.0, cfg.steps - decay_start)))
    return cfg.lr * warm * (1.0 - 0.9 * frac)


class EDMLoss:
    """lambda(sigma) * ||D(x0 + sigma eps, sigma) - x0||^2, averaged over pixels and batch."""

    def __call__(self, model: EDMDenoiser, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor):
        x0_hat = model(x0 + sigma.view(-1, 1, 1, 1) * noise, sigma)
        per_sample = (x0_hat - x0).pow(2).flatten(1).mean(1)
        return (model.loss_weight(sigma) * per_sample).mean()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no GPU; use --device cpu or auto")
    return torch.device(device)


def _atomic_write(path: Path, write) -> None:
    """``write(tmp)`` to a uniquely named file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _atomic_save(obj, path: Path) -> None:
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def train(dataset: Dataset, out_dir: str | Path, *, train_config: TrainConfig | None = None,
          unet_config: UNetConfig | None = None, steps: int | None = None, device: str = "auto",
          resume: bool = False, progress: bool = True, evaluate: bool = True, force: bool = False) -> Path:
    """Train (or resume) a UNet on ``dataset``; export EMA weights and a model card into ``out_dir``.

    ``steps`` overrides the configured number of steps (also of a resumed run). Returns the weights path.
    A run that already reached its steps only re-exports. Existing weights in ``out_dir`` are replaced only
    when resuming or with ``force=True``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT
    dev = resolve_device(device)
    state = None
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["fingerprint"] != dataset.fingerprint:
            raise ValueError(f"{ckpt_path} was trained on another version of the data "
                             f"({state['fingerprint'][:12]} != {dataset.fingerprint[:12]}); "
                             "start afresh without --resume")
        unet_config = UNetConfig.from_dict(state["unet_config"])
        saved = TrainConfig.from_dict(state["train_config"])
        train_config = train_config or saved
    elif ckpt_path.exists() and not resume and not force:
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, --force to start afresh, or "
                              "choose another --out.")
    if (out_dir / WEIGHTS).exists() and not resume and not force:
        raise FileExistsError(f"{out_dir / WEIGHTS} exists: pass --force to replace it, or choose another --out.")
    train_config = train_config or TrainConfig()
    if steps is not None:
        train_config = replace(train_config, steps=steps)
    if train_config.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {train_config.steps}")
    unet_config = unet_config or default_unet_config(dataset)

    torch.manual_seed(train_config.seed)  # parameter initialisation only; data and noise use `gen`
    model = EDMDenoiser(unet_config, mean=dataset.train.mean(0)).to(dev)
    ema = EDMDenoiser(unet_config, mean=dataset.train.mean(0)).to(dev)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=train_config.lr)
    gen = torch.Generator().manual_seed(train_config.seed)
    step, elapsed = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, elapsed = int(state["step"]), float(state["elapsed"])

    def save_checkpoint():
        _atomic_save({
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "generator": gen.get_state(), "step": step, "elapsed": elapsed + (time.time() - t_start),
            "fingerprint": dataset.fingerprint, "dataset": dataset.name,
            "unet_config": unet_config.to_dict(), "train_config": asdict(train_config),
        }, ckpt_path)

    data = dataset.train.to(dev)
    loss_fn = EDMLoss()
    t_start = time.time()
    last_save = t_start
    interrupted = False

    def on_term(signum, frame):  # a polite `kill` saves the checkpoint like Ctrl-C does
        raise KeyboardInterrupt

    old_handler = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    bar = tqdm(total=train_config.steps, initial=step, disable=not progress, desc=f"train {dataset.name}")
    running = None
    try:
        while step < train_config.steps:
            idx = torch.randint(len(data), (train_config.batch,), generator=gen).to(dev)
            sigma = sample_sigmas(train_config.batch, train_config, gen, dev)
            noise = torch.randn(data[idx].shape, generator=gen).to(dev)
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, train_config)
            loss = loss_fn(model, data[idx], sigma, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            decay = min(train_config.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), model.parameters()):
                    p_ema.lerp_(p, 1 - decay)
            step += 1
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{learning_rate(step, train_config):.1e}")
            if time.time() - last_save > 60 * train_config.checkpoint_minutes:
                save_checkpoint()
                last_save = time.time()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        save_checkpoint()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    if interrupted:
        raise KeyboardInterrupt(f"interrupted at step {step}; checkpoint saved to {ckpt_path}: resume with --resume")

    total_time = elapsed + (time.time() - t_start)
    return export(ema, dataset, out_dir, train_config, step, total_time, dev, evaluate=evaluate, progress=progress)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def export(ema: EDMDenoiser, dataset: Dataset, out_dir: Path, train_config: TrainConfig, step: int,
           wall_time: float, device: torch.device, *, evaluate: bool = True, progress: bool = True) -> Path:
    """Write EMA weights (weights_only-loadable) and the JSON model card."""
    ema = ema.to("cpu").eval()
    weights_path = out_dir / WEIGHTS
    _atomic_save({"format": "locality-unet-v1", "unet_config": ema.config.to_dict(),
                  "state_dict": ema.state_dict(), "fingerprint": dataset.fingerprint,
                  "dataset": dataset.name}, weights_path)
    card = {
        "dataset": dataset.name, "fingerprint": dataset.fingerprint, "description": dataset.description,
        "unet_config": ema.config.to_dict(), "train_config": asdict(train_config), "steps": step,
        "parameters": sum(p.numel() for p in ema.parameters()), "wall_time_s": round(wall_time, 1),
        "device": _device_name(device), "torch": torch.__version__,
        "command": _command(dataset, ema.config, train_config),
    }
    if "subset" in dataset.params:  # the training subset: N, split, permutation seed, hash of the indices
        card["subset"] = {k: dataset.params[k] for k in ("subset", "split", "subset_seed", "indices_sha256")}
    if evaluate:
        from .evaluate import heldout_mse_table  # imported late: only needed here

        card["heldout_mse"] = heldout_mse_table(dataset, {"unet": ema}, progress=progress)
    from .models import card_hashes

    card["sha256"] = card_hashes(out_dir)
    _atomic_write(out_dir / CARD, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2) + "\n"))
    return weights_path


def _command(dataset: Dataset, unet_config: UNetConfig, train_config: TrainConfig) -> str:
    cmd = f"locality train {dataset.name} --steps {train_config.steps} --batch {train_config.batch}"
    if unet_config.base != 32:
        cmd += f" --base {unet_config.base}"
    if "subset" in dataset.params:
        cmd += f" --subset {dataset.params['subset']} --split {dataset.params['split']}"
    return cmd


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
