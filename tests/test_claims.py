"""Every sentence that states a finding is computed from numbers: the claim functions against hand-made cases,
then the pages of every registered data set, each stated claim checked against the numbers the same page shows
(its table) and against the statistics computed independently here."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from locality_core.analysis.claims import (
    AGREE_COSINE,
    agreement_claim,
    comparison_claim,
    effective_rank,
    field_claims,
    mask_fill_claim,
    pattern_share_claim,
    rank_claim,
    trend_claim,
)

ROOT = Path(__file__).resolve().parent.parent
SIGMAS = [60.8, 3.44, 0.34, 0.01]


def test_trend_says_shrink_grow_or_constant_from_the_numbers():
    assert trend_claim(SIGMAS, [27, 15, 5, 1]).kind == "shrinks"
    assert trend_claim(SIGMAS, [27, 15, 5, 1]).facts["monotone"]
    bumpy = trend_claim(SIGMAS, [27, 29, 5, 1])
    assert bumpy.kind == "shrinks" and not bumpy.facts["monotone"] and "not steadily" in bumpy.text
    grows = trend_claim(SIGMAS, [15, 15, 16, 17])
    assert grows.kind == "grows" and "does **not** shrink" in grows.text and "15 px" in grows.text
    assert trend_claim(SIGMAS, [9, 9, 9, 9]).kind == "constant"
    dip = trend_claim(SIGMAS, [17, 15, 15, 17])  # faces: equal ends, smaller between: not "stays at 17 px"
    assert dip.kind == "returns" and "15 px at σ = 3.44" in dip.text


def test_rank_claim_and_effective_rank():
    assert effective_rank(np.array([3.0, 1.0, 1e-12, 0.0])) == 2
    assert effective_rank(np.zeros(4)) == 0
    full = rank_claim(784, 784, 60_000)
    assert full.kind == "full-rank" and "P_σ → I" in full.text
    few = rank_claim(179, 625, 180)
    assert few.kind == "rank-deficient" and "only 180 training images for 625 pixels" in few.text
    flat = rank_claim(700, 784, 60_000)
    assert "84 directions" in flat.text  # more images than pixels, yet some pixels never vary


def test_agreement_counts_the_columns_at_or_above_the_threshold():
    all_agree = agreement_claim(SIGMAS, [0.95, 0.91, 0.9, 0.99])
    assert all_agree.kind == "agree" and "lowest cosine is 0.90" in all_agree.text
    some = agreement_claim(SIGMAS, [0.95, 0.5, 0.8, 0.99])
    assert some.kind == "disagree" and "at 2 of 4" in some.text and "σ = 3.44 (cosine 0.50)" in some.text


def test_field_claims_explain_rank_only_where_it_matters():
    kinds = [c.kind for c in field_claims(SIGMAS, [27, 15, 5, 1], rank=784, d=784, n_train=60_000)]
    assert kinds == ["shrinks"]
    kinds = [c.kind for c in field_claims(SIGMAS, [15, 15, 16, 17], rank=179, d=625, n_train=180,
                                          unet_sizes=[15, 9, 3, 3], cosines=[0.95, 0.9, 0.7, 0.6])]
    assert kinds == ["grows", "rank-deficient", "disagree", "size-gap"]


def test_no_trend_from_one_level_and_nothing_about_a_constant_pixel():
    assert [c.kind for c in field_claims([1.24], [9], rank=784, d=784, n_train=60_000)] == []
    assert [c.kind for c in field_claims(SIGMAS, [1, 1, 1, 1], rank=700, d=784, n_train=60_000,
                                         constant_pixel=True)] == ["constant-pixel"]


def test_comparison_mask_fill_and_pattern_share():
    assert comparison_claim(SIGMAS, [5, 3, 1, 1], [9, 7, 3, 2], "α = 2", "α = 4").kind == "wider-everywhere"
    mixed = comparison_claim(SIGMAS, [5, 3, 15, 1], [9, 7, 5, 1], "α = 2", "α = 4")
    assert mixed.kind == "mixed" and mixed.facts["narrower"] == [2] and "(15 → 5 px)" in mixed.text
    assert mask_fill_claim(SIGMAS, [10, 20, 5, 1], 784) is None
    assert mask_fill_claim(SIGMAS, [784, 760, 300, 1], 784).facts["filled"] == [0, 1]
    assert pattern_share_claim(0.1, 0.6, True).kind == "pattern-share"
    assert pattern_share_claim(0.1, 0.6, False).kind == "off-pattern"
    assert pattern_share_claim(0.3004, 0.3001, True).kind == "pattern-same"  # not "less" for equal shares


# ---------------------------------------------------------------- the pages, every registered data set

def available_datasets() -> list:
    from locality_core.data import list_datasets

    out = []
    for spec in list_datasets():
        if spec.name.startswith("user:") or not spec.availability()[0]:
            continue
        big = spec.name in ("fashion-mnist", "natural-patches", "textures")
        out.append(pytest.param(spec.name, marks=pytest.mark.slow) if big else spec.name)
    return out


@pytest.fixture(scope="module")
def app_test():
    pytest.importorskip("streamlit")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from streamlit.testing.v1 import AppTest

    saved = os.environ.pop("LOCALITY_APP_DATASET", None)
    yield AppTest
    if saved is not None:
        os.environ["LOCALITY_APP_DATASET"] = saved


def _run(app_test, query: dict, page: str | None = None):
    at = app_test.from_file(str(ROOT / "app.py"), default_timeout=600)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def view_sigmas(table) -> list[float]:
    """The noise levels of the page's table, from its column headers ('t=300 σ=1.24')."""
    return [float(col.split("σ=")[1]) for col in table.columns]


def _bullets(at) -> list[str]:
    return [line[2:] for m in at.markdown for line in m.value.splitlines() if line.startswith("- ")]


def _numbers(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?", text.replace(",", ""))]


@pytest.mark.parametrize("name", available_datasets())
def test_every_claim_on_the_sensitivity_page_matches_its_numbers(app_test, name):
    """The sentences under the field grid, checked against the page's own table and the statistics."""
    for pixel in ((1, 2), None):  # near a corner (sizes counted inside the image), then the centre
        _check_sensitivity_claims(app_test, name, pixel)


def _check_sensitivity_claims(app_test, name: str, pixel) -> None:
    from locality_core.data import load_dataset
    from locality_core.stats.covariance import get_stats

    at = _run(app_test, {"dataset": name, **({"pixel": f"{pixel[0]},{pixel[1]}"} if pixel else {})})
    c, h, w = load_dataset(name).shape
    pixel = pixel or (h // 2, w // 2)
    table = at.dataframe[0].value
    wiener = [float(v) for v in table.loc["Wiener 50 % square (px)"]]
    side = max(load_dataset(name).shape[1:])
    assert max(wiener) <= side  # sizes never exceed the image
    stats = get_stats(load_dataset(name))
    rank = effective_rank(stats.eigvals)
    bullets = _bullets(at)
    assert bullets, "the page states no finding"
    for text in bullets:
        if text.startswith("As noise falls the Wiener field shrinks"):
            first, last = _numbers(text.split("square at")[0])[-1], _numbers(text.split("and in a")[1])[0]
            assert (first, last) == (wiener[0], wiener[-1]) and last < first
            steady = all(b <= a for a, b in zip(wiener, wiener[1:]))
            assert ("not steadily" in text) == (not steady)
        elif "does **not** shrink" in text:
            assert wiener[-1] > wiener[0]
        elif "stays at" in text:
            assert len(set(wiener)) == 1
        elif "does not shrink overall" in text:
            first, between = _numbers(text.split("square is")[1])[0], _numbers(text.split(", and ")[1])[0]
            assert wiener[0] == wiener[-1] == first and between in wiener and len(set(wiener)) > 1
        elif "same value in every training image" in text:
            assert not np.any(np.diag(stats.cov).reshape(c, h, w)[:, pixel[0], pixel[1]] > 0)
        elif "has rank" in text:
            stated = int(text.split("has rank ")[1].split(" ")[0].replace(",", ""))
            assert stated == rank < stats.d
        elif "full rank" in text:
            assert rank == stats.d
        elif "fields have the same shape" in text or "fields agree" in text:
            cos = np.array([float(v) for v in table.loc["cos(UNet, Wiener)"]])
            clear = np.abs(cos - AGREE_COSINE) > 0.006  # the table rounds to two decimals
            if "at all" in text:
                assert (cos[clear] >= AGREE_COSINE).all()
            else:
                stated = int(text.split(" agree (cosine ≥ 0.9) at ")[1].split(" of ")[0])
                assert abs(stated - int((cos >= AGREE_COSINE).sum())) <= int((~clear).sum())
        elif "is the wider one" in text:
            unet = [float(v) for v in table.loc["UNet 50 % square (px)"]]
            px = [float(v) for v in re.findall(r"(\d+(?:\.\d+)?) px", text)]  # UNet's, then Wiener's
            i = int(np.argmin([abs(s - float(text.split("σ = ")[1].split(" ")[0])) for s in view_sigmas(table)]))
            assert (px[0], px[-1]) == (unet[i], wiener[i])
            assert (text.split(" the ")[1].split(" field")[0] == "Wiener") == (wiener[i] > unet[i])
        else:
            raise AssertionError(f"a finding this test does not know how to check: {text!r}")


@pytest.mark.parametrize("name", available_datasets())
def test_components_page_claims_match_the_statistics(app_test, name):
    from locality_core.data import load_dataset
    from locality_core.stats.covariance import get_stats
    from locality_core.stats.spectrum import power_law_fit

    at = _run(app_test, {"dataset": name}, "pages/components.py")
    captions = "\n".join(c.value for c in at.caption)
    stats = get_stats(load_dataset(name))
    rank = effective_rank(stats.eigvals)
    assert ("full rank" in captions) == (rank == stats.d)
    if rank < stats.d:
        assert f"rank {rank:,} < d = {stats.d:,}" in captions
    try:
        fit = power_law_fit(stats.eigvals)
    except ValueError:
        return
    assert ("fall as a power law" in captions) == (fit.r2 >= 0.95)
