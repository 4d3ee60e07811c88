"""Build hook: ship ``resources/`` inside the package, so every install finds its files.

In a source checkout the resources stay at the top of the repository (``resources/``), where
scripts, docs and the editable install use them. A wheel (``pip install .``, ``pip wheel .``,
``python -m build``) carries a copy as ``lego_studio/resources/``, and
``lego_studio.core.paths.resources_dir()`` looks there first. Everything else is declared in
``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithResources(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads resources/ from the checkout itself
        source = ROOT / "resources"
        if not (source / "tokenizer").is_dir():
            raise SystemExit(f"resources/ is missing or incomplete at {source}; cannot build a working package")
        target = Path(self.build_lib) / "lego_studio" / "resources"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


setup(cmdclass={"build_py": BuildPyWithResources})
