"""Shape from masks: the word that says what the subject is, found by a short probe run.

When the subject words give the look but not what the subject is ("a purple object", "purple"),
the subject's shape is left to the concept, and it leaks into every subject drawn with it (on
Shape World: docs/METHOD.md). The concept's closest words hold the word the user left out (the
left-out word was among the 3 closest in every measured run), but they hold the concept's own
words too ("heart" and "melting"), and which is which cannot be told from the vector. The masks
tell: the subject the masks mark has an outline, and the model draws the subject words with the
subject's word ("a purple heart") in that outline, but not with the concept's ("a purple melting
object") or with a word it does not know. So a run with ``mask_shape`` on:

1. trains the concept for :func:`probe_steps` steps (its own start, the same steps a run takes),
2. takes the probe's :data:`CANDIDATES` closest words (minus articles, generic nouns, colours),
3. has the model draw the subject words alone, and with each word (:func:`separation.name_subject`),
   :data:`DRAWINGS` pictures each, and scores each set by how well its outlines match the masks'
   (:func:`core.images.outline_match`),
4. keeps the best word if its score beats the words' own by :data:`MIN_GAIN` (:func:`choose_word`),
5. trains from the start with the new words (Trainer._run).

Torch is imported inside the functions; Qt-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from lego_studio.core import separation

PROBE_STEPS = 100  # at most; a fifth of the run's steps below 500
CANDIDATES = 5  # closest words tried
DRAWINGS = 4  # pictures per phrase
DRAW_STEPS = 15  # DDIM steps per picture
DRAW_GUIDANCE = 5.0
MIN_GAIN = 0.10  # outline overlap above the words' own drawings a word needs
DRAW_SEEDS = tuple(range(2000, 2000 + DRAWINGS))
DRAW_MAX_SIDE = 512  # drawings at the run's resolution, at most this (an outline needs no more; SDXL draws at 512)


def probe_steps(total_steps: int) -> int:
    """The probe's length for a run of ``total_steps`` concept steps: a fifth, at most PROBE_STEPS."""
    return max(1, min(PROBE_STEPS, int(total_steps) // 5))


def marks_any(masks) -> bool:
    """Whether ``masks`` (one per image, None = not marked; or None) mark any image."""
    return bool(masks) and any(m is not None for m in masks)


def probe_steps_for(config, has_masks: bool) -> int:
    """The probe steps a run of ``config`` takes before its own (0: it does not look for the word);
    ``has_masks``: :func:`marks_any` of the run's masks."""
    return probe_steps(config.steps) if has_masks and separation.looks_for_subject_name(config) else 0


def candidate_words(words, phrase: str) -> list[str]:
    """The closest ``words`` that could say what the subject is: not in ``phrase`` already, not an
    article, a generic noun or a colour."""
    have = {w.lower() for w in separation._words(phrase)}
    skip = set(separation.ARTICLES) | set(separation.GENERIC_NOUNS) | set(separation.COLOUR_WORDS) | have
    return [w for w in words if w and w.lower() not in skip][:CANDIDATES]


@dataclass
class NameSearch:
    """What the search found: the word (None: none fits), the words' own outline score, and each
    candidate's."""

    word: str | None
    own: float
    scores: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        tried = ", ".join(f"{w} {s:.2f}" for w, s in self.scores.items()) or "no candidate words"
        return f"outline match with your masks: your words {self.own:.2f}; {tried}"


def choose_word(own: float, scores: dict[str, float]) -> str | None:
    """The candidate whose drawings match the masks' outline best, if it beats ``own`` (the words'
    own drawings) by MIN_GAIN; else None."""
    if not scores:
        return None
    best = max(scores, key=lambda w: scores[w])
    return best if scores[best] >= own + MIN_GAIN else None


def draw(model, phrase: str, resolution: int) -> list:
    """DRAWINGS pictures of ``phrase`` alone (no concept) by ``model``, ``resolution`` px square
    (DDIM, DRAW_STEPS steps, guidance DRAW_GUIDANCE, seeds DRAW_SEEDS), as PIL images."""
    from lego_studio.core.generation import generate_batch

    made = generate_batch(model, [], [phrase] * len(DRAW_SEEDS), DRAW_SEEDS, DRAW_STEPS, DRAW_GUIDANCE, size=resolution)
    return [image for _, image in made]


def find_subject_name(model, phrase: str, closest: list[str], images, masks, resolution: int,
                      cancelled: Callable[[], bool] = lambda: False,
                      drawing: Callable[[int, int, str], None] = lambda i, n, p: None) -> NameSearch:
    """Steps 2-4 above for the subject words ``phrase``, the probe's ``closest`` words and the
    run's ``images`` and ``masks`` (paths / PIL images, and paths / uint8 arrays / None).
    ``drawing(i, n, phrase)`` is told before each phrase is drawn (progress)."""
    from lego_studio.core.errors import Cancelled
    from lego_studio.core.images import load_source, mask_array, outline_match

    marked = []
    for image_source, mask_source in zip(images, masks):
        if mask_source is not None:
            image, name = load_source(image_source, "training image")
            marked.append(mask_array(mask_source, image, name))
    candidates = candidate_words(closest, phrase)
    phrases = [phrase, *(separation.name_subject(phrase, w) for w in candidates)]
    scores = []
    for i, p in enumerate(phrases):
        if cancelled():
            raise Cancelled("training cancelled while looking for what the subject is; nothing to resume")
        drawing(i + 1, len(phrases), p)
        scores.append(outline_match(draw(model, p, resolution), marked))
    search = dict(zip(candidates, (round(s, 3) for s in scores[1:])))
    own = round(scores[0], 3)
    return NameSearch(choose_word(own, search), own, search)


def look_for_subject_name(trainer, total: int, masks) -> None:
    """Steps 1-4 above for a :class:`~lego_studio.core.training.Trainer` about to train: a probe
    run, then the word among its closest words whose plain drawings have the masks' outline goes
    into the trainer's subject words (``trainer.subject_words``, ``trainer.subject_name``); the
    run's log says what was found. ``total``: the run's step count, for the events."""
    from lego_studio.core.concepts import closest_words
    from lego_studio.core.run_files import TrainEvent

    steps = probe_steps(trainer.config.steps)
    phrase = trainer._training_subject()
    trainer._emit(TrainEvent("log", total=total, message=(
        f'the subject words "{phrase}" do not say what the subject is: a {steps}-step probe looks for the word '
        "(Shape from masks)")))
    vectors = probe_vectors(trainer, steps, total)
    closest = closest_words(vectors, trainer.model.tokenizer, trainer._split_widths(trainer._table)[0], k=2 * CANDIDATES)
    resolution = min(DRAW_MAX_SIDE, int(trainer.config.resolution or trainer.model.family.resolution))

    def drawing(i, n, drawn):
        trainer._emit(TrainEvent("log", total=total, message=(
            f'drawing "{drawn}" ({i} of {n}) to compare with your masks\' outline')))

    try:
        search = find_subject_name(trainer.model, phrase, closest, trainer.images, masks, resolution,
                                   cancelled=trainer._cancel_requested, drawing=drawing)
    except Exception as exc:  # noqa: BLE001 - out of memory while drawing: train with the words as they are
        from lego_studio.core.oom import is_out_of_memory

        if not is_out_of_memory(exc):
            raise
        trainer._emit(TrainEvent("log", total=total, message=(
            "no word looked for: the drawings did not fit in memory; training with the words as they are")))
        return
    if search.word is None:
        trainer._emit(TrainEvent("log", total=total, message=(
            f"no word found for what the subject is ({search.summary()}); training with the words as they are")))
        return
    trainer.subject_name = search.word
    trainer.subject_words = separation.name_subject(phrase, search.word)
    trainer._emit(TrainEvent("log", total=total, message=(
        f'subject words for training: "{trainer.subject_words}" ({search.word}: its drawings have your masks\' '
        f"outline; {search.summary()}; Shape from masks off keeps your words)")))


def probe_vectors(trainer, steps: int, total: int):
    """The trainer's concept vectors after the first ``steps`` steps of its run (the same start, the
    same per-step randomness: the trainer's own step), for the probe; the run then starts afresh.
    Cancel stops it (nothing to resume: a new start probes again); pause holds it."""
    import torch

    from lego_studio.core.errors import Cancelled
    from lego_studio.core.run_files import TrainEvent

    trainer.concept_vectors = torch.nn.Parameter(trainer._initial.clone().to(trainer.model.device))
    optimizer = trainer._optimizer_for(0)
    for step in range(steps):
        trainer._wait_if_paused(0, total)
        if trainer._cancel_requested():
            raise Cancelled(f"training cancelled in the probe (step {step} of {steps}), before the run; nothing to resume")
        out_of_memory = False
        try:
            trainer._step(step, optimizer)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled here
            from lego_studio.core.oom import is_out_of_memory

            if not is_out_of_memory(exc):
                raise
            out_of_memory = True
        if out_of_memory:  # the run's own advice, outside the except block; no checkpoint (not the run's vectors)
            trainer._out_of_memory(0, total, optimizer, 0, save=False)
        if (step + 1) % 25 == 0 or step + 1 == steps:
            trainer._emit(TrainEvent("log", total=total, message=f"probe: step {step + 1} of {steps}"))
    return trainer.concept_vectors.detach().float().cpu().clone()

