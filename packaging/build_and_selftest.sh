#!/usr/bin/env bash
# Build the bundle from a clean clone and prove it runs offline.
#
#   packaging/build_and_selftest.sh [--versions pinned|today|current] [--venv DIR] [--python PY]
#                                   [--from-checkout] [--out DIR] [--keep] [-- SELFTEST ARGS...]
#
#   --versions pinned (default)  build in a fresh venv with exactly packaging/constraints.txt
#                     (`pip install -c packaging/constraints.txt -e '.[package]'`): the tested set,
#                     so the same commit builds the same app next month
#   --versions today  a fresh venv with what pip resolves today (`pip install -e '.[package]'`);
#                     prints how that differs from the pinned set
#   --versions current  the environment of PY as it is; prints how it differs from the pinned set
#   --python PY       the interpreter (default $PYTHON, else python): the venvs are made with it
#   --venv DIR        the venv for pinned/today (default: DIR/venv under --out); an existing one
#                     is reused (pip then only changes what differs)
#   (clone)           git clone this repository's HEAD into a temp folder and build that, so
#                     uncommitted files cannot hide a packaging mistake
#   --from-checkout   build the working tree as it is (uncommitted changes included)
#   --out DIR         where the clone, venv, build files and dist/ go (default: a temp folder)
#   --keep            keep the temp folder (the bundle) afterwards
#   -- ARGS           run `LegoStudio selftest ARGS` instead of `LegoStudio --self-test`
#                     (e.g. -- --model /path/to/model when the Shape World model is not built yet)
#
# The bundle's self-test and a start of the desktop window run with networking removed (a
# private network namespace with no interfaces: `unshare -rn`, or `unshare -n` as root) where the
# kernel allows it; otherwise proxies point at a closed local port — the self-test's own
# in-process socket block is on either way. The exit code is the self-test's: 0 only when it
# passed; when it fails, the full tracebacks of the failed checks are printed.
# Prints bundle size, build time, self-test result and time, and time to the first window.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
VERSIONS=pinned
VENV=""
FROM_CHECKOUT=0
KEEP=0
OUT=""
SELFTEST=(selftest)
while [ $# -gt 0 ]; do
    case "$1" in
        --versions) VERSIONS="$2"; shift ;;
        --venv) VENV="$2"; shift ;;
        --python) PYTHON="$2"; shift ;;
        --from-checkout) FROM_CHECKOUT=1 ;;
        --keep) KEEP=1 ;;
        --out) OUT="$2"; KEEP=1; shift ;;
        --) shift; SELFTEST=(selftest "$@"); break ;;
        -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$VERSIONS" in
    pinned|today|current) ;;
    *) echo "error: --versions is pinned, today or current (got '$VERSIONS')" >&2; exit 2 ;;
esac

if [ -z "$OUT" ]; then
    OUT="$(mktemp -d "${TMPDIR:-/tmp}/lego-studio-build.XXXXXX")"
fi
mkdir -p "$OUT"
cleanup() { [ "$KEEP" -eq 1 ] || rm -rf "$OUT"; }
trap cleanup EXIT

if [ "$FROM_CHECKOUT" -eq 1 ]; then
    SRC="$ROOT"
else
    SRC="$OUT/src"
    rm -rf "$SRC"
    git clone --quiet "$ROOT" "$SRC"
    echo "clean clone of $(git -C "$SRC" rev-parse --short HEAD) in $SRC"
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "$VERSIONS" != current ]; then
    VENV="${VENV:-$OUT/venv}"
    [ -d "$VENV" ] || "$PYTHON" -m venv "$VENV"
    PYTHON="$VENV/bin/python"
    [ -x "$PYTHON" ] || PYTHON="$VENV/Scripts/python.exe"
    start=$(date +%s)
    if [ "$VERSIONS" = pinned ]; then
        echo "installing the pinned set (packaging/constraints.txt) in $VENV"
        "$PYTHON" -m pip install --quiet -c "$SRC/packaging/constraints.txt" -e "$SRC[package]"
    else
        echo "installing what pip resolves today in $VENV"
        "$PYTHON" -m pip install --quiet --upgrade --upgrade-strategy eager -e "$SRC[package]"
    fi
    echo "install time: $(( $(date +%s) - start )) s"
fi
echo "versions ($VERSIONS): $("$PYTHON" -c 'import sys, torch, diffusers, transformers; print(sys.version.split()[0], "torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__)')"
set +e
"$PYTHON" "$SRC/packaging/lockfile.py" diff --python "$PYTHON"
differs=$?
set -e
if [ "$VERSIONS" = pinned ] && [ "$differs" -ne 0 ]; then
    echo "error: the venv does not hold the pinned set (see above); delete $VENV or fix packaging/constraints.txt" >&2
    exit 1
fi

# PYTHONPATH first: an editable install of another checkout must not be what gets bundled.
PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}" PYTHON="$PYTHON" DIST="$OUT/dist" WORK="$OUT/build" \
    "$SRC/packaging/build.sh" | tee "$OUT/build.log"
BUNDLE="$OUT/dist/LegoStudio"

if unshare -rn true 2>/dev/null; then
    OFFLINE=(unshare -rn)
    how="no network namespace (unshare -rn)"
elif [ "$(id -u)" -eq 0 ] && unshare -n true 2>/dev/null; then
    OFFLINE=(unshare -n)
    how="no network namespace (unshare -n)"
else
    OFFLINE=(env http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9
             HTTPS_PROXY=http://127.0.0.1:9 ALL_PROXY=http://127.0.0.1:9 no_proxy= NO_PROXY=)
    how="proxies to a closed port (unshare unavailable)"
fi
APP_HOME="$OUT/home"  # a throwaway user-data folder for the window start
echo "running the bundle offline: $how"

start=$(date +%s.%N)
set +e
"${OFFLINE[@]}" "$BUNDLE/LegoStudio" "${SELFTEST[@]}" --log "$OUT/selftest-tracebacks.log" 2>&1 | tee "$OUT/selftest.log"
selftest_rc=${PIPESTATUS[0]}
set -e
if [ "$selftest_rc" -ne 0 ] && [ -s "$OUT/selftest-tracebacks.log" ]; then
    echo "== full tracebacks of the failed checks =="
    cat "$OUT/selftest-tracebacks.log"
fi
selftest_s=$(awk "BEGIN { print $(date +%s.%N) - $start }")

start=$(date +%s.%N)
window_line=$("${OFFLINE[@]}" env QT_QPA_PLATFORM=offscreen LEGO_STUDIO_EXIT_AFTER_SHOW=1 LEGO_STUDIO_HOME="$APP_HOME" \
    "$BUNDLE/LegoStudio" 2>/dev/null | grep "first window after" || echo "no window reported")
window_exit_s=$(awk "BEGIN { print $(date +%s.%N) - $start }")

echo
echo "== summary =="
echo "versions: $VERSIONS ($([ "$differs" -eq 0 ] && echo "= packaging/constraints.txt" || echo "differ from packaging/constraints.txt, see above"))"
grep -E "^(bundle size|build time):" "$OUT/build.log"
printf 'self-test: %s (exit %d) in %.1f s wall, including start-up\n' \
    "$([ "$selftest_rc" -eq 0 ] && echo passed || echo FAILED)" "$selftest_rc" "$selftest_s"
printf '%s (process ran %.1f s until it had quit)\n' "$window_line" "$window_exit_s"
[ "$KEEP" -eq 1 ] && echo "bundle kept: $BUNDLE"
exit "$selftest_rc"
