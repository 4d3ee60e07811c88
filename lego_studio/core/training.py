"""The inversion engine: one trainer, two methods — Lego and the Textual Inversion baseline.

Notation (all losses live on the latent grid): cached VAE latent ``z0``, subject mask ``m`` at
latent size (1 = subject), timestep ``t``, noise ``eps``, ``z_t = add_noise(z0, eps, t)``, prompt
template ``T(.)``, concept tokens ``C``, subject phrase ``S`` (the subject words, or a subject token
learned in stage 0), random other subjects ``R``. ``U`` is the UNet, ``E`` the text encoder, ``sg``
stop-gradient, ``target`` is ``eps`` (or the velocity for v-prediction models).

* ``L_rec  = MSE(U(z_t, t, E(T(S C))), target)`` over the concept region ``1 - m`` when
  ``rec_region == "concept"`` and the image has a mask, else over the whole latent.
* ``L_subj = MSE(U(z_t, t, E(T(S C))), sg U(z_t, t, E(T(S))))`` over the subject region ``m``:
  inside the subject the concept may add nothing the subject words do not already say.
* ``L_ctx`` — formulation chosen: prediction deltas. The concept's *effect* on the prediction is
  ``delta_X = U(z_t, t, E(T(X C))) - U(z_t, t, E(T(X)))``. For a random subject ``R`` the effect is
  held to the exemplar's: ``L_ctx = MSE(U(.., T(R C)) - sg U(.., T(R)), sg delta_S)`` over the whole
  latent. Only ``U(.., T(R C))`` carries gradient, so the concept learns an effect that does not
  depend on which subject it is attached to.
* ``L_words`` — InfoNCE in the raw token-embedding space: each concept vector is pulled towards the
  positive words (mean of each word's token rows) and pushed from the negative words (the
  subject's appearance words by default, plus a few random vocabulary rows) with cosine
  similarity / temperature. Skipped (0) without positive words.

``L = L_rec + w_subj L_subj + w_ctx L_ctx + w_words L_words``; every term is reported each step.

Speed: by default the four predictions share one UNet call — the conditionings ``[SC; S; RC; R]``
are stacked into one batch with the latent repeated — so Lego costs one (larger) UNet forward and
backward per step instead of four calls. ``unet_batching="split"`` instead makes one call with
gradient ``[SC; RC]`` and one without ``[S; R]`` (less backward work); benchmarks/speed_lego_vs_ti.py
measures both against TI.

SDXL (two text encoders): each learned vector is one row of width ``d_l + d_g`` — its ``clip_l``
part spliced into ``text_encoder``, its ``clip_g`` part into ``text_encoder_2`` — so both parts are
learned together by one optimizer (Adam is element-wise: the same as two parameters). The
conditioning is both encoders' penultimate hidden states side by side, plus the pooled embedding
of ``text_encoder_2`` and the micro-conditioning time ids (original = target = training
resolution, no crop). :meth:`Trainer.encode` packs the pooled embedding as one extra row after the
77 token rows, so conditionings still stack and split along the batch; ``_unet`` unpacks it.

Only the N concept vectors (and, in stage 0, the subject vector) are trained. They are fp32
``nn.Parameter``s spliced into the text encoder's input embeddings by a forward hook on the token
embedding at the positions of their prompt slots (see core/prompts.py); the embedding table, the
tokenizer and every other weight are never written, so the model is bit-identical after training.

Reproducibility: every random choice of step ``s`` (images, flips, timesteps, noise, templates,
random subjects, random negative words) comes from a CPU ``torch.Generator`` seeded from
``(seed, s)``. A checkpoint holds the vectors, the Adam moments and the step, so a run resumed
from a checkpoint ends with exactly the vectors of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from lego_studio.core.errors import Cancelled, InputError, TrainingError
from lego_studio.core.paths import atomic_save, atomic_write_json, atomic_write_text
from lego_studio.core.prompts import (
    DEFAULT_CONTEXT_SUBJECTS,
    DEFAULT_LEGO_PREVIEW_PROMPTS,
    DEFAULT_TEMPLATES,
    DEFAULT_TI_PREVIEW_PROMPTS,
    appearance_words,
    check_template,
    fill_template,
    slots,
    split_fields,
    tokenize_segments,
    word_token_ids,
)

METHODS = ("lego", "ti")
LR_SCHEDULES = ("constant", "cosine", "linear")
REC_REGIONS = ("concept", "full")
CTX_REGIONS = ("full", "outside")
UNET_BATCHING = ("stacked", "split")
MAX_VECTORS = 16
CHECKPOINT_FORMAT = "lego-studio-checkpoint/1"
KEEP_CHECKPOINTS = 2
# Config keys that may differ when a run is resumed: they change what is reported or kept, or how
# long the run goes on, not what the steps already taken computed.
# unet_batching and batch_size may change too, so that a run stopped by running out of memory
# resumes with the setting that fits (core/memory.py): split batching computes the same
# predictions; a smaller batch changes the steps still to come, not the ones taken.
RESUMABLE_CHANGES = frozenset(
    {"steps", "checkpoint_every", "preview_every", "preview_prompts", "preview_steps", "gradient_checkpointing",
     "unet_batching", "batch_size"}
)


# ----------------------------------------------------------------------------------- config

# The groups of settings, in the order the training form shows them (and `train --help` lists them).
SETTING_GROUPS = ("Method", "Concept", "Subject separation", "Context", "Words", "Optimisation",
                  "Saving and previews", "Other")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Setting:
    """One TrainConfig field, described once: TrainConfig.validate, the ``train`` command's flags
    (commands/train.py) and the app's training form (ui/training_view.py) are all made from it.

    ``name``, ``kind`` and ``optional`` are filled in from the field itself (see SETTINGS)."""

    help: str  # one line: the flag's help and the form's tooltip
    label: str  # the form's row label
    group: str  # one of SETTING_GROUPS
    details: str = ""  # more for the tooltip, where a terminal's --help has no room for it
    choices: tuple[str, ...] = ()  # a text field with choices takes one of them
    minimum: float | None = None  # numbers: the valid range, both ends included
    maximum: float | None = None
    positive: bool = False  # numbers: > 0 (0 itself refused)
    multiple_of: int | None = None  # whole numbers: also the form's step
    max_length: int | None = None  # text: 1 to max_length characters, not blank
    min_items: int = 0  # lists
    example: str = ""  # text: shown in the error message of a wrong value
    # The form's spin box needs an upper end even where the config sets none: it ends here.
    form_maximum: float | None = None
    decimals: int = 3  # the form's spin box for a float
    step: float | None = None  # the form's spin-box step (default: 1, 0.1 for floats, multiple_of)
    list_separator: str = ","  # the form types a list on one line, split here (";" where items hold commas)
    none_text: str = ""  # an optional number: the form's spin box shows this at its lowest value (None)
    cli: bool = True  # the ``train`` command has a flag for it (every field is in --config FILE.json)
    flag: str = ""  # the flag without "--" where it is not the field's name with dashes
    metavar: str = ""
    cli_default: str = ""  # what --help names as the default where the field's own default does not tell it
    # From the field:
    name: str = ""
    kind: str = ""  # "choice", "int", "float", "bool", "text" or "words" (a list of strings)
    optional: bool = False  # None is a valid value (it means "the default", see help)

    @property
    def cli_flag(self) -> str:
        return "--" + (self.flag or self.name.replace("_", "-"))

    def range_text(self) -> str:
        """The valid values of a number setting in words, e.g. "a whole number from 1 to 16"."""
        what = "a whole number" if self.kind == "int" else "a number"
        if self.multiple_of:
            return f"a multiple of {self.multiple_of}, at least {self.minimum:g}"
        if self.positive:
            return "a positive number"
        if self.minimum is not None and self.maximum is not None:
            return f"{what} from {self.minimum:g} to {self.maximum:g}"
        if self.minimum is not None:
            return f"{what} >= {self.minimum:g}"
        return what

    def problem(self, value) -> str | None:
        """What is wrong with ``value`` for this setting, in one line naming it; None when valid."""
        name = self.name
        if value is None and self.optional:
            return None
        if self.kind == "choice":
            if value not in self.choices:
                return f"{name} must be one of {', '.join(self.choices)} (got {value!r})"
        elif self.kind == "bool":
            if not isinstance(value, bool):
                return f"{name} must be true or false"
        elif self.kind in ("int", "float"):
            valid = _is_int(value) if self.kind == "int" else _is_number(value)
            if (not valid
                    or (self.positive and value <= 0)
                    or (self.minimum is not None and value < self.minimum)
                    or (self.maximum is not None and value > self.maximum)
                    or (self.multiple_of and value % self.multiple_of)):
                return f"{name} must be {self.range_text()} (got {value!r})"
        elif self.kind == "text":
            example = f', e.g. "{self.example}"' if self.example else ""
            if self.max_length and (not isinstance(value, str) or not value.strip() or len(value) > self.max_length):
                return f"{name} must be 1-{self.max_length} characters{example} (got {value!r})"
            if isinstance(value, str) and any(ch < " " or ch == "\x7f" for ch in value):  # a line break, a tab ...
                return f"{name} must be one line without control characters{example} (got {value!r})"
            if not isinstance(value, str):
                return f"{name} must be text{example}"
        elif self.kind == "words":
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                return f"{name} must be a list of non-empty strings"
            if len(value) < self.min_items:
                return f"{name} must not be empty"
        return None


def describe(**description) -> dict:
    """A dataclass field's ``metadata`` that describes it: ``field(default=..., metadata=describe(
    help=..., label=..., group=..., minimum=...))``, see :class:`Setting`."""
    return {"setting": Setting(**description)}


def _settings_of(cls) -> dict[str, Setting]:
    """Every field's Setting, in field order, with its name, kind and optional-ness from its type."""
    import types
    import typing

    hints = typing.get_type_hints(cls)
    settings = {}
    for f in dataclasses.fields(cls):
        if "setting" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no description: give it metadata=describe(help=..., ...)")
        setting = f.metadata["setting"]
        hint = hints[f.name]
        alternatives = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        not_none = [t for t in alternatives if t is not type(None)]
        optional = len(not_none) < len(alternatives)
        kinds = {bool: "bool", int: "int", float: "float", str: "choice" if setting.choices else "text", list[str]: "words"}
        if len(not_none) != 1 or not_none[0] not in kinds:
            raise TypeError(f"{cls.__name__}.{f.name}: no settings kind for type {hints[f.name]}")
        if setting.group not in SETTING_GROUPS:
            raise TypeError(f"{cls.__name__}.{f.name}: group {setting.group!r} is not one of SETTING_GROUPS")
        settings[f.name] = dataclasses.replace(setting, name=f.name, kind=kinds[not_none[0]], optional=optional)
    return settings


@dataclass
class TrainConfig:
    """Everything that decides a training run. JSON round-trips through to_dict/from_dict.

    Each field is described once, in its ``describe(...)``: help, form label and group, valid
    range or choices, and its ``train`` flag. Validation, the CLI flags and the app's form are
    made from these descriptions (SETTINGS)."""

    method: str = field(default="lego", metadata=describe(
        group="Method", label="Method", choices=METHODS,
        help="lego: Subject Separation + Context Loss + word guidance; ti: the plain Textual Inversion baseline"))
    name: str = field(default="concept", metadata=describe(
        group="Concept", label="Concept name", max_length=64, example="frozen in ice", cli_default="the --out file name",
        help="the concept's name; users type <name> in prompts"))
    # 1: on the Shape World partial-words tracks 4 vectors were no better (0.35 vs 0.64 success
    # with the colour left out), so by the project's rule several vectors are an option, not the
    # default (docs/METHOD.md, "Partial subject words").
    num_vectors: int = field(default=1, metadata=describe(
        group="Concept", label="Vectors", minimum=1, maximum=MAX_VECTORS, flag="vectors",
        help="how many learned token vectors make up the concept"))
    init_words: list[str] = field(default_factory=list, metadata=describe(
        group="Concept", label="Start from words", metavar="WORD",
        help="words whose embeddings start the vectors; none = the norm-matched mean of the vocabulary"))
    init_from: str | None = field(default=None, metadata=describe(
        group="Concept", label="Start from concept", metavar="CONCEPT", example="frozen.safetensors",
        help="a concept file whose vectors start the run (optional)"))
    steps: int = field(default=500, metadata=describe(
        group="Optimisation", label="Steps", minimum=1, form_maximum=1_000_000,
        help="training steps (after stage 0)"))
    lr: float = field(default=5e-3, metadata=describe(
        group="Optimisation", label="Learning rate", positive=True, form_maximum=1.0, decimals=6, step=0.0005,
        help="Adam learning rate of the concept vectors"))
    lr_schedule: str = field(default="constant", metadata=describe(
        group="Optimisation", label="LR schedule", choices=LR_SCHEDULES,
        help="how the learning rate changes over the run"))
    warmup_steps: int = field(default=0, metadata=describe(
        group="Optimisation", label="Warm-up steps", minimum=0, form_maximum=100_000,
        help="steps of linear learning-rate warm-up"))
    batch_size: int = field(default=1, metadata=describe(
        group="Optimisation", label="Batch size", minimum=1, maximum=64,
        help="images per step"))
    # None: the model family's native resolution.
    resolution: int | None = field(default=None, metadata=describe(
        group="Optimisation", label="Resolution", minimum=8, multiple_of=8, form_maximum=2048, none_text="native",
        metavar="PX", help="training resolution in pixels; the model's native resolution when not set"))
    seed: int = field(default=0, metadata=describe(
        group="Optimisation", label="Seed", minimum=0, form_maximum=2**31 - 1,
        help="every random choice comes from this seed: same seed, same result"))
    flip: bool = field(default=True, metadata=describe(
        group="Optimisation", label="Random flips",
        help="flip images horizontally at random (off for concepts with a direction)"))
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES), metadata=describe(
        group="Optimisation", label="Templates", min_items=1, list_separator=";", cli=False,
        help="prompt templates, each with one {} for the concept"))
    subject: str = field(default="", metadata=describe(
        group="Subject separation", label="Subject words", example="a toy robot",
        help='the subject in words, e.g. "a cat" or "a toy robot"',
        details="Lego keeps the subject out of the concept by these words: name the subject and its look as fully "
                "as you can (\"a red toy robot\", not \"an object\"). What they leave out (its colour, markings, exact "
                "shape) can end up in the concept; vague words get a warning before the run."))
    subject_token_steps: int = field(default=0, metadata=describe(
        group="Subject separation", label="Subject-token steps", minimum=0, form_maximum=100_000,
        help="stage 0: first learn a <subject> token for this many steps from subject-only images (0 = use the words)"))
    # False: the subject (words or token) is left out of the concept prompts — the "no Subject
    # Separation" ablation; the concept then has to explain the subject's appearance too.
    subject_in_prompt: bool = field(default=True, metadata=describe(
        group="Other", label="Subject in prompt", cli=False,
        help="put the subject (words or token) in the concept prompts; off = the no-Subject-Separation "
             "ablation, where the concept has to explain the subject's appearance too"))
    # L_subj is off by default: measured on the Shape World tuning concepts, any weight >= 0.1
    # stopped the concept from being learned at all (concept fidelity 0.00-0.25 against 1.00
    # without), and so it did for a shadow drawn wholly outside the mask (docs/METHOD.md, tuning table).
    w_subj: float = field(default=0.0, metadata=describe(
        group="Subject separation", label="Subject weight", minimum=0, form_maximum=100.0,
        help="weight of the subject-separation loss inside the mask (0 = off)"))
    # 0.2, measured outside the mask: at 0.5 over the whole latent the context loss collapsed the
    # concept whenever the subject words left part of the subject unexplained (tuning: "on fire"
    # with "a circle", success 0.19 -> 0.75-1.00; docs/METHOD.md "Partial subject words").
    w_ctx: float = field(default=0.2, metadata=describe(
        group="Context", label="Context weight", minimum=0, form_maximum=100.0,
        help="weight of the context loss: the concept must act the same on other subjects (0 = off)"))
    w_words: float = field(default=0.1, metadata=describe(
        group="Words", label="Words weight", minimum=0, form_maximum=100.0,
        help="weight of the word-guidance (InfoNCE) loss (0 = off)"))
    rec_region: str = field(default="full", metadata=describe(
        group="Subject separation", label="Reconstruct", choices=REC_REGIONS,
        help="concept: learn only outside the subject mask; full: the whole image"))
    # How much the subject region's reconstruction error trains the concept vectors (1 = as much as
    # the rest of the image, 0 = not at all). Below 1 the exemplar subject's own appearance pulls
    # less on the concept. Only where a mask is given; rec_region="concept" is the same as 0.
    concept_inside_weight: float = field(default=1.0, metadata=describe(
        group="Subject separation", label="Inside-mask weight", minimum=0, maximum=1, decimals=2, metavar="W",
        help="how much the masked subject's own pixels train the concept "
             "(1 = like the rest of the image, 0 = not at all; only with masks)"))
    # Where L_ctx compares the concept's effect on the exemplar subject with its effect on other
    # subjects: the whole latent, or only outside the exemplar's subject mask (where the exemplar's
    # unexplained appearance is not).
    # "full": measuring L_ctx outside the mask did not earn its place on the held-out concepts (no
    # 10-point gain on any track; docs/BENCHMARK.md), so by default no term uses the masks.
    ctx_region: str = field(default="full", metadata=describe(
        group="Context", label="Context region", choices=CTX_REGIONS,
        help="full: the context loss compares the concept's effects over the whole image; outside: only outside "
             "the subject mask (with masks), where the subject's unexplained look is not"))
    context_subjects: list[str] = field(default_factory=lambda: list(DEFAULT_CONTEXT_SUBJECTS), metadata=describe(
        group="Context", label="Context subjects", metavar="PHRASE",
        help="other subjects the concept is composed with during training (for the context loss)"))
    positive_words: list[str] = field(default_factory=list, metadata=describe(
        group="Words", label="Positive words", metavar="WORD",
        help="words that describe the concept"))
    negative_words: list[str] | None = field(default=None, metadata=describe(
        group="Words", label="Negative words", metavar="WORD",
        help="words the concept must not mean; none = the subject's appearance words"))
    random_negatives: int = field(default=8, metadata=describe(
        group="Words", label="Random negatives", minimum=0, form_maximum=1000, cli=False,
        help="random vocabulary words added to the negatives each step"))
    words_temperature: float = field(default=0.07, metadata=describe(
        group="Words", label="Temperature", positive=True, form_maximum=10.0, decimals=3, step=0.01, cli=False,
        help="InfoNCE temperature of the word-guidance loss"))
    checkpoint_every: int = field(default=50, metadata=describe(
        group="Saving and previews", label="Checkpoint every", minimum=0, form_maximum=100_000,
        help="steps between checkpoints (what resume continues from); 0 = only at the end"))
    preview_every: int = field(default=0, metadata=describe(
        group="Saving and previews", label="Preview every", minimum=0, form_maximum=100_000,
        help="steps between preview images; 0 = none"))
    preview_prompts: list[str] | None = field(default=None, metadata=describe(
        group="Saving and previews", label="Preview prompts", list_separator=";", cli=False,
        help="prompts for previews, may use {subject} and {concept}; none = the method's defaults"))
    preview_steps: int = field(default=10, metadata=describe(
        group="Saving and previews", label="Preview steps", minimum=1, form_maximum=200,
        help="denoising steps per preview image"))
    gradient_checkpointing: bool = field(default=False, metadata=describe(
        group="Optimisation", label="Save memory", cli_default="off; on when the free memory needs it",
        help="gradient checkpointing: less memory, slower steps"))
    # "stacked": the Lego predictions share one UNet call (one forward, one backward through a 4x
    # batch); "split": one call with gradient [SC; RC] and one without [S; R] — less backward
    # work, one more call. Which is faster depends on the device (see benchmarks/).
    unet_batching: str = field(default="stacked", metadata=describe(
        group="Optimisation", label="UNet batching", choices=UNET_BATCHING,
        cli_default="stacked; split when the free memory needs it",
        help="stacked: Lego's four predictions in one UNet call; split: two calls, less backward work "
             "and memory; which is faster depends on the device"))
    max_nonfinite_in_a_row: int = field(default=5, metadata=describe(
        group="Optimisation", label="Stop after bad steps", minimum=1, form_maximum=1000, cli=False,
        help="stop when the loss is not finite this many steps in a row"))

    # -- presets

    @staticmethod
    def preset_values(method: str) -> dict:
        """The settings that differ between the two methods (the rest are shared defaults)."""
        if method == "ti":
            return {"method": "ti", "num_vectors": 1, "w_subj": 0.0, "w_ctx": 0.0, "w_words": 0.0, "rec_region": "full"}
        if method == "lego":  # Lego is what the field defaults describe
            defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
            return {key: defaults[key] for key in ("method", "num_vectors", "w_subj", "w_ctx", "w_words", "rec_region")}
        raise InputError(f"config: {SETTINGS['method'].problem(method)}")

    @classmethod
    def preset(cls, method: str, **overrides) -> "TrainConfig":
        """``"lego"``: all terms on. ``"ti"``: the Textual Inversion baseline — one vector, the
        placeholder alone in the prompt, full-image loss, no masks, no subject words, no Lego terms."""
        return cls.from_dict({**cls.preset_values(method), **overrides})

    # -- (de)serialisation

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "TrainConfig":
        """Validated config from a dict; missing keys take the method's defaults."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: a training config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{source}: unknown setting {unknown[0]!r}")
        method = data.get("method", "lego")
        problem = SETTINGS["method"].problem(method)
        if problem:
            raise InputError(f"{source}: {problem}")
        # Settings left out take the method's own defaults ({"method": "ti"} is the TI baseline).
        config = cls(**{**cls.preset_values(method), **data})
        config.validate(source)
        return config

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> "TrainConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data, source)

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        return cls.from_dict(read_config_dict(path), str(path))

    # -- validation

    def validate(self, source: str = "config") -> "TrainConfig":
        """This config, or InputError (one line naming ``source`` and the setting): each field is
        checked against its description (SETTINGS), then the checks that span fields."""
        def bad(message: str):
            raise InputError(f"{source}: {message}")

        for setting in SETTINGS.values():
            problem = setting.problem(getattr(self, setting.name))
            if problem:
                bad(problem)
        for template in self.templates:
            check_template(template, f"{source}: template")

        if self.method == "ti":
            lego_terms = [n for n in ("w_subj", "w_ctx", "w_words") if getattr(self, n)]
            if lego_terms:
                bad(f"method ti is plain Textual Inversion and has no Lego terms; set {', '.join(lego_terms)} to 0")
            if self.subject_token_steps:
                bad("method ti does not learn a subject token; set subject_token_steps to 0")
        else:
            if self.w_ctx and not self.context_subjects:
                bad("w_ctx > 0 needs at least one context subject")
        return self

    # -- derived values

    @property
    def placeholder(self) -> str:
        from lego_studio.core.concepts import placeholder_for

        return placeholder_for(self.name)

    @property
    def total_steps(self) -> int:
        return self.subject_token_steps + self.steps

    def effective_negative_words(self) -> list[str]:
        if self.negative_words is not None:
            return list(self.negative_words)
        return appearance_words(self.subject)

    def effective_preview_prompts(self) -> list[str]:
        if self.preview_prompts is not None:
            return list(self.preview_prompts)
        return list(DEFAULT_TI_PREVIEW_PROMPTS if self.method == "ti" else DEFAULT_LEGO_PREVIEW_PROMPTS)


# Every TrainConfig field's description, in field order (the form's and --help's order).
SETTINGS: dict[str, Setting] = _settings_of(TrainConfig)


def read_config_dict(path: str | os.PathLike) -> dict:
    """The raw settings of a JSON config file (not validated; keys may be missing)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read config ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a training config must be a JSON object")
    return data


def lr_at(config: TrainConfig, step: int, stage_steps: int) -> float:
    """Learning rate for 0-based ``step`` of a stage that lasts ``stage_steps`` steps."""
    warmup = min(config.warmup_steps, stage_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.lr_schedule == "constant" or stage_steps <= warmup:
        return config.lr
    progress = (step - warmup) / max(1, stage_steps - warmup)
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr * (1.0 - progress)


# ----------------------------------------------------------------------------------- losses


def pack_sdxl(hidden, pooled):
    """SDXL hidden states ``[B, L, D]`` and pooled embeddings ``[B, p]`` (p <= D) as one tensor
    ``[B, L + 1, D]``, so conditionings concatenate and split along the batch like SD's."""
    import torch

    if pooled.shape[-1] > hidden.shape[-1]:
        raise TrainingError(f"pooled width {pooled.shape[-1]} is wider than the hidden states ({hidden.shape[-1]})")
    row = torch.zeros(hidden.shape[0], 1, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
    row[:, 0, : pooled.shape[-1]] = pooled.to(hidden.dtype)
    return torch.cat([hidden, row], dim=1)


def unpack_sdxl(packed, model):
    """``(hidden [B, L, D], pooled [B, p])`` of a :func:`pack_sdxl` tensor."""
    width = int(model.text_encoder_2.config.projection_dim)
    return packed[:, :-1], packed[:, -1, :width]


def region_mse(prediction, target, weight=None):
    """Mean squared error, optionally over a soft region ``weight`` [B, 1, h, w] (mean per element
    inside the region; 0 when the region is empty)."""
    squared = (prediction.float() - target.float()) ** 2
    if weight is None:
        return squared.mean()
    weight = weight.to(squared.dtype).expand_as(squared)
    total = weight.sum()
    if float(total) <= 0:
        return squared.sum() * 0.0
    return (squared * weight).sum() / total


def info_nce(vectors, positives, negatives, temperature: float):
    """Multi-positive InfoNCE of each row of ``vectors`` [N, d] against ``positives`` [P, d] and
    ``negatives`` [Q, d] with cosine similarity / ``temperature``; mean over the N rows."""
    import torch
    import torch.nn.functional as F

    v = F.normalize(vectors.float(), dim=-1)
    pos = v @ F.normalize(positives.float(), dim=-1).T / temperature
    if negatives is None or negatives.shape[0] == 0:
        everything = pos
    else:
        neg = v @ F.normalize(negatives.float(), dim=-1).T / temperature
        everything = torch.cat([pos, neg], dim=1)
    return (torch.logsumexp(everything, dim=1) - torch.logsumexp(pos, dim=1)).mean()


# ----------------------------------------------------------------------------------- events


@dataclass
class TrainEvent:
    """What the trainer reports. ``kind``: start | step | preview | checkpoint | skipped | log | done
    (the app adds ``plan``, how the run was set up, and ``estimate``, its expected duration)."""

    kind: str
    step: int = 0
    total: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    eta_s: float | None = None
    steps_per_s: float | None = None
    images: list = field(default_factory=list)
    message: str = ""
    path: str | None = None
    stage: int = 1


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for step ``step``: independent streams per (seed, step)."""
    digest = hashlib.sha256(f"lego-studio:{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ----------------------------------------------------------------------------------- trainer


class Trainer:
    """Trains a concept on ``images`` (paths or PIL images) with optional ``masks`` (one per image:
    path, uint8 array, or None) into ``run_dir``. ``subject_images`` feed stage 0 (subject token).

    Controls, like :func:`~lego_studio.core.generation.generate`: ``cancel()`` -> True stops the run
    after the current step (a checkpoint is written, :class:`Cancelled` raised); ``paused()`` -> True
    holds it between steps; ``progress(step, total)`` is called after each step. ``on_event(TrainEvent)``
    streams everything else (losses, previews, checkpoints). All are called from the training
    thread. The methods ``cancel``/``pause``/``unpause`` do the same from any thread.

    The trainer owns the run's end state: it records the run as running in ``run.json`` when it
    starts and as finished, cancelled or failed (with the reason) when it stops (core/runs.py).
    """

    def __init__(self, model, config: TrainConfig, images, masks=None, run_dir=None, subject_images=None,
                 on_event: Callable | None = None, *, cancel: Callable[[], bool] | None = None,
                 paused: Callable[[], bool] | None = None, progress: Callable[[int, int], None] | None = None):
        if run_dir is None:
            raise InputError("a training run needs a run folder")
        self.model = model
        self.config = config
        self.images = list(images)
        self.masks = list(masks) if masks is not None else None
        self.run_dir = Path(run_dir)
        self.subject_images = list(subject_images) if subject_images else []
        self.on_event = on_event
        self._cancel_fn = cancel
        self._paused_fn = paused
        self._progress_fn = progress
        self._cancel = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._splice = None  # (slot_mask, slot_index, table) during encode(); SDXL: {embedding: that}
        self._widths = None  # the text-encoder widths: [d] or SDXL's [d_l, d_g]
        self.concept_vectors = None
        self.subject_vector = None
        # Settings the user chose (CLI flags, app form); an out-of-memory stop never suggests changing them.
        self.explicit_settings: set[str] = set()

    # -- control (thread-safe)

    def cancel(self) -> None:
        self._cancel.set()
        self._running.set()  # a paused run must wake up to see the cancel

    def pause(self) -> None:
        self._running.clear()

    def unpause(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set() or bool(self._paused_fn and self._paused_fn())

    def _cancel_requested(self) -> bool:
        return self._cancel.is_set() or bool(self._cancel_fn and self._cancel_fn())

    # -- paths

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def preview_dir(self) -> Path:
        return self.run_dir / "previews"

    @property
    def concept_path(self) -> Path:
        return self.run_dir / "concept.safetensors"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"

    # -- one step outside a run (core/memory_trace.py runs the Trainer's own step this way)

    def prepare(self, exemplars, subject_set=None) -> None:
        """Set up for :meth:`step_losses` as :meth:`run` does, but with ``exemplars`` (an
        ExemplarSet) given instead of read from the images, and zero starting vectors instead of
        the init words; the run folder only gets cleared."""
        import torch

        self._prepare_model()
        width = self._table.shape[1]
        self._initial = torch.zeros(self.config.num_vectors, width)
        self._initial_subject = torch.zeros(1, width) if self.config.subject_token_steps else None
        self.exemplars = exemplars
        self.subject_set = subject_set
        self._start_or_resume(False, self.config.total_steps)

    def step_losses(self, generator) -> dict:
        """The loss terms of one concept step (stage 1) on a batch drawn with ``generator``:
        ``{"total": ..., "rec": ..., ...}``. Nothing is applied; the caller may call ``backward()``
        on the total."""
        return self._concept_loss(generator)

    # -- the run

    def run(self, resume: bool = False):
        """Train and return the :class:`~lego_studio.core.concepts.Concept`.

        ``resume=True`` continues from the newest checkpoint in ``run_dir`` (from scratch when there
        is none). Raises :class:`Cancelled` after writing a checkpoint when cancelled,
        :class:`TrainingError` after ``max_nonfinite_in_a_row`` non-finite steps. The end state
        (finished / cancelled / failed + reason) is written to the run record either way.
        """
        from lego_studio.core import runs

        with runs.hold_run(self.run_dir):  # one trainer per run folder; refuses naming the other one
            runs.begin_run(self.run_dir, self.config)
            try:
                concept = self._run(resume)
            except (Cancelled, KeyboardInterrupt) as exc:
                runs.record_end(self.run_dir, runs.RUN_CANCELLED, str(exc) or "cancelled (interrupted from the keyboard)")
                raise
            except BaseException as exc:
                runs.record_end(self.run_dir, runs.RUN_FAILED, exc)  # never raises over exc (a full disk)
                raise
            runs.end_run(self.run_dir, runs.RUN_FINISHED)
        return concept

    def _run(self, resume: bool):
        config = self.config.validate()
        model = self.model
        self._check_inputs()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_or_check_config(resume)
        total = config.total_steps
        self._emit(TrainEvent("start", step=0, total=total, message=f"training {config.placeholder} with {config.method}"))

        from lego_studio.core.data import build_exemplars

        self._prepare_model()
        # Before the (slow) image encoding, so a bad --init-from or init word fails at once.
        self._initial = self._initial_concept_vectors()
        self._initial_subject = self._initial_subject_vector() if config.subject_token_steps else None
        if config.w_words and config.positive_words:
            for word in config.positive_words + config.effective_negative_words():
                self._word_embedding(word)

        resolution = int(config.resolution or model.family.resolution)
        cache = self.run_dir / "latents"
        masks = None if config.method == "ti" else self.masks
        self._emit(TrainEvent("log", total=total, message=f"encoding {len(self.images)} images at {resolution} px"))
        self.exemplars = build_exemplars(model, self.images, masks, resolution, cache)
        self.subject_set = (
            build_exemplars(model, self.subject_images, None, resolution, cache) if config.subject_token_steps else None
        )

        checkpointing_before = bool(getattr(model.unet, "is_gradient_checkpointing", False))
        if config.gradient_checkpointing and not checkpointing_before:
            model.unet.enable_gradient_checkpointing()
        try:
            return self._train(resume, total)
        finally:
            if config.gradient_checkpointing and not checkpointing_before:
                model.unet.disable_gradient_checkpointing()

    def _train(self, resume: bool, total: int):
        """The training loop: one step at a time until ``total``, with checkpoints and previews."""
        config = self.config
        start, optimizer, streak = self._start_or_resume(resume, total)
        rate = None
        step = start
        while step < total:
            self._wait_if_paused(step, total)
            if self._cancel_requested():
                path = self._save_checkpoint(step, optimizer, streak)
                self._emit(TrainEvent("checkpoint", step=step, total=total, path=str(path)))
                raise Cancelled(f"training cancelled at step {step} of {total}; resume continues from {path}")
            optimizer = self._optimizer_for_step(step, optimizer)
            out_of_memory = False
            try:
                report, finite, lr, stage, elapsed = self._step(step, optimizer)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled here
                from lego_studio.core.oom import is_out_of_memory

                if not is_out_of_memory(exc):
                    raise
                out_of_memory = True
            if out_of_memory:  # outside the except block, so the failed step's tensors can be freed
                self._out_of_memory(step, total, optimizer, streak)
            step += 1
            streak = 0 if finite else streak + 1
            if not finite:
                self._emit(TrainEvent("skipped", step=step, total=total, losses=report, lr=lr, stage=stage,
                                      message=f"step {step}: loss was not finite, step skipped"))
            rate = (1.0 / elapsed if rate is None else 0.8 * rate + 0.2 / elapsed) if elapsed > 0 else rate
            self._append_log({"step": step, "stage": stage, "losses": report, "lr": lr, "time": elapsed,
                              "skipped": not finite})
            eta = (total - step) / rate if rate else None
            self._emit(TrainEvent("step", step=step, total=total, losses=report, lr=lr, eta_s=eta, steps_per_s=rate, stage=stage))
            if self._progress_fn is not None:
                self._progress_fn(step, total)
            if streak >= config.max_nonfinite_in_a_row:
                raise TrainingError(
                    f"training stopped at step {step}: the loss was not finite for {streak} steps in a row "
                    f"(learning rate {config.lr:g} may be too high, or the model is broken)"
                )
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total:
                path = self._save_checkpoint(step, optimizer, streak)
                self._emit(TrainEvent("checkpoint", step=step, total=total, path=str(path)))
            if config.preview_every and stage == 1 and step % config.preview_every == 0:
                images, path = self._preview(step)
                self._emit(TrainEvent("preview", step=step, total=total, images=images, path=str(path)))
        return self._finish(total, optimizer, streak)

    def _start_or_resume(self, resume: bool, total: int):
        """Fresh vectors, or the newest checkpoint's vectors and Adam state: (start, optimizer, streak)."""
        import torch

        device = self.model.device
        state = self._latest_checkpoint() if resume else None
        self.concept_vectors = torch.nn.Parameter(self._initial.clone().to(device))
        if self.config.subject_token_steps:
            self.subject_vector = torch.nn.Parameter(self._initial_subject.clone().to(device))
        if state is None:
            self._clear_previous_run()
            return 0, None, 0
        start = state["step"]
        with torch.no_grad():
            self.concept_vectors.copy_(state["tensors"]["concept"].to(device))
            if self.subject_vector is not None:
                self.subject_vector.copy_(state["tensors"]["subject"].to(device))
        streak = int(state["meta"].get("nonfinite_streak", 0))
        optimizer = self._optimizer_for(start)
        self._restore_moments(optimizer, state["tensors"])
        self._truncate_log(start)
        self._emit(TrainEvent("log", step=start, total=total, message=f"resumed from {step_name(start)}"))
        return start, optimizer, streak

    def _optimizer_for_step(self, step: int, optimizer):
        """The optimizer of the step's stage (a new one when stage 1 begins)."""
        config = self.config
        stage = 0 if step < config.subject_token_steps else 1
        if optimizer is None or (stage == 1 and step == config.subject_token_steps
                                 and optimizer.param_groups[0]["params"][0] is not self.concept_vectors):
            optimizer = self._optimizer_for(step)
        return optimizer

    def _step(self, step: int, optimizer):
        """One optimisation step: (loss report, finite, lr, stage, seconds)."""
        import torch

        config = self.config
        stage = 0 if step < config.subject_token_steps else 1
        stage_step = step if stage == 0 else step - config.subject_token_steps
        stage_steps = config.subject_token_steps if stage == 0 else config.steps
        lr = lr_at(config, stage_step, stage_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(step_seed(config.seed, step))
        optimizer.zero_grad(set_to_none=True)
        losses = self._subject_token_loss(generator) if stage == 0 else self._concept_loss(generator)
        loss = losses.pop("total")
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            finite = all(bool(torch.isfinite(g).all()) for g in grads)
        report = {"total": float(loss.detach())}
        report.update({k: float(v.detach()) if hasattr(v, "detach") else float(v) for k, v in losses.items()})
        if finite:
            optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)
        return report, finite, lr, stage, time.perf_counter() - started

    def _finish(self, total: int, optimizer, streak: int):
        """Final checkpoint and concept file."""
        path = self._save_checkpoint(total, optimizer, streak)
        self._emit(TrainEvent("checkpoint", step=total, total=total, path=str(path)))
        concept = self.concept()
        from lego_studio.core.concepts import save_concept

        save_concept(concept, self.concept_path)
        self._emit(TrainEvent("done", step=total, total=total, path=str(self.concept_path)))
        return concept

    def _out_of_memory(self, step: int, total: int, optimizer, streak: int):
        """Save what the run has (the failed step changed nothing), note the setting that would
        fit next to the run, and stop with one line naming it."""
        import gc

        import torch

        from lego_studio.core.errors import OutOfMemory
        from lego_studio.core.oom import oom_advice, write_oom_hint

        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.model.device.type == "mps" and hasattr(torch, "mps"):
            torch.mps.empty_cache()
        path = self._save_checkpoint(step, optimizer, streak)
        self._emit(TrainEvent("checkpoint", step=step, total=total, path=str(path)))
        line, changed = oom_advice(self.config, step, self.model.device.type, self.explicit_settings)
        write_oom_hint(self.run_dir, step, changed, line)
        raise OutOfMemory(line, changed)

    def concept(self):
        """The concept as trained so far (CPU float32 vectors, metadata filled in)."""
        from lego_studio.core.concepts import Concept

        config = self.config
        family = self.model.family
        metadata = {
            "method": config.method,
            "config": config.to_dict(),
            "steps": config.steps,
            "family": family.name,
            "text_width": int((self._widths or [self._table.shape[1]])[0]),
            "subject": config.subject,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "base_model": str(self.model.source),
        }
        parts = self._split_widths(self.concept_vectors.detach().float().cpu().clone())
        if len(parts) == 2:
            metadata["text_width_2"] = int(self._widths[1])
        return Concept(name=config.name, placeholder=config.placeholder, vectors=parts[0], metadata=metadata,
                       vectors_2=parts[1] if len(parts) == 2 else None)

    # -- inputs, config, model

    def _check_inputs(self) -> None:
        config = self.config
        if not self.images:
            raise InputError("no training images given")
        if self.masks is not None and len(self.masks) != len(self.images):
            raise InputError(f"got {len(self.masks)} masks for {len(self.images)} images; give one per image (or None)")
        if config.subject_token_steps and not self.subject_images:
            raise InputError("subject_token_steps > 0 needs subject-only images (--subject-images)")

    def _write_or_check_config(self, resume: bool) -> None:
        path = self.run_dir / "config.json"
        if resume and path.exists():
            previous = TrainConfig.load(path).to_dict()
            current = self.config.to_dict()
            changed = sorted(k for k in current if current[k] != previous.get(k) and k not in RESUMABLE_CHANGES)
            if changed:
                raise TrainingError(
                    f"{path}: cannot resume, the run was trained with a different {changed[0]} "
                    f"({previous.get(changed[0])!r}, now {current[changed[0]]!r})"
                )
        atomic_write_json(path, self.config.to_dict())

    def _prepare_model(self) -> None:
        """Freeze the model and read the token-embedding table the learned rows live beside."""
        self._freeze_model()
        self._table = self._embedding_table()
        self._vocab_limit = self._regular_vocab_limit()

    def _freeze_model(self) -> None:
        for module in self.model.modules:
            module.requires_grad_(False)
            module.eval()

    def _embedding_table(self):
        """The token-embedding table the learned rows live beside: SDXL's two tables side by side
        ``[V, d_l + d_g]`` (self._widths says where they split)."""
        import torch

        tables = [encoder.get_input_embeddings().weight.detach() for _, encoder in self.model.text_encoders]
        self._widths = [int(t.shape[1]) for t in tables]
        if len(tables) == 1:
            return tables[0]
        if len({t.shape[0] for t in tables}) != 1:
            raise TrainingError(f"the two text encoders have different vocabularies ({tables[0].shape[0]} and "
                                f"{tables[1].shape[0]} tokens)")
        return torch.cat([t.to(tables[0].dtype) for t in tables], dim=1)

    def _split_widths(self, rows):
        """Rows of the joint width split per text encoder (one part for one encoder)."""
        return list(rows.split(self._widths or [int(rows.shape[-1])], dim=-1))

    def _regular_vocab_limit(self) -> int:
        """Ids below this are ordinary BPE tokens (CLIP puts its special tokens last)."""
        tokenizer = self.model.tokenizer
        specials = [i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None]
        limit = min(specials + [self._table.shape[0]])
        return int(limit)

    def _word_embedding(self, word: str):
        ids = word_token_ids(self.model.tokenizer, word)
        if max(ids) >= self._table.shape[0]:
            raise InputError(f"word {word!r} is not in the model's vocabulary")
        return self._table[ids].float().mean(dim=0)

    def _vocab_mean(self):
        import torch

        parts = []
        for rows in self._split_widths(self._table[: self._vocab_limit].float()):
            mean = rows.mean(dim=0)
            # The plain mean of thousands of embeddings is much shorter than any real token; scale
            # it to the average row norm so the vector starts where token embeddings live (per
            # text encoder for SDXL).
            parts.append(mean / mean.norm().clamp_min(1e-12) * rows.norm(dim=1).mean())
        return torch.cat(parts)

    def _initial_concept_vectors(self):
        import torch

        config = self.config
        n = config.num_vectors
        if config.init_from:
            from lego_studio.core.concepts import load_concept

            source = load_concept(config.init_from)
            widths = tuple(self._widths or [int(self._table.shape[1])])
            if tuple(source.widths) != widths:
                have = " + ".join(map(str, source.widths))
                want = " + ".join(map(str, widths))
                raise InputError(
                    f"{config.init_from}: concept has width {have} but the model's text encoder has width {want}"
                )
            rows = source.joined_vectors.float()
        elif config.init_words:
            tokenizer = self.model.tokenizer
            ids = [i for word in config.init_words for i in word_token_ids(tokenizer, word)]
            if max(ids) >= self._table.shape[0]:
                raise InputError(f"init words {config.init_words!r} are not in the model's vocabulary")
            rows = self._table[ids].float()
        else:
            rows = self._vocab_mean()[None]
        index = torch.arange(n) % rows.shape[0]
        return rows[index].detach().clone().cpu()

    def _initial_subject_vector(self):
        words = appearance_words(self.config.subject)
        if words:
            import torch

            return torch.stack([self._word_embedding(w) for w in words]).mean(dim=0, keepdim=True).cpu()
        return self._vocab_mean()[None].cpu()

    def _optimizer_for(self, step: int):
        import torch

        # No weight decay: it would shrink the vectors below the norm of real token embeddings,
        # where the text encoder has never seen inputs.
        if step < self.config.subject_token_steps:
            params = [self.subject_vector]
        else:
            params = [self.concept_vectors]
            if self.subject_vector is not None:
                self.subject_vector.requires_grad_(False)  # frozen in stage 1: no gradient to keep
        return torch.optim.AdamW(params, lr=self.config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    @staticmethod
    def _restore_moments(optimizer, tensors: dict) -> None:
        """Put a checkpoint's Adam moments back on the optimizer's parameters (see _save_checkpoint)."""
        if "adam.exp_avg" in tensors:
            param = optimizer.param_groups[0]["params"][0]
            optimizer.state[param] = {
                "step": tensors["adam.step"].clone(),
                "exp_avg": tensors["adam.exp_avg"].to(param.device).clone(),
                "exp_avg_sq": tensors["adam.exp_avg_sq"].to(param.device).clone(),
            }

    # -- prompt encoding with learned vectors

    def _splice_hook(self, module, inputs, output):
        if self._splice is None:
            return output
        import torch

        slot_mask, slot_index, table = self._splice[module] if isinstance(self._splice, dict) else self._splice
        replacement = table[slot_index].to(output.dtype)
        return torch.where(slot_mask[..., None], replacement, output)

    def _vector_table(self, grad: bool = True):
        import torch

        table = self.concept_vectors if self.subject_vector is None else torch.cat([self.concept_vectors, self.subject_vector], dim=0)
        return table if grad else table.detach()

    def encode(self, prompts: list[list], grad: bool = True):
        """Text-encoder hidden states [B, 77, d] for segment-list prompts (see core/prompts.py)."""
        import torch

        model = self.model
        if model.is_sdxl:
            return self._encode_sdxl(prompts, grad)
        tokens = tokenize_segments(model.tokenizer, prompts)
        device = model.device
        table = self._vector_table(grad)
        self._splice = (tokens.slot_mask.to(device), tokens.slot_index.to(device), table)
        # The hook lives only for this call: outside it the text encoder is untouched.
        hook = model.text_encoder.get_input_embeddings().register_forward_hook(self._splice_hook)
        try:
            # Same call as SDModel.encode_prompts, so training sees what generation will see.
            attention_mask = None
            if getattr(model.text_encoder.config, "use_attention_mask", False):
                attention_mask = tokens.attention_mask.to(device)
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                return model.text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)[0]
        finally:
            hook.remove()
            self._splice = None

    def _encode_sdxl(self, prompts: list[list], grad: bool):
        """SDXL conditioning for segment-list prompts, packed ``[B, 78, d_l + d_g]``: rows 0-76 the
        two encoders' penultimate hidden states side by side (as ``encode_prompt``), row 77 the
        pooled embedding (zero-padded to the width); see :func:`unpack_sdxl`."""
        import torch

        model = self.model
        device = model.device
        tables = self._split_widths(self._vector_table(grad))
        splice, hooks, hidden, pooled = {}, [], [], None
        for (tokenizer, encoder), table in zip(model.text_encoders, tables):
            tokens = tokenize_segments(tokenizer, prompts)
            embedding = encoder.get_input_embeddings()
            splice[embedding] = (tokens.slot_mask.to(device), tokens.slot_index.to(device), table)
            hooks.append((encoder, tokens, embedding.register_forward_hook(self._splice_hook)))
        self._splice = splice
        try:
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                for encoder, tokens, _ in hooks:
                    output = encoder(tokens.input_ids.to(device), output_hidden_states=True)
                    if output[0].ndim == 2:
                        pooled = output[0]
                    hidden.append(output.hidden_states[-2])
                return pack_sdxl(torch.cat(hidden, dim=-1), pooled)
        finally:
            for _, _, hook in hooks:
                hook.remove()
            self._splice = None

    def _concept_slots(self):
        return slots(self.config.num_vectors)

    def _subject_phrase(self) -> list:
        if not self.config.subject_in_prompt:
            return []
        if self.subject_vector is not None:
            return slots(1, start=self.config.num_vectors)
        return [self.config.subject.strip()]

    # -- one step

    def _noisy_batch(self, exemplars, generator):
        """Pick images, flips, timesteps and noise for one step (all from ``generator``)."""
        import torch

        config = self.config
        scheduler = self.model.noise_scheduler
        b = config.batch_size
        index = torch.randint(len(exemplars), (b,), generator=generator)
        flips = torch.randint(2, (b,), generator=generator) if config.flip else torch.zeros(b, dtype=torch.long)
        z0 = exemplars.latents[index, flips]
        mask = exemplars.masks[index, flips]
        t = torch.randint(int(scheduler.config.num_train_timesteps), (b,), generator=generator)
        noise = torch.randn(z0.shape, generator=generator)
        device = self.model.device
        z0, noise, t, mask = z0.to(device), noise.to(device), t.to(device), mask.to(device)
        z_t = scheduler.add_noise(z0, noise, t)
        if self.model.family.prediction_type == "v_prediction":
            target = scheduler.get_velocity(z0, noise, t)
        else:
            target = noise
        # On the CPU: whether the batch has a mask decides which terms run, and reading it from the
        # device would wait for the GPU (and cannot be read at all when memory_trace runs on meta).
        has_mask = torch.tensor([exemplars.has_mask[i] for i in index.tolist()])
        sizes = exemplars.sizes[index, flips] if exemplars.sizes is not None else None
        return z_t, t, target, mask, has_mask, sizes

    def _unet(self, z_t, t, conditioning, copies: int, sizes=None):
        """The UNet's prediction for ``copies`` conditionings of the batch. SDXL: ``sizes`` [B, 4]
        are the images' original size and crop (ExemplarSet.sizes), its micro-conditioning."""
        import torch

        model = self.model
        sample = z_t.repeat(copies, 1, 1, 1).to(model.dtype)
        if model.is_sdxl:
            hidden, pooled = unpack_sdxl(conditioning, model)
            h, w = (int(side) * model.vae_scale_factor for side in z_t.shape[-2:])
            time_ids = model.sdxl_time_ids(h, w, z_t.shape[0])
            if sizes is not None:
                time_ids = torch.cat([sizes.float(), time_ids[:, 4:]], dim=1)
            added = {"text_embeds": pooled.to(model.dtype),
                     "time_ids": time_ids.repeat(copies, 1).to(model.device, model.dtype)}
            return model.unet(sample, t.repeat(copies), encoder_hidden_states=hidden.to(model.dtype),
                              added_cond_kwargs=added).sample.float()
        return model.unet(sample, t.repeat(copies), encoder_hidden_states=conditioning.to(model.dtype)).sample.float()

    def _subject_token_loss(self, generator) -> dict:
        """Stage 0: plain textual inversion of the subject token on the subject-only images."""
        import torch

        z_t, t, target, _, _, sizes = self._noisy_batch(self.subject_set, generator)
        picks = torch.randint(len(self.config.templates), (z_t.shape[0],), generator=generator).tolist()
        prompts = [fill_template(self.config.templates[i], slots(1, start=self.config.num_vectors)) for i in picks]
        prediction = self._unet(z_t, t, self.encode(prompts), 1, sizes)
        rec = region_mse(prediction, target)
        zero = rec.detach() * 0.0
        return {"total": rec, "rec": rec, "subj": zero, "ctx": zero, "words": zero}

    def _concept_loss(self, generator) -> dict:
        import torch

        config = self.config
        z_t, t, target, mask, has_mask, sizes = self._noisy_batch(self.exemplars, generator)
        b = z_t.shape[0]
        picks = torch.randint(len(config.templates), (b,), generator=generator).tolist()
        templates = [config.templates[i] for i in picks]
        concept = self._concept_slots()
        lego = config.method == "lego"
        masked = lego and bool(has_mask.any())
        # The subject region per sample (all zero for an image without a mask).
        subject_region = mask * has_mask.to(mask.device).float().view(-1, 1, 1, 1)
        use_subj = masked and config.w_subj > 0
        use_ctx = lego and config.w_ctx > 0
        if use_ctx:
            chosen = torch.randint(len(config.context_subjects), (b,), generator=generator).tolist()
            others = [config.context_subjects[i] for i in chosen]
        subject = self._subject_phrase() if lego else []
        with_concept = [fill_template(tp, subject + concept) for tp in templates]

        # Conditionings with gradient (prompts holding the concept) and without.
        grad_parts = {"SC": self.encode(with_concept)}
        if use_ctx:
            grad_parts["RC"] = self.encode([fill_template(tp, [other] + concept) for tp, other in zip(templates, others)])
        plain_parts = {}
        with torch.no_grad():
            if use_subj or use_ctx:
                plain_parts["S"] = self.encode([fill_template(tp, subject) for tp in templates], grad=False)
            if use_ctx:
                plain_parts["R"] = self.encode([fill_template(tp, [other]) for tp, other in zip(templates, others)], grad=False)
        predictions = self._predict(z_t, t, grad_parts, plain_parts, sizes)
        pred_sc = predictions["SC"]

        # L_rec: the subject region counts concept_inside_weight (rec_region "concept" = 0).
        inside = 0.0 if config.rec_region == "concept" else config.concept_inside_weight
        if masked and inside < 1.0:
            rec = region_mse(pred_sc, target, 1.0 - (1.0 - inside) * subject_region)
        else:
            rec = region_mse(pred_sc, target)
        zero = rec.detach() * 0.0
        subj = ctx = words = zero
        if use_subj:
            subj = region_mse(pred_sc, predictions["S"], subject_region)
        if use_ctx:
            # With words that leave part of the subject unexplained, delta_S inside the mask holds
            # that unexplained appearance, which no other subject can copy: measured there, the
            # cheapest way to meet the term is a concept with no effect at all (docs/METHOD.md).
            delta_s = pred_sc.detach() - predictions["S"]
            region = 1.0 - subject_region if config.ctx_region == "outside" and masked else None
            ctx = region_mse(predictions["RC"] - predictions["R"], delta_s, region)
        if lego and config.w_words > 0 and config.positive_words:
            words = self._words_loss(generator)
        total = rec + config.w_subj * subj + config.w_ctx * ctx + config.w_words * words
        return {"total": total, "rec": rec, "subj": subj, "ctx": ctx, "words": words}

    def _predict(self, z_t, t, grad_parts: dict, plain_parts: dict, sizes=None) -> dict:
        """UNet predictions for every named conditioning, all on the same noisy latents.

        "stacked" makes one UNet call over every conditioning; "split" one call with gradient and
        one without (less backward work, one more call)."""
        import torch

        b = z_t.shape[0]
        names = list(grad_parts) + list(plain_parts)
        if self.config.unet_batching == "split" or not plain_parts:
            outputs = list(self._unet(z_t, t, torch.cat(list(grad_parts.values())), len(grad_parts), sizes).split(b))
            if plain_parts:
                with torch.no_grad():
                    outputs += list(self._unet(z_t, t, torch.cat(list(plain_parts.values())), len(plain_parts), sizes).split(b))
        else:
            stacked = torch.cat(list(grad_parts.values()) + list(plain_parts.values()))
            outputs = list(self._unet(z_t, t, stacked, len(names), sizes).split(b))
        predictions = dict(zip(names, outputs))
        for name in plain_parts:
            predictions[name] = predictions[name].detach()
        return predictions

    def _words_loss(self, generator):
        import torch

        config = self.config
        positives = torch.stack([self._word_embedding(w) for w in config.positive_words])
        negatives = [self._word_embedding(w) for w in config.effective_negative_words()]
        if config.random_negatives:
            ids = torch.randint(self._vocab_limit, (config.random_negatives,), generator=generator)
            negatives += list(self._table[ids.to(self._table.device)].float())
        negatives = torch.stack(negatives) if negatives else None
        return info_nce(self.concept_vectors, positives.to(self.concept_vectors.device),
                        None if negatives is None else negatives.to(self.concept_vectors.device),
                        config.words_temperature)

    # -- previews

    def preview_prompt_segments(self) -> list[list]:
        fields = {"concept": self._concept_slots(), "subject": self._subject_phrase() if self.config.subject.strip() or self.subject_vector is not None else []}
        return [split_fields(p, fields) for p in self.config.effective_preview_prompts()]

    def _preview(self, step: int):
        import torch
        from PIL import Image

        config = self.config
        model = self.model
        resolution = int(config.resolution or model.family.resolution)
        with torch.no_grad():
            prompts = self.preview_prompt_segments()
            cond = self.encode(prompts, grad=False).to(model.dtype)
            uncond = self.encode([[]] * len(prompts), grad=False).to(model.dtype)
            pipe = model.pipeline("ddim")
            pipe.set_progress_bar_config(disable=True)
            generator = torch.Generator(device="cpu").manual_seed(config.seed)
            extra = {}
            if model.is_sdxl:
                cond, pooled = unpack_sdxl(cond, model)
                uncond, uncond_pooled = unpack_sdxl(uncond, model)
                extra = {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": uncond_pooled}
            images = pipe(
                prompt_embeds=cond,
                negative_prompt_embeds=uncond,
                **extra,
                num_inference_steps=config.preview_steps,
                guidance_scale=7.5,
                height=resolution,
                width=resolution,
                generator=generator,
                output_type="pil",
            ).images
        sheet = Image.new("RGB", (resolution * len(images), resolution))
        for i, image in enumerate(images):
            sheet.paste(image, (i * resolution, 0))
        path = self.preview_dir / f"{step_name(step)}.png"
        atomic_save(path, lambda tmp: sheet.save(tmp, format="PNG"))
        return list(images), path

    # -- checkpoints and log

    def _save_checkpoint(self, step: int, optimizer, streak: int) -> Path:
        from safetensors.torch import save_file

        tensors = {"concept": self.concept_vectors.detach().float().cpu().contiguous()}
        if self.subject_vector is not None:
            tensors["subject"] = self.subject_vector.detach().float().cpu().contiguous()
        # The moments belong to the stage that continues from this step: at the end of stage 0 the
        # optimizer still holds the subject vector's, which stage 1 does not use.
        expected = self.subject_vector if step < self.config.subject_token_steps else self.concept_vectors
        if optimizer is not None and optimizer.param_groups[0]["params"][0] is expected:
            moments = optimizer.state.get(expected)
            if moments:
                tensors["adam.step"] = moments["step"].detach().cpu().reshape(()).clone()
                tensors["adam.exp_avg"] = moments["exp_avg"].detach().cpu().contiguous()
                tensors["adam.exp_avg_sq"] = moments["exp_avg_sq"].detach().cpu().contiguous()
        stage = 0 if step < self.config.subject_token_steps else 1
        meta = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "stage": stage,
            "total": self.config.total_steps,
            "nonfinite_streak": streak,
            "lr_schedule": self.config.lr_schedule,
            "lr": lr_at(self.config, min(step, self.config.total_steps - 1) - (self.config.subject_token_steps if stage else 0),
                        self.config.steps if stage else self.config.subject_token_steps),
        }
        path = self.checkpoint_dir / f"{step_name(step)}.safetensors"
        atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata={"lego_studio": json.dumps(meta)}))
        atomic_write_json(path.with_suffix(".json"), meta)
        for old in self._checkpoint_files()[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
        return path

    def _checkpoint_files(self) -> list[Path]:
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoint_dir.glob("step-*.safetensors") if re.fullmatch(r"step-\d{6,}", p.stem))

    def _latest_checkpoint(self) -> dict | None:
        from safetensors import safe_open

        for path in reversed(self._checkpoint_files()):
            try:
                with safe_open(str(path), framework="pt") as handle:
                    meta = json.loads(handle.metadata()["lego_studio"])
                    tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            except Exception:  # noqa: BLE001 - a damaged checkpoint: fall back to the one before
                self._emit(TrainEvent("log", message=f"{path}: unreadable checkpoint skipped"))
                continue
            if meta.get("format") != CHECKPOINT_FORMAT:
                continue
            if tensors["concept"].shape[0] != self.config.num_vectors:
                raise TrainingError(f"{path}: checkpoint has {tensors['concept'].shape[0]} vectors, the config asks for {self.config.num_vectors}")
            return {"step": int(meta["step"]), "meta": meta, "tensors": tensors, "path": path}
        return None

    def _clear_previous_run(self) -> None:
        """A fresh run in a used folder: drop the old log, checkpoints and previews so they cannot
        be mistaken for this run's (the latent cache is keyed by content and stays)."""
        self.log_path.unlink(missing_ok=True)
        for path in self._checkpoint_files():
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
        if self.preview_dir.is_dir():
            for path in self.preview_dir.glob("step-*.png"):
                path.unlink(missing_ok=True)

    def _append_log(self, record: dict) -> None:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def _truncate_log(self, step: int) -> None:
        """Drop log lines of steps after the checkpoint we resume from (they will be redone)."""
        if not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():  # garbage lines dropped
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
        atomic_write_text(self.log_path, "".join(line + "\n" for line in kept))

    # -- events

    def _emit(self, event: TrainEvent) -> None:
        if event.total == 0:
            event.total = self.config.total_steps
        if self.on_event is not None:
            self.on_event(event)

    def _wait_if_paused(self, step: int, total: int) -> None:
        if not self.paused:
            return
        self._emit(TrainEvent("log", step=step, total=total, message="paused"))
        while self.paused and not self._cancel_requested():
            self._running.wait(timeout=0.05)  # wakes at once on unpause(); polls paused()
            if self._running.is_set() and self.paused:
                time.sleep(0.05)
        if not self._cancel_requested():
            self._emit(TrainEvent("log", step=step, total=total, message="resumed"))
