"""A prepared cache carried in one file: what a desktop computed is a cache hit on the laptop, and a pack that is
damaged, forged, of another code version or of other data is refused or skipped, never half-trusted."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest

from locality_core.store.cache import ArrayCache
from locality_core.views import defaults, pack
from locality_core.views.catalogue import Task
from locality_core.views.refs import DataRef

GRF = DataRef.of("grf", {"n_train": 200, "n_test": 8})
SMALL = defaults.Defaults(timesteps=(900, 100), sample_n=2, sample_steps=2)


@pytest.fixture
def desktop(tmp_path, monkeypatch):
    """A cache with a few computed default views of a small GRF; the pack exported from it."""
    monkeypatch.setattr(defaults, "DEFAULTS", SMALL)
    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(tmp_path / "desktop"))
    tasks = [Task.of("stats", GRF), Task.of("masks", GRF, sigmas=SMALL.sigmas, theta=None, mode="global"),
             Task.of("samples", GRF, name="wiener", n=2, steps=2, seed=0, options={})]
    for task in tasks:
        task.run()
    report = pack.export_pack(tmp_path / "talk.zip", [GRF])
    return tmp_path / "talk.zip", tasks, report


def test_what_the_desktop_computed_is_a_hit_on_the_laptop(desktop, tmp_path, monkeypatch):
    path, tasks, report = desktop
    assert report.written >= 1 + len(SMALL.sigmas) + 1 and report.missing  # the other views are listed, not made
    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(tmp_path / "laptop"))
    assert not any(t.ready() for t in tasks)
    imported = pack.import_pack(path)
    assert imported.written == report.written and not imported.skipped
    monkeypatch.setattr(ArrayCache, "set", lambda self, key, arrays: pytest.fail(f"computed on the laptop: {key}"))
    for task in tasks:
        assert task.ready()
        task.run()
    again = pack.import_pack(path)  # nothing replaced
    assert again.written == 0 and again.present == report.written


def _rewrite(path, change):
    """The pack with its manifest and members passed through ``change(manifest, members)``."""
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read(pack.MANIFEST))
        members = {n: z.read(n) for n in z.namelist() if n != pack.MANIFEST}
    change(manifest, members)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr(pack.MANIFEST, json.dumps(manifest))


def test_entries_of_another_version_or_other_data_are_skipped_with_the_reason(desktop, tmp_path, monkeypatch):
    path, _, report = desktop

    def change(manifest, members):
        entries = manifest["entries"]
        entries[0]["key"] = entries[0]["key"].replace("v1/", "v9/", 1)  # made by a future version
        fingerprint = next(iter(manifest["datasets"].values()))
        assert all(fingerprint in e["key"] for e in entries[1:])
        # made from a data set that differs here (other options give other images here, so another fingerprint)
        other = DataRef.of("grf", {"n_train": 201, "n_test": 8})
        manifest["datasets"] = {other.id: fingerprint}

    _rewrite(path, change)
    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(tmp_path / "laptop"))
    result = pack.import_pack(path)
    reasons = [why for _, why in result.skipped]
    assert result.written == 0 and len(reasons) == report.written
    assert "version 9 in the pack, 1 here" in reasons[0]
    assert all("other data" in why for why in reasons[1:] if "version" not in why)


def test_a_damaged_member_is_skipped_and_a_lying_one_refused(desktop, tmp_path, monkeypatch):
    path, _, report = desktop

    def damage(manifest, members):
        first = manifest["entries"][0]
        members[first["member"]] = members[first["member"]][:-1] + b"x"  # one byte changed, same size

    _rewrite(path, damage)
    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(tmp_path / "laptop"))
    result = pack.import_pack(path)
    assert result.written == report.written - 1 and "damaged" in result.skipped[0][1]

    def inflate(manifest, members):  # a member far larger than the manifest says
        first = manifest["entries"][0]
        members[first["member"]] = b"\0" * (first["bytes"] + 10 * pack.CHUNK)

    _rewrite(path, inflate)
    monkeypatch.setenv("LOCALITY_CACHE_DIR", str(tmp_path / "laptop2"))
    with pytest.raises(pack.PackError, match="more than"):
        pack.import_pack(path)


def test_not_a_pack_says_what_to_do(tmp_path):
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(pack.PackError, match="locality pack export"):
        pack.import_pack(bad)
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(pack.PackError, match="no manifest.json"):
        pack.import_pack(bad)


def test_member_names_do_not_depend_on_the_machine():
    key = "v1/stats/abc"
    assert pack._member(key) == "entries/" + hashlib.sha256(key.encode()).hexdigest() + ".lxc"
