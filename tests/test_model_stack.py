"""The model stack (torch, diffusers, transformers) imports once, thread-safely, quietly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_RACE = textwrap.dedent(
    """
    import sys, threading
    from lego_studio.core.model_stack import import_model_stack
    from lego_studio.core.models import load_model
    from lego_studio.core.tokenizer import load_tokenizer

    spec = sys.argv[1]
    barrier = threading.Barrier(8)
    errors = []

    def run(entry):
        barrier.wait()
        try:
            entry()
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")

    entries = [import_model_stack, import_model_stack, load_tokenizer, load_tokenizer] + [
        lambda: load_model(spec, device="cpu", precision="fp32")] * 4
    threads = [threading.Thread(target=run, args=(entry,)) for entry in entries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("ERRORS", errors)
    sys.exit(1 if errors else 0)
    """
)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.mark.slow  # a fresh Python process
def test_loading_from_several_threads_at_once_in_a_fresh_process(tiny_model_dir):
    # The warm-up at start-up (import_model_stack), token counting and the first Start's model
    # load at once. The first Start ~1 s after the window appeared raced the start-up warm-up: two threads
    # resolving diffusers' lazy names at once -> "cannot import name 'AutoencoderKL'".
    proc = subprocess.run([sys.executable, "-c", _RACE, str(tiny_model_dir)], capture_output=True, text=True,
                          env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.slow  # a fresh Python process
def test_loading_a_model_prints_nothing(tiny_model_dir):
    code = f"""
from lego_studio.core.models import load_model
load_model({str(tiny_model_dir)!r}, device="cpu", precision="fp32")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "" and "Loading" not in proc.stderr and "float32" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow  # a fresh Python process
def test_import_model_stack_quiets_the_libraries():
    code = textwrap.dedent(
        """
        from lego_studio.core.model_stack import import_model_stack
        stack = import_model_stack()
        assert import_model_stack() is stack
        assert stack.AutoencoderKL.__name__ == "AutoencoderKL"
        import logging
        print(stack.diffusers.utils.logging.get_verbosity() == logging.ERROR,
              stack.transformers.utils.logging.get_verbosity() == logging.ERROR)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True"]


def test_the_judge_built_while_a_model_loads_gets_real_weights():
    """diffusers builds a model inside accelerate's empty-weights context, which patches torch's
    module construction for every thread. Seen in the suite: the Shape World judge, loaded for the
    foreign-images check while a run loaded its model, got ``meta`` parameters and its weights were
    silently not loaded. Module builds share the model-load lock, so it cannot happen."""
    import threading
    import time

    from accelerate import init_empty_weights

    from lego_studio.core.model_stack import MODEL_LOAD_LOCK
    from lego_studio.shapeworld.judge import load_judge

    loading = threading.Event()
    done = threading.Event()

    def a_model_load():  # what diffusers' from_pretrained does, under the lock as core/models.py takes it
        with MODEL_LOAD_LOCK:
            with init_empty_weights():
                loading.set()
                time.sleep(1.0)
        done.set()

    loader = threading.Thread(target=a_model_load)
    loader.start()
    assert loading.wait(10)
    judge = load_judge()  # meanwhile, in this thread
    loader.join()
    assert done.is_set()
    assert {p.device.type for p in judge.net.parameters()} == {"cpu"}
