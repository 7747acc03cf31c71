"""The warm-up in the background: started once per server process (not per session) when the app first runs.

It runs `python -m locality_core.views.warmup` as a child process at the lowest CPU priority with one torch thread, so
that interactive requests keep their core; the child ends with the server. The library's cache locks keep it,
a second server and a CLI run from computing the same entry twice. $LOCALITY_WARMUP=0 turns it off (tests).
"""

from __future__ import annotations

import os
import subprocess
import sys

import streamlit as st

from locality_core import settings


@st.cache_resource(show_spinner=False)
def start_warmup() -> subprocess.Popen | None:
    if not settings.WARMUP.flag():
        return None
    from locality_core.store.cache import default_cache_dir

    log_dir = default_cache_dir()
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # the child watches this process and ends with it (PR_SET_PDEATHSIG would follow the script thread that
    # started it, which ends with the first rerun)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LOCALITY_WARMUP_PARENT": str(os.getpid())}
    with open(log_dir / "warmup.log", "ab") as log:  # the child lowers its own priority (warmup.py's __main__)
        return subprocess.Popen([sys.executable, "-m", "locality_core.views.warmup"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
