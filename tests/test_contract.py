"""Every denoiser keeps the contract of `locality_core.denoisers.base`: one test per rule, over the registry (plus the
mask engine and the trained affine denoiser), on a tiny in-memory data set (the UNet: its shipped weights; the
diffusers network: a tiny random one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locality_core.analysis.linear_fit import AffineDenoiser
from locality_core.data import Dataset
from locality_core.denoisers.analytical import AnalyticalDenoiser, MaskedSoftmaxDenoiser
from locality_core.denoisers.base import Denoiser, LinearDenoiser, NotFittedError
from locality_core.denoisers.optimal import OptimalDenoiser
from locality_core.denoisers.patches import ELSDenoiser, LSDenoiser, square_mask
from locality_core.denoisers.registry import REGISTRY
from locality_core.denoisers.wiener import WienerDenoiser

SHAPE = (1, 8, 8)
SIGMAS = (0.3, 2.0, 0.3, 8.0)  # a repeated level: denoisers that group by level must restore the order

# a fresh, unfitted instance, where the class's own defaults would not do for this tiny data set (a new registry
# entry whose class builds with its defaults needs nothing here: see `unfitted`)
UNFITTED = {
    "wiener": WienerDenoiser,
    "optimal": lambda: OptimalDenoiser(chunk_size=7),
    "analytical": lambda: AnalyticalDenoiser(cache=False),
    "ls": lambda: LSDenoiser(patch_size=3, chunk_size=7),
    "els": lambda: ELSDenoiser(patch_size=3),
    "masked": lambda: MaskedSoftmaxDenoiser(lambda sigma: square_mask(SHAPE, 5), chunk_size=7),
    "affine": lambda: AffineDenoiser(1.0, steps=20, batch=16, lr=1e-2),
}
TRAINED_ELSEWHERE = {"unet", "diffusers-unet"}  # weights trained elsewhere: no fit
NAMES = [*REGISTRY, "masked", "affine"]


def tiny_dataset() -> Dataset:
    """30 smooth random training images (1, 8, 8) in [-1, 1], float32 like every registered data set."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(34, *SHAPE, generator=g)
    images = torch.tanh((z + torch.roll(z, 1, -1) + torch.roll(z, 1, -2)) / 2)
    return Dataset.from_tensor(images[:30], test=images[30:])


@pytest.fixture(scope="module")
def data() -> Dataset:
    return tiny_dataset()


@pytest.fixture(scope="module")
def built() -> dict[str, Denoiser]:
    """Each denoiser built once (by `get`) for the tests that do not change it."""
    return {}


def get(name: str, built: dict, data: Dataset) -> Denoiser:
    if name not in built:
        built[name] = build(name, data)
    return built[name]


def build(name: str, data: Dataset) -> Denoiser:
    """A registry entry by its own build (default options) on ``data``; the UNet from its shipped weights."""
    if name == "unet":
        from locality_core.denoisers.models import find_weights, load_weights

        path = find_weights("fashion-mnist")
        if path is None:
            pytest.skip("no shipped Fashion-MNIST UNet weights (locality_core/assets/models/fashion-mnist/unet.pt)")
        return load_weights(path)
    if name == "diffusers-unet":  # the class of every imported network, around a tiny random UNet2DModel
        pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install diffusers==0.42.1")
        from diffusers_nets import tiny_unet

        from locality_core.denoisers.diffusers_import import alphas_cumprod, scheduler_settings
        from locality_core.denoisers.diffusers_unet import DiffusersDenoiser

        return DiffusersDenoiser(tiny_unet(SHAPE[1]), alphas_cumprod(scheduler_settings({})), "v_prediction")
    if name in REGISTRY:
        return REGISTRY[name].build(data, **REGISTRY[name].options)
    return unfitted(name, data).fit(data)


def unfitted(name: str, data: Dataset) -> Denoiser:
    """A fresh instance that has learned nothing: the override above, else the registered build's class with its
    constructor's defaults."""
    return UNFITTED[name]() if name in UNFITTED else type(build(name, data))()


def inputs(den: Denoiser, n: int = len(SIGMAS), dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    shape = SHAPE if not hasattr(den, "config") else (den.config.channels, den.config.image_size,
                                                      den.config.image_size)
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, *shape), generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


def test_every_registered_denoiser_is_covered(data):
    """Each registry entry is in every test below (NAMES), and can be made unfitted for the fit tests."""
    assert set(REGISTRY) <= set(NAMES)
    for name in set(REGISTRY) - TRAINED_ELSEWHERE:
        assert not unfitted(name, data).fitted


@pytest.mark.parametrize("name", NAMES)
def test_is_a_denoiser_and_keeps_shape_dtype_and_device(name, built, data):
    den = get(name, built, data)
    assert isinstance(den, Denoiser)
    for dtype in (torch.float32, torch.float64):
        x = inputs(den, dtype=dtype)
        out = den(x, 0.7)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_per_sample_sigma_equals_a_loop_over_scalar_sigmas(name, built, data):
    den = get(name, built, data)
    x = inputs(den)
    batch = den(x, torch.tensor(SIGMAS, dtype=torch.float64))
    loop = torch.cat([den(x[i:i + 1], s) for i, s in enumerate(SIGMAS)])
    torch.testing.assert_close(batch, loop, rtol=1e-5, atol=1e-5)  # the UNet runs in float32
    if name != "affine":  # the only one that ignores sigma: the others must see the level of each image
        assert not torch.allclose(batch[0], den(x[:1], SIGMAS[3])[0], atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_an_empty_batch(name, built, data):
    den = get(name, built, data)
    x = inputs(den)[:0]
    for sigma in (0.5, torch.zeros(0, dtype=torch.float64)):
        out = den(x, sigma)
        assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize("name", NAMES)
def test_gradients_flow_to_the_input(name, built, data):
    den = get(name, built, data)
    x = inputs(den, n=2).requires_grad_(True)
    (grad,) = torch.autograd.grad(den(x, torch.tensor([0.4, 3.0], dtype=torch.float64)).pow(2).sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self_and_sets_every_learned_buffer(name, data):
    if name in TRAINED_ELSEWHERE:
        pytest.skip(f"{name} is trained elsewhere: it has no fit")
    den = unfitted(name, data)
    assert den.learned and not den.fitted
    assert den.fit(data) is den and den.fitted
    buffers = dict(den.named_buffers())
    for attr in den.learned:
        assert attr.endswith("_") and attr in buffers, attr
    loose = [k for k, v in vars(den).items() if isinstance(v, torch.Tensor)]  # state that .to() would not move
    assert not loose, loose


@pytest.mark.parametrize("name", NAMES)
def test_unfitted_denoiser_raises_the_clear_error(name, data):
    if name in TRAINED_ELSEWHERE:
        pytest.skip(f"{name} is trained elsewhere: it has no fit")
    den = unfitted(name, data)
    with pytest.raises(NotFittedError, match=rf"^{type(den).__name__} is not fitted: call \.fit\(dataset\) first$"):
        den(torch.zeros(1, *SHAPE), 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_to_moves_the_learned_state(name, data):
    den = build(name, data)  # its own: .to() changes it
    x = inputs(den, n=2)
    before = den(x, 0.7)
    assert den.to(torch.float64) is den
    floating = [t for t in [*den.buffers(), *den.parameters()] if t.is_floating_point()]
    assert floating and all(t.dtype == torch.float64 for t in floating)
    assert den.to("cpu") is den
    after = den(x, 0.7)
    assert after.dtype == torch.float64
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)  # float32 state, now in float64


def test_linear_denoisers_give_their_jacobian_in_closed_form(data):
    """`LinearDenoiser.jacobian_rows` against autograd, and its eigen-view against numpy."""
    for den in (WienerDenoiser().fit(data), AffineDenoiser(1.0, steps=20, batch=16, lr=1e-2).fit(data)):
        assert isinstance(den, LinearDenoiser)
        x = inputs(den, n=1)[0]
        J = torch.autograd.functional.jacobian(lambda v, den=den: den(v[None], 0.5)[0], x).reshape(64, 64)
        rows = den.jacobian_rows([3, 40], [0.5, 0.5])
        np.testing.assert_allclose(rows[0], J[[3, 40]].numpy(), atol=1e-10)
        vals, vecs, _ = den.jacobian_eigh(0.5)
        sym = (J.numpy() + J.numpy().T) / 2
        np.testing.assert_allclose(sym @ vecs[:, :3], vecs[:, :3] * vals[:3], atol=1e-8)


def test_tensor_data_set_statistics_replace_the_computed_ones(data):
    """``Dataset.from_tensor(train, stats=...)``: fit reads the given statistics (a shard fits to the whole set's)."""
    from locality_core.stats.covariance import compute_stats

    other = compute_stats(tiny_dataset().train[:10])
    given = WienerDenoiser().fit(Dataset.from_tensor(data.train, stats=other))
    own = WienerDenoiser().fit(data)
    assert np.array_equal(given.mean_.numpy(), other.mean) and not torch.equal(given.mean_, own.mean_)
