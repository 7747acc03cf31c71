"""Small helpers shared by the fault tests: folders of random images and a tiny imported data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_images(folder: Path, n: int, side: int, mode: str = "L", seed: int = 0) -> Path:
    """``n`` random ``side`` x ``side`` PNGs (grayscale "L" or "RGB") in a new ``folder``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    shape = (side, side, 3) if mode == "RGB" else (side, side)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def import_tiny(home: Path, side: int = 8) -> None:
    """The data set ``user:tiny`` (12 grayscale images) in the data folder ``home`` ($LOCALITY_DATA_DIR)."""
    from locality_core.data import user

    user.import_images(write_images(home / "src", 12, side), "tiny")


PEAK_SCRIPT = """
import sys
def _kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))
{setup}
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the memory in use now
_base = _kb("VmRSS:")
try:
{body}
finally:
    print("PEAK_GROWTH_BYTES", (_kb("VmHWM:") - _base) * 1024, flush=True)
"""


def peak_growth(setup: str, body: str, *, env: dict | None = None, timeout: float = 600) -> tuple[int, str]:
    """Run ``setup`` then ``body`` (Python source) in a fresh interpreter; the growth of its peak resident memory
    during ``body`` in bytes (Linux: VmHWM reset through /proc/self/clear_refs after ``setup``), and its output."""
    import os
    import subprocess
    import sys
    import textwrap

    code = PEAK_SCRIPT.format(setup=textwrap.dedent(setup), body=textwrap.indent(textwrap.dedent(body), "    "))
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    out = done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("PEAK_GROWTH_BYTES")]
    assert lines, f"the measured code did not finish:\n{out[-3000:]}"
    return int(lines[-1].split()[1]), out


def lying_zip(path: Path, true_bytes: int, declared: int = 100, name: str = "big.png",
              extra: dict[str, bytes] | None = None) -> Path:
    """A zip whose member ``name`` declares ``declared`` bytes (local and central headers patched) but inflates
    to ``true_bytes`` zeros, plus the members ``extra`` (name -> bytes), intact. Written in 1 MiB chunks."""
    import struct
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(name, "w", force_zip64=False) as f:
            chunk = bytes(2**20)
            for _ in range(true_bytes // 2**20):
                f.write(chunk)
        for member, data in (extra or {}).items():
            zf.writestr(member, data)
    data = bytearray(path.read_bytes())
    local = data.find(b"PK\x03\x04")  # the first member's local header: uncompressed size at offset 22
    struct.pack_into("<I", data, local + 22, declared)
    central = data.find(b"PK\x01\x02")  # its central directory entry: uncompressed size at offset 24
    struct.pack_into("<I", data, central + 24, declared)
    path.write_bytes(bytes(data))
    return path


def png_bytes(side: int = 8, seed: int = 0) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()
