"""Shared fixtures. No test may touch the network: sockets are blocked for the whole session
(loopback stays allowed for Qt/local IPC)."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DIFFUSERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_real_connect = socket.socket.connect
_real_create_connection = socket.create_connection


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):
        return True  # AF_UNIX path
    host = address[0] if isinstance(address, tuple) and address else ""
    return host in ("localhost", "127.0.0.1", "::1", "") or str(host).startswith("127.")


class NetworkBlocked(RuntimeError):
    pass


def _guarded_connect(self, address):
    if not _is_local(address):
        raise NetworkBlocked(f"test tried to reach the network: {address!r}")
    return _real_connect(self, address)


def _guarded_create_connection(address, *args, **kwargs):
    if not _is_local(address):
        raise NetworkBlocked(f"test tried to reach the network: {address!r}")
    return _real_create_connection(address, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.create_connection = _guarded_create_connection


@pytest.fixture(autouse=True)
def lego_home(tmp_path, monkeypatch):
    """Every test gets its own LEGO_STUDIO_HOME, so user data never leaks between tests."""
    home = tmp_path / "lego-home"
    monkeypatch.setenv("LEGO_STUDIO_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-weight tiny SD-architecture model in diffusers layout (plumbing only)."""
    from lego_studio.core.tiny_models import make_tiny_model

    out = tmp_path_factory.mktemp("tiny-model") / "tiny-sd"
    make_tiny_model(out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """The tiny model loaded on CPU in fp32. Session-scoped: tests must not keep concepts
    installed in it; use ``fresh_tiny_model`` when a test changes the tokenizer/embeddings."""
    from lego_studio.core.models import load_model

    return load_model(tiny_model_dir, device="cpu", precision="fp32")


@pytest.fixture
def fresh_tiny_model(tiny_model_dir):
    from lego_studio.core.models import load_model

    return load_model(tiny_model_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """A random-weight tiny SDXL-architecture model: two text encoders (widths 32 and 48, the
    second with a projection), a text_time UNet."""
    from lego_studio.core.tiny_models import make_tiny_model

    out = tmp_path_factory.mktemp("tiny-sdxl") / "tiny-sdxl"
    make_tiny_model(out, seed=0, family="sdxl")
    return out


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_sdxl_dir):
    """The tiny SDXL model on CPU in fp32 (session-scoped: do not leave concepts installed)."""
    from lego_studio.core.models import load_model

    return load_model(tiny_sdxl_dir, device="cpu", precision="fp32")


@pytest.fixture
def fresh_tiny_sdxl(tiny_sdxl_dir):
    from lego_studio.core.models import load_model

    return load_model(tiny_sdxl_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny-model steps are dominated by thread hand-offs: on a shared 2-core machine one thread
    is ~10x faster than the default. Restored afterwards so other modules are unaffected.
    Modules that train use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def exemplar_folders(tmp_path):
    """(images, masks) folders for the CLI: 3 random 36x36 images, each with a square subject mask,
    and a stray text file the CLI must not pick up."""
    import numpy as np
    from PIL import Image

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray((rng.random((36, 36, 3)) * 255).astype(np.uint8)).save(images / f"ex{i}.png")
        mask = np.zeros((36, 36), np.uint8)
        mask[8:24, 8:24] = 255
        Image.fromarray(mask).save(masks / f"ex{i}.png")
    (images / "notes.txt").write_text("not an image, and not picked up")
    return images, masks
