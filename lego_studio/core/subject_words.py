"""Subject words: does a subject phrase say enough for Lego to keep the subject out of the concept?

Lego separates the subject from the concept with the subject's words: whatever the words leave
unexplained about the exemplars' subject (its colour when the user typed "a hexagon", its shape
when they typed "a green thing") can end up in the concept and leak into every picture drawn with
it, and with no words at all there is nothing to separate by. :func:`vague_subject` says when a
phrase tells the model almost nothing ("an object", "a thing", nothing at all), so the app and the
CLI can say so before a run starts, with a suggestion. The run still goes if the user wants.

Torch-free and Qt-free.
"""

from __future__ import annotations

import re

ARTICLES = ("a", "an", "the", "one", "some", "my", "this", "that")

# Nouns that name no particular thing: a phrase made only of these says nothing about the subject.
GENERIC_NOUNS = ("thing", "things", "object", "objects", "shape", "shapes", "item", "items", "stuff", "something",
                 "figure", "form", "subject", "entity", "piece", "one", "it", "element", "pic", "picture", "photo",
                 "image")

SUGGESTION = 'name the subject and its look, e.g. "a red toy robot" or "a black cat"'


def _words(phrase: str) -> list[str]:
    return re.findall(r"[a-z][a-z'-]*", phrase.lower())


def vague_subject(phrase: str) -> str | None:
    """A one-line reason, with a suggestion, when ``phrase`` says almost nothing about the
    subject; None when it names something.

    Vague: empty, or made only of articles and generic nouns ("an object", "a thing", "stuff")."""
    words = _words(phrase)
    if not words:
        return f"no subject words: Lego has nothing to tell the subject from the concept; {SUGGESTION}"
    content = [w for w in words if w not in ARTICLES]
    if not content or all(w in GENERIC_NOUNS for w in content):
        return (f"the subject words {phrase.strip()!r} say almost nothing about the subject, so its look can end up "
                f"in the concept; {SUGGESTION}")
    return None
