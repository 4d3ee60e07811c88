"""The run record (core/runs.py): the trainer writes its end state, a run whose process is gone
reads as interrupted at once, and the CLI's Ctrl+C / kill -9 both resume to finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lego_studio.core import runs
from lego_studio.core.errors import Cancelled, TrainingError
from lego_studio.core.train_config import TrainConfig
from lego_studio.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def exemplars(tmp_path, make_exemplars):
    make_exemplars(tmp_path / "images", box=None, prefix="ex")
    return tmp_path / "images"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_running_record_whose_process_is_gone_reads_interrupted_at_once(tmp_path):
    run = tmp_path / "run"
    runs.create_run(run, {"images": ["a.png"], "model": "tiny"})
    runs.begin_run(run, {"method": "lego", "steps": 10})
    assert runs.read_run(run).status == runs.RUN_RUNNING  # this very process
    record = runs.read_record(run)
    record["pid"] = _dead_pid()
    (run / runs.RUN_FILE).write_text(json.dumps(record))
    info = runs.read_run(run)  # no waiting for files to go stale
    assert info.status == runs.RUN_INTERRUPTED and "gone" in info.message
    assert runs.run_inputs(run)["images"] == [os.path.abspath("a.png")]  # stored absolute


def test_a_reused_pid_is_not_mistaken_for_the_run(tmp_path):
    run = tmp_path / "run"
    runs.begin_run(run)
    record = runs.read_record(run)
    if record.get("process_started") is None:
        pytest.skip("process start times are not readable here")
    record["process_started"] = "1"  # same pid, but a process that started at another time
    (run / runs.RUN_FILE).write_text(json.dumps(record))
    assert runs.read_run(run).status == runs.RUN_INTERRUPTED


def test_trainer_writes_its_end_state(tiny_model, exemplars, tmp_path):
    images = sorted(exemplars.iterdir())
    config = TrainConfig.preset("ti", steps=3, checkpoint_every=0)

    done = tmp_path / "done"
    Trainer(tiny_model, config, images, None, done).run()
    record = runs.read_record(done)
    assert record["status"] == runs.RUN_FINISHED and record["ended"] and record["pid"] == os.getpid()
    assert record["config"]["steps"] == 3
    assert runs.read_run(done).status == runs.RUN_FINISHED

    cancelled = tmp_path / "cancelled"
    calls = []
    trainer = Trainer(tiny_model, config, images, None, cancelled, cancel=lambda: len(calls) >= 1,
                      progress=lambda step, total: calls.append((step, total)))
    with pytest.raises(Cancelled):
        trainer.run()
    assert calls == [(1, 3)]
    info = runs.read_run(cancelled)
    assert info.status == runs.RUN_CANCELLED and "step 1 of 3" in info.message
    assert info.resumable
    Trainer(tiny_model, config, images, None, cancelled).run(resume=True)
    assert runs.read_run(cancelled).status == runs.RUN_FINISHED


def test_a_crash_inside_the_trainer_is_recorded_as_failed_with_its_reason(tiny_model, exemplars, tmp_path, monkeypatch):
    images = sorted(exemplars.iterdir())
    run = tmp_path / "run"

    def boom(self, generator):
        raise TrainingError("the GPU fell over")

    monkeypatch.setattr(Trainer, "_concept_loss", boom)
    with pytest.raises(TrainingError):
        Trainer(tiny_model, TrainConfig.preset("ti", steps=2), images, None, run).run()
    info = runs.read_run(run)
    assert (info.status, info.message) == (runs.RUN_FAILED, "the GPU fell over")


# ------------------------------------------------------------------------------ the CLI, for real


def _start_cli(exemplars, model_dir, out: Path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "lego_studio", "train", "--images", str(exemplars), "--subject", "a thing",
            "--model", str(model_dir), "--device", "cpu", "--precision", "fp32", "--out", str(out),
            "--method", "ti", "--steps", "100000", "--checkpoint-every", "1", "--quiet"]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_steps(run_dir: Path, process, n: int, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    log = run_dir / "log.jsonl"
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"train exited early: {process.communicate()[1]}")
        if log.is_file() and len(log.read_text().splitlines()) >= n and (run_dir / runs.RUN_FILE).is_file():
            return
        time.sleep(0.1)
    process.kill()
    raise AssertionError("training did not get going")


def _resume_to_finished(run_dir: Path, out: Path) -> None:
    from lego_studio.cli import main

    steps = runs.read_run(run_dir).step + 2
    code = main(["train", "--resume", "--run-dir", str(run_dir), "--steps", str(steps), "--device", "cpu", "--quiet"])
    assert code == 0
    assert runs.read_run(run_dir).status == runs.RUN_FINISHED
    assert out.is_file()


@pytest.mark.slow  # CLI subprocesses
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_on_cli_train_reads_cancelled_and_resumes_to_finished(exemplars, tiny_model_dir, tmp_path):
    out = tmp_path / "c.safetensors"
    run_dir = tmp_path / "c.run"
    process = _start_cli(exemplars, tiny_model_dir, out)
    _wait_for_steps(run_dir, process, 2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "--resume" in err
    info = runs.read_run(run_dir)
    assert info.status == runs.RUN_CANCELLED, info
    assert info.resumable
    _resume_to_finished(run_dir, out)


@pytest.mark.slow  # CLI subprocesses
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_kill_9_on_cli_train_reads_interrupted_at_once_and_resumes_to_finished(exemplars, tiny_model_dir, tmp_path):
    out = tmp_path / "k.safetensors"
    run_dir = tmp_path / "k.run"
    process = _start_cli(exemplars, tiny_model_dir, out)
    _wait_for_steps(run_dir, process, 2)
    assert runs.read_run(run_dir).status == runs.RUN_RUNNING
    process.kill()
    process.communicate(timeout=30)
    info = runs.read_run(run_dir)
    assert info.status == runs.RUN_INTERRUPTED and info.resumable
    _resume_to_finished(run_dir, out)
