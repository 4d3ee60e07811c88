"""Every install path finds the shipped resources (Shape World model, judge, tokenizer, configs).

A regular (non-editable) install used to leave ``resources/`` behind: only a source checkout
worked. These tests build the project the way a user's pip does, from a copy of the tracked-looking
source files, install the result into a fresh virtual environment and run it from outside the
source tree. The venvs see the already-installed dependencies (``--system-site-packages``) and
pip never touches an index (``--no-index --no-deps --no-build-isolation``), so this runs offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDED = (
    "lego_studio/resources/models/shapeworld/unet/diffusion_pytorch_model.safetensors",
    "lego_studio/resources/judge/judge.safetensors",
    "lego_studio/resources/tokenizer/vocab.json",
    "lego_studio/resources/configs/sd1/unet/config.json",
    "lego_studio/resources/icons/app.svg",
)
SKIP_DIRS = {".git", "build", "dist", "tmp", "out", "demo-out", ".venv", ".pytest_cache", "__pycache__"}


def _can_build() -> str | None:
    try:
        import setuptools  # noqa: F401
        import wheel  # noqa: F401
    except ImportError as exc:  # pip install -e '.[dev]' brings both
        return f"building a wheel offline needs setuptools and wheel ({exc})"
    return None


pytestmark = [pytest.mark.skipif(_can_build() is not None, reason=str(_can_build())), pytest.mark.slow]  # builds wheels, makes a venv


def _copy_source(dest: Path) -> Path:
    """The checkout without build leftovers, so a stale build/ cannot hide a packaging bug."""

    def ignore(folder, names):
        return [n for n in names if n in SKIP_DIRS or n.endswith(".egg-info") or n.endswith(".pyc")]

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _run(cmd, cwd, env=None, timeout=300):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _build_wheel(source: Path, out: Path) -> Path:
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(out), str(source)], cwd=source)
    wheels = list(out.glob("lego_studio-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _fresh_venv(folder: Path) -> Path:
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(folder)], cwd=folder.parent)
    return folder / ("Scripts" if os.name == "nt" else "bin")


def _user_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LEGO_STUDIO_RESOURCES")}
    env["LEGO_STUDIO_HOME"] = str(tmp_path / "home")
    env["QT_QPA_PLATFORM"] = "offscreen"
    return env


def test_wheel_carries_the_resources(tmp_path):
    wheel_file = _build_wheel(_copy_source(tmp_path / "src"), tmp_path / "wheel")
    names = set(zipfile.ZipFile(wheel_file).namelist())
    missing = [n for n in NEEDED if n not in names]
    assert not missing, f"the wheel lacks {missing}"


def test_sdist_then_wheel_carries_the_resources(tmp_path):
    """``python -m build`` goes through the sdist: MANIFEST.in must carry resources/ there."""
    source = _copy_source(tmp_path / "src")
    _run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "sdist")], cwd=source)
    (archive,) = (tmp_path / "sdist").glob("lego_studio-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    wheel_file = _build_wheel(unpacked, tmp_path / "wheel")
    names = set(zipfile.ZipFile(wheel_file).namelist())
    assert not [n for n in NEEDED if n not in names]


def test_wheel_in_a_fresh_venv_passes_the_self_test_outside_the_source_tree(tmp_path):
    wheel_file = _build_wheel(_copy_source(tmp_path / "src"), tmp_path / "wheel")
    shutil.rmtree(tmp_path / "src")  # nothing of the checkout left to lean on
    bin_dir = _fresh_venv(tmp_path / "venv")
    python = bin_dir / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel_file)], cwd=tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = _user_env(tmp_path)
    where = _run([str(python), "-c", "import lego_studio, lego_studio.core.paths as p; "
                  "print(lego_studio.__file__); print(p.resources_dir())"], cwd=outside, env=env).stdout.split("\n")
    assert str(tmp_path / "venv") in where[0], f"imported the wrong lego_studio: {where[0]}"
    assert where[1].startswith(str(tmp_path / "venv")), where[1]

    inspect = _run([str(bin_dir / "lego-studio"), "models", "inspect", "shapeworld"], cwd=outside, env=env)
    assert "shapeworld" in inspect.stdout.lower()
    result = _run([str(bin_dir / "lego-studio"), "--self-test"], cwd=outside, env=env, timeout=600)
    assert "self-test passed" in result.stdout, result.stdout
    assert "installed package" in result.stdout.splitlines()[0]


def test_source_checkout_and_editable_install_use_the_checkout_resources():
    from lego_studio.core.paths import resources_dir

    assert resources_dir() == ROOT / "resources"
    assert (resources_dir() / "models" / "shapeworld" / "model_index.json").is_file()
