#!/usr/bin/env bash
# Remove what packaging/install.sh installed (same PREFIX, default ~/.local).
#
#   packaging/uninstall.sh            # removes the app; keeps your concepts, settings and projects
#   packaging/uninstall.sh --purge    # also deletes the app's data, settings and cache folders
#
# Projects live in their own folders (default ~/Documents/Lego Studio Projects) and are never
# deleted by this script.
set -euo pipefail

PREFIX="${PREFIX:-$HOME/.local}"
PURGE=0
for arg in "$@"; do
    case "$arg" in
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $arg (use --purge or nothing)" >&2; exit 2 ;;
    esac
done

APP_DIR="$PREFIX/opt/LegoStudio"
removed=0
remove() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -rf "$1"
        echo "removed $1"
        removed=$((removed + 1))
    fi
}

remove "$APP_DIR"
remove "$PREFIX/share/applications/lego-studio.desktop"
for icon in "$PREFIX"/share/icons/hicolor/*/apps/lego-studio.png "$PREFIX"/share/icons/hicolor/*/apps/lego-studio.svg; do
    remove "$icon"
done
# Only our own link: a lego-studio from a pip install stays.
LINK="$PREFIX/bin/lego-studio"
if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$APP_DIR/LegoStudio" ]; then
    remove "$LINK"
fi
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$PREFIX/share/applications" 2>/dev/null || true
[ "$removed" -gt 0 ] || echo "Lego Studio was not installed under $PREFIX"

# Where the app keeps user data (platformdirs on Linux: the XDG base directories).
DATA_DIR="${XDG_DATA_HOME:-$HOME/.local/share}/LegoStudio"
CONFIG_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/LegoStudio"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/LegoStudio"
if [ "$PURGE" -eq 1 ]; then
    for dir in "$DATA_DIR" "$CONFIG_DIR" "$CACHE_DIR"; do remove "$dir"; done
    echo "user data deleted; project folders (default ~/Documents/Lego Studio Projects) were kept"
else
    echo "your data was kept:"
    echo "  concept library and data: $DATA_DIR"
    echo "  settings:                 $CONFIG_DIR"
    echo "  cache:                    $CACHE_DIR"
    echo "  (run with --purge to delete these; project folders are never deleted)"
fi
if [ -n "${LEGO_STUDIO_HOME:-}" ]; then
    echo "note: LEGO_STUDIO_HOME is set; data used with it lives in $LEGO_STUDIO_HOME and was not touched"
fi
