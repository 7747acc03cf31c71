"""Transforms of 'locality follows the data': exact covariance identities, fingerprints, errors."""

import numpy as np
import pytest
import torch

from locality_core.analysis.fields import wiener_field
from locality_core.analysis.transforms import (
    derived_fingerprint,
    inject_pattern,
    keep_class,
    permute_pixels,
    pixel_permutation,
    unpermute_map,
    w_template,
)
from locality_core.data import Dataset, DatasetError
from locality_core.data.base import fingerprint
from locality_core.stats.covariance import compute_stats


def small_dataset(n=400, c=1, h=6, w=5, seed=0, labels=True) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    # correlated images: smooth a white field by averaging neighbours, so fields are local
    x = torch.randn(n + 50, c, h, w, generator=g, dtype=torch.float64)
    x = (x + x.roll(1, -1) + x.roll(1, -2)).float() / 3
    y = torch.arange(n + 50) % 3
    return Dataset("toy", x[:n], x[n:], fingerprint(x.numpy(), recipe="toy"), "toy images",
                   train_labels=y[:n] if labels else None, test_labels=y[n:] if labels else None,
                   class_names=("a", "b", "c") if labels else ())


def test_permutation_is_a_permutation_and_deterministic():
    p = pixel_permutation(30, seed=3)
    assert sorted(p.tolist()) == list(range(30))
    assert np.array_equal(p, pixel_permutation(30, seed=3))
    assert not np.array_equal(p, pixel_permutation(30, seed=4))


@pytest.mark.parametrize("c", [1, 3])
def test_permuted_covariance_is_pi_sigma_pi_t(c):
    base = small_dataset(c=c)
    perm_ds = permute_pixels(base, seed=1)
    perm = perm_ds.params["perm"]
    _, h, w = base.shape
    # flattened index m = ch*H*W + p: the same spatial permutation inside every channel block
    full = np.concatenate([ch * h * w + perm for ch in range(c)])
    s0 = compute_stats(base.train)
    s1 = compute_stats(perm_ds.train)
    np.testing.assert_allclose(s1.cov, s0.cov[np.ix_(full, full)], atol=1e-10)
    np.testing.assert_allclose(s1.mean, s0.mean[full], atol=1e-12)
    assert perm_ds.shape == base.shape and len(perm_ds.test) == len(base.test)
    assert torch.equal(perm_ds.train_labels, base.train_labels)


def test_permuted_wiener_field_unpermutes_to_the_original_field():
    base = small_dataset()
    perm_ds = permute_pixels(base, seed=2)
    perm = perm_ds.params["perm"]
    _, h, w = base.shape
    sigmas = [0.1, 1.0]
    p = 7  # a pixel of the permuted images: it holds old pixel perm[p]
    f_new = wiener_field(compute_stats(perm_ds.train), divmod(p, w), sigmas).map("signed")
    f_old = wiener_field(compute_stats(base.train), divmod(int(perm[p]), w), sigmas).map("signed")
    np.testing.assert_allclose(unpermute_map(f_new, perm), f_old, atol=1e-10)


def test_injection_adds_s_z_w_and_its_covariance():
    base = small_dataset(n=4000)
    s = 0.7
    out = inject_pattern(base, strength=s, mask=np.ones((6, 5)) * (np.arange(5) % 2), seed=0)
    template = out.params["template"]
    diff = (out.train - base.train).double().reshape(len(base.train), -1).numpy()
    w = template.reshape(-1)
    z = diff @ w / (s * (w @ w))
    np.testing.assert_allclose(np.outer(z, w) * s, diff, atol=1e-5)  # exactly rank one along w
    assert abs(z.std() - 1) < 0.05 and abs(z.mean()) < 0.05
    # Sigma' = Sigma + s^2 var(z) w w^T + cross terms that vanish in expectation
    d_cov = compute_stats(out.train).cov - compute_stats(base.train).cov
    np.testing.assert_allclose(d_cov, s**2 * np.var(z, ddof=1) * np.outer(w, w), atol=0.05)


def test_injection_with_w_template_and_errors():
    base = small_dataset(h=12, w=12)
    a = inject_pattern(base, 0.5, "W", seed=1)
    b = inject_pattern(base, 0.5, "W", seed=1)
    assert torch.equal(a.train, b.train) and a.fingerprint == b.fingerprint
    assert a.fingerprint != inject_pattern(base, 0.5, "W", seed=2).fingerprint
    assert a.fingerprint != inject_pattern(base, 0.6, "W", seed=1).fingerprint
    assert a.fingerprint != base.fingerprint and "W" in a.description
    np.testing.assert_array_equal(a.params["template"][0], w_template(12, 12))
    assert torch.equal(inject_pattern(base, 0.0, "W").train, base.train)
    with pytest.raises(ValueError):
        inject_pattern(base, 1.0, np.ones((3, 3)))
    with pytest.raises(ValueError):
        inject_pattern(base, 1.0, np.zeros((12, 12)))
    with pytest.raises(ValueError):
        inject_pattern(base, -1.0)
    with pytest.raises(ValueError):
        inject_pattern(base, 1.0, "V")


def test_w_template_looks_like_a_w():
    m = w_template(28, 28)
    assert m.shape == (28, 28) and set(np.unique(m)) == {0.0, 1.0}
    assert 100 < m.sum() < 300
    assert np.abs(m - m[:, ::-1]).sum() <= 0.1 * m.sum()  # mirror symmetric, up to rasterisation
    assert m[:4].sum() == 0 and m[-4:].sum() == 0  # margins above and below
    with pytest.raises(ValueError):
        w_template(3, 3)


def test_keep_class():
    base = small_dataset()
    one = keep_class(base, 1)
    assert (one.train_labels == 1).all() and (one.test_labels == 1).all()
    assert len(one.train) == int((base.train_labels == 1).sum())
    assert torch.equal(one.train, base.train[base.train_labels == 1])
    assert keep_class(base, "b").fingerprint == one.fingerprint != base.fingerprint
    assert one.params["class_name"] == "b" and "class 1" in one.description
    with pytest.raises(DatasetError):
        keep_class(base, "z")
    with pytest.raises(DatasetError):
        keep_class(base, 9)
    with pytest.raises(DatasetError):
        keep_class(small_dataset(labels=False), 0)


def test_derived_fingerprint_depends_on_base_and_recipe():
    a, b = small_dataset(seed=0), small_dataset(seed=1)
    assert derived_fingerprint(a, "x") != derived_fingerprint(b, "x")
    assert derived_fingerprint(a, "x") != derived_fingerprint(a, "y")
    assert permute_pixels(a, 0).fingerprint != permute_pixels(b, 0).fingerprint
