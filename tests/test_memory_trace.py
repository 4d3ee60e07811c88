"""The traced memory of a training step (core/memory_trace.py): a step run on a meta-device twin
counts what the same step really allocates, orders the memory settings as they really behave, and
leaves the loaded model as it was. (Tiny random models: this proves the accounting, not figures
for real models; those are in docs/PERFORMANCE.md.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lego_studio.core import memory, memory_trace
from lego_studio.core.train_config import TrainConfig
from lego_studio.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LEGO = dict(subject="a red square", positive_words=["frozen"], steps=2, checkpoint_every=0, preview_every=0)


def lego(**changes):
    return TrainConfig.preset("lego", **{**LEGO, **changes})


@pytest.mark.parametrize("which", ["fresh_tiny_model", "fresh_tiny_sdxl"])
def test_a_traced_step_counts_what_the_real_step_allocates(which, request):
    model = request.getfixturevalue(which)
    configs = [TrainConfig.preset("ti", subject="a red square", steps=2), lego(),
               lego(unet_batching="split", gradient_checkpointing=True)]
    for config in configs:
        real = memory_trace.count_step(model, config)  # the step itself, on the CPU, with data
        traced = memory_trace.trace_step(model, config)  # the same step on the meta twin
        assert real > 0
        assert abs(traced - real) <= 0.05 * real, (config.method, config.unet_batching, traced, real)


def test_tracing_leaves_the_model_as_it_was_and_it_still_trains(fresh_tiny_model, exemplar_folders, tmp_path):
    model = fresh_tiny_model
    before = {name: tensor.clone() for name, tensor in model.unet.state_dict().items()}
    memory_trace.trace_step(model, lego(gradient_checkpointing=True))
    memory_trace.trace_latent_encoding(model, 32)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.unet.state_dict().items())
    assert not model.unet.is_gradient_checkpointing
    assert model.noise_scheduler.alphas_cumprod.device.type == "cpu"  # the twin has its own scheduler
    assert all(p.device.type == "cpu" for module in model.modules for p in module.parameters())
    images, masks = exemplar_folders
    image_files, mask_files = sorted(images.glob("*.png")), sorted(masks.glob("*.png"))
    concept = Trainer(model, lego(), image_files, mask_files, tmp_path / "run").run()
    assert torch.isfinite(concept.vectors).all()


@pytest.mark.slow  # traces every memory setting
def test_the_traced_need_orders_the_memory_settings(tiny_model):
    need = {name: memory_trace.trace_step(tiny_model, config) for name, config in {
        "ti": TrainConfig.preset("ti", subject="a red square", steps=2),
        "stacked": lego(), "split": lego(unet_batching="split"),
        "stacked+ckpt": lego(gradient_checkpointing=True),
        "split+ckpt": lego(unet_batching="split", gradient_checkpointing=True),
        "batch 2": lego(batch_size=2), "64 px": lego(resolution=64)}.items()}
    assert need["ti"] < need["split"] < need["stacked"]
    assert need["split+ckpt"] < need["split"] and need["stacked+ckpt"] < need["stacked"]
    assert need["batch 2"] > 1.5 * need["stacked"]
    assert need["64 px"] > 2 * need["stacked"]  # 4x the latent pixels
    assert not memory.planning_takes_a_while(tiny_model)  # traced in well under a second: nothing to say


def test_the_planner_falls_back_to_the_formula_when_a_model_cannot_be_traced(tiny_model, monkeypatch):
    config = lego()

    def untraceable(model, config):
        raise RuntimeError("this architecture has no meta implementation")

    monkeypatch.setattr(memory_trace, "trace_step", untraceable)
    assert memory.estimate_step_memory(tiny_model, config) == memory.formula_step_memory(tiny_model, config)


@pytest.mark.slow  # the memory benchmark script
def test_the_memory_benchmark_traces_the_sdxl_matrix(tmp_path):
    # The same script traces real SDXL at 1024 px (docs/PERFORMANCE.md); here a tiny SDXL.
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "memory.json"
    result = subprocess.run([sys.executable, "benchmarks/memory_trace.py", "--tiny-sdxl", "--precision", "fp32",
                             "--json", str(out)], cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    rows = figures["results"]
    assert sorted(rows) == sorted(["ti", "lego (stacked)", "lego (split)", "ti + checkpointing",
                                   "lego (stacked) + checkpointing", "lego (split) + checkpointing"])
    assert rows["lego (split) + checkpointing"]["step_peak_bytes"] < rows["lego (stacked)"]["step_peak_bytes"]
    assert set(figures["weights_bytes"]) == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert "| lego (split) + checkpointing |" in result.stdout


@pytest.mark.slow  # builds real SDXL on meta
def test_a_real_sdxl_config_is_traced_in_seconds_on_the_meta_device():
    # The planner traces the user's own model before a run: the real SDXL shapes (2.57 B UNet)
    # must be traceable without allocating them.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from speed_lego_vs_ti import build_sdxl_shaped

    model = build_sdxl_shaped("meta", torch.float16)
    assert memory.planning_takes_a_while(model)  # so the CLI and Training say "checking how much memory…"
    need = memory_trace.trace_step(model, lego(resolution=1024, unet_batching="split", gradient_checkpointing=True))
    assert 0.5 * 2**30 < need < 4 * 2**30  # 1.40 GiB when measured for docs/PERFORMANCE.md
