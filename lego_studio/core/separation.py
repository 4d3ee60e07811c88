"""How Lego keeps the subject out of the concept, in words the app shows: the subject words and the masks.

Subject words. 
Lego separates the subject from the concept with the subject's words: whatever the words leave
unexplained about the exemplars' subject (its colour when the user typed "a hexagon", its shape
when they typed "a green thing") can end up in the concept and leak into every picture drawn with
it, and with no words at all there is nothing to separate by. :func:`vague_subject` says when a
phrase tells the model almost nothing ("an object", "a thing", nothing at all), or gives the look but
not what the subject is ("a purple object": :func:`unnamed_kind`), so the app and the CLI can say so
before a run starts, with a suggestion. The run still goes if the user wants.

Subject colour. A colour the words leave out goes into the concept (on Shape World it drew new
subjects in colours pulled towards it: docs/METHOD.md). With masks and the ``mask_colour`` setting
(the default), :func:`training_subject_words` adds the colour the masks mark (core/images.py
``subject_colour``) to words that name none, for the run's prompts; :func:`missing_colour_note`
says so before a run, or, with the setting off, offers the word to add; :func:`trained_with` reads
what a finished run trained with from its concept.

Masks. :func:`mask_terms` lists the training terms that read the subject masks under a config, and
:func:`masks_usage` says it in one sentence: the Masks page and the help show that sentence for
the current settings, so what the app says about masks is what training does (tested by training
with and without masks).

Closest words. After a run, :func:`closest_words_note` shows the whole words nearest the learned
vector (core/concepts.py ``closest_words``): a word there that describes the subject, not the
concept, is the look the words left out, gone into the concept (on Shape World the left-out colour
or shape was among the 3 closest words in every measured run: docs/METHOD.md). The user knows their
subject; the note asks them to add that word and train again.

Torch-free and Qt-free.
"""

from __future__ import annotations

import re

ARTICLES = ("a", "an", "the", "one", "some", "my", "this", "that")

# Nouns that name no particular thing: a phrase made only of these says nothing about the subject.
_GENERIC = ("thing", "object", "shape", "item", "figure", "form", "subject", "entity", "piece", "element", "pic",
            "picture", "photo", "image", "blob", "body", "unit", "article", "artifact", "artefact", "specimen",
            "sample", "example", "design", "symbol", "icon", "sign", "glyph", "mark", "motif", "character",
            "silhouette", "outline", "graphic", "drawing", "sticker", "cutout", "token", "thingy", "doodad", "gizmo",
            "widget", "whatsit", "whatnot", "creature")
GENERIC_NOUNS = (*_GENERIC, *(f"{w}s" for w in _GENERIC), "stuff", "something", "one", "it")

SUGGESTION = 'name the subject and its look, e.g. "a red toy robot" or "a black cat"'


def _words(phrase: str) -> list[str]:
    return re.findall(r"[a-z][a-z'-]*", phrase.lower())


LOOKS_FOR_NAME = ("; with your masks, training first looks for the word itself and says what it found "
                  "(Shape from masks)")


def vague_subject(phrase: str, looks_for_name: bool = False) -> str | None:
    """A one-line reason, with a suggestion, when ``phrase`` says almost nothing about the
    subject; None when it names something. ``looks_for_name``: the run will look for the word
    that says what the subject is (:func:`looks_for_subject_name`, with masks): the note says so.

    Vague: empty, or made only of articles and generic nouns ("an object", "a thing", "stuff"); or
    the look without what the subject is (:func:`unnamed_kind`)."""
    words = _words(phrase)
    tail = LOOKS_FOR_NAME if looks_for_name else ""
    if not words:
        return f"no subject words: Lego has nothing to tell the subject from the concept; {SUGGESTION}{tail}"
    content = [w for w in words if w not in ARTICLES]
    if not content or all(w in GENERIC_NOUNS for w in content):
        return (f"the subject words {phrase.strip()!r} say almost nothing about the subject, so its look can end up "
                f"in the concept; {SUGGESTION}{tail}")
    note = unnamed_kind(phrase)
    return note + tail if note else None


def unnamed_kind(phrase: str) -> str | None:
    """A one-line note when ``phrase`` gives the subject's look but not what it is: its last word
    (where English puts the noun) is a generic noun ("a purple object") or every word is a colour
    ("purple"). Its shape is then left to the concept (on Shape World the exemplar's shape leaked
    into 13-38 % of new subjects with a generic noun, none with the shape named: docs/METHOD.md)."""
    content = [w for w in _words(phrase) if w not in ARTICLES]
    if not content:
        return None
    head = content[-1]
    describing = [w for w in content if w not in GENERIC_NOUNS]
    if head in GENERIC_NOUNS:
        last = list(re.finditer(rf"\b{re.escape(head)}\b", phrase.strip(), flags=re.IGNORECASE))[-1]
        cat = "cats" if head.endswith("s") and head[:-1] in _GENERIC else "cat"
        example = f"{phrase.strip()[: last.start()]}{cat}{phrase.strip()[last.end():]}"
        what = f'in place of "{head}" (e.g. "{example}")'
    elif all(w in DESCRIBING_WORDS for w in describing) and any(w in COLOUR_WORDS for w in describing):
        # "purple", "a big yellow one", "something yellow": the look, and nothing that names the subject
        what = f'(e.g. "a {" ".join(describing)} cat")'
    else:
        return None
    return (f"the subject words {phrase.strip()!r} say how the subject looks but not what it is, so its shape can end "
            f"up in the concept and reshape every subject drawn with it; name what it is {what}")


# Colour words: a subject phrase with one of these names its colour.
COLOUR_WORDS = frozenset({
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey", "gray",
    "violet", "magenta", "cyan", "turquoise", "teal", "navy", "beige", "tan", "gold", "golden", "silver", "bronze",
    "copper", "maroon", "crimson", "scarlet", "lime", "olive", "ivory", "cream", "colourful", "colorful",
    "multicoloured", "multicolored", "striped", "spotted", "tabby", "ginger", "blond", "blonde"})


def missing_colour_note(phrase: str, colour: str | None, adds: bool = False) -> str | None:
    """A one-line note when the masks' subject is mostly ``colour`` (core/images.py
    ``subject_colour``) and ``phrase`` names no colour; None otherwise. ``adds``: training puts the
    colour into the words itself (the ``mask_colour`` setting, :func:`adds_mask_colour`); else the
    word to add is ``colour`` itself, for :func:`add_subject_word`."""
    if not colour or names_a_colour(phrase):
        return None
    if adds:
        return (f"the subject your masks mark is mostly {colour}, and the subject words name no colour: training adds "
                f"it (\"{add_subject_word(phrase, colour)}\") so it stays out of the concept; if {colour} is not the "
                f"subject's own, turn off Colour from masks")
    return (f"the subject your masks mark is mostly {colour}, and the subject words name no colour: if {colour} is "
            f"the subject's own, add it, or it can go into the concept and colour every subject drawn with it")


def separates_by_words(config) -> bool:
    """Whether a training config (a TrainConfig) separates the subject by its words: only Lego does,
    and a stage-0 subject token stands in for them. The notes on the words apply only then."""
    return config.method == "lego" and not config.subject_token_steps and bool(config.subject_in_prompt)


# Words that describe a subject's colour, size or brightness without saying what it is ("a big
# yellow one", "something bright yellow"); not "light" or "giant", which can name a thing.
DESCRIBING_WORDS = COLOUR_WORDS | frozenset({"and", "or", "big", "small", "little", "large", "tiny", "huge", "bright",
                                             "dark", "pale", "shiny", "plain", "simple", "cute"})


def names_a_colour(phrase: str) -> bool:
    """Whether ``phrase`` names a colour (or a colouring: "striped", "tabby")."""
    return any(w in COLOUR_WORDS for w in _words(phrase))


def adds_mask_colour(config) -> bool:
    """Whether a run of ``config`` puts the masks' colour into the subject words when they name
    none (the ``mask_colour`` setting; only where the words separate the subject)."""
    return bool(config.mask_colour) and separates_by_words(config) and not names_a_colour(config.subject)


def training_subject_words(config, images, masks) -> tuple[str, str | None]:
    """The subject words a run of ``config`` puts in its concept prompts, and the colour it added
    to the user's words from the masks (None: the user's words as they are). The colour is the one
    :func:`~lego_studio.core.images.subject_colour` reads from the marked pixels; nothing is added
    without masks, when the words name a colour, or when no colour is clear."""
    from lego_studio.core.images import subject_colour

    phrase = config.subject.strip()
    if not adds_mask_colour(config) or not masks or all(m is None for m in masks):
        return phrase, None
    colour = subject_colour(images, masks)
    if colour is None:
        return phrase, None
    return completed_words(config, colour), colour


def completed_words(config, colour: str | None = None, name: str | None = None) -> str:
    """The subject words a run of ``config`` trains with when its masks mark ``colour`` (Colour from
    masks) and Shape from masks finds the word ``name`` (None: not found): the colour goes in
    first, then the name, as a run does (:func:`training_subject_words`, core/subject_name.py)."""
    phrase = config.subject.strip()
    if colour and adds_mask_colour(config):
        phrase = add_subject_word(phrase, colour)
    if name and looks_for_subject_name(config):
        phrase = name_subject(phrase, name)
    return phrase


def trained_with(metadata: dict) -> str | None:
    """The subject words a finished concept's run trained with (its ``metadata``), where the run
    added to the user's words from the masks (Colour from masks, Shape from masks); None when it
    used them as typed (:func:`masks_added` says what was added)."""
    trained = metadata.get("training_subject")
    if trained and str(trained) != str(metadata.get("subject") or "").strip():
        return str(trained)
    return None


def masks_added(metadata: dict) -> dict:
    """What a finished run (its concept's ``metadata``) added to the subject words from the masks:
    ``{"colour": bool, "name": word or None}`` (Colour from masks, Shape from masks)."""
    trained = trained_with(metadata)
    if trained is None:
        return {"colour": False, "name": None}
    typed = str(metadata.get("subject") or "")
    return {"colour": names_a_colour(trained) and not names_a_colour(typed), "name": metadata.get("subject_name") or None}


def masks_added_reason(metadata: dict, short: bool = False) -> str:
    """Why a run's words differ from the typed ones, in words: "the colour your masks mark",
    "“heart”, whose drawings have your masks' outline", or both; ``short``: "colour from the masks",
    "“heart” from the masks' outline", "colour and “heart” from the masks". "" when nothing was added."""
    added = masks_added(metadata)
    name = added["name"]
    if short:
        if added["colour"] and name:
            return f"colour and \u201c{name}\u201d from the masks"
        return "colour from the masks" if added["colour"] else (f"\u201c{name}\u201d from the masks' outline" if name else "")
    parts = (["the colour your masks mark"] if added["colour"] else []) + (
        [f"\u201c{name}\u201d, whose drawings have your masks' outline"] if name else [])
    return " and ".join(parts)


def trained_with_line(metadata: dict) -> str:
    """One sentence on what a finished run added to the subject words from the masks: 'Trained
    with the subject words “a purple heart” (“heart” from the masks' outline).'; "" when nothing."""
    trained = trained_with(metadata)
    if trained is None:
        return ""
    return f"Trained with the subject words \u201c{trained}\u201d ({masks_added_reason(metadata, short=True)})."


def subject_words_note(config, has_masks: bool = False) -> str | None:
    """The vague-words note for a training config (a TrainConfig), or None (:func:`separates_by_words`).
    ``has_masks``: the run has masks, so Shape from masks can look for the subject's word."""
    if not separates_by_words(config):
        return None
    return vague_subject(config.subject, looks_for_name=has_masks and looks_for_subject_name(config))


def mask_terms(config) -> list[str]:
    """The training terms that read the subject masks under ``config`` (a TrainConfig), as short
    phrases naming the setting; empty when masks change nothing."""
    if config.method != "lego":
        return []
    terms = []
    if adds_mask_colour(config):
        terms.append("the colour most of the marked subject has goes into the subject words, which name none "
                     "(Colour from masks)")
    if looks_for_subject_name(config):
        terms.append("the subject words do not say what the subject is, so a short probe run looks for the word among "
                     "the concept's closest words whose plain drawings have the masks' outline, and it goes into the "
                     "subject words (Shape from masks)")
    if config.w_subj > 0:
        terms.append(f"the subject loss holds the concept's effect inside the mask to nothing (Subject weight {config.w_subj:g})")
    inside = 0.0 if config.rec_region == "concept" else config.concept_inside_weight
    if inside < 1.0:
        terms.append(f"the subject's own pixels teach the concept {inside:g} as much as the rest of the image "
                     "(Inside-mask weight / Reconstruct)")
    if config.w_ctx > 0 and config.ctx_region == "outside":
        terms.append("the context loss compares the concept's effects only outside the subject (Context region: outside)")
    return terms


def masks_usage(config) -> str:
    """One sentence on what the masks do in training under ``config``."""
    terms = mask_terms(config)
    if config.method != "lego":
        return "Textual Inversion ignores masks: it learns from the whole image."
    colour = (" Before Start, the Training page also reads them for your subject's colour and says so when the "
              "subject words leave it out." if separates_by_words(config) and not config.mask_colour else "")
    if not terms:
        when = (("the subject words name no colour (Colour from masks)" if config.mask_colour else
                 "you turn on Colour from masks (for subject words that name no colour)")
                + (" or do not say what the subject is (Shape from masks)" if config.mask_shape else ""))
        return ("Masks are optional: with the current training settings no training term reads them (Lego separates "
                f"the subject by its words). They are used when {when}, or when you set Context region to "
                "\"outside\", an Inside-mask weight below 1 or a Subject weight above 0." + colour)
    return "Masks tell training where your subject is: " + "; ".join(terms) + "." + colour


def closest_words_note(words, method: str = "lego", shown=str) -> str:
    """One line on a trained concept's closest words (empty without words). For Lego it says what
    a subject word among them means and what to do; Textual Inversion learns the subject too.
    ``shown(word)`` writes each word (the Training page makes it a link)."""
    words = [str(w) for w in words or []]
    if not words:
        return ""
    listed = ", ".join(shown(w) for w in words)
    if method != "lego":
        return f"Closest words to the concept: {listed}."
    return (f"Closest words to the concept: {listed}. If one of them describes your subject rather than the concept "
            "(its colour, shape or kind), that look has gone into the concept and can show on other subjects: "
            "add the word to the subject words and train again.")


def names_what_it_is(phrase: str) -> bool:
    """Whether ``phrase`` says what the subject is: not vague (:func:`vague_subject`: empty, only
    generic nouns, a generic last noun as in "a purple object", or only colours)."""
    return vague_subject(phrase) is None


def looks_for_subject_name(config) -> bool:
    """Whether a run of ``config`` (with masks) looks for the word that says what the subject is
    (the ``mask_shape`` setting, Shape from masks; core/subject_name.py): only where the words
    separate the subject and do not say what it is."""
    return bool(config.mask_shape) and separates_by_words(config) and not names_what_it_is(config.subject)


def name_subject(phrase: str, word: str) -> str:
    """``phrase`` with ``word`` as what the subject is: in place of a generic last noun ("a purple
    object" + "heart" -> "a purple heart", "a yellow one" + "star" -> "a yellow star"); a generic
    word followed only by describing words moves out of the way ("something yellow" -> "yellow
    star"); else after the phrase ("purple" -> "purple heart"). The article follows the new next
    word ("an object" + "heart" -> "a heart")."""
    word = word.strip()
    words = phrase.split()
    if not word:
        return " ".join(words)
    bare = [re.sub(r"[^a-z'-]", "", w.lower()) for w in words]
    generic = [i for i, w in enumerate(bare) if w in GENERIC_NOUNS and all(b in DESCRIBING_WORDS for b in bare[i + 1:])]
    if generic and generic[-1] == len(words) - 1:
        words[-1] = word
    else:
        if generic:
            del words[generic[-1]]
        words.append(word)
    if len(words) > 1 and words[0].lower() in ("a", "an"):
        article = "an" if words[1][0].lower() in "aeiou" else "a"
        words[0] = article.capitalize() if words[0][0].isupper() else article
    return " ".join(words)


def add_subject_word(phrase: str, word: str) -> str:
    """``phrase`` with ``word`` added where a describing word goes: after a leading "a"/"an"/"the"
    (which becomes "an" before a vowel), else in front. "a star" + "yellow" -> "a yellow star";
    "a cat" + "orange" -> "an orange cat". A word the phrase already has changes nothing."""
    word = word.strip()
    words = phrase.split()
    if not word or word.lower() in (w.lower().strip(",.") for w in words):
        return " ".join(words)
    if words and words[0].lower() in ("a", "an"):
        article = "an" if word[0].lower() in "aeiou" else "a"
        if words[0][0].isupper():
            article = article.capitalize()
        return " ".join([article, word, *words[1:]])
    if words and words[0].lower() == "the":
        return " ".join([words[0], word, *words[1:]])
    return " ".join([word, *words])
