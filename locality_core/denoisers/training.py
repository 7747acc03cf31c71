"""Training the UNet denoiser: EDM loss, EMA weights, resumable checkpoints, an exported model + card.

Glossary
    TrainConfig    frozen description of a run (steps, batch, learning rate, noise distribution, EMA)
    Run            what a run changes as it goes: model, EMA copy, optimiser, generator, step
    step           `train_step`: one Adam step on a random batch (EDM loss), then the EMA update
    checkpoint     ``<out>/checkpoint.pt``: model, EMA, optimiser, step, RNG, elapsed time; written every few
                   minutes and on interruption, so ``--resume`` continues where a run stopped
    weights        ``<out>/unet.pt``: EMA weights + config + data set fingerprint (loads with weights_only=True)
    card           ``<out>/card.json``: what the weights are and how good (held-out MSE next to Wiener's)

Training noise levels: ln sigma ~ N(p_mean, p_std^2) for most of a batch, and log-uniform over
[sigma_min, sigma_max] for a share ``uniform_share`` of it, so that the ends of the sampler's range
(sigma 0.01 and 60) are seen often enough to be denoised at least as well as by the Wiener filter.
"""

from __future__ import annotations

import math
import platform
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from locality_core.data import Dataset
from locality_core.denoisers.evaluate import heldout_mse_table
from locality_core.denoisers.models import WEIGHTS, save_weights, write_card
from locality_core.denoisers.unet import EDMDenoiser, UNetConfig
from locality_core.store.files import atomic_write

CHECKPOINT = "checkpoint.pt"


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


@dataclass
class Run:
    """What a training run changes as it goes, and what its checkpoint holds besides the configurations."""

    model: EDMDenoiser
    ema: EDMDenoiser
    opt: torch.optim.Optimizer
    gen: torch.Generator      # data indices and noise; the parameters' initialisation uses the global seed
    step: int = 0
    elapsed: float = 0.0      # seconds spent in earlier sessions of this run


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
    dev = resolve_device(device)
    state = previous_state(dataset, out_dir, resume=resume, force=force)
    if state is not None:
        unet_config = UNetConfig.from_dict(state["unet_config"])
        train_config = train_config or TrainConfig.from_dict(state["train_config"])
    train_config = train_config or TrainConfig()
    if steps is not None:
        train_config = replace(train_config, steps=steps)
    if train_config.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {train_config.steps}")
    unet_config = unet_config or default_unet_config(dataset)
    run = new_run(dataset, unet_config, train_config, dev)
    if state is not None:
        restore(run, state)
    t_start = time.time()

    def save() -> None:
        save_checkpoint(run, out_dir / CHECKPOINT, dataset, unet_config, train_config, time.time() - t_start)

    try:
        run_steps(run, dataset.train.to(dev), train_config, save, progress=progress, desc=f"train {dataset.name}")
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted at step {run.step}; checkpoint saved to {out_dir / CHECKPOINT}: "
                                "resume with --resume") from None
    total_time = run.elapsed + (time.time() - t_start)
    return export(run.ema, dataset, out_dir, train_config, run.step, total_time, dev, evaluate=evaluate,
                  progress=progress)


def previous_state(dataset: Dataset, out_dir: Path, *, resume: bool, force: bool) -> dict | None:
    """The checkpoint to resume from (None: start afresh), after refusing to overwrite a run or a model unasked."""
    ckpt_path, state = out_dir / CHECKPOINT, None
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["fingerprint"] != dataset.fingerprint:
            raise ValueError(f"{ckpt_path} was trained on another version of the data "
                             f"({state['fingerprint'][:12]} != {dataset.fingerprint[:12]}); "
                             "start afresh without --resume")
    elif ckpt_path.exists() and not resume and not force:
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, --force to start afresh, or "
                              "choose another --out.")
    if (out_dir / WEIGHTS).exists() and not resume and not force:
        raise FileExistsError(f"{out_dir / WEIGHTS} exists: pass --force to replace it, or choose another --out.")
    return state


def new_run(dataset: Dataset, unet_config: UNetConfig, train_config: TrainConfig, device: torch.device) -> Run:
    """Model and EMA copy (initialised from ``train_config.seed``), Adam, and the run's data/noise generator."""
    torch.manual_seed(train_config.seed)  # parameter initialisation only; data and noise use `gen`
    model = EDMDenoiser(unet_config, mean=dataset.train.mean(0)).to(device)
    ema = EDMDenoiser(unet_config, mean=dataset.train.mean(0)).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=train_config.lr)
    return Run(model, ema, opt, torch.Generator().manual_seed(train_config.seed))


def restore(run: Run, state: dict) -> None:
    """Load a checkpoint's model, EMA, optimiser, generator, step and elapsed time into ``run``."""
    run.model.load_state_dict(state["model"])
    run.ema.load_state_dict(state["ema"])
    run.opt.load_state_dict(state["optimizer"])
    run.gen.set_state(state["generator"])
    run.step, run.elapsed = int(state["step"]), float(state["elapsed"])


def save_checkpoint(run: Run, path: Path, dataset: Dataset, unet_config: UNetConfig, train_config: TrainConfig,
                    session_seconds: float) -> None:
    state = {
        "model": run.model.state_dict(), "ema": run.ema.state_dict(), "optimizer": run.opt.state_dict(),
        "generator": run.gen.get_state(), "step": run.step, "elapsed": run.elapsed + session_seconds,
        "fingerprint": dataset.fingerprint, "dataset": dataset.name,
        "unet_config": unet_config.to_dict(), "train_config": asdict(train_config),
    }
    atomic_write(path, lambda f: torch.save(state, f))


def train_step(run: Run, data: torch.Tensor, cfg: TrainConfig, loss_fn=None) -> float:
    """One Adam step on a batch drawn from ``data`` (N, C, H, W), then the EMA update; returns the loss."""
    loss_fn = loss_fn or EDMLoss()
    dev = data.device
    idx = torch.randint(len(data), (cfg.batch,), generator=run.gen).to(dev)
    sigma = sample_sigmas(cfg.batch, cfg, run.gen, dev)
    noise = torch.randn(data[idx].shape, generator=run.gen).to(dev)
    for group in run.opt.param_groups:
        group["lr"] = learning_rate(run.step, cfg)
    loss = loss_fn(run.model, data[idx], sigma, noise)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
    run.opt.step()
    update_ema(run.ema, run.model, min(cfg.ema, (1 + run.step) / (10 + run.step)))
    run.step += 1
    return loss.item()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - decay)


def run_steps(run: Run, data: torch.Tensor, cfg: TrainConfig, save: Callable[[], None], *, progress: bool = True,
              desc: str = "train") -> None:
    """Step until ``cfg.steps``, calling ``save`` every ``cfg.checkpoint_minutes`` and at the end; on Ctrl-C or
    SIGTERM it saves too, then raises KeyboardInterrupt."""
    loss_fn = EDMLoss()
    last_save = time.time()
    old_handler = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    bar = tqdm(total=cfg.steps, initial=run.step, disable=not progress, desc=desc)
    running = None
    try:
        while run.step < cfg.steps:
            loss = train_step(run, data, cfg, loss_fn)
            running = loss if running is None else 0.98 * running + 0.02 * loss
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{learning_rate(run.step, cfg):.1e}")
            if time.time() - last_save > 60 * cfg.checkpoint_minutes:
                save()
                last_save = time.time()
    finally:
        bar.close()
        save()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


def _raise_interrupt(signum, frame):  # a polite `kill` saves the checkpoint like Ctrl-C does
    raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def export(ema: EDMDenoiser, dataset: Dataset, out_dir: Path, train_config: TrainConfig, step: int,
           wall_time: float, device: torch.device, *, evaluate: bool = True, progress: bool = True) -> Path:
    """Write EMA weights (weights_only-loadable) and the JSON model card."""
    ema = ema.to("cpu").eval()
    weights_path = out_dir / WEIGHTS
    save_weights(weights_path, ema.config, ema.state_dict(), fingerprint=dataset.fingerprint, dataset=dataset.name)
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
        card["heldout_mse"] = heldout_mse_table(dataset, {"unet": ema}, progress=progress)
    write_card(out_dir, card)
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
