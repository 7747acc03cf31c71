"""Softmax denoisers against trusted references: one-shot softmax, brute force, the dense formula, the paper."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from locality_core.analysis.calibration import calibrate
from locality_core.analysis.metrics import per_batch_difference
from locality_core.data import Dataset
from locality_core.denoisers.analytical import (
    AnalyticalDenoiser,
    MaskedSoftmaxDenoiser,
    analytical_dense,
    analytical_mask,
    cached_mask,
    default_theta,
    mask_column,
)
from locality_core.denoisers.evaluate import noisy_heldout
from locality_core.denoisers.optimal import OptimalDenoiser, optimal_denoise
from locality_core.denoisers.patches import (
    ELSDenoiser,
    LSDenoiser,
    PatchSchedule,
    box_sum,
    els_denoise,
    kamb_schedule,
    ls_denoise,
    square_mask,
)
from locality_core.denoisers.softmax import (
    PRECISION,
    finish,
    softmax_average,
    softmax_state,
    streaming_softmax_average,
    threaded_state,
)
from locality_core.schedule import REFERENCE_SIGMAS, t_to_sigma
from locality_core.stats.covariance import compute_stats


def _images(n, shape=(1, 6, 6), seed=0, dtype=torch.float64):
    """Smooth-ish random images in [-1, 1]: correlated pixels give non-trivial masks."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *shape), generator=g, dtype=dtype)
    z = z + torch.roll(z, 1, -1) + torch.roll(z, 1, -2)
    return torch.tanh(z / 2)


@pytest.fixture(scope="module")
def tiny():
    train = _images(60)
    x = _images(3, seed=1) + 0.3 * torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(2),
                                               dtype=torch.float64)
    return train, x


# ---------------------------------------------------------------- streaming softmax

def _chunks(logits, values, size, dim):
    K = logits.shape[dim]
    for s in range(0, K, size):
        idx = torch.arange(s, min(K, s + size))
        yield logits.index_select(dim, idx), values.index_select(0 if dim == 1 else 1, idx)


@pytest.mark.parametrize("chunk", [1, 3, 7, 50, 1000])
def test_streaming_softmax_equals_one_shot(chunk):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g, dtype=torch.float64) * 1e4      # spreads of 1e4
    logits[0, :10] = -torch.inf                                              # masked candidates
    logits[1, 25] = 5e4                                                      # one dominant candidate
    values = torch.randn(50, 3, generator=g, dtype=torch.float64)
    want = softmax_average(logits, values)
    got = streaming_softmax_average(_chunks(logits, values, chunk, 1))
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(got[1], values[25])                               # the dominant one wins outright


@pytest.mark.parametrize("chunk", [1, 4, 9, 64])
def test_streaming_softmax_per_coordinate_equals_one_shot(chunk):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 30, 5, generator=g, dtype=torch.float64) * 1e4
    logits[:, 3:, 0] = -torch.inf                                            # coordinate 0: only 3 candidates
    values = torch.randn(30, 5, generator=g, dtype=torch.float64)
    want = softmax_average(logits, values)
    got = streaming_softmax_average(_chunks(logits, values, chunk, 1))
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    # the candidate dimension last (the analytical engine's layout) gives the same
    from locality_core.denoisers.softmax import reduce_states, softmax_state
    states = (softmax_state(lg, v, dim=2) for lg, v in _chunks(logits.transpose(1, 2), values.T, chunk, 2))
    assert torch.allclose(reduce_states(states), want, rtol=1e-12, atol=1e-12)


def test_all_masked_softmax_is_nan_like_one_shot():
    logits = torch.full((1, 6), -torch.inf, dtype=torch.float64)
    values = torch.ones(6, 2, dtype=torch.float64)
    assert torch.isnan(streaming_softmax_average(_chunks(logits, values, 4, 1))).all()


# ---------------------------------------------------------------- the training set split over threads

@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _num_threads_of_a_new_thread() -> int:
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


def test_threaded_state_is_the_one_shot_softmax_and_leaves_thread_counts_alone(two_threads):
    g = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(3, 1201, generator=g, dtype=torch.float64)
    values = torch.randn(1201, 4, generator=g, dtype=torch.float64)
    shards = []

    def state_of(part):
        shards.append((part.stop - part.start, torch.get_num_threads(),
                       threading.current_thread() is threading.main_thread()))
        return softmax_state(logits[:, part], values[part])

    got = finish(threaded_state(state_of, 1201, inputs=(logits, values)))
    assert sorted(shards) == [(600, 1, False), (601, 1, False)]     # two shards, each its own thread of one
    assert torch.allclose(got, softmax_average(logits, values), rtol=1e-12, atol=1e-12)
    assert torch.get_num_threads() == 2 and _num_threads_of_a_new_thread() == 2


def test_threaded_state_raises_a_shards_error(two_threads):
    def state_of(part):
        raise ValueError(f"shard of {part.stop - part.start} failed")

    with pytest.raises(ValueError, match="shard of 1024 failed"):
        threaded_state(state_of, 2048, inputs=())
    assert torch.get_num_threads() == 2 and _num_threads_of_a_new_thread() == 2


def test_calls_with_derivatives_are_not_split_over_threads(two_threads):
    """Shards run outside the caller's autograd and torch.func transforms: a forward-mode tangent (torch.func.jvp)
    and a gradient with respect to a per-sample sigma through a call that could split equal the one-thread ones."""
    train, x = _images(1301, seed=3), _images(2, seed=4)

    def derivatives():
        tangent = torch.func.jvp(lambda v: optimal_denoise(v, 0.5, train), (x,), (torch.ones_like(x),))[1]
        sigma = torch.tensor([0.4, 0.6], dtype=torch.float64, requires_grad=True)
        return tangent, torch.autograd.grad(optimal_denoise(x, sigma, train).square().sum(), sigma)[0]

    split = derivatives()
    torch.set_num_threads(1)
    one = derivatives()
    assert split[0].abs().max() > 1e-3 and split[1].abs().min() > 1e-6
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(split, one, strict=True))


@pytest.mark.parametrize("engine", ["analytical", "ls", "optimal"])
def test_engines_split_over_threads_equal_their_dense_formulas(two_threads, engine):
    """1,301 training images over 2 threads (uneven halves) against the dense formula in float64."""
    train = _images(1301, seed=3)
    x = _images(2, seed=4) + 0.2 * torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(5),
                                                dtype=torch.float64)
    den = AnalyticalDenoiser(0.05).fit(Dataset.from_tensor(train)) if engine == "analytical" else None
    for sigma in (0.3, 2.0):
        for xs in (x, x[:1]):
            if den is not None:
                got, want = den(xs, sigma), analytical_dense(xs, sigma, train, den.mask_fn(sigma))
            elif engine == "ls":
                got = ls_denoise(xs, sigma, train, 3, centre=train.mean(0))
                want = analytical_dense(xs, sigma, train, square_mask((1, 6, 6), 3))
            else:
                got, want = optimal_denoise(xs, sigma, train), _optimal_brute(xs, sigma, train)
            assert torch.allclose(got, want, atol=1e-12), (sigma, len(xs))


def test_batch_normalised_variant_split_over_threads_is_the_one_thread_result(two_threads, monkeypatch):
    """The public code's variant (softmax within batches of 512, batch results averaged) over 1,300 training images:
    split over 2 threads at a batch boundary it equals the one-thread result exactly, and the dense formula."""
    from locality_core.denoisers import masked_engine

    train = _images(1300, seed=3, dtype=torch.float32)
    noise = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    x = _images(3, seed=4, dtype=torch.float32) + 0.3 * noise
    den = AnalyticalDenoiser(0.05, batch_normalised=True).fit(Dataset.from_tensor(train))
    threads, states = set(), masked_engine._chunk_group_states

    def spy(x, sigma, train, *args):
        threads.add((threading.current_thread().name.split("_")[0], len(train)))
        return states(x, sigma, train, *args)

    monkeypatch.setattr(masked_engine, "_chunk_group_states", spy)
    for sigma in (0.3, 2.0):
        split = den(x, sigma)
        torch.set_num_threads(1)
        one = den(x, sigma)
        torch.set_num_threads(2)
        assert torch.equal(split, one), sigma
        want = analytical_dense(x.double(), sigma, train.double(), den.mask_fn(sigma), batch_normalised=True)
        assert torch.allclose(split.double(), want, atol=1e-5), sigma
    assert threads == {("softmax-shard", 512), ("softmax-shard", 788), ("MainThread", 1300)}


# ---------------------------------------------------------------- the optimal denoiser

def _optimal_brute(x, sigma, train):
    d2 = ((x.flatten(1)[:, None] - train.flatten(1)[None]) ** 2).sum(-1)
    return (torch.softmax(-d2 / (2 * sigma**2), dim=1) @ train.flatten(1)).view_as(x)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 5.0])
def test_optimal_equals_brute_force(tiny, sigma):
    train, x = tiny
    want = _optimal_brute(x, sigma, train)
    assert torch.allclose(optimal_denoise(x, sigma, train, chunk_size=7), want, atol=1e-12)
    f32 = OptimalDenoiser(chunk_size=16).fit(Dataset.from_tensor(train.float()))(x.float(), sigma)  # float64 distances
    assert f32.dtype == torch.float32 and torch.allclose(f32.double(), want, atol=1e-5)


def test_optimal_top_k(tiny):
    train, x = tiny
    exact = optimal_denoise(x, 1.0, train)
    assert torch.allclose(optimal_denoise(x, 1.0, train, top_k=len(train), chunk_size=7), exact, atol=1e-12)
    nearest = ((x.flatten(1)[:, None] - train.flatten(1)[None]) ** 2).sum(-1).argmin(1)
    assert torch.allclose(optimal_denoise(x, 1.0, train, top_k=1, chunk_size=7), train[nearest])
    assert not torch.allclose(optimal_denoise(x, 3.0, train, top_k=5), optimal_denoise(x, 3.0, train), atol=1e-3)


def test_optimal_per_sample_sigma(tiny):
    train, x = tiny
    sig = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    batched = optimal_denoise(x, sig, train)
    single = torch.cat([optimal_denoise(x[i:i + 1], float(s), train) for i, s in enumerate(sig)])
    assert torch.allclose(batched, single, atol=1e-12)


# ---------------------------------------------------------------- analytical: equalities with references

def test_all_ones_mask_equals_optimal(tiny):
    train, x = tiny
    ones = MaskedSoftmaxDenoiser(lambda s: np.ones((36, 36), bool), chunk_size=11).fit(Dataset.from_tensor(train))
    for sigma in (0.05, 0.7, 20.0):
        assert torch.allclose(ones(x, sigma), optimal_denoise(x, sigma, train), atol=1e-12)


def test_ls_covering_the_image_equals_optimal(tiny):
    train, x = tiny
    ls = LSDenoiser(patch_size=11).fit(Dataset.from_tensor(train))  # 11 >= 2 * 6 - 1: every pixel sees the whole image
    assert square_mask((1, 6, 6), 11).all()
    for sigma in (0.1, 2.0):
        assert torch.allclose(ls(x, sigma), optimal_denoise(x, sigma, train), atol=1e-12)


@pytest.mark.parametrize("patch", [1, 3, 5, 9, 15])
def test_box_sum_is_a_zero_padded_square_convolution(patch):
    e = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(patch), dtype=torch.float64)
    ones = torch.ones(1, 1, patch, patch, dtype=torch.float64)
    want = torch.nn.functional.conv2d(e.reshape(6, 1, 7, 9), ones, padding=patch // 2).view(2, 3, 7, 9)
    assert torch.allclose(box_sum(e, patch), want, atol=1e-12)
    assert torch.allclose(box_sum(e, patch, -0.5), -0.5 * want, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 6, 6), (3, 5, 7)])
def test_ls_box_sums_equal_the_dense_square_mask_formula(shape):
    """LS by separable box sums against the per-batch einsum formula with its (d, d) square mask, on both
    sides of the switch between direct and expanded terms, with chunks that do not divide N."""
    train = _images(23, shape)
    x = _images(3, shape, seed=1) + 0.3 * torch.randn(3, *shape, generator=torch.Generator().manual_seed(2),
                                                      dtype=torch.float64)
    for patch in (1, 3, 5):
        mask = square_mask(shape, patch)
        for sigma in (0.03, 0.4, 1.5, 30.0):
            want = analytical_dense(x, sigma, train, mask)
            got = ls_denoise(x, sigma, train, patch, chunk_size=5, centre=train.mean(0))
            assert torch.allclose(got, want, atol=1e-12), (patch, sigma)
    data = Dataset.from_tensor(train)
    for den in (LSDenoiser(patch_size=3).fit(data), AnalyticalDenoiser(0.05).fit(data)):  # no inputs, no error
        assert den(x[:0], 0.5).shape == (0, *shape)


def test_ls_float32_matches_float64_on_fashion(fashion):
    """float32 LS (direct terms, float64 below sigma 0.05, expanded terms above 1) against float64, the
    reference grid, 2,000 training images: within 1e-5 (last measured 2e-6 at N = 10,000)."""
    train = fashion.train[:2000]
    ls = LSDenoiser(kamb_schedule("fashion-mnist")).fit(Dataset.from_tensor(train))
    ls64 = LSDenoiser(kamb_schedule("fashion-mnist")).fit(Dataset.from_tensor(train.double()))
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for sigma in REFERENCE_SIGMAS:
        x = fashion.test[:4] + sigma * torch.randn(4, 1, 28, 28, generator=g)
        worst = max(worst, float((ls(x, sigma).double() - ls64(x.double(), sigma)).abs().max()))
    assert worst <= 1e-5


def test_ls_autograd_equals_the_mask_engine():
    """Jacobians through the checkpointed box sums equal those of the general mask engine."""
    shape = (1, 5, 5)
    train = _images(17, shape, seed=7)
    xi = _images(2, shape, seed=8)
    ls = LSDenoiser(patch_size=3, chunk_size=4).fit(Dataset.from_tensor(train))
    engine = MaskedSoftmaxDenoiser(lambda s: square_mask(shape, 3), chunk_size=6).fit(Dataset.from_tensor(train))
    for sigma in (0.3, 2.0):
        ja = torch.autograd.functional.jacobian(lambda v, s=sigma: ls(v, s), xi)
        jb = torch.autograd.functional.jacobian(lambda v, s=sigma: engine(v, s), xi)
        assert ja.abs().max() > 1e-3 and torch.allclose(ja, jb, atol=1e-10)


def test_ls_autograd_memory_does_not_grow_with_chunks():
    """Under autograd one softmax state is kept per span of GRAD_SPAN training images, not per chunk: with
    chunks of 8 images, 4,000 training images keep no more for backward than 400 do (per-chunk states
    would keep ten times as much)."""
    def saved_bytes(n):
        train = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        x = torch.rand(16, 1, 28, 28, requires_grad=True)
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            ls_denoise(x, 1.5, train, 5, chunk_size=8).sum()
        return total[0]

    small, large = saved_bytes(400), saved_bytes(4000)
    assert large <= 1.5 * small, (small, large)


@pytest.mark.parametrize("theta,mode", [(0.05, "global"), (0.3, "row"), (0.6, "global")])
def test_fast_engine_equals_dense_formula(tiny, theta, mode):
    train, x = tiny
    stats = compute_stats(train)
    den = AnalyticalDenoiser(theta, mode, chunk_size=13).fit(Dataset.from_tensor(train, stats=stats))
    for sigma in (0.03, 0.4, 1.5, 30.0):
        mask = analytical_mask(stats, sigma, theta, mode)
        assert 0 < mask.sum() < mask.size                 # a real mask, neither empty nor full
        want = analytical_dense(x, sigma, train, mask, chunk_size=17)
        assert torch.allclose(den(x, sigma), want, atol=1e-12), (sigma, mode)


def test_plans_for_one_input_and_for_a_batch_give_the_same_denoiser():
    """A plan is made for the number of inputs per call (one input cannot amortise row gathers). For discs of
    radius 8 on 12x12x3 images (70 % of the mask set, like natural-patches at t = 500) one input gets one block
    over all rows, eight inputs get gathered complement tiles; each call gives the dense formula."""
    from locality_core.denoisers.masked_engine import plan_mask

    shape = (3, 12, 12)
    yy, xx = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    pix = np.stack([yy.ravel(), xx.ravel()], 1)
    mask = np.tile(((pix[:, None] - pix[None]) ** 2).sum(-1) <= 64, (3, 3))
    one, eight = plan_mask(mask, shape, batch=1), plan_mask(mask, shape, batch=8)
    assert len(one.blocks) == 1 and len(one.blocks[0].rows) == mask.shape[0]
    assert len(eight.blocks) > 1 and all(b.complement for b in eight.blocks)
    train = _images(50, shape)
    x = _images(8, shape, seed=3) + 0.2 * torch.randn(8, *shape, generator=torch.Generator().manual_seed(4),
                                                      dtype=torch.float64)
    den = MaskedSoftmaxDenoiser(lambda sigma: mask, chunk_size=11).fit(Dataset.from_tensor(train))
    want = analytical_dense(x, 0.5, train, mask)
    assert torch.allclose(den(x, 0.5), want, atol=1e-12)
    assert torch.allclose(den(x[:1], 0.5), want[:1], atol=1e-12)
    assert set(den._plans) == {(0.5, 8), (0.5, 1)}


def test_training_image_at_tiny_sigma_is_returned(tiny):
    """sigma -> 0: the image itself wins every softmax. (The per-coordinate softmax of small masks needs a truly
    tiny sigma: another image may match one pixel to 1e-3, which at sigma = 1e-3 still gets weight.)"""
    train, _ = tiny
    x = train[[4, 17]]
    data = Dataset.from_tensor(train)
    for den in (OptimalDenoiser().fit(data), AnalyticalDenoiser(0.05).fit(data), LSDenoiser(patch_size=3).fit(data)):
        assert torch.allclose(den(x, 1e-6), x, atol=1e-12), type(den).__name__


def test_huge_sigma_gives_the_training_mean(tiny):
    train, x = tiny
    mean = train.mean(0, keepdim=True).expand_as(x)
    data = Dataset.from_tensor(train)
    for den in (OptimalDenoiser().fit(data), AnalyticalDenoiser(0.05).fit(data), LSDenoiser(patch_size=3).fit(data)):
        assert torch.allclose(den(x, 1e5), mean, atol=1e-6), type(den).__name__
    # ELS: every interior pixel averages the centres of all interior patches of all images
    out = ELSDenoiser(patch_size=3, n_train=None).fit(Dataset.from_tensor(train))(x, 1e5)
    assert torch.allclose(out[..., 1:-1, 1:-1], train[..., 1:-1, 1:-1].mean().expand(3, 1, 4, 4), atol=1e-6)


def test_per_sample_sigma_groups_inputs(tiny):
    train, x = tiny
    den = AnalyticalDenoiser(0.05).fit(Dataset.from_tensor(train))
    sig = torch.tensor([2.0, 0.1, 2.0], dtype=torch.float64)
    single = torch.cat([den(x[i:i + 1], float(s)) for i, s in enumerate(sig)])
    assert torch.allclose(den(x, sig), single, atol=1e-12)


def test_autograd_through_the_checkpointed_engine():
    train = _images(20, shape=(1, 4, 4), seed=5)
    den = AnalyticalDenoiser(0.05, chunk_size=8).fit(Dataset.from_tensor(train))
    xi = _images(1, shape=(1, 4, 4), seed=6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: den(v, 0.8), (xi,), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("n_inputs", [1, 2])
def test_forward_mode_through_the_engine_equals_finite_differences(tiny, n_inputs):
    """torch.func.jvp through the mask engine (no buffers reused, nothing computed in place under it) against a
    central difference, float64."""
    train, x = tiny
    den = AnalyticalDenoiser(0.05).fit(Dataset.from_tensor(train))
    xs, v = x[:n_inputs], torch.randn(x[:n_inputs].shape, generator=torch.Generator().manual_seed(7),
                                      dtype=torch.float64)
    for sigma in (0.5, 3.0):
        tangent = torch.func.jvp(lambda u, s=sigma: den(u, s), (xs,), (v,))[1]
        eps = 1e-6
        want = (den(xs + eps * v, sigma) - den(xs - eps * v, sigma)) / (2 * eps)
        assert tangent.abs().max() > 1e-3 and torch.allclose(tangent, want, atol=1e-6), sigma


def test_batch_normalised_is_the_reference_variant(tiny):
    train, x = tiny
    stats = compute_stats(train)
    sigma = 0.3
    mask = analytical_mask(stats, sigma, 0.05)
    batched = AnalyticalDenoiser(0.05, batch_normalised=True).fit(Dataset.from_tensor(train, stats=stats))(x, sigma)
    # the public code: softmax within each batch of 512 images, batch results averaged (here one batch)
    assert torch.allclose(batched, analytical_dense(x, sigma, train, mask, batch_normalised=True), atol=1e-12)


# ---------------------------------------------------------------- masks

def test_default_theta_follows_the_paper():
    assert default_theta((1, 28, 28)) == 0.005
    assert default_theta((3, 32, 32)) == pytest.approx(0.05)
    assert default_theta((3, 64, 64)) == pytest.approx(0.02)
    assert 0.02 < default_theta((3, 48, 48)) < 0.05


def test_mask_cache_roundtrip(tmp_path, tiny):
    from locality_core.store.cache import ArrayCache

    train, _ = tiny
    stats = compute_stats(train, fingerprint="tiny-test")
    cache = ArrayCache(tmp_path)
    mask, top = cached_mask(stats, 0.7, 0.05, cache=cache)
    again, top2 = cached_mask(stats, 0.7000001, 0.05, cache=cache)           # same key after rounding
    assert np.array_equal(mask, analytical_mask(stats, 0.7, 0.05)) and np.array_equal(mask, again)
    assert top == top2 and len(cache._values) == 1


def test_mask_reference_numbers_fashion(fashion_stats):
    """METHODS.md section 10: centre pixel column sizes and max|M| at t = 900 / 700 / 500 / 300 / 100."""
    sizes, tops = [], []
    for t in (900, 700, 500, 300, 100):
        col = mask_column(fashion_stats, (14, 14), t_to_sigma(t))
        assert col.map.shape == (28, 28) and col.map.sum() == col.size
        sizes.append(col.size)
        tops.append(round(col.max_abs_m, 2))
    assert sizes == [748, 765, 605, 341, 47]
    assert tops == [1.87, 2.95, 3.95, 4.84, 4.83]


@pytest.mark.slow
@pytest.mark.parametrize("n_train", [2000, 20_000])
def test_fast_analytical_matches_dense_on_fashion(fashion, fashion_stats, n_train):
    """Exact mode on real data: float32 engine vs the dense formula in float64, within 1e-5, for a batch of 8
    (float64 below sigma 0.15, the compensated cross form up to 1, the plain one above) and for one input at a
    time (float32 down to 0.05, direct terms below 0.4), on the reference grid and on both sides of each switch
    (`softmax.PRECISION.masked`)."""
    train = fashion.train[:n_train]
    den = AnalyticalDenoiser().fit(Dataset.from_tensor(train, stats=fashion_stats))
    sigmas = sorted({*REFERENCE_SIGMAS, 0.04, 0.06, 0.1, 0.14, 0.16, 0.2, 0.39, 0.41, 0.5, 0.9, 0.99, 1.01})
    worst = {"batch": 0.0, "one": 0.0}
    with torch.no_grad():
        for sigma, x in zip(sigmas, noisy_heldout(fashion.test[:8], sigmas, 0), strict=True):
            mask = cached_mask(fashion_stats, sigma)[0]
            want = analytical_dense(x.double(), sigma, train.double(), mask)
            worst["batch"] = max(worst["batch"], float((den(x, sigma).double() - want).abs().max()))
            one = torch.cat([den(x[i:i + 1], sigma) for i in range(len(x))])
            worst["one"] = max(worst["one"], float((one.double() - want).abs().max()))
    print(f"N = {n_train}: max |fast float32 - dense float64| over the grid: {worst}")
    assert max(worst.values()) <= 1e-5


def test_per_batch_variant_differs_measurably(fashion, fashion_stats):
    rows = per_batch_difference(fashion, n_train=1024, n=2, sigmas=[t_to_sigma(300)], stats=fashion_stats)
    print("per-batch vs exact (N=1024):", [(round(r["sigma"], 3), round(r["max_abs_diff"], 3)) for r in rows])
    assert max(r["max_abs_diff"] for r in rows) > 0.01


@pytest.mark.slow
def test_per_batch_difference_fashion_10k(fashion):
    """The README's number: per-batch (reference code) vs exact on Fashion-MNIST with N = 10,000."""
    rows = per_batch_difference(fashion, n_train=10_000, n=4)
    for r in rows:
        print(f"t={r['t']} sigma={r['sigma']:.4g} max|diff|={r['max_abs_diff']:.3f} mean={r['mean_abs_diff']:.4f}")
    assert max(r["max_abs_diff"] for r in rows) > 0.1


# ---------------------------------------------------------------- patch machines

def _els_brute(x, sigma, train, P, broken):
    B, C, H, W = x.shape
    h = P // 2
    pad = torch.nn.functional.pad
    xp, tp = pad(x, (h, h, h, h)), pad(train, (h, h, h, h))
    out = torch.zeros_like(x)

    def allowed(i, L):
        return [i] if broken and (i < h or i > L - 1 - h) else (list(range(h, L - h)) if broken else list(range(L)))

    for b in range(B):
        for r in range(H):
            for c in range(W):
                q = xp[b, :, r:r + P, c:c + P]
                logits, vals = [], []
                for rr in allowed(r, H):
                    for cc in allowed(c, W):
                        logits.append(-((tp[:, :, rr:rr + P, cc:cc + P] - q) ** 2).sum((1, 2, 3)) / (2 * sigma**2))
                        vals.append(train[:, :, rr, cc])
                out[b, :, r, c] = (torch.softmax(torch.cat(logits), 0)[:, None] * torch.cat(vals)).sum(0)
    return out


@pytest.mark.parametrize("P,broken", [(1, True), (3, True), (3, False), (5, True)])
def test_els_equals_brute_force(P, broken):
    train = _images(12, shape=(2, 5, 4), seed=3)
    x = _images(2, shape=(2, 5, 4), seed=4)
    for sigma in (0.3, 2.0):
        got = els_denoise(x, sigma, train, P, broken=broken, images_per_chunk=5)
        assert torch.allclose(got, _els_brute(x, sigma, train, P, broken), atol=1e-12)


def test_els_without_interior_is_ls_and_covering_is_optimal(tiny):
    train, x = tiny
    els = ELSDenoiser(patch_size=11, n_train=None).fit(Dataset.from_tensor(train))
    assert torch.allclose(els(x, 0.5), optimal_denoise(x, 0.5, train), atol=1e-12)
    ls = LSDenoiser(patch_size=7).fit(Dataset.from_tensor(train))
    assert torch.allclose(els_denoise(x, 0.5, train, 7), ls(x, 0.5), atol=1e-12)


def test_els_subset_is_seeded(tiny):
    train, _ = tiny
    data = Dataset.from_tensor(train)
    a, b = ELSDenoiser(patch_size=3, n_train=10, seed=1).fit(data), ELSDenoiser(patch_size=3, n_train=10, seed=1)
    assert torch.equal(a.train_, b.fit(data).train_) and len(a.train_) == 10


def test_kamb_schedule_mapping():
    s = kamb_schedule("fashion-mnist")
    assert s.size_for(0.0) == 3 and s.size_for(1e4) == 25
    assert [s.size_for(x) for x in s.sigmas] == list(s.sizes)     # every grid point maps to itself
    assert s.size_for(t_to_sigma(100)) == 7 and s.size_for(t_to_sigma(300)) == 13
    with pytest.raises(ValueError):
        PatchSchedule((0.1, 1.0), (3, 4))


def test_calibrate_recovers_a_known_schedule(tiny):
    from locality_core.data import Dataset

    train, _ = tiny
    data = Dataset("tiny-calibrate", train, _images(4, seed=9), "x", "tiny")
    truth = PatchSchedule((0.05, 0.5, 5.0), (1, 3, 5))
    reference = LSDenoiser(truth).fit(Dataset.from_tensor(train))
    got = calibrate(data, reference, [5.0, 0.5, 0.05], [1, 3, 5, 7], kind="ls", n=3)
    assert got.sizes == truth.sizes and got.sigmas == truth.sigmas
    assert min(got.scores[1]) == pytest.approx(0.0, abs=1e-20) and len(got.scores[0]) == 4
    cos = calibrate(data, reference, [0.5], [1, 3, 5], kind="ls", n=3, metric="cosine")
    assert cos.sizes == (3,)


# ---------------------------------------------------------------- the grouped engine against the dense formula

def _mixed_mask():
    """(100, 100) mask on 10x10 images whose plan (tile 4: tiles of 16, 8 and 4 columns) has every block kind:
    image columns 0-3 random (supports cover the image: blocks over all rows), 4-7 small discs (gathered rows,
    uneven counts), 8-9 large discs (complement blocks; over all rows for one input)."""
    rng = np.random.default_rng(3)
    yy, xx = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
    pix = np.stack([yy.ravel(), xx.ravel()], 1)
    dist2 = ((pix[:, None] - pix[None]) ** 2).sum(-1)
    col = pix[:, 1][None, :]                                      # image column of output m, per mask column
    return np.where(col <= 3, rng.random((100, 100)) < 0.5, np.where(col <= 7, dist2 <= 2 + col % 2, dist2 <= 50))


@pytest.mark.parametrize("slack", [0.0, 0.75, 1.0])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("expanded_min", [128, 1])
def test_grouped_engine_equals_dense_formula_for_every_block_kind(slack, batch, expanded_min, monkeypatch):
    """Padding is neutral: any grouping (slack 0: gathered blocks of one kind and width padded into one group; 1:
    one group per distinct row count) gives the dense formula in float64, for one input and for eight, exactly
    (1e-12), at low, middle and high noise, with chunks that do not divide N; groups over all rows in the cross
    form (narrow groups) and in the expanded form (``EXPANDED_MIN_COLUMNS`` = 1); eight inputs at sigma 0.4 and
    0.7 in the compensated cross form (whose float32 accuracy the Fashion-MNIST test checks)."""
    from locality_core.denoisers import masked_engine
    from locality_core.denoisers.masked_engine import masked_softmax_denoise, plan_mask

    monkeypatch.setattr(masked_engine, "EXPANDED_MIN_COLUMNS", expanded_min)

    shape, mask = (1, 10, 10), _mixed_mask()
    plan = plan_mask(mask, shape, tile=4, batch=batch, slack=slack)
    kinds = {(len(b.rows) == 100, b.complement) for b in plan.blocks}
    assert kinds >= {(True, False), (False, False), (False, True)}, kinds
    assert {len(b.cols) for b in plan.blocks} == {16, 8, 4}               # uneven tiles
    minimal = len({(len(b.rows) == 100, b.complement, len(b.rows) == 100 or len(b.cols)) for b in plan.blocks})
    assert len(plan.groups) == minimal if slack == 0.0 else len(plan.groups) >= minimal + (slack == 1.0)
    train = _images(41, shape, seed=11)
    x = _images(batch, shape, seed=12) + 0.3 * torch.randn(batch, *shape, generator=torch.Generator().manual_seed(13),
                                                           dtype=torch.float64)
    forms = {sigma: PRECISION.masked.form(x.dtype, sigma, batch) for sigma in (0.05, 0.4, 0.7, 3.0, 50.0)}
    assert batch == 1 or {s for s, form in forms.items() if form.compensated} == {0.4, 0.7}
    for sigma in forms:
        want = analytical_dense(x, sigma, train, mask)
        got = masked_softmax_denoise(x.flatten(1), sigma, train.flatten(1), plan, chunk_size=13,
                                     centre=train.flatten(1).mean(0)).view_as(x)
        assert torch.allclose(got, want, atol=1e-12, rtol=0), (sigma, float((got - want).abs().max()))


def test_grouped_engine_per_sample_sigma_float32_sharded_and_batch_normalised():
    """The same mixed plan through the denoiser: per-sample sigma equals one call per input; float32 inputs
    match float64 within 1e-5; two shards' states merge to the whole; the batch-normalised variant is the
    dense one's."""
    from locality_core.denoisers.masked_engine import masked_softmax_denoise, masked_softmax_state, plan_mask
    from locality_core.denoisers.softmax import finish, merge_states

    shape, mask = (1, 10, 10), _mixed_mask()
    train = _images(60, shape, seed=21)
    x = _images(8, shape, seed=22) + 0.2 * torch.randn(8, *shape, generator=torch.Generator().manual_seed(23),
                                                       dtype=torch.float64)
    den = MaskedSoftmaxDenoiser(lambda sigma: mask).fit(Dataset.from_tensor(train))
    sig = torch.tensor([0.03, 0.3, 0.3, 2.0, 0.03, 9.0, 0.3, 2.0], dtype=torch.float64)
    single = torch.cat([analytical_dense(x[i:i + 1], float(s), train, mask) for i, s in enumerate(sig)])
    assert torch.allclose(den(x, sig), single, atol=1e-12)
    f32 = MaskedSoftmaxDenoiser(lambda sigma: mask).fit(Dataset.from_tensor(train.float()))
    for sigma in (0.05, 0.5, 3.0):
        assert float((f32(x.float(), sigma).double() - analytical_dense(x, sigma, train, mask)).abs().max()) < 1e-5
    plan = plan_mask(mask, shape, tile=4, batch=8)
    xf, tf = x.flatten(1), train.flatten(1)
    whole = masked_softmax_state(xf, 0.4, tf, plan, chunk_size=7)
    parts = [masked_softmax_state(xf, 0.4, t, plan, chunk_size=7) for t in (tf[:25], tf[25:])]
    assert torch.allclose(finish(merge_states(*parts)), finish(whole), atol=1e-12)
    batched = masked_softmax_denoise(xf, 0.4, tf, plan, batch_normalised=True, chunk_size=512)
    assert torch.allclose(batched.view_as(x), analytical_dense(x, 0.4, train, mask, batch_normalised=True), atol=1e-12)


def test_grouped_engine_jacobian_equals_the_dense_formula():
    """Gradients through the checkpointed grouped engine (every block kind, one and two inputs) equal those of
    the dense formula."""
    from locality_core.denoisers.masked_engine import masked_softmax_denoise, plan_mask

    shape, mask = (1, 10, 10), _mixed_mask()
    train = _images(23, shape, seed=31)
    for batch in (1, 2):
        plan = plan_mask(mask, shape, tile=4, batch=batch)
        xi = _images(batch, shape, seed=32).flatten(1)
        ja = torch.autograd.functional.jacobian(
            lambda v, p=plan: masked_softmax_denoise(v, 0.5, train.flatten(1), p, chunk_size=9), xi)
        jb = torch.autograd.functional.jacobian(lambda v: analytical_dense(v, 0.5, train, mask), xi)
        assert ja.abs().max() > 1e-3 and torch.allclose(ja, jb, atol=1e-10)
