#!/usr/bin/env bash
# Build the bundle from a clean clone and prove it runs offline.
#
#   packaging/build_and_selftest.sh [--from-checkout] [--out DIR] [--keep] [-- SELFTEST ARGS...]
#
#   (default)         git clone this repository's HEAD into a temp folder and build that, so
#                     uncommitted files cannot hide a packaging mistake
#   --from-checkout   build the working tree as it is (uncommitted changes included)
#   --out DIR         where the clone, build files and dist/ go (default: a temp folder)
#   --keep            keep the temp folder (the bundle) afterwards
#   -- ARGS           run `LegoStudio selftest ARGS` instead of `LegoStudio --self-test`
#                     (e.g. -- --model /path/to/model when the Shape World model is not built yet)
#
# Uses the current python environment (PYTHON=...) for the build. The bundle's self-test and a
# start of the desktop window run with networking removed (`unshare -rn`, a private network
# namespace with no interfaces) where the kernel allows it; otherwise proxies point at a closed
# local port — the self-test's own in-process socket block is on either way.
# Prints bundle size, build time, self-test result and time, and time to the first window.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
FROM_CHECKOUT=0
KEEP=0
OUT=""
SELFTEST=(--self-test)
while [ $# -gt 0 ]; do
    case "$1" in
        --from-checkout) FROM_CHECKOUT=1 ;;
        --keep) KEEP=1 ;;
        --out) OUT="$2"; KEEP=1; shift ;;
        --) shift; SELFTEST=(selftest "$@"); break ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

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

# PYTHONPATH first: an editable install of another checkout must not be what gets bundled.
PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}" PYTHON="$PYTHON" DIST="$OUT/dist" WORK="$OUT/build" \
    "$SRC/packaging/build.sh" | tee "$OUT/build.log"
BUNDLE="$OUT/dist/LegoStudio"

if unshare -rn true 2>/dev/null; then
    OFFLINE=(unshare -rn)
    how="no network namespace (unshare -rn)"
else
    OFFLINE=(env http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9
             HTTPS_PROXY=http://127.0.0.1:9 ALL_PROXY=http://127.0.0.1:9 no_proxy= NO_PROXY=)
    how="proxies to a closed port (unshare unavailable)"
fi
APP_HOME="$OUT/home"  # a throwaway user-data folder for the window start
echo "running the bundle offline: $how"

start=$(date +%s.%N)
set +e
"${OFFLINE[@]}" "$BUNDLE/LegoStudio" "${SELFTEST[@]}" 2>&1 | tee "$OUT/selftest.log"
selftest_rc=${PIPESTATUS[0]}
set -e
selftest_s=$(echo "$(date +%s.%N) - $start" | bc)

start=$(date +%s.%N)
window_line=$("${OFFLINE[@]}" env QT_QPA_PLATFORM=offscreen LEGO_STUDIO_EXIT_AFTER_SHOW=1 LEGO_STUDIO_HOME="$APP_HOME" \
    "$BUNDLE/LegoStudio" 2>/dev/null | grep "first window after" || echo "no window reported")
window_exit_s=$(echo "$(date +%s.%N) - $start" | bc)

echo
echo "== summary =="
grep -E "^(bundle size|build time):" "$OUT/build.log"
printf 'self-test: %s (exit %d) in %.1f s wall, including start-up\n' \
    "$([ "$selftest_rc" -eq 0 ] && echo passed || echo FAILED)" "$selftest_rc" "$selftest_s"
printf '%s (process ran %.1f s until it had quit)\n' "$window_line" "$window_exit_s"
[ "$KEEP" -eq 1 ] && echo "bundle kept: $BUNDLE"
exit "$selftest_rc"
