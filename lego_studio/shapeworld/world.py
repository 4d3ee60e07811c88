"""The Shape World vocabulary: subjects (shape x colour), concepts, captions, held-out triples.

Everything here is plain data so that the renderer, the model trainer, the judge and the
benchmarks agree on names and label indices. Label indices are positions in these tuples and are
saved with the judge, so only ever append.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "star", "heart", "cross", "hexagon")

# Saturated, well separated hues; backgrounds are pale and desaturated so they never look like one.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 32, 38),
    "green": (34, 160, 60),
    "blue": (36, 84, 220),
    "yellow": (242, 206, 22),
    "purple": (132, 44, 178),
    "orange": (246, 128, 16),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Concept phrases exactly as they appear in captions. Around the subject: ice, cage, fire, bubble,
# shadow. On the subject: melting, spinning, shattered.
CONCEPTS: tuple[str, ...] = (
    "frozen in ice",
    "in a cage",
    "on fire",
    "inside a bubble",
    "melting",
    "spinning",
    "shattered",
    "casting a shadow",
)
NO_CONCEPT = "none"
# Judge label set for the concept head: every concept, then "none" for a plain subject.
CONCEPT_LABELS: tuple[str, ...] = CONCEPTS + (NO_CONCEPT,)

# Templates for captions; "{}" is the full description ("a red square frozen in ice").
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of {}",
    "a picture of {}",
    "an image of {}",
    "a rendering of {}",
    "a drawing of {}",
)
# A comma before the concept is a common way people write prompts, so the model sees it too.
COMMA_PROBABILITY = 0.2


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def subject_phrase(shape: str, colour: str) -> str:
    """"a red square", "an orange circle"."""
    return f"{article(colour)} {colour} {shape}"


def description(shape: str, colour: str, concept: str | None, comma: bool = False) -> str:
    """"a red square frozen in ice" (or "a red square, frozen in ice", or "a red square")."""
    subject = subject_phrase(shape, colour)
    if not concept or concept == NO_CONCEPT:
        return subject
    return f"{subject}, {concept}" if comma else f"{subject} {concept}"


def caption(shape: str, colour: str, concept: str | None, rng: random.Random | None = None) -> str:
    """A caption for a render; with ``rng`` a random template (and comma), without it the plain one."""
    if rng is None:
        return description(shape, colour, concept)
    comma = rng.random() < COMMA_PROBABILITY
    template = rng.choice(CAPTION_TEMPLATES)
    return template.format(description(shape, colour, concept, comma=comma))


@dataclass(frozen=True)
class Triple:
    shape: str
    colour: str
    concept: str  # a phrase from CONCEPTS, or NO_CONCEPT

    @property
    def prompt(self) -> str:
        return description(self.shape, self.colour, self.concept)


def all_triples() -> list[Triple]:
    return [Triple(s, c, k) for s in SHAPES for c in COLOUR_NAMES for k in CONCEPT_LABELS]


def held_out_triples() -> list[Triple]:
    """(shape, colour, concept) triples the base model never sees in training.

    One colour per (shape, concept) pair, cycling so every colour and every shape is held out
    equally often: the model still sees every concept with every shape and every colour, only not
    these exact combinations, so benchmarks can test composition on combinations it never saw.
    """
    held = []
    for i, shape in enumerate(SHAPES):
        for j, concept in enumerate(CONCEPTS):
            colour = COLOUR_NAMES[(i + 2 * j) % len(COLOUR_NAMES)]
            held.append(Triple(shape, colour, concept))
    return held


_HELD_OUT = frozenset(held_out_triples())


def is_held_out(shape: str, colour: str, concept: str | None) -> bool:
    return Triple(shape, colour, concept or NO_CONCEPT) in _HELD_OUT


def trained_triples() -> list[Triple]:
    return [t for t in all_triples() if t not in _HELD_OUT]
