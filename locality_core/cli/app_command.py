"""`locality app [STREAMLIT FLAGS]`: the dashboard, as `streamlit run serve.py` from wherever it is installed.

serve.py is app.py plus the "page not found" for deep addresses (/a/b/c). Every flag after `app` goes to
`streamlit run` unchanged (`locality app --server.port 8502 --server.address 0.0.0.0`); the serving defaults of
the dashboard's own .streamlit/config.toml apply, as Streamlit reads the config beside the script it runs.

Where the dashboard is: the package `locality_dashboard` of an installed wheel (or of `pip install -e .`), whose
folder holds app.py, serve.py, pages/, ui/ and .streamlit/; else the checkout this library sits in.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from locality_core.cli.validate import InvalidInput

SCRIPT = "serve.py"
CHECKOUT = Path(__file__).resolve().parents[2]


def dashboard_dir() -> Path:
    """The folder of serve.py; InvalidInput saying what to install when there is none."""
    spec = importlib.util.find_spec("locality_dashboard")
    candidates = list(spec.submodule_search_locations or []) if spec else []
    for folder in [*map(Path, candidates), CHECKOUT]:
        if (folder / SCRIPT).is_file():
            return folder
    raise InvalidInput("the dashboard is not installed with this copy of locality_core (no serve.py found); "
                       "install the package with `pip install locality-explorer` or run from a checkout.")


def streamlit_command(flags: list[str]) -> list[str]:
    """The command line that starts the dashboard with ``flags`` passed to `streamlit run`."""
    if importlib.util.find_spec("streamlit") is None:
        raise InvalidInput("the dashboard needs Streamlit: `pip install streamlit` (or install locality-explorer "
                           "with its dependencies).")
    return [sys.executable, "-m", "streamlit", "run", str(dashboard_dir() / SCRIPT), *flags]


def _cmd_app(args) -> int:
    command = streamlit_command(args.streamlit_flags)
    sys.stdout.flush()
    os.execv(command[0], command)  # Streamlit takes this process over: signals (Ctrl+C, a container's stop) reach it


def add_command(subparsers) -> None:
    p = subparsers.add_parser("app", help="start the dashboard (flags after `app` go to `streamlit run`)",
                              description=__doc__.split("\n\n")[0] + " Flags: see `streamlit run --help`.")
    p.set_defaults(func=_cmd_app, streamlit_flags=[], passes_flags=True)
