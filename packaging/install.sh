#!/usr/bin/env bash
# Install the Lego Studio bundle for the current user (no root needed).
#
#   packaging/install.sh [BUNDLE]     BUNDLE: the built dist/LegoStudio folder (default)
#
# Copies the bundle to $PREFIX/opt/LegoStudio, the desktop entry to
# $PREFIX/share/applications, the icons to $PREFIX/share/icons/hicolor/<size>/apps and links
# $PREFIX/bin/lego-studio to the app. PREFIX defaults to ~/.local. Installing again replaces the
# previous copy. packaging/uninstall.sh removes it all again.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PREFIX="${PREFIX:-$HOME/.local}"
BUNDLE="${1:-$ROOT/dist/LegoStudio}"
APP_DIR="$PREFIX/opt/LegoStudio"
DESKTOP_DIR="$PREFIX/share/applications"
ICON_ROOT="$PREFIX/share/icons/hicolor"
BIN_DIR="$PREFIX/bin"

die() { echo "error: $*" >&2; exit 1; }

[ -d "$BUNDLE" ] || die "$BUNDLE: no such bundle folder (build it with packaging/build.sh)"
[ -x "$BUNDLE/LegoStudio" ] || die "$BUNDLE/LegoStudio: missing or not executable (not a Lego Studio bundle?)"
[ -f "$HERE/lego-studio.desktop" ] || die "$HERE/lego-studio.desktop: desktop entry template missing"

# System libraries: Qt's X11 plugin needs libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1 (and
# libxcb-image0, libxcb-render-util0, libxcb-randr0, libxcb-shape0, libxcb-xfixes0, libxcb-xkb1,
# libxkbcommon-x11-0), which a fresh desktop may lack. Ask the dynamic linker which are missing.
missing_system_libraries() {
    local plugin
    plugin="$(find "$1" -name libqxcb.so -print -quit 2>/dev/null || true)"
    [ -n "$plugin" ] && command -v ldd >/dev/null 2>&1 || return 0
    ldd "$plugin" 2>/dev/null | awk '/=> not found/ {print $1}' | sort -u
}
MISSING_LIBS=""
if [ "$(uname -s)" = Linux ]; then
    MISSING_LIBS="$(missing_system_libraries "$BUNDLE" | tr '\n' ' ' | sed 's/ *$//')"
fi
MISSING_PACKAGES="$(for so in $MISSING_LIBS; do
    echo "$so" | sed -E -e 's/^(lib.*[0-9])\.so\.([0-9]+).*$/\1-\2/' -e 's/^(lib.*)\.so\.([0-9]+).*$/\1\2/'
done | tr '\n' ' ' | sed 's/ *$//')"

# Icons: from the bundle itself, else from the source checkout.
ICON_SRC="$BUNDLE/_internal/resources/icons"
[ -f "$ICON_SRC/lego-studio-48.png" ] || ICON_SRC="$ROOT/resources/icons"
[ -f "$ICON_SRC/lego-studio-48.png" ] || die "$ICON_SRC: no lego-studio-<size>.png icons found"

# Copy next to the target, then swap, so an interrupted install never leaves half an app.
mkdir -p "$PREFIX/opt"
STAGING="$(mktemp -d "$PREFIX/opt/.LegoStudio.install.XXXXXX")"
trap 'rm -rf "$STAGING"' EXIT
cp -a "$BUNDLE/." "$STAGING/"
if [ -e "$APP_DIR" ]; then
    OLD="$PREFIX/opt/.LegoStudio.old.$$"
    mv "$APP_DIR" "$OLD"
    mv "$STAGING" "$APP_DIR"
    rm -rf "$OLD"
else
    mv "$STAGING" "$APP_DIR"
fi
trap - EXIT

mkdir -p "$DESKTOP_DIR"
sed -e "s|^Exec=.*|Exec=\"$APP_DIR/LegoStudio\"|" -e "s|^TryExec=.*|TryExec=$APP_DIR/LegoStudio|" \
    "$HERE/lego-studio.desktop" > "$DESKTOP_DIR/.lego-studio.desktop.tmp"
mv "$DESKTOP_DIR/.lego-studio.desktop.tmp" "$DESKTOP_DIR/lego-studio.desktop"

installed_icons=0
for png in "$ICON_SRC"/lego-studio-*.png; do
    size="${png##*/lego-studio-}"; size="${size%.png}"
    case "$size" in *[!0-9]*|"") continue ;; esac
    mkdir -p "$ICON_ROOT/${size}x${size}/apps"
    cp "$png" "$ICON_ROOT/${size}x${size}/apps/lego-studio.png"
    installed_icons=$((installed_icons + 1))
done
if [ -f "$ICON_SRC/lego-studio.svg" ]; then
    mkdir -p "$ICON_ROOT/scalable/apps"
    cp "$ICON_SRC/lego-studio.svg" "$ICON_ROOT/scalable/apps/lego-studio.svg"
fi

mkdir -p "$BIN_DIR"
ln -sfn "$APP_DIR/LegoStudio" "$BIN_DIR/lego-studio"

# Refresh the menus' caches where the tools exist; a failure here only delays the menu entry.
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$DESKTOP_DIR" 2>/dev/null || true
command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t "$ICON_ROOT" 2>/dev/null || true

echo "installed Lego Studio to $APP_DIR"
echo "  menu entry: $DESKTOP_DIR/lego-studio.desktop"
echo "  icons:      $installed_icons sizes under $ICON_ROOT"
echo "  command:    $BIN_DIR/lego-studio (check it with: lego-studio --self-test)"
if [ -n "$MISSING_LIBS" ]; then
    echo "warning: the app cannot open a window until these system libraries are installed: $MISSING_LIBS" >&2
    echo "  on Debian/Ubuntu: sudo apt install $MISSING_PACKAGES" >&2
fi
