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


# ---------------------------------------------------------------- sentences against what the maps show

def visible_area(field_map: np.ndarray) -> int:
    """Pixels a linear colour scale spanning the map's maximum shows at half intensity or more: the blob the eye
    sees (independent of the square the sentences measure)."""
    m = np.abs(field_map)
    return int((m >= 0.5 * m.max()).sum())


def test_half_max_square_ignores_a_faint_floor_that_holds_most_of_the_mass():
    from locality_core.analysis.fields import half_max_size, locality_size

    m = np.full((15, 15), 0.03)
    m[6:9, 7], m[7, 6:9] = 0.6, 0.6
    m[7, 7] = 1.0                                       # a one-pixel cross on a floor over the whole image
    assert half_max_size(m, (7, 7)) == 3                # the cross
    assert locality_size(m, (7, 7), 0.5) >= 7           # the 50 %-mass square: mostly floor
    m[7, 14] = 0.7                                      # a bright pixel at the edge is seen, and counted
    assert half_max_size(m, (7, 7)) == 15 and half_max_size(np.zeros((5, 5)), (2, 2)) == 1


def _grf_fields(alpha: float, sigmas):
    from locality_core.analysis.fields import wiener_field
    from locality_core.data import load_dataset
    from locality_core.stats.covariance import get_stats
    from locality_core.views.defaults import DEFAULTS, default_pixel

    data = load_dataset("grf", alpha=alpha, n_train=DEFAULTS.alpha_n_train)
    return wiener_field(get_stats(data), default_pixel(data.shape), sigmas)


def test_grf_alpha_sentence_calls_wider_the_field_that_looks_wider():
    """Issue 24: with 50 %-mass squares the page said the alpha = 4 field was narrower at sigma = 0.342 (13 -> 5
    px) while it is visibly the wider blob. Every level the sentence calls wider or narrower must look so."""
    from locality_core.analysis.fields import half_max_sizes, locality_sizes
    from locality_core.views.defaults import DEFAULTS

    sigmas = list(DEFAULTS.sigmas)
    a, b = _grf_fields(DEFAULTS.alpha_a, sigmas), _grf_fields(DEFAULTS.alpha_b, sigmas)
    claim = comparison_claim(sigmas, half_max_sizes(a), half_max_sizes(b), "α = 2", "α = 4")
    area_a, area_b = ([visible_area(m) for m in f.map("abs")] for f in (a, b))
    for i in claim.facts["wider"]:
        assert area_b[i] > area_a[i], (sigmas[i], area_a[i], area_b[i])
    for i in claim.facts["narrower"]:
        assert area_b[i] < area_a[i], (sigmas[i], area_a[i], area_b[i])
    i = sigmas.index(min(sigmas, key=lambda s: abs(s - 0.342)))
    assert area_b[i] > area_a[i] and i in claim.facts["wider"]      # the case of the issue, stated right now
    old = comparison_claim(sigmas, locality_sizes(a)[:, 0], locality_sizes(b)[:, 0], "α = 2", "α = 4")
    assert i in old.facts["narrower"]                                # and the 50 %-mass square got it wrong


@pytest.mark.slow  # the natural-patches UNet field at every level: 30-60 s on the shared machine
def test_natural_patches_sentence_finds_no_gap_where_both_maps_show_one_pixel():
    """Issue 24: at sigma = 0.01 both maps show a one-pixel cross; the 50 %-mass squares said 3 px (UNet) and
    15 px (Wiener), "the Wiener field is the wider one". A size-gap sentence must now match the visible areas."""
    from locality_core.analysis.fields import denoiser_field, half_max_sizes, locality_sizes, wiener_field
    from locality_core.data import load_dataset
    from locality_core.denoisers.models import find_weights
    from locality_core.stats.covariance import get_stats
    from locality_core.views.defaults import DEFAULTS, default_pixel

    if find_weights("natural-patches") is None:
        pytest.skip("no natural-patches UNet")
    data = load_dataset("natural-patches")
    stats, pixel, sigmas = get_stats(data), default_pixel(data.shape), list(DEFAULTS.sigmas)
    wiener, unet = wiener_field(stats, pixel, sigmas), denoiser_field(data, "unet", pixel, sigmas)
    claims = field_claims(sigmas, half_max_sizes(wiener), rank=stats.d, d=stats.d, n_train=stats.n,
                          unet_sizes=half_max_sizes(unet))
    low = len(sigmas) - 1
    assert visible_area(wiener.map("abs")[low]) <= 5 and visible_area(unet.map("abs")[low]) <= 5  # the cross
    old = field_claims(sigmas, locality_sizes(wiener)[:, 0], rank=stats.d, d=stats.d, n_train=stats.n,
                       unet_sizes=locality_sizes(unet)[:, 0])
    assert any(c.kind == "size-gap" and c.facts["index"] == low for c in old)   # what the page used to say
    for c in claims:
        if c.kind == "size-gap":
            i, areas = c.facts["index"], (visible_area(unet.map("abs")[c.facts["index"]]),
                                          visible_area(wiener.map("abs")[c.facts["index"]]))
            assert i != low and (c.facts["wider"] == "Wiener") == (areas[1] > areas[0])


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
    wiener = [float(v) for v in table.loc["Wiener half-max square (px)"]]
    side = max(load_dataset(name).shape[1:])
    assert max(wiener) <= side  # sizes never exceed the image
    stats = get_stats(load_dataset(name))
    rank = effective_rank(stats.eigvals)
    bullets = _bullets(at)
    assert bullets, "the page states no finding"
    for text in bullets:
        if text.startswith("As noise falls the Wiener field shrinks"):
            first, last = (float(v) for v in re.findall(r"(\d+(?:\.\d+)?) px", text)[:2])
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
            unet = [float(v) for v in table.loc["UNet half-max square (px)"]]
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
