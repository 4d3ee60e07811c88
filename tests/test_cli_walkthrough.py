"""CLI faults from the walkthrough (issue 19): ``runs``, every bad image at once, flag names in
value errors, what ``--resume --steps`` does, plurals."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from lego_studio.cli import main
from lego_studio.core import runs
from lego_studio.core.train_config import TrainConfig


def _run(folder, name, status=None, message="", step=0, steps=10, method="lego", concept=False, pid=None):
    run_dir = folder / name
    runs.create_run(run_dir, {"model": "tiny"}, TrainConfig(subject="a cat", steps=steps, method=method))
    TrainConfig(subject="a cat", steps=steps, method=method).save(run_dir / "config.json")
    if step:
        (run_dir / "log.jsonl").write_text(json.dumps({"kind": "step", "step": step, "total": steps}) + "\n")
    if concept:
        (run_dir / "concept.safetensors").write_bytes(b"x")
    if status is not None:
        runs.end_run(run_dir, status, message)
    elif pid is not None:
        record = runs.read_record(run_dir)
        record.update(pid=pid, process_started=None)
        (run_dir / runs.RUN_FILE).write_text(json.dumps(record))
    return run_dir


def test_runs_lists_every_run_of_a_project_one_line_each(tmp_path, capsys):
    project = tmp_path / "project"
    folder = project / "runs"
    folder.mkdir(parents=True)
    (project / "project.json").write_text("{}")
    _run(folder, "20250101-000001", runs.RUN_FINISHED, step=10, concept=True)
    _run(folder, "20250101-000002", runs.RUN_CANCELLED, step=4, method="ti")
    _run(folder, "20250101-000003", runs.RUN_FAILED, "out of memory on cuda", step=2)
    _run(folder, "20250101-000004", pid=os.getpid(), step=3)  # this process: running
    dead = 2 ** 22 + 12345
    _run(folder, "20250101-000005", pid=dead, step=5)  # a pid no process has: interrupted
    assert main(["runs", str(project)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    by_id = {line.split()[0]: line for line in lines}
    assert "lego" in by_id["20250101-000001"] and "finished" in by_id["20250101-000001"]
    assert "step 10/10" in by_id["20250101-000001"] and "concept.safetensors" in by_id["20250101-000001"]
    assert " ti " in by_id["20250101-000002"] and "cancelled" in by_id["20250101-000002"]
    assert "failed: out of memory on cuda" in by_id["20250101-000003"]
    assert f"running in pid {os.getpid()}" in by_id["20250101-000004"]
    assert "interrupted" in by_id["20250101-000005"] and "step 5/10" in by_id["20250101-000005"]
    # The runs folder itself, and one run folder, work too.
    assert main(["runs", str(folder)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5
    assert main(["runs", str(folder / "20250101-000003")]) == 0
    assert capsys.readouterr().out.count("\n") == 1


def test_runs_of_a_missing_or_empty_folder(tmp_path, capsys):
    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "photos").mkdir()  # not a run
    assert main(["runs", str(tmp_path)]) == 0
    assert "no training runs" in capsys.readouterr().out


# ------------------------------------------------------------------------------ 18: every bad image


def test_train_lists_every_bad_image_at_once(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), "red").save(images / "good.png")
    (images / "broken.png").write_bytes(b"not a png at all")
    (images / "empty.jpg").write_bytes(b"")
    (images / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    code = main(["train", "--images", str(images), "--subject", "a cat", "--model", "tiny",
                 "--out", str(tmp_path / "c.safetensors"), "--method", "ti"])
    err = capsys.readouterr().err
    assert code == 2
    for name in ("broken.png", "empty.jpg", "cut.png"):
        assert name in err, err
    assert "good.png" not in err
    assert "3 of 4" in err


# ------------------------------------------------------------------------------ 19: flag names


@pytest.fixture
def one_image(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), "red").save(images / "a.png")
    return images


@pytest.mark.parametrize("flags, expected, internal", [
    (["--w-ctx", "-1"], "--w-ctx must be", "w_ctx"),
    (["--steps", "0"], "--steps must be", None),
    (["--method", "ti", "--w-subj", "0.5"], "--w-subj", "w_subj"),
])
def test_value_errors_name_the_flag(one_image, tmp_path, capsys, flags, expected, internal):
    code = main(["train", "--images", str(one_image), "--subject", "a cat", "--model", "tiny",
                 "--out", str(tmp_path / "c.safetensors"), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err, err
    if internal:
        assert f" {internal}" not in err.replace(expected, "")


def test_a_config_file_value_keeps_its_json_key(one_image, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"w_ctx": -1}))
    code = main(["train", "--images", str(one_image), "--subject", "a cat", "--model", "tiny",
                 "--out", str(tmp_path / "c.safetensors"), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and "w_ctx must be" in err and "--w-ctx" not in err


# ------------------------------------------------------------------------------ 21: resume --steps, plurals


def test_resume_with_steps_says_what_it_does(tmp_path):
    from lego_studio.commands.train import resume_note

    run_dir = tmp_path / "c.run"
    (run_dir / "checkpoints").mkdir(parents=True)
    TrainConfig(subject="a cat", steps=300).save(run_dir / "config.json")
    (run_dir / "checkpoints" / "step-000150.safetensors").write_bytes(b"x")
    shorter = resume_note(run_dir, TrainConfig(subject="a cat", steps=100), 100)
    assert "total" in shorter and "it was 300" in shorter and "not 100 more" in shorter
    assert "step 150" in shorter and "ends now" in shorter and "\n" not in shorter
    longer = resume_note(run_dir, TrainConfig(subject="a cat", steps=400), 400)
    assert "resuming at step 150, 250 steps to go" in longer
    one = resume_note(run_dir, TrainConfig(subject="a cat", steps=151), 151)
    assert one.endswith("1 step to go")
    assert resume_note(run_dir, TrainConfig(subject="a cat", steps=300), None) == ""


def test_plural():
    from lego_studio.core.wording import plural

    assert plural(1, "vector") == "1 vector"
    assert plural(3, "vector") == "3 vectors"
    assert plural(0, "image") == "0 images"


# ------------------------------------------------------------------------------ 11: README first screen


def test_readme_first_screen_says_how_to_start_the_app_and_what_to_do_first():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = readme.split("```bash\n")
    assert blocks[1].startswith("python3 -m pip install -e . && lego-studio demo --out demo-out")
    assert blocks[2].startswith("python3 -m pip install -e '.[dev]' && python3 -m pytest -q")
    first_screen = "\n".join(readme.splitlines()[:30])
    assert "`lego-studio`" in first_screen and "What to do first" in first_screen
    for place in ("Projects", "Masks", "Training", "Gallery"):
        assert place in first_screen
