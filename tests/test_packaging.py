"""The package as users get it: the wheel's contents, an install outside the checkout, `locality app` and
`--version`, and the set-up's choice of the torch build (scripts/setup_venv.py).

The wheel tests build with the environment's setuptools (`pip wheel --no-build-isolation`, no network). The
install test puts the wheel into a fresh virtual environment in a temporary folder, with the dependencies seen
through a path file onto this environment's site-packages (a plain path: its own .pth files, among them the
checkout's editable install, are not processed), and runs every command from outside the checkout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

import locality_core
from locality_core.cli import app_command
from locality_core.cli.main import main
from locality_core.data import load_dataset
from locality_core.denoisers.evaluate import heldout_mse_table
from locality_core.denoisers.registry import get_denoiser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


setup_venv = _load_script("setup_venv")


# ---------------------------------------------------------------- the command line

def test_version_is_the_library_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"locality-explorer {locality_core.__version__}"


def test_app_passes_every_flag_to_streamlit_run_of_serve_py(monkeypatch):
    ran = []
    monkeypatch.setattr(app_command.os, "execv", lambda path, argv: ran.append(argv))
    main(["app", "--server.port", "8599", "--server.address=0.0.0.0", "--theme.base", "dark"])
    (argv,) = ran
    assert argv[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(argv[4]).name == "serve.py" and (Path(argv[4]).parent / "app.py").is_file()
    assert argv[5:] == ["--server.port", "8599", "--server.address=0.0.0.0", "--theme.base", "dark"]


def test_other_commands_still_refuse_unknown_flags(capsys):
    with pytest.raises(SystemExit) as done:
        main(["datasets", "--server.port", "1"])
    assert done.value.code == 2 and "unrecognized arguments: --server.port 1" in capsys.readouterr().err


# ---------------------------------------------------------------- the set-up's choice of the torch build

def report(*packages: tuple[str, str]) -> dict:
    """A pip installation report (format version 1) installing ``packages`` (name, version)."""
    return {"version": "1", "install": [
        {"metadata": {"name": name, "version": version}, "download_info": {"url": f"https://example.org/{name}.whl"}}
        for name, version in packages]}


CUDA_SET = report(("numpy", "2.4.6"), ("torch", "2.13.0"), ("nvidia-cublas-cu12", "12.9.1.4"),
                  ("triton", "3.6.0"))
CPU_SET = report(("numpy", "2.4.6"), ("torch", "2.13.0+cpu"))


def test_cuda_packages_are_recognised_in_a_report():
    assert setup_venv.cuda_packages(CUDA_SET) == ["nvidia-cublas-cu12==12.9.1.4", "triton==3.6.0"]
    assert setup_venv.cuda_packages(report(("torch", "2.13.0+cu126"))) == ["torch==2.13.0+cu126"]
    assert setup_venv.cuda_packages(CPU_SET) == []
    assert setup_venv.torch_line(CPU_SET) == "torch 2.13.0+cpu from https://example.org/torch.whl"


def test_the_resolved_requirement_is_the_pinned_torch():
    pinned = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("torch")]
    assert setup_venv.torch_requirement() == pinned[0] and pinned[0].startswith("torch==")


@pytest.fixture
def resolutions(monkeypatch):
    """Fake resolutions: the report without the CPU index, and with it; records which indexes were asked."""
    asked, answers = [], {}

    def resolve(venv, extra_index):
        asked.append(extra_index)
        return answers[extra_index]

    monkeypatch.setattr(setup_venv, "resolve", resolve)
    monkeypatch.setattr(setup_venv, "index_answers", lambda url: answers.get("probe"))
    return asked, answers


def test_a_local_cpu_build_is_installed_as_it_is(resolutions, tmp_path):
    asked, answers = resolutions
    answers[None] = CPU_SET
    assert setup_venv.choose_index(tmp_path, "cpu", setup_venv.CPU_INDEX) is None
    assert asked == [None]  # the CPU index is never asked: a machine that cannot reach it loses no time


def test_a_cuda_resolution_switches_to_the_cpu_index(resolutions, tmp_path):
    asked, answers = resolutions
    answers.update({None: CUDA_SET, setup_venv.CPU_INDEX: CPU_SET})
    assert setup_venv.choose_index(tmp_path, "cpu", setup_venv.CPU_INDEX) == setup_venv.CPU_INDEX
    assert asked == [None, setup_venv.CPU_INDEX]


@pytest.mark.parametrize("why", ["probe fails", "index still gives CUDA"])
def test_no_cuda_download_without_being_asked(resolutions, tmp_path, why):
    asked, answers = resolutions
    answers.update({None: CUDA_SET, setup_venv.CPU_INDEX: CUDA_SET})
    if why == "probe fails":
        answers["probe"] = "Could not resolve host"
    with pytest.raises(setup_venv.SetupError, match="TORCH=cuda") as err:
        setup_venv.choose_index(tmp_path, "cpu", setup_venv.CPU_INDEX)
    assert "Nothing was installed" in str(err.value)
    assert asked == ([None] if why == "probe fails" else [None, setup_venv.CPU_INDEX])


def test_torch_cuda_keeps_pypis_build(resolutions, tmp_path):
    asked, answers = resolutions
    answers[None] = CUDA_SET
    assert setup_venv.choose_index(tmp_path, "cuda", setup_venv.CPU_INDEX) is None and asked == [None]


@pytest.mark.parametrize(("has", "asked", "removed"), [
    ("yes", "cpu", ["torch", "nvidia-cublas-cu12", "triton"]), ("no", "cpu", []), ("no", "cuda", ["torch"]),
    (None, "cpu", [])])
def test_switching_builds_uninstalls_the_other_one(monkeypatch, tmp_path, has, asked, removed):
    calls = []
    monkeypatch.setattr(setup_venv, "installed_torch_cuda", lambda venv: has)
    cuda = ["nvidia-cublas-cu12==12.9.1.4", "triton==3.6.0"] if has == "yes" else []
    monkeypatch.setattr(setup_venv, "installed_cuda_packages", lambda venv: cuda)
    monkeypatch.setattr(setup_venv, "pip", lambda venv, *args: calls.append(args))
    setup_venv.drop_other_build(tmp_path, asked)
    assert calls == ([("uninstall", "--yes", "--quiet", *removed)] if removed else [])


@pytest.mark.slow
def test_a_real_pip_report_of_this_machine_has_no_cuda_package(tmp_path):
    """pip's own report for the pinned torch, resolved with this machine's configuration (no install)."""
    out = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
                    "--report", str(out), "torch==2.13.0"], check=True, capture_output=True)
    resolved = json.loads(out.read_text())
    (torch,) = [name for name, _, _ in setup_venv.installs(resolved) if name == "torch"]
    cuda = setup_venv.cuda_packages(resolved)
    if cuda:
        pytest.skip(f"this machine's pip resolves the CUDA build ({cuda[0]}): the set-up adds the CPU index here")
    assert setup_venv.torch_line(resolved).startswith("torch 2.13.0")


# ---------------------------------------------------------------- the wheel

@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the checkout (setuptools writes build/ and *.egg-info where it builds)."""
    source, out = tmp_path_factory.mktemp("source") / "src", tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "build", "*.egg-info", "__pycache__", ".*_cache", "runs", "out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True)
    (built,) = out.glob("locality_explorer-*.whl")
    return built


def checkout_files(folder: str, pattern: str) -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).glob(pattern)
            if p.is_file() and "__pycache__" not in p.parts and p.name != "checkpoint.pt"}


@pytest.mark.slow
def test_the_wheel_carries_the_library_the_weights_and_the_dashboard(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    library = checkout_files("locality_core", "**/*.py") | checkout_files("locality_core/assets", "**/*")
    dashboard = {f"locality_dashboard/{name}" for name in
                 checkout_files("ui", "*.py") | checkout_files("pages", "*.py") | {"app.py", "serve.py",
                                                                                  ".streamlit/config.toml"}}
    assert library - names == set() and dashboard - names == set()
    assert "locality_core/assets/models/fashion-mnist/unet.pt" in names
    assert "locality_core/assets/models/natural-patches/card.json" in names
    assert "locality_core/assets/data/mnist_5k.csv.gz" in names
    tops = {name.split("/")[0] for name in names}
    assert tops == {"locality_core", "locality_dashboard", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    assert not [n for n in names if "checkpoint.pt" in n or "/tests/" in n or ".venv" in n or "__pycache__" in n]


@pytest.mark.slow
def test_the_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        info = wheel.name.split("-py3")[0] + ".dist-info"
        metadata = z.read(f"{info}/METADATA").decode()
        assert z.read(f"{info}/licenses/LICENSE").decode().startswith("MIT License")
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert f"Version: {locality_core.__version__}\n" in metadata
    assert "License-Expression: MIT\n" in metadata and "Requires-Python: >=3.11" in metadata
    required = {line.split(":", 1)[1].strip().split(">")[0].split("<")[0]
                for line in metadata.splitlines() if line.startswith("Requires-Dist:")}
    assert {"torch", "numpy", "pillow", "diskcache", "tqdm", "streamlit", "plotly", "threadpoolctl"} <= required
    assert not required & {"scipy", "scikit-image", "mlxtend"}
    assert "locality = locality_core.cli:main" in entry_points


# ---------------------------------------------------------------- installed outside the checkout

@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """A fresh environment holding the wheel; returns the environment variables to run its commands with."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--quiet", str(wheel)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", PYTHONNOUSERSITE="1")
    return {"env": env, "cwd": tmp_path_factory.mktemp("elsewhere"), "venv": venv}


def run_installed(installed: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(installed["venv"] / "bin" / "locality"), *args], env=installed["env"],
                          cwd=installed["cwd"], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_installed_command_runs_outside_the_checkout(installed):
    where = subprocess.run([str(installed["venv"] / "bin" / "python"), "-c",
                            "import locality_core; print(locality_core.__file__)"], env=installed["env"],
                           cwd=installed["cwd"], capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(installed["venv"])), where
    helped = run_installed(installed, "--help")
    assert helped.returncode == 0 and "locality app" in helped.stdout
    version = run_installed(installed, "--version")
    assert version.stdout.strip() == f"locality-explorer {locality_core.__version__}"


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed: `apt-get install dataset-fashion-mnist`")
def test_the_installed_package_evaluates_its_shipped_unet(installed):
    """The installed command finds the weights inside the wheel and gets the checkout's numbers with them."""
    done = run_installed(installed, "eval", "fashion-mnist", "--denoiser", "unet", "--json", "--n", "64")
    assert done.returncode == 0, done.stderr[-2000:]
    got = {row["t"]: row["mse"] for row in json.loads(done.stdout)}
    data = load_dataset("fashion-mnist")
    rows = heldout_mse_table(data, {"unet": get_denoiser("unet", data)}, n=64, seed=0, include_wiener=False,
                             progress=False)
    assert got == pytest.approx({row["t"]: row["unet"] for row in rows}, rel=1e-4)
    assert len(got) == 10 and all(0 < mse < 1 for mse in got.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not found at {CHROMIUM}: `apt-get install chromium`")
def test_the_installed_app_shows_a_page_in_chromium(installed, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    port, log = free_port(), tmp_path / "app.log"
    env = {**installed["env"], "LOCALITY_APP_DATASET": "grf:n_train=600,n_test=64"}
    with open(log, "w") as out:
        proc = subprocess.Popen([str(installed["venv"] / "bin" / "locality"), "app", "--server.port", str(port),
                                 "--server.headless", "true"], env=env, cwd=installed["cwd"], stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, log.read_text()[-3000:]
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(url + "/sensitivity")
            page.wait_for_selector(".st-key-field_grid .js-plotly-plot", timeout=240_000)
            assert page.get_by_role("link", name="Samples").count()
            browser.close()
        script = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[4].decode()  # locality app execs Streamlit
        assert script.startswith(str(installed["venv"])) and script.endswith("locality_dashboard/serve.py"), script
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(30)
