"""Shared fixtures. No test may touch the network: sockets are blocked for the whole session
(loopback stays allowed for Qt/local IPC)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

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


def write_exemplars(folder, n: int = 2, size=(32, 32), box=(8, 24, 8, 24), colour=(200, 30, 30), seed: int = 0,
                    prefix: str = "img", mask_folder=None, mask_prefix: str = "mask"):
    """``n`` random ``size`` (height, width) images in ``folder``, the subject a ``colour`` square
    at ``box`` (top, bottom, left, right; colour None leaves the noise), and its masks (255 =
    subject) in ``mask_folder`` (default: ``folder``). Returns (images, masks); masks is None
    without a box. Deterministic for a seed."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    mask_folder = Path(mask_folder) if mask_folder is not None else folder
    folder.mkdir(parents=True, exist_ok=True)
    mask_folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(n):
        pixels = (rng.random((*size, 3)) * 255).astype(np.uint8)
        if box is not None and colour is not None:
            pixels[box[0]:box[1], box[2]:box[3]] = colour
        images.append(folder / f"{prefix}{i}.png")
        Image.fromarray(pixels).save(images[-1])
        if box is not None:
            mask = np.zeros(size, np.uint8)
            mask[box[0]:box[1], box[2]:box[3]] = 255
            masks.append(mask_folder / f"{mask_prefix}{i}.png")
            Image.fromarray(mask).save(masks[-1])
    return images, (masks if box is not None else None)


@pytest.fixture(scope="session")
def make_exemplars():
    """:func:`write_exemplars`, for fixtures of any scope."""
    return write_exemplars


@pytest.fixture
def exemplar_folders(tmp_path):
    """(images, masks) folders for the CLI: 3 random 36x36 images, each with a square subject mask,
    and a stray text file the CLI must not pick up."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_exemplars(images, n=3, size=(36, 36), colour=None, seed=1, prefix="ex", mask_folder=masks, mask_prefix="ex")
    (images / "notes.txt").write_text("not an image, and not picked up")
    return images, masks


@pytest.fixture
def open_window(qtbot):
    """``open_window(settings=None, size=None)``: the app's main window, shown (on ``settings``,
    default the fresh ones of this test's LEGO_STUDIO_HOME); its workers stop after the test.
    File work runs off the UI thread, so the window has three test helpers: ``settle()`` waits
    until its file work is done, ``create_project_and_wait(name, sources)`` and
    ``open_project_and_wait(folder)`` return the project once it is open and shown."""
    from lego_studio.core.settings import Settings
    from lego_studio.ui.context import AppContext
    from lego_studio.ui.main_window import MainWindow

    opened = []

    def open_(settings=None, size=None):
        win = MainWindow(AppContext(settings if settings is not None else Settings.load()))
        qtbot.addWidget(win)
        if size is not None:
            win.resize(*size)
        win.show()
        opened.append(win)
        win.settle = lambda timeout=30000: settle(qtbot, win, timeout)
        win.create_project_and_wait = lambda name, sources=None, timeout=60000: _opened(
            qtbot, win, lambda: win.projects_view.create_project(name, list(sources or [])), timeout)
        win.open_project_and_wait = lambda folder, timeout=30000: _opened(
            qtbot, win, lambda: win.projects_view.open_project(folder), timeout)
        return win

    yield open_
    for win in opened:
        win.shutdown_workers()


def settle(qtbot, window, timeout=30000):
    """Wait until ``window``'s file work is done: the writes queued in the context's writer, a
    project being created, and the readings the pages show (badges, thumbnails, the Masks page's
    image, the runs list, the time figures, a Start in progress)."""
    projects, masks, training = window.projects_view, window.masks_view, window.training_view

    def idle():
        return (window.context.writes.pending == 0 and not projects.runner.busy and not projects.images_loading
                and not masks.loading and not training.runs_loading and not training.estimate_loading
                and not training._starting)

    qtbot.waitUntil(idle, timeout=timeout)


def _opened(qtbot, window, act, timeout):
    """Do ``act`` (create or open a project), wait for the project it opens, settle; the project."""
    with qtbot.waitSignal(window.context.project_changed, timeout=timeout) as blocker:
        act()
    settle(qtbot, window, timeout)
    return blocker.args[0]


@pytest.fixture
def yes_to_questions(monkeypatch):
    """Every question box answers Yes."""
    from PySide6.QtWidgets import QMessageBox

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)


@pytest.fixture
def window(open_window, yes_to_questions, warnings):
    """The main window on fresh settings; questions answered Yes, warnings collected
    (``window.warnings``, the same list as the ``warnings`` fixture)."""
    win = open_window()
    win.warnings = warnings
    return win


@pytest.fixture
def warnings(monkeypatch):
    """Warning boxes collected instead of shown (their texts)."""
    from PySide6.QtWidgets import QMessageBox

    shown = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text, *a: shown.append(text))
    return shown


# --------------------------------------------------------------------- file work on the UI thread

_UI_IO = {"paths": None, "seen": []}
# Audit events of file work (the path is the first argument), and the os functions without an
# audit event (stat, access, fsync) that the recorder wraps while it records.
_AUDITED = ("open", "os.listdir", "os.scandir", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.chmod",
            "os.utime", "os.truncate", "shutil.copyfile", "shutil.copytree", "shutil.rmtree", "shutil.move",
            "glob.glob")
_WRAPPED = ("stat", "lstat", "access", "fsync")


def _ui_io_note(event, path) -> None:
    import threading

    if _UI_IO["paths"] is None or threading.current_thread() is not threading.main_thread():
        return
    path = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    if any(part in path for part in _UI_IO["paths"]):
        _UI_IO["seen"].append((event, path))


def _ui_io_hook(event, args):
    # Inert unless a test is recording (an audit hook cannot be removed once added).
    if _UI_IO["paths"] is None or event not in _AUDITED or not args:
        return
    _ui_io_note(event, args[0])


def _recording(name, real):
    def wrapper(target, *args, **kwargs):
        if _UI_IO["paths"] is not None:
            where = target
            if name == "fsync":
                try:
                    where = os.readlink(f"/proc/self/fd/{target if isinstance(target, int) else target.fileno()}")
                except (OSError, AttributeError):
                    where = str(target)
            _ui_io_note(f"os.{name}", where)
        return real(target, *args, **kwargs)

    return wrapper


@pytest.fixture
def ui_thread_file_work(monkeypatch):
    """``record(*path_parts)``: from then on, the file operations of the UI (main) thread on paths
    containing any of ``path_parts`` are listed in the returned list as ``(operation, path)``:
    opening, listing, creating, renaming, removing and copying files (audit events), and stat,
    access and fsync (wrapped while the test runs)."""
    import sys

    if not getattr(_ui_io_hook, "installed", False):
        sys.addaudithook(_ui_io_hook)
        _ui_io_hook.installed = True
    for name in _WRAPPED:
        monkeypatch.setattr(os, name, _recording(name, getattr(os, name)))

    def record(*parts):
        _UI_IO["seen"] = []
        _UI_IO["paths"] = parts
        return _UI_IO["seen"]

    yield record
    _UI_IO["paths"] = None
