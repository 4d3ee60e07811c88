"""`lego-studio --self-test`: passes on a working install, fails loudly (and says why) otherwise."""

from __future__ import annotations

import json
import os
import socket

import pytest

from lego_studio import selftest
from lego_studio.core.errors import InputError


def run_collecting(**kwargs) -> tuple[int, list[str]]:
    lines: list[str] = []
    kwargs.setdefault("log", os.devnull)  # failed checks' tracebacks: not into the temp folder
    code = selftest.run_self_test(report=lines.append, device="cpu", **kwargs)
    return code, lines


def status_of(lines: list[str], check: str) -> str | None:
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[1] == check:
            return parts[0]
    return None


@pytest.mark.slow  # the whole self-test
def test_self_test_passes_with_the_tiny_model(tiny_model_dir, lego_home):
    connect_before = socket.socket.connect
    home_before = os.environ["LEGO_STUDIO_HOME"]

    code, lines = run_collecting(model=str(tiny_model_dir), steps=2, generation_steps=2)

    assert code == 0, "\n".join(lines)
    for check in ("qt", "model", "training", "memory", "generation", "grabcut", "network"):
        assert status_of(lines, check) == "PASS", "\n".join(lines)
    assert status_of(lines, "sam") == "SKIP"  # no checkpoint configured in the test home
    assert lines[0].startswith("Lego Studio") and "torch" in lines[1] and lines[2].startswith("device: cpu")
    assert "2 Lego steps on 3 masked 32 px renders" in next(line for line in lines if " training " in line)
    assert "32x32 image, 2 DDIM steps" in next(line for line in lines if " generation " in line)
    assert "a Lego step traced at" in next(line for line in lines if " memory " in line)
    assert lines[-1].startswith("self-test passed")
    # The run borrowed a temporary home and the socket guard, and gave both back.
    assert os.environ["LEGO_STUDIO_HOME"] == home_before
    assert socket.socket.connect is connect_before
    assert not lego_home.exists() or not any(lego_home.rglob("*"))


def test_broken_model_path_fails_with_one_clear_line(tmp_path):
    missing = tmp_path / "no-such-model"

    code, lines = run_collecting(model=str(missing), steps=1)

    assert code == 1
    model_line = next(line for line in lines if line.split()[1:2] == ["model"])
    assert model_line.startswith("FAIL") and str(missing) in model_line and "no such model" in model_line
    assert status_of(lines, "training") == "FAIL" and status_of(lines, "generation") == "FAIL"
    assert status_of(lines, "grabcut") == "PASS"  # later checks still run and report
    assert lines[-1].startswith("self-test FAILED (model, training, memory, generation)")
    assert not any("Traceback" in line for line in lines)  # one line per problem, no stack dump


def test_a_network_attempt_fails_the_self_test(monkeypatch):
    def phones_home(state):
        socket.create_connection(("update.example.com", 443), timeout=1)
        return "connected"

    monkeypatch.setattr(selftest, "CHECKS", [("phone-home", phones_home)])

    code, lines = run_collecting()

    assert code == 1
    assert status_of(lines, "phone-home") == "FAIL"
    network = next(line for line in lines if line.split()[1:2] == ["network"])
    assert network.startswith("FAIL") and "update.example.com" in network


def test_dns_lookups_are_refused_but_loopback_is_not():
    attempts: list[str] = []
    with selftest.network_blocked(attempts):
        with pytest.raises(OSError):
            socket.getaddrinfo("huggingface.co", 443)
        assert socket.getaddrinfo("localhost", 80)  # Qt and local IPC keep working
    assert attempts == ["DNS lookup 'huggingface.co'"]


def test_sam_checkpoint_that_does_not_load_fails_the_sam_check(monkeypatch, tmp_path):
    broken = tmp_path / "sam_vit_b.pth"
    broken.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(selftest, "CHECKS", [("sam", selftest.check_sam)])

    code, lines = run_collecting(sam_checkpoint=str(broken))

    assert code == 1
    sam_line = next(line for line in lines if line.split()[1:2] == ["sam"])
    assert sam_line.startswith("FAIL") and str(broken) in sam_line


def test_configured_sam_checkpoint_is_loaded_and_scored(monkeypatch, tmp_path, lego_home):
    """The SAM path runs end to end (load, embed, predict, IoU against the true mask); a random
    tiny SAM draws a poor mask, so the check fails and says by how much."""
    import torch

    from lego_studio.core.segmentation import SamArchitecture, build_sam

    torch.manual_seed(0)
    tiny = SamArchitecture(
        encoder_embed_dim=16, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
        window_size=4, patch_size=128, image_size=1024, mlp_ratio=2.0, prompt_embed_dim=32, mask_in_chans=8,
        num_multimask_outputs=3, decoder_depth=1, decoder_mlp_dim=32, iou_head_depth=2, iou_head_hidden_dim=16,
    )
    checkpoint = tmp_path / "sam_tiny.pth"
    torch.save(build_sam(tiny).state_dict(), checkpoint)
    # Configured the way a user does it: in settings.json, which the self-test only reads.
    (lego_home / "config").mkdir(parents=True)
    (lego_home / "config" / "settings.json").write_text(json.dumps({"sam_checkpoint": str(checkpoint)}))
    monkeypatch.setattr(selftest, "CHECKS", [("sam", selftest.check_sam)])

    code, lines = run_collecting()

    sam_line = next(line for line in lines if line.split()[1:2] == ["sam"])
    assert "SAM mask IoU" in sam_line and str(checkpoint) in sam_line
    assert sam_line.startswith("FAIL") and code == 1


def test_zero_steps_is_refused():
    with pytest.raises(InputError, match="at least 1"):
        selftest.run_self_test(report=lambda line: None, steps=0)


def test_cli_self_test_flag_runs_the_selftest_command(monkeypatch, capsys):
    from lego_studio import cli

    calls = []

    def fake_run_self_test(**kwargs):
        calls.append(kwargs)
        return 1

    monkeypatch.setattr(selftest, "run_self_test", fake_run_self_test)
    assert cli.main(["--self-test"]) == 1
    assert calls[0]["model"] == "shapeworld" and calls[0]["steps"] == 5 and calls[0]["device"] == "auto"
    assert cli.main(["selftest", "--model", "/models/mine", "--steps", "3", "--device", "cpu"]) == 1
    assert calls[1]["model"] == "/models/mine" and calls[1]["steps"] == 3 and calls[1]["device"] == "cpu"


def test_process_start_clock_counts_from_process_creation():
    elapsed = selftest.seconds_since_process_start()
    # This test process has been running for a while (pytest start-up) and not for a day.
    assert 0.05 < elapsed < 24 * 3600


# --------------------------------------------------------------- chained (lazy import) errors


def _lazy_import_failure() -> RuntimeError:
    """What diffusers raises when a lazily imported module fails: a RuntimeError whose message
    says "look up" and whose real error is chained (here: a data file missing from a bundle)."""
    def import_kernels():
        try:
            open("/nonexistent/kernels/_internals/python_depends.json")
        except FileNotFoundError:
            raise FileNotFoundError("Cannot load dependency data, is `kernels` correctly installed?")

    try:
        try:
            import_kernels()
        except Exception as exc:
            raise RuntimeError(
                "Failed to import diffusers.models.autoencoders.autoencoder_kl because of the following error "
                "(look up to see its traceback):\nCannot load dependency data, is `kernels` correctly installed?"
            ) from exc
    except RuntimeError as exc:
        return exc


def test_describe_exception_names_the_innermost_error_in_one_line():
    from lego_studio.core.errors import describe_exception, innermost_cause

    exc = _lazy_import_failure()
    line = describe_exception(exc)
    assert "\n" not in line and "look up" not in line
    assert line.startswith("Failed to import diffusers.models.autoencoders.autoencoder_kl: FileNotFoundError in ")
    assert "python_depends.json" in line
    assert isinstance(innermost_cause(exc), FileNotFoundError) and innermost_cause(exc).errno == 2
    # A plain error is its first line, as before.
    assert describe_exception(ValueError("bad value\nmore")) == "bad value"


def test_a_chained_import_error_fails_the_check_with_its_cause_and_logs_the_chain(monkeypatch, tmp_path):
    def broken_import(state):
        raise _lazy_import_failure()

    monkeypatch.setattr(selftest, "CHECKS", [("model", broken_import)])
    log = tmp_path / "selftest.log"
    code, lines = run_collecting(log=str(log))

    assert code == 1
    line = next(line for line in lines if line.startswith("FAIL  model"))
    assert "FileNotFoundError" in line and "python_depends.json" in line and "look up" not in line
    assert lines[-1] == f"full tracebacks: {log}"
    text = log.read_text()
    assert "=== model" in text and "Cannot load dependency data" in text and "python_depends.json" in text
    assert "The above exception was the direct cause" in text


def test_a_model_that_fails_to_import_names_the_cause(monkeypatch, tiny_model_dir):
    from lego_studio.core import models
    from lego_studio.core.errors import ModelError

    def broken(*args, **kwargs):
        raise _lazy_import_failure()

    monkeypatch.setattr(models, "_load_folder", broken)
    with pytest.raises(ModelError) as caught:
        models.load_model(tiny_model_dir, device="cpu")
    message = str(caught.value)
    assert "cannot load the model (Failed to import diffusers.models.autoencoders.autoencoder_kl: " in message
    assert "FileNotFoundError" in message and "python_depends.json" in message and "look up" not in message
