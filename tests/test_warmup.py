"""The warm-up fills exactly the cache entries the pages read: after it, the pages' library calls compute nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locality_core.analysis.basis import basis_is_cached, denoiser_basis, last_basis_seconds
from locality_core.analysis.fields import denoiser_field, field_is_cached
from locality_core.analysis.sampling import cached_trajectory, trajectory_is_cached
from locality_core.analysis.transforms import inject_pattern
from locality_core.data import load_dataset
from locality_core.denoisers.analytical import cached_mask
from locality_core.denoisers.models import save_weights
from locality_core.denoisers.unet import EDMDenoiser, UNetConfig
from locality_core.stats.covariance import get_stats
from locality_core.store.cache import ArrayCache
from locality_core.views import warmup


@pytest.fixture(scope="module")
def grf(tmp_path_factory):
    """A small GRF data set, a private cache and model folder, small warm-up defaults: (root, data)."""
    root = tmp_path_factory.mktemp("warmup")
    mp = pytest.MonkeyPatch()
    mp.setenv("LOCALITY_CACHE_DIR", str(root / "cache"))
    mp.setenv("LOCALITY_MODEL_DIR", str(root / "models"))
    mp.setenv("LOCALITY_FIELD_PRECISION", "float32")
    # three noise levels and a 2 x 2 grid of pixels instead of ten and 4 x 4: the same code paths, in seconds
    mp.setattr(warmup, "DEFAULTS", warmup.Defaults(timesteps=(900, 500, 100), grid_step=14))
    yield root, load_dataset("grf", n_train=300, n_test=16)
    mp.undo()


@pytest.fixture(scope="module")
def tiny(grf):
    """The whole warm-up run on ``grf`` with a tiny untrained UNet saved for it (about 15 s): (data, times)."""
    root, data = grf
    torch.manual_seed(0)
    model = EDMDenoiser(UNetConfig(base=8, mults=(1, 2), blocks=1, emb_dim=16, groups=4))
    torch.nn.init.normal_(model.net.conv_out.weight, std=0.05)
    (root / "models" / "grf").mkdir(parents=True)
    save_weights(root / "models" / "grf" / "unet.pt", model.config, model.state_dict(), fingerprint=data.fingerprint,
                 dataset="grf")
    times = warmup.run([("grf", task) for task in warmup.TASK_ORDER], datasets={"grf": data}, stop_on_error=True)
    return data, times


@pytest.mark.slow  # the warm-up fixture: 15-17 s on the shared 2-core machine
def test_warmup_runs_every_task_and_records_its_time(tiny):
    data, times = tiny
    assert list(times) == [f"grf/{task}" for task in warmup.TASK_ORDER]
    status = warmup.read_status()
    assert not status["running"] and set(times) <= set(status["durations"]) and not status["errors"]
    assert warmup.waiting_text("grf", "jacobian") is None  # nothing running: no wait to announce
    assert last_basis_seconds(data, "unet") > 0


@pytest.mark.slow
def test_after_warmup_the_pages_library_calls_are_cache_hits(tiny, monkeypatch):
    data, _ = tiny

    def no_computing(self, key, arrays):
        raise AssertionError(f"computed after the warm-up: {key}")

    D = warmup.DEFAULTS
    monkeypatch.setattr(ArrayCache, "set", no_computing)  # any miss would compute and store: fail instead
    sigmas = list(D.sigmas)
    stats = get_stats(data)
    for sigma in sigmas:  # Jacobian page: the default basis and the tr J curve
        assert basis_is_cached(data, "unet", D.jacobian_image, sigma, seed=D.seed)
        basis, _ = denoiser_basis(data, "unet", D.jacobian_image, sigma, seed=D.seed)
        assert basis.eigvecs.shape == (784, 784) and np.isfinite(basis.trace)
    center = warmup.default_pixel(data.shape)
    pixels = [center, (7, 7), (21, 21)]  # Sensitivity: the default pixel and the coarse grid
    for pixel in pixels:
        for sigma in sigmas:
            assert field_is_cached(data, "unet", pixel, [sigma], n=D.field_n, seed=D.seed)
            denoiser_field(data, "unet", pixel, [sigma], n=D.field_n, seed=D.seed)
    for sigma in sigmas:
        cached_mask(stats, sigma, None, "global")
    modified = inject_pattern(data, strength=D.inject_strength, mask="W", seed=D.seed)  # experiments page
    for sigma in sigmas:
        cached_mask(get_stats(modified), sigma, None, "global")
    for name in D.sample_denoisers:  # Samples page: every default denoiser with its trajectory
        assert trajectory_is_cached(data, name, D.sample_n, D.sample_steps, D.seed)
        traj = cached_trajectory(data, name, D.sample_n, D.sample_steps, D.seed)
        assert traj["x0_hat"].shape == (D.sample_steps, D.sample_n, *data.shape)


def test_a_new_task_is_one_line(grf, monkeypatch):
    _, data = grf
    seen = []
    monkeypatch.setitem(warmup.REGISTRY, "a-new-view", lambda dataset, progress: seen.append(dataset.name))
    monkeypatch.setattr(warmup, "TASKS", [("grf", "stats")])
    warmup.TASKS.append(("grf", "a-new-view"))
    warmup.run(warmup.tasks(["grf"]), datasets={"grf": data}, stop_on_error=True)
    assert seen == ["grf"]


def test_default_order_puts_fashion_mnist_and_natural_patches_first(monkeypatch):
    monkeypatch.setattr(warmup, "TASKS", [])
    entries = warmup.tasks()
    names = list(dict.fromkeys(name for name, _ in entries))
    expected = [n for n in warmup.FIRST_DATASETS if n in names]
    assert names[:len(expected)] == expected
    first = [task for name, task in entries if name == names[0]]
    if names[0] == "fashion-mnist":  # its subset family's page, before the long tasks
        assert first.index("memorisation") == first.index("trace") - 1
        first.remove("memorisation")
    assert first == list(warmup.TASK_ORDER)


def test_a_failing_task_does_not_stop_the_others(grf, monkeypatch):
    _, data = grf

    def broken(dataset, progress):
        raise RuntimeError("no such model")

    monkeypatch.setitem(warmup.REGISTRY, "broken", broken)
    times = warmup.run([("grf", "broken"), ("grf", "stats")], datasets={"grf": data})
    assert list(times) == ["grf/broken", "grf/stats"]
    assert "no such model" in warmup.read_status()["errors"]["grf/broken"]


@pytest.mark.slow  # needs the durations of the warm-up run
def test_a_page_hears_what_the_warmup_is_computing_and_for_how_long(tiny, monkeypatch):
    data, _ = tiny
    heard = []

    def slow(dataset, progress):
        progress("UNet field at pixel (14, 14)")
        heard.append(warmup.waiting_text("grf", "sensitivity"))
        heard.append(warmup.waiting_text("grf", "samples-slow"))  # another view: not waiting on the warm-up

    monkeypatch.setitem(warmup.REGISTRY, "sensitivity", slow)
    warmup.run([("grf", "sensitivity")], datasets={"grf": data})
    assert "UNet field at pixel (14, 14)" in heard[0] and "took" in heard[0]  # measured by the first warm-up
    assert heard[1] is None
    assert warmup.waiting_text("grf", "sensitivity") is None  # done
