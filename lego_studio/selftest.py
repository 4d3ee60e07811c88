"""``lego-studio --self-test``: prove that this install (or packaged bundle) works, offline.

It loads a model (the shipped Shape World model unless told otherwise), trains a few steps of a
Lego concept on Shape World renders with their true masks, generates an image with the concept,
runs the click-to-mask assist (GrabCut, and Segment Anything when a checkpoint is configured)
against a render's true mask, renders the app icon through Qt, and checks that nothing tried to
reach the network. Every check prints one PASS/FAIL/SKIP line with its time; the exit code is 0
only when none failed.

The run uses a temporary ``LEGO_STUDIO_HOME`` (user data is never read or written, apart from
reading the SAM checkpoint path from the user's settings) and blocks non-local sockets while it
runs, so a bundle that would phone home fails here instead of at a user's desk.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lego_studio import __version__
from lego_studio.core.errors import InputError, LegoError, describe_exception, exception_chain_text, innermost_cause

# The environment a bundle runs in; the runtime hook sets the same for every start.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DIFFUSERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DO_NOT_TRACK": "1",
    # transformers imports `kernels` (compiled kernels downloaded from the Hub) on every model
    # load; the app never uses them, and this says so before anything could try.
    "USE_HUB_KERNELS": "NO",
}

SELFTEST_CONCEPT = "frozen in ice"
SELFTEST_SUBJECT = ("circle", "red")
SEGMENTATION_SIZE = 128  # GrabCut needs a few pixels of border; 128 px renders give a clean edge
MIN_MASK_IOU = 0.85  # measured 0.94-0.98 on plain Shape World renders of every shape

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


class SkipCheck(Exception):
    """A check that does not apply here (e.g. no SAM checkpoint configured)."""


@dataclass
class CheckResult:
    name: str
    status: str
    seconds: float
    detail: str


@dataclass
class SelfTestState:
    """What the checks hand on to each other (the model, the trained concept)."""

    work_dir: Path
    model_spec: str
    device: str
    steps: int
    sam_checkpoint: str | None
    generation_steps: int = 10
    model: object = None
    concept: object = None
    exemplars: list = field(default_factory=list)


# ------------------------------------------------------------------------------ helpers


def seconds_since_process_start() -> float:
    """Wall time since this process was created (Linux: from /proc, so it includes the
    interpreter's and a bundle's bootloader start-up); elsewhere since Python started timing."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            # Field 22 is the start time in clock ticks after boot; the command name (field 2)
            # may contain spaces, so split after its closing parenthesis.
            fields_after_name = handle.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields_after_name[19])
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter()


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):
        return True  # AF_UNIX path: local IPC (Qt, multiprocessing)
    host = address[0] if isinstance(address, tuple) and address else ""
    if host is None:
        return True  # getaddrinfo(None, port): the local wildcard address
    host = host.decode() if isinstance(host, bytes) else str(host)
    return host in ("localhost", "::1", "") or host.startswith("127.")


@contextlib.contextmanager
def network_blocked(attempts: list[str]):
    """Refuse every non-local connection and DNS lookup while inside; each try is appended to
    ``attempts``. Libraries see an ``OSError``, as on a machine without a network."""
    originals = {
        "connect": socket.socket.connect,
        "connect_ex": socket.socket.connect_ex,
        "create_connection": socket.create_connection,
        "getaddrinfo": socket.getaddrinfo,
    }

    def refuse(what: str):
        attempts.append(what)
        return OSError(f"Lego Studio self-test: network access refused ({what})")

    def connect(sock, address):
        if not _is_local(address):
            raise refuse(f"connect {address!r}")
        return originals["connect"](sock, address)

    def connect_ex(sock, address):
        if not _is_local(address):
            raise refuse(f"connect {address!r}")
        return originals["connect_ex"](sock, address)

    def create_connection(address, *args, **kwargs):
        if not _is_local(address):
            raise refuse(f"connect {address!r}")
        return originals["create_connection"](address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local((host,)):
            raise refuse(f"DNS lookup {host!r}")
        return originals["getaddrinfo"](host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.create_connection = create_connection
    socket.getaddrinfo = getaddrinfo
    try:
        yield attempts
    finally:
        socket.socket.connect = originals["connect"]
        socket.socket.connect_ex = originals["connect_ex"]
        socket.create_connection = originals["create_connection"]
        socket.getaddrinfo = originals["getaddrinfo"]


@contextlib.contextmanager
def temporary_environment(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def configured_sam_checkpoint() -> str | None:
    """The SAM checkpoint in the user's settings, read without going through ``Settings.load``
    (which repairs a broken file: the self-test must not change user data)."""
    from lego_studio.core.paths import APP_NAME, HOME_ENV
    from lego_studio.core.settings import SETTINGS_FILE

    # paths.config_dir() would create the folder; only look.
    if os.environ.get(HOME_ENV):
        folder = Path(os.environ[HOME_ENV]).expanduser() / "config"
    else:
        import platformdirs

        folder = Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))
    try:
        data = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("sam_checkpoint") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value.strip() else None


def _mask_iou(predicted, truth) -> float:
    union = (predicted | truth).sum()
    return float((predicted & truth).sum() / union) if union else 0.0


def _subject_box(truth, margin: float):
    import numpy as np

    ys, xs = np.nonzero(truth)
    height, width = truth.shape
    return (
        float(max(0, xs.min() - margin)),
        float(max(0, ys.min() - margin)),
        float(min(width - 1, xs.max() + margin)),
        float(min(height - 1, ys.max() + margin)),
    )


def _segmentation_case():
    """A plain Shape World render (the subject alone), its true mask, a box and a click."""
    import numpy as np

    from lego_studio.shapeworld.render import render

    shape, colour = SELFTEST_SUBJECT
    image, mask, _ = render(shape, colour, None, random.Random("lego-selftest/segmentation"), size=SEGMENTATION_SIZE)
    rgb = np.asarray(image)
    truth = mask > 127
    centre_y, centre_x = np.argwhere(truth).mean(axis=0)
    box = _subject_box(truth, margin=0.15 * SEGMENTATION_SIZE)
    return rgb, truth, box, [(float(centre_x), float(centre_y), 1)]


# ------------------------------------------------------------------------------- checks


def check_qt(state: SelfTestState) -> str:
    """Qt starts (offscreen when there is no display) and renders the app icon from its SVG,
    which needs the bundled platform and image-format plugins."""
    if not os.environ.get("QT_QPA_PLATFORM") and sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    import PySide6
    from PySide6.QtGui import QImage
    from PySide6.QtWidgets import QApplication

    from lego_studio.core.paths import resource

    # A QApplication (not a bare QGuiApplication), so that a GUI started later in the same process
    # can reuse it.
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "lego-studio"])
    icon_path = resource("icons", "app.svg")
    image = QImage(str(icon_path))
    if image.isNull():
        raise LegoError(f"{icon_path}: Qt cannot render the app icon (missing file or SVG image-format plugin)")
    return f"PySide6 {PySide6.__version__}, platform {app.platformName()}, icon {image.width()}x{image.height()}"


def check_model(state: SelfTestState) -> str:
    from lego_studio.core.models import load_model, parameter_counts

    state.model = load_model(state.model_spec, device=state.device)
    model = state.model
    total = sum(parameter_counts(model).values())
    return (
        f"{state.model_spec} (family {model.family.name}, {model.family.resolution} px, "
        f"{total / 1e6:.1f} M parameters) on {model.device} {str(model.dtype).replace('torch.', '')}"
    )


def check_training(state: SelfTestState) -> str:
    import math

    from lego_studio.core.concepts import load_concept
    from lego_studio.core.train_config import TrainConfig
    from lego_studio.core.training import Trainer
    from lego_studio.shapeworld.render import render
    from lego_studio.shapeworld.world import subject_phrase

    if state.model is None:
        raise LegoError("no model loaded (see the model check)")
    model = state.model
    shape, colour = SELFTEST_SUBJECT
    rng = random.Random("lego-selftest/exemplars")
    size = int(model.family.resolution)
    state.exemplars = [render(shape, colour, SELFTEST_CONCEPT, rng, size=size)[:2] for _ in range(3)]
    config = TrainConfig.preset(
        "lego",
        name="selftest",
        num_vectors=2,
        steps=state.steps,
        subject=subject_phrase(shape, colour),
        checkpoint_every=0,
        preview_every=0,
    )
    losses: list[float] = []

    def on_event(event) -> None:
        if event.kind == "step" and "total" in event.losses:
            losses.append(float(event.losses["total"]))

    run_dir = state.work_dir / "run"
    trainer = Trainer(
        model,
        config,
        [image for image, _ in state.exemplars],
        [mask for _, mask in state.exemplars],
        run_dir=run_dir,
        on_event=on_event,
    )
    concept = trainer.run()
    if len(losses) != state.steps:
        raise LegoError(f"expected {state.steps} training steps, the trainer reported {len(losses)}")
    if not all(math.isfinite(value) for value in losses):
        raise LegoError(f"non-finite training loss: {losses}")
    if not concept.vectors.isfinite().all():
        raise LegoError("the trained concept has non-finite vectors")
    saved = load_concept(trainer.concept_path)
    if tuple(saved.vectors.shape) != (config.num_vectors, model.text_encoder.config.hidden_size):
        raise LegoError(f"{trainer.concept_path}: concept has shape {tuple(saved.vectors.shape)}")
    state.concept = saved
    return (
        f"{state.steps} Lego steps on {len(state.exemplars)} masked {size} px renders, "
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f}, concept {saved.placeholder} x{saved.num_vectors}"
    )


def check_memory(state: SelfTestState) -> str:
    """The memory planner traces a step on a meta-device twin of the model (core/memory_trace.py).
    It falls back to a rough formula when tracing fails, so only a check like this one notices a
    build that lost the pieces tracing needs."""
    import dataclasses

    from lego_studio.core import memory_trace
    from lego_studio.core.memory import format_bytes, free_memory
    from lego_studio.core.train_config import TrainConfig

    if state.model is None:
        raise LegoError("no model loaded (see the model check)")
    config = TrainConfig.preset("lego", subject="a red square", steps=1, checkpoint_every=0, preview_every=0)
    stacked = memory_trace.trace_step(state.model, config)
    saving = memory_trace.trace_step(state.model, dataclasses.replace(
        config, unet_batching="split", gradient_checkpointing=True))
    if not 0 < saving < stacked:
        raise LegoError(f"traced step memory does not add up: {stacked} bytes, {saving} with every saving on")
    free = free_memory(state.model.device)
    free_text = f"{format_bytes(free)} free" if free is not None else "free memory unknown"
    return (f"a Lego step traced at {stacked / 2**20:.0f} MiB ({saving / 2**20:.0f} MiB with split batching and "
            f"checkpointing); {free_text} on {state.model.device.type}")


def check_generation(state: SelfTestState) -> str:
    import numpy as np

    from lego_studio.core.generation import GenerationRequest, generate

    if state.model is None or state.concept is None:
        raise LegoError("no trained concept to generate with (see the checks above)")
    request = GenerationRequest(
        prompt=f"a blue square {state.concept.placeholder}", seed=0, steps=state.generation_steps, guidance=5.0
    )
    image = generate(state.model, request, [state.concept])
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    expected = int(state.model.family.resolution)
    if image.size != (expected, expected):
        raise LegoError(f"generated image is {image.size[0]}x{image.size[1]}, expected {expected}x{expected}")
    if not np.isfinite(pixels).all() or pixels.std() < 1.0:
        raise LegoError("generated image is blank (a single colour)")
    out = state.work_dir / "generated.png"
    image.save(out)
    return f"{image.size[0]}x{image.size[1]} image, {request.steps} DDIM steps, pixel std {pixels.std():.1f}"


def check_grabcut(state: SelfTestState) -> str:
    from lego_studio.core.segmentation import GrabCutSegmenter

    rgb, truth, box, clicks = _segmentation_case()
    segmenter = GrabCutSegmenter()
    segmenter.set_image(rgb)
    predicted = segmenter.predict(points=clicks, box=box)[0][0]
    iou = _mask_iou(predicted, truth)
    if iou < MIN_MASK_IOU:
        raise LegoError(f"GrabCut mask IoU {iou:.2f} against the render's true mask is below {MIN_MASK_IOU}")
    return f"mask IoU {iou:.2f} (>= {MIN_MASK_IOU}) on a {SEGMENTATION_SIZE} px render"


def check_sam(state: SelfTestState) -> str:
    from lego_studio.core.segmentation import SamSegmenter

    if not state.sam_checkpoint:
        raise SkipCheck("no Segment Anything checkpoint configured")
    rgb, truth, box, clicks = _segmentation_case()
    segmenter = SamSegmenter(state.sam_checkpoint, device=state.device)
    segmenter.set_image(rgb)
    predicted = segmenter.predict(points=clicks, box=box)[0][0]
    iou = _mask_iou(predicted, truth)
    if iou < MIN_MASK_IOU:
        raise LegoError(f"{state.sam_checkpoint}: SAM mask IoU {iou:.2f} against the true mask is below {MIN_MASK_IOU}")
    return f"{segmenter.model_type} mask IoU {iou:.2f} (>= {MIN_MASK_IOU})"


CHECKS: list[tuple[str, Callable[[SelfTestState], str]]] = [
    ("qt", check_qt),
    ("model", check_model),
    ("training", check_training),
    ("memory", check_memory),
    ("generation", check_generation),
    ("grabcut", check_grabcut),
    ("sam", check_sam),
]


# ---------------------------------------------------------------------------------- run


def _environment_lines(device: str) -> list[str]:
    import torch

    versions = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    from importlib import metadata

    for name, distribution in (
        ("diffusers", "diffusers"),
        ("transformers", "transformers"),
        ("segment_anything", "segment-anything"),
        ("cv2", "opencv-python-headless"),
        ("PySide6", "PySide6"),
    ):
        try:
            module = __import__(name)
        except Exception as exc:  # a missing package is reported by the check that needs it
            versions.append(f"{name} missing ({type(exc).__name__})")
            continue
        version = getattr(module, "__version__", None)
        if version is None:  # segment_anything has no __version__; ask its installed metadata
            try:
                version = metadata.version(distribution)
            except metadata.PackageNotFoundError:
                version = "?"
        versions.append(f"{name} {version}")
    from lego_studio.core.devices import pick_device

    try:
        picked = str(pick_device(device))
    except LegoError as exc:
        picked = f"unavailable ({exc})"
    accelerators = f"cuda {'yes' if torch.cuda.is_available() else 'no'}"
    if torch.cuda.is_available():
        accelerators += f" ({torch.cuda.get_device_name(0)})"
    from lego_studio.core.paths import resources_dir

    if getattr(sys, "frozen", False):
        frozen = "bundle"
    elif Path(__file__).resolve().parent / "resources" == resources_dir():
        frozen = "installed package"
    else:
        frozen = "source"
    return [
        f"Lego Studio {__version__} self-test ({frozen}, {platform.system()} {platform.machine()})",
        "versions: " + ", ".join(versions),
        f"device: {picked} (asked {device}; {accelerators}; {torch.get_num_threads()} CPU threads)",
    ]


def _failure_line(exc: BaseException) -> str:
    """One line: a LegoError's message (which names its cause), else the error and, when it wraps
    others (a failed lazy import), the innermost one with the module that raised it."""
    if isinstance(exc, LegoError):
        return str(exc)
    if innermost_cause(exc) is not exc:
        return describe_exception(exc)
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"


def _write_failure_log(failures: list[tuple[str, BaseException]], path: str | None) -> Path | None:
    """Write the full traceback (every chained exception) of each failed check; return the file,
    or None when it cannot be written. ``path`` None: a new file in the temp folder."""
    try:
        if path is None:
            handle, name = tempfile.mkstemp(prefix="lego-studio-selftest-", suffix=".log")
            os.close(handle)
            path = name
        with open(path, "w", encoding="utf-8") as log:
            log.write(f"Lego Studio {__version__} self-test, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            for name, exc in failures:
                log.write(f"\n=== {name}\n{exception_chain_text(exc)}")
        return Path(path)
    except OSError:
        return None


def run_self_test(
    report: Callable[[str], object] = print,
    model: str = "shapeworld",
    steps: int = 5,
    device: str = "auto",
    sam_checkpoint: str | None = None,
    verbose: bool = False,
    generation_steps: int = 10,
    log: str | None = None,
) -> int:
    """Run every check, ``report`` one line each; 0 when none failed, 1 otherwise.

    ``sam_checkpoint`` None: the one in the user's settings (if any) is tested. When a check fails
    with an exception, its full traceback (every chained exception) goes to ``log`` (default: a
    new ``lego-studio-selftest-*.log`` in the temp folder), and the last line names that file."""
    if steps < 1 or generation_steps < 1:
        raise InputError(f"self-test steps must be at least 1 (got {steps} training, {generation_steps} generation)")
    started = time.perf_counter()
    if sam_checkpoint is None:
        sam_checkpoint = configured_sam_checkpoint()
    results: list[CheckResult] = []
    failures: list[tuple[str, BaseException]] = []
    attempts: list[str] = []
    with contextlib.ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lego-selftest-")))
        stack.enter_context(temporary_environment({**OFFLINE_ENVIRONMENT, "LEGO_STUDIO_HOME": str(work_dir / "home")}))
        stack.enter_context(network_blocked(attempts))
        try:
            for line in _environment_lines(device):
                report(line)
        except Exception as exc:  # torch itself does not import: every check below will say so too
            failures.append(("imports", exc))
            results.append(CheckResult("imports", FAIL, 0.0, _failure_line(exc)))
            report(f"{FAIL}  {'imports':<10} {'':>7}    {_failure_line(exc)}")
        state = SelfTestState(work_dir, str(model), device, int(steps), sam_checkpoint, int(generation_steps))
        for name, check in CHECKS:
            began = time.perf_counter()
            try:
                detail, status = check(state), PASS
            except SkipCheck as exc:
                detail, status = str(exc), SKIP
            except Exception as exc:  # every failure becomes a FAIL line; the run goes on
                detail, status = _failure_line(exc), FAIL
                if not isinstance(exc, LegoError) or exc.__cause__ is not None:
                    failures.append((name, exc))  # a plain LegoError's one line is all there is
                if verbose:
                    report(traceback.format_exc().rstrip())
            result = CheckResult(name, status, time.perf_counter() - began, detail)
            results.append(result)
            report(f"{result.status}  {result.name:<10} {result.seconds:7.2f} s  {result.detail}")
    network_detail = "no connection or DNS lookup attempted" if not attempts else f"{len(attempts)} refused: {attempts[0]}"
    network = CheckResult("network", FAIL if attempts else PASS, 0.0, network_detail)
    results.append(network)
    report(f"{network.status}  {network.name:<10} {'':>7}    {network.detail}")
    failed = [r.name for r in results if r.status == FAIL]
    total = time.perf_counter() - started
    if failed:
        report(f"self-test FAILED ({', '.join(failed)}) in {total:.1f} s")
        written = _write_failure_log(failures, log) if failures else None
        if written is not None:
            report(f"full tracebacks: {written}")
        return 1
    passed = sum(r.status == PASS for r in results)
    report(f"self-test passed ({passed} checks passed, {len(results) - passed} skipped) in {total:.1f} s")
    return 0
