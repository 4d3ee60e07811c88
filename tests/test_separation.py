"""What the app says about subject words and masks is what training does."""

from __future__ import annotations

import pytest
import torch

from lego_studio.core.separation import add_subject_word, adds_mask_colour, closest_words_note, mask_terms, masks_usage, subject_words_note, vague_subject
from lego_studio.core.train_config import TrainConfig
from lego_studio.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exemplars(tmp_path_factory, make_exemplars):
    return make_exemplars(tmp_path_factory.mktemp("separation"), colour=(30, 200, 30), seed=5)


def _vectors(model, config, images, masks, run_dir):
    return Trainer(model, config, images, masks, run_dir).run().vectors


SETTINGS = {
    "defaults": {},
    "colour left out": {"subject": "a square"},  # the masks' colour goes into the words (Colour from masks)
    "colour left out, colour from masks off": {"subject": "a square", "mask_colour": False},
    # Not what it is: the colour goes in, and the probe looks for the word (none fits the tiny model's
    # drawings; test_subject_name.py shows one going in). With both settings off nothing reads the masks.
    "vague words": {"subject": "an object"},
    "vague words, both settings off": {"subject": "an object", "mask_colour": False, "mask_shape": False},
    "context outside": {"ctx_region": "outside"},
    "inside-mask weight": {"concept_inside_weight": 0.3},
    "subject weight": {"w_subj": 0.5},
    "ti": {"method": "ti"},
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_what_the_masks_page_says_is_what_training_does(name, tiny_model, exemplars, tmp_path):
    """masks_usage says masks change nothing exactly when training with and without them gives the
    same vectors (same seed); and it names each term that reads them."""
    overrides = dict(SETTINGS[name])
    method = overrides.pop("method", "lego")
    subject = overrides.pop("subject", "a green square")
    config = TrainConfig.preset(method, steps=3, subject=subject, checkpoint_every=0, seed=2, **overrides)
    images, masks = exemplars
    with_masks = _vectors(tiny_model, config, images, masks, tmp_path / "with")
    without = _vectors(tiny_model, config, images, None, tmp_path / "without")
    says_unused = not mask_terms(config)
    assert torch.equal(with_masks, without) == says_unused
    text = masks_usage(config)
    if says_unused:
        assert "no training term reads them" in text or "ignores masks" in text
    else:
        assert text.startswith("Masks tell training where your subject is")
    # Before Start, Lego's Training page names the masks' subject colour (test_ui_walkthrough.py);
    # where training adds it itself, the sentence names that setting instead.
    assert ("subject's colour" in text) == (method == "lego" and not config.mask_colour)
    if adds_mask_colour(config):
        assert "the colour most of the marked subject has goes into the subject words" in text
    assert ("(Shape from masks)" in text and "no training term reads them" not in text) == (
        method == "lego" and config.mask_shape and subject == "an object")


def test_the_masks_page_shows_the_sentence_for_the_default_settings():
    from lego_studio.ui import masks_view

    assert masks_view.masks_purpose(None) == masks_usage(TrainConfig())


@pytest.mark.parametrize("words", ["", "   ", "an object", "a thing", "the item", "stuff", "a shape", "something"])
def test_vague_subject_words_get_a_one_line_note_with_a_suggestion(words):
    note = vague_subject(words)
    assert note and "\n" not in note and "e.g." in note


@pytest.mark.parametrize("words, example", [("a purple object", '"a purple cat"'), ("A big red THING", '"A big red cat"'),
                                             ("purple", '"a purple cat"'), ("a yellow one", '"a yellow cat"'),
                                             ("yellow and black", '"a yellow and black cat"'),
                                             ("a yellow symbol", '"a yellow cat"'), ("two red blobs", '"two red cats"'),
                                             ("something yellow", '"a yellow cat"'), ("a big yellow one", '"a big yellow cat"'),
                                             ("small bright red", '"a small bright red cat"')])
def test_words_that_give_the_look_but_not_what_the_subject_is_get_a_note_naming_the_shape_risk(words, example):
    # The shape-left-out tracks of the benchmark ("a purple object"): the subject's shape leaks.
    note = vague_subject(words)
    assert note and "\n" not in note and "not what it is" in note and "its shape can end up in the concept" in note
    assert example in note


@pytest.mark.parametrize("words", ["a cat", "a hexagon", "a green thing with spikes", "a red toy robot", "my dog",
                                   "a yellow star", "a thing's handle", "a light", "a big dog", "something yellow with wheels"])
def test_words_that_name_something_get_no_note(words):
    assert vague_subject(words) is None


def test_only_lego_runs_that_separate_by_words_get_the_note():
    assert subject_words_note(TrainConfig(subject="an object"))
    assert subject_words_note(TrainConfig.preset("ti", subject="an object")) is None
    assert subject_words_note(TrainConfig(subject="", subject_token_steps=10)) is None
    # A stage-0 subject token stands in for the words: no colour note, and the Masks page says none.
    assert "subject's colour" not in masks_usage(TrainConfig(subject="", subject_token_steps=10))


def test_train_warns_about_vague_subject_words_before_the_run(exemplar_folders, tiny_model_dir, tmp_path, capsys):
    from lego_studio.cli import main

    images, masks = exemplar_folders
    code = main(["train", "--model", str(tiny_model_dir), "--images", str(images), "--masks", str(masks), "--subject", "an object",
                 "--steps", "1", "--out", str(tmp_path / "c.safetensors"), "--quiet"])
    assert code == 0
    out, err = capsys.readouterr()
    assert "warning: the subject words 'an object' say almost nothing" in err
    assert "not what it is" not in err  # one note per phrase
    # After the run: the concept's closest words, and what to do with a subject word among them.
    closest = next(line for line in out.splitlines() if line.startswith("Closest words to the concept: "))
    assert len(closest.split(": ", 1)[1].split(". ")[0].split(", ")) == 5
    assert "add the word to the subject words and train again" in closest


def test_train_warns_about_words_that_give_the_look_but_not_what_the_subject_is(exemplar_folders, tiny_model_dir, tmp_path,
                                                                                capsys):
    from lego_studio.cli import main

    images, masks = exemplar_folders
    assert main(["train", "--model", str(tiny_model_dir), "--images", str(images), "--masks", str(masks), "--subject",
                 "a purple object", "--steps", "1", "--out", str(tmp_path / "c.safetensors"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: the subject words 'a purple object' say how the subject looks but not what it is" in err
    assert '(e.g. "a purple cat")' in err


def test_train_names_the_masks_colour_the_subject_words_leave_out(tmp_path, tiny_model_dir, make_exemplars, capsys):
    from lego_studio.cli import main

    images, masks = tmp_path / "images", tmp_path / "masks"
    make_exemplars(images, n=2, size=(36, 36), colour=(36, 84, 220), seed=1, prefix="ex", mask_folder=masks, mask_prefix="ex")
    args = ["train", "--model", str(tiny_model_dir), "--images", str(images), "--masks", str(masks), "--steps", "1",
            "--quiet"]
    # By default (Colour from masks) the run adds the colour itself and says so.
    assert main([*args, "--subject", "a square", "--out", str(tmp_path / "a.safetensors")]) == 0
    out, err = capsys.readouterr()
    assert 'trained with the subject words "a blue square"' in out and "warning" not in err
    # With it off, a warning before the run names the --subject that adds it.
    assert main([*args, "--no-mask-colour", "--subject", "a square", "--out", str(tmp_path / "b.safetensors")]) == 0
    out, err = capsys.readouterr()
    assert "warning: the subject your masks mark is mostly blue" in err and '--subject "a blue square"' in err
    assert "trained with" not in out
    assert main([*args, "--subject", "a blue square", "--out", str(tmp_path / "c.safetensors")]) == 0
    out, err = capsys.readouterr()
    assert "mostly blue" not in err and "trained with" not in out


def test_the_masks_colour_goes_into_the_words_that_name_none(tiny_model, exemplars, tmp_path):
    """Colour from masks (the default): "a square" with masks on green squares trains exactly as
    "a green square" does; off, or without masks, it trains as "a square"."""
    images, masks = exemplars
    base = dict(steps=3, checkpoint_every=0, seed=2)
    events = []
    typed = Trainer(tiny_model, TrainConfig(subject="a square", **base), images, masks, tmp_path / "typed",
                    on_event=events.append).run()
    assert typed.metadata["subject"] == "a square" and typed.metadata["training_subject"] == "a green square"
    said = [e.message for e in events if e.kind == "log" and "subject words for training" in (e.message or "")]
    assert said and '"a green square"' in said[0] and "Colour from masks off" in said[0]
    full = _vectors(tiny_model, TrainConfig(subject="a green square", **base), images, masks, tmp_path / "full")
    assert torch.equal(typed.vectors, full)
    off = Trainer(tiny_model, TrainConfig(subject="a square", mask_colour=False, **base), images, masks,
                  tmp_path / "off").run()
    assert off.metadata["training_subject"] == "a square" and not torch.equal(off.vectors, full)
    assert torch.equal(_vectors(tiny_model, TrainConfig(subject="a square", **base), images, None, tmp_path / "none"),
                       off.vectors)


def test_the_closest_words_note_says_what_a_subject_word_among_them_means():
    note = closest_words_note(["cage", "yellow", "melting"], "lego")
    assert note.startswith("Closest words to the concept: cage, yellow, melting. If one of them describes your subject")
    assert "add the word to the subject words and train again" in note
    # Textual Inversion learns the subject with the concept: the words only, no advice.
    assert closest_words_note(["cage", "yellow"], "ti") == "Closest words to the concept: cage, yellow."
    assert closest_words_note([], "lego") == "" and closest_words_note(None, "lego") == ""


@pytest.mark.parametrize("phrase, word, expected", [
    ("a star", "yellow", "a yellow star"),
    ("a cat", "orange", "an orange cat"),
    ("An apple", "red", "A red apple"),
    ("the robot", "shiny", "the shiny robot"),
    ("toy robot", "red", "red toy robot"),
    ("", "yellow", "yellow"),
    ("a yellow star", "yellow", "a yellow star"),
    ("a purple object", "heart", "a heart purple object"),
])
def test_a_closest_word_goes_into_the_subject_words_where_a_describing_word_goes(phrase, word, expected):
    assert add_subject_word(phrase, word) == expected


@pytest.mark.parametrize("phrase, colour, says", [
    ("a star", "yellow", True),
    ("a yellow star", "yellow", False),  # the words name its colour
    ("a blue star", "yellow", False),  # they name another: the user's call
    ("a tabby cat", "brown", False),  # a colour pattern is a colour word too
    ("a star", None, False),  # the masks show no one colour (or there are none)
])
def test_words_that_name_no_colour_are_told_the_masks_colour(phrase, colour, says):
    from lego_studio.core.separation import missing_colour_note

    note = missing_colour_note(phrase, colour)
    assert bool(note) == says
    if says:
        assert f"mostly {colour}" in note and "name no colour" in note
        assert add_subject_word(phrase, colour) == "a yellow star"


def test_a_resumed_run_keeps_the_subject_words_it_started_with(tiny_model, exemplars, tmp_path):
    """The masks' colour is read when a run starts; a run resumed after the masks changed goes on
    with the words it started with, so it ends with the vectors of an uninterrupted run."""
    from lego_studio.core.errors import Cancelled

    images, masks = exemplars
    config = TrainConfig(subject="a square", steps=4, checkpoint_every=0, seed=2)
    whole = _vectors(tiny_model, config, images, masks, tmp_path / "whole")
    done = []
    first = Trainer(tiny_model, config, images, masks, tmp_path / "cut", progress=lambda step, total: done.append(step),
                    cancel=lambda: len(done) >= 2)
    with pytest.raises(Cancelled):
        first.run()
    unmarked = [None] * len(images)  # the masks are gone: no colour to read now
    events = []
    resumed = Trainer(tiny_model, config, images, unmarked, tmp_path / "cut", on_event=events.append).run(resume=True)
    assert resumed.metadata["training_subject"] == "a green square"
    assert any("the subject words the run started with" in (e.message or "") for e in events)
    assert torch.equal(resumed.vectors, whole)


def test_a_run_resumed_from_an_older_checkpoint_goes_on_with_the_words_as_typed(tiny_model, exemplars, tmp_path):
    """Checkpoints written before Colour from masks carry no subject words; that version trained with
    the words as typed, so the resumed run does too (the vectors of an uninterrupted run of it)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from lego_studio.core.errors import Cancelled

    images, masks = exemplars
    config = TrainConfig(subject="a square", steps=4, checkpoint_every=0, seed=2)
    as_typed = _vectors(tiny_model, TrainConfig(subject="a square", mask_colour=False, steps=4, checkpoint_every=0,
                                                seed=2), images, masks, tmp_path / "typed")
    done = []
    with pytest.raises(Cancelled):
        Trainer(tiny_model, TrainConfig(subject="a square", mask_colour=False, steps=4, checkpoint_every=0, seed=2),
                images, masks, tmp_path / "cut", progress=lambda step, total: done.append(step),
                cancel=lambda: len(done) >= 2).run()
    (checkpoint,) = (tmp_path / "cut" / "checkpoints").glob("step-*.safetensors")
    with safe_open(str(checkpoint), framework="pt") as handle:
        meta = json.loads(handle.metadata()["lego_studio"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    del meta["subject_words"]  # as an older version wrote it
    save_file(tensors, str(checkpoint), metadata={"lego_studio": json.dumps(meta)})
    (tmp_path / "cut" / "config.json").write_text(config.to_json())  # the setting did not exist then
    resumed = Trainer(tiny_model, config, images, masks, tmp_path / "cut").run(resume=True)
    assert resumed.metadata["training_subject"] == "a square"
    assert torch.equal(resumed.vectors, as_typed)
