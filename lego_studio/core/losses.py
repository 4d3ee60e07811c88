"""The loss helpers of the trainer (core/training.py): masked MSE, InfoNCE, and the packing of
SDXL's pooled embedding beside its hidden states."""

from __future__ import annotations

from lego_studio.core.errors import TrainingError


def pack_sdxl(hidden, pooled):
    """SDXL hidden states ``[B, L, D]`` and pooled embeddings ``[B, p]`` (p <= D) as one tensor
    ``[B, L + 1, D]``, so conditionings concatenate and split along the batch like SD's."""
    import torch

    if pooled.shape[-1] > hidden.shape[-1]:
        raise TrainingError(f"pooled width {pooled.shape[-1]} is wider than the hidden states ({hidden.shape[-1]})")
    row = torch.zeros(hidden.shape[0], 1, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
    row[:, 0, : pooled.shape[-1]] = pooled.to(hidden.dtype)
    return torch.cat([hidden, row], dim=1)


def unpack_sdxl(packed, model):
    """``(hidden [B, L, D], pooled [B, p])`` of a :func:`pack_sdxl` tensor."""
    width = int(model.text_encoder_2.config.projection_dim)
    return packed[:, :-1], packed[:, -1, :width]


def region_mse(prediction, target, weight=None):
    """Mean squared error, optionally over a soft region ``weight`` [B, 1, h, w] (mean per element
    inside the region; 0 when the region is empty)."""
    squared = (prediction.float() - target.float()) ** 2
    if weight is None:
        return squared.mean()
    weight = weight.to(squared.dtype).expand_as(squared)
    total = weight.sum()
    if float(total) <= 0:
        return squared.sum() * 0.0
    return (squared * weight).sum() / total


def info_nce(vectors, positives, negatives, temperature: float):
    """Multi-positive InfoNCE of each row of ``vectors`` [N, d] against ``positives`` [P, d] and
    ``negatives`` [Q, d] with cosine similarity / ``temperature``; mean over the N rows."""
    import torch
    import torch.nn.functional as F

    v = F.normalize(vectors.float(), dim=-1)
    pos = v @ F.normalize(positives.float(), dim=-1).T / temperature
    if negatives is None or negatives.shape[0] == 0:
        everything = pos
    else:
        neg = v @ F.normalize(negatives.float(), dim=-1).T / temperature
        everything = torch.cat([pos, neg], dim=1)
    return (torch.logsumexp(everything, dim=1) - torch.logsumexp(pos, dim=1)).mean()


