"""Bad CLI values and data set options: one line on stderr, exit status 2, nothing computed or written."""

from __future__ import annotations

import argparse
import time

import pytest

from locality_core.cli import validate
from locality_core.cli.main import main
from locality_core.data import DatasetError, load_dataset
from locality_core.store.memory import TooLargeError


def run(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse refuses before any command runs
        code = exc.code
    return code, capsys.readouterr().err


BAD = [
    ("field", "mnist-5k", "--pixel", "3,3", "--sigmas", "nan"),
    ("field", "mnist-5k", "--pixel", "3,3", "--sigmas", "inf"),
    ("field", "mnist-5k", "--pixel", "3,3", "--sigmas", "1e308"),
    ("field", "mnist-5k", "--pixel", "3,3", "--sigmas", ","),
    ("field", "mnist-5k", "--pixel", "3,3", "--n", "0"),
    ("field", "mnist-5k", "--pixel", "3,3", "--out", "/proc/x.png"),
    ("field", "mnist-5k", "--pixel", "3,3", "--out", "/no/such/folder/x.png"),
    ("field", "mnist-5k", "--pixel", "3,3", "--out", "map.txt"),
    ("field", "mnist-5k", "--pixel", "3,3", "--denoiser", "nonsense"),
    ("basis", "mnist-5k", "--sigma", "-1"),
    ("basis", "mnist-5k", "--top", "0"),
    ("eval", "mnist-5k", "--denoiser", ","),
    ("eval", "mnist-5k", "--denoiser", "wiener", "--n", "0"),
    ("eval", "mnist-5k", "--denoiser", "wiener", "--n", "-3"),
    ("stats", "mnist-5k", "--top", "-3"),
    ("sample", "mnist-5k", "--batch", "0"),
    ("sample", "mnist-5k", "--n", "0"),
    ("sample", "mnist-5k", "--out", "/proc/grid.png"),
    ("compare", "mnist-5k", "--steps", "0"),
    ("train", "mnist-5k", "--steps", "0"),
    ("train", "mnist-5k", "--steps", "-1"),
    ("import", "x", "/no/such/folder"),
    ("sample", "mnist-5k", "--n", "100000000"),
    ("sample", "mnist-5k", "--denoisers", ""),
    ("sample", "mnist-5k", "--denoisers", " , "),
    ("sample", "mnist-5k", "--denoisers", "wiener,nonsense"),
    ("compare", "mnist-5k", "--denoisers", ""),
    ("field", "mnist-5k", "--pixel", "-1,3"),
    ("field", "mnist-5k", "--pixel", "3,3", "--sigmas", "-inf"),
    ("field", "mnist-5k", "--pixel", "3,3", "--sigmas", "-1"),
    ("eval", "mnist-5k", "--denoiser", "wiener", "--seed", "-1"),
    ("calibrate", "mnist-5k", "--sizes", ""),
    ("calibrate", "mnist-5k", "--sizes", "4"),
]


@pytest.mark.parametrize("argv", BAD, ids=lambda a: " ".join(a))
def test_bad_values_are_one_line_and_exit_2(capsys, argv):
    code, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err


def _count_options():
    """(command, option) of every option of the CLI whose value is a count (`validate.count`)."""
    from locality_core.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return [(name, action.option_strings[0]) for name, sub in commands.items() for action in sub._actions
            if getattr(action.type, "check", None) is validate.count]


def test_every_count_has_an_upper_bound(capsys):
    """Each count option refuses a huge value before anything is loaded, naming its bound."""
    options = _count_options()
    assert len(options) >= 18 and ("sample", "--n") in options and ("train", "--batch") in options
    for command, option in options:
        code, err = run(capsys, command, "mnist-5k", option, "100000000000")
        assert code == 2 and "at most" in err and err.count("\n") == 1, (command, option, err)


@pytest.mark.parametrize(("argv", "said"), [
    (("sample", "mnist-5k", "--n", "100000000"), "at most 1,024, got 100,000,000"),
    (("sample", "mnist-5k", "--denoisers", ""), "name at least one denoiser"),
    (("field", "mnist-5k", "--pixel", "-1,3"), "outside the 28x28 image"),
    (("field", "mnist-5k", "--pixel", "3,3", "--sigmas", "-inf"), "finite number in (0, 1000], got -inf"),
])
def test_the_message_says_what_was_wrong(capsys, argv, said):
    """Not argparse's "expected one argument" nor a traceback: the value and its range."""
    code, err = run(capsys, *argv)
    assert code == 2 and said in err and "expected one argument" not in err


def test_out_that_is_a_folder_or_unwritable(capsys, tmp_path):
    code, err = run(capsys, "field", "mnist-5k", "--pixel", "3,3", "--out", str(tmp_path))
    assert code == 2 and "must end in" in err
    (tmp_path / "dir.png").mkdir()
    code, err = run(capsys, "field", "mnist-5k", "--pixel", "3,3", "--out", str(tmp_path / "dir.png"))
    assert code == 2 and "is a folder" in err


def test_pixel_outside_the_image(capsys):
    code, err = run(capsys, "field", "mnist-5k", "--pixel", "28,0")
    assert code == 2 and "outside the 28x28 image" in err


def test_good_values_pass():
    assert validate.sigma_list("60, 3.4,0.1") == [60.0, 3.4, 0.1]
    assert validate.count("3", "--n", 10) == 3 and validate.pixel((27, 0), (1, 28, 28)) == (27, 0)
    assert validate.names("wiener, unet", ["wiener", "unet"]) == ["wiener", "unet"]


def test_memory_bomb_options_are_refused_before_building():
    start = time.time()
    with pytest.raises(TooLargeError, match="GiB of memory.*LOCALITY_MEMORY_BUDGET_GB"):
        load_dataset("natural-patches", stride=1, max_per_photo=200_000)
    with pytest.raises(TooLargeError, match="GiB of memory.*LOCALITY_MEMORY_BUDGET_GB"):
        load_dataset("grf", n_train=10**9)
    with pytest.raises(DatasetError, match="not all numbers"):
        load_dataset("grf", n_train="many")
    assert time.time() - start < 2
