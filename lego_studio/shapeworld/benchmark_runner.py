"""Running the Shape World benchmark (protocol: :mod:`lego_studio.shapeworld.benchmark`).

Planning (each method's step cost measured on this machine, the step count that fits the budget),
the jobs and the worker processes that run them, one run (train, draw the held-out subjects, judge,
score) and the whole benchmark, whose outputs :mod:`lego_studio.shapeworld.benchmark_report` writes.

The worker pool uses spawn: its entry points (``_worker_start``, ``_worker_run``) must stay
module-level functions of this module so that the workers can import them.
"""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from lego_studio.core.paths import atomic_save, atomic_write_json, atomic_write_text
from lego_studio.shapeworld.benchmark import (
    DEFAULT_STEPS,
    HELD_OUT_CONCEPTS,
    METRIC_HELP,
    METRICS,
    TUNING_CONCEPTS,
    BenchmarkConfig,
    MethodSpec,
    Plan,
    _slug,
    benchmark_prompt,
    concept_inputs,
    concept_split,
    exemplar_subject,
    held_out_subjects,
    render_exemplars,
    resolve_methods,
    train_config,
)
from lego_studio.shapeworld.benchmark_report import (
    _save_run_sheet,
    contact_sheet,
    results_markdown,
    robustness,
    summarize,
    write_csv,
)
from lego_studio.shapeworld.world import CAPTION_TEMPLATES, subject_phrase


# ------------------------------------------------------------------------------ generation


def generate_images(model, concept, prompts: Sequence[str], seeds: Sequence[int], steps: int,
                    guidance: float, negative_prompt: str = "", scheduler: str = "ddim"):
    """One image per (prompt, seed) pair: [(GenerationRequest, PIL image)]
    (core/generation.generate_batch, which draws exactly what ``lego-studio generate`` draws)."""
    from lego_studio.core.generation import generate_batch

    return generate_batch(model, [concept] if concept is not None else [], prompts, seeds, steps, guidance,
                          negative_prompt=negative_prompt, scheduler=scheduler)


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


def _hue(colour: str) -> float:
    import colorsys

    from lego_studio.shapeworld.world import COLOURS

    r, g, b = (c / 255.0 for c in COLOURS[colour])
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


def _hue_distance(a: str, b: str) -> float:
    d = abs(_hue(a) - _hue(b)) % 360.0
    return min(d, 360.0 - d)


def score_predictions(predictions, requested: Sequence[tuple[str, str]], exemplar: tuple[str, str], concept: str) -> dict:
    """Concept / subject / success / leakage shares of a list of judge predictions, where
    ``requested[i]`` is the (shape, colour) prompted for image i.

    Colour drift is the partial colour leak the exact-colour count misses: the judged colour is
    neither the requested one nor the exemplar's, but nearer the exemplar's in hue than the
    requested colour is (asked for green, exemplar yellow, drawn orange)."""
    n = len(predictions)
    if n == 0 or n != len(requested):
        raise ValueError("score_predictions needs one requested subject per prediction")
    ex_shape, ex_colour = exemplar
    concept_ok = subject_ok = success = leaked = colour_leaked = shape_leaked = drifted = 0
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
        drifted += (pred.colour not in (colour, ex_colour)
                    and _hue_distance(pred.colour, ex_colour) < _hue_distance(colour, ex_colour))
    return {"concept_fidelity": concept_ok / n, "subject_fidelity": subject_ok / n, "success": success / n,
            "leakage": leaked / n, "colour_leakage": colour_leaked / n, "shape_leakage": shape_leaked / n,
            "colour_drift": drifted / n}


# ------------------------------------------------------------------------------ plan


def estimate_seconds(config: BenchmarkConfig, steps: int, step_seconds: dict[str, float], generation: float, overhead: float) -> float:
    """Wall time of the whole run: every job's training, drawing and set-up, shared by the workers.
    A Lego run whose words do not say what the subject is also runs Shape from masks' probe (its
    steps, and about 1.5 runs' worth of drawing: core/subject_name.py). A run whose settled words
    make it an earlier track's run (``config.same_runs``) costs its set-up and probe only; the plan
    takes the masks to complete the words (the colour they mark, the probe the subject's name, as
    in every measured run: docs/BENCHMARK.md)."""
    from lego_studio.core.separation import completed_words, looks_for_subject_name
    from lego_studio.core.subject_name import CANDIDATES, DRAWINGS, probe_steps

    specs = {s.name: s for s in resolve_methods(config.methods, config.num_vectors)}
    shape, colour = "star", "yellow"  # any exemplar: the costs do not depend on it
    per_seed_concept = 0.0
    for name, cost in step_seconds.items():
        if name not in specs:
            continue
        spec = specs[name]
        keys = set()
        for track in (config.tracks if spec.uses_words else ["full"]):
            cfg = train_config(spec, (shape, colour), [], steps, 0, track=track)
            probes = spec.uses_masks and looks_for_subject_name(cfg)
            words = completed_words(cfg, colour, shape) if spec.uses_masks else cfg.subject
            key = same_run_key(cfg, words) if config.same_runs else None
            per_seed_concept += overhead + (0.0 if key is not None and key in keys else steps * cost + generation)
            keys.add(key)
            if probes:
                drawn = (1 + CANDIDATES) * DRAWINGS / (config.n_subjects * len(config.gen_seeds))
                per_seed_concept += probe_steps(steps) * cost + drawn * generation
    return per_seed_concept * len(config.seeds) * len(config.concepts) / max(1, int(config.jobs))


def choose_steps(config: BenchmarkConfig, step_seconds: dict[str, float], generation: float, overhead: float) -> tuple[int, str]:
    """--steps if given, else the product's default (DEFAULT_STEPS); a note when the run will not fit
    the budget. The step count is never lowered to fit: a shorter run measures another product."""
    steps = config.steps if config.steps is not None else DEFAULT_STEPS
    estimate = estimate_seconds(config, steps, step_seconds, generation, overhead)
    note = "" if estimate <= config.budget_minutes * 60 else (
        "WARNING: the run will not fit the budget; fewer concepts, methods, tracks or seeds, or more --jobs, would")
    return steps, note


# ------------------------------------------------------------------------------ the run


@dataclass
class RunResult:
    row: dict
    images: list  # PIL images, subject-major (subject i, generation seed j)
    requests: list
    predictions: list


def _train(model, config, images, masks, run_dir: Path, on_step: Callable | None = None,
           settled: Callable[[str], bool] | None = None):
    """Train one run (core/run_service.start_run, as every front end does). ``settled(words)`` hears
    the subject words the run trains with once they are settled, before its first step; True stops
    the run there (raises Cancelled): the benchmark has that run's result already."""
    from lego_studio.core.run_service import RunPlan, start_run

    stop = []

    def on_event(event):
        if on_step is not None and event.kind == "step":
            on_step(event)
        if settled is not None and event.kind == "words" and settled(event.message):
            stop.append(True)

    return start_run(RunPlan(model, config, images, masks, run_dir), on_event, cancel=lambda: bool(stop))


def same_run_key(config, words: str) -> str | None:
    """What decides a run's vectors once its subject words are settled: ``config`` with ``words``
    in place of the typed ones (Colour and Shape from masks only settle the words: a run that found
    "a yellow star" trains exactly as one typed with it, tests/test_subject_name.py). Two runs of one
    concept (the same exemplars and masks) with the same key train the same vectors and draw the
    same pictures, so the benchmark trains and draws them once. None: the typed words matter
    beyond the settled ones (a subject token starts from them), the run is never shared."""
    from dataclasses import replace

    if config.subject_token_steps:
        return None
    return json.dumps(asdict(replace(config, subject=words, mask_colour=False, mask_shape=False)), sort_keys=True,
                      default=str)


def measure_costs(model, config: BenchmarkConfig, specs: Sequence[MethodSpec], work_dir: Path, log: Callable) -> tuple[dict, float, float]:
    """Seconds per training step of each method (a few real steps each, the first not counted),
    seconds of one run's generation, and the per-run setup overhead, on this machine."""
    concept = config.concepts[0]
    exemplar, evaluation, images, masks = concept_inputs(concept, config)
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
            work_dir: Path, renders, on_step: Callable | None = None, track: str = "full",
            done: dict | None = None) -> RunResult:
    """Train ``spec`` on the concept's exemplars (subject words of ``track``), draw the held-out
    subjects, judge them. ``done``: {:func:`same_run_key`: RunResult} of this concept's finished
    runs; a run whose settled words make a key in it stops before its first step and takes that
    run's vectors, pictures and verdicts (its row says which track's run: ``same_as``); a run that
    trains is added to it."""
    from lego_studio.core.errors import Cancelled
    from lego_studio.shapeworld.judge import judge

    exemplar = exemplar_subject(concept)
    evaluation = held_out_subjects(concept, exemplar, config.n_subjects)
    images, masks = [im for im, _ in renders], [m for _, m in renders]
    cfg = train_config(spec, exemplar, evaluation, steps, seed, lr=config.lr, track=track)
    run_dir = work_dir / track / _slug(concept) / f"{spec.name}-seed{seed}"
    key = None  # same_run_key of the settled words

    def settled(words: str) -> bool:
        nonlocal key
        key = same_run_key(cfg, words)
        return done is not None and key in done

    started = time.perf_counter()
    try:
        learned = _train(model, cfg, images, masks if spec.uses_masks else None, run_dir, on_step, settled)
    except Cancelled:
        if done is None or key not in done:
            raise
        same = done[key]
        row = {**same.row, "track": track, "subject_words": cfg.subject if spec.preset == "lego" else "",
               "train_s": round(time.perf_counter() - started, 2), "generate_s": 0.0,
               "same_as": same.row["same_as"] or same.row["track"]}
        return RunResult(row, same.images, same.requests, same.predictions)
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
        # what the run trained with: the masks' colour and the subject's name added where it added them
        "training_words": learned.metadata.get("training_subject", "") if spec.preset == "lego" else "",
        "subjects": "; ".join(subject_phrase(*pair) for pair in evaluation),
        "n_images": len(pictures),
        **{m: round(float(scores[m]), 4) for m in METRICS},
        "train_s": round(trained - started, 2),
        "generate_s": round(generated - trained, 2),
        "final_loss": _final_loss(run_dir),
        "same_as": "",  # the track whose run this row is, where the settled words made it the same run
    }
    result = RunResult(row, pictures, [r for r, _ in made], predictions)
    if done is not None and key is not None:
        done[key] = result
    return result


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


def group_jobs(jobs: Sequence[Job]) -> list[list[Job]]:
    """The jobs of one concept, seed and method together, in plan order (the full words first): one
    worker runs them in turn, so a run whose settled words make it an earlier track's run takes that
    run's result (:func:`same_run_key`)."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.concept, job.seed, job.spec.name), []).append(job)
    return list(groups.values())


def _execute_group(model, judge_model, config: BenchmarkConfig, steps: int, jobs: Sequence[Job], work: Path, out: Path):
    """Run a :func:`group_jobs` group in turn, yielding :func:`_execute_job`'s result for each as it
    finishes; its runs share finished runs (``config.same_runs``)."""
    done: dict | None = {} if config.same_runs else None
    for job in jobs:
        yield _execute_job(model, judge_model, config, steps, job, work, out, done)


def _execute_job(model, judge_model, config: BenchmarkConfig, steps: int, job: Job, work: Path, out: Path,
                 done: dict | None = None) -> dict:
    """Run one job and write its sample sheet; return its row, images (PNG bytes) and the judge's
    verdicts as JSON lines, all plain data so that a worker process can send them back. ``done``:
    as in :func:`run_one`."""
    renders = render_exemplars(job.concept, exemplar_subject(job.concept), config.n_exemplars)
    result = run_one(model, judge_model, job.spec, job.concept, job.seed, steps, config, work / "runs", renders,
                     track=job.track, done=done)
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


def _worker_run(task: tuple[int, list[Job], int]) -> tuple[int, list[dict]]:
    index, group, steps = task
    w = _WORKER
    return index, list(_execute_group(w["model"], w["judge"], w["config"], steps, group,
                                      w["work"] / f"worker-{os.getpid()}", w["out"]))


def _run_jobs(model, judge_model, config: BenchmarkConfig, steps: int, jobs: list[Job], work: Path, out: Path):
    """Yield (job, result) as runs finish: in this process, or in ``config.jobs`` worker processes,
    a :func:`group_jobs` group at a time (each loads its own model; results are the same as
    in-process, only their order differs)."""
    groups = group_jobs(jobs)
    if config.jobs <= 1 or len(groups) <= 1:
        for group in groups:
            yield from zip(group, _execute_group(model, judge_model, config, steps, group, work, out))
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no forked torch/OpenMP state
    with context.Pool(min(config.jobs, len(groups)), initializer=_worker_start, initargs=(config, str(work), str(out))) as pool:
        for index, results in pool.imap_unordered(_worker_run, [(i, group, steps) for i, group in enumerate(groups)]):
            yield from zip(groups[index], results)


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
            same = (f'the same run as track {r["same_as"]}\'s (words "{r["training_words"]}"), {r["train_s"]:.0f} s to settle them'
                    if r.get("same_as") else f"{r['train_s']:.0f} s train, {r['generate_s']:.0f} s draw")
            log(f"[{done}/{len(jobs)}] {job.track if job.spec.uses_words else 'any track'} | {job.concept} | {job.spec.name} | "
                f"seed {job.seed}: concept {r['concept_fidelity']:.2f} subject {r['subject_fidelity']:.2f} "
                f"leakage {r['leakage']:.2f} (colour {r['colour_leakage']:.2f}, shape {r['shape_leakage']:.2f}, colour drift {r['colour_drift']:.2f}) "
                f"({same}; {(time.time() - started) / 60:.1f} min so far)")
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
        "robustness": {track: {split: robustness([r for r in rows if r["track"] == track], split)
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
