"""The UNet wrapper, training loop, checkpoints and safe loading (tiny runs; the quality bar is elsewhere)."""

from __future__ import annotations

import json

import pytest
import torch

from locality_core.data.base import Dataset, fingerprint
from locality_core.denoisers.models import ModelError, find_weights, load_unet, load_weights
from locality_core.denoisers.training import TrainConfig, learning_rate, train
from locality_core.denoisers.unet import EDMDenoiser, UNetConfig


def tiny_dataset(name="tiny", seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    train_x = torch.rand(64, 1, 8, 8, generator=g) * 2 - 1
    test_x = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    return Dataset(name, train_x, test_x, fingerprint(train_x, test_x, recipe=name), "tiny random images")


TINY = UNetConfig(channels=1, image_size=8, base=8, mults=(1, 2), blocks=1, emb_dim=16, groups=4)


def test_config_validation_and_roundtrip():
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(image_size=30, mults=(1, 2, 2))
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({"base": 8, "bogus": 1})
    assert UNetConfig.from_dict(TINY.to_dict()) == TINY


def test_denoiser_contract_and_preconditioning():
    model = EDMDenoiser(TINY, mean=torch.full((1, 8, 8), 0.3))
    x = torch.randn(5, 1, 8, 8)
    out = model(x, 1.0)
    assert out.shape == x.shape
    # a fresh model has a zero output layer, so D = mu + c_skip (x - mu) exactly
    sd = TINY.sigma_data
    for sigma in (0.01, 1.0, 80.0):
        c_skip = sd**2 / (sigma**2 + sd**2)
        torch.testing.assert_close(model(x, sigma), 0.3 + c_skip * (x - 0.3), atol=1e-6, rtol=1e-5)
    per_sample = model(x, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))
    torch.testing.assert_close(per_sample[2:3], model(x[2:3], 0.3))
    with pytest.raises(ValueError, match="sigma"):
        model(x, torch.ones(3))


def test_batch_elements_never_mix():
    """GroupNorm keeps samples independent: the Jacobian of output 0 w.r.t. input 1 is zero."""
    torch.manual_seed(0)
    model = EDMDenoiser(TINY)
    for p in model.parameters():  # make the output layer non-zero so the check means something
        p.data.normal_(0, 0.1)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    model(x, 1.0)[0].sum().backward()
    assert x.grad[1].abs().max() == 0 and x.grad[0].abs().max() > 0


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=1000, lr=1e-3, warmup=100, decay_share=0.3)
    assert learning_rate(0, cfg) == pytest.approx(1e-5)
    assert learning_rate(500, cfg) == pytest.approx(1e-3)
    assert learning_rate(1000, cfg) == pytest.approx(1e-4)


def test_train_resume_export_and_safe_loading(tmp_path, monkeypatch):
    ds = tiny_dataset()
    out = tmp_path / "models" / ds.name
    cfg = TrainConfig(steps=3, batch=8, warmup=1)
    train(ds, out, train_config=cfg, unet_config=TINY, evaluate=False, progress=False)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3
    with pytest.raises(FileExistsError):
        train(ds, out, train_config=cfg, unet_config=TINY, evaluate=False, progress=False)
    train(ds, out, steps=5, resume=True, evaluate=False, progress=False)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 5
    card = json.loads((out / "card.json").read_text())
    assert card["steps"] == 5 and card["fingerprint"] == ds.fingerprint

    monkeypatch.setenv("LOCALITY_MODEL_DIR", str(tmp_path / "models"))
    assert find_weights(ds.name) == out / "unet.pt"
    model = load_unet(ds)
    assert model(ds.test[:2], 0.5).shape == (2, 1, 8, 8)
    other = tiny_dataset(seed=1)
    with pytest.raises(ModelError, match="fingerprint"):
        load_weights(out / "unet.pt", other)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="is not a weights file saved by `locality train`"):
        load_weights(tmp_path / "bad.pt", ds)


def test_resume_refuses_other_data(tmp_path):
    ds = tiny_dataset()
    train(ds, tmp_path, train_config=TrainConfig(steps=1, batch=4), unet_config=TINY, evaluate=False, progress=False)
    with pytest.raises(ValueError, match="another version"):
        train(tiny_dataset(seed=2), tmp_path, resume=True, evaluate=False, progress=False)


def test_interrupted_run_saves_its_step_and_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Ctrl-C after step 2 leaves a checkpoint at step 2; resuming gives the weights of an uninterrupted run."""
    from locality_core.denoisers import training

    ds, cfg = tiny_dataset(), TrainConfig(steps=4, batch=8, warmup=1)
    whole = train(ds, tmp_path / "whole", train_config=cfg, unet_config=TINY, evaluate=False, progress=False)
    step = training.train_step

    def interrupt_at_2(run, *args):
        if run.step == 2:
            raise KeyboardInterrupt
        return step(run, *args)

    monkeypatch.setattr(training, "train_step", interrupt_at_2)
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 2.*--resume"):
        train(ds, tmp_path / "cut", train_config=cfg, unet_config=TINY, evaluate=False, progress=False)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(training, "train_step", step)
    resumed = train(ds, tmp_path / "cut", resume=True, evaluate=False, progress=False)
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
