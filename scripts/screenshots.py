"""Write a PNG of each main view of the desktop app to docs/screenshots/<view>.png.

    python scripts/screenshots.py [--out docs/screenshots] [--steps 12] [--model shapeworld|tiny]

Runs offscreen in a throw-away LEGO_STUDIO_HOME: builds the Shape World demo project (or, when
this build has no demo, a project of rendered shapes), paints a mask, trains a concept and its
Textual Inversion baseline for a few steps on the shipped Shape World model (or a random tiny model
with --model tiny), generates a side-by-side grid,
and grabs every view. The screenshots show the app; a short training run (--steps) is
not a quality result (see docs/BENCHMARK.md for that).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def wait(app, condition, timeout_s: float = 300.0) -> None:
    """Process events until ``condition()`` (a script, not a test: polling is fine here)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("gave up waiting for the app")
        app.processEvents()
        time.sleep(0.01)


def rendered_images(folder: Path) -> Path:
    """A few Shape World renders when the demo builder is missing."""
    import random

    from lego_studio.shapeworld.render import render
    from lego_studio.shapeworld.world import CONCEPTS, SHAPES

    folder.mkdir(parents=True, exist_ok=True)
    for i, shape in enumerate(SHAPES[:4]):
        image, _mask, _caption = render(shape, "red", CONCEPTS[0], random.Random(i), size=96)
        image.save(folder / f"{shape}.png")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--model", default="shapeworld",
                        help="model to show: 'shapeworld' (the shipped model, falls back to a random tiny "
                             "model when it is missing) or 'tiny'")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="lego-screens-"))
    os.environ["LEGO_STUDIO_HOME"] = str(home)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["HF_HUB_OFFLINE"] = "1"

    from lego_studio.ui.app import create_app

    app = create_app([])
    from lego_studio.core.tiny_models import make_tiny_model
    from lego_studio.core.settings import Settings
    from lego_studio.ui.context import AppContext
    from lego_studio.ui.main_window import MainWindow

    from lego_studio.core.paths import resource

    settings = Settings.load()
    if args.model == "shapeworld" and resource("models", "shapeworld", "model_index.json").exists():
        settings.add_model(resource("models", "shapeworld"), name="Shape World")
    else:
        settings.add_model(make_tiny_model(home / "tiny-sd", sample_size=32), name="tiny (random)")
    settings.default_device = "cpu"
    settings.save()
    window = MainWindow(AppContext(settings))
    window.resize(1280, 820)
    window.show()
    window.detect_device()

    def shot(name: str) -> None:
        app.processEvents()
        path = out / f"{name}.png"
        window.grab().save(str(path))
        print(f"wrote {path}")

    # Projects: the welcome screen first, then the demo project.
    shot("welcome")
    projects = window.projects_view
    if projects.demo_builder() is not None:
        projects.build_demo()
        wait(app, lambda: window.context.project is not None)
    else:
        projects.create_project("Frozen shapes", [rendered_images(home / "renders")])
        wait(app, lambda: window.context.project is not None)  # created and opened off the UI thread
        projects.subject_edit.setText("a red circle")
        projects.concept_edit.setText("frozen")
        projects.save_fields()
    project = window.context.project
    wait(app, lambda: window.warmed_up and window.context.writes.pending == 0 and not projects.images_loading)
    shot("projects")

    # Masks: the first image with its mask and an assist candidate.
    window.show_place("masks")
    masks = window.masks_view
    canvas = masks.canvas
    wait(app, lambda: canvas.has_image() and not masks.loading)  # the image is read off the UI thread
    if canvas.mask().max() == 0:
        w, h = canvas.image_size()
        canvas.set_brush_size(max(4, w // 6))
        canvas.paint_line((w // 3, h // 2), (2 * w // 3, h // 2), 255)
        canvas.mask_edited.emit()
    masks.set_tool("sam")
    wait(app, lambda: masks.segmenter_name() != "")
    w, h = canvas.image_size()
    canvas.set_sam_box(w * 0.2, h * 0.2, w * 0.8, h * 0.8)
    wait(app, lambda: len(masks.candidate_buttons) > 0)
    masks.set_tool("brush")
    shot("masks")

    # Training: the TI baseline, then Lego, so the library has both. A name typed in Training is
    # the project's concept name from then on, so both are made from the name it had before.
    window.show_place("training")
    training = window.training_view
    base_name = project.concept_name
    for preset, name in (("Textual Inversion baseline", "ti"), ("Lego", "lego")):
        training.preset_combo.setCurrentText(preset)
        form = training.form
        form.set_value("name", f"{base_name}-{name}")
        form.set_value("steps", args.steps)
        form.set_value("preview_every", max(1, args.steps // 3))
        form.set_value("preview_steps", 15)
        form.set_value("checkpoint_every", max(1, args.steps // 2))
        if not training.start():
            raise SystemExit(f"training did not start: {training.status_label.text()}")
        wait(app, lambda: not training.is_running())
        print(training.status_label.text())
    shot("training")

    # Library.
    window.show_place("library")
    library = window.library_view
    wait(app, lambda: len(library.visible_names()) >= 2)
    library.grid.setCurrentRow(0)
    shot("library")

    # Gallery: both concepts side by side.
    window.show_place("gallery")
    gallery = window.gallery_view
    wait(app, lambda: len(gallery.concept_names()) >= 2)
    gallery.choose_concepts(gallery.concept_names()[:2])
    gallery.subjects_edit.setPlainText("a blue square\na green cross")
    gallery.seeds_edit.setText("0, 1")
    gallery.steps_spin.setValue(20)
    gallery.generate()
    wait(app, lambda: not gallery.runner.busy)
    print(gallery.status_label.text())
    shot("gallery")

    # Settings dialog.
    from lego_studio.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog(window.context, window)
    dialog.resize(720, 560)
    dialog.show()
    app.processEvents()
    dialog.grab().save(str(out / "settings.png"))
    print(f"wrote {out / 'settings.png'}")
    dialog.reject()

    window.shutdown_workers()
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
