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
  Separation), 1 vector, ``L_rec`` over the whole image, ``L_ctx`` with other subjects over the whole
  latent (``L_words`` is inactive: there are no positive words). ``L_subj`` and the masked
  ``L_rec`` are off by default: on the tuning concepts they stopped the concept from being learned
  (benchmarks/tune_lego_defaults.py, README).
* ``lego-mask`` — the defaults with the masks used: ``L_ctx`` compared outside the subject mask.
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
verdict on every image) and ``samples/<concept>/<method>-seed<k>.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import random
import re
import shlex
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from lego_studio.core.errors import InputError
from lego_studio.core.paths import atomic_save, atomic_write_json, atomic_write_text
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

ALL_METHODS: tuple[str, ...] = ("ti-1", "ti-N", "lego", "lego-mask", "lego-no-subj", "lego-no-ctx", "lego-N")
QUICK_METHODS: tuple[str, ...] = ("ti-1", "lego")
METRICS: tuple[str, ...] = ("concept_fidelity", "subject_fidelity", "success", "leakage", "colour_leakage",
                             "shape_leakage", "diversity")
METRIC_HELP = {
    "concept_fidelity": "judge's concept == the exemplars' concept",
    "subject_fidelity": "judge's shape and colour == the requested ones",
    "success": "concept and subject both right",
    "leakage": "judge sees the exemplar's shape or colour instead of the requested one (lower is better)",
    "colour_leakage": "judge sees the exemplar's colour instead of the requested one (lower is better)",
    "shape_leakage": "judge sees the exemplar's shape instead of the requested one (lower is better)",
    "diversity": "mean absolute pixel difference between seeds of one prompt (0-1)",
}

# Defaults of the full run. The step count is an upper bound: the plan lowers it to fit
# --budget-minutes from the step cost measured on this machine (never below MIN_STEPS).
DEFAULT_STEPS = 150  # the tuning runs used 150; more did not need testing (1.00 concept on tuning)
MIN_STEPS = 50
DEFAULT_LR = 5e-3
DEFAULT_VECTORS = 4
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_GEN_SEEDS = (1000, 1001, 1002, 1003)
DEFAULT_GEN_STEPS = 15  # DDIM; fewer than evaluate.py's 30 because drawing is about a third of the CPU budget
DEFAULT_GUIDANCE = 5.0
DEFAULT_BUDGET_MINUTES = 55.0  # three tracks; the issue allows 60 on the 2-core CPU
# Neutral name for every learned concept: the placeholder is one added token, so its spelling
# never reaches the text encoder, but a neutral name keeps the prompts honest to read.
PLACEHOLDER_NAME = "sw-concept"
GENERATION_BATCH = 32


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
                           "Lego with its defaults: 1 vector, subject words before the concept in every prompt, "
                           "L_rec over the whole image, L_ctx (weight 0.2) with other subjects over the whole latent "
                           "(masks given, but no default term uses them: see lego-mask)"),
        "lego-mask": MethodSpec("lego-mask", "lego", {"ctx_region": "outside"}, True,
                                "Lego with the masks used: L_ctx compared outside the subject mask"),
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
# subject completely ("a cat" for their own cat), so besides the full description there are two
# partial tracks, each leaving one attribute unexplained:
#   full       "a green hexagon"  the words say everything (the words alone can separate)
#   no-colour  "a hexagon"        the colour is left out
#   no-shape   "a green thing"    the shape is left out. "thing" is the generic noun a person uses for
#              an object they cannot name; the Shape World model never saw it (its text encoder only
#              learned the seven shape nouns), so it says nothing about the shape, just as "a cat"
#              says nothing about which cat.
TRACKS: tuple[str, ...] = ("full", "no-colour", "no-shape")
PARTIAL_TRACKS: tuple[str, ...] = ("no-colour", "no-shape")
TRACK_HELP = {
    "full": "subject words describe the exemplar completely (\"a green hexagon\")",
    "no-colour": "the colour is left out of the subject words (\"a hexagon\")",
    "no-shape": "the shape is left out of the subject words (\"a green thing\")",
}


def subject_words(exemplar: tuple[str, str], track: str = "full") -> str:
    """The subject words the trainer gets on ``track`` for an exemplar (shape, colour)."""
    shape, colour = exemplar
    if track == "full":
        return subject_phrase(shape, colour)
    if track == "no-colour":
        return f"{article(shape)} {shape}"
    if track == "no-shape":
        return f"{article(colour)} {colour} thing"
    raise InputError(f"unknown benchmark track {track!r}; choose from {', '.join(TRACKS)}")


def train_config(spec: MethodSpec, exemplar: tuple[str, str], evaluation: Sequence[tuple[str, str]],
                 steps: int, seed: int, lr: float = DEFAULT_LR, track: str = "full"):
    """The TrainConfig of one benchmark run. No positive or init words: the concept's name never
    reaches the trainer. ``track`` decides how much of the subject its words describe."""
    from lego_studio.core.training import TrainConfig

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


# ------------------------------------------------------------------------------ generation


def generate_images(model, concept, prompts: Sequence[str], seeds: Sequence[int], steps: int,
                    guidance: float, negative_prompt: str = "", scheduler: str = "ddim",
                    batch_size: int = GENERATION_BATCH):
    """One image per (prompt, seed) pair, in batches; returns [(GenerationRequest, PIL image)].

    The starting noise of each image is drawn exactly like core.generation.generate does (CPU
    generator seeded with the seed), so ``lego-studio generate`` with the same prompt, seed,
    steps and guidance redraws the same picture; batching only changes float rounding."""
    import torch

    from lego_studio.core.concepts import expand_prompt, install_concepts
    from lego_studio.core.generation import GenerationRequest, resolve_request

    if len(prompts) != len(seeds):
        raise ValueError("generate_images needs one seed per prompt")
    concepts = [concept] if concept is not None else []
    install_concepts(model, concepts)
    pipe = model.pipeline(scheduler)
    scale = int(model.vae_scale_factor)
    size = int(model.family.resolution)
    requests = [
        resolve_request(model, GenerationRequest(prompt=p, negative_prompt=negative_prompt, seed=int(s), steps=int(steps),
                                                 guidance=float(guidance), scheduler=scheduler), concepts)
        for p, s in zip(prompts, seeds)
    ]
    shape = (1, int(model.unet.config.in_channels), size // scale, size // scale)
    results = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        latents = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(r.seed), dtype=torch.float32)
                             for r in chunk]).to(device=model.device, dtype=model.unet.dtype)
        with torch.no_grad():
            prompt_kwargs = model.pipeline_prompt_kwargs([expand_prompt(r.prompt, concepts) for r in chunk],
                                                         [expand_prompt(r.negative_prompt, concepts) for r in chunk])
            images = pipe(**prompt_kwargs, height=size, width=size,
                          num_inference_steps=int(steps), guidance_scale=float(guidance), latents=latents,
                          output_type="pil").images
        results += list(zip(chunk, images))
    return results


# ------------------------------------------------------------------------------ scoring


def pixel_diversity(groups: Sequence[Sequence]) -> float:
    """Mean absolute pixel difference (0-1) between every pair of images within each group
    (images of one prompt, different seeds), averaged over the groups that have a pair."""
    import numpy as np

    values = []
    for group in groups:
        arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in group]
        pairs = [float(np.abs(a - b).mean()) for i, a in enumerate(arrays) for b in arrays[i + 1 :]]
        if pairs:
            values.append(sum(pairs) / len(pairs))
    return sum(values) / len(values) if values else 0.0


def score_predictions(predictions, requested: Sequence[tuple[str, str]], exemplar: tuple[str, str], concept: str) -> dict:
    """Concept / subject / success / leakage shares of a list of judge predictions, where
    ``requested[i]`` is the (shape, colour) prompted for image i."""
    n = len(predictions)
    if n == 0 or n != len(requested):
        raise ValueError("score_predictions needs one requested subject per prediction")
    ex_shape, ex_colour = exemplar
    concept_ok = subject_ok = success = leaked = colour_leaked = shape_leaked = 0
    for pred, (shape, colour) in zip(predictions, requested):
        c_ok = pred.concept == concept
        s_ok = pred.shape == shape and pred.colour == colour
        concept_ok += c_ok
        subject_ok += s_ok
        success += c_ok and s_ok
        # The requested subject never shares the exemplar's shape or colour, so seeing either is leakage.
        shape_leak = pred.shape == ex_shape and shape != ex_shape
        colour_leak = pred.colour == ex_colour and colour != ex_colour
        leaked += shape_leak or colour_leak
        shape_leaked += shape_leak
        colour_leaked += colour_leak
    return {"concept_fidelity": concept_ok / n, "subject_fidelity": subject_ok / n, "success": success / n,
            "leakage": leaked / n, "colour_leakage": colour_leaked / n, "shape_leakage": shape_leaked / n}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(rows: Sequence[dict], split: str | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    """{method: {metric: (mean, std)}}: per training seed, the mean over concepts (of ``split``,
    or all), then mean and std over seeds. Methods keep the order of ``rows``."""
    chosen = [r for r in rows if split is None or r["split"] == split]
    methods = list(dict.fromkeys(r["method"] for r in chosen))
    summary = {}
    for method in methods:
        mine = [r for r in chosen if r["method"] == method]
        seeds = list(dict.fromkeys(r["seed"] for r in mine))
        summary[method] = {}
        for metric in METRICS:
            per_seed = []
            for seed in seeds:
                values = [float(r[metric]) for r in mine if r["seed"] == seed]
                per_seed.append(sum(values) / len(values))
            summary[method][metric] = mean_std(per_seed)
    return summary


# ------------------------------------------------------------------------------ config and plan


@dataclass
class BenchmarkConfig:
    concepts: list[str] = field(default_factory=lambda: list(HELD_OUT_CONCEPTS))
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    steps: int | None = None  # None: DEFAULT_STEPS, lowered to fit the budget
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
    tracks: list[str] = field(default_factory=lambda: list(TRACKS))
    jobs: int = 1  # worker processes (one torch thread each by default)

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


def estimate_seconds(config: BenchmarkConfig, steps: int, step_seconds: dict[str, float], generation: float, overhead: float) -> float:
    """Wall time of the whole run: every job's training, drawing and set-up, shared by the workers."""
    specs = {s.name: s for s in resolve_methods(config.methods, config.num_vectors)}
    per_seed_concept = sum((steps * cost + generation + overhead) * (len(config.tracks) if specs[name].uses_words else 1)
                           for name, cost in step_seconds.items() if name in specs)
    return per_seed_concept * len(config.seeds) * len(config.concepts) / max(1, int(config.jobs))


def choose_steps(config: BenchmarkConfig, step_seconds: dict[str, float], generation: float, overhead: float) -> tuple[int, str]:
    """--steps if given, else the most steps (<= DEFAULT_STEPS, >= MIN_STEPS) that fit the budget."""
    budget = config.budget_minutes * 60
    if config.steps is not None:
        estimate = estimate_seconds(config, config.steps, step_seconds, generation, overhead)
        return config.steps, ("" if estimate <= budget else "WARNING: --steps does not fit the budget")
    fixed = estimate_seconds(config, 0, step_seconds, generation, overhead)
    per_step = estimate_seconds(config, 1, step_seconds, generation, overhead) - fixed
    fitting = int((budget - fixed) / per_step) if per_step > 0 else DEFAULT_STEPS
    steps = max(MIN_STEPS, min(DEFAULT_STEPS, fitting))
    note = ""
    if fitting < MIN_STEPS:
        note = f"WARNING: even {MIN_STEPS} steps exceed the budget; fewer concepts/methods/seeds would fit"
    elif steps < DEFAULT_STEPS:
        note = f"steps lowered from {DEFAULT_STEPS} to fit the budget"
    return steps, note


# ------------------------------------------------------------------------------ the run


@dataclass
class RunResult:
    row: dict
    images: list  # PIL images, subject-major (subject i, generation seed j)
    requests: list
    predictions: list


def _train(model, config, images, masks, run_dir: Path, on_step: Callable | None = None):
    from lego_studio.core.training import Trainer

    def on_event(event):
        if on_step is not None and event.kind == "step":
            on_step(event)

    trainer = Trainer(model, config, images, masks, run_dir, on_event=on_event)
    return trainer.run()


def measure_costs(model, config: BenchmarkConfig, specs: Sequence[MethodSpec], work_dir: Path, log: Callable) -> tuple[dict, float, float]:
    """Seconds per training step of each method (a few real steps each, the first not counted),
    seconds of one run's generation, and the per-run setup overhead, on this machine."""
    concept = config.concepts[0]
    exemplar = exemplar_subject(concept)
    renders = render_exemplars(concept, exemplar, config.n_exemplars)
    images, masks = [im for im, _ in renders], [m for _, m in renders]
    evaluation = held_out_subjects(concept, exemplar, config.n_subjects)
    probe_steps = 3
    step_seconds, overheads = {}, []
    for spec in specs:
        stamps = []
        started = time.perf_counter()
        cfg = train_config(spec, exemplar, evaluation, probe_steps, seed=0, lr=config.lr)
        _train(model, cfg, images, masks if spec.uses_masks else None, work_dir / f"probe-{spec.name}",
               on_step=lambda e: stamps.append(time.perf_counter()))
        total = time.perf_counter() - started
        step_seconds[spec.name] = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        overheads.append(max(0.0, total - probe_steps * step_seconds[spec.name]))
    n_images = config.n_subjects * len(config.gen_seeds)
    timings = {}
    for probe_gen_steps in (1, 3):  # two lengths separate the per-step cost from the fixed one (decode, encode)
        started = time.perf_counter()
        generate_images(model, None, ["a red square"] * n_images, list(range(n_images)), probe_gen_steps, config.guidance)
        timings[probe_gen_steps] = time.perf_counter() - started
    per_step = max(0.0, (timings[3] - timings[1]) / 2)
    generation = max(0.0, timings[1] - per_step) + per_step * config.gen_steps
    overhead = sum(overheads) / len(overheads)
    log(f"measured: {', '.join(f'{k} {v:.3f} s/step' for k, v in step_seconds.items())}; generation {generation:.1f} s per run")
    return step_seconds, generation, overhead


def run_one(model, judge_model, spec: MethodSpec, concept: str, seed: int, steps: int, config: BenchmarkConfig,
            work_dir: Path, renders, on_step: Callable | None = None, track: str = "full") -> RunResult:
    """Train ``spec`` on the concept's exemplars (subject words of ``track``), draw the held-out
    subjects, judge them."""
    from lego_studio.shapeworld.judge import judge

    exemplar = exemplar_subject(concept)
    evaluation = held_out_subjects(concept, exemplar, config.n_subjects)
    images, masks = [im for im, _ in renders], [m for _, m in renders]
    cfg = train_config(spec, exemplar, evaluation, steps, seed, lr=config.lr, track=track)
    run_dir = work_dir / track / _slug(concept) / f"{spec.name}-seed{seed}"
    started = time.perf_counter()
    learned = _train(model, cfg, images, masks if spec.uses_masks else None, run_dir, on_step)
    trained = time.perf_counter()
    requested = [pair for pair in evaluation for _ in config.gen_seeds]
    prompts = [benchmark_prompt(shape, colour, learned.placeholder) for shape, colour in requested]
    seeds = [s for _ in evaluation for s in config.gen_seeds]
    made = generate_images(model, learned, prompts, seeds, config.gen_steps, config.guidance)
    generated = time.perf_counter()
    pictures = [im for _, im in made]
    predictions = judge(pictures, judge_model)
    scores = score_predictions(predictions, requested, exemplar, concept)
    k = len(config.gen_seeds)
    scores["diversity"] = pixel_diversity([pictures[i : i + k] for i in range(0, len(pictures), k)])
    row = {
        "track": track,
        "concept": concept,
        "split": concept_split(concept),
        "method": spec.name,
        "seed": seed,
        "steps": steps,
        "num_vectors": cfg.num_vectors,
        "exemplar": subject_phrase(*exemplar),
        "subject_words": cfg.subject if spec.preset == "lego" else "",
        "subjects": "; ".join(subject_phrase(*pair) for pair in evaluation),
        "n_images": len(pictures),
        **{m: round(float(scores[m]), 4) for m in METRICS},
        "train_s": round(trained - started, 2),
        "generate_s": round(generated - trained, 2),
        "final_loss": _final_loss(run_dir),
    }
    return RunResult(row, pictures, [r for r, _ in made], predictions)


def _final_loss(run_dir: Path) -> float | None:
    """Mean total loss of the last 10% of steps (from the run's log), or None without a log."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return None
    losses = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            losses.append(float(json.loads(line)["losses"]["total"]))
        except (ValueError, KeyError, TypeError):
            continue
    tail = losses[-max(1, len(losses) // 10) :]
    return round(sum(tail) / len(tail), 5) if tail else None


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "-", text.lower()).strip("-")


@contextmanager
def torch_threads(count: int | None):
    """Run the block with ``count`` torch CPU threads (0 or None: leave torch's choice), then
    restore the previous count. The Shape World model is tiny: a second intra-op thread gains
    little, and on a busy 2-core machine OpenMP threads waiting on each other made a UNet call
    ~30x slower (measured: 0.05 s with 1 thread, 1.9 s with 2), so the commands default to 1."""
    import torch

    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        if count:
            torch.set_num_threads(before)


@dataclass(frozen=True)
class Job:
    """One training run of the benchmark: a method on a concept with a seed, on a track."""

    concept: str
    seed: int
    spec: MethodSpec
    track: str

    @property
    def row_name(self) -> str:
        """The method as shown in the contact sheet: with its track where the track matters."""
        return f"{self.track}: {self.spec.name}" if self.spec.uses_words else self.spec.name


def plan_jobs(config: BenchmarkConfig, specs: Sequence[MethodSpec]) -> list[Job]:
    """Every run, in order: concept, seed, method, track. A method that never sees the subject
    words runs once (on the first track) and stands for all of them."""
    jobs = []
    for concept in config.concepts:
        for seed in config.seeds:
            for spec in specs:
                for track in (config.tracks if spec.uses_words else config.tracks[:1]):
                    jobs.append(Job(concept, int(seed), spec, track))
    return jobs


def _sorted_rows(rows: list[dict], config: BenchmarkConfig, specs: Sequence[MethodSpec]) -> list[dict]:
    """Rows in plan order whatever order parallel workers finished them in."""
    methods = [s.name for s in specs]
    return sorted(rows, key=lambda r: (config.tracks.index(r["track"]), config.concepts.index(r["concept"]),
                                       config.seeds.index(r["seed"]), methods.index(r["method"])))


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_image(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def _execute_job(model, judge_model, config: BenchmarkConfig, steps: int, job: Job, work: Path, out: Path) -> dict:
    """Run one job and write its sample sheet; return its row, images (PNG bytes) and the judge's
    verdicts as JSON lines, all plain data so that a worker process can send them back."""
    renders = render_exemplars(job.concept, exemplar_subject(job.concept), config.n_exemplars)
    result = run_one(model, judge_model, job.spec, job.concept, job.seed, steps, config, work / "runs", renders, track=job.track)
    sheet_dir = out / "samples" / (job.track if job.spec.uses_words else "any-track")
    _save_run_sheet(sheet_dir, job.concept, job.spec.name, job.seed, result, config)
    predictions = [json.dumps({
        "track": job.track if job.spec.uses_words else "any", "concept": job.concept, "method": job.spec.name,
        "seed": job.seed, "prompt": request.prompt, "generation_seed": request.seed,
        "judged": {"shape": p.shape, "colour": p.colour, "concept": p.concept}})
        for request, p in zip(result.requests, result.predictions)]
    return {"row": result.row, "images": [_png_bytes(im) for im in result.images], "predictions": predictions}


_WORKER: dict = {}


def _worker_start(config: BenchmarkConfig, work: str, out: str) -> None:
    """Worker process set-up: its own model and judge, and ``config.threads`` torch threads."""
    import torch

    from lego_studio.core.models import load_model
    from lego_studio.shapeworld.judge import load_judge

    if config.threads:
        torch.set_num_threads(int(config.threads))
    _WORKER.update(config=config, work=Path(work), out=Path(out), judge=load_judge(config.judge),
                   model=load_model(config.model, device=config.device, precision="fp32" if config.device == "cpu" else "auto"))


def _worker_run(task: tuple[int, Job, int]) -> tuple[int, dict]:
    index, job, steps = task
    w = _WORKER
    return index, _execute_job(w["model"], w["judge"], w["config"], steps, job, w["work"] / f"worker-{os.getpid()}", w["out"])


def _run_jobs(model, judge_model, config: BenchmarkConfig, steps: int, jobs: list[Job], work: Path, out: Path):
    """Yield (job, result) as runs finish: in this process, or in ``config.jobs`` worker processes
    (each loads its own model; results are the same as in-process, only their order differs)."""
    if config.jobs <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield job, _execute_job(model, judge_model, config, steps, job, work, out)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no forked torch/OpenMP state
    with context.Pool(min(config.jobs, len(jobs)), initializer=_worker_start, initargs=(config, str(work), str(out))) as pool:
        for index, result in pool.imap_unordered(_worker_run, [(i, job, steps) for i, job in enumerate(jobs)]):
            yield jobs[index], result


def run_benchmark(config: BenchmarkConfig, out_dir, log: Callable[[str], None] = print, command: str | None = None) -> dict:
    """Run the benchmark described by ``config`` and write its outputs to ``out_dir``.

    Returns the summary dict also written to ``benchmark.json``."""
    with torch_threads(config.threads):
        return _run_benchmark(config, out_dir, log, command)


def _run_benchmark(config: BenchmarkConfig, out_dir, log: Callable[[str], None], command: str | None) -> dict:
    import torch

    from lego_studio.core.models import load_model
    from lego_studio.shapeworld.judge import load_judge

    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = resolve_methods(config.methods, config.num_vectors)
    started = time.time()
    judge_model = load_judge(config.judge)  # fails fast, before any training, when missing
    model = load_model(config.model, device=config.device, precision="fp32" if config.device == "cpu" else "auto")
    log(f"model {config.model} ({model.family.name}, {model.family.resolution} px) on {model.device}, "
        f"{torch.get_num_threads()} CPU thread(s)")

    with tempfile.TemporaryDirectory(prefix="lego-benchmark-") as tmp:
        work = Path(tmp)
        step_seconds, generation, overhead = measure_costs(model, config, specs, work / "probe", log)
        steps, note = choose_steps(config, step_seconds, generation, overhead)
        jobs = plan_jobs(config, specs)
        runs_total = len(jobs)
        plan = Plan(steps=steps, runs=runs_total, step_seconds=step_seconds, generation_seconds=generation,
                    overhead_seconds=overhead, estimated_seconds=estimate_seconds(config, steps, step_seconds, generation, overhead),
                    budget_seconds=config.budget_minutes * 60, note=note)
        log(plan.describe())

        rows, samples, prediction_lines = [], {}, []
        for concept in config.concepts:
            samples[("exemplars", concept)] = [im for im, _ in render_exemplars(concept, exemplar_subject(concept), config.n_exemplars)]
        done = 0
        for job, result in _run_jobs(model, judge_model, config, steps, jobs, work, out):
            done += 1
            r = result["row"]
            log(f"[{done}/{len(jobs)}] {job.track if job.spec.uses_words else 'any track'} | {job.concept} | {job.spec.name} | "
                f"seed {job.seed}: concept {r['concept_fidelity']:.2f} subject {r['subject_fidelity']:.2f} "
                f"leakage {r['leakage']:.2f} (colour {r['colour_leakage']:.2f}, shape {r['shape_leakage']:.2f}) "
                f"({r['train_s']:.0f} s train, {r['generate_s']:.0f} s draw; {(time.time() - started) / 60:.1f} min so far)")
            # A run that does not see the subject words stands for every track.
            for track in (config.tracks if not job.spec.uses_words else [job.track]):
                rows.append({**r, "track": track})
            write_csv(out / "results.csv", _sorted_rows(rows, config, specs))  # after every run: an interrupted benchmark keeps its rows
            if job.seed == config.seeds[0]:
                samples[(job.row_name, job.concept)] = [_png_image(data) for data in result["images"]]
            prediction_lines += result["predictions"]
        rows = _sorted_rows(rows, config, specs)
    elapsed = time.time() - started
    summary = {
        "format": "lego-studio-shapeworld-benchmark/1",
        "command": command or "",
        "config": asdict(config),
        "protocol": {
            "templates": list(CAPTION_TEMPLATES),
            "prompt": "a {colour} {shape} <concept> (every method)",
            "methods": {s.name: s.description for s in specs},
            "exemplar_subjects": {c: subject_phrase(*exemplar_subject(c)) for c in config.concepts},
            "held_out_subjects": {c: [subject_phrase(*p) for p in held_out_subjects(c, exemplar_subject(c), config.n_subjects)]
                                  for c in config.concepts},
            "splits": {"tuning": list(TUNING_CONCEPTS), "held-out": list(HELD_OUT_CONCEPTS)},
            "metrics": METRIC_HELP,
        },
        "plan": asdict(plan),
        "timing": {"total_seconds": round(elapsed, 1), "runs": [{k: r[k] for k in ("concept", "method", "seed", "train_s", "generate_s")}
                                                                 for r in rows]},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "device": str(model.device),
                        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine()},
        "summary": {track: {split: summarize([r for r in rows if r["track"] == track], split)
                            for split in dict.fromkeys(r["split"] for r in rows)} for track in config.tracks},
    }
    write_csv(out / "results.csv", rows)
    atomic_write_text(out / "results.md", results_markdown(rows, summary, config, plan, elapsed))
    row_names = list(dict.fromkeys(job.row_name for job in plan_jobs(config, specs)))
    sheet = contact_sheet(samples, row_names, config.concepts, config.n_subjects, len(config.gen_seeds))
    atomic_save(out / "contact.png", lambda tmp: sheet.save(tmp, format="PNG"))
    atomic_write_text(out / "predictions.jsonl", "".join(line + "\n" for line in prediction_lines))
    atomic_write_json(out / "benchmark.json", summary)
    log(f"done in {elapsed / 60:.1f} min; wrote {out / 'results.md'}")
    return summary


def _save_run_sheet(folder: Path, concept: str, method: str, seed: int, result: RunResult, config: BenchmarkConfig) -> None:
    from lego_studio.core.generation import make_grid

    k = len(config.gen_seeds)
    subjects = [result.requests[i].prompt.rsplit(" ", 1)[0] for i in range(0, len(result.requests), k)]
    grid = make_grid(result.images, rows=len(subjects), columns=k, row_labels=subjects,
                     column_labels=[f"seed {s}" for s in config.gen_seeds], min_cell=96)
    atomic_save(folder / _slug(concept) / f"{method}-seed{seed}.png", lambda tmp: grid.save(tmp, format="PNG"))


# ------------------------------------------------------------------------------ outputs


CSV_FIELDS = ("track", "concept", "split", "method", "seed", "steps", "num_vectors", "exemplar", "subject_words", "subjects", "n_images",
              *METRICS, "train_s", "generate_s", "final_loss")


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in CSV_FIELDS})
    return atomic_write_text(path, buffer.getvalue())


def _cell(value: tuple[float, float]) -> str:
    mean, std = value
    return f"{mean:.2f} ± {std:.2f}"


def verdict(split_summary: dict) -> str:
    """One line comparing Lego with the best Textual Inversion run on ``success`` ("" when either
    is missing). Differences within the larger of the two standard deviations count as a tie."""
    if "lego" not in split_summary:
        return ""
    tis = {m: v for m, v in split_summary.items() if m.startswith("ti-")}
    if not tis:
        return ""
    best_ti = max(tis, key=lambda m: tis[m]["success"][0])
    (lego_mean, lego_std), (ti_mean, ti_std) = split_summary["lego"]["success"], tis[best_ti]["success"]
    margin = max(lego_std, ti_std)
    outcome = "Lego ahead" if lego_mean - ti_mean > margin else "TI ahead" if ti_mean - lego_mean > margin else "no clear winner"
    leak = f"; leakage {split_summary['lego']['leakage'][0]:.2f} vs {tis[best_ti]['leakage'][0]:.2f}"
    return (f"**Verdict: {outcome}** — success lego {lego_mean:.2f} ± {lego_std:.2f} vs best TI ({best_ti}) "
            f"{ti_mean:.2f} ± {ti_std:.2f}{leak}.")


def results_markdown(rows: Sequence[dict], summary: dict, config: BenchmarkConfig, plan: Plan, elapsed: float) -> str:
    lines = ["# Shape World benchmark: Lego vs Textual Inversion", ""]
    if config.quick:
        lines += ["**Quick (CI) run: too few steps, seeds and images to mean anything; it checks the plumbing.**", ""]
    lines += [
        f"Model `{config.model}`, {plan.steps} training steps, lr {config.lr:g}, {config.n_exemplars} exemplars of one subject per concept, "
        f"{config.n_subjects} held-out subjects x {len(config.gen_seeds)} seeds per run ({config.gen_steps} DDIM steps, "
        f"guidance {config.guidance:g}), training seeds {', '.join(map(str, config.seeds))}. "
        f"Wall time {elapsed / 60:.1f} min.",
        "",
        "Every image is prompted `a {colour} {shape} <concept>`; the held-out subjects share neither shape nor colour "
        "with the exemplars. The trainer gets the exemplars' subject words, never the concept's words. "
        "Tracks: " + "; ".join(f"**{t}**: {TRACK_HELP[t]}" for t in config.tracks) + ". TI and lego-no-subj never see "
        "the subject words, so one run of each stands in every track.",
        "",
        "Values: mean ± std over training seeds (of the per-seed mean over concepts). "
        + " ".join(f"**{m}**: {h}." for m, h in METRIC_HELP.items()),
        "",
    ]
    titles = {"held-out": "Held-out concepts (reported)", "tuning": "Tuning concepts (used to pick the defaults)",
              "extra": "Other concepts (neither tuning nor default held-out)"}
    for track in config.tracks:
        for split in ("held-out", "tuning", "extra"):
            if split not in summary["summary"][track]:
                continue
            concepts = sorted({r["concept"] for r in rows if r["split"] == split}, key=config.concepts.index)
            lines += [f"## Track {track}, {titles[split].lower()}: {', '.join(concepts)}", "",
                      f"Subject words: {TRACK_HELP[track]}.", "",
                      "| method | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
            for method, values in summary["summary"][track][split].items():
                lines.append(f"| {method} | " + " | ".join(_cell(values[m]) for m in METRICS) + " |")
            lines.append("")
            text = verdict(summary["summary"][track][split])
            if text:
                lines += [text, ""]
    lines += ["## Per concept (mean over training seeds)", "", "| track | concept | split | method | " + " | ".join(METRICS) + " |",
              "|---|---|---|---|" + "---|" * len(METRICS)]
    for track in config.tracks:
        for concept in config.concepts:
            mine = [r for r in rows if r["concept"] == concept and r["track"] == track]
            for method in dict.fromkeys(r["method"] for r in mine):
                values = [r for r in mine if r["method"] == method]
                cells = [f"{sum(float(r[m]) for r in values) / len(values):.2f}" for m in METRICS]
                lines.append(f"| {track} | {concept} | {values[0]['split']} | {method} | " + " | ".join(cells) + " |")
    lines += ["", "## Methods", ""]
    for spec in resolve_methods(config.methods, config.num_vectors):
        lines.append(f"- **{spec.name}**: {spec.description}")
    lines += ["", "P" + plan.describe()[1:], "",
              "Files: `results.csv` (one row per run and track), `contact.png` (rows = methods per track, columns = samples per concept, "
              "training seed " + str(config.seeds[0]) + "), `samples/`, `predictions.jsonl`, `benchmark.json` (config, timing, command).", ""]
    return "\n".join(lines)


def contact_sheet(samples: dict, methods: Sequence[str], concepts: Sequence[str], n_subjects: int, n_gen_seeds: int):
    """Rows = the exemplars, then one per method; columns = one sample per held-out subject
    (first generation seed, first training seed) for each concept."""
    from PIL import Image

    from lego_studio.core.generation import make_grid

    columns, labels = [], []
    for concept in concepts:
        exemplar = exemplar_subject(concept)
        for shape, colour in held_out_subjects(concept, exemplar, n_subjects):
            labels.append(f"{concept}\n{colour} {shape}")
    cells = []
    for row_name in ["exemplars", *methods]:
        for concept in concepts:
            images = samples.get((row_name, concept), [])
            step = 1 if row_name == "exemplars" else n_gen_seeds
            picks = images[::step][:n_subjects]
            blank = Image.new("RGB", picks[0].size if picks else (64, 64), (255, 255, 255))
            cells += picks + [blank] * (n_subjects - len(picks))
    rows = ["exemplars", *methods]
    return make_grid(cells, rows=len(rows), columns=len(labels), row_labels=rows, column_labels=labels, min_cell=96)


# ------------------------------------------------------------------------------ command line


def add_arguments(parser) -> None:
    """The benchmark's flags (shared by ``lego-studio shapeworld benchmark`` and the script)."""
    parser.add_argument("--concepts", nargs="+", metavar="C",
                        help=f"concepts (dashes for spaces) or tuning / held-out / all (default: held-out = {', '.join(HELD_OUT_CONCEPTS)})")
    parser.add_argument("--methods", nargs="+", metavar="M", help=f"from {', '.join(ALL_METHODS)} (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="N", help="training seeds (default: 0 1 2)")
    parser.add_argument("--steps", type=int, metavar="N", help=f"training steps per run (default: up to {DEFAULT_STEPS}, fitted to the budget)")
    parser.add_argument("--vectors", type=int, default=DEFAULT_VECTORS, metavar="N", help="N of ti-N and lego (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="learning rate of every method (default: %(default)g)")
    parser.add_argument("--subjects", type=int, metavar="N", help="held-out subjects per run (default: 4)")
    parser.add_argument("--gen-seeds", nargs="+", type=int, metavar="N", help="generation seeds (default: 1000-1003)")
    parser.add_argument("--gen-steps", type=int, metavar="N", help=f"DDIM steps per image (default: {DEFAULT_GEN_STEPS})")
    parser.add_argument("--guidance", type=float, help=f"classifier-free guidance (default: {DEFAULT_GUIDANCE:g})")
    parser.add_argument("--model", default="shapeworld", help="model spec (default: the shipped Shape World model)")
    parser.add_argument("--judge", default=None, metavar="DIR", help="judge folder (default: resources/judge)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch CPU threads (default 1; 0 = torch's choice)")
    parser.add_argument("--budget-minutes", type=float, default=None, help=f"time budget the step count is fitted to (default: {DEFAULT_BUDGET_MINUTES:g})")
    parser.add_argument("--tracks", nargs="+", metavar="T", choices=TRACKS,
                        help="subject-word tracks: full, no-colour (\"a hexagon\"), no-shape (\"a green thing\") (default: all three)")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="worker processes, each with --threads torch threads (default: 2 on a machine with 2+ cores, else 1)")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 1 concept, ti-1 vs lego, 10 steps, 1 seed, 2 subjects x 2 seeds")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")


def config_from_args(args) -> BenchmarkConfig:
    given = {
        "concepts": args.concepts, "methods": args.methods, "seeds": args.seeds, "steps": args.steps,
        "n_subjects": args.subjects, "gen_seeds": args.gen_seeds, "gen_steps": args.gen_steps, "guidance": args.guidance,
        "budget_minutes": args.budget_minutes, "tracks": args.tracks,
        "jobs": args.jobs if args.jobs is not None else (1 if args.quick else min(2, os.cpu_count() or 1)),
    }
    common = {"num_vectors": args.vectors, "lr": args.lr, "model": args.model, "judge": args.judge, "device": args.device,
              "threads": args.threads}
    if args.quick:
        return BenchmarkConfig.quick_config(**given, **common)
    return BenchmarkConfig(**{k: v for k, v in given.items() if v is not None}, **common)


def run_from_args(args) -> int:
    config = config_from_args(args)
    # The command as the user typed it (set by the front end that parsed it), for reproduction.
    command = shlex.join(getattr(args, "invocation", None) or [Path(sys.argv[0]).name, *sys.argv[1:]])
    run_benchmark(config, args.out, log=lambda message: print(message, flush=True), command=command)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    from lego_studio.core.errors import LegoError

    parser = argparse.ArgumentParser(prog="shapeworld_benchmark", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.invocation = ["python benchmarks/shapeworld_benchmark.py", *(sys.argv[1:] if argv is None else argv)]
    try:
        return run_from_args(args)
    except LegoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
