"""Memorisation to generalisation: disjoint subsets, subset networks found and checked, the metrics against
hand-computed cases, the disk cache, the CLI, and the page on tiny synthetic networks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from locality_core.analysis import generalisation
from locality_core.data import DatasetError, load_dataset
from locality_core.data.subsets import subset_indices, subset_tag, training_subset
from locality_core.denoisers.models import ModelError, load_subset_unet, load_weights, save_weights, subset_family
from locality_core.denoisers.unet import EDMDenoiser, UNetConfig
from locality_core.store.cache import ArrayCache

ROOT = Path(__file__).resolve().parent.parent
TINY = {"n_train": 600, "n_test": 64}
SIZES = (4, 16)


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("grf", **TINY)


def save_subset_net(root: Path, data, n: int, split: str, seed: int = 0) -> Path:
    """A tiny untrained UNet saved as the network of subset (n, split) of ``data`` under ``root``."""
    subset = training_subset(data, n, split)
    torch.manual_seed(seed)
    model = EDMDenoiser(UNetConfig(base=8, mults=(1, 2), blocks=1, emb_dim=16, groups=4))
    torch.nn.init.normal_(model.net.conv_out.weight, std=0.05)
    out = root / data.name / "subsets" / subset_tag(n, split)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / "unet.pt", model.config, model.state_dict(), fingerprint=subset.fingerprint, dataset=data.name)
    return out / "unet.pt"


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALITY_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LOCALITY_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "models"


# ---------------------------------------------------------------- subsets

def test_subsets_are_disjoint_nested_and_reproducible():
    a, b = subset_indices(1000, 100, "A"), subset_indices(1000, 100, "B")
    assert len(set(a.tolist()) | set(b.tolist())) == 200
    assert torch.equal(a, subset_indices(1000, 100, "A"))
    assert set(subset_indices(1000, 10, "A").tolist()) <= set(a.tolist())  # one permutation for every N
    with pytest.raises(DatasetError, match="half the training set"):
        subset_indices(1000, 501, "A")
    with pytest.raises(DatasetError, match="A or B"):
        subset_indices(1000, 10, "C")


def test_subset_round_trips_through_card_and_fingerprint(model_dir, tmp_path):
    from locality_core.cli.main import main

    out = model_dir / "grf" / "subsets" / "n5-A"
    assert main(["train", "grf", "--subset", "5", "--split", "A", "--steps", "1", "--base", "8", "--no-eval",
                 "--threads", "1", "--out", str(out)]) == 0
    card = json.loads((out / "card.json").read_text())
    data = load_dataset("grf")
    assert card["subset"]["subset"] == 5 and card["subset"]["split"] == "A"
    assert card["fingerprint"] == training_subset(data, 5, "A").fingerprint
    assert "--subset 5 --split A" in card["command"]
    assert load_subset_unet(data, 5, "A") is not None
    with pytest.raises(ModelError, match="the data differ"):  # A's weights refused for B
        load_weights(out / "unet.pt", training_subset(data, 5, "B"))
    with pytest.raises(ModelError, match="train_subsets.sh"):
        load_subset_unet(data, 5, "B")
    assert subset_family("grf") == []  # B missing: no pair


# ---------------------------------------------------------------- metrics

def test_pair_row_by_hand():
    a = {"samples": np.array([[[[1.0, 0.0], [0.0, 0.0]]]], np.float32), "dist_own": np.array([0.0]),
         "dist_other": np.array([2.0]), "heldout_nn": np.array(4.0), "train_mse": np.array([0.1]),
         "heldout_mse": np.array([0.3])}
    b = {**a, "samples": np.array([[[[0.0, 1.0], [0.0, 0.0]]]], np.float32), "dist_own": np.array([1.0]),
         "heldout_nn": np.array(2.0), "train_mse": np.array([0.3])}
    row = generalisation.pair_row(7, a, b, torch.zeros(1, 2, 2), train_nn=2.0, mse_timesteps=(100,))
    assert row["cosine"] == 0.0 and row["mse_ab"] == 0.5  # orthogonal; (1 + 1) / 4 pixels
    assert row["dist_own"] == 0.5 and row["dist_own_max"] == 1.0 and row["dist_other"] == 2.0
    assert row["heldout_nn"] == 3.0 and row["dist_own_rel"] == 0.25 and row["dist_own_vs_heldout"] == 0.5 / 3
    assert row["train_mse_t100"] == pytest.approx(0.2) and row["heldout_mse_t100"] == pytest.approx(0.3)
    assert row["n_seeds"] == 1 and row["n_samples"] == 2 and row["cosine_lo"] == row["cosine_hi"] == 0.0
    assert row["copies"] == 1 and row["max_copy_distance"] == 1.0  # dist_own 0 and 1 against 0.5 x 2.0
    # centring on the mean: two images that differ only from a shared background are orthogonal, not similar
    bg = torch.full((1, 2, 2), -1.0)
    xa, xb = (bg + torch.from_numpy(side["samples"]) for side in (a, b))
    assert float(generalisation.centred_cosine(xa, xb, bg)[0]) == 0.0


def test_typical_nn_distance_against_brute_force():
    x = torch.randn(50, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    d = torch.cdist(x.flatten(1).double(), x.flatten(1).double())
    d.fill_diagonal_(float("inf"))
    expected = float(d.min(1).values.median())
    assert generalisation.typical_nn_distance(x, n_probes=50) == pytest.approx(expected, rel=1e-9)


class NearestCopy(torch.nn.Module):
    """Returns the training image nearest to its input: memorises by construction."""

    def __init__(self, train):
        super().__init__()
        self.train_ = train

    def forward(self, x, sigma):
        from locality_core.analysis.metrics import nearest_training

        return self.train_[nearest_training(x, self.train_)[0]]


def test_a_copying_denoiser_memorises_and_a_shared_one_generalises(tiny):
    mean = tiny.train.mean(0)
    own = {s: training_subset(tiny, 8, s).train for s in "AB"}
    kw = dict(n_samples=6, steps=3, n_eval=8)
    copy = {s: generalisation.side_arrays(NearestCopy(own[s]), own[s], own["B" if s == "A" else "A"], tiny.test, **kw)
            for s in "AB"}
    for s in "AB":
        assert np.allclose(copy[s]["dist_own"], 0.0, atol=1e-4)  # every sample is a training image
        assert (copy[s]["dist_other"] > 1.0).all()
        assert copy[s]["train_mse"][0] < 1e-10  # at t = 100 its own images come back exactly
        assert (copy[s]["train_mse"] < copy[s]["heldout_mse"]).all()
    row = generalisation.pair_row(8, copy["A"], copy["B"], mean,
                                  train_nn=generalisation.typical_nn_distance(tiny.train))
    assert row["cosine"] < 0.5 and row["dist_own"] < 1e-4 and row["dist_other"] > 1.0

    from locality_core.denoisers.wiener import WienerDenoiser

    shared = WienerDenoiser().fit(tiny)  # the same function for A and B: identical samples
    same = {s: generalisation.side_arrays(shared, own[s], own["B" if s == "A" else "A"], tiny.test, **kw) for s in "AB"}
    row = generalisation.pair_row(8, same["A"], same["B"], mean, train_nn=1.0)
    assert row["cosine"] == pytest.approx(1.0) and row["mse_ab"] == pytest.approx(0.0, abs=1e-12)
    assert row["dist_own"] > 1.0


def test_more_seeds_compute_only_the_new_samples_each_from_its_own_seed(tiny, tmp_path):
    """The CLI's 64 seeds after the page's 16: the first samples come from the cache, the new ones from their own
    noise seed (checked against sampling that seed alone), and the evaluation is not repeated."""
    from locality_core.analysis.sampling import initial_noise, sample_ddim
    from locality_core.denoisers.wiener import WienerDenoiser
    from locality_core.schedule import ddim_sigmas

    own = {s: training_subset(tiny, 8, s).train for s in "AB"}
    wiener = WienerDenoiser().fit(tiny)
    calls = []

    def counted(x, sigma):
        calls.append(len(x))
        return wiener(x, sigma)

    kw = dict(steps=3, n_eval=4, ids=("tiny", "wiener"), cache=ArrayCache(tmp_path))
    few = generalisation.side_arrays(counted, own["A"], own["B"], tiny.test, n_samples=2, **kw)
    calls.clear()
    more = generalisation.side_arrays(counted, own["A"], own["B"], tiny.test, n_samples=5, **kw)
    assert sum(calls) == 3 * 3                      # 3 new seeds x 3 DDIM steps; no evaluation again
    np.testing.assert_array_equal(more["samples"][:2], few["samples"])
    np.testing.assert_array_equal(more["train_mse"], few["train_mse"])
    sigmas = ddim_sigmas(3)
    alone = sample_ddim(wiener, initial_noise(1, tuple(tiny.shape), 4, sigmas[0]), sigmas)
    np.testing.assert_allclose(more["samples"][4], alone[0].numpy(), atol=1e-6)


# ---------------------------------------------------------------- the table, cached

@pytest.mark.slow  # 11-20 s on the shared 2-core machine
def test_table_is_computed_once_and_keyed_on_the_weights(tiny, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(generalisation, "PAGE_SAMPLES", 4)
    for n in SIZES:
        for s in "AB":
            save_subset_net(model_dir, tiny, n, s)
    assert subset_family("grf") == list(SIZES) and generalisation.family_sizes(tiny) == list(SIZES)
    cache = ArrayCache(tmp_path / "cache")
    calls = []
    build = generalisation.build_denoiser
    monkeypatch.setattr(generalisation, "build_denoiser", lambda *a: calls.append(a) or build(*a))
    assert not generalisation.is_cached(tiny, "unet", cache=cache)
    progress = []
    rows = generalisation.table(tiny, "unet", cache=cache, progress=lambda f, t: progress.append(f))
    assert [r["n"] for r in rows] == list(SIZES) and len(calls) == 4
    assert progress[-1] == 1.0 and all(0 <= f <= 1 for f in progress)
    assert generalisation.is_cached(tiny, "unet", cache=cache)
    assert generalisation.table(tiny, "unet", cache=cache) == rows and len(calls) == 4  # from the disk cache
    save_subset_net(model_dir, tiny, 4, "A", seed=1)  # new weights: that side is recomputed
    assert not generalisation.is_cached(tiny, "unet", cache=cache)
    generalisation.table(tiny, "unet", cache=cache)
    assert len(calls) == 5


@pytest.mark.slow  # 11-20 s on the shared 2-core machine
def test_precompute_covers_networks_and_analytical(tiny, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(generalisation, "PAGE_SAMPLES", 2)
    monkeypatch.setattr(generalisation, "N_EVAL", 4)
    for s in "AB":
        save_subset_net(model_dir, tiny, 4, s)
    cache = ArrayCache(tmp_path / "cache")
    out = generalisation.precompute(tiny, cache=cache)
    assert set(out) == {"unet", "analytical"} and [r["n"] for r in out["analytical"]] == [4]
    assert generalisation.is_cached(tiny, "analytical", cache=cache)


# ---------------------------------------------------------------- CLI and page

def test_cli_json_one_row_per_n(tiny, model_dir, tmp_path, monkeypatch, capsys):
    from locality_core.cli.main import main

    monkeypatch.setattr(generalisation, "N_SAMPLES", 2)
    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["generalisation", "grf", "--json"]) == 2
    assert "train_subsets.sh" in capsys.readouterr().err
    for s in "AB":
        save_subset_net(model_dir, load_dataset("grf"), 4, s)
    assert main(["generalisation", "grf", "--json", "--no-analytical"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["n"] for r in out["unet"]] == [4] and "analytical" not in out
    assert {"cosine", "mse_ab", "dist_own", "dist_other", "train_nn", "heldout_mse_t100"} <= set(out["unet"][0])
    assert main(["generalisation", "grf", "--markdown", "--no-analytical"]) == 0  # from the cache now
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| denoiser | N |") and table[2].startswith("| unet | 4 | ")
    assert len(table) == 5 and table[2].count("|") == table[0].count("|") and table[3] == ""
    row = out["unet"][0]
    assert row["n_seeds"] == 2 and row["cosine_lo"] <= row["cosine"] <= row["cosine_hi"]
    assert f"{row['copies']} of 4" in table[2] and f"[{row['cosine_lo']:.3f}, {row['cosine_hi']:.3f}]" in table[2]
    assert table[4].startswith("unet: the A-B cosine is ") and "(2 seeds)" in table[4]


@pytest.fixture
def app_env(tiny, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALITY_APP_DATASET", "grf:n_train=600,n_test=64")
    monkeypatch.setenv("LOCALITY_OFFLINE", "1")
    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(generalisation, "PAGE_SAMPLES", 4)
    monkeypatch.setattr(generalisation, "N_EVAL", 8)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return model_dir


def run_page(query: dict | None = None):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    at.switch_page("pages/generalisation.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def page_text(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info])


def test_page_without_networks_says_what_it_waits_for(app_env):
    at = run_page()
    assert "train_subsets.sh" in page_text(at)


def test_page_with_one_pair_of_networks(app_env, tiny):
    for s in "AB":
        save_subset_net(app_env, tiny, 4, s)
    at = run_page()
    assert "N = 4" in page_text(at)
    assert at.button(key="gen_analytical_go")  # the analytical version waits for a click, saying so
    at.button(key="gen_analytical_go").click().run()
    assert not at.exception and any("gen_pair_analytical" in el.proto.id for el in at.get("plotly_chart"))


def test_page_shows_pairs_curves_and_numbers(app_env, tiny):
    for n in SIZES:
        for s in "AB":
            save_subset_net(app_env, tiny, n, s)
    at = run_page()
    assert at.select_slider(key="gen_n").value == SIZES[0]  # the default view: smallest N, no click needed
    text = page_text(at)
    assert "N = 4" in text and "cosine" in text.lower()
    charts = [el.proto.id for el in at.get("plotly_chart")]
    assert any("gen_pair" in c for c in charts) and any("gen_curves" in c for c in charts)
    at.select_slider(key="gen_n").set_value(16).run()
    assert "N = 16" in page_text(at)
    shared = run_page(query={"gen_n": "16", "gen_t": "500"})  # a shared link restores N and t
    assert shared.select_slider(key="gen_n").value == 16 and shared.radio(key="gen_t").value == 500
    assert "N = 16" in page_text(shared) and "t = 500" in page_text(shared)


def _row(**kw) -> dict:
    base = {"n": 10, "cosine": 0.2, "dist_own": 0.5, "dist_own_rel": 0.1, "dist_own_vs_heldout": 0.05,
            "train_nn": 5.0, "heldout_nn": 10.0, "dist_other": 9.0, "train_mse_t300": 0.001, "heldout_mse_t300": 0.1}
    return {**base, **kw}


def test_describe_reads_every_claim_off_the_numbers():
    memorising = " ".join(generalisation.describe(_row()))
    assert "different images" in memorising and "a copy" in memorising and "it knows them" in memorising
    general = " ".join(generalisation.describe(_row(n=30000, cosine=0.95, dist_own=9.0, dist_own_rel=1.8,
                                                    dist_own_vs_heldout=0.9, train_mse_t300=0.05,
                                                    heldout_mse_t300=0.051)))
    assert "nearly the same image" in general and "a new image" in general and "about as well" in general
    between = " ".join(generalisation.describe(_row(cosine=0.8, dist_own_rel=0.7, dist_own_vs_heldout=0.5)))
    assert "similar images" in between and "between a copy and a new image" in between


def test_trend_says_where_a_curve_is_not_monotone():
    rows = [{"n": n, "c": c} for n, c in ((10, 0.1), (100, 0.5), (1000, 0.4), (10000, 0.9))]
    assert generalisation.trend(rows, "c") == ("rises from 0.1 at N = 10 to 0.9 at N = 10,000, not monotonically: "
                                               "it falls at N = 1,000")
    two = generalisation.trend(rows[:2], "c")
    assert two.endswith("monotonically") and "not monotonically" not in two
    assert generalisation.trend([{"n": 5, "c": 1.0}, {"n": 50, "c": 0.5}], "c").startswith("falls")
    assert generalisation.trend(rows[:1], "c") == "is 0.1 at N = 10 (one N so far)"
    same = generalisation.trend([{"n": 10, "c": 0.9641}, {"n": 100, "c": 0.5}, {"n": 1000, "c": 0.9638}], "c")
    assert same.startswith("is about the same") and "rises" not in same and "falls" not in same


def test_trend_with_intervals_says_within_noise_where_they_overlap():
    """The issue's case: a cosine that rises to N = 1,000 and then moves less than its intervals."""
    rows = [{"n": n, "c": c, "c_lo": c - 0.02, "c_hi": c + 0.02}
            for n, c in ((10, 0.3), (100, 0.6), (1000, 0.937), (10000, 0.943), (30000, 0.938))]
    text = generalisation.trend(rows, "c")
    assert text.startswith("rises from 0.3 [0.28, 0.32] at N = 10 to 0.938 [0.918, 0.958] at N = 30,000")
    assert text.endswith(", but flat within noise from N = 1,000 to N = 30,000") and "monoton" not in text
    assert "falls" not in text                     # 0.943 -> 0.938 is inside the noise, not a fall
    apart = [{**r, "c_lo": r["c"] - 0.001, "c_hi": r["c"] + 0.001} for r in rows]
    assert "falls at N = 30,000" in generalisation.trend(apart, "c")
    same = generalisation.trend([rows[2], rows[4]], "c")
    assert same.startswith("is about the same") and "(within noise)" in same


def test_describe_counts_copies_instead_of_saying_every_sample():
    text = " ".join(generalisation.describe(_row(copies=122, n_samples=128, n_seeds=64, max_copy_distance=2.5,
                                                 dist_own_max=12.7, cosine_lo=0.15, cosine_hi=0.25)))
    assert "122 of 128 samples are copies" in text and "12.70" in text and "[95 % interval 0.15, 0.25" in text


def test_subset_images_index_the_subset(tiny):
    idx = np.array([3, 0, 7])
    assert torch.equal(generalisation.subset_images(tiny, 8, "B", idx), training_subset(tiny, 8, "B").train[idx])


def test_subset_fingerprint_without_the_images(tiny):
    from locality_core.data.subsets import subset_fingerprint

    assert subset_fingerprint(tiny, 8, "A") == training_subset(tiny, 8, "A").fingerprint
    assert subset_fingerprint(tiny, 8, "A") != subset_fingerprint(tiny, 8, "B")
