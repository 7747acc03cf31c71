"""The virtual environment of `make setup`: the pinned packages, the CPU build of torch unless asked otherwise, and
this project (editable).

    python3 scripts/setup_venv.py [--venv .venv] [--torch cpu|cuda] [--cpu-index URL] [--dry-run]

Why: for `torch==2.13.0` on Linux x86_64, PyPI serves the CUDA build (torch, triton and about 17 nvidia-* packages:
a 5.6 GB environment instead of 2.0 GB), and PyTorch keeps its CPU build on an index of its own. A machine whose
pip already finds the CPU build (a local wheel, a configured mirror) must not be sent to that index, nor wait for
it when it is unreachable. So:

1. resolve the pinned torch (the one requirement with a CUDA build) and its dependencies with this machine's own
   pip configuration, installing nothing (``pip install --dry-run --report``); when no CUDA package is in the
   report, install the requirements as the machine's configuration gives them;
2. otherwise (``--torch cpu``, the default) check in one request that the CPU index answers, and resolve again
   with it as an extra index (``2.13.0+cpu`` satisfies ``torch==2.13.0`` and is preferred to ``2.13.0``);
3. when a CUDA package would still come, stop with a message and install nothing: never a silent multi-GB download.
After the installation, the environment is checked once more: with ``--torch cpu`` no CUDA package may be in it.

``--torch cuda`` installs PyPI's default build (CUDA on Linux). Switching an existing environment from one build to
the other first uninstalls the build it has. ``--dry-run`` stops after the resolution: it shows what would be
installed, from where, and installs nothing. The set-up log says which build was chosen and why; the last
report is kept in ``<venv>/setup-report.json``.

Glossary
    report       pip's installation report (JSON): ``install``, one entry per package, with ``metadata`` (name,
                 version) and ``download_info`` (url)
    CUDA package an entry whose version carries ``+cu`` (e.g. ``2.13.0+cu126``), or named ``nvidia-*`` or
                 ``triton`` (which only the CUDA builds of torch pull in)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ("requirements.txt", "requirements-dev.txt")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_TIMEOUT_S = 10.0


def say(message: str) -> None:
    print(f"setup: {message}", flush=True)


# ---------------------------------------------------------------- reading pip's report

def installs(report: dict) -> list[tuple[str, str, str]]:
    """(name, version, url) of every package the report would install."""
    return [(item["metadata"]["name"], item["metadata"]["version"], item.get("download_info", {}).get("url", ""))
            for item in report.get("install", [])]


def is_cuda(name: str, version: str) -> bool:
    name = name.lower()
    return "+cu" in version or name.startswith("nvidia-") or name == "triton"


def cuda_packages(report: dict) -> list[str]:
    """``name==version`` of each CUDA package in the report (empty: a CPU-only set)."""
    return [f"{name}=={version}" for name, version, _ in installs(report) if is_cuda(name, version)]


def torch_line(report: dict) -> str:
    for name, version, url in installs(report):
        if name.lower() == "torch":
            return f"torch {version} from {url or 'an index'}"
    return "torch already satisfied"


# ---------------------------------------------------------------- running pip in the environment

def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv_python(venv)), "-m", "pip", "--disable-pip-version-check", *args], check=True)


def requirement_args() -> list[str]:
    return [arg for name in REQUIREMENTS for arg in ("-r", str(ROOT / name))]


def torch_requirement() -> str:
    """The torch line of requirements.txt (``torch==2.13.0``)."""
    lines = (ROOT / REQUIREMENTS[0]).read_text().splitlines()
    return next(line.split("#")[0].strip() for line in lines if line.replace(" ", "").startswith("torch="))


def resolve(venv: Path, extra_index: str | None) -> dict:
    """pip's report for a fresh install of the pinned torch and its dependencies (nothing is installed)."""
    out = venv / "setup-report.json"
    index = ["--extra-index-url", extra_index] if extra_index else []
    pip(venv, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(out), *index,
        torch_requirement())
    return json.loads(out.read_text())


def installed_cuda_packages(venv: Path) -> list[str]:
    listed = subprocess.run([str(venv_python(venv)), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, check=True)
    return [f"{p['name']}=={p['version']}" for p in json.loads(listed.stdout) if is_cuda(p["name"], p["version"])]


def index_answers(url: str) -> str | None:
    """None when the index serves a page for torch; otherwise why not (in one request, at most 10 s)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=PROBE_TIMEOUT_S) as response:
            response.read(1)
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def installed_torch_cuda(venv: Path) -> str | None:
    """"yes" / "no" for the torch in the environment (CUDA build or not), None when there is none."""
    code = ("import importlib.util, sys\n"
            "if importlib.util.find_spec('torch') is None: sys.exit(3)\n"
            "import torch; print('yes' if torch.version.cuda else 'no')")
    done = subprocess.run([str(venv_python(venv)), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


# ---------------------------------------------------------------- the decision

class SetupError(Exception):
    pass


def choose_index(venv: Path, torch: str, cpu_index: str) -> str | None:
    """The extra index to install with (None: this machine's configuration as it is); SetupError to stop."""
    say(f"resolving {torch_requirement()} with this machine's pip configuration (pip install --dry-run --report)")
    report = resolve(venv, None)
    cuda = cuda_packages(report)
    say(f"it would install {len(installs(report))} packages: {torch_line(report)}; "
        + (f"{len(cuda)} CUDA packages ({', '.join(cuda[:3])}, ...)" if cuda else "no CUDA package"))
    if torch == "cuda":
        say("TORCH=cuda: installing PyPI's default build of torch (the CUDA build on Linux, several GB)")
        return None
    if not cuda:
        say("CPU build of torch: installing that")
        return None
    say(f"that is the CUDA build; trying PyTorch's CPU index {cpu_index}")
    why = index_answers(cpu_index) if cpu_index.startswith(("http://", "https://")) else None
    if why is not None:
        raise SetupError(f"PyTorch's CPU index {cpu_index} cannot be reached ({why}), and without it pip would "
                         f"install the CUDA build of torch (several GB). Nothing was installed. Either make the "
                         f"CPU wheel reachable (a mirror: `make setup TORCH_INDEX=URL`, or a local wheel with "
                         f"pip's find-links), or accept the CUDA build: `make setup TORCH=cuda`.")
    report = resolve(venv, cpu_index)
    cuda = cuda_packages(report)
    if cuda:
        raise SetupError(f"even with {cpu_index}, pip would install CUDA packages ({', '.join(cuda[:5])}). "
                         "Nothing was installed. Use `make setup TORCH=cuda` to accept them.")
    say(f"with the CPU index: {torch_line(report)}, no CUDA package: installing that")
    return cpu_index


def drop_other_build(venv: Path, torch: str) -> None:
    """Uninstall the torch build (and its CUDA packages) that the environment has when the other one is asked for."""
    has_cuda = installed_torch_cuda(venv)
    if has_cuda is None or (has_cuda == "yes") == (torch == "cuda"):
        return
    names = ["torch"] + [package.split("==")[0] for package in installed_cuda_packages(venv)]
    say(f"the environment has the {'CUDA' if has_cuda == 'yes' else 'CPU'} build of torch; uninstalling it "
        f"({len(names)} packages) for TORCH={torch}")
    pip(venv, "uninstall", "--yes", "--quiet", *names)


def setup(venv: Path, torch: str, cpu_index: str, dry_run: bool) -> None:
    if not venv_python(venv).exists():
        say(f"creating {venv} with {sys.executable} (Python {sys.version.split()[0]})")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    extra = choose_index(venv, torch, cpu_index)
    if dry_run:
        say(f"dry run: nothing installed (the report: {venv / 'setup-report.json'})")
        return
    drop_other_build(venv, torch)
    pip(venv, "install", "--quiet", *(["--extra-index-url", extra] if extra else []), *requirement_args())
    pip(venv, "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(ROOT))
    if torch == "cpu" and (cuda := installed_cuda_packages(venv)):
        raise SetupError(f"the environment holds CUDA packages after all ({', '.join(cuda[:5])}); remove "
                         f"{venv} and run the set-up again, or use TORCH=cuda.")
    done = subprocess.run([str(venv_python(venv)), "-c",
                           "import torch; print(torch.__version__, torch.version.cuda or 'CPU only')"],
                          capture_output=True, text=True, check=True)
    say(f"installed: torch {done.stdout.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--torch", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--cpu-index", default=CPU_INDEX, help=f"PyTorch's CPU wheel index (default {CPU_INDEX})")
    parser.add_argument("--dry-run", action="store_true", help="resolve and report, install nothing")
    args = parser.parse_args(argv)
    try:
        setup(args.venv, args.torch, args.cpu_index, args.dry_run)
    except SetupError as exc:
        print(f"setup: error: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"setup: error: {' '.join(map(str, exc.cmd[:6]))} ... failed (exit {exc.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
