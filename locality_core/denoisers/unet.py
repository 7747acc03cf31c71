"""A compact UNet denoiser with EDM preconditioning (Karras et al. 2022), meeting D(x, sigma) -> x0_hat.

Glossary
    UNetConfig     frozen architecture description, stored in every checkpoint and model card
    UNet           the raw network F(x_in, c_noise) -> (B, C, H, W)
    EDMDenoiser    D(x, sigma) = mu + c_skip (x - mu) + c_out F(c_in (x - mu), c_noise)
    mu             per-pixel data mean (C, H, W); subtracting it is an input normalisation: it leaves the
                   Jacobian dD/dx, and so every sensitivity field, untouched
    c_skip, c_out, c_in, c_noise   EDM's preconditioning, with sigma_data the data's standard deviation

Shapes: x (B, C, H, W), sigma a float or a (B,) tensor; H and W divisible by 2 ** (levels - 1).
GroupNorm normalises each sample on its own, so the outputs of different batch elements never mix: one
backward pass through a batch gives one Jacobian row per sample.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from locality_core.denoisers.base import Denoiser, as_batch_sigma


@dataclass(frozen=True)
class UNetConfig:
    channels: int = 1               # image channels (1 grayscale, 3 RGB)
    image_size: int = 28            # H = W
    base: int = 32                  # channels at full resolution
    mults: tuple[int, ...] = (1, 2, 2)  # channel multiplier per level; len(mults) levels
    blocks: int = 2                 # residual blocks per level on the way down
    emb_dim: int = 128              # noise-level embedding width
    groups: int = 8                 # GroupNorm groups
    sigma_data: float = 0.5         # EDM sigma_data (std of the centred data)

    def __post_init__(self):
        step = 2 ** (len(self.mults) - 1)
        if self.image_size % step:
            raise ValueError(f"image_size {self.image_size} must be divisible by {step} for {len(self.mults)} levels")
        for m in self.mults:
            if (self.base * m) % self.groups:
                raise ValueError(f"channels {self.base * m} not divisible by groups {self.groups}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UNetConfig keys: {sorted(unknown)}")
        d = dict(d)
        if "mults" in d:
            d["mults"] = tuple(d["mults"])
        return cls(**d)


def sinusoidal_embedding(c_noise: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) -> (B, dim) Fourier features of the conditioning scalar."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=c_noise.device, dtype=torch.float32) / half)
    angles = 100.0 * c_noise.float()[:, None] * freqs[None]  # EDM's c_noise is O(1): spread it out
    return torch.cat([angles.cos(), angles.sin()], dim=1).to(c_noise.dtype)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(h)


class UNet(nn.Module):
    """F(x_in, c_noise): a plain convolutional UNet, no attention (so every field is built from convolutions)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        widths = [cfg.base * m for m in cfg.mults]
        self.emb = nn.Sequential(nn.Linear(cfg.emb_dim, cfg.emb_dim), nn.SiLU(), nn.Linear(cfg.emb_dim, cfg.emb_dim))
        self.conv_in = nn.Conv2d(cfg.channels, cfg.base, 3, padding=1)

        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [cfg.base], cfg.base
        for level, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks):
                blocks.append(ResBlock(c, w, cfg.emb_dim, cfg.groups))
                c = w
                skips.append(c)
            self.down.append(blocks)
            last = level == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            if not last:
                skips.append(c)

        self.mid = nn.ModuleList([ResBlock(c, c, cfg.emb_dim, cfg.groups), ResBlock(c, c, cfg.emb_dim, cfg.groups)])

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks + 1):
                blocks.append(ResBlock(c + skips.pop(), w, cfg.emb_dim, cfg.groups))
                c = w
            self.up.append(blocks)
            self.upsample.append(nn.Conv2d(c, c, 3, padding=1) if level > 0 else nn.Identity())

        self.norm_out = nn.GroupNorm(cfg.groups, c)
        self.conv_out = nn.Conv2d(c, cfg.channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        emb = self.emb(sinusoidal_embedding(c_noise, self.config.emb_dim))
        h = self.conv_in(x)
        hs = [h]
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, emb)
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for blocks, up in zip(self.up, self.upsample):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


class EDMDenoiser(Denoiser):
    """D(x, sigma) -> x0_hat with EDM preconditioning around the per-pixel data mean. Trained by `train.py` (no
    fit); the weights are parameters and ``mean`` a buffer, so ``.to()`` moves them. The network runs in float32
    (its parameters' dtype) whatever x's dtype; the preconditioning and the output are in x's dtype."""

    def __init__(self, config: UNetConfig, mean: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.net = UNet(config)
        size = (config.channels, config.image_size, config.image_size)
        self.register_buffer("mean", torch.zeros(size) if mean is None else mean.reshape(size).float().clone())

    def preconditioning(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sd = self.config.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1.0 / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4.0
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        sigma = as_batch_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = (c.to(x.dtype) for c in self.preconditioning(sigma))
        xc = x - self.mean.to(x.dtype)
        view = (-1, 1, 1, 1)
        net_dtype = self.net.conv_in.weight.dtype  # float32 unless the module was cast (``.double()``)
        f = self.net((c_in.view(view) * xc).to(net_dtype), c_noise.to(net_dtype)).to(x.dtype)
        return self.mean.to(x.dtype) + c_skip.view(view) * xc + c_out.view(view) * f

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM's lambda(sigma) = 1 / c_out^2: equalises the loss scale across noise levels."""
        sd = self.config.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2
