"""``lego-studio train``: learn a concept from a folder of exemplar images (Lego or TI baseline).

Settings come, in increasing priority, from the method's preset, ``--config FILE.json`` and the
flags given on the command line. The run folder (``--run-dir``, default ``<out>.run`` next to the
output file) holds config.json, log.jsonl, checkpoints/, previews/ and latents/; ``--resume``
continues the run found there with the images and model it was started with (recorded in the
run's ``run.json``, core/runs.py). Ctrl+C stops after the current step: the run is recorded as
cancelled and ``--resume`` finishes it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from lego_studio.core.errors import Cancelled, InputError
from lego_studio.core.estimate import format_duration
from lego_studio.core.separation import subject_words_note

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="learn a concept (an adjective or verb) from example images",
        description="Learn a concept from example images with Lego (default) or the Textual Inversion baseline. "
                    "The training settings (grouped as in the app's training form) may also come from "
                    "--config FILE.json; flags given override it.",
    )
    p.add_argument("--images", metavar="DIR", help="folder of 3-10 example images")
    p.add_argument("--masks", metavar="DIR", help="folder of subject masks (255 = subject), paired by file name")
    p.add_argument("--subject-images", metavar="DIR", help="images of the subject alone (for --subject-token-steps)")
    p.add_argument("--model", metavar="M", help="diffusers folder, .safetensors/.ckpt file, HF-cache id, 'shapeworld', 'shapeworld-xl' or 'tiny'")
    p.add_argument("--out", metavar="FILE", help="where to write the concept (.safetensors)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--run-dir", metavar="DIR", help="run folder (default: <out>.run next to --out)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("--memory", choices=["auto", "off"], default="auto",
                   help="auto (default): turn on memory savings the free memory needs; off: use the settings as given")
    p.add_argument("--config", metavar="FILE.json", help="training settings as JSON (flags override it)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    add_config_flags(p)
    p.set_defaults(func=run)


def config_flag_settings() -> list:
    """The TrainConfig settings the command has a flag for (the rest only come from --config)."""
    from lego_studio.core.train_config import SETTINGS

    return [setting for setting in SETTINGS.values() if setting.cli]


def add_config_flags(parser) -> None:
    """One flag per TrainConfig setting, made from its description (core/training.py SETTINGS),
    in argument groups named like the form's. Every flag defaults to None (``dest`` = the field's
    name), so a flag not given leaves the value of the method's preset or of --config."""
    from lego_studio.core.train_config import SETTING_GROUPS

    settings = config_flag_settings()
    for group in SETTING_GROUPS:
        members = [setting for setting in settings if setting.group == group]
        if not members:
            continue
        arguments = parser.add_argument_group(f"{group.lower()} settings")
        for setting in members:
            options = {"dest": setting.name, "default": None, "help": flag_help(setting)}
            if setting.kind == "bool":
                options["action"] = argparse.BooleanOptionalAction  # --flip / --no-flip
            else:
                options["type"] = {"int": int, "float": float}.get(setting.kind, str)
                if setting.choices:
                    options["choices"] = setting.choices
                if setting.kind == "words":
                    options["nargs"] = "+"
                metavar = setting.metavar or {"int": "N", "float": "X", "words": "WORD"}.get(setting.kind)
                if metavar:
                    options["metavar"] = metavar
            arguments.add_argument(setting.cli_flag, **options)


def flag_help(setting) -> str:
    """The setting's help with its range and default; where the methods' presets differ, the
    default of each ("default: 0.2 for lego, 0 for ti")."""
    from lego_studio.core.train_config import METHODS, TrainConfig

    def shown(value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    default = getattr(TrainConfig(), setting.name)
    notes = []
    if setting.minimum is not None and setting.maximum is not None:
        notes.append(f"{setting.minimum:g}-{setting.maximum:g}")
    if setting.cli_default:
        notes.append(f"default: {setting.cli_default}")
    elif setting.kind == "bool":
        notes.append(f"default: {'on' if default else 'off'}")
    elif setting.kind in ("int", "float", "choice") and default is not None:
        # The method's preset decides some defaults (not the method's own: that is the field's).
        presets = {} if setting.name == "method" else {method: TrainConfig.preset_values(method) for method in METHODS}
        per_method = {method: shown(values.get(setting.name, default)) for method, values in presets.items()}
        if len(set(per_method.values())) > 1:
            notes.append("default: " + ", ".join(f"{value} for {method}" for method, value in per_method.items()))
        else:
            notes.append(f"default: {shown(default)}")
    text = setting.help
    if notes:  # into the help's closing parenthesis, where it ends with one: "(0 = off; default: 0)"
        text = f"{text[:-1]}; {'; '.join(notes)})" if text.endswith(")") else f"{text} ({'; '.join(notes)})"
    return text.replace("%", "%%")  # argparse %-formats help texts


def _read_inputs(run_dir: Path, args=None) -> dict:
    """What a run was started with (core/runs.py: run.json, or inputs.json of older runs). A
    damaged run.json is an error naming it, unless the command gives every input again."""
    from lego_studio.core.runs import run_inputs

    try:
        return run_inputs(run_dir, strict=True)
    except InputError as exc:
        if args is not None and args.images and args.model and args.out:
            print(f"warning: {exc}; using the images, model and output given", file=sys.stderr)
            return {}
        raise InputError(f"{exc}; to resume anyway, give --images, --model and --out again") from None


def _collect_images(args, saved: dict) -> tuple[list[str], list[str | None] | None, list[str]]:
    from lego_studio.core.images import find_mask_for, list_images

    if args.images:
        images = [str(p) for p in list_images(args.images)]
        masks = None
        if args.masks:
            if not Path(args.masks).is_dir():
                raise InputError(f"{args.masks}: no such folder of masks")
            masks = [str(m) if (m := find_mask_for(p, args.masks)) else None for p in images]
            if not any(masks):
                raise InputError(f"{args.masks}: no mask matches any image in {args.images} (pair them by file name)")
    elif saved.get("images"):
        images, masks = saved["images"], saved.get("masks")
    else:
        raise InputError("--images DIR is required (a folder of example images)")
    if args.subject_images:
        subject_images = [str(p) for p in list_images(args.subject_images)]
    else:
        subject_images = list(saved.get("subject_images") or [])
    return images, masks, subject_images


def _build_config(args, run_dir: Path, out: Path):
    """Preset of the method <- --config file (or the resumed run's config) <- explicit flags."""
    from lego_studio.core.train_config import TrainConfig, read_config_dict

    stored = run_dir / "config.json"
    if args.config:
        data, source = read_config_dict(args.config), args.config
    elif args.resume and stored.is_file():
        data, source = read_config_dict(stored), str(stored)
    else:
        data, source = {}, "command line"
    if args.method and args.method != data.get("method", "lego"):
        # Switching method brings that method's own defaults for the settings that differ.
        method_keys = TrainConfig.preset_values(args.method)
        data = {key: value for key, value in data.items() if key not in method_keys}
        data["method"] = args.method
    if "name" not in data:
        data["name"] = out.stem
    flagged = set()
    for setting in config_flag_settings():
        value = getattr(args, setting.name)
        if value is not None and setting.name != "method":  # the method was applied first, above
            data[setting.name] = value
            flagged.add(setting.name)
    try:
        return TrainConfig.from_dict(data, source)
    except InputError as exc:
        # Name what the user typed: the flag (--w-ctx), not the field (w_ctx); a value from a
        # --config file keeps its JSON key.
        names = {s.name for s in config_flag_settings()} if not args.config else flagged
        raise InputError(with_flag_names(str(exc), names)) from None


def with_flag_names(message: str, names) -> str:
    """``message`` with the settings ``names`` written as their command-line flags: every
    ``w_ctx`` becomes ``--w-ctx``; a one-word name only where the message says what it "must" be."""
    import re

    from lego_studio.core.train_config import SETTINGS

    for name in sorted(names, key=len, reverse=True):
        setting = SETTINGS.get(name)
        if setting is None or not setting.cli:
            continue
        follow = r"(?![\w-])" if "_" in name else r"(?= must )"
        message = re.sub(rf"(?<![\w-]){re.escape(name)}{follow}", setting.cli_flag, message)
    return message


def resume_note(run_dir: Path, config, steps_flag) -> str:
    """What ``--resume`` will do, in one line, when ``--steps`` changes the run's length: the
    steps are the run's new total (not more steps on top), counted from its last checkpoint."""
    from lego_studio.core.run_history import last_checkpoint_step
    from lego_studio.core.train_config import TrainConfig
    from lego_studio.core.wording import plural

    stored = run_dir / "config.json"
    if steps_flag is None or not stored.is_file():
        return ""
    try:
        before = TrainConfig.load(stored)
    except InputError:
        return ""
    at, total = last_checkpoint_step(run_dir), config.total_steps
    if config.steps == before.steps:
        return ""
    head = (f"--steps {config.steps} with --resume makes {config.steps} the run's total number of steps "
            f"(it was {before.steps}; it is not {config.steps} more)")
    if at >= total:
        return (f"{head}: the run's last checkpoint is at step {at}, so it ends now and saves the "
                f"vectors of step {at}")
    return f"{head}: resuming at step {at}, {plural(total - at, 'step')} to go"


def explicit_memory_settings(args) -> set[str]:
    """Memory settings the user chose (flags or a --config file): the automatic choice keeps off them."""
    explicit = set()
    if args.gradient_checkpointing is not None:
        explicit.add("gradient_checkpointing")
    if args.unet_batching:
        explicit.add("unet_batching")
    if args.batch_size is not None:
        explicit.add("batch_size")
    if args.config:
        from lego_studio.core.train_config import read_config_dict

        explicit |= {k for k in read_config_dict(args.config) if k in ("gradient_checkpointing", "unet_batching", "batch_size")}
    return explicit


class ProgressLine:
    """One self-overwriting terminal line: step/total, losses, speed, ETA."""

    def __init__(self, stream=None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.width = 0

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        if event.kind == "step":
            losses = event.losses
            terms = " ".join(f"{k} {losses[k]:.3g}" for k in ("rec", "subj", "ctx", "words") if k in losses)
            speed = f"{event.steps_per_s:.2f} it/s" if event.steps_per_s else "- it/s"
            stage = " [subject token]" if event.stage == 0 else ""
            total_loss = losses.get("total", float("nan"))
            text = (f"step {event.step}/{event.total}{stage}  loss {total_loss:.4g} ({terms})"
                    f"  lr {event.lr:.1e}  {speed}  ETA {format_duration(event.eta_s)}")
            self._write(text)
        elif event.kind in ("skipped", "log") and event.message:
            self._newline(event.message)
        elif event.kind == "estimate" and event.message:
            self._newline(event.message)
        elif event.kind == "preview" and event.path:
            self._newline(f"preview: {event.path}")
        elif event.kind == "done":
            self._newline("")

    def _write(self, text: str) -> None:
        padding = max(0, self.width - len(text))
        self.stream.write("\r" + text + " " * padding)
        self.stream.flush()
        self.width = len(text)

    def _newline(self, message: str) -> None:
        if self.width:
            self.stream.write("\n")
            self.width = 0
        if message:
            self.stream.write(message + "\n")
        self.stream.flush()


@contextmanager
def cancel_on_ctrl_c(cancel):
    """The first Ctrl+C calls ``cancel()``: the trainer stops after the current step (it writes a
    checkpoint and records the run as cancelled); a second one interrupts at once (recorded as
    cancelled too, resumable from the last periodic checkpoint)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        if getattr(on_sigint, "asked", False):
            raise KeyboardInterrupt
        on_sigint.asked = True
        print("\nstopping after this step (Ctrl+C again to stop at once)…", file=sys.stderr, flush=True)
        cancel()

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _estimate_printer(args, plan, progress):
    """Print the expected duration before the first step (a figure measured earlier on this
    machine), else say that the first two steps are timed. Returns start_run's ``on_estimate``: the
    estimate once the first steps are timed, with a warning naming the fastest option when the run
    is long (once)."""
    from lego_studio.core.run_files import TrainEvent

    shown = {"warned": False}
    if plan.estimate is not None:
        print(plan.estimate.line())
        if plan.estimate.long:
            print(f"warning: {plan.estimate.warning()}")
            shown["warned"] = True
    else:
        print("expected duration: timing the first two steps…")

    def on_estimate(estimate):
        message = estimate.line()
        if estimate.long and not shown["warned"]:
            message += f"\nwarning: {estimate.warning()}"
            shown["warned"] = True
        progress(TrainEvent("estimate", eta_s=estimate.seconds, steps_per_s=1.0 / estimate.seconds_per_step,
                            message=message))
        if args.quiet:
            print(message)

    return on_estimate


def run(args: argparse.Namespace) -> int:
    if args.resume and not args.run_dir:
        raise InputError("--resume needs --run-dir DIR (the run to continue)")
    if not args.out and not args.run_dir:
        raise InputError("--out FILE.safetensors is required")
    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.resume and not run_dir.is_dir():
        raise InputError(f"{run_dir}: no run to resume (folder not found)")
    saved = _read_inputs(run_dir, args) if (args.resume and run_dir) else {}
    out = Path(args.out or saved.get("out") or "")
    if not args.out and not saved.get("out"):
        raise InputError("--out FILE.safetensors is required")
    if out.suffix.lower() != ".safetensors":
        raise InputError(f"{out}: the concept file must end in .safetensors")
    if run_dir is None:
        run_dir = out.with_name(out.stem + ".run")
    if args.resume and not run_dir.is_dir():
        raise InputError(f"{run_dir}: no run to resume (folder not found)")

    images, masks, subject_images = _collect_images(args, saved)
    config = _build_config(args, run_dir, out)
    if args.resume:
        note = resume_note(run_dir, config, args.steps)
        if note:
            print(note)
    model_spec = args.model or saved.get("model")
    if not model_spec:
        raise InputError("--model is required (a diffusers folder, a .safetensors/.ckpt file, 'shapeworld', 'shapeworld-xl' or 'tiny')")

    # Check every input file before the (slow) model load, so a bad mask fails in a second.
    from lego_studio.core.data import check_inputs

    check_inputs(images, masks if config.method == "lego" else None)
    if subject_images:
        check_inputs(subject_images, None)
    vague = subject_words_note(config, has_masks=bool(masks))
    if vague:
        print(f"warning: {vague}", file=sys.stderr)
    colour_note = _colour_note(config, images, masks)
    if colour_note:
        print(f"warning: {colour_note}", file=sys.stderr)

    from lego_studio.core.runs import hold_run

    # From here on the run folder is this process's (a second trainer refuses, naming this one) and
    # any failure, also before the first step (the model does not load), is recorded in run.json.
    with hold_run(run_dir):
        return _train(args, run_dir, out, images, masks, subject_images, config, model_spec)


def _colour_note(config, images, masks) -> str | None:
    """The note when the masks' subject is mostly one colour the subject words do not name (as the
    Training page says it), with the --subject that adds it. None with ``mask_colour`` on: the run
    adds the colour itself and its log says so."""
    from lego_studio.core.images import subject_colour
    from lego_studio.core.separation import add_subject_word, missing_colour_note, separates_by_words

    if not masks or not separates_by_words(config) or config.mask_colour:
        return None
    colour = subject_colour(images, masks)
    note = missing_colour_note(config.subject, colour)
    return f'{note} (--subject "{add_subject_word(config.subject, colour)}")' if note else None


def _train(args, run_dir: Path, out: Path, images, masks, subject_images, config, model_spec) -> int:
    from lego_studio.core.estimate import figure_key
    from lego_studio.core.run_service import plan_run, start_run
    from lego_studio.core.runs import create_run

    inputs = {"images": images, "masks": masks, "subject_images": subject_images, "model": str(model_spec),
              "out": str(out), "device": args.device, "precision": args.precision}
    create_run(run_dir, inputs, config)  # before the (slow, fallible) model load
    from lego_studio.core.models import load_model
    from lego_studio.shapeworld.recognise import foreign_images_warning

    model = load_model(model_spec, device=args.device, precision=args.precision)
    plan = plan_run(model, config, images, masks, run_dir, inputs=inputs, subject_images=subject_images,
                    resume=args.resume, explicit=explicit_memory_settings(args), fit_memory=args.memory == "auto",
                    figure_key=figure_key(model_spec, args.device, config.method, config.resolution, config.batch_size),
                    foreign_images=lambda found: foreign_images_warning(found, cli=True),
                    on_log=None if args.quiet else lambda line: print(line, file=sys.stderr, flush=True))
    for note in plan.notes:
        print(f"warning: {note.text}" if note.warning else note.text)
    progress = ProgressLine(enabled=not args.quiet)
    on_estimate = _estimate_printer(args, plan, progress)
    stop = threading.Event()
    try:
        with cancel_on_ctrl_c(stop.set):
            concept = start_run(plan, progress, cancel=stop.is_set, on_estimate=on_estimate)
    except Cancelled as exc:
        progress._newline("")
        print(f"cancelled: {exc}; continue with: lego-studio train --resume --run-dir {run_dir}", file=sys.stderr)
        return 130
    except BaseException:
        progress._newline("")  # the error line must not land on the end of the progress line
        raise

    from lego_studio.core.concepts import save_concept

    save_concept(concept, out)
    from lego_studio.core.wording import plural

    print(f"saved {out} ({plural(concept.num_vectors, 'vector')}, use {concept.placeholder} in prompts; run in {run_dir})")
    from lego_studio.core.separation import closest_words_note, masks_added_reason, trained_with

    added = trained_with(concept.metadata)
    if added:
        print(f'trained with the subject words "{added}": {masks_added_reason(concept.metadata)} added to yours '
              "(--no-mask-colour and --no-mask-shape keep them as typed)")
    note = closest_words_note(concept.metadata.get("closest_words"), config.method)
    if note:
        print(note)
    return 0
