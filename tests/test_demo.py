"""The demo: the demo project (what the app offers on first run) and `lego-studio demo --quick`
end to end on the shipped Shape World model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lego_studio.core.errors import InputError
from lego_studio.core.model_specs import shapeworld_model_dir
from lego_studio.core.project import Project
from lego_studio.core.train_config import TrainConfig
from lego_studio.shapeworld.demo import build_demo_project

REPO = Path(__file__).resolve().parents[1]


def test_demo_project_has_exemplars_masks_and_subject_words(tmp_path):
    project = build_demo_project(tmp_path / "demo", concept="in a cage", subject=("star", "yellow"), n_images=4, seed=3)
    reopened = Project.open(tmp_path / "demo")
    assert reopened.subject == "a star"  # partial words, as a user writes them: the colour is left out
    assert reopened.concept_name == "in-a-cage" and reopened.placeholder == "<in-a-cage>"
    assert reopened.positive_words == []  # the demo never tells the trainer what the concept is
    assert len(reopened.images) == 4
    assert set(reopened.mask_statuses().values()) == {"painted"}
    images, masks = reopened.training_inputs()
    for image_path, mask_path in zip(images, masks):
        image = Image.open(image_path)
        assert image.size == (64, 64) and image.mode == "RGB"
        mask = reopened.mask_for(image_path)
        assert mask.shape == (64, 64) and set(np.unique(mask).tolist()) == {0, 255}
        # The mask covers the yellow star, not the cage or the background.
        pixels = np.asarray(image)[mask == 255].astype(float).mean(axis=0)
        assert pixels[0] > 150 and pixels[1] > 120 and pixels[2] < 110
        assert 0.03 < (mask == 255).mean() < 0.5
    # The suggested training settings are a valid Lego config for this project.
    from lego_studio.core.train_config import TrainConfig

    config = TrainConfig.preset("lego", subject=reopened.subject, **reopened.train_defaults)
    assert config.templates and "a yellow star" not in config.context_subjects
    assert project.folder == reopened.folder


def test_demo_project_is_reproducible_and_refuses_a_used_folder(tmp_path):
    a = build_demo_project(tmp_path / "a")
    b = build_demo_project(tmp_path / "b")
    # Partial words, as a user writes them: the colour is left out (the renders are of a yellow star).
    assert a.subject == "a star" and a.concept_name == "in-a-cage" and len(a.images) == 5
    for ea, eb in zip(a.images, b.images):
        assert (a.folder / ea.file).read_bytes() == (b.folder / eb.file).read_bytes()
    with pytest.raises(InputError, match="already exists"):
        build_demo_project(tmp_path / "a")
    with pytest.raises(InputError, match="unknown Shape World concept 'glowing'"):
        build_demo_project(tmp_path / "c", concept="glowing")


def test_building_the_demo_project_does_not_import_torch(tmp_path):
    # The app offers the demo project on first run: it must be quick, without loading torch.
    code = (
        "import sys; from lego_studio.shapeworld.demo import build_demo_project; "
        f"build_demo_project({str(tmp_path / 'p')!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_demo_without_the_shapeworld_model_says_how_to_train_it(tmp_path, monkeypatch, capsys):
    from lego_studio.cli import main

    monkeypatch.setenv("LEGO_STUDIO_RESOURCES", str(tmp_path / "empty-resources"))
    code = main(["demo", "--out", str(tmp_path / "out"), "--quick", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "shapeworld" in err
    assert "python -m lego_studio.shapeworld.model_training" in err


@pytest.mark.slow  # trains on the shipped Shape World model
@pytest.mark.skipif(not (shapeworld_model_dir() / "model_index.json").is_file(),
                    reason="resources/models/shapeworld is missing (train it with lego_studio.shapeworld.model_training)")
def test_quick_demo_end_to_end(tmp_path, capsys):
    from lego_studio.cli import main
    from lego_studio.core.concepts import load_concept
    from lego_studio.core.generation import read_generation_metadata

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "training Lego" in captured.err and "training TI" in captured.err  # the progress bar
    assert "gallery:" in captured.out

    lego, ti = load_concept(out / "concepts" / "lego.safetensors"), load_concept(out / "concepts" / "ti.safetensors")
    assert lego.num_vectors == TrainConfig().num_vectors and ti.num_vectors == 1
    assert lego.metadata["method"] == "lego" and ti.metadata["method"] == "ti"
    assert lego.metadata["config"]["steps"] == ti.metadata["config"]["steps"]
    assert lego.metadata["config"]["seed"] == ti.metadata["config"]["seed"]

    project = Project.open(out / "project")
    runs = project.runs()
    assert sorted(r.method for r in runs) == ["lego", "ti"] and {r.status for r in runs} == {"finished"}

    images = sorted((out / "images").glob("*.png"))
    assert len(images) == 4  # 2 subjects x 1 seed x 2 methods
    for path in images:
        request = read_generation_metadata(path)
        assert request.prompt.startswith(("a ", "an ")) and request.prompt.endswith(">")
        # Held-out subjects only: neither the exemplars' colour (yellow) nor their shape (star).
        assert "yellow" not in request.prompt and "star" not in request.prompt
    gallery = Image.open(out / "gallery.png")
    assert gallery.width >= 2 * 128 and gallery.height >= 2 * 128

    page = (out / "index.html").read_text(encoding="utf-8")
    for path in images:
        assert f'src="images/{path.name}"' in page
    assert page.count("judge:") >= 4 or "no judge verdicts" in page
    assert 'src="project/images/' in page and 'src="project/masks/' in page
    assert "Closest words to Lego&#x27;s concept: " + ", ".join(lego.metadata["closest_words"]) + "." in page
    # "a star" names no colour: Lego's run added the yellow the masks mark, and the page and CLI say so.
    assert lego.metadata["training_subject"] == "a yellow star"
    assert "Lego trained with the subject words \u201ca yellow star\u201d" in page
    assert "Lego trained with the subject words \u201ca yellow star\u201d" in captured.out


def test_the_demo_command_describes_the_demo_it_builds():
    import argparse

    from lego_studio.commands import demo as command
    from lego_studio.shapeworld.demo import DEMO_CONCEPT, DEMO_SUBJECT, DEMO_TRACK
    from lego_studio.shapeworld.benchmark import subject_words

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    description = parser._subparsers._group_actions[0].choices["demo"].description
    shape, colour = DEMO_SUBJECT
    assert f"{colour} {shape} {DEMO_CONCEPT}" in description
    assert f'"{subject_words(DEMO_SUBJECT, DEMO_TRACK)}"' in description


def test_the_demo_names_the_closest_word_that_is_the_subjects_left_out_look():
    from lego_studio.shapeworld.demo import closest_words_line

    line = closest_words_line(["cage", "yellow", "melting"], ("star", "yellow"), "a star")
    assert line.startswith("Closest words to Lego's concept: cage, yellow, melting. \u201cyellow\u201d is the subject's own look")
    # Nothing of the exemplars' look among them (or only what the words said): the words only.
    assert closest_words_line(["cage", "star", "melting"], ("star", "yellow"), "a star") == (
        "Closest words to Lego's concept: cage, star, melting.")
    assert closest_words_line([], ("star", "yellow"), "a star") == ""


def test_progress_in_a_log_is_a_few_plain_lines_not_hundreds_of_redraws():
    import io

    from lego_studio.shapeworld.demo import TerminalProgress

    log = io.StringIO()  # not a terminal, like CI's log
    progress = TerminalProgress(stream=log)
    for stage in ("lego", "ti"):
        for done in range(1, 301):
            progress(stage, done, 300)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert 2 <= len(lines) <= 22  # about one line per tenth, per stage
    assert lines[-1].startswith("training TI") and "300/300" in lines[-1]
