#!/usr/bin/env bash
# Move the bundle to today's versions: the one command that regenerates the pinned set.
#
#   packaging/lock.sh [--no-build] [--venv DIR]
#
# 1. a fresh venv (PYTHON=... picks the interpreter; the bundle's Python, 3.11 today) with
#    `pip install -e '.[dev,package]'`: what pip resolves today
# 2. its `pip freeze` -> packaging/constraints.txt
# 3. packaging/record_runtime_modules.py in it -> packaging/runtime_modules.txt
# 4. README.md's "Last tested with" line <- constraints.txt
# 5. packaging/build_and_selftest.sh --from-checkout with that venv: the new set must build a
#    bundle that passes its offline self-test (skip with --no-build; then run it before committing)
# Review `git diff packaging/ README.md`, then commit the three files together.
#
#   --venv DIR   where the venv goes (default: a temp folder, deleted afterwards; an existing
#                DIR is deleted first so the resolution starts from nothing)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
BUILD=1
VENV=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --venv) VENV="$2"; shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
KEEP_VENV=1
if [ -z "$VENV" ]; then
    VENV="$(mktemp -d "${TMPDIR:-/tmp}/lego-studio-lock.XXXXXX")/venv"
    KEEP_VENV=0
fi
cleanup() { [ "$KEEP_VENV" -eq 1 ] || rm -rf "$(dirname "$VENV")"; }
trap cleanup EXIT

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
VPY="$VENV/bin/python"
[ -x "$VPY" ] || VPY="$VENV/Scripts/python.exe"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VPY" -m pip install --quiet --upgrade pip
"$VPY" -m pip install --quiet -e "$ROOT[dev,package]"
freeze="$(dirname "$VENV")/freeze.txt"
"$VPY" -m pip freeze --all > "$freeze"  # --all: setuptools too (PyInstaller needs it)
"$VPY" "$ROOT/packaging/lockfile.py" write "$freeze"
QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}" "$VPY" "$ROOT/packaging/record_runtime_modules.py"
"$VPY" "$ROOT/packaging/lockfile.py" readme
if [ "$BUILD" -eq 1 ]; then
    "$ROOT/packaging/build_and_selftest.sh" --from-checkout --versions current --python "$VPY"
fi
echo "lock: review 'git diff packaging/constraints.txt packaging/runtime_modules.txt README.md', then commit them together"
