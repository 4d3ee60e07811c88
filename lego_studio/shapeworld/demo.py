"""The demo: Lego vs Textual Inversion on one Shape World concept, in a few minutes on a CPU.

    lego-studio demo --out demo/            # ~300 steps per method
    lego-studio demo --out demo/ --quick    # a smoke run in well under a minute

:func:`build_demo_project` makes a project folder with renders of one subject showing a concept,
their exact subject masks and the subject's words (the desktop app offers it on first run; it
needs no torch). :func:`run_demo` trains a Lego concept and the Textual Inversion baseline on it
(same steps, same seed, the Shape World model), draws both on held-out subjects, and writes::

    <out>/project/               the project (exemplars, masks, runs/<id>/ of both trainings)
    <out>/concepts/lego.safetensors, ti.safetensors
    <out>/images/<method>-<subject>-seed<k>.png    every image, prompt and seed in its PNG chunks
    <out>/gallery.png            rows = subjects, columns = Lego | TI (each seed)
    <out>/index.html             the images, their prompts and the judge's verdict on each
"""

from __future__ import annotations

import html
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lego_studio.core.errors import ModelError
from lego_studio.shapeworld.benchmark import EXEMPLAR_SUBJECTS
from lego_studio.shapeworld.world import CAPTION_TEMPLATES, subject_phrase

# A cage around the subject: the concept where Lego's win over Textual Inversion is plainest to see
# with partial words (measured: Lego 8/8 against TI 0/8 at 300 steps with the masks' colour added
# to "a star", 6/8 with the words as typed; with "frozen in ice" and "a circle" the earlier defaults
# drew only a faint ice block, 2/8). TI draws the exemplar's star in the
# cage instead of the requested subject; Lego draws the requested one.
DEMO_CONCEPT = "in a cage"
# (shape, colour): the benchmark's exemplar subject for the concept, a yellow star.
DEMO_SUBJECT = EXEMPLAR_SUBJECTS[DEMO_CONCEPT]
# The project names its subject the way a real user would: partly. "a star" leaves the colour
# out, as "a cat" leaves out which cat; Lego must keep the yellow of the exemplars out of the concept.
DEMO_TRACK = "no-colour"
DEMO_STEPS = 300
QUICK_STEPS = 20
DEMO_SEED = 0
GEN_SEEDS = (1000, 1001)
QUICK_GEN_STEPS = 8
GEN_STEPS = 20
GUIDANCE = 5.0
MODEL_TRAINING_HINT = (
    "train it with: python -m lego_studio.shapeworld.model_training --out resources/models/shapeworld "
    "--judge-out resources/judge --minutes 30"
)


def demo_train_defaults(concept: str, subject: tuple[str, str], steps: int = DEMO_STEPS) -> dict:
    """TrainConfig fields the project suggests (the app's training form reads them): the Shape
    World caption templates, and Shape World subjects for the context loss."""
    from lego_studio.shapeworld.benchmark import context_subjects, held_out_subjects

    evaluation = held_out_subjects(concept, subject, 4)
    return {"steps": steps, "templates": list(CAPTION_TEMPLATES),
            "context_subjects": context_subjects(subject, evaluation)}


def build_demo_project(folder, concept: str = DEMO_CONCEPT, subject: tuple[str, str] = DEMO_SUBJECT, n_images: int = 5,
                       seed: int = 0, track: str = DEMO_TRACK):
    """A new project in ``folder`` (must not exist or be empty) with ``n_images`` renders of
    ``subject`` showing ``concept``, their exact masks, the subject's words (partial ones, as a
    user writes them, on ``track``; see benchmark.TRACKS) and the concept's name.

    No positive words: the demo, like the benchmark, never tells the trainer what the concept is."""
    from lego_studio.core.errors import InputError
    from lego_studio.core.project import Project
    from lego_studio.shapeworld.benchmark import exemplar_subject, render_exemplars, subject_words
    from lego_studio.shapeworld.world import CONCEPTS

    if concept not in CONCEPTS:
        exemplar_subject(concept)  # raises the one-line "unknown concept" error
    shape, colour = subject
    if not 1 <= int(n_images) <= 20:
        raise InputError(f"{folder}: a demo project needs 1-20 images (got {n_images})")
    project = Project.create(folder, name=f"{concept.capitalize()} (Shape World demo)", subject=subject_words(subject, track),
                             concept_name=concept.replace(" ", "-"), train_defaults=demo_train_defaults(concept, subject))
    renders = render_exemplars(concept, subject, int(n_images), seed=seed)
    with tempfile.TemporaryDirectory(prefix="lego-demo-") as tmp:
        files = []
        for index, (image, _) in enumerate(renders, start=1):
            path = Path(tmp) / f"{colour}-{shape}-{index:02d}.png"
            image.save(path, format="PNG")
            files.append(path)
        failures = project.add_images(files)
        if failures:
            raise InputError(f"{failures[0][0]}: {failures[0][1]}")
    for entry, (_, mask) in zip(project.images, renders):
        project.save_mask(entry, mask)
    return project


@dataclass
class DemoResult:
    out_dir: Path
    project: object
    concepts: dict  # method -> concept file
    images: list = field(default_factory=list)  # [{method, subject, seed, prompt, file, verdict}]
    gallery: Path | None = None
    index: Path | None = None
    seconds: float = 0.0
    judge_note: str = ""
    closest: str = ""  # Lego's closest words and which is the look the subject words left out
    trained_with: str = ""  # what Lego's run added to the subject words (Colour from masks); "" when nothing


def _load_shapeworld(model: str, device: str):
    from lego_studio.core.model_specs import shapeworld_model_dir
    from lego_studio.core.models import load_model

    if model == "shapeworld" and not shapeworld_model_dir().is_dir():
        raise ModelError(f"{shapeworld_model_dir()}: the Shape World model is missing; {MODEL_TRAINING_HINT}")
    return load_model(model, device=device)


def run_demo(out_dir, steps: int | None = None, device: str = "auto", on_progress: Callable | None = None, quick: bool = False,
             model: str = "shapeworld", judge: str | None = None, seed: int = DEMO_SEED, threads: int = 1) -> DemoResult:
    """Train Lego and TI on the demo project and write the side-by-side gallery (see module doc).

    ``on_progress(stage, done, total)`` is called as work advances: stage "lego" or "ti" (training
    steps), "generate" (images). ``quick`` makes a smoke run (few steps, 2 subjects x 1 seed).
    ``threads``: torch CPU threads while it runs (see benchmark_runner.torch_threads; 0 = leave as is)."""
    from lego_studio.shapeworld.benchmark_runner import torch_threads

    with torch_threads(threads):
        return _run_demo(out_dir, steps, device, on_progress, quick, model, judge, seed)


def _run_demo(out_dir, steps, device, on_progress, quick, model, judge, seed) -> DemoResult:

    from lego_studio.core.concepts import save_concept
    from lego_studio.core.generation import make_grid, save_generated
    from lego_studio.core.run_service import RunPlan, start_run
    from lego_studio.core.train_config import TrainConfig
    from lego_studio.shapeworld.benchmark import benchmark_prompt, held_out_subjects
    from lego_studio.shapeworld.benchmark_runner import generate_images

    started = time.time()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        from lego_studio.core.errors import InputError

        raise InputError(f"{out}: already exists and is not empty; choose a new --out folder")
    sw_model = _load_shapeworld(model, device)
    judge_model, judge_note = _try_judge(judge)
    progress = on_progress or (lambda stage, done, total: None)

    concept_phrase, subject = DEMO_CONCEPT, DEMO_SUBJECT
    project = build_demo_project(out / "project", concept_phrase, subject)
    images, masks = project.training_inputs()
    evaluation = held_out_subjects(concept_phrase, subject, 2 if quick else 4)
    gen_seeds = GEN_SEEDS[:1] if quick else GEN_SEEDS
    gen_steps = QUICK_GEN_STEPS if quick else GEN_STEPS
    steps = int(steps) if steps is not None else (QUICK_STEPS if quick else DEMO_STEPS)

    defaults = project.train_defaults
    configs = {
        "lego": TrainConfig.preset("lego", name=project.concept_name, subject=project.subject, steps=steps, seed=seed,
                                   templates=defaults["templates"], context_subjects=defaults["context_subjects"],
                                   checkpoint_every=0),
        # Its own name, so both concepts can sit in one library; the placeholder is one added
        # token either way, so its spelling never reaches the text encoder.
        "ti": TrainConfig.preset("ti", name=f"{project.concept_name}-ti", steps=steps, seed=seed, templates=defaults["templates"],
                                 checkpoint_every=0),
    }
    concepts, files = {}, {}
    for method, config in configs.items():
        run_dir = project.new_run_dir()

        def on_event(event, method=method):
            if event.kind == "step":
                progress(method, event.step, event.total)

        run_masks = masks if method == "lego" else None
        inputs = {"images": images, "masks": run_masks, "model": model, "device": device,
                  "out": str(out / "concepts" / f"{method}.safetensors")}
        # The trainer records its end state in run.json.
        concepts[method] = start_run(RunPlan(sw_model, config, images, run_masks, run_dir, inputs=inputs), on_event)
        files[method] = save_concept(concepts[method], out / "concepts" / f"{method}.safetensors")

    records = []
    total = len(configs) * len(evaluation) * len(gen_seeds)
    for method, concept in concepts.items():
        prompts = [benchmark_prompt(shape, colour, concept.placeholder) for shape, colour in evaluation for _ in gen_seeds]
        seeds = [s for _ in evaluation for s in gen_seeds]
        made = generate_images(sw_model, concept, prompts, seeds, gen_steps, GUIDANCE)
        for (request, image), (shape, colour) in zip(made, [p for p in evaluation for _ in gen_seeds]):
            name = f"{method}-{colour}-{shape}-seed{request.seed}.png"
            save_generated(image, out / "images" / name, request)
            records.append({"method": method, "subject": subject_phrase(shape, colour), "shape": shape, "colour": colour,
                            "seed": request.seed, "prompt": request.prompt, "file": f"images/{name}", "image": image,
                            "verdict": None})
            progress("generate", len(records), total)
    if judge_model is not None:
        from lego_studio.shapeworld.judge import judge as run_judge

        for record, verdict in zip(records, run_judge([r["image"] for r in records], judge_model)):
            record["verdict"] = {"shape": verdict.shape, "colour": verdict.colour, "concept": verdict.concept,
                                 "ok": verdict.concept == concept_phrase and verdict.shape == record["shape"]
                                 and verdict.colour == record["colour"]}

    # gallery.png: rows = subjects; columns = Lego (each seed) then TI (each seed)
    methods = list(configs)
    cells, columns = [], [f"{'Lego' if m == 'lego' else 'TI'} seed {s}" for m in methods for s in gen_seeds]
    by_key = {(r["method"], r["subject"], r["seed"]): r["image"] for r in records}
    rows = [subject_phrase(shape, colour) for shape, colour in evaluation]
    for row in rows:
        cells += [by_key[(m, row, s)] for m in methods for s in gen_seeds]
    grid = make_grid(cells, rows=len(rows), columns=len(columns), row_labels=[f"{r} + concept" for r in rows],
                     column_labels=columns, min_cell=128)
    from lego_studio.core.paths import atomic_save, atomic_write_text

    gallery = atomic_save(out / "gallery.png", lambda tmp: grid.save(tmp, format="PNG"))
    elapsed = time.time() - started
    closest = closest_words_line(list(concepts["lego"].metadata.get("closest_words") or []), subject, project.subject)
    trained_with = trained_with_line(project.subject, concepts["lego"].metadata)
    index = atomic_write_text(out / "index.html", _index_html(project, records, steps, elapsed, judge_note, gen_steps,
                                                              closest, trained_with))
    for record in records:
        record.pop("image")
    return DemoResult(out_dir=out, project=project, concepts=files, images=records, gallery=gallery, index=index,
                      seconds=elapsed, judge_note=judge_note, closest=closest, trained_with=trained_with)


def _try_judge(path):
    """The judge, or None with the reason: the demo still works without it, only unverdicted."""
    from lego_studio.core.errors import LegoError
    from lego_studio.shapeworld.judge import load_judge

    try:
        return load_judge(path), ""
    except LegoError as exc:
        return None, f"no judge verdicts: {exc}"


def closest_words_line(closest: list[str], exemplar: tuple[str, str], subject_words: str) -> str:
    """What the demo says about Lego's closest words: the words, and which of them is the
    exemplars' own look that the subject words left out (when one is)."""
    if not closest:
        return ""
    said = set(subject_words.lower().split())
    left_out = [w for w in closest if w in exemplar and w not in said]
    line = f"Closest words to Lego's concept: {', '.join(closest)}."
    if left_out:
        line += (f" \u201c{left_out[0]}\u201d is the subject's own look, left out of the words \u201c{subject_words}\u201d: it "
                 "went into the concept. In the app a click adds it to the subject words for the next run.")
    return line


def trained_with_line(subject_words: str, metadata: dict) -> str:
    """What the demo says when Lego's run (its concept's ``metadata``) added to the subject words
    from the masks (``mask_colour``, ``mask_shape``); "" when it trained with the words as typed."""
    from lego_studio.core.separation import masks_added, trained_with

    training_subject = trained_with(metadata)
    if training_subject is None:
        return ""
    added = masks_added(metadata)
    said = []
    if added["colour"]:
        said.append("name no colour, so it added the colour the masks mark (the setting Colour from masks, on by default)")
    if added["name"]:
        said.append(f"do not say what the subject is, so it added \u201c{added['name']}\u201d, whose drawings have the "
                    "masks' outline (the setting Shape from masks, on by default)")
    return (f"Lego trained with the subject words \u201c{training_subject}\u201d: the words \u201c{subject_words}\u201d "
            + "; and they ".join(said) + ".")


def _index_html(project, records: list, steps: int, seconds: float, judge_note: str, gen_steps: int,
                closest: str = "", trained_with: str = "") -> str:
    e = html.escape
    exemplars = "".join(
        f'<figure><img src="project/{e(entry.file)}" width="128"><img src="project/{e(entry.mask)}" width="128">'
        f"<figcaption>{e(entry.name)} + mask</figcaption></figure>"
        for entry in project.images
    )
    rows = []
    subjects = list(dict.fromkeys(r["subject"] for r in records))
    for subject in subjects:
        cells = []
        for r in (r for r in records if r["subject"] == subject):
            verdict = r["verdict"]
            if verdict is None:
                text = "not judged"
            else:
                mark = "✔" if verdict["ok"] else "✘"
                text = f"{mark} judge: {verdict['colour']} {verdict['shape']}, {verdict['concept']}"
            cells.append(f'<td><img src="{e(r["file"])}" width="128"><br><code>{e(r["prompt"])}</code>'
                         f"<br>{'Lego' if r['method'] == 'lego' else 'TI'}, seed {r['seed']}<br>{e(text)}</td>")
        rows.append(f"<tr><th>{e(subject)}</th>{''.join(cells)}</tr>")
    scores = []
    for method in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == method and r["verdict"] is not None]
        if mine:
            ok = sum(r["verdict"]["ok"] for r in mine)
            scores.append(f"{'Lego' if method == 'lego' else 'TI'}: {ok}/{len(mine)} images with the right subject and concept")
    summary = "; ".join(scores) if scores else e(judge_note or "no judge")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Lego Studio demo: {e(project.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} img{{image-rendering:pixelated;border:1px solid #ccc}}
figure{{display:inline-block;margin:0 1em 1em 0}} td,th{{padding:.5em;vertical-align:top;text-align:center}}</style></head>
<body>
<h1>Lego vs Textual Inversion: “{e(project.concept_name)}”</h1>
<p>Both methods learned the concept from the exemplars below, {steps} steps each, same seed.
Lego got the subject's masks and the words “{e(project.subject)}”, which, like a real user's words, leave part of
the subject out (here its colour); neither got the concept's words. Then both drew subjects they never saw
with the prompt “a {{colour}} {{shape}} &lt;concept&gt;” ({gen_steps} DDIM steps). Wall time {seconds:.0f} s.</p>
<p>{e(trained_with)}</p>
<p><b>Judge:</b> {summary}</p>
<p>{e(closest)}</p>
<h2>Exemplars</h2>
{exemplars}
<h2>Held-out subjects</h2>
<table>{''.join(rows)}</table>
</body></html>
"""


class TerminalProgress:
    """A one-line progress bar on stderr for ``run_demo(on_progress=...)``. When the stream is not
    a terminal (a CI log, a pipe) it writes one plain line per tenth instead of redrawing, so logs
    stay short."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.stage = None
        self.started = time.time()
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_tenth = -1

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            if self.stage is not None and self.interactive:
                self.stream.write("\n")
            self.stage, self.started, self.last_tenth = stage, time.time(), -1
        filled = int(self.width * done / max(total, 1))
        elapsed = time.time() - self.started
        eta = elapsed / done * (total - done) if done else 0.0
        label = {"lego": "training Lego", "ti": "training TI", "generate": "drawing"}.get(stage, stage)
        line = f"{label:<14} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {elapsed:4.0f}s eta {eta:4.0f}s"
        if self.interactive:
            self.stream.write("\r" + line + ("\n" if done >= total else ""))
        else:
            tenth = 10 * done // max(total, 1)
            if tenth != self.last_tenth:
                self.stream.write(line + "\n")
                self.last_tenth = tenth
        if done >= total:
            self.stage = None
        self.stream.flush()
