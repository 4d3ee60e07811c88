"""The Shape World benchmark: does Lego beat Textual Inversion on concepts that are not objects?

    lego-studio shapeworld benchmark --out bench/            # the default (reported) run
    lego-studio shapeworld benchmark --quick --out /tmp/q    # CI smoke run, < 1 minute on CPU

Protocol, per concept and training seed:

1. **Exemplars.** ``n_exemplars`` renders of ONE subject (shape x colour, :data:`EXEMPLAR_SUBJECTS`)
   showing the concept, each with its exact subject mask (the shape's own pixels).
2. **Training.** Every method learns the concept from those renders. The trainer is told the
   subject's words ("a red square") and never the concept's: no positive words, no init words
   (vectors start at the norm-matched vocabulary mean). Prompt templates are the Shape World
   caption templates (the words the model was trained on); Lego's context subjects are other
   Shape World subjects that are neither the exemplar's nor the evaluation subjects.
3. **Generation.** The learned concept is drawn on held-out subjects — a shape AND a colour both
   different from the exemplar's (:func:`held_out_subjects`) — with the prompt
   ``"a {colour} {shape} <concept>"`` for every method (TI's placeholder is composed with the
   subject exactly like Lego's), ``n_subjects`` subjects x ``gen_seeds`` seeds.
4. **Judging.** The Shape World judge reads shape, colour and concept of every image.

Methods (:func:`method_specs`; ``N`` = ``--vectors``, default 4):

* ``ti-1``  — Textual Inversion: 1 vector, the placeholder alone in the training prompt, loss
  over the whole image, no masks, no subject words.
* ``ti-N``  — the same with N vectors.
* ``lego``  — Lego with its defaults: subject words before the concept in every prompt (Subject
  Separation; with the masks' colour added to words that name none, and the word for what the
  subject is, found by a probe run and the masks' outline, to words that do not say it), 1 vector, ``L_rec`` over the
  whole image, ``L_ctx`` with other subjects over the whole latent (``L_words`` is inactive: there
  are no positive words). ``L_subj`` and the masked
  ``L_rec`` are off by default: on the tuning concepts they stopped the concept from being learned
  (benchmarks/tune_lego_defaults.py, docs/METHOD.md).
* ``lego-no-masks`` — the defaults without the masks: the subject words as typed (the masks'
  default uses are to complete the subject words: ``mask_colour``, ``mask_shape``).
* ``lego-mask`` — the defaults with the masks used by ``L_ctx`` too: compared outside the subject mask.
* ``lego-no-subj`` — no Subject Separation: the subject words are left out of the training prompts
  (``subject_in_prompt=False``), so the concept must also explain the exemplar's appearance;
  ``L_ctx`` stays on.
* ``lego-no-ctx``  — ``w_ctx = 0``; everything else as ``lego``.
* ``lego-N``       — ``lego`` with N vectors (default 4).

Metrics per run (all in [0, 1]): **concept** fidelity (judge's concept == the exemplars'),
**subject** fidelity (judge's shape and colour == the requested ones), **success** (both),
**leakage** (the judge sees the exemplar's shape or the exemplar's colour instead of the
requested one) and **diversity** (mean absolute pixel difference between the images of one
prompt drawn with different seeds, averaged over prompts). Tables give mean ± std over training
seeds of the per-seed mean over concepts.

Concept split: :data:`TUNING_CONCEPTS` (one concept around the subject, one on it) were used to
pick the defaults (Lego's masked terms, context weight, steps); :data:`HELD_OUT_CONCEPTS` are the reported ones and the default run.

Outputs in ``--out``: ``results.md``, ``results.csv`` (one row per run), ``contact.png``,
``benchmark.json`` (config, plan, timing, the exact command), ``predictions.jsonl`` (the judge's
verdict on every image) and ``samples/<track or any-track>/<concept>/<method>-seed<k>.png``.

Code: this module holds the protocol's definitions (concepts, exemplar and held-out subjects,
tracks and subject words, methods, :class:`BenchmarkConfig`, :class:`Plan`, :func:`train_config`);
``benchmark_runner`` runs it (:func:`~lego_studio.shapeworld.benchmark_runner.run_benchmark`: worker
processes, one run's training, drawing, judging and scoring), ``benchmark_report`` writes the tables, CSV and
sheets, ``benchmark_cli`` holds the flags and ``main``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Sequence

from lego_studio.core.errors import InputError
from lego_studio.core.train_config import TrainConfig
from lego_studio.shapeworld.world import (
    CAPTION_TEMPLATES,
    COLOUR_NAMES,
    CONCEPTS,
    SHAPES,
    article,
    is_held_out,
    subject_phrase,
)


# Concepts used to choose the defaults below; never reported as results.
TUNING_CONCEPTS: tuple[str, ...] = ("frozen in ice", "shattered")
# Concepts the default run reports. Two, so that 6 methods x 3 seeds fit the 45-minute CPU budget;
# the other Shape World concepts can be run with --concepts and are marked "extra".
HELD_OUT_CONCEPTS: tuple[str, ...] = ("in a cage", "melting")

# The one subject each concept's exemplars show. None of these is a held-out triple of the base
# model, so the exemplars look like what the model was trained on.
EXEMPLAR_SUBJECTS: dict[str, tuple[str, str]] = {
    "frozen in ice": ("circle", "red"),
    "in a cage": ("star", "yellow"),
    "on fire": ("circle", "blue"),
    "inside a bubble": ("triangle", "green"),
    "melting": ("heart", "purple"),
    "spinning": ("cross", "orange"),
    "shattered": ("hexagon", "green"),
    "casting a shadow": ("square", "yellow"),
}

ALL_METHODS: tuple[str, ...] = ("ti-1", "ti-N", "lego", "lego-no-masks", "lego-mask", "lego-no-subj", "lego-no-ctx",
                                "lego-N")
QUICK_METHODS: tuple[str, ...] = ("ti-1", "lego")
# The default run: Lego against the baseline on every track and seed. The ablations (ALL_METHODS)
# are a separate run (--methods), so the default fits its budget at the product's step count.
DEFAULT_METHODS: tuple[str, ...] = ("ti-1", "lego")
METRICS: tuple[str, ...] = ("concept_fidelity", "subject_fidelity", "success", "leakage", "colour_leakage",
                             "shape_leakage", "colour_drift", "diversity")
METRIC_HELP = {
    "concept_fidelity": "judge's concept == the exemplars' concept",
    "subject_fidelity": "judge's shape and colour == the requested ones",
    "success": "concept and subject both right",
    "leakage": "judge sees the exemplar's shape or colour instead of the requested one (lower is better)",
    "colour_leakage": "judge sees the exemplar's colour instead of the requested one (lower is better)",
    "shape_leakage": "judge sees the exemplar's shape instead of the requested one (lower is better)",
    "colour_drift": "judge sees a colour that is neither the requested one nor the exemplar's but nearer the "
                    "exemplar's in hue than the requested one is: a partial colour leak (lower is better)",
    "diversity": "mean absolute pixel difference between seeds of one prompt (0-1)",
}

# Defaults of the full run.
# The product's own default (TrainConfig.steps): the benchmark measures what a user gets, at the
# length a user trains. --steps measures another length (the demo's, say).
DEFAULT_STEPS = int(TrainConfig.__dataclass_fields__["steps"].default)
DEFAULT_LR = 5e-3
DEFAULT_VECTORS = 4
DEFAULT_SEEDS = (0, 1, 2, 3, 4)  # five: decisions need the worst run, not only the mean
# A run whose concept fidelity is below this has collapsed: the concept does (almost) nothing.
COLLAPSE_BELOW = 0.5
DEFAULT_GEN_SEEDS = (1000, 1001, 1002, 1003)
DEFAULT_GEN_STEPS = 15  # DDIM; fewer than evaluate.py's 30 because drawing is about a third of the CPU budget
DEFAULT_GUIDANCE = 5.0
DEFAULT_BUDGET_MINUTES = 60.0  # the default run (TI-1 and Lego, every track, 5 seeds, --jobs 2) on a 2-core CPU
# Neutral name for every learned concept: the placeholder is one added token, so its spelling
# never reaches the text encoder, but a neutral name keeps the prompts honest to read.
PLACEHOLDER_NAME = "sw-concept"


# ------------------------------------------------------------------------------ protocol pieces


@dataclass(frozen=True)
class MethodSpec:
    name: str  # as reported: "ti-1", "ti-4", "lego", ...
    preset: str  # TrainConfig preset: "lego" | "ti"
    overrides: dict
    uses_masks: bool
    description: str

    @property
    def uses_words(self) -> bool:
        """Whether the subject words reach the trainer, i.e. whether the track changes the run
        (TI and Lego without Subject Separation never see them: one run serves every track)."""
        return self.preset == "lego" and self.overrides.get("subject_in_prompt", True)


def method_specs(num_vectors: int = DEFAULT_VECTORS) -> dict[str, MethodSpec]:
    """Every benchmark method by its CLI name (``ti-N`` is listed under that literal name)."""
    n = int(num_vectors)
    return {
        "ti-1": MethodSpec("ti-1", "ti", {"num_vectors": 1}, False,
                           "Textual Inversion, 1 vector: placeholder alone in the prompt, full-image loss, no masks"),
        "ti-N": MethodSpec(f"ti-{n}", "ti", {"num_vectors": n}, False, f"Textual Inversion with {n} vectors"),
        "lego": MethodSpec("lego", "lego", {}, True,
                           "Lego with its defaults: 1 vector, subject words before the concept in every prompt (with "
                           "the masks' colour added when they name none, and the subject's word, read through the "
                           "masks' outline, when they do not say what it is), L_rec over the whole image, L_ctx "
                           "(weight 0.2) with other subjects over the whole latent"),
        "lego-no-masks": MethodSpec("lego-no-masks", "lego", {}, False,
                                    "Lego with its defaults and no masks: the subject words as typed"),
        "lego-mask": MethodSpec("lego-mask", "lego", {"ctx_region": "outside"}, True,
                                "Lego with the masks used by L_ctx too: compared outside the subject mask"),
        "lego-no-subj": MethodSpec("lego-no-subj", "lego", {"subject_in_prompt": False}, False,
                                   "Lego without Subject Separation: the subject words are left out of the training "
                                   "prompts (L_ctx kept)"),
        "lego-no-ctx": MethodSpec("lego-no-ctx", "lego", {"w_ctx": 0.0}, True,
                                  "Lego without Context Loss (w_ctx=0)"),
        "lego-N": MethodSpec(f"lego-{n}", "lego", {"num_vectors": n}, True, f"Lego with {n} vectors"),
    }


def resolve_methods(names: Sequence[str], num_vectors: int = DEFAULT_VECTORS) -> list[MethodSpec]:
    """CLI method names -> specs. ``ti-N`` uses ``num_vectors``; ``ti-<k>`` asks for k vectors."""
    specs = method_specs(num_vectors)
    resolved = []
    for name in names:
        key = name.strip().lower()
        key = {"ti-n": "ti-N", "lego-n": "lego-N", f"lego-{int(num_vectors)}": "lego-N"}.get(key, key)
        match = re.fullmatch(r"ti-(\d+)", key)
        if key in specs:
            spec = specs[key]
        elif match and 1 <= int(match.group(1)) <= 16:
            spec = method_specs(int(match.group(1)))["ti-N"] if match.group(1) != "1" else specs["ti-1"]
        else:
            raise InputError(f"unknown benchmark method {name!r}; choose from {', '.join(ALL_METHODS)}")
        if spec.name in (s.name for s in resolved):
            raise InputError(f"benchmark method {spec.name!r} is listed twice")
        resolved.append(spec)
    if not resolved:
        raise InputError("give at least one benchmark method")
    return resolved


def resolve_concepts(names: Sequence[str]) -> list[str]:
    """Concept phrases from CLI words: a phrase, its dashed form, or 'tuning' / 'held-out' / 'all'."""
    by_key = {c.replace(" ", "-"): c for c in CONCEPTS}
    out: list[str] = []
    for name in names:
        key = name.strip().lower().replace(" ", "-").replace("_", "-")
        if key == "tuning":
            chosen = list(TUNING_CONCEPTS)
        elif key in ("held-out", "heldout"):
            chosen = list(HELD_OUT_CONCEPTS)
        elif key == "all":
            chosen = list(CONCEPTS)
        elif key in by_key:
            chosen = [by_key[key]]
        else:
            raise InputError(f"unknown Shape World concept {name!r}; known: {', '.join(CONCEPTS)} (or tuning, held-out, all)")
        out += [c for c in chosen if c not in out]
    if not out:
        raise InputError("give at least one concept")
    return out


def concept_split(concept: str) -> str:
    if concept in TUNING_CONCEPTS:
        return "tuning"
    if concept in HELD_OUT_CONCEPTS:
        return "held-out"
    return "extra"


def exemplar_subject(concept: str) -> tuple[str, str]:
    try:
        return EXEMPLAR_SUBJECTS[concept]
    except KeyError:
        raise InputError(f"unknown Shape World concept {concept!r}; known: {', '.join(CONCEPTS)}") from None


def render_exemplars(concept: str, subject: tuple[str, str], n: int, seed: int = 0):
    """``n`` renders of ``subject`` with ``concept``: list of (RGB image, uint8 mask 255 = subject)."""
    from lego_studio.shapeworld.render import render

    shape, colour = subject
    rng = random.Random(f"lego-benchmark/exemplars/{concept}/{shape}/{colour}/{seed}")
    return [render(shape, colour, concept, rng)[:2] for _ in range(n)]


def concept_inputs(concept: str, config: "BenchmarkConfig"):
    """One concept's protocol inputs: ``(exemplar subject, evaluation subjects, exemplar images,
    their masks)``, the same for every method, seed and track."""
    exemplar = exemplar_subject(concept)
    renders = render_exemplars(concept, exemplar, config.n_exemplars)
    evaluation = held_out_subjects(concept, exemplar, config.n_subjects)
    return exemplar, evaluation, [im for im, _ in renders], [m for _, m in renders]


def held_out_subjects(concept: str, exemplar: tuple[str, str], n: int) -> list[tuple[str, str]]:
    """``n`` (shape, colour) subjects whose shape AND colour both differ from the exemplar's.

    Preference order: combinations the base model never saw with this concept (its held-out
    triples, the hardest composition test), then different shapes and colours from one another,
    in a fixed seeded order so every run and every method uses the same subjects."""
    ex_shape, ex_colour = exemplar
    candidates = [(s, c) for s in SHAPES for c in COLOUR_NAMES if s != ex_shape and c != ex_colour]
    if n > len(candidates):
        raise InputError(f"at most {len(candidates)} held-out subjects exist for {concept!r}, not {n}")
    rng = random.Random(f"lego-benchmark/subjects/{concept}")
    rng.shuffle(candidates)
    candidates.sort(key=lambda sc: not is_held_out(sc[0], sc[1], concept))  # stable: keeps the shuffle
    chosen: list[tuple[str, str]] = []
    for shape, colour in candidates:  # first pass: no shape or colour twice
        if len(chosen) < n and all(shape != s and colour != c for s, c in chosen):
            chosen.append((shape, colour))
    for pair in candidates:
        if len(chosen) < n and pair not in chosen:
            chosen.append(pair)
    return chosen


def context_subjects(exemplar: tuple[str, str], evaluation: Sequence[tuple[str, str]]) -> list[str]:
    """Lego's context subjects: Shape World subjects other than the exemplar's and the evaluation
    subjects, so the context loss never trains on the prompts that are scored."""
    excluded = {tuple(exemplar), *map(tuple, evaluation)}
    return [subject_phrase(s, c) for s in SHAPES for c in COLOUR_NAMES if (s, c) not in excluded]


def benchmark_prompt(shape: str, colour: str, placeholder: str) -> str:
    """The generation prompt of every method: "a blue circle <sw-concept>"."""
    return f"{subject_phrase(shape, colour)} {placeholder}"


# What the trainer is told about the exemplars' subject. A real user's words never describe their
# subject completely ("a cat" for their own cat), so besides the full description there are partial
# tracks, each leaving something unexplained:
#   full             "a green hexagon"  the words say everything (the words alone can separate)
#   no-colour        "a hexagon"        the colour is left out
#   no-shape         "a green thing"    the shape is left out, with a generic noun. The Shape World
#   no-shape-object  "a green object"   model never saw these nouns (its text encoder only learned
#   no-shape-shape   "a green shape"    the seven shape nouns), so they say nothing about the shape,
#   no-shape-item    "a green item"     as "a cat" says nothing about which cat; results must hold
#                                       for every such noun, not for one wording.
#   no-words         ""                 no subject words at all: only the masks say what the subject is.
# and, outside the default run, other ways of leaving the shape out that the defaults were never
# tuned on (--tracks): "a green one", "something green", "green", "a big green one".
GENERIC_SHAPE_NOUNS: dict[str, str] = {"no-shape": "thing", "no-shape-object": "object", "no-shape-shape": "shape",
                                       "no-shape-item": "item"}
OTHER_NO_SHAPE_WORDINGS: dict[str, str] = {"no-shape-one": "a {colour} one", "no-shape-something": "something {colour}",
                                           "colour-only": "{colour}", "no-shape-big-one": "a big {colour} one"}
# The tracks of the default run: the full words, the colour left out, the shape left out with each
# generic noun, and no words.
DEFAULT_TRACKS: tuple[str, ...] = ("full", "no-colour", *GENERIC_SHAPE_NOUNS, "no-words")
TRACKS: tuple[str, ...] = (*DEFAULT_TRACKS, *OTHER_NO_SHAPE_WORDINGS)
PARTIAL_TRACKS: tuple[str, ...] = tuple(t for t in TRACKS if t != "full")
NO_SHAPE_TRACKS: tuple[str, ...] = tuple(GENERIC_SHAPE_NOUNS)
TRACK_HELP = {
    "full": "subject words describe the exemplar completely (\"a green hexagon\")",
    "no-colour": "the colour is left out of the subject words (\"a hexagon\")",
    **{track: f"the shape is left out of the subject words (\"a green {noun}\")" for track, noun in GENERIC_SHAPE_NOUNS.items()},
    "no-words": "no subject words at all; only the masks mark the subject",
    **{track: f"the shape is left out of the subject words (\"{wording.format(colour='green')}\"; not in the default run)"
       for track, wording in OTHER_NO_SHAPE_WORDINGS.items()},
}


def subject_words(exemplar: tuple[str, str], track: str = "full") -> str:
    """The subject words the trainer gets on ``track`` for an exemplar (shape, colour)."""
    shape, colour = exemplar
    if track == "full":
        return subject_phrase(shape, colour)
    if track == "no-colour":
        return f"{article(shape)} {shape}"
    if track in GENERIC_SHAPE_NOUNS:
        return f"{article(colour)} {colour} {GENERIC_SHAPE_NOUNS[track]}"
    if track == "no-words":
        return ""
    if track in OTHER_NO_SHAPE_WORDINGS:
        return OTHER_NO_SHAPE_WORDINGS[track].format(colour=colour)
    raise InputError(f"unknown benchmark track {track!r}; choose from {', '.join(TRACKS)}")


def train_config(spec: MethodSpec, exemplar: tuple[str, str], evaluation: Sequence[tuple[str, str]],
                 steps: int, seed: int, lr: float = DEFAULT_LR, track: str = "full"):
    """The TrainConfig of one benchmark run. No positive or init words: the concept's name never
    reaches the trainer. ``track`` decides how much of the subject its words describe."""
    from lego_studio.core.train_config import TrainConfig

    values = dict(
        name=PLACEHOLDER_NAME,
        steps=int(steps),
        seed=int(seed),
        lr=float(lr),
        templates=list(CAPTION_TEMPLATES),
        init_words=[],
        positive_words=[],
        checkpoint_every=0,
        preview_every=0,
    )
    if spec.preset == "lego":
        values.update(subject=subject_words(exemplar, track), context_subjects=context_subjects(exemplar, evaluation))
    values.update(spec.overrides)
    return TrainConfig.preset(spec.preset, **values)


def tuning_parser(description: str):
    """The command line every tuning script (benchmarks/method_pilot.py, oracle_landscape.py)
    starts from: --concepts, --threads, --allow-held-out, --out; each script adds its own."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--concepts", nargs="+", default=["tuning"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--allow-held-out", action="store_true")
    parser.add_argument("--out", required=True)
    return parser


def tuning_setup(parser, argv=None):
    """Parse a :func:`tuning_parser` command line and set up: the concepts (held-out ones refused,
    in one line, unless --allow-held-out: tune on the tuning ones), the benchmark protocol's
    config, the Shape World model on the CPU with --threads torch threads, and the output folder
    (made). Returns ``(args, concepts, config, model, out)``."""
    from pathlib import Path

    import torch

    from lego_studio.core.models import load_model

    args = parser.parse_args(argv)
    try:
        concepts = resolve_concepts(args.concepts)
    except InputError as exc:
        parser.error(str(exc))
    held = [c for c in concepts if concept_split(c) == "held-out"]
    if held and not args.allow_held_out:
        parser.error(f"{held} are held-out concepts; tune on the tuning ones (or pass --allow-held-out)")
    torch.set_num_threads(int(args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = BenchmarkConfig(concepts=concepts, device="cpu", threads=int(args.threads))
    return args, concepts, config, load_model("shapeworld", device="cpu", precision="fp32"), out


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "-", text.lower()).strip("-")


# ------------------------------------------------------------------------------ config and plan


@dataclass
class BenchmarkConfig:
    concepts: list[str] = field(default_factory=lambda: list(HELD_OUT_CONCEPTS))
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    steps: int | None = None  # None: DEFAULT_STEPS (the product's default)
    num_vectors: int = DEFAULT_VECTORS
    lr: float = DEFAULT_LR
    n_exemplars: int = 5
    n_subjects: int = 4
    gen_seeds: list[int] = field(default_factory=lambda: list(DEFAULT_GEN_SEEDS))
    gen_steps: int = DEFAULT_GEN_STEPS
    guidance: float = DEFAULT_GUIDANCE
    model: str = "shapeworld"
    judge: str | None = None  # None: resources/judge
    device: str = "auto"
    threads: int = 1
    budget_minutes: float = DEFAULT_BUDGET_MINUTES
    quick: bool = False
    tracks: list[str] = field(default_factory=lambda: list(DEFAULT_TRACKS))
    jobs: int = 1  # worker processes (one torch thread each by default)
    same_runs: bool = True  # a run whose settled words make it another track's run takes its result (runner.same_run_key)

    @classmethod
    def quick_config(cls, **overrides) -> "BenchmarkConfig":
        """CI smoke run: one concept, TI vs Lego, 10 steps, one seed, 2 subjects x 2 seeds."""
        values = dict(concepts=[TUNING_CONCEPTS[0]], methods=list(QUICK_METHODS), seeds=[0], steps=10, n_exemplars=5,
                      n_subjects=2, gen_seeds=[1000, 1001], gen_steps=5, quick=True, budget_minutes=1.0, tracks=["full"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def validate(self) -> "BenchmarkConfig":
        self.concepts = resolve_concepts(self.concepts)
        resolve_methods(self.methods, self.num_vectors)
        unknown = [t for t in self.tracks if t not in TRACKS]
        if unknown or not self.tracks:
            raise InputError(f"unknown benchmark track {unknown[0] if unknown else ''!r}; choose from {', '.join(TRACKS)}")
        if not 1 <= int(self.jobs) <= 64:
            raise InputError(f"--jobs must be 1-64 (got {self.jobs})")
        if not self.seeds:
            raise InputError("give at least one training seed (--seeds 0 1 2)")
        if len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"training seeds repeat: {self.seeds}")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"--steps must be at least 1 (got {self.steps})")
        if not 1 <= self.n_exemplars <= 20:
            raise InputError(f"exemplars must be 1-20 (got {self.n_exemplars})")
        if self.n_subjects < 1 or not self.gen_seeds:
            raise InputError("need at least one held-out subject and one generation seed")
        if self.gen_steps < 1 or self.budget_minutes <= 0:
            raise InputError("generation steps and --budget-minutes must be positive")
        return self


@dataclass
class Plan:
    steps: int
    runs: int
    step_seconds: dict[str, float]  # measured, per method
    generation_seconds: float  # measured, per run
    overhead_seconds: float  # measured, per run (encoding exemplars, setup)
    estimated_seconds: float
    budget_seconds: float
    note: str = ""

    def describe(self) -> str:
        costs = ", ".join(f"{m} {s:.3f}" for m, s in self.step_seconds.items())
        text = (f"plan: {self.runs} runs x {self.steps} steps; measured s/step: {costs}; "
                f"generation {self.generation_seconds:.1f} s/run; estimated total {self.estimated_seconds / 60:.1f} min "
                f"(budget {self.budget_seconds / 60:.0f} min)")
        return text + (f"; {self.note}" if self.note else "")
