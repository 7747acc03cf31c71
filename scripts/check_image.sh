#!/usr/bin/env bash
# Build the container image with podman and check it as a user would: healthy, /sensitivity drawn in Chromium at
# 1280x720 (screenshot kept), /a/b/c answered by serve.py, `locality --help` inside, read-only code, a fast stop,
# and the same once more under an arbitrary user id (`--user 12345:0`). Not part of the default test run: it is
# minutes of CPU (the pip layer alone is several minutes on a cold build).
#
#   sudo bash scripts/check_image.sh                 # as root, on Debian 12
#   PRECOMPUTE="python -m locality_core precompute fashion-mnist --all" sudo -E bash scripts/check_image.sh
#
# Prints a table of what it measured (build, image size, start to healthy, first page, stop) with the load;
# the screenshots go to out/image-check/. Needs the project's .venv (Playwright) and /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
IMAGE=${IMAGE:-localhost/locality-explorer:check}
PORT=${PORT:-18501}
PRECOMPUTE=${PRECOMPUTE:-}
OUT=$ROOT/out/image-check
PY=${PY:-$ROOT/.venv/bin/python}
mkdir -p "$OUT"
log() { printf '%s  %s\n' "$(date +%T)" "$*"; }
fail() { log "FAIL: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
RESULTS=()
result() { RESULTS+=("$1|$2"); log "$1: $2"; }

# ---------------------------------------------------------------------------------------------------------------
# THIS ENVIRONMENT'S WORKAROUNDS (a Debian 12 VM without Docker, without a registry, with its own pip set-up).
# None of this belongs in the Dockerfile; on a machine with Docker, `make image` and `docker run` need none of it.
#  1. podman, buildah, runc and debootstrap from Debian.
#  2. No registry: a stand-in for python:3.11-slim-bookworm, built with debootstrap (Debian 12 minbase plus
#     passwd, with its python3.11 as a virtual environment in /usr/local, so python and pip sit in /usr/local/bin,
#     and the official image's PATH), imported under that very name, so that the Dockerfile builds unchanged
#     (--pull=never).
#  3. crun refuses this VM's hybrid cgroups: --runtime runc. Root here lacks CAP_SYS_RESOURCE, so podman's
#     default rlimits fail: explicit --ulimit values.
#  4. PyTorch's CPU index is unreachable here; this machine's pip finds the CPU wheel on disk. The build gets
#     root's pip configuration (as a pip.conf mounted read-only, plus the folders it names), with retries = 0 so
#     that the unreachable index costs no time.
# ---------------------------------------------------------------------------------------------------------------
BASE=docker.io/library/python:3.11-slim-bookworm
RUNTIME=(--runtime runc)
LIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=4096:4096)

workaround_packages() {
  local need=()
  for tool in podman buildah runc debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
  [ ${#need[@]} -eq 0 ] && return
  log "installing ${need[*]} (workaround 1)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

workaround_base_image() {
  podman image exists "$BASE" && return
  local mirror dir
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
           | grep -v '^[[:space:]]*#' | grep -o -E 'https?://[^ ]+' | grep -v security | head -1 || true)
  [ -n "$mirror" ] || fail "no Debian mirror found in /etc/apt/sources.list*"
  dir=$(mktemp -d /tmp/stand-in-base.XXXX)
  log "building a stand-in for $BASE with debootstrap from $mirror (workaround 2, about 3 min)"
  debootstrap --variant=minbase --include=python3.11,python3-venv,python3-pip,ca-certificates,passwd \
    bookworm "$dir" "$mirror" >/dev/null
  chroot "$dir" python3.11 -m venv /usr/local
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  tar -C "$dir" -c . | podman import --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$BASE" >/dev/null
  rm -rf "$dir"
}

PIP_MOUNTS=()
workaround_pip_config() {
  local conf=$OUT/pip.conf line key value
  local -A seen=()
  echo "[global]" > "$conf"
  while IFS= read -r line; do  # :env:.find-links='/opt/wheels', global.find-links=... (the first one wins, as in pip)
    key=${line%%=*}; key=${key#*.}; value=${line#*=}; value=${value#\'}; value=${value%\'}
    case $key in retries|timeout|default-timeout|disable-pip-version-check) continue ;; esac
    [ -n "${seen[$key]:-}" ] && continue
    seen[$key]=1
    echo "$key = $value" >> "$conf"
    for path in $value; do  # a file:// index (.../simple) links to files beside it: mount its parent
      [[ $path == file://* ]] && path=$(dirname "${path#file://}")
      [[ $path == /* && -e $path ]] && PIP_MOUNTS+=(-v "$path:$path:ro")
    done
  done < <(pip config list 2>/dev/null)
  printf 'retries = 0\ntimeout = 15\n' >> "$conf"
  PIP_MOUNTS+=(-v "$conf:/etc/pip.conf:ro")
  log "pip configuration for the build (workaround 4): $(grep -c = "$conf") settings, ${#PIP_MOUNTS[@]} mounts"
}

# --------------------------------------------------------------------------------------------- the checks
wait_healthy() {  # container, start time -> seconds to healthy
  local name=$1 start=$2
  for _ in $(seq 1 240); do
    if podman healthcheck run "$name" >/dev/null 2>&1; then since "$start"; return 0; fi
    [ "$(podman inspect -f '{{.State.Running}}' "$name")" = true ] || { podman logs "$name" | tail -30; return 1; }
    sleep 0.5
  done
  podman logs "$name" | tail -30
  return 1
}

browser_check() {  # url, screenshot file -> prints "seconds to the drawn maps"
  "$PY" - "$1" "$2" "$ROOT/docs/screenshots/sensitivity.png" <<'PYEOF'
import sys, time
import numpy as np
from PIL import Image
from playwright.sync_api import sync_playwright

url, shot, reference = sys.argv[1:4]
args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    start = time.monotonic()
    page.goto(url + "/sensitivity")
    page.wait_for_selector(".st-key-picker [data-testid=pixel-picker]", timeout=600_000)
    page.wait_for_selector(".st-key-field_grid .js-plotly-plot", timeout=600_000)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=600_000)
    page.wait_for_function("() => !document.querySelector('[data-testid^=\"stSkeleton\"]')", timeout=600_000)
    seconds = time.monotonic() - start
    page.wait_for_timeout(1000)
    page.screenshot(path=shot)
    text = page.inner_text("body")
    errors = page.locator('[data-testid="stException"]').count()
    browser.close()
assert "Traceback" not in text and not errors, text[:1000]
got = np.asarray(Image.open(shot).convert("L").resize((320, 180)), float)
ref = np.asarray(Image.open(reference).convert("L").resize((320, 180)), float)
assert got.shape == (180, 320) and got.std() > 10, "the screenshot is blank"
similarity = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
assert similarity > 0.5, f"the screenshot does not look like the reference (correlation {similarity:.2f})"
print(f"{seconds:.1f} {similarity:.2f}")
PYEOF
}

run_and_check() {  # label, extra podman run arguments...
  local label=$1; shift
  local name=locality-check-$$ start first out healthy similarity location
  podman rm -f "$name" >/dev/null 2>&1 || true
  start=$(now)
  podman run -d --name "$name" "${RUNTIME[@]}" "${LIMITS[@]}" -p "127.0.0.1:$PORT:8501" "$@" "$IMAGE" >/dev/null
  healthy=$(wait_healthy "$name" "$start") || fail "$label: never healthy"
  result "$label: start to healthy (s)" "$healthy"
  out=$(browser_check "http://127.0.0.1:$PORT" "$OUT/sensitivity-$label.png") || fail "$label: /sensitivity"
  read -r first similarity <<<"$out"
  result "$label: /sensitivity drawn in Chromium 1280x720 (s)" "$first"
  result "$label: screenshot correlation with docs/screenshots/sensitivity.png" \
    "$similarity ($OUT/sensitivity-$label.png)"
  location=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$PORT/a/b/c")
  [[ $location == 30[1278]\ */a* ]] || fail "$label: /a/b/c answered '$location', expected a redirect to /a"
  result "$label: /a/b/c" "$location"
  podman exec "$name" locality --help | grep -q "locality app" || fail "$label: locality --help inside"
  result "$label: locality --help inside" "ok ($(podman exec "$name" locality --version))"
  podman exec "$name" sh -c 'd=$(python -c "import locality_core, os; print(os.path.dirname(locality_core.__file__))");
    test ! -w "$d" && test ! -w "$d/cli/main.py" && test -w "$LOCALITY_CACHE_DIR" && test -w "$HOME"' \
    || fail "$label: the code is writable, or the cache or HOME is not"
  result "$label: code read-only, cache and HOME writable" "as $(podman exec "$name" id -u):$(podman exec "$name" id -g)"
  [ "$(podman exec "$name" cat /proc/1/comm)" = tini ] || fail "$label: PID 1 is not tini"
  start=$(now)
  podman stop -t 10 "$name" >/dev/null
  result "$label: podman stop (s)" "$(since "$start")"
  podman logs "$name" 2>&1 | grep -q Traceback && { podman logs "$name" | tail -40; fail "$label: a traceback"; }
  podman rm "$name" >/dev/null
}

# --------------------------------------------------------------------------------------------- main
[ "$(id -u)" = 0 ] || fail "run as root (podman here runs rootful)"
[ -x "$PY" ] || fail "no $PY: run \`make setup\` first (the check drives Chromium with its Playwright)"
workaround_packages
workaround_base_image
workaround_pip_config
log "load before the build: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(now)
podman build "${RUNTIME[@]}" "${LIMITS[@]}" --format docker --pull=never "${PIP_MOUNTS[@]}" \
  --build-arg PRECOMPUTE="$PRECOMPUTE" -t "$IMAGE" . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; fail "podman build"; }
result "build (s), PRECOMPUTE='${PRECOMPUTE}'" "$(since "$start") (load after: $(cut -d' ' -f1-3 /proc/loadavg))"
result "image size (MB)" "$(podman image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f", $1 / 1e6 }')"
podman image inspect -f '{{.HealthCheck}}' "$IMAGE" | grep -q _stcore/health || fail "HEALTHCHECK missing"
run_and_check default
run_and_check arbitrary-user --user 12345:0
echo
echo "| what | measured |"
echo "| --- | --- |"
for row in "${RESULTS[@]}"; do echo "| ${row%%|*} | ${row#*|} |"; done
log "all checks passed (load: $(cut -d' ' -f1-3 /proc/loadavg))"
