"""The training settings: :class:`TrainConfig` (every option of a run, with its help, limits and
presets), the settings' descriptions the form and ``train --help`` are built from, and the
learning-rate schedule. Qt-free and model-free: the trainer lives in core/training.py."""


from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from lego_studio.core.errors import InputError
from lego_studio.core.paths import atomic_write_text
from lego_studio.core.prompts import (
    DEFAULT_CONTEXT_SUBJECTS,
    DEFAULT_LEGO_PREVIEW_PROMPTS,
    DEFAULT_TEMPLATES,
    DEFAULT_TI_PREVIEW_PROMPTS,
    appearance_words,
    check_template,
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
    # False for Lego: a mirrored exemplar is a different concept wherever the concept has a side
    # ("casting a shadow" to the lower right became a shadow to the lower left that the model never
    # drew; 4 of 5 runs collapsed with flips, 0 of 5 without; docs/METHOD.md, "No mirrored
    # exemplars"). ReVersion trains relations without flips for the same reason. The Textual
    # Inversion baseline keeps its usual recipe (flips on).
    flip: bool = field(default=False, metadata=describe(
        group="Optimisation", label="Random flips",
        help="also train on mirror images of the exemplars (off by default for Lego: a mirrored concept with a "
             "side, a shadow to the right or a jump to the left, is a different concept; on for the Textual "
             "Inversion baseline, its usual recipe)"))
    timestep_focus: float = field(default=1.0, metadata=describe(
        group="Optimisation", label="High-noise focus", minimum=0, maximum=1, decimals=2, step=0.1,
        help="draw training timesteps more often at high noise, where a picture's layout is decided (0 = uniform, "
             "as Textual Inversion does)",
        details="ReVersion's relation-focal sampling: a step's noise level t is drawn with density "
                "1 - a·cos(πt/T), a = this value: at 1 the highest noise levels come twice as often as with "
                "uniform sampling and the lowest almost never."))
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES), metadata=describe(
        group="Optimisation", label="Templates", min_items=1, list_separator=";", cli=False,
        help="prompt templates, each with one {} for the concept"))
    subject: str = field(default="", metadata=describe(
        group="Subject separation", label="Subject words", example="a toy robot",
        help='the subject in words, e.g. "a cat" or "a toy robot"',
        details="Lego keeps the subject out of the concept by these words: name the subject and its look as fully "
                "as you can (\"a red toy robot\", not \"an object\"). What they leave out (its colour, markings, exact "
                "shape) can end up in the concept; vague words get a warning before the run."))
    # True: with the colour left out of the subject words, the masks' colour put back into the
    # training prompts gave the held-out Shape World concepts the full-words result (docs/METHOD.md,
    # "The masks name the subject's colour, and training uses it").
    mask_colour: bool = field(default=True, metadata=describe(
        group="Subject separation", label="Colour from masks",
        help="with masks, when the subject words name no colour: add the colour most of the marked subject has "
             "to the training prompts (\"a star\" -> \"a yellow star\"), so it stays with the subject and out of "
             "the concept",
        details="Read from the masked pixels of every image with a mask: of the basic colour names at least twice "
                "as common inside the marks as outside, the one holding at least half of those pixels; nothing is "
                "added when no colour is clear, when the words already name one, or without masks. The run's log "
                "says what was added."))
    # True: with the shape left out of the subject words ("a purple object"), the word a short probe
    # run found for what the subject is gave the held-out Shape World concepts (docs/METHOD.md,
    # "Shape from masks").
    mask_shape: bool = field(default=True, metadata=describe(
        group="Subject separation", label="Shape from masks",
        help="with masks, when the subject words do not say what the subject is (\"a purple object\"): a short "
             "probe run finds the word for it among the concept's closest words, and training uses it "
             "(\"a purple heart\"), so the subject's shape stays out of the concept",
        details="The probe trains the concept for a fifth of the steps (at most 100) and takes its 5 closest words; "
                "the model draws the subject words with each in its plain form, and the word whose drawings have "
                "the outline of your masks (overlap at least 0.1 above the words' own drawings, and the best) says "
                "what the subject is. Then the run trains from the start with it. Nothing is added when no word "
                "fits, when the words name the subject, or without masks; the run's log says what was added and "
                "why."))
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
            return {"method": "ti", "num_vectors": 1, "w_subj": 0.0, "w_ctx": 0.0, "w_words": 0.0, "rec_region": "full",
                    "timestep_focus": 0.0, "flip": True}
        if method == "lego":  # Lego is what the field defaults describe
            defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
            return {key: defaults[key] for key in ("method", "num_vectors", "w_subj", "w_ctx", "w_words", "rec_region",
                                                   "timestep_focus", "flip")}
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


