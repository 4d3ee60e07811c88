"""The packaging files: spec, runtime hook, desktop entry, icons, install/uninstall scripts.

The PyInstaller build itself takes many minutes (packaging/build_and_selftest.sh runs it); these
tests check everything around it that can break without anyone noticing.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)

pytestmark = pytest.mark.skipif(not shutil.which("bash"), reason="the packaging scripts need bash")


def test_spec_compiles_and_names_files_that_exist():
    source = (PACKAGING / "LegoStudio.spec").read_text(encoding="utf-8")
    compile(source, "LegoStudio.spec", "exec")
    for name in ("lego_studio_main.py", "pyi_rth_lego_offline.py", "runtime_modules.txt"):
        assert f'"{name}"' in source and (PACKAGING / name).is_file(), name
    assert '(str(RESOURCES), "resources")' in source  # where core.paths.resources_dir() looks in a bundle
    assert 'name="LegoStudio"' in source


def test_recorded_runtime_modules_still_exist():
    """A diffusers/transformers upgrade that renames modules must be noticed before a build."""
    names = [line.strip() for line in (PACKAGING / "runtime_modules.txt").read_text().splitlines() if line.strip()]
    assert any(name.startswith("diffusers.models.unets") for name in names)
    assert any(name.startswith("transformers.models.clip") for name in names)
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    assert not missing, f"re-run packaging/record_runtime_modules.py; gone: {missing[:5]}"


def test_runtime_hook_forces_offline_mode(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "PYTHONPATH": str(ROOT)}
    env.pop("TRANSFORMERS_OFFLINE", None)
    probe = (
        "import os, runpy; runpy.run_path(os.environ['HOOK']); "
        "print(os.environ['HF_HUB_OFFLINE'], os.environ['TRANSFORMERS_OFFLINE'], os.environ['HF_HUB_DISABLE_TELEMETRY'])"
    )
    env["HOOK"] = str(PACKAGING / "pyi_rth_lego_offline.py")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["1", "1", "1"]


def test_entry_point_is_the_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(PACKAGING / "lego_studio_main.py"), "--help"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "--self-test" in result.stdout and "selftest" in result.stdout


def read_desktop_entry(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in desktop entries
    parser.read(path, encoding="utf-8")
    return dict(parser["Desktop Entry"])


def test_desktop_entry_has_the_required_keys():
    entry = read_desktop_entry(PACKAGING / "lego-studio.desktop")
    assert entry["Type"] == "Application"
    assert entry["Name"] == "Lego Studio"
    assert entry["Exec"] and entry["Icon"] == "lego-studio"
    assert entry["Categories"].endswith(";") and "Graphics" in entry["Categories"].split(";")
    assert entry["Terminal"] == "false"


def test_icon_set_has_every_size():
    assert (ROOT / "resources" / "icons" / "lego-studio.svg").is_file()
    for size in ICON_SIZES:
        with Image.open(ROOT / "resources" / "icons" / f"lego-studio-{size}.png") as icon:
            assert icon.format == "PNG" and icon.size == (size, size) and icon.mode == "RGBA"
            # Transparent corners (rounded tile), opaque middle: a real drawing, not an empty canvas.
            assert icon.getpixel((0, 0))[3] == 0 and icon.getpixel((size // 2, size // 2))[3] == 255


def test_shell_scripts_parse():
    for script in ("build.sh", "build_and_selftest.sh", "lock.sh", "install.sh", "uninstall.sh"):
        path = PACKAGING / script
        assert os.access(path, os.X_OK), f"{script} is not executable"
        subprocess.run(["bash", "-n", str(path)], check=True)


# ------------------------------------------------------------------- pinned versions


def _lockfile():
    spec = importlib.util.spec_from_file_location("lockfile", PACKAGING / "lockfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bundle_is_built_from_pins_that_satisfy_the_package():
    """constraints.txt pins the whole model stack, and every pin meets pyproject's open bounds."""
    import tomllib

    from packaging.requirements import Requirement

    lockfile = _lockfile()
    pins, header = lockfile.read_constraints()
    for name in ("torch", "torchvision", "diffusers", "transformers", "kernels", "huggingface-hub",
                 "pyside6-essentials", "pyinstaller"):
        assert name in pins, f"{name} is not pinned in packaging/constraints.txt"
    assert header.get("python") and header.get("platform")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["package"]
    for text in requirements:
        requirement = Requirement(text)
        name = lockfile.normalize(requirement.name)
        assert name in pins, f"{name} (a requirement) is not pinned"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {text}"
    build = (PACKAGING / "build_and_selftest.sh").read_text(encoding="utf-8")
    assert '-c "$SRC/packaging/constraints.txt"' in build and "VERSIONS=pinned" in build


def test_readme_names_the_pinned_versions():
    lockfile = _lockfile()
    assert lockfile.update_readme(check=True) == 0, "run: python packaging/lockfile.py readme"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pins, _ = lockfile.read_constraints()
    assert f"diffusers {pins['diffusers']}" in readme and f"transformers {pins['transformers']}" in readme
    assert "packaging/lock.sh" in readme


def test_lock_turns_a_freeze_into_constraints(tmp_path):
    lockfile = _lockfile()
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("Torch==2.14.1\n-e git+https://x/y#egg=lego-studio\nlego_studio==0.1.0\n"
                      "foo @ file:///tmp/foo.whl\nkernels==0.19.1\n", encoding="utf-8")
    out = tmp_path / "constraints.txt"
    lockfile.write_constraints(freeze, out)
    pins, header = lockfile.read_constraints(out)
    assert pins == {"torch": "2.14.1", "kernels": "0.19.1"} and "python" in header


def test_lockfile_diff_lists_what_differs_from_the_pins(tmp_path, monkeypatch, capsys):
    lockfile = _lockfile()
    pins, _ = lockfile.read_constraints()
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# python: 3.0.0\ndiffusers==0.0.1\n", encoding="utf-8")
    monkeypatch.setattr(lockfile, "CONSTRAINTS", constraints)
    assert lockfile.diff(sys.executable, quiet=False) == 1
    out = capsys.readouterr().out
    assert "diffusers 0.0.1 -> " in out and "python 3.0.0 -> " in out
    assert "transformers: not pinned -> " in out  # a dependency the pins do not know


def test_spec_bundles_what_packages_read_at_import():
    """kernels (imported by transformers on every model load) opens a JSON file next to its
    modules at import; without it every diffusers model class fails to import in the bundle."""
    source = (PACKAGING / "LegoStudio.spec").read_text(encoding="utf-8")
    assert 'for package in ("kernels",)' in source and "collect_data_files(package)" in source
    assert 'copy_metadata("lego-studio", recursive=True)' in source


# ------------------------------------------------------------------- install / uninstall


@pytest.fixture
def fake_bundle(tmp_path) -> Path:
    """A folder shaped like dist/LegoStudio: an executable and the bundled icons."""
    bundle = tmp_path / "dist" / "LegoStudio"
    icons = bundle / "_internal" / "resources" / "icons"
    icons.mkdir(parents=True)
    for path in (ROOT / "resources" / "icons").glob("lego-studio*"):
        shutil.copy(path, icons / path.name)
    exe = bundle / "LegoStudio"
    exe.write_text("#!/bin/sh\necho fake lego studio \"$@\"\n")
    exe.chmod(0o755)
    return bundle


@pytest.fixture
def user_env(tmp_path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("LEGO_STUDIO_HOME",)}
    env.update(
        HOME=str(home),
        PREFIX=str(tmp_path / "prefix"),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
    )
    return env


def run_script(name: str, *args, env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PACKAGING / name), *args], env=env, capture_output=True, text=True)


def test_install_then_uninstall_keeps_user_data(fake_bundle, user_env):
    prefix = Path(user_env["PREFIX"])
    result = run_script("install.sh", str(fake_bundle), env=user_env)
    assert result.returncode == 0, result.stderr

    app = prefix / "opt" / "LegoStudio" / "LegoStudio"
    assert app.is_file()
    entry = read_desktop_entry(prefix / "share" / "applications" / "lego-studio.desktop")
    assert entry["Exec"] == f'"{app}"' and entry["TryExec"] == str(app)
    for size in ICON_SIZES:
        assert (prefix / "share" / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "lego-studio.png").is_file()
    assert (prefix / "share" / "icons" / "hicolor" / "scalable" / "apps" / "lego-studio.svg").is_file()
    launched = subprocess.run([str(prefix / "bin" / "lego-studio"), "--self-test"], capture_output=True, text=True)
    assert launched.stdout.strip() == "fake lego studio --self-test"

    # Installing again replaces the app (a file only the old copy had is gone).
    (app.parent / "stale.txt").write_text("old")
    assert run_script("install.sh", str(fake_bundle), env=user_env).returncode == 0
    assert not (app.parent / "stale.txt").exists()

    data_dir = Path(user_env["XDG_DATA_HOME"]) / "LegoStudio"
    (data_dir / "library").mkdir(parents=True)
    (data_dir / "library" / "frozen.safetensors").write_bytes(b"concept")

    result = run_script("uninstall.sh", env=user_env)
    assert result.returncode == 0, result.stderr
    assert not (prefix / "opt" / "LegoStudio").exists()
    assert not (prefix / "share" / "applications" / "lego-studio.desktop").exists()
    assert not list((prefix / "share" / "icons").rglob("lego-studio.*"))
    assert not (prefix / "bin" / "lego-studio").exists()
    assert (data_dir / "library" / "frozen.safetensors").is_file()
    assert str(data_dir) in result.stdout and "--purge" in result.stdout


def test_uninstall_purge_deletes_user_data(fake_bundle, user_env):
    assert run_script("install.sh", str(fake_bundle), env=user_env).returncode == 0
    data_dir = Path(user_env["XDG_DATA_HOME"]) / "LegoStudio"
    config_dir = Path(user_env["XDG_CONFIG_HOME"]) / "LegoStudio"
    for folder in (data_dir, config_dir):
        folder.mkdir(parents=True)
        (folder / "file").write_text("x")

    result = run_script("uninstall.sh", "--purge", env=user_env)

    assert result.returncode == 0, result.stderr
    assert not data_dir.exists() and not config_dir.exists()
    assert not (Path(user_env["PREFIX"]) / "opt" / "LegoStudio").exists()


def test_uninstall_leaves_a_foreign_lego_studio_command(fake_bundle, user_env):
    bin_dir = Path(user_env["PREFIX"]) / "bin"
    bin_dir.mkdir(parents=True)
    pip_script = bin_dir / "lego-studio"
    pip_script.write_text("#!/bin/sh\n")
    result = run_script("uninstall.sh", env=user_env)
    assert result.returncode == 0
    assert pip_script.is_file()
    assert "was not installed" in result.stdout


def test_install_refuses_a_folder_that_is_not_a_bundle(tmp_path, user_env):
    not_a_bundle = tmp_path / "empty"
    not_a_bundle.mkdir()
    result = run_script("install.sh", str(not_a_bundle), env=user_env)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"error: {not_a_bundle}/LegoStudio: missing or not executable (not a Lego Studio bundle?)"]
    assert not (Path(user_env["PREFIX"]) / "opt" / "LegoStudio").exists()


# ------------------------------------------------------------------ system libraries (X11)

XCB_LIBS = ("libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1")


def test_readme_and_install_script_name_the_system_libraries_qt_needs():
    readme = (ROOT / "README.md").read_text()
    install = (PACKAGING / "install.sh").read_text()
    for package in XCB_LIBS:
        assert package in readme and package in install


def test_install_says_which_system_libraries_are_missing(fake_bundle, user_env, tmp_path):
    plugin = fake_bundle / "_internal" / "PySide6" / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    plugin.parent.mkdir(parents=True)
    plugin.write_bytes(b"")
    tools = tmp_path / "tools"
    tools.mkdir()
    fake_ldd = tools / "ldd"  # what the dynamic linker says on a fresh desktop
    fake_ldd.write_text("#!/bin/sh\necho '\tlibxcb-icccm.so.4 => not found'\necho '\tlibxcb-keysyms.so.1 => not found'\n"
                        "echo '\tlibxkbcommon-x11.so.0 => not found'\necho '\tlibc.so.6 => /lib/libc.so.6'\n")
    fake_ldd.chmod(0o755)
    env = dict(user_env, PATH=f"{tools}:{user_env['PATH']}")
    result = run_script("install.sh", str(fake_bundle), env=env)
    assert result.returncode == 0, result.stderr
    if sys.platform.startswith("linux"):
        assert "libxcb-icccm.so.4 libxcb-keysyms.so.1 libxkbcommon-x11.so.0" in result.stderr
        assert "sudo apt install libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0" in result.stderr


def test_app_says_in_one_line_what_is_missing_before_qt_aborts(monkeypatch, capsys):
    from lego_studio.ui import app, system_libs

    assert system_libs.package_for("libxcb-cursor.so.0") == "libxcb-cursor0"
    assert system_libs.package_for("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert system_libs.missing_from_ldd("\tlibxcb-icccm.so.4 => not found\n\tlibxcb.so.1 => /lib/libxcb.so.1\n"
                                        "\tlibxcb-icccm.so.4 => not found\n") == ["libxcb-icccm.so.4"]
    assert system_libs.uses_xcb({"DISPLAY": ":0"}) == sys.platform.startswith("linux")
    assert not system_libs.uses_xcb({"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"})

    monkeypatch.setattr(system_libs, "uses_xcb", lambda environ=None: True)
    monkeypatch.setattr(system_libs, "missing_xcb_libraries", lambda plugin=None: ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"])
    assert app.main([]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "libxcb-icccm.so.4" in err and "libxcb-keysyms.so.1" in err and "apt install libxcb-icccm4 libxcb-keysyms1" in err
