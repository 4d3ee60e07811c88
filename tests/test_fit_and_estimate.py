"""Settings that fit the machine, the duration estimate before a run, the out-of-memory stop and
its resume, and the warning about foreign images on the built-in model (core + CLI)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from lego_studio.cli import main
from lego_studio.core import estimate, memory, memory_trace, oom
from lego_studio.core.train_config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_args(exemplar_folders, model, out, *extra):
    images, masks = exemplar_folders
    return ["train", "--images", str(images), "--masks", str(masks), "--subject", "a red square", "--model", str(model),
            "--device", "cpu", "--precision", "fp32", "--out", str(out), "--checkpoint-every", "1", *extra]


# ------------------------------------------------------------------------------ memory


def _room(step_bytes: int, fraction: float) -> int:
    """Free memory that leaves ``fraction`` of a step's own bytes after the planner's headroom and
    the allocator overhead it adds to every need."""
    return int(memory.MIN_HEADROOM_BYTES) + memory_trace.DEVICE_OVERHEAD_BYTES + int(fraction * step_bytes)


def test_fit_walks_the_ladder_and_keeps_explicit_settings(tiny_model):
    config = TrainConfig.preset("lego", subject="a toy")
    stacked = memory.estimate_step_memory(tiny_model, config) - memory_trace.DEVICE_OVERHEAD_BYTES

    plenty = memory.fit_config(tiny_model, config, free=_room(stacked, 10))
    assert plenty.changed == {} and plenty.note == "" and plenty.config is config

    tight = memory.fit_config(tiny_model, config, free=_room(stacked, 0.7))
    assert tight.changed == {"unet_batching": "split"} and tight.fits
    assert tight.config.unet_batching == "split" and config.unet_batching == "stacked"
    assert "turned on split UNet batching" in tight.note and "\n" not in tight.note

    tighter = memory.fit_config(tiny_model, config, free=_room(stacked, 0.3))
    assert tighter.changed == {"unet_batching": "split", "gradient_checkpointing": True} and tighter.fits

    kept = memory.fit_config(tiny_model, config, explicit={"unet_batching"}, free=_room(stacked, 0.5))
    assert kept.config.unet_batching == "stacked" and kept.changed == {"gradient_checkpointing": True}

    hopeless = memory.fit_config(tiny_model, config, free=_room(stacked, 0.01))
    assert not hopeless.fits and "may run out of memory" in hopeless.note
    assert "kept for the system" in hopeless.note  # else "needs 0.2 GB, 0.6 GB is free" reads as if it fitted


def test_out_of_memory_errors_are_recognised():
    assert oom.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert oom.is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"))
    assert oom.is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 123"))
    assert oom.is_out_of_memory(MemoryError())
    assert not oom.is_out_of_memory(RuntimeError("shape mismatch"))


def test_memory_limit_env_caps_free_memory(monkeypatch):
    monkeypatch.setenv(memory.LIMIT_ENV, "0.000001")
    assert memory.free_memory(torch.device("cpu")) == 0
    monkeypatch.delenv(memory.LIMIT_ENV)
    assert memory.free_memory(torch.device("cpu")) > 0


def _squeeze(monkeypatch, fraction: float):
    """Pretend the machine has ``fraction`` of a stacked Lego step's memory free."""
    real = memory.estimate_step_memory

    def fake_free(device):
        stacked = real.__globals__["estimate_step_memory"]
        return None if stacked is None else _room(_stacked_need[0], fraction)

    monkeypatch.setattr(memory, "free_memory", fake_free)


_stacked_need = [0]


@pytest.mark.slow  # several CLI training runs
def test_cli_turns_on_savings_says_so_and_explicit_flags_win(exemplar_folders, tiny_model, tiny_model_dir, tmp_path, capsys, monkeypatch):
    _stacked_need[0] = (memory.estimate_step_memory(tiny_model, TrainConfig.preset("lego", subject="a red square"))
                        - memory_trace.DEVICE_OVERHEAD_BYTES)
    _squeeze(monkeypatch, 0.7)
    out = tmp_path / "a.safetensors"
    assert main(train_args(exemplar_folders, tiny_model_dir, out, "--steps", "1", "--quiet")) == 0
    printed = capsys.readouterr().out
    memory_lines = [line for line in printed.splitlines() if line.startswith("memory:")]
    assert len(memory_lines) == 1 and "turned on split UNet batching" in memory_lines[0]
    assert json.loads((tmp_path / "a.run" / "config.json").read_text())["unet_batching"] == "split"

    out = tmp_path / "b.safetensors"
    assert main(train_args(exemplar_folders, tiny_model_dir, out, "--steps", "1", "--quiet", "--unet-batching", "stacked")) == 0
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "b.run" / "config.json").read_text())
    assert saved["unet_batching"] == "stacked" and saved["gradient_checkpointing"] is True
    assert "turned on gradient checkpointing" in printed

    out = tmp_path / "c.safetensors"
    assert main(train_args(exemplar_folders, tiny_model_dir, out, "--steps", "1", "--quiet", "--memory", "off")) == 0
    assert "memory:" not in capsys.readouterr().out
    assert json.loads((tmp_path / "c.run" / "config.json").read_text())["unet_batching"] == "stacked"


def test_out_of_memory_stops_with_one_line_and_resume_uses_the_setting(exemplar_folders, tiny_model_dir, tmp_path, capsys, monkeypatch):
    from lego_studio.core import training
    from lego_studio.core.concepts import load_concept

    real_loss = training.Trainer._concept_loss
    calls = {"n": 0}

    def failing_loss(self, generator):
        calls["n"] += 1
        if calls["n"] == 2 and self.config.unet_batching == "stacked":
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real_loss(self, generator)

    monkeypatch.setattr(training.Trainer, "_concept_loss", failing_loss)
    out = tmp_path / "oom.safetensors"
    run_dir = tmp_path / "oom.run"
    code = main(train_args(exemplar_folders, tiny_model_dir, out, "--steps", "3", "--memory", "off"))
    err = capsys.readouterr().err
    assert code == 2
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert error_lines == ["error: out of memory on cpu at step 1; resume with split UNet batching "
                           "(--unet-batching split), which needs less memory; nothing is lost"]
    assert "Traceback" not in err
    assert (run_dir / "checkpoints" / "step-000001.safetensors").is_file()

    code = main(["train", "--resume", "--run-dir", str(run_dir), "--device", "cpu", "--quiet", "--memory", "off"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "memory: resuming with split UNet batching" in captured.out
    assert json.loads((run_dir / "config.json").read_text())["unet_batching"] == "split"
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert load_concept(out).vectors.shape[0] == TrainConfig().num_vectors


# ------------------------------------------------------------------------------ estimate


def test_step_clock_estimates_after_the_first_timed_step_and_records_the_figure():
    from lego_studio.core.run_files import TrainEvent

    ticks = iter([0.0, 70.0, 140.0, 211.0])
    clock = estimate.StepClock("k|cpu", "cpu", clock=lambda: next(ticks))
    assert clock.observe(TrainEvent("step", step=1, total=500)) is None  # warm-up step: not timed
    guess = clock.observe(TrainEvent("step", step=2, total=500))
    assert guess.seconds_per_step == 70.0 and guess.steps_left == 498 and guess.long
    assert "about 9 h 41 min" in guess.line()
    assert "fewer steps (51 steps take about 60 min) or a GPU" in guess.warning()
    assert clock.observe(TrainEvent("step", step=3, total=500)) is None  # reported once
    assert estimate.cached_seconds_per_step("k|cpu") == 70.0
    clock.observe(TrainEvent("step", step=4, total=500))
    clock.finish()
    assert estimate.cached_seconds_per_step("k|cpu") == 70.0  # median of 70, 70, 71


def test_an_estimate_from_an_earlier_run_names_the_device_it_was_measured_on():
    # Walkthrough: "1.64 s a step on auto" — the device choice, not the device.
    estimate.record_figure("shapeworld|auto|lego|native|1", 1.64, 20, "cpu")
    guess = estimate.estimate_from_cache("shapeworld|auto|lego|native|1", 300, 300, "auto")
    assert "1.64 s a step on cpu" in guess.line()


def test_format_duration():
    assert estimate.format_duration(42) == "42 s"
    assert estimate.format_duration(600) == "10 min"
    assert estimate.format_duration(35000) == "9 h 43 min"
    assert estimate.format_duration(None) == "—"


@pytest.mark.slow  # several CLI training runs
def test_cli_shows_the_estimate_before_the_run_and_warns_about_a_long_one(exemplar_folders, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "first.safetensors"
    assert main(train_args(exemplar_folders, tiny_model_dir, out, "--steps", "3", "--quiet")) == 0
    first = capsys.readouterr().out.splitlines()
    assert "expected duration: timing the first two steps…" in first
    timed = [line for line in first if line.startswith("expected duration: about")]
    assert len(timed) == 1 and "for 1 steps" in timed[0] and "timed on its first steps" in timed[0]

    # Second run, same model/device/method: the figure is known before the first step.
    out = tmp_path / "second.safetensors"
    assert main(train_args(exemplar_folders, tiny_model_dir, out, "--steps", "3", "--quiet")) == 0
    second = capsys.readouterr().out.splitlines()
    assert second[0].startswith("expected duration: about") and "from an earlier run on this machine" in second[0]

    # A figure that makes the run long: a warning naming the fastest option, before the run.
    key = estimate.figure_key(str(tiny_model_dir), "cpu", "lego", None, 1)
    estimate.record_figure(key, 4000.0, 2, "cpu")
    out = tmp_path / "third.safetensors"
    assert main(train_args(exemplar_folders, tiny_model_dir, out, "--steps", "2", "--quiet")) == 0
    third = capsys.readouterr().out.splitlines()
    assert third[0].startswith("expected duration: about 2 h 13 min")
    assert third[1].startswith("warning: this run is expected to take about 2 h 13 min; the fastest option is fewer steps")
    assert "a GPU" in third[1]


# ------------------------------------------------------------------------------ foreign images


def test_judge_tells_shapeworld_renders_from_other_pictures():
    from lego_studio.shapeworld.recognise import MIN_CONFIDENCE, foreign_images_warning, shapeworld_confidence
    from lego_studio.shapeworld.render import render

    rng = random.Random(3)
    renders = [render(s, c, k, rng, size=size)[0] for s, c, k, size in
               [("circle", "red", "frozen in ice", 64), ("star", "yellow", None, 256), ("square", "blue", "melting", 512)]]
    noise = np.random.default_rng(0)
    photos = [Image.fromarray((noise.random((120, 160, 3)) * 255).astype(np.uint8)) for _ in range(3)]
    assert min(shapeworld_confidence(renders)) >= MIN_CONFIDENCE
    assert max(shapeworld_confidence(photos)) < MIN_CONFIDENCE
    assert foreign_images_warning(renders) is None
    warning = foreign_images_warning(photos)
    assert "only knows Shape World pictures" in warning and "Settings" in warning and "\n" not in warning


def test_cli_warns_when_the_shapeworld_model_gets_foreign_images(exemplar_folders, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert main(train_args(exemplar_folders, "shapeworld", out, "--steps", "1", "--quiet")) == 0
    printed = capsys.readouterr().out
    assert "warning: the built-in Shape World model only knows Shape World pictures" in printed
    assert "--model" in printed
