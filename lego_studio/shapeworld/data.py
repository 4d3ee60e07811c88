"""Batches of Shape World renders for training, reproducible from (seed, stage, batch index).

Each dataset item is a whole batch, rendered inside a DataLoader worker, so rendering runs in
parallel with training and the batch sequence does not depend on the number of workers.
"""

from __future__ import annotations

import random

import numpy as np

from lego_studio.shapeworld.render import render
from lego_studio.shapeworld.world import (
    COLOUR_NAMES,
    CONCEPT_LABELS,
    NO_CONCEPT,
    SHAPES,
    Triple,
    trained_triples,
)

# Share of plain-subject captions ("a red square") in model training, so a subject alone draws a
# plain subject and the concept words carry the concept.
NO_CONCEPT_PROBABILITY = 0.25


def sample_triple(rng: random.Random, include_held_out: bool, concept_triples: list[Triple]) -> Triple:
    if include_held_out:
        return Triple(rng.choice(SHAPES), rng.choice(COLOUR_NAMES), rng.choice(CONCEPT_LABELS))
    if rng.random() < NO_CONCEPT_PROBABILITY:
        return Triple(rng.choice(SHAPES), rng.choice(COLOUR_NAMES), NO_CONCEPT)
    return rng.choice(concept_triples)


class RenderedBatches:
    """Map-style dataset: item ``i`` is batch ``i`` of stage ``stage`` for ``seed``.

    ``include_held_out`` draws from every triple (the judge must know them all); otherwise the
    held-out triples are never drawn (the base model must not see them). With ``tokenizer_dir``
    the captions are tokenized in the worker into ``input_ids`` [B, 77].
    """

    def __init__(self, seed: int, stage: str, batch_size: int, length: int, include_held_out: bool = False,
                 tokenizer_dir: str | None = None, size: int = 64):
        self.seed, self.stage, self.batch_size, self.length = seed, stage, batch_size, length
        self.include_held_out = include_held_out
        self.tokenizer_dir = tokenizer_dir
        self.size = size
        self._concept_triples = [t for t in trained_triples() if t.concept != NO_CONCEPT]
        self._tokenizer = None
        self._token_cache: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return self.length

    def _tokenize(self, captions: list[str]) -> np.ndarray:
        if self._tokenizer is None:
            from transformers import CLIPTokenizer

            self._tokenizer = CLIPTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)
        rows = []
        for text in captions:
            ids = self._token_cache.get(text)
            if ids is None:
                ids = self._tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
                self._token_cache[text] = ids
            rows.append(ids)
        return np.asarray(rows, dtype=np.int64)

    def __getitem__(self, index: int) -> dict:
        import torch

        # String seeds are hashed with SHA-512 by random.Random: stable across runs and machines.
        rng = random.Random(f"{self.seed}/{self.stage}/{index}")
        images = np.empty((self.batch_size, self.size, self.size, 3), dtype=np.uint8)
        masks = np.empty((self.batch_size, self.size, self.size), dtype=np.uint8)
        labels = np.empty((self.batch_size, 3), dtype=np.int64)
        captions = []
        for b in range(self.batch_size):
            triple = sample_triple(rng, self.include_held_out, self._concept_triples)
            concept = None if triple.concept == NO_CONCEPT else triple.concept
            image, mask, text = render(triple.shape, triple.colour, concept, rng, size=self.size, caption_rng=rng)
            images[b], masks[b] = np.asarray(image), mask
            labels[b] = (SHAPES.index(triple.shape), COLOUR_NAMES.index(triple.colour), CONCEPT_LABELS.index(triple.concept))
            captions.append(text)
        batch = {
            "images": torch.from_numpy(images),
            "masks": torch.from_numpy(masks),
            "labels": torch.from_numpy(labels),
            "captions": captions,
        }
        if self.tokenizer_dir is not None:
            batch["input_ids"] = torch.from_numpy(self._tokenize(captions))
        return batch


def loader(dataset: RenderedBatches, workers: int):
    """DataLoader yielding the dataset's batches in order (each item is already a batch)."""
    import torch

    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        pin_memory=False,
    )


class ReplayBuffer:
    """Rendering 64x64 scenes on the CPU is slower than a small model trains on a GPU. Each
    rendered batch is therefore kept in a ring of ``slots`` batches on the device and every step
    draws a random mix from the ring; a new batch replaces the oldest one every ``reuse`` steps.
    ``reuse=1`` with one slot is plain streaming (the CPU path, where the model is the bottleneck)."""

    def __init__(self, batches, keys: tuple[str, ...], reuse: int, slots: int, device: str, seed: int):
        import torch

        self._torch = torch
        self.batches = iter(batches)
        self.keys = keys
        self.reuse, self.slots = max(1, reuse), max(1, slots)
        self.device = device
        self.store: dict = {}
        self.pushed = 0
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def _push(self, batch: dict) -> None:
        slot = self.pushed % self.slots
        for k in self.keys:
            value = batch[k]
            if k not in self.store:
                self.store[k] = value.new_empty((self.slots,) + tuple(value.shape)).to(self.device)
            self.store[k][slot].copy_(value, non_blocking=True)
        self.pushed += 1

    def get(self, step: int) -> dict:
        if self.reuse == 1 and self.slots == 1:
            batch = next(self.batches)
            return {k: batch[k].to(self.device, non_blocking=True) for k in self.keys}
        # Keep the ring full, then one new batch per ``reuse`` steps.
        while self.pushed < self.slots + step // self.reuse:
            self._push(next(self.batches))
        size = self.store[self.keys[0]].shape[1]
        filled = min(self.pushed, self.slots)
        index = self._torch.randint(0, filled * size, (size,), generator=self.generator).to(self.device)
        return {k: v.flatten(0, 1)[index] for k, v in self.store.items()}


def images_to_tensor(images_uint8, device):
    """uint8 [B,H,W,3] -> float [B,3,H,W] in [-1, 1] on ``device``."""
    return images_uint8.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


__all__ = ["RenderedBatches", "ReplayBuffer", "loader", "images_to_tensor", "sample_triple", "NO_CONCEPT_PROBABILITY"]
