"""The Shape World benchmark's report: per-seed summaries (mean ± std over training seeds),
``results.md`` with its verdicts, ``results.csv``, the contact sheet and each run's sample sheet.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from lego_studio.core.paths import atomic_save, atomic_write_text
from lego_studio.shapeworld.benchmark import (
    METRIC_HELP,
    COLLAPSE_BELOW,
    METRICS,
    TRACK_HELP,
    BenchmarkConfig,
    Plan,
    _slug,
    exemplar_subject,
    held_out_subjects,
    resolve_methods,
)

if TYPE_CHECKING:
    from lego_studio.shapeworld.benchmark_runner import RunResult


# ------------------------------------------------------------------------------ summaries


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


def robustness(rows: Sequence[dict], split: str | None = None) -> dict[str, dict]:
    """{method: {runs, collapse_rate, worst_success, worst_concept, worst_run}} over single runs
    (one concept, one training seed): the share of runs whose concept fidelity is below
    COLLAPSE_BELOW (the concept does almost nothing), and the worst run. Means hide a method that
    fails one run in eight; these do not."""
    chosen = [r for r in rows if split is None or r["split"] == split]
    out = {}
    for method in dict.fromkeys(r["method"] for r in chosen):
        mine = [r for r in chosen if r["method"] == method]
        worst = min(mine, key=lambda r: (float(r["success"]), float(r["concept_fidelity"])))
        out[method] = {
            "runs": len(mine),
            "collapse_rate": sum(float(r["concept_fidelity"]) < COLLAPSE_BELOW for r in mine) / len(mine),
            "worst_success": float(worst["success"]),
            "worst_concept": min(float(r["concept_fidelity"]) for r in mine),
            "worst_run": f"{worst['concept']}, seed {worst['seed']}",
        }
    return out


# ------------------------------------------------------------------------------ outputs


CSV_FIELDS = ("track", "concept", "split", "method", "seed", "steps", "num_vectors", "exemplar", "subject_words", "training_words", "subjects",
              "n_images",
              *METRICS, "train_s", "generate_s", "final_loss", "same_as")


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
    ]
    same = [r for r in rows if r.get("same_as")]
    if same:
        lines += [
            f"{len(same)} of {len(rows)} rows are runs whose subject words, once the masks completed them, were those of an "
            "earlier track's run of the same concept, method and seed (`same_as` in results.csv): such a run trains the "
            "same vectors and draws the same pictures, so it stopped before its first step and took that run's result "
            "(its `train_s`: the time to settle the words; `--no-same-runs` trains and draws it again).",
            "",
        ]
    lines += [
        "Values: mean ± std over training seeds (of the per-seed mean over concepts); **collapsed runs**: how many "
        f"runs (one concept, one seed) have a concept fidelity below {COLLAPSE_BELOW}; **worst run**: the run with the "
        "lowest success, its success and the lowest concept fidelity of any run. "
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
                      "| method | " + " | ".join(METRICS) + " | collapsed runs | worst run (success, concept) |",
                      "|---|" + "---|" * len(METRICS) + "---|---|"]
            robust = summary.get("robustness", {}).get(track, {}).get(split, {})
            for method, values in summary["summary"][track][split].items():
                r = robust.get(method)
                extra = (f" | {round(r['collapse_rate'] * r['runs'])} of {r['runs']} | {r['worst_success']:.2f}, {r['worst_concept']:.2f} "
                         f"({r['worst_run']})" if r else " | | ")
                lines.append(f"| {method} | " + " | ".join(_cell(values[m]) for m in METRICS) + extra + " |")
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


def _save_run_sheet(folder: Path, concept: str, method: str, seed: int, result: RunResult, config: BenchmarkConfig) -> None:
    from lego_studio.core.generation import make_grid

    k = len(config.gen_seeds)
    subjects = [result.requests[i].prompt.rsplit(" ", 1)[0] for i in range(0, len(result.requests), k)]
    grid = make_grid(result.images, rows=len(subjects), columns=k, row_labels=subjects,
                     column_labels=[f"seed {s}" for s in config.gen_seeds], min_cell=96)
    atomic_save(folder / _slug(concept) / f"{method}-seed{seed}.png", lambda tmp: grid.save(tmp, format="PNG"))
