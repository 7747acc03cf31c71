"""The `locality` command line (`main`): every computation of the dashboard, scriptable, with progress bars."""

from locality_core.cli.main import main

__all__ = ["main"]
