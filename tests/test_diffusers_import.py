"""Importing a diffusers UNet2DModel (issue 25): D(x, sigma) against the network and diffusers' own scheduler
arithmetic by hand, its field against finite differences, and hostile folders refused with one clear sentence."""

from __future__ import annotations

import json
import pickle
import resource
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from locality_core.analysis.fields import autograd_field, noisy_inputs
from locality_core.data import Dataset
from locality_core.denoisers import diffusers_import
from locality_core.denoisers.diffusers_import import NetworkError, import_network, load_network
from locality_core.denoisers.diffusers_unet import timestep_of_sigma
from locality_core.denoisers.registry import DenoiserError, denoiser_cache_id, get_denoiser, get_spec, list_denoisers
from locality_core.denoisers.registry import import_network as register_network

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install diffusers==0.42.1")
from diffusers_nets import save_network, tiny_unet  # noqa: E402  (needs diffusers)

SIDE = 8


def toy(side: int = SIDE, channels: int = 1, name: str = "toy") -> Dataset:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(24, channels, side, side, generator=g) * 2 - 1
    return Dataset.from_tensor(images[:20], test=images[20:], name=name)


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALITY_DATA_DIR", str(tmp_path / "home"))


def by_hand(folder: Path, x0: torch.Tensor, noise: torch.Tensor, t: int, pixel_range=(-1.0, 1.0)):
    """sigma of step t, the noisy y = x0 + sigma noise, and the clean estimate through diffusers alone, float64:
    x_t = sqrt(abar_t) y_net, the network at integer t, `DDPMScheduler.step`'s pred_original_sample."""
    net = diffusers.UNet2DModel.from_pretrained(folder).double()
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder, clip_sample=False)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()  # its values, its formulas, in float64
    lo, hi = pixel_range
    a, b = (hi - lo) / 2, (hi + lo) / 2
    abar = scheduler.alphas_cumprod[t].double()
    sigma_net = torch.sqrt((1 - abar) / abar)
    sigma = float(sigma_net / a)
    y = x0 + sigma * noise
    x_t = abar.sqrt() * (a * y + b)
    with torch.no_grad():
        out = net(x_t, t).sample
        x0_net = scheduler.step(out, t, x_t, generator=torch.Generator().manual_seed(0)).pred_original_sample
    return sigma, y, (x0_net - b) / a


@pytest.mark.parametrize("prediction,schedule", [("epsilon", "linear"), ("sample", "scaled_linear"),
                                                 ("v_prediction", "squaredcos_cap_v2")])
def test_denoiser_equals_the_network_through_diffusers_scheduler(tmp_path, prediction, schedule):
    folder = save_network(tmp_path / "net", prediction, schedule)
    data = toy()
    import_network(folder, "mine", data)
    den = load_network(diffusers_import.network_dir("mine"), data).double()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 1, SIDE, SIDE, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(3, 1, SIDE, SIDE, generator=g, dtype=torch.float64)
    for t in (0, 7, 250, 600, 999):
        sigma, y, expected = by_hand(folder, x0, noise, t)
        with torch.no_grad():
            got = den(y, sigma)
        assert float(den.timesteps(torch.tensor([sigma], dtype=torch.float64))[0]) == pytest.approx(t, abs=1e-9)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert expected.abs().max() > 0.05  # a network output, not zeros


def test_pixel_range_zero_one(tmp_path):
    """A network trained on [0, 1] pixels sees y_net = (y + 1) / 2 at noise sigma / 2."""
    folder = save_network(tmp_path / "net", "epsilon")
    data = toy()
    import_network(folder, "unit", data, pixel_range="0,1")
    den = load_network(diffusers_import.network_dir("unit"), data).double()
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(2, 1, SIDE, SIDE, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(2, 1, SIDE, SIDE, generator=g, dtype=torch.float64)
    for t in (3, 400):
        sigma, y, expected = by_hand(folder, x0, noise, t, (0.0, 1.0))
        with torch.no_grad():
            torch.testing.assert_close(den(y, sigma), expected, rtol=0, atol=1e-6)


def test_timestep_interpolates_in_log_snr_and_clamps():
    abar = np.array([0.9, 0.5, 0.1, 0.01])
    lam = np.log(abar / (1 - abar))
    sigma = lambda lam_: np.exp(-lam_ / 2)  # noqa: E731  sigma = exp(-lambda / 2)
    assert timestep_of_sigma(sigma(lam), lam) == pytest.approx([0, 1, 2, 3], abs=1e-12)
    assert timestep_of_sigma(sigma((lam[1] + lam[2]) / 2), lam) == pytest.approx(1.5)
    assert timestep_of_sigma(sigma(0.75 * lam[2] + 0.25 * lam[3]), lam) == pytest.approx(2.25)
    assert timestep_of_sigma(np.array([1e-6, 1e6]), lam).tolist() == [0.0, 3.0]


def test_field_equals_finite_differences(tmp_path):
    """The autograd field of one noisy image (analysis/fields.py) against central differences of D, float64."""
    folder = save_network(tmp_path / "net", "v_prediction", "squaredcos_cap_v2")
    data = toy()
    import_network(folder, "fd", data)
    den = load_network(diffusers_import.network_dir("fd"), data).double()
    x0, pixel, sigma = data.test[:1].double(), (3, 5), 0.8
    field = autograd_field(den, x0, pixel, [sigma], generator=torch.Generator().manual_seed(3))
    x, _ = noisy_inputs(x0, [sigma], torch.Generator().manual_seed(3))
    h, d = 1e-6, SIDE * SIDE
    steps = torch.eye(d, dtype=torch.float64).reshape(d, 1, SIDE, SIDE) * h
    with torch.no_grad():
        diff = (den(x + steps, sigma) - den(x - steps, sigma))[:, 0, pixel[0], pixel[1]] / (2 * h)
    signed = field.signed_mean[0, 0, 0]
    assert np.abs(signed).max() > 1e-3
    np.testing.assert_allclose(signed, diff.reshape(SIDE, SIDE).numpy(), rtol=0, atol=1e-5 * np.abs(signed).max())


def test_zip_import_gives_the_same_network(tmp_path):
    folder = save_network(tmp_path / "net", "epsilon")
    archive = tmp_path / "net.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in folder.iterdir():
            z.write(f, f"my-model/{f.name}")
    data = toy()
    a = import_network(folder, "a", data)
    b = import_network(archive, "b", data)
    assert a["sha256"] == b["sha256"] and b["source"] == str(archive)


def test_pipeline_layout_finds_the_scheduler_folder(tmp_path):
    """A saved pipeline: unet/ and scheduler/ side by side."""
    folder = save_network(tmp_path / "pipe" / "unet", "sample")
    (tmp_path / "pipe" / "scheduler").mkdir()
    (folder / "scheduler_config.json").rename(tmp_path / "pipe" / "scheduler" / "scheduler_config.json")
    assert import_network(tmp_path / "pipe", "p", toy())["prediction_type"] == "sample"


# ---------------------------------------------------------------- hostile folders

class Trap:
    """Unpickling this creates a file: proof that a pickle was (never) opened."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_pickle_weights_are_refused_unopened(tmp_path):
    folder = save_network(tmp_path / "net", safe=False)
    assert (folder / "diffusion_pytorch_model.bin").is_file() and not any(folder.glob("*.safetensors"))
    marker = tmp_path / "pwned"
    (folder / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Trap(marker)))
    with pytest.raises(NetworkError, match="pickle file .* arbitrary code .* safetensors"):
        import_network(folder, "bad", toy())
    assert not marker.exists() and not diffusers_import.list_networks()


def test_a_config_that_would_allocate_gigabytes_is_refused_before_anything_is_allocated(tmp_path):
    folder = save_network(tmp_path / "net")
    config = json.loads((folder / "config.json").read_text())
    config.update(block_out_channels=[4096, 8192], layers_per_block=8, norm_num_groups=32)  # 45.6 G parameters
    (folder / "config.json").write_text(json.dumps(config))
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.process_time()
    with pytest.raises(NetworkError, match=r"parameters: loading it needs about .* import a smaller network"):
        import_network(folder, "huge", toy())
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200 and time.process_time() - start < 30


@pytest.mark.parametrize("channels,side,match", [(3, SIDE, "3-channel images but toy has 1"),
                                                 (1, 16, "built for 16 pixels .* toy has 8x8")])
def test_mismatched_channels_or_resolution_are_refused(tmp_path, channels, side, match):
    folder = save_network(tmp_path / "net", side=side, channels=channels)
    with pytest.raises(NetworkError, match=match):
        import_network(folder, "wrong", toy())


def test_missing_scheduler_config_is_refused(tmp_path):
    folder = save_network(tmp_path / "net")
    (folder / "scheduler_config.json").unlink()
    with pytest.raises(NetworkError, match="no scheduler_config.json .* noise schedule and the prediction type"):
        import_network(folder, "nosched", toy())


def test_conditional_networks_are_refused(tmp_path):
    folder = save_network(tmp_path / "classes", num_class_embeds=10)
    with pytest.raises(NetworkError, match="class-conditional .* unconditional denoisers D"):
        import_network(folder, "cls", toy())
    folder = save_network(tmp_path / "text")
    config = json.loads((folder / "config.json").read_text())
    config.update(_class_name="UNet2DConditionModel", cross_attention_dim=32,
                  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(NetworkError, match="text-conditional .* prompt"):
        import_network(folder, "txt", toy())


def test_weights_of_another_architecture_are_refused(tmp_path):
    folder = save_network(tmp_path / "net")
    other = save_network(tmp_path / "other", block_out_channels=(8, 8))
    (other / "diffusion_pytorch_model.safetensors").replace(folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(NetworkError, match="does not fit config.json|needs a float"):
        import_network(folder, "mixed", toy())


def test_tampered_or_foreign_imports_are_refused_at_load(tmp_path):
    folder = save_network(tmp_path / "net")
    data = toy()
    import_network(folder, "mine", data)
    directory = diffusers_import.network_dir("mine")
    with pytest.raises(NetworkError, match="imported for 'toy'.* not for 'other'"):
        load_network(directory, toy(name="other"))
    weights = directory / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(NetworkError, match="does not match the sha256"):
        load_network(directory, data)


def test_without_diffusers_the_message_says_what_to_install(monkeypatch, tmp_path):
    folder = save_network(tmp_path / "net")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(NetworkError, match="pip install"):
        diffusers_import.require_diffusers()
    with pytest.raises(NetworkError, match=r"optional package diffusers: pip install 'locality-explorer\[diffusers\]'"):
        import_network(folder, "x", toy())
    ok, why = get_spec("diffusers-unet").availability(toy(28, name="fashion-mnist"))  # shipped, but not usable
    assert not ok and "pip install" in why


# ---------------------------------------------------------------- the registry and the command line

def test_imported_network_is_a_registry_entry_with_a_hash_in_its_cache_id(tmp_path):
    data = toy()
    with pytest.raises(DenoiserError, match="built-in denoiser"):
        register_network(save_network(tmp_path / "n0"), "unet", data)
    register_network(save_network(tmp_path / "n1", seed=1), "own", data)
    first = denoiser_cache_id("own", data)
    assert "own" in [s.name for s in list_denoisers()] and get_spec("own").network
    assert get_spec("own").availability(data)[0] and not get_spec("own").availability(toy(name="x"))[0]
    d1 = get_denoiser("own", data)
    tiny_unet(seed=5).save_pretrained(tmp_path / "n1")  # other weights under the same name
    register_network(tmp_path / "n1", "own", data)
    assert denoiser_cache_id("own", data) != first
    x = torch.rand(2, 1, SIDE, SIDE)
    assert not torch.allclose(get_denoiser("own", data)(x, 1.0), d1(x, 1.0))


def test_cli_import_model_then_field(tmp_path, capsys):
    from locality_core.cli import main

    folder = save_network(tmp_path / "net", side=28)
    assert main(["import-model", "cli-net", str(folder), "--dataset", "mnist-5k"]) == 0
    assert "--denoiser cli-net" in capsys.readouterr().out
    out = tmp_path / "f.npy"
    assert main(["field", "mnist-5k", "--denoiser", "cli-net", "--pixel", "14,14", "--sigmas", "0.5,2",
                 "--n", "2", "--out", str(out)]) == 0
    assert np.load(out).shape == (2, 28, 28)
    assert main(["import-model", "x", str(folder), "--dataset", "mnist-5k",
                 "--pixel-range", "0,1"]) == 0
    (folder / "scheduler_config.json").unlink()
    assert main(["import-model", "y", str(folder), "--dataset", "mnist-5k"]) == 2
    assert "scheduler_config.json" in capsys.readouterr().err
