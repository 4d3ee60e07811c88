"""Starting a training run: the one sequence the ``train`` command, the app's Training page, the
Shape World demo and the benchmark share.

    runs.create_run(run_dir, inputs, config)    # first, before the model loads: a failed load is recorded
    plan = plan_run(model, config, images, masks, run_dir, inputs=inputs, ...)
    for note in plan.notes: ...                  # before anything runs: each front end shows them its way
    concept = start_run(plan, on_event, cancel=..., paused=...)

:func:`plan_run` works out, before any step: on a resume, the memory settings an out-of-memory stop
named (core/oom.py); the memory settings that fit the free memory (core/memory.py); a note on images
much smaller than the training size or far from square; for a Shape World model, a note on pictures
it does not know; and the expected duration from a step time measured earlier on this machine.
:func:`start_run` records the run with the settings it will use, builds the
:class:`~lego_studio.core.training.Trainer`, runs it and times its steps (core/estimate.py), so the
next run of the same kind has its estimate before it starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lego_studio.core.estimate import Estimate, StepClock, estimate_from_cache
from lego_studio.core.train_config import TrainConfig
from lego_studio.core.training import Trainer

CHECKING_MEMORY = "checking how much memory a step needs…"


def as_sentence(text: str) -> str:
    """``"memory: turned on ..."`` -> ``"Memory: turned on ...."``: a note as the app shows it."""
    return text[0].upper() + text[1:] + "." if text else ""


@dataclass(frozen=True)
class PlanNote:
    kind: str  # "memory" (settings fitted or taken from an out-of-memory stop), "image-size", "foreign-images"
    text: str  # one line, lower-case start, no final period
    warning: bool = False  # the CLI prints "warning: " before it


@dataclass
class RunPlan:
    """Everything a run needs, worked out before it starts. Made by :func:`plan_run`, or directly
    where nothing is to be planned (the benchmark's runs)."""

    model: Any  # a loaded SDModel
    config: TrainConfig  # the settings the run uses (memory settings fitted)
    images: list
    masks: list | None
    run_dir: Path
    inputs: dict | None = None  # what runs.create_run records (paths, model, device); None: not recorded here
    subject_images: list = field(default_factory=list)
    resume: bool = False
    explicit: set = field(default_factory=set)  # memory settings the user chose: never changed
    notes: list[PlanNote] = field(default_factory=list)
    figure_key: str | None = None  # estimate.figure_key of the run as asked; None: not timed
    estimate: Estimate | None = None  # from a figure measured earlier on this machine

    @property
    def concept_path(self) -> Path:
        """Where the trained concept is written (the Trainer's concept_path)."""
        return Path(self.run_dir) / "concept.safetensors"


def plan_run(model, config: TrainConfig, images, masks, run_dir, *, inputs: dict | None = None, subject_images=None,
             resume: bool = False, explicit=(), fit_memory: bool = True, figure_key: str | None = None,
             foreign_images: Callable[[list], str | None] | None = None,
             on_log: Callable[[str], None] | None = None) -> RunPlan:
    """The plan of a run of ``config`` on the loaded ``model``; nothing is written or trained.

    ``fit_memory``: turn on the memory savings the free memory needs (settings in ``explicit`` are
    kept). ``foreign_images(images)``: for a Shape World model, a warning when the pictures are not
    Shape World renders (``shapeworld.recognise.foreign_images_warning``; core does not import
    shapeworld). ``on_log(line)`` hears of the slow part (tracing a step's memory) before it runs."""
    from lego_studio.core.images import image_size_note
    from lego_studio.core.memory import fit_config, planning_takes_a_while
    from lego_studio.core.model_specs import is_shapeworld
    from lego_studio.core.oom import apply_oom_hint, describe_changes

    explicit = set(explicit)
    run_dir = Path(run_dir)
    notes: list[PlanNote] = []
    fitted = config
    if resume:
        fitted, applied = apply_oom_hint(fitted, run_dir, explicit)
        if applied:
            notes.append(PlanNote("memory", f"memory: resuming with {describe_changes(applied)} "
                                            "(the run ran out of memory before)"))
    if fit_memory:
        if on_log is not None and planning_takes_a_while(model):  # seconds for SDXL (core/memory_trace.py)
            on_log(CHECKING_MEMORY)
        memory = fit_config(model, fitted, explicit)
        fitted = memory.config
        if memory.note:
            notes.append(PlanNote("memory", memory.note))
    size_note = image_size_note(images, int(fitted.resolution or model.family.resolution))
    if size_note:
        notes.append(PlanNote("image-size", size_note, warning=True))
    if foreign_images is not None and is_shapeworld(model):
        warning = foreign_images(images)
        if warning:
            notes.append(PlanNote("foreign-images", warning, warning=True))
    estimate = None
    if figure_key is not None:
        from lego_studio.core.subject_name import marks_any, probe_steps_for

        probe = probe_steps_for(fitted, marks_any(masks))
        estimate = estimate_from_cache(figure_key, fitted.total_steps, fitted.total_steps, model.device.type,
                                       probe_steps=probe)
    return RunPlan(model, fitted, list(images), list(masks) if masks is not None else None, run_dir, inputs=inputs,
                   subject_images=list(subject_images or []), resume=resume, explicit=explicit, notes=notes,
                   figure_key=figure_key, estimate=estimate)


def start_run(plan: RunPlan, on_event: Callable | None = None, *, cancel: Callable[[], bool] | None = None,
              paused: Callable[[], bool] | None = None, on_estimate: Callable[[Estimate], None] | None = None):
    """Record the run (when ``plan.inputs`` is given), train it and return the Concept.

    ``on_event(TrainEvent)`` streams the trainer's events; ``cancel()`` / ``paused()`` are polled
    between steps (see :class:`~lego_studio.core.training.Trainer`); ``on_estimate(Estimate)`` hears
    the expected duration once the first steps are timed (when ``plan.figure_key`` is set).
    Raises what :meth:`Trainer.run` raises (Cancelled, OutOfMemory, TrainingError ...)."""
    from lego_studio.core import runs

    if plan.inputs is not None:
        runs.create_run(plan.run_dir, plan.inputs, plan.config)  # with the settings the run uses
    clock = StepClock(plan.figure_key, plan.model.device.type) if plan.figure_key is not None else None

    def events(event):
        if on_event is not None:
            on_event(event)
        guess = clock.observe(event) if clock is not None else None
        if guess is not None and guess.steps_left and on_estimate is not None:
            on_estimate(guess)

    trainer = Trainer(plan.model, plan.config, plan.images, plan.masks, plan.run_dir,
                      subject_images=plan.subject_images or None, on_event=events, cancel=cancel, paused=paused)
    trainer.explicit_settings = set(plan.explicit)
    try:
        return trainer.run(resume=plan.resume)
    finally:
        if clock is not None:
            clock.finish()
