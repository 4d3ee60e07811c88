"""Hostile disks and folders (issue 18): full, read-only, damaged, shared by two processes.

Where a case needs a real full or read-only disk it has two variants: one on a real tmpfs / read-only
bind mount (run as root; skipped elsewhere) and one with the OS error injected by monkeypatch (runs
everywhere)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from lego_studio.cli import main
from lego_studio.core import paths, runs
from lego_studio.core.concepts import Concept, save_concept
from lego_studio.core.errors import DiskError, InputError, disk_error
from lego_studio.core.library import ConceptLibrary
from lego_studio.core.locks import LockBusy, ProcessLock

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0 and sys.platform.startswith("linux")


# ------------------------------------------------------------------------------ helpers


def _mount(*command) -> bool:
    return subprocess.run(command, capture_output=True).returncode == 0


@contextmanager
def full_disk(folder: Path):
    """``folder`` on a tiny tmpfs that is full (root only; skips otherwise)."""
    if not ROOT:
        pytest.skip("needs root to mount a tmpfs")
    folder.mkdir(parents=True, exist_ok=True)
    if not _mount("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)):
        pytest.skip("cannot mount a tmpfs here")
    try:
        fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield folder
    finally:
        _mount("umount", "-l", str(folder))


@contextmanager
def read_only(folder: Path):
    """``folder`` made read-only by a read-only bind mount (root only; skips otherwise)."""
    if not ROOT:
        pytest.skip("needs root for a read-only bind mount")
    folder.mkdir(parents=True, exist_ok=True)
    if not (_mount("mount", "--bind", str(folder), str(folder))
            and _mount("mount", "-o", "remount,ro,bind", str(folder))):
        _mount("umount", "-l", str(folder))
        pytest.skip("cannot bind-mount read-only here")
    try:
        yield folder
    finally:
        _mount("umount", "-l", str(folder))


def _concept(name="frost", seed=0, width=32) -> Concept:
    generator = torch.Generator().manual_seed(seed)
    return Concept(name, f"<{name}>", torch.randn(2, width, generator=generator), {"seed": seed})


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("error: "), err
    return lines[-1]


class SafetensorError(Exception):
    """Stands in for safetensors_rust.SafetensorError (recognised by its name)."""


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ------------------------------------------------------------------------------ one path for OS errors


@pytest.mark.parametrize("exc, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "/d/x"), "no space left on device writing /d/x: free some space"),
    (OSError(errno.EROFS, "Read-only file system", "/d/x"), "read-only file system writing /d/x: choose a folder"),
    (OSError(errno.EACCES, "Permission denied", "/d/x"), "permission denied writing /d/x: choose a folder you can write to"),
    (OSError(errno.EPERM, "Operation not permitted", "/d/x"), "operation not permitted writing /d/x"),
    (OSError(errno.EISDIR, "Is a directory", "/d/x"), "/d/x is a folder where a file is expected"),
    (OSError(errno.ENOTDIR, "Not a directory", "/d/x"), "a part of this path is a file, not a folder"),
    (OSError(errno.EEXIST, "File exists", "/d/x"), "/d/x is a file where a folder is expected"),
    (SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                     'device" })'), "no space left on device writing /d/x"),
    (SafetensorError("No space left on device (os error 28)"), "no space left on device writing /d/x"),
    (RuntimeError("basic_ios::clear: iostream error"), "could not write /d/x (the disk is probably full"),
])
def test_os_errors_become_one_line_messages_naming_the_path(exc, expected):
    problem = disk_error(exc, None if isinstance(exc, OSError) else "/d/x")
    assert isinstance(problem, DiskError) and isinstance(problem, OSError)
    assert expected in str(problem) and "\n" not in str(problem)


def test_other_errors_are_not_disk_errors():
    assert disk_error(ValueError("x")) is None and disk_error(RuntimeError("a bug")) is None


def test_atomic_save_names_the_real_file_not_its_temp_file(tmp_path, monkeypatch):
    def full(tmp):
        raise SafetensorError("No space left on device (os error 28)")

    with pytest.raises(DiskError, match=r"no space left on device writing .*concept\.safetensors: free some space"):
        paths.atomic_save(tmp_path / "concept.safetensors", full)
    assert list(tmp_path.iterdir()) == []  # and no temp file is left


def test_atomic_save_into_a_read_only_folder_real(tmp_path):
    with read_only(tmp_path / "ro") as folder:
        with pytest.raises(DiskError, match=r"read-only file system writing .*out\.json: choose a folder"):
            paths.atomic_write_json(folder / "out.json", {})


# ------------------------------------------------------------------------------ CLI: one line, no traceback


def test_concepts_import_into_a_full_library(tmp_path, monkeypatch, capsys):
    source = save_concept(_concept(), tmp_path / "frost.safetensors")
    import safetensors.torch

    def no_space(*args, **kwargs):
        raise SafetensorError("No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    assert main(["concepts", "import", str(source)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no space left on device writing" in line and "frost.safetensors" in line


def _library_dir_setting(config_dir, library):
    """The user's settings name ``library`` as the library folder (as Settings writes them)."""
    (config_dir / "settings.json").write_text(json.dumps({"schema": 1, "library_dir": str(library)}))


def test_concepts_import_into_a_full_library_real(tmp_path, capsys):
    source = save_concept(_concept(), tmp_path / "frost.safetensors")
    settings = tmp_path / "lego-home" / "config"
    settings.mkdir(parents=True, exist_ok=True)
    with full_disk(tmp_path / "lib") as library:
        ConceptLibrary(library)
        _library_dir_setting(settings, library)
        assert main(["concepts", "import", str(source)]) == 2
        assert "no space left on device writing" in _one_error_line(capsys.readouterr().err)
        assert main(["concepts", "import", "--replace", str(source)]) == 2
        assert "no space left on device" in _one_error_line(capsys.readouterr().err)


def test_concepts_import_into_a_read_only_library_real(tmp_path, capsys):
    source = save_concept(_concept(), tmp_path / "frost.safetensors")
    settings = tmp_path / "lego-home" / "config"
    settings.mkdir(parents=True, exist_ok=True)
    ConceptLibrary(tmp_path / "lib")
    _library_dir_setting(settings, tmp_path / "lib")
    with read_only(tmp_path / "lib"):
        assert main(["concepts", "import", str(source)]) == 2
        assert "read-only file system" in _one_error_line(capsys.readouterr().err)
    # a library folder that does not exist under a read-only parent
    _library_dir_setting(settings, tmp_path / "ro" / "new")
    with read_only(tmp_path / "ro"):
        assert main(["concepts", "list"]) == 2
        assert "read-only file system creating the library folder" in _one_error_line(capsys.readouterr().err)


def test_concepts_export_a1111_onto_a_full_disk(tmp_path, monkeypatch, capsys):
    source = save_concept(_concept(), tmp_path / "frost.safetensors")

    def stream_error(*args, **kwargs):
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", stream_error)
    code = main(["concepts", "export", str(source), "--format", "a1111", "--out", str(tmp_path / "frost.pt")])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "could not write" in line and "frost.pt" in line


def test_index_json_that_is_a_folder_and_a_library_dir_that_is_a_file(tmp_path, capsys):
    source = save_concept(_concept(), tmp_path / "frost.safetensors")
    settings = tmp_path / "lego-home" / "config"
    settings.mkdir(parents=True, exist_ok=True)
    library = tmp_path / "lib"
    (library / "index.json").mkdir(parents=True)
    _library_dir_setting(settings, library)
    assert main(["concepts", "import", str(source)]) == 2
    assert "index.json is a folder where a file is expected" in _one_error_line(capsys.readouterr().err)

    (tmp_path / "afile").write_text("x")
    _library_dir_setting(settings, tmp_path / "afile")
    assert main(["concepts", "list"]) == 2
    assert "the library folder is a file, not a folder" in _one_error_line(capsys.readouterr().err)


def test_a_truncated_settings_file_is_reported_by_the_cli(tmp_path, capsys):
    settings = tmp_path / "lego-home" / "config"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "settings.json").write_text('{"schema": 1, "library_dir": "/some/whe')
    assert main(["concepts", "list"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "settings were unreadable" in err and "using defaults" in err


# ------------------------------------------------------------------------------ run folders


HOLDER = """
import sys, time
from lego_studio.core import runs
with runs.hold_run(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _hold_in_another_process(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_trainer_on_a_live_run_folder_refuses_naming_the_process(exemplar_folders, tmp_path, capsys):
    images, masks = exemplar_folders
    run_dir = tmp_path / "c.run"
    runs.create_run(run_dir, {"images": ["kept.png"], "model": "tiny"})
    before = (run_dir / runs.RUN_FILE).read_text()
    holder = _hold_in_another_process(run_dir)
    try:
        code = main(["train", "--subject", "a red square", "--images", str(images), "--model", "tiny", "--out", str(tmp_path / "c.safetensors"),
                     "--run-dir", str(run_dir), "--steps", "1", "--quiet"])
        assert code == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"another training (process {holder.pid}) is using this run folder" in line
        assert (run_dir / runs.RUN_FILE).read_text() == before  # the live run's record is untouched
        with pytest.raises(LockBusy, match=str(holder.pid)):
            runs.create_run(run_dir, {"images": ["other.png"]})
        assert runs.is_live(run_dir)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    started = time.monotonic()
    with runs.hold_run(run_dir):  # a dead holder's lock is free at once
        assert time.monotonic() - started < 1
    assert not runs.is_live(run_dir)


def test_the_lock_of_a_killed_process_is_taken_over_at_once(tmp_path):
    lock_path = tmp_path / "x.lock"
    code = f"""
import os
from lego_studio.core.locks import ProcessLock
ProcessLock({str(lock_path)!r}).acquire()
os.kill(os.getpid(), 9)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], env=env)
    with ProcessLock(lock_path, timeout=0):
        pass


def test_a_failure_before_the_first_step_is_recorded_as_failed(exemplar_folders, tmp_path, capsys):
    images, masks = exemplar_folders
    run_dir = tmp_path / "c.run"
    code = main(["train", "--subject", "a red square", "--images", str(images), "--model", str(tmp_path / "no-such-model"),
                 "--out", str(tmp_path / "c.safetensors"), "--steps", "1", "--quiet"])
    assert code == 2
    _one_error_line(capsys.readouterr().err)
    record = runs.read_record(run_dir)
    assert record["status"] == runs.RUN_FAILED and "no-such-model" in record["message"]
    assert runs.read_run(run_dir).status == runs.RUN_FAILED


def test_a_failure_inside_a_held_run_is_recorded_with_the_disk_message(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(OSError):
        with runs.hold_run(run_dir):
            runs.create_run(run_dir, {"images": ["a.png"]})
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "latents" / "x"))
    info = runs.read_run(run_dir)
    assert info.status == runs.RUN_FAILED and info.message.startswith("no space left on device writing")


def test_an_end_state_that_cannot_be_written_is_reconciled_when_read(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    runs.create_run(run_dir, {"images": ["a.png"]}, {"method": "lego", "steps": 40})
    real_write = runs._write_record

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SafetensorError):
        with runs.hold_run(run_dir):
            runs.begin_run(run_dir)
            monkeypatch.setattr(runs, "_write_record", disk_full)
            # what the trainer does when a checkpoint save fails on a full disk
            failure = SafetensorError("No space left on device (os error 28)")
            assert runs.record_end(run_dir, runs.RUN_FAILED, failure) is False  # does not raise
            raise failure
    assert runs.read_record(run_dir)["status"] == runs.RUN_RUNNING  # nothing could be written
    info = runs.read_run(run_dir)  # this process knows why, and says so
    assert info.status == runs.RUN_FAILED and "no space left on device" in info.message

    monkeypatch.setattr(runs, "_write_record", real_write)
    assert runs.read_run(run_dir).status == runs.RUN_FAILED
    assert runs.read_record(run_dir)["status"] == runs.RUN_FAILED  # written once the disk had room

    # Another process (this one gone) reading a "running" record that cannot say why.
    record = runs.read_record(run_dir)
    record.update(status=runs.RUN_RUNNING, pid=_dead_pid(), message="")
    (run_dir / runs.RUN_FILE).write_text(json.dumps(record))
    info = runs.read_run(run_dir)
    assert info.status == runs.RUN_INTERRUPTED
    assert "without recording how it ended, at step 0 of 40" in info.message


def test_garbage_in_log_jsonl_is_skipped_on_resume(tmp_path):
    from lego_studio.core.train_config import TrainConfig
    from lego_studio.core.training import Trainer

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    good = [json.dumps({"step": s, "losses": {}}) for s in (1, 2, 3)]
    (run_dir / "log.jsonl").write_bytes(
        (good[0] + "\n").encode() + b"\xff\xfe\x00garbage\x9c\n" + (good[1] + "\n" + good[2] + "\n").encode())
    trainer = Trainer(None, TrainConfig(), ["a.png"], run_dir=run_dir)
    trainer._truncate_log(2)  # no UnicodeDecodeError
    assert (run_dir / "log.jsonl").read_text().splitlines() == good[:2]
    assert runs.read_run(run_dir).step == 2


def test_a_truncated_run_json_is_named_on_resume_and_not_shown_running(tmp_path, capsys):
    run_dir = tmp_path / "c.run"
    runs.create_run(run_dir, {"images": ["a.png"], "model": "tiny", "out": str(tmp_path / "c.safetensors")})
    text = (run_dir / runs.RUN_FILE).read_text()
    (run_dir / runs.RUN_FILE).write_text(text[: len(text) // 2])
    assert main(["train", "--resume", "--run-dir", str(run_dir)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"run.json in {run_dir} is unreadable: it is not valid JSON" in line and "--out" in line
    info = runs.read_run(run_dir)
    assert info.status == runs.RUN_INTERRUPTED and "run.json is unreadable" in info.message


def test_run_records_hold_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    runs.create_run("run", {"images": ["imgs/a.png"], "masks": [None, "m/a.png"], "subject_images": [],
                            "out": "c.safetensors", "model": "model", "device": "cpu"})
    record = runs.read_record(tmp_path / "run")
    inputs = record["inputs"]
    assert inputs["images"] == [str(tmp_path / "imgs" / "a.png")]
    assert inputs["masks"] == [None, str(tmp_path / "m" / "a.png")]
    assert inputs["out"] == str(tmp_path / "c.safetensors") and inputs["model"] == str(tmp_path / "model")
    assert record["run_dir"] == str(tmp_path / "run")
    runs.create_run("run2", {"model": "tiny"})
    assert runs.read_record(tmp_path / "run2")["inputs"]["model"] == "tiny"  # a name stays a name


@pytest.mark.slow  # two CLI training runs
def test_resume_works_from_another_working_folder(exemplar_folders, tiny_model_dir, tmp_path, monkeypatch, capsys):
    images, masks = exemplar_folders
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--subject", "a red square", "--images", os.path.relpath(images), "--masks", os.path.relpath(masks),
                 "--model", str(tiny_model_dir), "--device", "cpu", "--precision", "fp32",
                 "--out", "c.safetensors", "--steps", "1", "--checkpoint-every", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code = main(["train", "--resume", "--run-dir", str(tmp_path / "c.run"), "--steps", "2", "--device", "cpu",
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "c.safetensors").is_file() and not (elsewhere / "c.safetensors").exists()


def test_train_into_a_read_only_folder(exemplar_folders, tmp_path, monkeypatch, capsys):
    images, masks = exemplar_folders
    target = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if str(self).startswith(str(target)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    code = main(["train", "--subject", "a red square", "--images", str(images), "--model", "tiny", "--out", str(target / "c.safetensors"),
                 "--steps", "1", "--quiet"])
    assert code == 2
    assert "read-only file system" in _one_error_line(capsys.readouterr().err)


def test_train_into_a_read_only_or_full_folder_real(exemplar_folders, tmp_path, capsys):
    images, masks = exemplar_folders
    for guard, expected in ((read_only, "read-only file system"), (full_disk, "no space left on device")):
        with guard(tmp_path / guard.__name__) as folder:
            for extra in (["--out", str(folder / "c.safetensors")],
                          ["--out", str(tmp_path / "c.safetensors"), "--run-dir", str(folder / "run")]):
                code = main(["train", "--subject", "a red square", "--images", str(images), "--model", "tiny", *extra, "--steps", "1", "--quiet"])
                assert code == 2
                assert expected in _one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------ stale temp files


def test_stale_temp_files_are_cleaned_when_the_owner_starts(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    stale = [run_dir / ".run.json.k2j3.tmp.json", run_dir / "checkpoints" / ".step-000010.safetensors.x1.tmp.safetensors"]
    keep = [run_dir / "log.jsonl", run_dir / "checkpoints" / "step-000010.safetensors"]
    for path in stale + keep:
        path.write_text("x")
    with runs.hold_run(run_dir):
        pass
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)

    library = tmp_path / "lib"
    library.mkdir()
    stale = library / ".index.json.abcd.tmp.json"
    stale.write_text("{")
    ConceptLibrary(library)
    assert not stale.exists()


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    library = tmp_path / "lib"
    ConceptLibrary(library)
    temp = library / ".frost.safetensors.abcd.tmp.safetensors"
    temp.write_text("being written")
    holder = ProcessLock(library / ".index.json.lock")
    code = f"""
from lego_studio.core.library import ConceptLibrary
ConceptLibrary({str(library)!r})
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with holder:  # another process (this one) is changing the library
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        assert temp.exists()


# ------------------------------------------------------------------------------ messages


def test_the_image_limit_message_and_the_readme_agree(tmp_path):
    import re

    from PIL import Image

    from lego_studio.core.images import load_image

    path = tmp_path / "huge.png"
    Image.new("1", (8200, 8200)).save(path)
    with pytest.raises(InputError) as info:
        load_image(path)
    limit = re.search(r"the (\d+) MP limit", str(info.value)).group(1)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert re.search(r"larger than (\d+) MP", readme).group(1) == limit == "64"


def test_a_concept_name_with_a_line_break_is_refused_or_made_one_line(exemplar_folders, tmp_path, capsys):
    images, masks = exemplar_folders
    code = main(["train", "--subject", "a red square", "--images", str(images), "--model", "tiny",
                 "--name", "frozen\nsaved fake.safetensors", "--out", str(tmp_path / "c.safetensors"), "--quiet"])
    assert code == 2
    assert "name must be one line" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "c.run").exists()
    # A concept file from elsewhere whose name holds a line break is read as one line.
    concept = Concept("frozen\nin ice", "<frozen-in-ice>", torch.zeros(1, 4))
    assert concept.name == "frozen in ice"


def test_a_data_folder_under_a_read_only_parent_fails_in_one_line(tmp_path, monkeypatch, capsys):
    source = save_concept(_concept(), tmp_path / "frost.safetensors")
    with read_only(tmp_path / "ro") as folder:
        monkeypatch.setenv("LEGO_STUDIO_HOME", str(folder / "home"))
        assert main(["concepts", "import", str(source)]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "read-only file system creating the folder" in line and str(folder / "home") in line


def test_a_data_folder_that_cannot_be_made_fails_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "home").write_text("a file where the data folder should be")
    monkeypatch.setenv("LEGO_STUDIO_HOME", str(tmp_path / "home"))
    source = save_concept(_concept(), tmp_path / "frost.safetensors")
    assert main(["concepts", "import", str(source)]) == 2
    assert "a part of this path is a file, not a folder" in _one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------ projects


def test_one_writer_per_project(tmp_path):
    from lego_studio.core.project import Project, ProjectReadOnly

    folder = tmp_path / "proj"
    Project.create(folder, name="Proj", concept_name="frost")
    (folder / ".project.json.k2.tmp.json").write_text("{")  # left by a killed save
    first = Project.open(folder)
    assert first.claim() is None
    assert not (folder / ".project.json.k2.tmp.json").exists()
    second = Project.open(folder)  # another window
    reason = second.claim()
    assert reason and "opened read-only" in reason and f"process {os.getpid()}" in reason
    second.save()  # nothing changed: fine
    second.subject = "changed"
    with pytest.raises(ProjectReadOnly):
        second.save()
    with pytest.raises(ProjectReadOnly):
        second.new_run_dir()
    first.subject = "mine"
    first.save()
    first.release()
    third = Project.open(folder)
    assert third.claim() is None and third.subject == "mine"
    third.release()


def test_a_project_on_a_read_only_disk_opens_read_only(tmp_path):
    from lego_studio.core.project import Project, ProjectReadOnly

    folder = tmp_path / "proj"
    Project.create(folder, name="Proj", concept_name="frost")
    with read_only(folder):
        project = Project.open(folder)
        reason = project.claim()
        assert reason and "opened read-only" in reason
        project.save()  # unchanged: no write, no error
        project.subject = "changed"
        with pytest.raises(ProjectReadOnly, match="opened read-only"):
            project.save()


def test_a_run_list_probing_the_folder_does_not_stop_a_run_from_starting(tmp_path):
    """is_live() takes the run's lock for an instant to test it; a trainer starting in that
    instant (the run list refreshes while Start is pressed) must start, not read a second trainer."""
    import threading

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stop = threading.Event()
    probes = []

    def probe():
        while not stop.is_set():
            probes.append(runs.is_live(run_dir))

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for _ in range(50):
            with runs.hold_run(run_dir):
                pass
    finally:
        stop.set()
        prober.join()
    assert len(probes) > 50  # the probe really raced the holds
