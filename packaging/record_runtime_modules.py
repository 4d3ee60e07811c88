"""Record which modules of the lazily-importing libraries the app really loads.

diffusers and transformers import most of their code on first attribute access
(``_LazyModule``), which PyInstaller's static analysis cannot follow. This script runs the
self-test with a tiny model, builds every inference scheduler and imports the desktop app's
modules, then writes the loaded modules of those libraries to ``runtime_modules.txt`` — the spec
adds them as hidden imports. Re-run it after upgrading diffusers/transformers:

    QT_QPA_PLATFORM=offscreen python packaging/record_runtime_modules.py
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

LAZY_PACKAGES = ("diffusers", "transformers", "huggingface_hub", "tokenizers", "safetensors", "segment_anything")
OUT = Path(__file__).resolve().parent / "runtime_modules.txt"


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lego_studio.core.models import SCHEDULERS, load_model
    from lego_studio.core.tiny_models import make_tiny_model
    from lego_studio.selftest import run_self_test

    with tempfile.TemporaryDirectory(prefix="lego-record-") as tmp:
        os.environ["LEGO_STUDIO_HOME"] = str(Path(tmp) / "home")
        model_dir = make_tiny_model(Path(tmp) / "tiny")
        if run_self_test(report=lambda line: None, model=str(model_dir), steps=1, device="cpu") != 0:
            raise SystemExit("the self-test failed; fix that first")
        model = load_model(model_dir, device="cpu", precision="fp32")
        for name in SCHEDULERS:
            model.make_scheduler(name)
            model.pipeline(name)
    for module in ("lego_studio.ui.main_window", "lego_studio.cli"):
        importlib.import_module(module)
    modules = sorted(name for name in sys.modules if name.split(".")[0] in LAZY_PACKAGES)
    tmp_out = OUT.with_suffix(".tmp")
    tmp_out.write_text("\n".join(modules) + "\n", encoding="utf-8")
    os.replace(tmp_out, OUT)
    print(f"{len(modules)} modules -> {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
