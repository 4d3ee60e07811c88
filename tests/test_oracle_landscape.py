"""The oracle landscape (benchmarks/oracle_landscape.py): candidates from the concept's known
words, scored by the trainer's own loss terms on the Shape World model (a real model: the
ordering below is a measured property of the loss, not plumbing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("oracle_landscape", ROOT / "benchmarks" / "oracle_landscape.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["oracle_landscape"] = module
    spec.loader.exec_module(module)
    return module


def _setup(concept: str, track: str):
    """The Shape World model, a 10-step Lego config for ``concept`` on ``track``, and 3 exemplars."""
    import torch

    from lego_studio.core.models import load_model
    from lego_studio.shapeworld import benchmark as bm

    torch.manual_seed(0)
    model = load_model("shapeworld", device="cpu", precision="fp32")
    exemplar = bm.exemplar_subject(concept)
    evaluation = bm.held_out_subjects(concept, exemplar, 4)
    renders = bm.render_exemplars(concept, exemplar, 3)
    images, masks = [im for im, _ in renders], [m for _, m in renders]
    cfg = bm.train_config(bm.MethodSpec("lego", "lego", {}, True, "lego"), exemplar, evaluation, 10, 0, track=track)
    return model, cfg, images, masks


def test_candidates_name_what_the_words_left_out():
    oracle = _module()
    assert oracle.candidates("on fire", ("circle", "blue"), "no-colour") == {
        "true": ["on", "fire"], "start": None, "true+left-out": ["blue", "on", "fire"], "left-out": ["blue"]}
    assert oracle.candidates("on fire", ("circle", "blue"), "no-shape")["true+left-out"] == ["circle", "on", "fire"]
    assert set(oracle.candidates("on fire", ("circle", "blue"), "full")) == {"true", "start"}


@pytest.mark.slow
def test_with_full_words_the_lego_loss_is_lower_at_the_true_words_than_at_no_concept(tmp_path):
    oracle = _module()
    concept = "frozen in ice"
    model, cfg, images, masks = _setup(concept, "full")
    true = oracle.score(model, cfg, images, masks, ["frozen", "in", "ice"], 2, tmp_path / "cache")
    start = oracle.score(model, cfg, images, masks, None, 2, tmp_path / "cache")
    assert true["total"] < start["total"] and true["rec"] < start["rec"]
    # The concept's own effect is subject-dependent: the context term is far from zero at the true words.
    assert true["ctx"] > start["ctx"]
    rows = [{"concept": concept, "track": "full", "variant": "lego", "candidate": name, **terms}
            for name, terms in (("true", true), ("start", start))]
    assert "| frozen in ice | full | lego | **" in oracle.report(rows, 1.0)


@pytest.mark.slow
def test_the_scale_invariant_context_form_is_not_met_by_a_concept_with_no_effect(tmp_path):
    """--context-forms (docs/METHOD.md, "The context loss at the other subjects' own pictures"): the
    MSE context term is smallest with no concept, the 1 - cos form is not (measured on Shape World)."""
    import dataclasses

    from lego_studio.shapeworld import benchmark as bm

    oracle = _module()
    concept = "on fire"
    model, cfg, images, masks = _setup(concept, "no-colour")
    cfg = dataclasses.replace(cfg, context_subjects=cfg.context_subjects[:4])
    priors = oracle.prior_latents(model, cfg.context_subjects, bm.BenchmarkConfig(concepts=[concept]), tmp_path / "priors")
    assert priors.shape[0] == 4
    true = oracle.score_context_forms(model, cfg, images, masks, ["on", "fire"], priors, 3, tmp_path / "cache")
    start = oracle.score_context_forms(model, cfg, images, masks, None, priors, 3, tmp_path / "cache")
    assert start["ctx"] < true["ctx"] and start["ctx_prior"] < true["ctx_prior"]
    assert start["cos"] > true["cos"] and start["cos_out"] > true["cos_out"]
    assert true["rec"] < start["rec"]


@pytest.mark.slow
def test_a_trained_concepts_vectors_score_on_the_same_batches_as_words(tmp_path):
    """method_pilot.py --losses scores snapshots' vectors against the true words' figures: the
    vectors of the words themselves must give the words' own figures."""
    import torch

    from lego_studio.core.prompts import word_token_ids

    oracle = _module()
    model, cfg, images, masks = _setup("frozen in ice", "full")
    words = ["frozen", "in", "ice"]
    ids = [i for w in words for i in word_token_ids(model.tokenizer, w)]
    vectors = model.text_encoder.get_input_embeddings().weight.detach()[torch.tensor(ids)].float().clone()
    by_words = oracle.score(model, cfg, images, masks, words, 2, tmp_path / "cache")
    by_vectors = oracle.score(model, cfg, images, masks, ["ignored"], 2, tmp_path / "cache", vectors=vectors)
    assert by_vectors == pytest.approx(by_words, rel=1e-5)
    start = oracle.score(model, cfg, images, masks, None, 2, tmp_path / "cache")
    assert by_vectors["rec"] != pytest.approx(start["rec"], rel=1e-5)
