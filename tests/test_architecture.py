"""The architecture as checks, not prose: every environment variable declared in one place and listed in the README,
the layers and the imports inside functions as `make lint` checks them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from locality_core import settings

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for folder in ("locality_core", "ui", "pages") for p in (ROOT / folder).rglob("*.py")] + \
    [ROOT / "app.py", ROOT / "serve.py"]


def test_the_readme_lists_every_setting_as_declared():
    assert settings.table() in (ROOT / "README.md").read_text()
    assert len({s.name for s in settings.SETTINGS}) == len(settings.SETTINGS)


def test_no_module_but_settings_reads_a_locality_variable():
    """Reading through `settings` keeps the list complete: a new variable read anywhere else fails here."""
    pattern = re.compile(r"""(environ|getenv)[^\n]*["']LOCALITY_""")
    offenders = [str(p.relative_to(ROOT)) for p in SOURCES if p.name != "settings.py" and pattern.search(p.read_text())]
    assert not offenders, offenders
    used = {m for p in SOURCES for m in re.findall(r"settings\.([A-Z_]+)\b", p.read_text())}
    declared = {name for name in dir(settings) if isinstance(getattr(settings, name), settings.Setting)}
    assert used == declared, (used ^ declared)  # none read elsewhere, none declared and never read


@pytest.mark.slow
def test_the_layers_hold_and_no_folder_has_an_import_cycle():
    """import-linter's contracts (pyproject.toml) on this checkout: what `make lint` runs in CI."""
    linter = Path(sys.executable).with_name("lint-imports")
    if not linter.exists():
        pytest.skip("import-linter is not installed (requirements-dev.txt)")
    result = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.count("KEPT") >= 3 and "BROKEN" not in result.stdout


def test_imports_inside_library_functions_are_few_and_explained():
    result = subprocess.run([sys.executable, "scripts/lint_imports_inside.py"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_the_core_install_never_imports_diffusers():
    """diffusers is an optional extra: the library, its registry and the command line load without importing it
    (only checking or loading an imported network does)."""
    import subprocess

    code = ("import sys, locality_core, locality_core.cli.main, locality_core.views.catalogue; "
            "from locality_core.denoisers.registry import list_denoisers; list_denoisers(); "
            "print('diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
