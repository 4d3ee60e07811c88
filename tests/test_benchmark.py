"""The Shape World benchmark: protocol pieces (held-out subjects, configs, metrics, plan) and a
--quick run end to end on the tiny model with an untrained judge (plumbing, < 30 s)."""

from __future__ import annotations

import csv
import json
import re
from types import SimpleNamespace

import pytest
from PIL import Image

from lego_studio.core.errors import InputError
from lego_studio.shapeworld import benchmark as bench
from lego_studio.shapeworld import benchmark_report as report
from lego_studio.shapeworld import benchmark_runner as runner
from lego_studio.shapeworld.world import COLOUR_NAMES, CONCEPTS, SHAPES, is_held_out, subject_phrase


# ------------------------------------------------------------------ protocol


@pytest.mark.parametrize("concept", CONCEPTS)
def test_held_out_subjects_never_reuse_the_exemplars_shape_or_colour(concept):
    exemplar = bench.exemplar_subject(concept)
    every = bench.held_out_subjects(concept, exemplar, (len(SHAPES) - 1) * (len(COLOUR_NAMES) - 1))
    assert len(set(every)) == len(every) == 30
    for n in (1, 2, 4, 8):
        chosen = bench.held_out_subjects(concept, exemplar, n)
        assert len(chosen) == len(set(chosen)) == n
        for shape, colour in chosen:
            assert shape != exemplar[0] and colour != exemplar[1]
        assert chosen == bench.held_out_subjects(concept, exemplar, n)  # same subjects for every method and run
    four = bench.held_out_subjects(concept, exemplar, 4)
    # Four subjects: four different shapes and four different colours.
    assert len({s for s, _ in four}) == 4 and len({c for _, c in four}) == 4


def test_too_many_held_out_subjects_is_a_clear_error():
    with pytest.raises(InputError, match="at most 30 held-out subjects"):
        bench.held_out_subjects("melting", bench.exemplar_subject("melting"), 31)


def test_every_concept_has_an_exemplar_subject_the_base_model_was_trained_on():
    assert set(bench.EXEMPLAR_SUBJECTS) == set(CONCEPTS)
    for concept, (shape, colour) in bench.EXEMPLAR_SUBJECTS.items():
        assert not is_held_out(shape, colour, concept)
    assert not set(bench.TUNING_CONCEPTS) & set(bench.HELD_OUT_CONCEPTS)
    assert bench.concept_split("frozen in ice") == "tuning" and bench.concept_split("melting") == "held-out"
    assert bench.concept_split("spinning") == "extra"


def test_exemplars_show_one_subject_with_exact_masks():
    renders = bench.render_exemplars("in a cage", ("star", "yellow"), 5)
    assert len(renders) == 5
    pixels = {im.tobytes() for im, _ in renders}
    assert len(pixels) == 5  # five different renders
    for image, mask in renders:
        assert image.size == (64, 64) and mask.shape == (64, 64)
        assert set(mask.ravel().tolist()) == {0, 255}
        # The subject's pixels are yellow: high red and green, low blue, on average.
        rgb = [float(v) for v in __import__("numpy").asarray(image)[mask == 255].mean(axis=0)]
        assert rgb[0] > 150 and rgb[1] > 120 and rgb[2] < 110


def _concept_words(concept: str) -> set[str]:
    return set(concept.split()) - {"in", "a", "on"}


@pytest.mark.parametrize("method", bench.ALL_METHODS)
def test_train_configs_never_name_the_concept(method):
    concept = "frozen in ice"
    exemplar = bench.exemplar_subject(concept)
    evaluation = bench.held_out_subjects(concept, exemplar, 4)
    (spec,) = bench.resolve_methods([method])
    config = bench.train_config(spec, exemplar, evaluation, steps=7, seed=3)
    text = config.to_json().lower()
    for word in _concept_words(concept):
        assert not re.search(rf"\b{word}\b", text), f"{method} config mentions {word!r}"
    assert config.positive_words == [] and config.init_words == []
    assert config.steps == 7 and config.seed == 3
    if spec.preset == "lego":
        assert config.subject == subject_phrase(*exemplar)
        # The context loss never trains on the scored prompts (nor on the exemplar's subject).
        scored = {subject_phrase(*pair) for pair in evaluation} | {config.subject}
        assert config.context_subjects and not scored & set(config.context_subjects)
    else:
        assert config.subject == "" and config.w_subj == config.w_ctx == config.w_words == 0


def test_methods_are_the_documented_ablations():
    specs = {s.name: s for s in bench.resolve_methods(list(bench.ALL_METHODS), num_vectors=3)}
    assert list(specs) == ["ti-1", "ti-3", "lego", "lego-no-masks", "lego-mask", "lego-no-subj", "lego-no-ctx", "lego-3"]
    assert specs["lego"].uses_masks and not specs["lego-no-masks"].uses_masks
    ex, ev = ("circle", "red"), [("square", "blue")]
    cfg = {name: bench.train_config(spec, ex, ev, 5, 0) for name, spec in specs.items()}
    assert cfg["ti-1"].num_vectors == 1 and cfg["ti-3"].num_vectors == 3 and cfg["ti-3"].method == "ti"
    assert cfg["lego"].num_vectors == 1 and cfg["lego"].w_ctx > 0 and specs["lego"].uses_masks
    assert cfg["lego"].subject_in_prompt and cfg["lego"].subject == "a red circle"
    assert not cfg["lego-no-subj"].subject_in_prompt and cfg["lego-no-subj"].w_ctx > 0 and not specs["lego-no-subj"].uses_masks
    assert cfg["lego-no-ctx"].w_ctx == 0 and cfg["lego-no-ctx"].subject_in_prompt
    assert cfg["lego-3"].num_vectors == 3 and cfg["lego-3"].method == "lego"
    # The mask ablation: the defaults, with L_ctx compared outside the mask.
    assert cfg["lego-mask"].ctx_region == "outside" and cfg["lego"].ctx_region == "full" and specs["lego-mask"].uses_masks
    # Only the runs that see the subject words depend on the track.
    assert [s.uses_words for s in specs.values()] == [False, False, True, True, True, False, True, True]
    assert bench.resolve_methods(["lego-n"], num_vectors=3)[0].name == "lego-3"


def test_unknown_names_are_one_line_errors():
    with pytest.raises(InputError, match="unknown benchmark method 'dreambooth'"):
        bench.resolve_methods(["dreambooth"])
    with pytest.raises(InputError, match="unknown Shape World concept 'glowing'"):
        bench.resolve_concepts(["glowing"])
    assert bench.resolve_concepts(["held-out", "frozen-in-ice", "melting"]) == list(bench.HELD_OUT_CONCEPTS) + ["frozen in ice"]


# ------------------------------------------------------------------ metrics


def _pred(shape, colour, concept):
    return SimpleNamespace(shape=shape, colour=colour, concept=concept)


def test_scores_count_fidelity_and_leakage():
    exemplar = ("circle", "red")
    requested = [("square", "blue")] * 4
    predictions = [
        _pred("square", "blue", "melting"),  # perfect
        _pred("square", "red", "melting"),  # exemplar colour leaked, concept right
        _pred("circle", "blue", "none"),  # exemplar shape leaked, no concept
        _pred("star", "green", "melting"),  # wrong subject, but not the exemplar's
    ]
    scores = runner.score_predictions(predictions, requested, exemplar, "melting")
    assert scores == {"concept_fidelity": 0.75, "subject_fidelity": 0.25, "success": 0.25, "leakage": 0.5,
                      "colour_leakage": 0.25, "shape_leakage": 0.25, "colour_drift": 0.0}
    both = runner.score_predictions([_pred("circle", "red", "melting")], [("square", "blue")], exemplar, "melting")
    assert (both["leakage"], both["colour_leakage"], both["shape_leakage"]) == (1.0, 1.0, 1.0)


def test_colour_drift_counts_colours_pulled_towards_the_exemplars_and_nothing_else():
    # Seen in a real run ("in a cage", exemplar a yellow star, colour left out of the words): every
    # subject came out one step nearer yellow, which the exact-colour leakage counted as 0.
    exemplar = ("star", "yellow")
    requested = [("cross", "green"), ("triangle", "purple"), ("heart", "red"), ("square", "blue")]
    drawn = [_pred("cross", "orange", "cage"), _pred("triangle", "red", "cage"), _pred("heart", "orange", "cage"),
             _pred("square", "green", "cage")]
    scores = runner.score_predictions(drawn, requested, exemplar, "cage")
    assert (scores["colour_leakage"], scores["colour_drift"]) == (0.0, 1.0)
    # A colour further from the exemplar's than the requested one (green asked, blue drawn), the
    # exemplar's own colour (that is leakage, not drift) and right colours are not drift.
    others = [_pred("cross", "blue", "cage"), _pred("triangle", "yellow", "cage"), _pred("heart", "red", "cage"),
              _pred("square", "blue", "cage")]
    scores = runner.score_predictions(others, requested, exemplar, "cage")
    assert (scores["colour_leakage"], scores["colour_drift"]) == (0.25, 0.0)


def test_pixel_diversity_is_zero_for_copies_and_one_for_opposites():
    black, white = Image.new("RGB", (8, 8), (0, 0, 0)), Image.new("RGB", (8, 8), (255, 255, 255))
    assert runner.pixel_diversity([[black, black.copy()]]) == 0.0
    assert runner.pixel_diversity([[black, white]]) == 1.0
    assert runner.pixel_diversity([[black, white], [white, white]]) == 0.5
    assert runner.pixel_diversity([[black]]) == 0.0  # one seed: no pair, no diversity


def test_summary_is_mean_and_std_over_training_seeds():
    rows = []
    for seed, value in ((0, 0.2), (1, 0.4), (2, 0.6)):
        for concept, offset in (("in a cage", 0.0), ("melting", 0.2)):
            rows.append({"method": "lego", "seed": seed, "split": "held-out", "concept": concept,
                         **{m: value + offset for m in bench.METRICS}})
    summary = report.summarize(rows, "held-out")
    mean, std = summary["lego"]["success"]
    assert mean == pytest.approx(0.5) and std == pytest.approx(0.2)
    assert report.summarize(rows, "tuning") == {}


def test_robustness_reports_collapsed_runs_and_the_worst_run_that_means_hide():
    rows = [{"method": "lego", "seed": seed, "split": "held-out", "concept": concept,
             "success": fidelity, "concept_fidelity": fidelity}
            for seed in range(4) for concept, fidelity in (("in a cage", 1.0), ("melting", 0.1 if seed == 2 else 0.9))]
    result = report.robustness(rows, "held-out")["lego"]
    assert result["runs"] == 8 and result["collapse_rate"] == pytest.approx(1 / 8)
    assert result["worst_success"] == pytest.approx(0.1) and result["worst_run"] == "melting, seed 2"


def test_every_generic_noun_and_no_words_are_tracks_of_their_own():
    words = {track: bench.subject_words(("hexagon", "green"), track) for track in bench.TRACKS}
    assert words["no-colour"] == "a hexagon" and words["no-words"] == ""
    assert {words[t] for t in bench.NO_SHAPE_TRACKS} == {"a green thing", "a green object", "a green shape", "a green item"}
    assert set(bench.BenchmarkConfig().tracks) == set(bench.DEFAULT_TRACKS) == set(bench.TRACKS) - set(bench.OTHER_NO_SHAPE_WORDINGS)
    # Other ways of leaving the shape out, outside the default run: each one a Shape from masks run.
    others = {track: bench.subject_words(("hexagon", "green"), track) for track in bench.OTHER_NO_SHAPE_WORDINGS}
    assert others == {"no-shape-one": "a green one", "no-shape-something": "something green", "colour-only": "green",
                      "no-shape-big-one": "a big green one"}
    from lego_studio.core.separation import names_what_it_is

    assert not any(names_what_it_is(words) for words in [*others.values(), *(words[t] for t in bench.NO_SHAPE_TRACKS)])


def test_plan_runs_the_products_step_count_and_warns_when_over_budget():
    from lego_studio.core.train_config import TrainConfig

    config = bench.BenchmarkConfig(budget_minutes=20).validate()
    costs = {m: 0.1 for m in config.methods}
    steps, note = runner.choose_steps(config, costs, generation=5.0, overhead=1.0)
    assert steps == bench.DEFAULT_STEPS == TrainConfig().steps  # what a user trains, never lowered
    assert runner.estimate_seconds(bench.BenchmarkConfig(jobs=2), 100, costs, 5.0, 1.0) == runner.estimate_seconds(bench.BenchmarkConfig(), 100, costs, 5.0, 1.0) / 2
    steps, note = runner.choose_steps(config, {m: 10.0 for m in config.methods}, 5.0, 1.0)
    assert steps == bench.DEFAULT_STEPS and note.startswith("WARNING")
    config.steps = 300
    assert runner.choose_steps(config, costs, 5.0, 1.0)[0] == 300


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def untrained_judge_dir(tmp_path_factory):
    """A judge with random weights: its verdicts are arbitrary but well-formed (plumbing only)."""
    import torch

    from lego_studio.shapeworld.judge import build_judge_net, save_judge

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("judge")
    save_judge(build_judge_net().eval(), out, {"training": {"note": "random weights for tests"}})
    return out


@pytest.mark.slow  # a whole benchmark run
def test_quick_benchmark_writes_tables_sheet_and_json(tmp_path, tiny_model_dir, untrained_judge_dir, capsys):
    from lego_studio.cli import main

    out = tmp_path / "bench"
    code = main(["shapeworld", "benchmark", "--quick", "--model", str(tiny_model_dir), "--judge", str(untrained_judge_dir),
                 "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "plan: 2 runs x 10 steps" in printed and "estimated total" in printed

    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["concept"], r["method"], r["seed"]) for r in rows] == [("frozen in ice", "ti-1", "0"), ("frozen in ice", "lego", "0")]
    for row in rows:
        assert row["split"] == "tuning" and row["n_images"] == "4" and row["steps"] == "10"
        for metric in bench.METRICS:
            assert 0.0 <= float(row[metric]) <= 1.0
        assert row["exemplar"] == "a red circle"
        assert len(row["subjects"].split("; ")) == 2
    assert {r["num_vectors"] for r in rows} == {"1"}  # both methods default to one vector

    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "## Track full, tuning concepts (used to pick the defaults): frozen in ice" in markdown
    assert re.search(r"^\| ti-1 \| \d\.\d\d ± \d\.\d\d \|", markdown, re.M)
    assert re.search(r"^\| lego \| \d\.\d\d ± \d\.\d\d \|", markdown, re.M)
    # Collapsed runs are counted ("1 of 1"), not given as a share beside the count ("1.00 of 1").
    assert re.search(r"^\| lego \|.* \| [01] of 1 \| \d\.\d\d, \d\.\d\d \(frozen in ice, seed 0\) \|$", markdown, re.M)
    assert "Quick (CI) run" in markdown and "**Verdict: " in markdown

    sheet = Image.open(out / "contact.png")
    # 3 rows (exemplars, ti-1, lego) and 2 columns of at least 96 px cells, plus labels.
    assert sheet.width >= 2 * 96 and sheet.height >= 3 * 96

    summary = json.loads((out / "benchmark.json").read_text(encoding="utf-8"))
    assert summary["config"]["quick"] is True and summary["plan"]["steps"] == 10
    assert summary["timing"]["total_seconds"] > 0 and len(summary["timing"]["runs"]) == 2
    assert "benchmark" in summary["command"] and summary["protocol"]["exemplar_subjects"] == {"frozen in ice": "a red circle"}
    lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 8
    first = json.loads(lines[0])
    assert first["prompt"] == rows[0]["subjects"].split("; ")[0] + " <sw-concept>"
    assert (out / "samples" / "full" / "frozen-in-ice" / "lego-seed0.png").is_file()
    assert (out / "samples" / "any-track" / "frozen-in-ice" / "ti-1-seed0.png").is_file()


@pytest.mark.slow  # a whole benchmark run
def test_partial_word_tracks_share_the_runs_that_never_see_the_words(tmp_path, tiny_model_dir, untrained_judge_dir, capsys):
    """Two partial-words tracks in two worker processes: Lego trains once per track with that
    track's words; TI (which never sees the words) trains once and its row stands in both tracks."""
    from lego_studio.cli import main

    out = tmp_path / "bench"
    code = main(["shapeworld", "benchmark", "--quick", "--tracks", "no-colour", "no-shape", "--jobs", "2",
                 "--model", str(tiny_model_dir), "--judge", str(untrained_judge_dir), "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "plan: 3 runs x 10 steps" in capsys.readouterr().out
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["track"], r["method"], r["subject_words"]) for r in rows] == [
        ("no-colour", "ti-1", ""), ("no-colour", "lego", "a circle"), ("no-shape", "ti-1", ""), ("no-shape", "lego", "a red thing")]
    assert rows[0]["train_s"] == rows[2]["train_s"]  # one TI run, reported in both tracks
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "## Track no-colour, tuning" in markdown and "## Track no-shape, tuning" in markdown
    assert (out / "samples" / "no-shape" / "frozen-in-ice" / "lego-seed0.png").is_file()
    summary = json.loads((out / "benchmark.json").read_text(encoding="utf-8"))
    assert set(summary["summary"]) == {"no-colour", "no-shape"}


def test_runs_whose_settled_words_match_are_the_same_run_and_the_plan_counts_them_once():
    """Typed "a yellow star", or "a yellow object" the masks completed to it: the same settings, the
    same key (the typed words decide nothing else); other words, or a subject token that starts
    from the typed words, do not share. The plan counts a shared run's set-up and probe only."""
    spec = bench.resolve_methods(["lego"], 1)[0]
    exemplar, evaluation = ("star", "yellow"), [("circle", "red")]
    full = bench.train_config(spec, exemplar, evaluation, 100, 3, track="full")
    vague = bench.train_config(spec, exemplar, evaluation, 100, 3, track="no-shape-object")
    assert vague.subject == "a yellow object"
    assert runner.same_run_key(full, "a yellow star") == runner.same_run_key(vague, "a yellow star") is not None
    assert runner.same_run_key(vague, "a yellow object") != runner.same_run_key(full, "a yellow star")
    other_seed = bench.train_config(spec, exemplar, evaluation, 100, 4, track="full")
    assert runner.same_run_key(other_seed, "a yellow star") != runner.same_run_key(full, "a yellow star")
    from dataclasses import replace

    assert runner.same_run_key(replace(full, subject_token_steps=10), "a yellow star") is None
    costs = {"ti-1": 0.1, "lego": 0.1}
    shared = runner.estimate_seconds(bench.BenchmarkConfig(), 500, costs, 5.0, 1.0)
    every = runner.estimate_seconds(bench.BenchmarkConfig(same_runs=False), 500, costs, 5.0, 1.0)
    one_track = runner.estimate_seconds(bench.BenchmarkConfig(tracks=["full"]), 500, costs, 5.0, 1.0)
    assert one_track < shared < every


@pytest.mark.slow  # two benchmark runs
def test_a_track_whose_words_the_masks_complete_to_another_tracks_takes_that_runs_result(
        tmp_path, tiny_model_dir, untrained_judge_dir, capsys):
    """"a circle" with the masks' colour is "a red circle": trained and drawn again
    (--no-same-runs) it gives the full words' pictures exactly, so by default the benchmark takes
    the full-words run's result instead, and says so."""
    from lego_studio.cli import main

    def bench_run(name, *extra):
        out = tmp_path / name
        code = main(["shapeworld", "benchmark", "--quick", "--methods", "lego", "--tracks", "full", "no-colour", *extra,
                     "--model", str(tiny_model_dir), "--judge", str(untrained_judge_dir), "--device", "cpu", "--out", str(out)])
        assert code == 0, capsys.readouterr().err
        with open(out / "results.csv", newline="") as handle:
            return out, list(csv.DictReader(handle)), capsys.readouterr().out

    def sheet(out, track):
        return Image.open(out / "samples" / track / "frozen-in-ice" / "lego-seed0.png").convert("RGB").tobytes()

    again, every, _ = bench_run("every", "--no-same-runs")
    assert [(r["track"], r["subject_words"], r["training_words"], r["same_as"]) for r in every] == [
        ("full", "a red circle", "a red circle", ""), ("no-colour", "a circle", "a red circle", "")]
    assert float(every[1]["generate_s"]) > 0 and sheet(again, "no-colour") == sheet(again, "full")

    out, shared, printed = bench_run("shared")
    assert [(r["track"], r["subject_words"], r["training_words"], r["same_as"]) for r in shared] == [
        ("full", "a red circle", "a red circle", ""), ("no-colour", "a circle", "a red circle", "full")]
    assert float(shared[1]["generate_s"]) == 0 and "the same run as track full's" in printed
    metrics = [{m: r[m] for m in bench.METRICS} for r in shared + every]
    assert all(m == metrics[0] for m in metrics)
    assert sheet(out, "no-colour") == sheet(again, "no-colour")
    assert "stopped before its first step and took that run's result" in (out / "results.md").read_text(encoding="utf-8")


def test_subject_words_leave_out_one_attribute_per_track():
    assert bench.subject_words(("hexagon", "green"), "full") == "a green hexagon"
    assert bench.subject_words(("hexagon", "green"), "no-colour") == "a hexagon"
    assert bench.subject_words(("circle", "orange"), "no-shape") == "an orange thing"
    with pytest.raises(InputError, match="unknown benchmark track"):
        bench.subject_words(("circle", "red"), "no-size")


def test_missing_judge_fails_before_training(tmp_path, capsys):
    from lego_studio.cli import main

    code = main(["shapeworld", "benchmark", "--quick", "--model", "tiny", "--judge", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope" in err and "\n" not in err


def test_verdict_names_the_winner_only_beyond_the_seed_noise():
    def entry(success, std, leakage=0.1):
        return {"success": (success, std), "leakage": (leakage, 0.0)}

    assert report.verdict({"ti-1": entry(0.2, 0.05), "ti-4": entry(0.3, 0.05), "lego": entry(0.6, 0.05)}).startswith(
        "**Verdict: Lego ahead** — success lego 0.60 ± 0.05 vs best TI (ti-4) 0.30 ± 0.05")
    assert "no clear winner" in report.verdict({"ti-1": entry(0.5, 0.2), "lego": entry(0.6, 0.05)})
    assert "TI ahead" in report.verdict({"ti-1": entry(0.9, 0.0), "lego": entry(0.6, 0.05)})
    assert report.verdict({"lego": entry(0.6, 0.05)}) == ""
