"""Shape from masks: the word for what the subject is, found by a probe run and the masks' outline.

Plumbing on the tiny random model (the model's drawings are replaced by pictures whose outline is
known, so the choice is the test's), the outline scoring on Shape World renders, and the search on
the real Shape World model in test_partial_words.py (quality)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lego_studio.core import subject_name
from lego_studio.core.images import outline, outline_match
from lego_studio.core.separation import looks_for_subject_name, masks_added_reason, name_subject, subject_words_note
from lego_studio.core.train_config import TrainConfig
from lego_studio.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _renders(shape, n=4, seed=0):
    import random

    from lego_studio.shapeworld.render import render

    rng = random.Random(seed)
    return [render(shape, "purple", None, rng)[:2] for _ in range(n)]


def test_drawings_of_the_masks_shape_match_their_outline_and_other_shapes_do_not():
    hearts = _renders("heart")
    masks = [m for _, m in hearts]
    same = outline_match([im for im, _ in _renders("heart", seed=1)], masks)
    for other in ("circle", "star", "square"):
        assert same >= outline_match([im for im, _ in _renders(other, seed=1)], masks) + subject_name.MIN_GAIN, other
    assert same > 0.8
    # Place and size do not count: a heart moved and shrunk has the same outline.
    mask = np.asarray(masks[0]) >= 128
    small = np.zeros((200, 200), bool)
    small[100:100 + mask.shape[0] // 2, 20:20 + mask.shape[1] // 2] = np.asarray(
        Image.fromarray(mask.astype(np.uint8) * 255).resize((mask.shape[1] // 2, mask.shape[0] // 2))) >= 128
    assert (outline(small) & outline(mask)).sum() / (outline(small) | outline(mask)).sum() > 0.85
    assert outline_match([], masks) == 0.0 and outline_match([hearts[0][0]], [None]) == 0.0


def test_a_word_is_chosen_only_when_its_drawings_beat_the_words_own_by_the_margin():
    assert subject_name.choose_word(0.70, {"heart": 0.91, "melting": 0.48, "jia": 0.59}) == "heart"
    assert subject_name.choose_word(0.70, {"heart": 0.79, "melting": 0.48}) is None  # +0.09: not enough
    assert subject_name.choose_word(0.70, {}) is None
    # Candidates: the closest words that could name the subject (not colours, generic nouns, words it has).
    assert subject_name.candidate_words(["purple", "heart", "thing", "melting", "object", "a", "jia", "x", "y"],
                                        "a purple object") == ["heart", "melting", "jia", "x", "y"]


@pytest.mark.parametrize("phrase, word, expected", [
    ("a purple object", "heart", "a purple heart"), ("purple", "heart", "purple heart"), ("", "heart", "heart"),
    ("an object", "heart", "a heart"), ("a thing", "apple", "an apple"), ("A big red Thing", "car", "A big red car"),
    ("a yellow one", "star", "a yellow star"), ("a big yellow one", "star", "a big yellow star"),
    ("something yellow", "star", "yellow star"), ("something bright yellow", "star", "bright yellow star"),
])
def test_the_found_word_takes_the_generic_nouns_place(phrase, word, expected):
    assert name_subject(phrase, word) == expected


def test_only_lego_runs_whose_words_do_not_say_what_the_subject_is_look_for_it():
    assert looks_for_subject_name(TrainConfig(subject="a purple object"))
    assert looks_for_subject_name(TrainConfig(subject=""))
    assert not looks_for_subject_name(TrainConfig(subject="a purple heart"))
    assert not looks_for_subject_name(TrainConfig(subject="a purple object", mask_shape=False))
    assert not looks_for_subject_name(TrainConfig.preset("ti", subject="a purple object"))
    assert not looks_for_subject_name(TrainConfig(subject="a purple object", subject_token_steps=5))
    # The note before the run says so only when the run has masks to look with.
    assert "Shape from masks" in subject_words_note(TrainConfig(subject="a purple object"), has_masks=True)
    assert "Shape from masks" not in subject_words_note(TrainConfig(subject="a purple object"), has_masks=False)
    assert "Shape from masks" not in subject_words_note(TrainConfig(subject="a purple object", mask_shape=False), True)
    assert subject_name.probe_steps(500) == 100 and subject_name.probe_steps(300) == 60 and subject_name.probe_steps(3) == 1


@pytest.fixture
def drawn_as(monkeypatch):
    """Replace the model's drawings: a phrase with the word ``chosen[0]`` is drawn as the masks'
    square (on a grey ground), every other phrase as a thin bar. Returns (chosen, drawn phrases)."""
    chosen, drawn = [], []

    def draw(model, phrase, resolution):
        drawn.append(phrase)
        picture = np.full((32, 32, 3), 128, np.uint8)
        if chosen and chosen[0] in phrase.split():
            picture[8:24, 8:24] = (30, 200, 30)
        else:
            picture[14:18, 2:30] = (30, 200, 30)
        return [Image.fromarray(picture)] * subject_name.DRAWINGS

    monkeypatch.setattr(subject_name, "draw", draw)
    return chosen, drawn


def test_a_run_puts_the_word_whose_drawings_have_the_masks_outline_into_its_words(tiny_model, make_exemplars, tmp_path,
                                                                                  drawn_as):
    """The probe's closest words are tried; the one drawn in the masks' outline goes into the words,
    the run says so, and it trains exactly as a run typed with those words (the probe changes
    nothing else); a resumed run keeps the words without probing again."""
    from lego_studio.core.concepts import closest_words
    from lego_studio.core.errors import Cancelled

    chosen, drawn = drawn_as
    images, masks = make_exemplars(tmp_path / "ex", colour=(30, 200, 30), seed=5)
    base = dict(steps=5, checkpoint_every=0, seed=2, mask_colour=False)
    config = TrainConfig(subject="a green object", **base)
    probe = Trainer(tiny_model, TrainConfig(subject="a green object", **{**base, "steps": 1, "mask_shape": False}),
                    images, masks, tmp_path / "probe")
    probe_vectors = probe.run().vectors  # what a 1-step probe learns (5 steps -> a 1-step probe)
    table = tiny_model.text_encoder.get_input_embeddings().weight.detach()
    candidates = subject_name.candidate_words(closest_words(probe_vectors, tiny_model.tokenizer, table, k=10),
                                              "a green object")
    chosen.append(candidates[2])
    events = []
    learned = Trainer(tiny_model, config, images, masks, tmp_path / "run", on_event=events.append).run()
    expected = name_subject("a green object", chosen[0])
    assert learned.metadata["training_subject"] == expected and learned.metadata["subject_name"] == chosen[0]
    assert drawn[0] == "a green object" and len(drawn) == 1 + len(candidates)
    said = [e.message for e in events if e.kind == "log" and "subject words for training" in (e.message or "")]
    assert said and f'"{expected}"' in said[0] and "outline" in said[0] and "Shape from masks off" in said[0]
    assert "from the masks' outline" in masks_added_reason(learned.metadata, short=True)
    closest = [e for e in events if e.kind == "closest"]  # the Training page shows it after the run
    assert closest and closest[0].trained_with.startswith(f"Trained with the subject words \u201c{expected}\u201d")
    typed = Trainer(tiny_model, TrainConfig(subject=expected, **base), images, masks, tmp_path / "typed").run()
    assert torch.equal(learned.vectors, typed.vectors)
    # Off, or without masks: the words as typed, no probe.
    drawn.clear()
    off = Trainer(tiny_model, TrainConfig(subject="a green object", **{**base, "mask_shape": False}), images, masks,
                  tmp_path / "off").run()
    none = Trainer(tiny_model, config, images, None, tmp_path / "none").run()
    assert off.metadata["training_subject"] == none.metadata["training_subject"] == "a green object" and not drawn
    assert torch.equal(off.vectors, none.vectors)
    # Cancelled after the probe, resumed: the words it found, no second probe, the uninterrupted vectors.
    done = []
    with pytest.raises(Cancelled):
        Trainer(tiny_model, config, images, masks, tmp_path / "cut", progress=lambda step, total: done.append(step),
                cancel=lambda: len(done) >= 2).run()
    drawn.clear()
    resumed = Trainer(tiny_model, config, images, [None] * len(images), tmp_path / "cut").run(resume=True)
    assert not drawn and resumed.metadata["training_subject"] == expected and resumed.metadata["subject_name"] == chosen[0]
    assert torch.equal(resumed.vectors, learned.vectors)


def test_no_word_is_added_when_none_has_the_masks_outline(tiny_model, make_exemplars, tmp_path, drawn_as):
    _, drawn = drawn_as  # nothing chosen: every phrase is drawn as a bar
    images, masks = make_exemplars(tmp_path / "ex", colour=(30, 200, 30), seed=5)
    events = []
    learned = Trainer(tiny_model, TrainConfig(subject="a green object", steps=3, checkpoint_every=0, mask_colour=False),
                      images, masks, tmp_path / "run", on_event=events.append).run()
    assert learned.metadata["training_subject"] == "a green object" and learned.metadata["subject_name"] is None
    assert drawn and any("no word found for what the subject is" in (e.message or "") for e in events)


def test_cancel_during_the_probe_stops_the_run_with_nothing_to_resume(tiny_model, make_exemplars, tmp_path, drawn_as):
    from lego_studio.core import runs
    from lego_studio.core.errors import Cancelled

    images, masks = make_exemplars(tmp_path / "ex", colour=(30, 200, 30), seed=5)
    calls = []
    trainer = Trainer(tiny_model, TrainConfig(subject="a green object", steps=50, checkpoint_every=0), images, masks,
                      tmp_path / "run", cancel=lambda: calls.append(1) or len(calls) > 3)
    with pytest.raises(Cancelled, match="probe"):
        trainer.run()
    assert not list((tmp_path / "run").glob("checkpoints/*.safetensors"))
    assert runs.read_record(tmp_path / "run")["status"] == runs.RUN_CANCELLED


def test_the_expected_duration_counts_the_probe_when_the_run_looks_for_the_word():
    from lego_studio.core.estimate import estimate_from_cache

    figures = {"k": {"seconds_per_step": 0.2, "steps_timed": 10, "device": "cpu"}}
    looks = TrainConfig(subject="a purple object", steps=500)
    probe = subject_name.probe_steps_for(looks, has_masks=True)
    assert probe == 100 and subject_name.probe_steps_for(looks, has_masks=False) == 0
    assert subject_name.probe_steps_for(TrainConfig(subject="a purple heart", steps=500), has_masks=True) == 0
    estimate = estimate_from_cache("k", 500, 500, "cpu", figures=figures, probe_steps=probe)
    assert estimate.seconds == pytest.approx(0.2 * 600)
    assert "for 600 steps, 100 of them a probe for what the subject is" in estimate.line()
    assert "probe" not in estimate_from_cache("k", 500, 500, "cpu", figures=figures).line()


def test_out_of_memory_in_the_probe_names_the_setting_that_would_fit_and_leaves_no_checkpoint(
        tiny_model, make_exemplars, tmp_path, drawn_as, monkeypatch):
    from lego_studio.core.errors import OutOfMemory

    images, masks = make_exemplars(tmp_path / "ex", colour=(30, 200, 30), seed=5)
    trainer = Trainer(tiny_model, TrainConfig(subject="a green object", steps=10, checkpoint_every=0), images, masks,
                      tmp_path / "run")

    def step(*_args):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "_step", step)
    with pytest.raises(OutOfMemory):
        trainer.run()
    assert not list((tmp_path / "run").glob("checkpoints/*.safetensors"))


def test_out_of_memory_while_drawing_trains_with_the_words_as_they_are(tiny_model, make_exemplars, tmp_path, monkeypatch):
    def draw(*_args, **_kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(subject_name, "draw", draw)
    images, masks = make_exemplars(tmp_path / "ex", colour=(30, 200, 30), seed=5)
    events = []
    learned = Trainer(tiny_model, TrainConfig(subject="a green object", steps=3, checkpoint_every=0), images, masks,
                      tmp_path / "run", on_event=events.append).run()
    assert learned.metadata["training_subject"] == "a green object"
    assert any("did not fit in memory" in (e.message or "") for e in events)
