"""Tiny random diffusers networks for the tests (diffusers must be importable where these are called)."""

from __future__ import annotations

from pathlib import Path

import torch

TINY = dict(layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def tiny_unet(side: int = 8, channels: int = 1, seed: int = 0, **config):
    """A random UNet2DModel with attention blocks (about 45k parameters at 8x8, one channel)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=side, in_channels=channels, out_channels=channels, **{**TINY, **config})


def save_network(folder: Path, prediction: str = "epsilon", beta_schedule: str = "linear", side: int = 8,
                 channels: int = 1, safe: bool = True, **config) -> Path:
    """A tiny random network and its DDPM scheduler configuration saved with save_pretrained in ``folder``."""
    from diffusers import DDPMScheduler

    tiny_unet(side, channels, **config).save_pretrained(folder, safe_serialization=safe)
    DDPMScheduler(prediction_type=prediction, beta_schedule=beta_schedule, beta_start=1e-4 if beta_schedule ==
                  "linear" else 8.5e-4, beta_end=0.02 if beta_schedule == "linear" else 0.012).save_pretrained(folder)
    return Path(folder)
