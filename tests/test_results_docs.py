"""The README's and docs/results.md's comparison and memorisation numbers against the JSON the commands printed.

`docs/results/*.json` are the outputs of the commands named in the docs (`locality compare DATASET --json`,
`locality generalisation fashion-mnist --json`); the tables in the docs must be those outputs as the commands'
`--markdown` prints them, and the README's headline numbers must be read off the same files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from locality_core.analysis.intervals import Interval
from locality_core.cli.generalisation_command import markdown as memorisation_markdown
from locality_core.cli.sampling_commands import compare_markdown

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
README = (ROOT / "README.md").read_text()
DOCS = (ROOT / "docs" / "results.md").read_text()
COMPARISONS = sorted(RESULTS.glob("compare-*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", COMPARISONS, ids=[p.stem for p in COMPARISONS])
def test_comparison_tables_in_the_docs_are_the_json(path):
    report = _load(path)
    assert all(r[k]["n"] == report["n"] for r in report["rows"] for k in report["rankings"])
    assert compare_markdown(report) in DOCS, f"docs/results.md does not hold the table of {path.name}"


def test_the_fashion_mnist_comparison_has_at_least_32_trajectories():
    report = _load(RESULTS / "compare-fashion-mnist.json")
    assert report["n"] >= 32 and all(r["r2_trajectory"]["n"] == report["n"] for r in report["rows"])


def _readme_row(start: str) -> str:
    rows = [line for line in README.splitlines() if line.startswith(f"| {start}")]
    assert len(rows) == 1, f"one README row starting {start!r}"
    return rows[0]


@pytest.mark.parametrize("path", COMPARISONS, ids=[p.stem for p in COMPARISONS])
def test_readme_headline_names_the_best_with_its_interval_n_and_the_runner_up_difference(path):
    """'analytical 0.748 [0.631, 0.835] (n = 32; 0.154 [0.068, 0.235] above wiener)' for each data set."""
    report = _load(path)
    rank = report["rankings"]["r2_trajectory"]
    best, second = rank["order"][:2]
    iv = Interval(**rank["intervals"][best])
    vs = rank["vs_best"][second]
    expected = (f"{best} {iv.text()} ({report['dataset']}, n = {report['n']}; "
                f"{-vs['mean']:.3f} [{-vs['hi']:.3f}, {-vs['lo']:.3f}] above {second}")
    row = _readme_row("closest to the UNet's sampling trajectories")
    assert expected in row, (expected, row)
    supported = rank["steps"][0]["supported"]
    clause = row.split(expected)[1].split(")")[0]
    assert ("within noise" in clause) == (not supported)


def test_memorisation_table_in_the_readme_is_the_json():
    result = _load(RESULTS / "generalisation-fashion-mnist.json")
    seeds = result["seeds"]
    tables = {k: v for k, v in result.items() if k in ("unet", "analytical")}
    assert seeds >= 64 and all(r["n_seeds"] == seeds for rows in tables.values() for r in rows)
    assert memorisation_markdown(tables, seeds) in README


def test_memorisation_sentences_in_the_readme_match_the_json():
    """The numbers the README's bullets cite: copies at N = 10 and the A-B cosine with its interval at the largest
    N; "monotone" only where the intervals of neighbouring N are apart."""
    rows = _load(RESULTS / "generalisation-fashion-mnist.json")["unet"]
    first, last = rows[0], rows[-1]
    section = README.split("### Memorisation to generalisation")[1].split("\n## ")[0]
    assert f"{first['copies']} of {first['n_samples']} samples" in section
    cos = f"{last['cosine']:.3f} [{last['cosine_lo']:.3f}, {last['cosine_hi']:.3f}]"
    assert cos in section
    apart = all(a["cosine_hi"] < b["cosine_lo"] for a, b in zip(rows, rows[1:]))
    says_monotone = re.search(r"\bmonoton", section.replace("not monotonically", "")) is not None
    assert says_monotone == apart
