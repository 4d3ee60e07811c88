"""Training prompts: templates, the built-in context subjects, and tokenising prompts that contain
learned-vector slots.

A training prompt is a template such as ``"a photo of {}"`` whose ``{}`` is filled with a phrase.
For Lego the phrase is ``"{subject} {concept}"`` (the concept tokens come right after the subject
words, as in "a toy robot <frozen>"); for the Textual Inversion baseline it is the concept alone.

Learned vectors never enter the tokenizer's vocabulary during training: a prompt is a list of
*segments*, plain text or :class:`Slot` (an index into the table of learned vectors). Text is
tokenised piece by piece (CLIP's BPE never merges across a space, so this equals tokenising the
whole string) and each slot gets a filler id whose embedding the trainer replaces with the learned
vector. That keeps the tokenizer and the embedding table of the model untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lego_studio.core.errors import InputError

if TYPE_CHECKING:  # torch is imported lazily; annotations only
    import torch

# Textual Inversion's "imagenet_templates_small", trimmed to the ones that read well with a
# subject phrase in front of the concept tokens.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of {}",
    "a rendering of {}",
    "a cropped photo of {}",
    "the photo of {}",
    "a clean photo of {}",
    "a close-up photo of {}",
    "a bright photo of {}",
    "a good photo of {}",
    "a photo of one {}",
    "a rendition of {}",
)

# Other subjects the concept is composed with for the context loss: everyday nouns that CLIP
# knows well, of different materials and shapes so the concept cannot latch on to one of them.
DEFAULT_CONTEXT_SUBJECTS: tuple[str, ...] = (
    "a dog",
    "a cat",
    "a car",
    "a house",
    "a chair",
    "a teapot",
    "a bird",
    "a tree",
    "a cup",
    "a horse",
    "a bicycle",
    "a book",
    "an apple",
    "a shoe",
    "a clock",
    "a boat",
)

# Words that say nothing about how a subject looks; dropped when the subject phrase supplies the
# default negative words of the word-guidance loss.
STOPWORDS = frozenset(
    {"a", "an", "the", "of", "one", "some", "with", "and", "in", "on", "at", "to", "my", "his", "her", "its", "their"}
)

# Shown in previews: the concept on the training subject and on two subjects it never saw.
DEFAULT_LEGO_PREVIEW_PROMPTS: tuple[str, ...] = (
    "a photo of {subject} {concept}",
    "a photo of a dog {concept}",
    "a photo of a teapot {concept}",
)
DEFAULT_TI_PREVIEW_PROMPTS: tuple[str, ...] = ("a photo of {concept}",)


@dataclass(frozen=True)
class Slot:
    """A position in a prompt that takes learned vector ``index`` instead of a word."""

    index: int




def appearance_words(subject: str) -> list[str]:
    """The words of a subject phrase that describe its appearance ("a red square" -> red, square)."""
    words = re.findall(r"[\w'-]+", subject.lower())
    return [w for w in words if w not in STOPWORDS]


def check_template(template: str, where: str = "template") -> None:
    if template.count("{}") != 1:
        raise InputError(f"{where} {template!r} must contain exactly one '{{}}' where the concept goes")


def fill_template(template: str, phrase: list) -> list:
    """Segments of ``template`` with its ``{}`` replaced by ``phrase`` (a list of segments)."""
    before, after = template.split("{}", 1)
    segments: list = []
    if before.strip():
        segments.append(before.strip())
    segments.extend(phrase)
    if after.strip():
        segments.append(after.strip())
    return segments


def split_fields(text: str, fields: dict[str, list]) -> list:
    """Segments of ``text`` with each ``{name}`` in ``fields`` replaced by its segment list.

    Used for preview prompts such as ``"a photo of {subject} {concept}"``.
    """
    pattern = re.compile("|".join(re.escape("{" + name + "}") for name in fields)) if fields else None
    segments: list = []
    position = 0
    if pattern is not None:
        for match in pattern.finditer(text):
            piece = text[position : match.start()].strip()
            if piece:
                segments.append(piece)
            segments.extend(fields[match.group(0)[1:-1]])
            position = match.end()
    tail = text[position:].strip()
    if tail:
        segments.append(tail)
    return segments


def slots(count: int, start: int = 0) -> list[Slot]:
    return [Slot(start + i) for i in range(count)]


@dataclass
class TokenizedPrompts:
    """Token ids padded to the model length, plus where learned vectors go."""

    input_ids: torch.Tensor  # [B, L] long
    slot_mask: torch.Tensor  # [B, L] bool: True where a learned vector replaces the embedding
    slot_index: torch.Tensor  # [B, L] long: which learned vector (0 where slot_mask is False)
    attention_mask: torch.Tensor  # [B, L] long: 1 for real tokens, 0 for padding (as the tokenizer's)


def tokenize_segments(tokenizer, prompts: list[list]) -> TokenizedPrompts:
    """Tokenise prompts given as segment lists (see module docstring)."""
    import torch

    max_length = int(tokenizer.model_max_length)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    # Any ordinary token will do as the filler: its embedding is replaced before the encoder sees
    # it. Not the end-of-text id, which CLIP uses to find the pooled position.
    filler = 0
    cache: dict[str, list[int]] = {}
    all_ids, all_mask, all_index, all_attention = [], [], [], []
    for segments in prompts:
        ids, mask, index = [bos], [False], [0]
        for segment in segments:
            if isinstance(segment, Slot):
                ids.append(filler)
                mask.append(True)
                index.append(segment.index)
                continue
            if segment not in cache:
                cache[segment] = list(tokenizer(segment, add_special_tokens=False)["input_ids"])
            pieces = cache[segment]
            ids.extend(pieces)
            mask.extend([False] * len(pieces))
            index.extend([0] * len(pieces))
        if len(ids) > max_length - 1:
            if any(mask[max_length - 1 :]):
                text = " ".join(s if isinstance(s, str) else f"<v{s.index}>" for s in segments)
                raise InputError(
                    f"prompt is longer than {max_length} tokens and the concept tokens would be cut off: {text!r}"
                )
            ids, mask, index = ids[: max_length - 1], mask[: max_length - 1], index[: max_length - 1]
        ids.append(eos)
        mask.append(False)
        index.append(0)
        padding = max_length - len(ids)
        all_ids.append(ids + [pad] * padding)
        all_mask.append(mask + [False] * padding)
        all_index.append(index + [0] * padding)
        all_attention.append([1] * len(ids) + [0] * padding)
    return TokenizedPrompts(
        input_ids=torch.tensor(all_ids, dtype=torch.long),
        slot_mask=torch.tensor(all_mask, dtype=torch.bool),
        slot_index=torch.tensor(all_index, dtype=torch.long),
        attention_mask=torch.tensor(all_attention, dtype=torch.long),
    )


def word_token_ids(tokenizer, word: str) -> list[int]:
    """Token ids of ``word`` (one or more BPE pieces), without start/end tokens."""
    ids = list(tokenizer(word, add_special_tokens=False)["input_ids"])
    if not ids:
        raise InputError(f"word {word!r} has no tokens")
    return ids
