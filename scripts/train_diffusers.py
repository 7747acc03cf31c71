"""Train the second architecture: a diffusers `UNet2DModel` (with attention blocks) on Fashion-MNIST, with
diffusers' own DDPM recipe, as an independent test of the paper's claim (issue: "your own network").

The recipe is diffusers' ``examples/unconditional_image_generation/train_unconditional.py``: a `DDPMScheduler`
(linear betas 1e-4..0.02, 1,000 steps), epsilon prediction, the MSE between predicted and true noise at a
uniform timestep, AdamW (betas 0.95 / 0.999, weight decay 1e-6), a cosine learning rate with 500 warm-up steps,
and an `EMAModel` with its warm-up (inv_gamma 1, power 3/4, at most 0.9999). Changed for a CPU budget: batch 64
(the recipe's 16 is too noisy for a few thousand steps) with learning rate 2e-4 (the recipe's 1e-4 at batch 16),
no horizontal flips (the Wiener filter and the analytical denoiser see the data unflipped, so must the network).

    python scripts/train_diffusers.py --steps 6000 --out ~/.local/share/locality-explorer/models/diffusers-run
    python scripts/train_diffusers.py --steps 6000 --out DIR --resume      # after an interruption
    python scripts/train_diffusers.py --steps 6000 --out DIR --export-only # the checkpoint's EMA weights, as is

The result is a diffusers folder (``config.json``, ``diffusion_pytorch_model.safetensors``,
``scheduler_config.json``, and ``training.json``: steps done of those planned, loss, wall time) in ``DIR/model``
that ``locality import-model`` reads like any other network; a checkpoint is written every
``--checkpoint-minutes`` and on Ctrl-C. ``--export-only`` writes that folder from the last checkpoint of a run
that will not be resumed, saying in ``training.json`` how many of the planned steps it had done. Needs the
optional extra: ``pip install diffusers``.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

import torch


def build(sample_size: int, channels: int):
    from diffusers import DDPMScheduler, UNet2DModel

    model = UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=8, attention_head_dim=32,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                              prediction_type="epsilon")
    return model, scheduler


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--export-only", action="store_true",
                   help="write DIR/model from DIR/checkpoint.pt (its EMA weights) without training")
    args = p.parse_args(argv)
    if args.export_only:
        export_only(args)
        return

    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    from locality_core.data import load_dataset

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset)
    train = data.train
    c, h, w = data.shape
    model, scheduler = build(h, c)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_schedule = get_cosine_schedule_with_warmup(opt, num_warmup_steps=args.warmup, num_training_steps=args.steps)
    gen = torch.Generator().manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = args.out / "checkpoint.pt", args.out / "train_log.jsonl"
    step, elapsed = 0, 0.0
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        lr_schedule.load_state_dict(ckpt["lr"])
        gen.set_state(ckpt["gen"])
        step, elapsed = int(ckpt["step"]), float(ckpt["elapsed"])
        print(f"resumed at step {step}")

    def save_checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "lr": lr_schedule.state_dict(), "gen": gen.get_state(), "step": step,
                    "elapsed": elapsed + time.perf_counter() - start}, tmp)
        tmp.replace(ckpt_path)

    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    start = last_ckpt = time.perf_counter()
    running = None
    model.train()
    while step < args.steps and not stop:
        idx = torch.randint(0, len(train), (args.batch,), generator=gen)
        x0 = train[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=gen)
        loss = torch.nn.functional.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_schedule.step()
        ema.step(model.parameters())
        step += 1
        running = loss.item() if running is None else 0.99 * running + 0.01 * loss.item()
        if step % 50 == 0 or step == args.steps:
            with log_path.open("a") as f:
                f.write(json.dumps({"step": step, "loss": running, "lr": lr_schedule.get_last_lr()[0],
                                    "ema_decay": ema.cur_decay_value,
                                    "elapsed": round(elapsed + time.perf_counter() - start, 1)}) + "\n")
        if time.perf_counter() - last_ckpt > 60 * args.checkpoint_minutes:
            save_checkpoint()
            last_ckpt = time.perf_counter()
    save_checkpoint()
    if step < args.steps:
        print(f"stopped at step {step}; continue with --resume")
        return
    export(args, data, model, scheduler, ema, step, running, elapsed + time.perf_counter() - start)


def logged_loss(log_path: Path, step: int) -> float | None:
    """The running loss the log recorded last at or before ``step`` (the log may run past the checkpoint)."""
    if not log_path.exists():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["step"] <= step]
    return rows[-1]["loss"] if rows else None


def export(args, data, model, scheduler, ema, step: int, loss: float | None, wall_time_s: float) -> Path:
    """Write ``args.out/model``: the EMA weights as a diffusers folder, and training.json saying what was done."""
    import diffusers

    ema.copy_to(model.parameters())
    model.eval()
    final = args.out / "model"
    model.save_pretrained(final, safe_serialization=True)
    scheduler.save_pretrained(final)
    complete = step >= args.steps
    (final / "training.json").write_text(json.dumps({
        "recipe": "diffusers train_unconditional (DDPM, epsilon, uniform t, AdamW, cosine warm-up, EMA)",
        "dataset": args.dataset, "fingerprint": data.fingerprint, "steps": step, "planned_steps": args.steps,
        "complete": complete,
        "note": "the full run" if complete else
                f"stopped at step {step} of {args.steps} planned (not enough CPU time) and not resumed: the EMA "
                "weights of its last checkpoint, with the cosine learning rate not yet decayed",
        "batch": args.batch, "lr": args.lr, "warmup": args.warmup, "seed": args.seed, "threads": args.threads,
        "final_loss_ema": loss, "ema_decay": ema.get_decay(ema.optimization_step),
        "wall_time_s": round(wall_time_s, 1), "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
    }, indent=2) + "\n")
    print(f"wrote {final} ({'complete' if complete else f'step {step} of {args.steps}'})")
    return final


def export_only(args) -> Path:
    from diffusers.training_utils import EMAModel

    from locality_core.data import load_dataset

    data = load_dataset(args.dataset)
    c, h, w = data.shape
    model, scheduler = build(h, c)
    ckpt = torch.load(args.out / "checkpoint.pt", weights_only=True)
    model.load_state_dict(ckpt["model"])
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    ema.load_state_dict(ckpt["ema"])
    step = int(ckpt["step"])
    return export(args, data, model, scheduler, ema, step, logged_loss(args.out / "train_log.jsonl", step),
                  float(ckpt["elapsed"]))


if __name__ == "__main__":
    main()
