"""Every environment variable Locality Explorer reads, in one place (the README's table is `table()`).

Each is read when it is used, not at import, so a test or a server that sets one afterwards is obeyed. Nothing
else in the project reads ``os.environ`` for a ``LOCALITY_`` name (a test checks it).

    settings.CACHE_DIR.path()          # a Path, or None when unset
    settings.OFFLINE.flag()            # True for anything but "", "0"
    settings.MEMORY_BUDGET_GB.number() # a float, or None when unset or not a number
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Setting:
    name: str
    meaning: str
    default: str = ""

    def text(self) -> str:
        """The value, stripped; the default when unset."""
        return os.environ.get(self.name, self.default).strip()

    def is_set(self) -> bool:
        return bool(os.environ.get(self.name, "").strip())

    def flag(self) -> bool:
        return self.text() not in ("", "0", "false", "no")

    def path(self) -> Path | None:
        return Path(self.text()).expanduser() if self.text() else None

    def number(self) -> float | None:
        try:
            return float(self.text()) if self.text() else None
        except ValueError:
            return None


SETTINGS: list[Setting] = []


def _setting(name: str, meaning: str, default: str = "") -> Setting:
    setting = Setting(name, meaning, default)
    SETTINGS.append(setting)
    return setting


CACHE_DIR = _setting("LOCALITY_CACHE_DIR", "where computed arrays are kept (default `$XDG_CACHE_HOME` or "
                                           "`~/.cache`, then `/locality-explorer`)")
DATA_DIR = _setting("LOCALITY_DATA_DIR", "downloads, imported data sets and your trained models (default "
                                         "`~/.local/share/locality-explorer`)")
MODEL_DIR = _setting("LOCALITY_MODEL_DIR", "a folder of weights searched first: `NAME/unet.pt` per data set")
OFFLINE = _setting("LOCALITY_OFFLINE", "`1`: never download; a missing data set says where to put its files")
MEMORY_BUDGET_GB = _setting("LOCALITY_MEMORY_BUDGET_GB", "the memory budget of one process (a server, a command), "
                                                         "in GiB: what the data sets, imports, statistics and "
                                                         "sampling runs that requests start and the in-memory "
                                                         "caches may hold together; larger requests are refused "
                                                         "(default 2, for a 2-core 8 GB laptop)")
READ_ONLY = _setting("LOCALITY_READ_ONLY", "`1`: the dashboard allows no upload and no deletion (a class server)")
APP_DATASET = _setting("LOCALITY_APP_DATASET", "the dashboard's default data set, with options: "
                                               "`grf:n_train=2000,n_test=200`")
WARMUP = _setting("LOCALITY_WARMUP", "`0`: the dashboard computes no default view ahead (tests); `1`: every default "
                                     "view, in the order a talk needs (the default); or the data sets to warm up, "
                                     "`;`-separated, with options: `fashion-mnist;grf:n_train=2000`", "1")
TORCH_THREADS = _setting("LOCALITY_TORCH_THREADS", "torch threads per dashboard computation (default half the "
                                                   "cores)")
FIELD_PRECISION = _setting("LOCALITY_FIELD_PRECISION", "`float32` or `bfloat16`: the precision of network "
                                                       "Jacobians in the dashboard (default bfloat16 where the CPU "
                                                       "runs it natively)")
JOBS = _setting("LOCALITY_JOBS", "how the dashboard runs long work: `process` (a background worker process for the "
                                 "warm-up; the default), `thread` (all in the server; the default when the cache "
                                 "folder cannot be used), `inline` (in the page's own run: headless tests)")
DIST_TIMEOUT_S = _setting("LOCALITY_DIST_TIMEOUT_S", "under torchrun: how long a rank waits in a collective for the "
                                                     "others before it fails with an error, in seconds (a rank that "
                                                     "died or hangs then ends the run)", "600")
WARMUP_PARENT = _setting("LOCALITY_WARMUP_PARENT", "internal: the server's process id, given to its background "
                                                   "worker (which ends with it)")


def table() -> str:
    """The settings as a Markdown table (the README's)."""
    rows = ["| variable | what it sets |", "| --- | --- |"]
    rows += [f"| `{s.name}` | {s.meaning} |" for s in SETTINGS]
    return "\n".join(rows)
