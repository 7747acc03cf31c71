"""A prepared cache in one file: compute the default views on a desktop, carry them to the laptop of the talk.

Glossary
    pack        a zip file: ``manifest.json`` and one member per cache entry, each the entry's stored bytes (a
                sha256 header over an .npz of plain arrays: nothing in it is ever unpickled)
    manifest    {"format", "created", "locality_version", "datasets": {data set id: fingerprint}, "entries":
                [{"key", "member", "bytes", "sha256"}]}
    export      `export_pack(path, datasets)`: the entries every default view of ``datasets`` reads (recorded
                while each view is read back from the cache, so the list cannot drift from the code); views not
                computed here are listed as missing, never computed by an export
    import      `import_pack(path)`: each member read with a running byte count that stops at its declared size
                and at `MAX_PACK_BYTES` in all (whatever the zip's headers say), its checksum and the manifest's
                verified, its cache version compared with this code's (an entry of another version is skipped:
                it would never be read), the data sets' fingerprints compared with the data here (an entry of
                other data is skipped: same), then stored. Nothing already cached is replaced
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from locality_core import __version__
from locality_core.progress import Progress
from locality_core.store.cache import KINDS, decode, default_cache
from locality_core.views.catalogue import Task
from locality_core.views.plan import plan
from locality_core.views.refs import DataRef

FORMAT = "locality-pack-v1"
MANIFEST = "manifest.json"
MAX_PACK_BYTES = 8 * 2**30  # what an import may unpack in all
MAX_MANIFEST_BYTES = 64 * 2**20
CHUNK = 1 << 20


class PackError(ValueError):
    """The pack cannot be used at all; the message says why and what to do."""


@dataclass
class PackReport:
    written: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)      # export: views not computed here
    skipped: list[tuple[str, str]] = field(default_factory=list)  # import: (key, why)
    present: int = 0                                      # import: already cached here


def _member(key: str) -> str:
    return "entries/" + hashlib.sha256(key.encode()).hexdigest() + ".lxc"


def view_keys(task: Task) -> list[str]:
    """The cache keys a computed view reads (recorded while it is read back)."""
    with default_cache().recording() as keys:
        task.run()
    return list(dict.fromkeys(keys))


def export_pack(path: str | Path, datasets: list[str | DataRef] | None = None, *,
                progress: Progress | None = None) -> PackReport:
    """Write the cache entries of every computed default view of ``datasets`` (default: the whole talk plan)."""
    tasks, cache, report = plan(datasets), default_cache(), PackReport()
    entries, fingerprints = {}, {}
    for i, task in enumerate(tasks):
        if progress:
            progress(i / max(1, len(tasks)), task.title)
        if not task.ready():
            report.missing.append(task.title)
            continue
        fingerprints[task.ref.id] = task.ref.load().fingerprint
        for key in view_keys(task):
            entries.setdefault(key, None)
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    manifest = {"format": FORMAT, "created": time.time(), "locality_version": __version__,
                "datasets": fingerprints, "entries": []}
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for key in entries:
            blob = cache.blob(key)
            if blob is None:  # evicted or damaged since the view was read: the import recomputes it
                continue
            member = _member(key)
            z.writestr(member, blob)
            manifest["entries"].append({"key": key, "member": member, "bytes": len(blob),
                                        "sha256": hashlib.sha256(blob).hexdigest()})
            report.written += 1
            report.bytes += len(blob)
        z.writestr(MANIFEST, json.dumps(manifest, indent=1))
    tmp.replace(path)
    if progress:
        progress(1.0, f"{report.written} entries written")
    return report


def _read_bounded(z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """A member's bytes, read with a running count that stops past ``limit`` whatever its header declares."""
    out = bytearray()
    with z.open(name) as f:
        while chunk := f.read(CHUNK):
            out += chunk
            if len(out) > limit:
                raise PackError(f"member {name} holds more than the {limit:,} bytes it declares: the pack is damaged "
                                "or forged; make it again with `locality pack export`")
    return bytes(out)


_KEY = re.compile(r"^v(\d+)/([^/]+)/")


def _why_not(key: str, fingerprints_here: dict[str, str | None], manifest: dict) -> str | None:
    """Why an entry would never be read here (another cache version, other data), else None."""
    match = _KEY.match(key)
    if match is None:
        return "not a cache key of this project"
    version, name = int(match.group(1)), match.group(2)
    if name not in KINDS:
        return f"'{name}' is not computed by this version"
    if KINDS[name].version != version:
        return f"'{name}' is version {version} in the pack, {KINDS[name].version} here"
    for ref_id, fingerprint in manifest.get("datasets", {}).items():
        if fingerprint in key and fingerprints_here.get(ref_id) not in (None, fingerprint):
            return f"made from other data than {ref_id.split('|')[0]} here"
    return None


def _fingerprints_here(manifest: dict) -> dict[str, str | None]:
    """Each packed data set's fingerprint on this machine (None when it cannot be loaded here)."""
    out = {}
    for ref_id in manifest.get("datasets", {}):
        name, *rest = ref_id.split("|")
        try:
            params = json.loads(rest[0]) if rest and rest[0].startswith("{") else {}
            transform = json.loads(rest[1]) if len(rest) > 1 else {}
            out[ref_id] = DataRef.of(name, params, transform).load().fingerprint
        except Exception:  # not available here: its entries cannot be checked, nor ever read
            out[ref_id] = None
    return out


def import_pack(path: str | Path, *, progress: Progress | None = None) -> PackReport:
    """Load a pack's entries into this machine's cache (see the glossary for every check)."""
    path, cache, report = Path(path), default_cache(), PackReport()
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise PackError(f"{path.name} is not a pack ({exc}); make one with `locality pack export`") from None
    with z:
        try:
            manifest = json.loads(_read_bounded(z, MANIFEST, MAX_MANIFEST_BYTES))
        except KeyError:
            raise PackError(f"{path.name} has no {MANIFEST}: not a pack made by `locality pack export`") from None
        except ValueError as exc:
            raise PackError(f"{path.name}: its manifest is not readable JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise PackError(f"{path.name} is not a {FORMAT} pack")
        entries = manifest.get("entries", [])
        if sum(int(e.get("bytes", 0)) for e in entries) > MAX_PACK_BYTES:
            raise PackError(f"{path.name} would unpack to more than {MAX_PACK_BYTES / 2**30:.0f} GiB")
        here = _fingerprints_here(manifest)
        total = 0
        for i, entry in enumerate(entries):
            key = str(entry.get("key", ""))
            if progress:
                progress(i / max(1, len(entries)), key[:80])
            why = _why_not(key, here, manifest)
            if why is not None:
                report.skipped.append((key, why))
                continue
            if key in cache:
                report.present += 1
                continue
            size = int(entry.get("bytes", 0))
            try:
                blob = _read_bounded(z, str(entry.get("member")), size)
            except KeyError:
                report.skipped.append((key, "its member is missing from the pack"))
                continue
            total += len(blob)
            if total > MAX_PACK_BYTES:
                raise PackError(f"{path.name} unpacks to more than {MAX_PACK_BYTES / 2**30:.0f} GiB")
            if len(blob) != size or hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
                report.skipped.append((key, "damaged: its size or checksum differs from the manifest"))
                continue
            try:
                arrays = decode(blob)  # the entry's own checksum, and plain arrays only (no pickle)
            except ValueError as exc:
                report.skipped.append((key, f"damaged: {exc}"))
                continue
            cache.set(key, arrays)
            report.written += 1
            report.bytes += len(blob)
    if progress:
        progress(1.0, f"{report.written} entries imported")
    return report
