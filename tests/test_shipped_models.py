"""The shipped UNet weights: they load safely, match their data, and beat the Wiener filter (issue 3's bar)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from locality_core.denoisers.evaluate import heldout_mse_table
from locality_core.denoisers.models import ASSETS_MODELS, load_weights

SHIPPED = sorted(p.parent.name for p in ASSETS_MODELS.glob("*/unet.pt"))


def test_fashion_mnist_weights_are_shipped():
    assert "fashion-mnist" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_card_describes_the_weights(name):
    card = json.loads((ASSETS_MODELS / name / "card.json").read_text())
    assert card["dataset"] == name and card["steps"] > 0
    assert {"t", "sigma", "unet", "wiener"} <= set(card["heldout_mse"][0])
    assert (ASSETS_MODELS / name / "unet.pt").stat().st_size < 20 * 2**20


@pytest.mark.slow
def test_fashion_mnist_unet_beats_wiener(fashion):
    """UNet MSE at least 20 % below Wiener at t = 100, 300, 500 and nowhere more than 2 % above it
    (2,000 test images, fixed noise seed, the reference DDIM grid)."""
    unet = load_weights(ASSETS_MODELS / "fashion-mnist" / "unet.pt", fashion)
    rows = heldout_mse_table(fashion, {"unet": unet})
    ratio = {r["t"]: r["unet"] / r["wiener"] for r in rows}
    for t in (100, 300, 500):
        assert ratio[t] <= 0.80, (t, ratio)
    assert max(ratio.values()) <= 1.02, ratio


@pytest.mark.slow
def test_natural_patches_unet_beats_wiener_on_new_photographs(natural_patches):
    """The shipped natural-patches model as the README describes it (t = 500, 300, 100; fixed noise): on 1,000
    patches spread over the four held-out photographs at least 6 / 16 / 27 % below Wiener (measured there:
    9.5 / 19.0 / 31.8 %; on all 6,000: 9.7 / 20.0 / 31.5 %), on 256 of its training patches at least 20 %
    below (measured 27 to 46 %). A network that learnt its training pictures rather than natural images (the
    six-photo version: 0 to 7 % held out) fails the first; the 2,400-step network shipped before (7.9 / 14.8 /
    25.7 % there) fails it too; a broken or untrained one fails both. Issue 3's 20 % bar at t = 500 is not
    reached."""
    data = natural_patches
    unet = load_weights(ASSETS_MODELS / "natural-patches" / "unet.pt", data)
    sigmas = [3.443, 1.24, 0.342]
    spread = replace(data, test=data.test[::6][:1000])  # the test split is ordered by photo: take every 6th
    held_out = heldout_mse_table(spread, {"unet": unet}, n=1000, sigmas=sigmas)
    on_train = heldout_mse_table(replace(data, test=data.train[::len(data.train) // 256][:256]), {"unet": unet},
                                 n=256, sigmas=sigmas)
    ratio = [r["unet"] / r["wiener"] for r in held_out]
    assert ratio[0] <= 0.94 and ratio[1] <= 0.84 and ratio[2] <= 0.73, held_out
    for r in on_train:
        assert r["unet"] <= 0.80 * r["wiener"], on_train


def test_unet_field_is_computed_and_cached(fashion, tmp_path):
    from locality_core.analysis.fields import denoiser_field
    from locality_core.store.cache import ArrayCache

    cache = ArrayCache(tmp_path)
    f1 = denoiser_field(fashion, "unet", (14, 14), [1.0, 0.1], n=4, cache=cache)
    f2 = denoiser_field(fashion, "unet", (14, 14), [1.0, 0.1], n=4, cache=cache)
    np.testing.assert_array_equal(f1.abs_mean, f2.abs_mean)
    maps = f1.map()
    assert maps.shape == (2, 28, 28) and np.all(maps >= 0)
    assert maps[1].argmax() == 14 * 28 + 14  # at low noise the pixel listens mostly to itself


def test_bfloat16_fields_agree_with_float32(fashion, tmp_path):
    """The dashboard's fast path: bfloat16 autocast Jacobians give the float32 maps (cosine >= 0.999 at every
    level, same 50 % square), and are cached under their own key."""
    from locality_core.analysis.fields import cosine_similarity, denoiser_field, field_is_cached, locality_sizes
    from locality_core.store.cache import ArrayCache

    cache = ArrayCache(tmp_path)
    sigmas = [12.0, 1.24, 0.1]
    assert not field_is_cached(fashion, "unet", (9, 20), sigmas, n=4, cache=cache)
    f32 = denoiser_field(fashion, "unet", (9, 20), sigmas, n=4, cache=cache)
    assert field_is_cached(fashion, "unet", (9, 20), sigmas, n=4, cache=cache)
    assert not field_is_cached(fashion, "unet", (9, 20), sigmas, n=4, precision="bfloat16", cache=cache)
    bf16 = denoiser_field(fashion, "unet", (9, 20), sigmas, n=4, precision="bfloat16", cache=cache)
    assert not np.array_equal(f32.abs_mean, bf16.abs_mean)  # really computed differently
    for a, b in zip(f32.map(), bf16.map()):
        assert cosine_similarity(a, b) >= 0.999
    np.testing.assert_array_equal(locality_sizes(f32)[:, 0], locality_sizes(bf16)[:, 0])


DIFFUSERS = ASSETS_MODELS / "fashion-mnist" / "diffusers-unet"


def test_shipped_diffusers_network_has_its_record_and_an_honest_card():
    """The diffusers UNet2DModel of Fashion-MNIST: its files match the sha256 of its record, its card says how many
    of the planned steps were done, and its held-out MSE per noise level beside the UNet's and Wiener's."""
    from locality_core.denoisers.diffusers_import import FILES, read_record
    from locality_core.denoisers.models import file_sha256

    record = read_record(DIFFUSERS)
    assert record["dataset"] == "fashion-mnist" and record["prediction_type"] == "epsilon"
    assert all(file_sha256(DIFFUSERS / f) == record["sha256"][f] for f in FILES)
    card = json.loads((DIFFUSERS / "card.json").read_text())
    training = card["training"]
    assert card["fingerprint"] == record["fingerprint"] == training["fingerprint"]
    assert 0 < training["steps"] <= training["planned_steps"] and training["complete"] == (
        training["steps"] == training["planned_steps"])
    assert {"t", "sigma", "diffusers-unet", "unet", "wiener"} <= set(card["heldout_mse"][0])
    assert sum(f.stat().st_size for f in DIFFUSERS.iterdir()) < 8 * 2**20


@pytest.mark.slow
def test_shipped_diffusers_network_beats_wiener_at_middle_noise(fashion):
    """Loaded through the registry (every import check again), on 500 test images: at least 10 / 25 / 40 % below
    the Wiener filter at t = 500 / 300 / 100 (measured on 2,000: 16 / 37 / 54 %); a wrongly converted network, or
    one that had not learnt, is far above it. (At t >= 700 it is above Wiener, as its card says: an epsilon
    network's x0 estimate multiplies its noise error by sigma.)"""
    pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install diffusers==0.42.1")
    from locality_core.denoisers.registry import get_denoiser

    rows = heldout_mse_table(fashion, {"d": get_denoiser("diffusers-unet", fashion)}, n=500)
    ratio = {r["t"]: r["d"] / r["wiener"] for r in rows}
    assert ratio[500] < 0.9 and ratio[300] < 0.75 and ratio[100] < 0.6, ratio
