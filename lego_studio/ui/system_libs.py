"""Which system libraries Qt's X11 platform plugin needs and this machine lacks (Linux).

A fresh desktop often lacks ``libxcb-cursor0``, ``libxcb-icccm4`` and ``libxcb-keysyms1``; Qt then
aborts with a message that names only xcb-cursor. Before the QApplication is created, the app
asks the dynamic linker (``ldd`` on Qt's ``libqxcb.so``) what is missing and says it in one line
with the packages to install. Imports nothing from Qt (it runs before Qt loads its plugin).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# What Qt 6's xcb plugin links beyond libxcb itself (Debian/Ubuntu package names); named in the
# README and checked by packaging/install.sh.
XCB_PACKAGES = (
    "libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1", "libxcb-image0", "libxcb-render-util0",
    "libxcb-randr0", "libxcb-shape0", "libxcb-xfixes0", "libxcb-xkb1", "libxkbcommon-x11-0",
)


def package_for(soname: str) -> str:
    """Debian's package name for a library soname: ``libxcb-icccm.so.4`` -> ``libxcb-icccm4``,
    ``libxkbcommon-x11.so.0`` -> ``libxkbcommon-x11-0`` (a dash when the name ends in a digit)."""
    match = re.match(r"^(lib.+?)\.so\.(\d+)", soname)
    if not match:
        return soname
    name, version = match.groups()
    return f"{name}-{version}" if name[-1].isdigit() else f"{name}{version}"


def _xcb_plugin() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("PySide6")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    for candidate in (root / "Qt" / "plugins" / "platforms" / "libqxcb.so", root / "plugins" / "platforms" / "libqxcb.so"):
        if candidate.is_file():
            return candidate
    return None


def missing_from_ldd(output: str) -> list[str]:
    """Sonames that ``ldd`` reports as ``not found``, each once, in order."""
    seen: list[str] = []
    for line in output.splitlines():
        match = re.match(r"\s*(\S+)\s+=>\s+not found", line)
        if match and match.group(1) not in seen:
            seen.append(match.group(1))
    return seen


def uses_xcb(environ=None) -> bool:
    """Whether Qt will pick its X11 plugin: Linux, a display, no other platform asked for."""
    environ = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return False
    platform = environ.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.split(";")[0].split(":")[0] == "xcb"
    if environ.get("WAYLAND_DISPLAY") and environ.get("XDG_SESSION_TYPE") == "wayland":
        return False  # Qt 6 prefers its Wayland plugin there
    return bool(environ.get("DISPLAY"))


def missing_xcb_libraries(plugin: Path | None = None) -> list[str]:
    """Sonames Qt's xcb plugin needs and the dynamic linker cannot find ([] when all are
    there, or when it cannot be told: no ldd, no plugin)."""
    plugin = plugin or _xcb_plugin()
    ldd = shutil.which("ldd")
    if plugin is None or ldd is None:
        return []
    try:
        result = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return missing_from_ldd(result.stdout + result.stderr)


def missing_libraries_line(missing: list[str]) -> str:
    packages = " ".join(dict.fromkeys(package_for(s) for s in missing))
    return (f"error: Qt cannot open a window: missing system libraries {', '.join(missing)} "
            f"(on Debian/Ubuntu: sudo apt install {packages})")


def check_before_qt(environ=None) -> str | None:
    """One line naming what is missing, or None when the window can open."""
    if not uses_xcb(environ):
        return None
    missing = missing_xcb_libraries()
    return missing_libraries_line(missing) if missing else None
