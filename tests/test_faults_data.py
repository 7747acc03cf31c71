"""Faults of imported data sets: concurrent imports of one name, re-imports seen at once, the import command."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fault_helpers import lying_zip, peak_growth, png_bytes, write_images

from locality_core.data import DatasetError, user

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 20


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALITY_DATA_DIR", str(tmp_path / "home"))
    return tmp_path / "home"


def _importer(src: str, mode: str, home: str, errors: str) -> None:
    os.environ["LOCALITY_DATA_DIR"] = home
    for _ in range(ROUNDS):
        try:
            user.import_images(src, "shared", mode=mode)
            data = user.load_user_dataset("shared")  # arrays and metadata of one import, whatever the others do
            from_rgb = Path(data.params["source"]).name == "rgb"
            assert data.train.shape[1] == (3 if from_rgb else 1), f"npz and json of different imports: {data}"
        except Exception as exc:  # reported to the parent: any failure of any round
            with open(errors, "a") as f:
                f.write(f"{type(exc).__name__}: {exc}\n")


def test_three_processes_importing_one_name_never_collide(tmp_path, home):
    sources = [(write_images(tmp_path / "gray", 12, 6, "L", 0), "L"), (write_images(tmp_path / "rgb", 14, 6, "RGB", 1),
               "RGB"), (write_images(tmp_path / "gray2", 16, 6, "L", 2), "L")]
    errors = tmp_path / "errors.txt"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_importer, args=(str(src), mode, str(home), str(errors))) for src, mode in sources]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    assert not errors.exists(), errors.read_text()
    train, test = user.read_arrays("shared")  # readable, and the json describes this very npz
    meta = user.metadata("shared")
    assert list(train.shape[1:]) == meta["shape"] and len(train) == meta["n_train"] and len(test) == meta["n_test"]
    assert not list((home / "user").glob("*.part"))


def test_replace_false_refuses_a_taken_name(tmp_path, home):
    src = write_images(tmp_path / "a", 12, 6, "L", 0)
    user.import_images(src, "mine")
    with pytest.raises(DatasetError, match="exists already"):
        user.import_images(src, "mine", replace=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_an_import_reads_from_a_read_only_data_folder(tmp_path, home):
    """A read-only mount (a container, a class server's prepared data): nothing to lock against, nothing lost."""
    src = write_images(tmp_path / "a", 12, 6, "L", 0)
    user.import_images(src, "mine")
    folders = [home, *(p for p in home.rglob("*") if p.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        assert user.load_user_dataset("mine").train.shape[1:] == (1, 6, 6)
    finally:
        for folder in folders:
            folder.chmod(0o755)


def test_reading_takes_no_lock_where_nobody_can_write(tmp_path, home, monkeypatch):
    src = write_images(tmp_path / "a", 12, 6, "L", 0)
    user.import_images(src, "mine")
    monkeypatch.setattr(user.os, "access", lambda path, how: False)  # as root cannot simulate read-only
    monkeypatch.setattr(user, "name_lock", lambda name: (_ for _ in ()).throw(AssertionError("locked")))
    assert user.load_user_dataset("mine").train.shape[1:] == (1, 6, 6)


def test_missing_message_names_a_command_that_exists(home):
    with pytest.raises(DatasetError, match="locality import NAME FOLDER_OR_ZIP") as info:
        user.read_arrays("nothing")
    assert "Import images with" in str(info.value)


def _cli(*args, home: Path):
    env = {**os.environ, "LOCALITY_DATA_DIR": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "locality_core", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow  # 11-20 s on the shared 2-core machine
def test_import_command(tmp_path, home):
    src = write_images(tmp_path / "imgs", 12, 8, "RGB", 0)
    done = _cli("import", "cli-set", str(src), "--mode", "RGB", "--size", "4,4", home=home)
    assert done.returncode == 0, done.stderr
    assert "user:cli-set" in done.stdout
    assert user.read_arrays("cli-set")[0].shape[1:] == (3, 4, 4)
    again = _cli("import", "cli-set", str(src), home=home)
    assert again.returncode == 2 and "exists already" in again.stderr and "Traceback" not in again.stderr
    assert _cli("import", "cli-set", str(src), "--force", home=home).returncode == 0
    bad = _cli("import", "x", str(tmp_path / "nowhere"), home=home)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_reimport_shows_new_data_in_the_app_at_once(tmp_path, home):
    import streamlit as st

    from locality_core.views.refs import DataRef
    from ui import loading

    calls = []

    @st.cache_data
    def by_name(name: str) -> int:  # a page-level cache keyed on the name, as the pages' are
        calls.append(name)
        return loading.dataset(DataRef.of(name)).d

    ref = DataRef.of("user:re")
    user.import_images(write_images(tmp_path / "g", 18, 28, "L", 0), "re")
    assert loading.stats(ref).mean.size == 784 and by_name("user:re") == 784
    user.import_images(write_images(tmp_path / "c", 23, 28, "RGB", 1), "re", mode="RGB")
    assert len(loading.dataset(ref).train) + len(loading.dataset(ref).test) == 23
    assert loading.stats(ref).mean.size == 2352
    assert by_name("user:re") == 2352 and len(calls) == 2


LIE_BYTES = 512 * 2**20  # what the lying member inflates to; main read it whole (2.1 GB in the campaign)


def test_a_zip_member_that_lies_about_its_size_costs_no_memory(tmp_path):
    """A member declaring 100 bytes that inflates to 512 MiB: read as a stream, it is refused at its declared
    size; the import's peak memory grows by a few MB, not by the member's true size."""
    images = {f"{i}.png": png_bytes(8, i) for i in range(12)}
    archive = lying_zip(tmp_path / "lie.zip", LIE_BYTES, extra=images)
    growth, out = peak_growth(
        "from locality_core.data import user",
        f"report = user.import_images({str(archive)!r}, 'lie')\n"
        "print('SKIPPED', report.skipped)\n"
        "print('IMPORTED', report.n_train + report.n_test)",
        env={"LOCALITY_DATA_DIR": str(tmp_path / "home")})
    assert "IMPORTED 12" in out, out[-2000:]
    assert "SKIPPED [('big.png', \"cannot be read: Bad CRC-32" in out  # refused, by name
    assert growth < 64 * 2**20, f"peak memory grew by {growth / 2**20:.0f} MiB"


def test_members_past_the_byte_limit_are_refused_as_read(tmp_path, home):
    """Declared sizes within the limit, true sizes past it: the running count stops the import."""
    big = bytes(range(256)) * 4096  # 1 MiB that does not compress away
    source = tmp_path / "many"
    source.mkdir()
    for i in range(4):
        (source / f"{i}.png").write_bytes(big)
    with pytest.raises(DatasetError, match="max_total_bytes"):
        user._read_all(user.folder_entries(source), "L", None, max_total_bytes=3 * len(big) // 2)


def test_a_file_that_grew_since_it_was_listed_is_read_up_to_its_listed_size(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"x" * 100)
    with pytest.raises(user.LongerThanDeclared, match="the 50 bytes"):
        user.read_counted(lambda: open(path, "rb"), 50, 10**6, "a.png")
    assert user.read_counted(lambda: open(path, "rb"), 100, 10**6, "a.png") == b"x" * 100


def test_skip_reasons_name_no_python_object(tmp_path, home):
    source = write_images(tmp_path / "imgs", 12, 6)
    (source / "notes.png").write_text("not an image")
    report = user.import_images(source, "mixed")
    reason = dict(report.skipped)["notes.png"]
    assert "object at 0x" not in reason and "BytesIO" not in reason and "not an image file" in reason


@pytest.mark.slow  # 15-40 s: builds 400,000 fields
def test_the_issue_url_stays_within_the_budget(tmp_path):
    """The campaign's URL took a server to 5 GB. Under a 2 GiB budget it is built within it (or refused)."""
    growth, out = peak_growth(
        "from locality_core.data import load_dataset\nfrom locality_core.store.memory import TooLargeError",
        "try:\n    load_dataset('grf', n_train=200_000, n_test=200_000)\nexcept TooLargeError as exc:\n"
        "    print('REFUSED', exc)",
        env={"LOCALITY_MEMORY_BUDGET_GB": "2", "LOCALITY_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert "REFUSED" in out or growth <= 2 * 2**30, f"grew by {growth / 2**30:.2f} GiB"
