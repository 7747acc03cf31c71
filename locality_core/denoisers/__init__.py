"""Denoisers, ``D(x, sigma) -> x0_hat``: `base` (the contract), `registry` (the table the CLI, the app and the
tests read), `wiener` (the optimal linear denoiser), `optimal` (the empirical optimal one), `analytical` (the
paper's, Lukoianov et al.) over `masked_engine` (its blocked GEMMs), `softmax` (the exact streaming softmax and
precision policy they share), `patches` (Kamb & Ganguli's LS and ELS), `unet` and `models` (our network and
its weight files), `training`, `evaluate` (held-out MSE), `distributed` (a training set sharded over ranks)."""
