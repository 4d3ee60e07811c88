import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from lego_studio.core import paths
from lego_studio.core.errors import InputError
from lego_studio.core.project import (
    MASK_INVALID,
    MASK_MISSING,
    MASK_NONE,
    MASK_PAINTED,
    SCHEMA_VERSION,
    Project,
)
from lego_studio.core.runs import (
    RUN_CANCELLED,
    RUN_FAILED,
    RUN_FINISHED,
    RUN_INTERRUPTED,
    RUN_RUNNING,
    read_run,
)
from lego_studio.core.settings import Settings


def _png(path, size=(32, 24), colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def project(tmp_path):
    return Project.create(tmp_path / "Frozen toys", subject="a toy robot", positive_words=["ice", "frost"])


def test_create_writes_versioned_json_and_reopens(project, tmp_path):
    data = json.loads((project.folder / "project.json").read_text())
    assert data["schema"] == SCHEMA_VERSION
    assert data["name"] == "Frozen toys" and data["subject"] == "a toy robot"
    assert data["concept_name"] == "frozen-toys" and project.placeholder == "<frozen-toys>"
    for sub in ("images", "masks", "subject_images", "runs", "gallery"):
        assert (project.folder / sub).is_dir()

    project.negative_words = ["robot", "metal"]
    project.train_defaults = {"steps": 500}
    project.save()
    again = Project.open(project.folder)
    assert again.positive_words == ["ice", "frost"]
    assert again.negative_words == ["robot", "metal"]
    assert again.train_defaults == {"steps": 500}
    with pytest.raises(InputError, match="not an empty folder"):
        Project.create(project.folder)


def test_open_refuses_future_schema_and_broken_json(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "project.json").write_text(json.dumps({"schema": 99, "name": "x"}))
    with pytest.raises(InputError) as info:
        Project.open(folder)
    assert "newer Lego Studio" in str(info.value) and "project.json" in str(info.value)

    (folder / "project.json").write_text('{"schema": 1, "name": ')
    with pytest.raises(InputError, match="broken project file"):
        Project.open(folder)

    (folder / "project.json").write_text(json.dumps({"schema": 1, "name": "x", "images": [{"file": "../../etc/passwd"}]}))
    with pytest.raises(InputError, match="outside the project"):
        Project.open(folder)

    with pytest.raises(InputError, match="not a Lego Studio project"):
        Project.open(tmp_path / "nothing-here")


def test_a_hand_written_project_without_schema_opens_and_saves_as_current(tmp_path):
    folder = tmp_path / "old"
    _png(folder / "images" / "a.png")
    _png(folder / "masks" / "a.png", colour=(0, 0, 0))  # a mask copied in by hand
    (folder / "project.json").write_text(json.dumps({"name": "Old one", "images": [{"file": "images/a.png"}]}))
    project = Project.open(folder)
    assert [e.file for e in project.images] == ["images/a.png"]
    assert project.mask_status("a.png") == MASK_PAINTED  # unlisted mask adopted
    project.save()
    assert json.loads((folder / "project.json").read_text())["schema"] == SCHEMA_VERSION


def test_add_images_copies_reports_broken_and_deduplicates(project, tmp_path):
    src = tmp_path / "src"
    good = _png(src / "cat.png")
    other = _png(src / "other" / "cat.png", colour=(0, 90, 0))  # same name, different picture
    jpeg = src / "cat.jpg"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(jpeg)
    broken = src / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")

    failures = project.add_images([good, broken, other, jpeg, good])
    assert [p for p, _ in failures] == [broken, good]
    assert "broken.png" in failures[0][1] and "\n" not in failures[0][1]
    assert "already in the project" in failures[1][1]
    names = [e.name for e in project.images]
    assert names == ["cat.png", "cat-2.png", "cat-3.jpg"]  # unique stems: masks are keyed by stem
    assert (project.folder / "images" / "cat.png").read_bytes() == good.read_bytes()  # byte copy
    assert Project.open(project.folder).images == project.images  # saved


def test_rotated_jpeg_is_stored_upright_as_png(project, tmp_path):
    pixels = np.zeros((10, 30, 3), np.uint8)  # stored 30 wide x 10 high
    pixels[:, :5] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    source = tmp_path / "phone.jpg"
    image.save(source, exif=exif.tobytes(), quality=95)

    assert project.add_images([source]) == []
    entry = project.images[0]
    assert entry.file == "images/phone.png"
    stored = Image.open(project.image_path(entry))
    assert stored.size == (10, 30)  # upright: what a photo viewer shows
    assert not stored.getexif().get(0x0112)


def test_masks_round_trip_with_size_check_and_status(project, tmp_path):
    project.add_images([_png(tmp_path / "a.png", size=(32, 24)), _png(tmp_path / "b.png", size=(16, 16))])
    assert project.mask_status("a.png") == MASK_NONE and project.mask_for("a.png") is None

    mask = np.zeros((24, 32), bool)
    mask[5:15, 8:20] = True
    path = project.save_mask("a.png", mask)
    assert path == project.folder / "masks" / "a.png"
    stored = np.asarray(Image.open(path))
    assert stored.dtype == np.uint8 and set(np.unique(stored)) == {0, 255}
    assert np.array_equal(project.mask_for("images/a.png") == 255, mask)
    assert project.mask_statuses() == {"a.png": MASK_PAINTED, "b.png": MASK_NONE}

    with pytest.raises(InputError, match="is 16x16 but the image is 32x24"):
        project.save_mask("a.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(InputError, match="whole image"):
        project.save_mask("a.png", np.full((24, 32), 255, np.uint8))
    with pytest.raises(InputError, match="no image 'zzz.png'"):
        project.save_mask("zzz.png", mask)

    images, masks = project.training_inputs()
    assert [p.name for p in images] == ["a.png", "b.png"] and masks == [path, None]

    Image.new("L", (8, 8)).save(path)  # replaced by a wrong-size file behind our back
    assert project.mask_status("a.png") == MASK_INVALID
    path.unlink()
    assert project.mask_status("a.png") == MASK_MISSING
    assert project.mask_for("a.png") is None

    project.remove_image("a.png")
    assert [e.name for e in project.images] == ["b.png"]
    assert not (project.folder / "images" / "a.png").exists()


def test_rename_duplicate_delete_and_recent_list(project, tmp_path):
    project.add_images([_png(tmp_path / "a.png")])
    project.save_mask("a.png", np.zeros((24, 32), np.uint8))
    settings = Settings.load()
    settings.add_recent_project(project.folder)
    settings.save()

    project.rename("Melting toys")
    assert project.folder.name == "Melting toys" and project.folder.is_dir()
    assert not (tmp_path / "Frozen toys").exists()
    assert Settings.load().recent_projects == [str(project.folder.resolve())]
    assert Project.open(project.folder).name == "Melting toys"

    (tmp_path / "other-project").mkdir()  # a folder in the way
    with pytest.raises(InputError, match="already exists"):
        project.rename("other-project")

    copy = project.duplicate(tmp_path / "Copy")
    assert copy.name == "Melting toys copy"
    assert (copy.folder / "masks" / "a.png").is_file()
    assert copy.mask_status("a.png") == MASK_PAINTED
    assert Project.open(copy.folder).images[0].file == "images/a.png"

    old_folder = project.folder
    trashed = project.delete()
    assert not old_folder.exists()
    assert trashed.parent == paths.data_dir() / "trash" and (trashed / "project.json").is_file()
    assert Settings.load().recent_projects == []


def test_a_run_folder_without_a_record_is_interrupted_unless_it_is_being_set_up(project):
    from lego_studio.core import runs

    run = project.new_run_dir()
    (run / "config.json").write_text(json.dumps({"method": "lego", "steps": 100}))
    (run / "log.jsonl").write_text(json.dumps({"step": 7, "stage": 1, "losses": {}}) + "\n" + '{"kind": "st')
    info = read_run(run)
    assert (info.status, info.step, info.total_steps, info.method) == (RUN_INTERRUPTED, 7, 100, "lego")
    with runs.hold_run(run):  # a front end holds the folder from before it records the run
        assert read_run(run).status == RUN_RUNNING


def test_run_record_end_states_are_listed(project):
    from lego_studio.core import runs

    ok = project.new_run_dir()
    (ok / "config.json").write_text(json.dumps({"method": "lego", "steps": 50, "subject_token_steps": 10}))
    (ok / "log.jsonl").write_text(json.dumps({"step": 60, "stage": "concept", "losses": {}}) + "\n")
    runs.begin_run(ok)
    assert read_run(ok).status == RUN_RUNNING
    runs.end_run(ok, RUN_FINISHED)
    assert (read_run(ok).status, read_run(ok).step, read_run(ok).total_steps) == (RUN_FINISHED, 60, 60)

    cancelled = project.new_run_dir()
    runs.begin_run(cancelled)
    runs.end_run(cancelled, RUN_CANCELLED, "training cancelled at step 3 of 50")
    assert read_run(cancelled).status == RUN_CANCELLED

    failed = project.new_run_dir()
    runs.begin_run(failed)
    runs.end_run(failed, RUN_FAILED, "training stopped at step 9:\n the loss was not finite")
    info = read_run(failed)
    assert info.status == RUN_FAILED and info.message == "training stopped at step 9: the loss was not finite"
    assert [r.status for r in project.runs()] == [RUN_FAILED, RUN_CANCELLED, RUN_FINISHED]


def test_gallery_lists_pngs_newest_first(project):
    first = _png(project.new_gallery_path("teapot"))
    old = time.time() - 100
    os.utime(first, (old, old))
    second = _png(project.new_gallery_path("teapot"))
    assert first != second
    assert project.gallery() == [second, first]


def test_create_from_folder_pairs_masks_by_stem(tmp_path):
    src = tmp_path / "exemplars"
    _png(src / "a.jpg", size=(32, 24))
    _png(src / "b.png", size=(32, 24), colour=(0, 200, 0))
    _png(src / "c.png", size=(32, 24), colour=(0, 0, 200))
    mask = np.zeros((24, 32), np.uint8)
    mask[:10] = 255
    Image.fromarray(mask).save(_png(src / "masks" / "a.png"))
    Image.fromarray(mask).save(src / "b_mask.png")  # mask next to its image
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(src / "masks" / "c.png")  # wrong size
    _png(src / "subject_images" / "s1.png")

    project, problems = Project.create_from_folder(src, subject="a toy robot")
    assert project.folder.parent == Settings.load().projects_path()
    assert [e.name for e in project.images] == ["a.jpg", "b.png", "c.png"]  # b_mask.png is not an image
    assert [e.name for e in project.subject_images] == ["s1.png"]
    assert project.mask_statuses() == {"a.jpg": MASK_PAINTED, "b.png": MASK_PAINTED, "c.png": MASK_NONE}
    assert np.array_equal(project.mask_for("a.jpg"), mask)
    assert len(problems) == 1 and problems[0][0].name == "c.png" and "5x5" in problems[0][1]


def test_a_run_listed_while_it_replaces_a_file_is_still_read(tmp_path, monkeypatch):
    # A live run writes files atomically (hidden temp file, then rename): the temp file can be in
    # a directory listing and gone by the time it is looked at. The UI lists runs during training.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "lego", "steps": 10}))
    (run / "log.jsonl").write_text(json.dumps({"kind": "step", "step": 3, "total": 10}) + "\n")
    vanished = run / ".concept.tmp123.safetensors"
    real_iterdir = type(run).iterdir

    def listing_with_a_vanished_file(self):
        yield from real_iterdir(self)
        if self == run:
            yield vanished

    from lego_studio.core import runs

    runs.begin_run(run)
    monkeypatch.setattr(type(run), "iterdir", listing_with_a_vanished_file)
    info = read_run(run)
    assert info.step == 3 and info.status == "running"
