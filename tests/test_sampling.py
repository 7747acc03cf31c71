"""Samplers: the DDIM step, the shared initial noise, and the Gaussian oracle (exact denoiser, known covariance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from locality_core.analysis.sampling import initial_noise, sample_ddim, sample_many, sample_trajectories
from locality_core.denoisers.wiener import WienerDenoiser
from locality_core.schedule import ddim_sigmas, karras_sigmas
from locality_core.stats.covariance import DataStats


def test_initial_noise_scale_and_seed():
    x = initial_noise(4000, (1, 4, 4), seed=3, sigma_start=60.82)
    assert x.shape == (4000, 1, 4, 4) and x.dtype == torch.float32
    assert float(x.std()) == pytest.approx(math.sqrt(1 + 60.82**2), rel=0.02)
    assert torch.equal(x, initial_noise(4000, (1, 4, 4), seed=3, sigma_start=60.82))
    assert not torch.equal(x, initial_noise(4000, (1, 4, 4), seed=4, sigma_start=60.82))


def test_ddim_step_formula_and_callback():
    """A denoiser that always answers c: x_next = c + (sigma_next / sigma)(x - c), and the last step returns c."""
    c = torch.full((2, 1, 3, 3), 0.25)
    seen = []
    x = torch.ones(2, 1, 3, 3)
    sigmas = [4.0, 2.0, 0.5]
    out = sample_ddim(lambda x, s: c, x, sigmas, callback=seen.append)
    assert torch.equal(out, c)
    assert [s["step"] for s in seen] == [0, 1, 2] and [s["sigma"] for s in seen] == sigmas
    assert set(seen[0]) == {"step", "sigma", "t", "x", "x0_hat"}
    assert torch.allclose(seen[1]["x"], c + 0.5 * (x - c)) and torch.allclose(seen[2]["x"], c + 0.125 * (x - c))
    assert seen[0]["t"] == pytest.approx(float(np.interp(np.log(4.0), *_log_grid())), abs=0.01)


def _log_grid():
    from locality_core.schedule import _SIGMAS

    return np.log(_SIGMAS), np.arange(len(_SIGMAS), dtype=float)


def test_sampler_runs_without_grad():
    seen = []
    sample_ddim(lambda x, s: (seen.append(torch.is_grad_enabled()), x * 0.5)[1], torch.ones(1, 1, 2, 2), [1.0, 0.1])
    assert seen == [False, False]


def _gaussian(d_side=4, seed=0):
    """A Gaussian with known mean and covariance on (1, d_side, d_side) images, as DataStats."""
    d = d_side * d_side
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.geomspace(1.0, 0.003, d)
    cov = (U * lam) @ U.T
    mean = 0.3 * rng.standard_normal(d)
    return DataStats(mean, cov, lam, U, 10**6, (1, d_side, d_side), "gaussian-oracle")


def _ddim_prediction(stats: DataStats, sigmas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance that DDIM (eta = 0) with the exact denoiser produces from z * sqrt(1 + s0^2).

    Per principal component the sampler is linear around the mean: x_end - mu = g (x_start - mu), with
    g = prod (lam + s s') / (lam + s^2) over the steps times the final gain lam / (lam + s_last^2).
    """
    lam, s = stats.eigvals, np.asarray(sigmas)
    g = np.ones_like(lam)
    for a, b in zip(s[:-1], s[1:], strict=True):
        g *= (lam + a * b) / (lam + a * a)
    g *= lam / (lam + s[-1] ** 2)
    U = stats.eigvecs
    mean = stats.mean - U @ (g * (U.T @ stats.mean))           # the start has mean 0, not mu
    return mean, (U * (g**2 * (1 + s[0] ** 2))) @ U.T


def _sample_cov(samples: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    a = samples.flatten(1).double().numpy()
    return a.mean(0), np.cov(a, rowvar=False)


def _within_sampling_error(emp: np.ndarray, want: np.ndarray, n: int, k: float = 5.0) -> bool:
    """|emp - want| <= k standard errors of a sample covariance (var = (S_ii S_jj + S_ij^2) / n)."""
    se = np.sqrt((np.outer(np.diag(want), np.diag(want)) + want**2) / n)
    return bool((np.abs(emp - want) <= k * se + 1e-12).all())


def test_ddim_with_the_exact_gaussian_denoiser_gives_the_predicted_covariance():
    """10 reference steps: the sampler lands exactly on the covariance its step formula predicts (and the
    mean on the data mean), within sampling error."""
    stats, n = _gaussian(), 20000
    denoiser = WienerDenoiser.from_stats(stats)
    sigmas = ddim_sigmas(10)
    samples = sample_ddim(denoiser, initial_noise(n, stats.shape, 0, sigmas[0], dtype=torch.float64), sigmas)
    mean, cov = _sample_cov(samples)
    want_mean, want_cov = _ddim_prediction(stats, sigmas)
    assert _within_sampling_error(cov, want_cov, n)
    assert np.abs(mean - want_mean).max() < 5 * np.sqrt(np.diag(want_cov).max() / n)
    assert np.abs(want_cov - stats.cov).max() > 0.1 * stats.eigvals.max()     # 10 steps: visibly not Sigma


def test_ddim_with_many_steps_reproduces_the_data_covariance():
    """300 steps: the discretisation bias (about 2.5 % of each variance) is within the tolerance of five
    standard errors of 10,000 samples (7 %); the 10-step covariance above is far outside it."""
    stats, n = _gaussian(seed=1), 10000
    denoiser = WienerDenoiser.from_stats(stats)
    sigmas = karras_sigmas(300, sigma_min=0.001, sigma_max=100.0)
    predicted = _ddim_prediction(stats, sigmas)[1]
    assert np.abs(predicted - stats.cov).max() < 0.03 * stats.eigvals.max()
    samples = sample_ddim(denoiser, initial_noise(n, stats.shape, 1, sigmas[0], dtype=torch.float64), sigmas)
    mean, cov = _sample_cov(samples)
    assert _within_sampling_error(cov, stats.cov, n, k=5.0)
    assert np.abs(mean - stats.mean).max() < 0.05


def test_trajectories_and_shared_noise():
    stats = _gaussian()
    w = WienerDenoiser.from_stats(stats)
    sigmas = ddim_sigmas(5)
    x = initial_noise(3, stats.shape, 7, sigmas[0])
    traj = sample_trajectories(w, x, sigmas)
    assert traj["x"].shape == (5, 3, 1, 4, 4) and traj["x0_hat"].shape == (5, 3, 1, 4, 4)
    assert torch.equal(traj["x"][0], x) and torch.allclose(traj["x0_hat"][-1], sample_ddim(w, x, sigmas))
    out = sample_many({"a": w, "b": w, "half": lambda x, s: 0.5 * w(x, s)}, 5, 7, sigmas, shape=stats.shape,
                      batch_size=2)
    assert torch.equal(out["a"], out["b"]) and out["a"].shape == (5, 1, 4, 4)
    assert torch.allclose(out["a"][:3], traj["x0_hat"][-1])                    # same seed, same start
    assert not torch.allclose(out["half"], out["a"])


# ---------------------------------------------------------------- the CLI on a tiny data set with a 2-step UNet

@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """A registered 12x12 data set, a 2-step UNet for it in a temporary model folder, a temporary cache."""
    from locality_core.data import Dataset, DatasetSpec
    from locality_core.data.registry import REGISTRY
    from locality_core.denoisers.training import train

    g = torch.Generator().manual_seed(0)
    z = torch.randn(130, 1, 12, 12, generator=g)
    images = torch.tanh(z + torch.roll(z, 1, -1) + torch.roll(z, 1, -2))
    data = Dataset("tiny-sampling-test", images[:110], images[110:], "tiny-sampling-test-v1", "tiny test data")
    root = tmp_path_factory.mktemp("world")
    mp = pytest.MonkeyPatch()
    mp.setitem(REGISTRY, data.name, DatasetSpec(data.name, "tiny", "tiny", lambda: data, lambda: (True, "test"),
                                                shape=(1, 12, 12)))
    mp.setenv("LOCALITY_MODEL_DIR", str(root / "models"))
    mp.setenv("LOCALITY_DATA_DIR", str(root / "data"))
    train(data, root / "models" / data.name, steps=2, evaluate=False, progress=False)
    yield data, root
    mp.undo()


def _run(argv: list[str]) -> int:
    import argparse

    from locality_core.cli.sampling_commands import add_commands

    parser = argparse.ArgumentParser(prog="locality")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_sample_writes_grid_and_json(tiny_world, tmp_path, capsys):
    import json

    from PIL import Image

    data, _ = tiny_world
    out = tmp_path / "grid.png"
    code = _run(["sample", data.name, "--denoisers", "unet,analytical,wiener,optimal,ls,els", "--n", "3",
                 "--steps", "3", "--out", str(out), "--json", "-"])
    text = capsys.readouterr().out
    assert code == 0
    report = json.loads(text[text.index("{"):])
    assert set(report["denoisers"]) == {"unet", "analytical", "wiener", "optimal", "ls", "els"}
    optimal = report["denoisers"]["optimal"]
    assert len(optimal["nearest_distance"]) == 3 and "r2" in optimal["vs_unet"]
    assert min(optimal["nearest_distance"]) < 0.05          # the optimal denoiser memorises
    image = Image.open(out)
    assert image.size[1] > 7 * 12 * 3                        # 6 denoisers + the nearest-image row


def test_cli_compare_prints_json_with_intervals_and_the_markdown_table_from_it(tiny_world, capsys):
    import json

    from locality_core.cli.sampling_commands import COMPARE_N, compare_markdown

    assert COMPARE_N >= 32
    data, _ = tiny_world
    assert _run(["compare", data.name, "--denoisers", "wiener,optimal,analytical", "--n", "3", "--steps", "2",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["rows"]
    assert report["n"] == 3 and [r["denoiser"] for r in rows] == ["wiener", "optimal", "analytical"]
    for r in rows:
        for key in ("r2_same_input", "r2_trajectory", "pearson_trajectory", "mse_same_input", "mse_trajectory"):
            iv = r[key]
            assert iv["n"] == 3 and iv["lo"] <= iv["mean"] <= iv["hi"]
            assert r[f"{key}_vs_best"]["lo"] <= r[f"{key}_vs_best"]["mean"] <= r[f"{key}_vs_best"]["hi"]
        assert -1.0 <= r["pearson_trajectory"]["mean"] <= 1.0 and r["mse_same_input"]["mean"] >= 0
    rank = report["rankings"]["r2_trajectory"]
    assert rank["vs_best"][rank["best"]]["mean"] == 0.0 and len(rank["steps"]) == 2
    assert _run(["compare", data.name, "--denoisers", "wiener,optimal,analytical", "--n", "3", "--steps", "2",
                 "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == compare_markdown(report)   # cached items: the same numbers


def test_cli_calibrate_saves_a_schedule_that_ls_then_uses(tiny_world, capsys):
    import json

    from locality_core.denoisers.patches import load_calibrated
    from locality_core.denoisers.registry import denoiser_cache_id

    data, root = tiny_world
    assert _run(["calibrate", data.name, "--kind", "both", "--sizes", "3,23", "--n", "2", "--steps", "2",
                 "--n-train", "20", "--json"]) == 0
    blob = json.loads(capsys.readouterr().out)
    assert blob["path"].startswith(str(root)) and len(blob["ls"]["sizes"]) == 2
    assert load_calibrated(data, "els").sizes == tuple(blob["els"]["sizes"])
    assert str(tuple(blob["ls"]["sizes"])) in denoiser_cache_id("ls", data)


def test_cli_errors_are_one_line(tiny_world, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALITY_MODEL_DIR", str(tmp_path / "empty"))
    data, _ = tiny_world
    from locality_core.denoisers.models import find_weights

    if find_weights(data.name) is not None:   # a user model folder may hold one; nothing to test then
        pytest.skip("a UNet for the test data exists outside the temporary folder")
    assert _run(["compare", data.name, "--n", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "locality train" in err and "Traceback" not in err
    assert _run(["sample", "no-such-dataset"]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # an unknown name is refused while the arguments are parsed
        _run(["sample", data.name, "--denoisers", "nope"])
    assert exit_.value.code == 2 and "unknown denoiser 'nope'" in capsys.readouterr().err


def test_a_run_sampled_by_the_cli_is_a_hit_in_the_app_and_back(tiny_world, tmp_path, monkeypatch):
    """`locality sample` and the Samples page share one cache entry per sampling run: whichever samples first,
    the other reads the same samples and computes nothing."""
    import json

    pytest.importorskip("streamlit")
    from locality_core.analysis.metrics import nearest_training
    from locality_core.store.cache import ArrayCache
    from locality_core.views.refs import DataRef
    from ui import sample_rows

    data, _ = tiny_world
    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(tmp_path / "cache"))  # cold
    names, n, steps = ("wiener", "optimal"), 3, 3
    cli = ["sample", data.name, "--denoisers", ",".join(names), "--n", str(n), "--steps", str(steps),
           "--out", str(tmp_path / "grid.png"), "--json", str(tmp_path / "metrics.json")]

    def refuse(self, key, arrays):
        raise AssertionError(f"computed again: {key}")

    assert _run(cli + ["--seed", "1"]) == 0  # the CLI samples, the app reads
    with monkeypatch.context() as m:
        m.setattr(ArrayCache, "set", refuse)
        app = {name: sample_rows.sample(DataRef.of(data.name), name, n, steps, 1) for name in names}
    report = json.loads((tmp_path / "metrics.json").read_text())["denoisers"]
    for name in names:
        assert app[name]["x0_hat"].shape == (steps, n, *data.shape)
        _, dist = nearest_training(torch.from_numpy(app[name]["x0_hat"][-1]), data.train)
        np.testing.assert_allclose(dist.numpy(), report[name]["nearest_distance"], rtol=1e-6)

    for name in names:  # the app samples, the CLI reads
        sample_rows.sample(DataRef.of(data.name), name, n, steps, 2)
    with monkeypatch.context() as m:
        m.setattr(ArrayCache, "set", refuse)
        assert _run(cli + ["--seed", "2"]) == 0


def test_cached_trajectory_keeps_denoiser_options_apart(tmp_path):
    """The Samples page's per-batch analytical option is its own cache entry with its own samples (the
    reference code's per-batch softmax), and the default options share the warm-up's entry."""
    from locality_core.analysis.sampling import cached_trajectory, trajectory_key
    from locality_core.data import load_dataset
    from locality_core.store.cache import ArrayCache

    data = load_dataset("grf", n_train=600, n_test=8)
    cache = ArrayCache(tmp_path / "cache")
    exact_key = trajectory_key(data, "analytical", 2, 3, 0)
    assert trajectory_key(data, "analytical", 2, 3, 0, {}) == exact_key
    assert trajectory_key(data, "analytical", 2, 3, 0, {"batch_normalised": True}) != exact_key
    exact = cached_trajectory(data, "analytical", 2, 3, 0, cache=cache)
    batched = cached_trajectory(data, "analytical", 2, 3, 0, cache=cache, options={"batch_normalised": True})
    assert exact["x0_hat"].shape == batched["x0_hat"].shape
    assert not np.allclose(exact["x0_hat"], batched["x0_hat"])  # 600 images: two batches of the reference's 512


def test_paste_grid_puts_each_upscaled_tile_at_its_corner():
    """The one image-grid renderer (CLI grids, `locality sample`'s PNG, the app's PNG downloads)."""
    from PIL import Image

    from locality_core.cli.sampling_commands import sample_grid
    from locality_core.render import paste_grid

    tiles = [[Image.fromarray(np.full((2, 3), 40 * (3 * i + j), np.uint8)) for j in range(3)] for i in range(2)]
    canvas = Image.new("RGB", (40, 20), "white")
    corners = paste_grid(canvas, tiles, (1, 2), (6, 4), 2)
    assert corners == [[(1, 2), (9, 2), (17, 2)], [(1, 8), (9, 8), (17, 8)]]
    a = np.asarray(canvas)
    assert (a[8:12, 17:23] == 40 * 5).all() and (a[12, 17:23] == 255).all() and (a[2:6, 7:9] == 255).all()
    images = torch.full((2, 1, 3, 3), 1.0)  # row "a" black, row "b" white, tiles 6 px and 4 px apart from x = 154
    grid = np.asarray(sample_grid({"a": -images, "b": images}, scale=2))
    assert (grid[4:10, 154:160] == 0).all() and (grid[4:10, 164:170] == 0).all() and (grid[4:10, 160:164] == 255).all()
    assert (grid[14:20, 164:170] == 255).all() and grid.shape == (24, 150 + 2 * 10 + 4, 3)
