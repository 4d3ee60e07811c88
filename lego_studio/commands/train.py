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

# Flag name -> TrainConfig field, for flags whose value goes straight into the config.
CONFIG_FLAGS = {
    "vectors": "num_vectors",
    "steps": "steps",
    "name": "name",
    "init_words": "init_words",
    "init_from": "init_from",
    "positive_words": "positive_words",
    "negative_words": "negative_words",
    "context_subjects": "context_subjects",
    "w_subj": "w_subj",
    "w_ctx": "w_ctx",
    "w_words": "w_words",
    "rec_region": "rec_region",
    "ctx_region": "ctx_region",
    "concept_inside_weight": "concept_inside_weight",
    "lr": "lr",
    "lr_schedule": "lr_schedule",
    "warmup_steps": "warmup_steps",
    "batch_size": "batch_size",
    "resolution": "resolution",
    "seed": "seed",
    "subject": "subject",
    "subject_token_steps": "subject_token_steps",
    "checkpoint_every": "checkpoint_every",
    "preview_every": "preview_every",
    "preview_steps": "preview_steps",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="learn a concept (an adjective or verb) from example images",
        description="Learn a concept from example images with Lego (default) or the Textual Inversion baseline.",
    )
    p.add_argument("--images", metavar="DIR", help="folder of 3-10 example images")
    p.add_argument("--masks", metavar="DIR", help="folder of subject masks (255 = subject), paired by file name")
    p.add_argument("--subject-images", metavar="DIR", help="images of the subject alone (for --subject-token-steps)")
    p.add_argument("--subject", help='the subject in words, e.g. "a toy robot"')
    p.add_argument("--model", metavar="M", help="diffusers folder, .safetensors/.ckpt file, HF-cache id, 'shapeworld' or 'tiny'")
    p.add_argument("--method", choices=["lego", "ti"], default=None, help="lego (default) or ti (baseline)")
    p.add_argument("--vectors", type=int, metavar="N", help="number of learned token vectors (1-16)")
    p.add_argument("--steps", type=int, metavar="N", help="training steps")
    p.add_argument("--out", metavar="FILE", help="where to write the concept (.safetensors)")
    p.add_argument("--name", help="concept name; users type <name> in prompts (default: the --out file name)")
    p.add_argument("--init-words", nargs="+", metavar="WORD", help="start the vectors from these words")
    p.add_argument("--init-from", metavar="CONCEPT", help="start the vectors from an existing concept file")
    p.add_argument("--positive-words", nargs="+", metavar="WORD", help="words that describe the concept")
    p.add_argument("--negative-words", nargs="+", metavar="WORD", help="words the concept is not (default: the subject's)")
    p.add_argument("--context-subjects", nargs="+", metavar="PHRASE", help="other subjects for the context loss")
    p.add_argument("--w-subj", type=float, metavar="X", help="weight of the subject-separation loss (0 = off)")
    p.add_argument("--w-ctx", type=float, metavar="X", help="weight of the context loss (0 = off)")
    p.add_argument("--w-words", type=float, metavar="X", help="weight of the word-guidance loss (0 = off)")
    p.add_argument("--rec-region", choices=["concept", "full"], help="reconstruction loss over the concept region or the full image")
    p.add_argument("--ctx-region", choices=["full", "outside"],
                   help="context loss over the whole latent (default) or only outside the subject mask")
    p.add_argument("--concept-inside-weight", type=float, metavar="W",
                   help="how much the masked subject region trains the concept, 0-1 (default 1)")
    p.add_argument("--lr", type=float, help="learning rate (default 5e-3)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine", "linear"])
    p.add_argument("--warmup-steps", type=int, metavar="N")
    p.add_argument("--batch-size", type=int, metavar="N")
    p.add_argument("--resolution", type=int, metavar="PX", help="training resolution (default: the model's)")
    p.add_argument("--seed", type=int, metavar="N")
    p.add_argument("--subject-token-steps", type=int, metavar="N", help="first learn a subject token for N steps from --subject-images")
    p.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--run-dir", metavar="DIR", help="run folder (default: <out>.run next to --out)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("--checkpoint-every", type=int, metavar="N")
    p.add_argument("--preview-every", type=int, metavar="N", help="save preview images every N steps (0 = never)")
    p.add_argument("--preview-steps", type=int, metavar="N", help="sampling steps of a preview")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="save memory at some speed (default: on when the free memory needs it)")
    p.add_argument("--unet-batching", choices=["stacked", "split"],
                   help="Lego's UNet calls: stacked (fastest) or split (less memory; default: split when memory needs it)")
    p.add_argument("--memory", choices=["auto", "off"], default="auto",
                   help="auto (default): turn on memory savings the free memory needs; off: use the settings as given")
    p.add_argument("--config", metavar="FILE.json", help="training settings as JSON (flags override it)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run)


def _read_inputs(run_dir: Path) -> dict:
    """What a run was started with (core/runs.py: run.json, or inputs.json of older runs)."""
    from lego_studio.core.runs import run_inputs

    return run_inputs(run_dir)


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
    from lego_studio.core.training import TrainConfig, read_config_dict

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
    for flag, key in CONFIG_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            data[key] = value
    if args.no_flip:
        data["flip"] = False
    if args.gradient_checkpointing is not None:
        data["gradient_checkpointing"] = bool(args.gradient_checkpointing)
    if args.unet_batching:
        data["unet_batching"] = args.unet_batching
    return TrainConfig.from_dict(data, source)


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
        from lego_studio.core.training import read_config_dict

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
                    f"  lr {event.lr:.1e}  {speed}  ETA {format_eta(event.eta_s)}")
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


def format_eta(seconds) -> str:
    if seconds is None:
        return "--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@contextmanager
def cancel_on_ctrl_c(trainer):
    """The first Ctrl+C asks the trainer to stop after the current step (it writes a checkpoint
    and records the run as cancelled); a second one interrupts at once (recorded as cancelled
    too, resumable from the last periodic checkpoint)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        if getattr(on_sigint, "asked", False):
            raise KeyboardInterrupt
        on_sigint.asked = True
        print("\nstopping after this step (Ctrl+C again to stop at once)…", file=sys.stderr, flush=True)
        trainer.cancel()

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _fit_memory(args, model, config, run_dir: Path):
    """Resume: the settings an out-of-memory stop named. Then (``--memory auto``) the memory
    savings the free memory needs; one line says what changed. Explicit settings are kept."""
    from lego_studio.core.memory import apply_oom_hint, describe_changes, fit_config

    explicit = explicit_memory_settings(args)
    if args.resume:
        config, applied = apply_oom_hint(config, run_dir, explicit)
        if applied:
            print(f"memory: resuming with {describe_changes(applied)} (the run ran out of memory before)")
    if args.memory == "auto":
        plan = fit_config(model, config, explicit)
        if plan.note:
            print(plan.note)
        config = plan.config
    return config


def _with_estimate(args, model_spec, model, config, progress):
    """The expected duration before the first step (a figure measured earlier on this machine),
    else right after the first two steps; a warning naming the fastest option when it is long."""
    from lego_studio.core.estimate import StepClock, estimate_from_cache, figure_key
    from lego_studio.core.training import TrainEvent

    key = figure_key(model_spec, args.device, config.method, config.resolution, config.batch_size)
    device = model.device.type
    clock = StepClock(key, device)
    shown = {"warned": False}
    cached = estimate_from_cache(key, config.total_steps, config.total_steps, device)
    if cached is not None:
        print(cached.line())
        if cached.long:
            print(f"warning: {cached.warning()}")
            shown["warned"] = True
    else:
        print("expected duration: timing the first two steps…")

    def on_event(event):
        progress(event)
        estimate = clock.observe(event)
        if estimate is not None and estimate.steps_left:
            message = estimate.line()
            if estimate.long and not shown["warned"]:
                message += f"\nwarning: {estimate.warning()}"
                shown["warned"] = True
            progress(TrainEvent("estimate", step=event.step, total=event.total, eta_s=estimate.seconds,
                                steps_per_s=1.0 / estimate.seconds_per_step, message=message))
            if args.quiet:
                print(message)

    on_event.clock = clock
    return on_event


def run(args: argparse.Namespace) -> int:
    from lego_studio.core.runs import create_run

    if args.resume and not args.run_dir:
        raise InputError("--resume needs --run-dir DIR (the run to continue)")
    if not args.out and not args.run_dir:
        raise InputError("--out FILE.safetensors is required")
    run_dir = Path(args.run_dir) if args.run_dir else None
    saved = _read_inputs(run_dir) if (args.resume and run_dir) else {}
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
    model_spec = args.model or saved.get("model")
    if not model_spec:
        raise InputError("--model is required (a diffusers folder, a .safetensors/.ckpt file, 'shapeworld' or 'tiny')")

    # Check every input file before the (slow) model load, so a bad mask fails in a second.
    from lego_studio.core.data import check_inputs

    check_inputs(images, masks if config.method == "lego" else None)
    if subject_images:
        check_inputs(subject_images, None)

    from lego_studio.core.models import is_shapeworld, load_model
    from lego_studio.core.training import Trainer

    model = load_model(model_spec, device=args.device, precision=args.precision)
    if is_shapeworld(model):
        from lego_studio.shapeworld.recognise import foreign_images_warning

        warning = foreign_images_warning(images, cli=True)
        if warning:
            print(f"warning: {warning}")
    config = _fit_memory(args, model, config, run_dir)
    create_run(run_dir, {
        "images": images, "masks": masks, "subject_images": subject_images, "model": str(model_spec), "out": str(out),
        "device": args.device, "precision": args.precision,
    }, config)
    progress = ProgressLine(enabled=not args.quiet)
    on_event = _with_estimate(args, model_spec, model, config, progress)
    trainer = Trainer(model, config, images, masks, run_dir, subject_images=subject_images or None, on_event=on_event)
    trainer.explicit_settings = explicit_memory_settings(args)
    try:
        with cancel_on_ctrl_c(trainer):
            concept = trainer.run(resume=args.resume)
    except Cancelled as exc:
        progress._newline("")
        print(f"cancelled: {exc}; continue with: lego-studio train --resume --run-dir {run_dir}", file=sys.stderr)
        return 130
    except BaseException:
        progress._newline("")  # the error line must not land on the end of the progress line
        raise
    finally:
        on_event.clock.finish()

    from lego_studio.core.concepts import save_concept

    save_concept(concept, out)
    print(f"saved {out} ({concept.num_vectors} vectors, use {concept.placeholder} in prompts; run in {run_dir})")
    return 0
