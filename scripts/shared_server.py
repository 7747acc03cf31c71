"""The shared-server cases of the fault campaign, tried from the outside: real servers on real ports, killed and
restarted, two on one cache folder, and a real browser. Prints one line per check: what should happen, what did.

    python scripts/shared_server.py                      # every case (about 10 minutes on 2 busy cores)
    python scripts/shared_server.py --case restart two-servers
    python scripts/shared_server.py --case read-only upload pixel-url      # the browser cases only

Cases
    restart       a server (`streamlit run serve.py`) SIGKILLed during its warm-up, then started again on the same
                  cache folder: its worker ends with it, the new one is healthy at once and resumes the warm-up,
                  no entry is written twice, every entry decodes, no lock is left held
    two-servers   two servers on one LOCALITY_CACHE_DIR, warming up the same views at once: each entry written
                  once (the other waits for the lock, then reads it), both serve pages, no lock left held
    read-only     LOCALITY_READ_ONLY=1 in a browser: the Your data page offers no upload and no deletion
    upload        the upload size limit in a browser (--server.maxUploadSize 1 and a 2 MB zip): Streamlit refuses
                  the file by its size, nothing is imported
    pixel-url     ?pixel=999,999 in a browser: the corner pixel is shown and the address says 27,27

"Written twice" is read off the cache's own database: a key whose store time changes was computed and stored a
second time (records meant to be rewritten, `RECORDS`, are left out). The warm-up is the small grf (2,000
fields) so that a case takes minutes, not an hour.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from locality_core.store.cache import ArrayCache  # noqa: E402

SMALL = "grf:n_train=2000,n_test=200"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
RESULTS: list[tuple[str, str, str, bool]] = []
RECORDS = ("timing-",)  # cache kinds that record the last run (e.g. how long a basis took), rewritten on purpose


def computed(key: str) -> bool:
    """Whether a cache key holds a computation (``v<version>/<kind>/...``), not a record rewritten on purpose."""
    kind = key.split("/")[1] if key.count("/") >= 1 else key
    return not kind.startswith(RECORDS)


def check(case: str, expected: str, observed: str, ok: bool) -> None:
    RESULTS.append((case, expected, observed, ok))
    print(f"{'ok  ' if ok else 'FAIL'} {case:<12} expected: {expected}; observed: {observed}", flush=True)


# ---------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, log: str, *, port: int | None = None, args: tuple = (), **env) -> tuple:
    """(process, url) of `streamlit run serve.py` with LOCALITY_* ``env``, its output in ``folder/log``."""
    port = port or free_port()
    full = {**os.environ, "LOCALITY_APP_DATASET": SMALL, "LOCALITY_WARMUP": "0", "PYTHONUNBUFFERED": "1", **env}
    out = open(folder / log, "ab")  # noqa: SIM115 (the server's, closed with it)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "serve.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.fileWatcherType", "none", *args], cwd=ROOT,
                            env=full, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(url: str, timeout: float = 120) -> float:
    """Seconds until /_stcore/health answers; raises TimeoutError."""
    start = time.time()
    while time.time() - start < timeout:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            return time.time() - start
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- the cache, from the outside

class Watcher(threading.Thread):
    """Polls the cache database read-only: the store time of every key it has seen, and the keys stored twice."""

    def __init__(self, cache_dir: Path, every: float = 0.2):
        super().__init__(daemon=True)
        self.db, self.every = cache_dir / "values" / "cache.db", every
        self.stored: dict[str, float] = {}
        self.twice: set[str] = set()
        self.halt = threading.Event()

    def poll(self) -> None:
        if not self.db.exists():
            return
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1) as db:
                rows = db.execute("SELECT key, store_time FROM Cache").fetchall()
        except sqlite3.Error:
            return
        for key, when in rows:
            if self.stored.setdefault(key, when) != when and computed(key):
                self.twice.add(key)

    def run(self) -> None:
        while not self.halt.wait(self.every):
            self.poll()

    def entries(self) -> int:
        self.poll()
        return len(self.stored)


def held_locks(cache_dir: Path) -> list[str]:
    """Lock files some process still holds (flock taken elsewhere)."""
    held = []
    for path in (cache_dir / "locks").glob("*.lock"):
        with open(path, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
            except OSError:
                held.append(path.name)
    return held


def damaged_entries(cache_dir: Path) -> tuple[int, int]:
    """(entries, entries that do not decode: a bad checksum, a truncated file)."""
    with sqlite3.connect(f"file:{cache_dir / 'values' / 'cache.db'}?mode=ro", uri=True) as db:
        keys = [k for (k,) in db.execute("SELECT key FROM Cache")]
    cache = ArrayCache(cache_dir, warn=lambda m: None)
    return len(keys), sum(cache.get(k) is None for k in keys)


def wait_for_entries(watcher: Watcher, at_least: int, timeout: float) -> int:
    start = time.time()
    while watcher.entries() < at_least and time.time() - start < timeout:
        time.sleep(0.5)
    return watcher.entries()


def settle(watcher: Watcher, quiet_s: float, timeout: float) -> int:
    """Wait until no new entry appears for ``quiet_s`` seconds (the warm-up done), at most ``timeout``."""
    start, count, since = time.time(), watcher.entries(), time.time()
    while time.time() - start < timeout and time.time() - since < quiet_s:
        time.sleep(2)
        if watcher.entries() != count:
            count, since = watcher.entries(), time.time()
    return count


# ---------------------------------------------------------------- the browser

def browser_page(playwright, url: str, timeout_ms: int = 240_000):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(url, timeout=timeout_ms)
    page.wait_for_selector(IDLE, timeout=timeout_ms)
    return browser, page


def serves_a_page(url: str) -> str:
    """"" when the Sensitivity page of ``url`` draws its maps without an exception, else what went wrong."""
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as p:
            browser, page = browser_page(p, url + "/?unet=false")
            page.wait_for_selector(".st-key-field_grid .js-plotly-plot", timeout=240_000)
            bad = page.locator('[data-testid="stException"]').count()
            browser.close()
            return "a traceback on the page" if bad else ""
    except Exception as exc:  # reported as the observation
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"


# ---------------------------------------------------------------- the cases

def case_restart(tmp: Path) -> None:
    cache = tmp / "restart-cache"
    env = {"LOCALITY_CACHE_DIR": str(cache), "LOCALITY_DATA_DIR": str(tmp / "data"), "LOCALITY_WARMUP": SMALL}
    watcher = Watcher(cache)
    watcher.start()
    port = free_port()
    proc, url = start_server(tmp, "restart-1.log", port=port, **env)
    wait_healthy(url)
    before = wait_for_entries(watcher, 8, 300)
    workers = children(proc.pid)
    proc.send_signal(signal.SIGKILL)  # mid warm-up: a worker is computing the next view
    proc.wait()
    deadline = time.time() + 30
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.5)
    left = [w for w in workers if alive(w)]
    check("restart", "the worker ends with its killed server", f"{len(workers)} worker(s), {len(left)} alive "
          f"{time.time() - deadline + 30:.0f} s later", not left)
    proc, url = start_server(tmp, "restart-2.log", port=port, **env)
    try:
        ready = wait_healthy(url)
        check("restart", "the restarted server answers at once", f"healthy after {ready:.1f} s", ready < 60)
        done = settle(watcher, 60, 900)
        check("restart", "the warm-up resumes where it was", f"{before} entries at the kill, {done} after",
              done > before)
        problem = serves_a_page(url)
        check("restart", "a page draws its maps, no hang", problem or "maps drawn", not problem)
    finally:
        stop(proc)
        watcher.halt.set()
    entries, bad = damaged_entries(cache)
    check("restart", "every entry decodes", f"{entries} entries, {bad} damaged", bad == 0)
    check("restart", "nothing written twice", f"{len(watcher.twice)} keys stored twice {sorted(watcher.twice)}",
          not watcher.twice)
    check("restart", "no lock left held", f"{len(held_locks(cache))} held", not held_locks(cache))


def case_two_servers(tmp: Path) -> None:
    cache = tmp / "shared-cache"
    env = {"LOCALITY_CACHE_DIR": str(cache), "LOCALITY_DATA_DIR": str(tmp / "data"), "LOCALITY_WARMUP": SMALL}
    watcher = Watcher(cache)
    watcher.start()
    servers = [start_server(tmp, f"two-{i}.log", **env) for i in (1, 2)]
    try:
        for _, url in servers:
            wait_healthy(url)
        done = settle(watcher, 60, 1200)
        check("two-servers", "both warm-ups finish", f"{done} entries, then none new for 60 s", done > 0)
        for i, (_, url) in enumerate(servers, 1):
            problem = serves_a_page(url)
            check("two-servers", f"server {i} draws a page, no hang", problem or "maps drawn", not problem)
    finally:
        for proc, _ in servers:
            stop(proc)
        watcher.halt.set()
    waits = (cache / "worker.log").read_text(errors="replace").count("waiting for") \
        if (cache / "worker.log").exists() else 0
    entries, bad = damaged_entries(cache)
    check("two-servers", "each entry computed once", f"{len(watcher.twice)} of {entries} keys stored twice "
          f"{sorted(watcher.twice)}; {waits} waits for the other server's lock", not watcher.twice)
    check("two-servers", "every entry decodes", f"{bad} damaged", bad == 0)
    check("two-servers", "no lock left held", f"{len(held_locks(cache))} held", not held_locks(cache))


def _zip_of_noise(megabytes: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("noise.png", os.urandom(megabytes * 2**20))
    return buf.getvalue()


def case_browser(tmp: Path, which: set[str]) -> None:
    from playwright.sync_api import sync_playwright

    data = tmp / "browser-data"
    env = {"LOCALITY_CACHE_DIR": str(tmp / "browser-cache"), "LOCALITY_DATA_DIR": str(data)}
    with sync_playwright() as p:
        if "read-only" in which:
            proc, url = start_server(tmp, "read-only.log", LOCALITY_READ_ONLY="1", **env)
            try:
                wait_healthy(url)
                browser, page = browser_page(p, url + "/your_data")
                page.get_by_text("This server is read-only").wait_for(timeout=120_000)
                uploads = page.locator('[data-testid="stFileUploader"]').count()
                deletes = page.get_by_role("button", name="Delete").count()
                check("read-only", "no upload, no delete, said on the page",
                      f"{uploads} uploaders, {deletes} delete buttons", uploads == 0 and deletes == 0)
                browser.close()
            finally:
                stop(proc)
        if "upload" in which:
            proc, url = start_server(tmp, "upload.log", args=("--server.maxUploadSize", "1"), **env)
            try:
                wait_healthy(url)
                browser, page = browser_page(p, url + "/your_data")
                archive = tmp / "two-megabytes.zip"
                archive.write_bytes(_zip_of_noise(2))
                page.locator('[data-testid="stFileUploader"] input[type=file]').set_input_files(str(archive))
                page.get_by_text("or smaller").first.wait_for(timeout=60_000)
                said = page.get_by_text("or smaller").first.inner_text()
                imported = list((data / "user").glob("*.npz")) if (data / "user").exists() else []
                check("upload", "a file over the limit is refused by its size, nothing imported",
                      f"{said.strip()!r}; {len(imported)} data sets imported", not imported)
                browser.close()
            finally:
                stop(proc)
        if "pixel-url" in which:
            proc, url = start_server(tmp, "pixel.log", **env)
            try:
                wait_healthy(url)
                browser, page = browser_page(p, url + "/?pixel=999,999&unet=false")
                page.get_by_text("pixel row 27, col 27").first.wait_for(timeout=240_000)
                page.wait_for_function("() => location.search.includes('pixel=27%2C27') || "
                                       "location.search.includes('pixel=27,27')", timeout=60_000)
                check("pixel-url", "the corner pixel shown, the address corrected", page.url.split("?")[1],
                      "999" not in page.url)
                browser.close()
            finally:
                stop(proc)


CASES = ("restart", "two-servers", "read-only", "upload", "pixel-url")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs="+", choices=CASES, default=list(CASES))
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="shared-server-") as tmp:
        tmp = Path(tmp)
        if "restart" in args.case:
            case_restart(tmp)
        if "two-servers" in args.case:
            case_two_servers(tmp)
        browser_cases = set(args.case) & {"read-only", "upload", "pixel-url"}
        if browser_cases:
            case_browser(tmp, browser_cases)
    failed = [r for r in RESULTS if not r[3]]
    print(f"{len(RESULTS) - len(failed)} of {len(RESULTS)} checks as expected; load average "
          f"{os.getloadavg()[0]:.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
