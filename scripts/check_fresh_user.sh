#!/usr/bin/env bash
# The README's set-up as a new user would run it: a non-root account with pip's default configuration, on a
# copy of this checkout. Not part of the default test run (it installs a full environment: minutes).
#
#   sudo bash scripts/check_fresh_user.sh            # as root, on Debian 12
#
# 1. `make setup DRY_RUN=1`: what pip would install, shown from its --dry-run --report. Asserts that no CUDA
#    package is selected: either the CPU build from PyTorch's CPU index, or (where that index cannot be
#    reached, as on the machines this project is built on) a stop with a message and nothing installed.
# 2. The same with a stand-in for PyTorch's CPU index (a local PEP 503 folder holding the CPU wheel that this
#    machine has on disk): asserts that the CPU build is then selected, with every other package from PyPI.
# 3. `make test` with that index, in a mount namespace where the Debian packages' files (Fashion-MNIST, the
#    MATE and KDE photographs, Chromium) are hidden: asserts the set-up's notice, the mnist-5k fallback as the
#    default data set, no failing test, and a reason for every test that needs a missing piece.
#    TESTS='-m "not slow"' narrows the run (pytest options, added to PYTEST_ADDOPTS).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
USER_NAME=${USER_NAME:-tester}
HOME_DIR=/home/$USER_NAME
COPY=$HOME_DIR/locality-explorer
OUT=$ROOT/out/fresh-user
TESTS=${TESTS:-}
CPU_WHEEL=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1 || true)
mkdir -p "$OUT"
log() { printf '%s  %s\n' "$(date +%T)" "$*"; }
fail() { log "FAIL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (it creates the user $USER_NAME and a mount namespace)"

id "$USER_NAME" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$USER_NAME"
fresh_copy() {
  rm -rf "$COPY" && mkdir -p "$COPY"
  git ls-files -co --exclude-standard -z | tar --null -T - -c | tar -x -C "$COPY"
  chown -R "$USER_NAME:" "$COPY"
}
as_user() {  # a login-like environment with nothing of root's: pip's default configuration (no config file)
  runuser -u "$USER_NAME" -- env -i HOME="$HOME_DIR" USER="$USER_NAME" PATH=/usr/local/bin:/usr/bin:/bin \
    LANG=C.UTF-8 PIP_CONFIG_FILE=/dev/null bash -c "cd '$COPY' && $1"
}
log "load: $(cut -d' ' -f1-3 /proc/loadavg); python3 of $USER_NAME: $(runuser -u "$USER_NAME" -- /usr/bin/python3 -V)"

# ---------------------------------------------------------------- 1. pip's default configuration, real indexes
fresh_copy
start=$(date +%s)
set +e
as_user "make setup DRY_RUN=1" > "$OUT/1-dry-run.log" 2>&1
status=$?
set -e
log "1. make setup DRY_RUN=1 as $USER_NAME: exit $status in $(( $(date +%s) - start )) s ($OUT/1-dry-run.log)"
grep '^setup:' "$OUT/1-dry-run.log" | sed 's/^/     /'
python3 - "$COPY/.venv/setup-report.json" <<'EOF' || fail "1. a CUDA package would be installed"
import json, sys
report = json.load(open(sys.argv[1]))
torch = [i["metadata"]["version"] for i in report["install"] if i["metadata"]["name"] == "torch"]
print(f"     last report: torch {torch}, {len(report['install'])} packages")
EOF
if [ "$status" = 0 ]; then
  grep -q "no CUDA package: installing that" "$OUT/1-dry-run.log" || fail "1. exit 0 without a CPU-only resolution"
else
  grep -q "Nothing was installed" "$OUT/1-dry-run.log" || fail "1. failed without the promised message"
fi
[ ! -e "$COPY/.venv/lib/python3.11/site-packages/torch" ] || fail "1. a dry run installed torch"

# ---------------------------------------------------------------- 2. a stand-in for PyTorch's CPU index
[ -n "$CPU_WHEEL" ] || fail "no torch 2.13.0+cpu wheel in /opt/wheels for the stand-in index"
INDEX=$HOME_DIR/cpu-index
rm -rf "$INDEX" && mkdir -p "$INDEX/torch"
cp "$CPU_WHEEL" "$INDEX/torch/"
name=$(basename "$CPU_WHEEL")
printf '<!DOCTYPE html><html><body><a href="%s">%s</a></body></html>\n' "${name//+/%2B}" "$name" > "$INDEX/torch/index.html"
chown -R "$USER_NAME:" "$INDEX"
start=$(date +%s)
as_user "make setup DRY_RUN=1 TORCH_INDEX=file://$INDEX" > "$OUT/2-dry-run-index.log" 2>&1 \
  || { tail -20 "$OUT/2-dry-run-index.log"; fail "2. dry run with the stand-in index"; }
log "2. with a stand-in CPU index: $(( $(date +%s) - start )) s ($OUT/2-dry-run-index.log)"
grep '^setup:' "$OUT/2-dry-run-index.log" | sed 's/^/     /'
grep -q "with the CPU index: torch 2.13.0+cpu" "$OUT/2-dry-run-index.log" || fail "2. the CPU build was not chosen"

# ---------------------------------------------------------------- 3. make test without the Debian packages
fresh_copy
# /usr/bin without chromium: hard links of everything else (same file system), mounted over /usr/bin
BIN_COPY=/usr/.bin-without-chromium
rm -rf "$BIN_COPY" && cp -al /usr/bin "$BIN_COPY" && rm -f "$BIN_COPY/chromium"
trap 'rm -rf "$BIN_COPY"' EXIT
hide="mount -t tmpfs none /usr/share/datasets; mount -t tmpfs none /usr/share/backgrounds;
      mount -t tmpfs none /usr/share/wallpapers; mount --bind $BIN_COPY /usr/bin"
cat > "$HOME_DIR/make-test.sh" <<EOF
cd '$COPY'
export PYTEST_ADDOPTS='-rs -p no:cacheprovider $TESTS'
make test TORCH_INDEX=file://$INDEX && .venv/bin/locality datasets
EOF
start=$(date +%s)
set +e
unshare --mount --propagation private bash -c "$hide
  runuser -u '$USER_NAME' -- env -i HOME='$HOME_DIR' USER='$USER_NAME' PATH=/usr/local/bin:/usr/bin:/bin \
    LANG=C.UTF-8 PIP_CONFIG_FILE=/dev/null bash '$HOME_DIR/make-test.sh'" > "$OUT/3-make-test.log" 2>&1
status=$?
set -e
log "3. make test without the Debian packages: exit $status in $(( $(date +%s) - start )) s ($OUT/3-make-test.log)"
grep -q "note: Debian packages not installed (need root): dataset-fashion-mnist mate-backgrounds plasma-workspace-wallpapers chromium" \
  "$OUT/3-make-test.log" || fail "3. the set-up's notice is missing"
grep -E "^(setup:|=+ .*(passed|failed))" "$OUT/3-make-test.log" | sed 's/^/     /'
[ "$status" = 0 ] || { grep -E "^(FAILED|ERROR)" "$OUT/3-make-test.log" | head -30; fail "3. make test failed"; }
grep -q "^default: mnist-5k" "$OUT/3-make-test.log" || fail "3. the default data set is not mnist-5k"
log "3. skipped, with their reasons:"
grep "^SKIPPED" "$OUT/3-make-test.log" | sed -E 's/^SKIPPED \[[0-9]+\] //' | sort | uniq -c | sed 's/^/     /'
grep "^SKIPPED" "$OUT/3-make-test.log" | grep -q -E "Fashion-MNIST|dataset-fashion-mnist" || fail "3. no Fashion-MNIST skip"
log "all checks passed"
