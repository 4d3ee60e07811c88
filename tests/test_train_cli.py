"""``lego-studio train`` end to end on the tiny model, and its one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from lego_studio.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def base_args(exemplar_folders, tiny_model_dir, out, *extra):
    images, masks = exemplar_folders
    return [
        "train", "--images", str(images), "--masks", str(masks), "--subject", "a red square",
        "--model", str(tiny_model_dir), "--device", "cpu", "--precision", "fp32",
        "--out", str(out), *extra,
    ]


def test_train_writes_a_concept_and_resume_extends_the_run(exemplar_folders, tiny_model_dir, tmp_path, capsys):
    from lego_studio.core.concepts import load_concept

    out = tmp_path / "frozen.safetensors"
    code = main(base_args(exemplar_folders, tiny_model_dir, out, "--steps", "2", "--vectors", "3",
                          "--positive-words", "frozen", "--checkpoint-every", "1"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "\rstep 2/2" in captured.err and "ETA" in captured.err
    assert "<frozen>" in captured.out
    concept = load_concept(out)
    assert concept.placeholder == "<frozen>" and concept.vectors.shape == (3, 32)
    assert concept.metadata["method"] == "lego" and concept.metadata["config"]["positive_words"] == ["frozen"]
    run_dir = tmp_path / "frozen.run"
    assert (run_dir / "config.json").is_file() and (run_dir / "checkpoints" / "step-000002.safetensors").is_file()

    # --resume needs nothing but the run folder (and new step count): images and model are remembered.
    code = main(["train", "--resume", "--run-dir", str(run_dir), "--steps", "3", "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert not torch.equal(load_concept(out).vectors, concept.vectors)


def test_small_and_far_from_square_images_get_a_warning(tiny_model_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    images = tmp_path / "small"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):  # 36x12: enlarged 2.7x to the tiny model's 32 px, a third of it kept
        Image.fromarray((rng.random((12, 36, 3)) * 255).astype(np.uint8)).save(images / f"s{i}.png")
    code = main(["train", "--images", str(images), "--method", "ti", "--model", str(tiny_model_dir), "--device", "cpu",
                 "--precision", "fp32", "--out", str(tmp_path / "s.safetensors"), "--steps", "1", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warnings = [line for line in captured.out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "2 of 2 images are much smaller than the 32 px training size" in warnings[0]
    assert "far from square" in warnings[0]


def test_ti_baseline_from_a_config_file(exemplar_folders, tiny_model_dir, tmp_path, capsys):
    from lego_studio.core.concepts import load_concept

    config = tmp_path / "ti.json"
    config.write_text(json.dumps({"method": "ti", "steps": 1, "name": "melting", "lr": 1e-3}))
    out = tmp_path / "ti.safetensors"
    code = main(base_args(exemplar_folders, tiny_model_dir, out, "--config", str(config), "--quiet"))
    assert code == 0, capsys.readouterr().err
    concept = load_concept(out)
    assert concept.placeholder == "<melting>" and concept.vectors.shape == (1, 32)
    assert concept.metadata["config"]["lr"] == 1e-3 and concept.metadata["config"]["w_ctx"] == 0.0


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    # Model loading may draw a weight-loading progress bar; the error itself is one line.
    lines = [line for line in err.strip().splitlines() if "Loading weights" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_bad_inputs_exit_2_with_one_line(exemplar_folders, tiny_model_dir, tmp_path, capsys):
    images, masks = exemplar_folders
    out = tmp_path / "c.safetensors"

    (images / "broken.png").write_bytes(b"this is text, not a PNG")
    assert "broken.png: not a readable image" in _error(capsys, base_args(exemplar_folders, tiny_model_dir, out))
    (images / "broken.png").unlink()

    data = (images / "ex0.png").read_bytes()
    (images / "cut.png").write_bytes(data[: len(data) // 2])
    assert "cut.png" in _error(capsys, base_args(exemplar_folders, tiny_model_dir, out))
    (images / "cut.png").unlink()

    Image.new("L", (20, 20)).save(masks / "ex1.png")
    assert "ex1.png: mask is 20x20 but its image is 36x36" in _error(capsys, base_args(exemplar_folders, tiny_model_dir, out))
    Image.new("L", (36, 36), 255).save(masks / "ex1.png")
    assert "ex1.png: mask marks the whole image" in _error(capsys, base_args(exemplar_folders, tiny_model_dir, out))
    Image.new("L", (36, 36), 0).save(masks / "ex1.png")

    missing_model = tmp_path / "no-such-model"
    message = _error(capsys, base_args(exemplar_folders, missing_model, out))
    assert "no-such-model" in message

    # The flag the user typed is named, not the config field (num_vectors).
    assert "--vectors must be" in _error(capsys, base_args(exemplar_folders, tiny_model_dir, out, "--vectors", "20"))
    assert "must end in .safetensors" in _error(capsys, base_args(exemplar_folders, tiny_model_dir, tmp_path / "c.pt"))
    assert "--images" in _error(capsys, ["train", "--model", str(tiny_model_dir), "--out", str(out)])
    assert "no run to resume" in _error(capsys, ["train", "--resume", "--run-dir", str(tmp_path / "nothing"), "--out", str(out)])


def test_init_from_a_concept_of_another_width_is_refused(exemplar_folders, tiny_model_dir, tmp_path, capsys):
    from lego_studio.core.concepts import Concept, save_concept

    wide = tmp_path / "wide.safetensors"
    save_concept(Concept(name="wide", placeholder="<wide>", vectors=torch.zeros(2, 768)), wide)
    message = _error(capsys, base_args(exemplar_folders, tiny_model_dir, tmp_path / "c.safetensors", "--init-from", str(wide), "--steps", "1"))
    assert "wide.safetensors" in message and "768" in message and "32" in message
