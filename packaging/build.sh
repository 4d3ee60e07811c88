#!/usr/bin/env bash
# Build the one-folder desktop bundle dist/LegoStudio/ from this checkout.
#
#   packaging/build.sh            # uses the current python (PYTHON=... to pick another)
#
# Prints the bundle size and build time. The torch build installed in that python decides what
# the bundle can run on (CUDA / MPS / CPU) and most of its size: see packaging/BUILDING.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
DIST="${DIST:-$ROOT/dist}"
WORK="${WORK:-$ROOT/build/pyinstaller}"
cd "$ROOT"

if ! "$PYTHON" -c "import PyInstaller" 2>/dev/null; then
    echo "PyInstaller is not installed; installing it (pip install 'pyinstaller>=6')"
    "$PYTHON" -m pip install "pyinstaller>=6"
fi
"$PYTHON" -c "import lego_studio" || { echo "error: lego_studio is not importable by $PYTHON (pip install -e $ROOT)" >&2; exit 1; }
if [ ! -d "$ROOT/resources/models/shapeworld" ]; then
    echo "warning: resources/models/shapeworld is missing: the bundle will not contain the Shape World model" >&2
    echo "         (LegoStudio --self-test then needs: LegoStudio selftest --model <model folder>)" >&2
fi

start=$(date +%s)
"$PYTHON" -m PyInstaller --noconfirm --clean "$ROOT/packaging/LegoStudio.spec" --distpath "$DIST" --workpath "$WORK"
seconds=$(( $(date +%s) - start ))

BUNDLE="$DIST/LegoStudio"
if [ ! -x "$BUNDLE/LegoStudio" ] && [ ! -x "$BUNDLE/LegoStudio.exe" ]; then
    echo "error: the build finished but $BUNDLE has no LegoStudio executable" >&2
    exit 1
fi
size=$(du -sh "$BUNDLE" | cut -f1)
files=$(find "$BUNDLE" -type f | wc -l)
echo "bundle: $BUNDLE"
echo "bundle size: $size in $files files"
echo "build time: ${seconds} s"
echo "largest parts:"
# `head` closes the pipe early; under pipefail that SIGPIPE would fail the whole build.
{ du -sh "$BUNDLE"/_internal/* 2>/dev/null | sort -rh | head -8 | sed 's/^/  /'; } || true
