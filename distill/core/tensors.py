"""Padding and masks for ragged token lists: the one place every stage pads with."""

from __future__ import annotations

import torch


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs])


def left_pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    """(batch, width), each row right-aligned: a decoder-only model continues every row at once."""
    width = max(len(s) for s in seqs)
    return torch.tensor([[value] * (width - len(s)) + s for s in seqs])


def pad_top(rows: list[tuple[list[list[int]], list[list[float]]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (T, k) top-k ids and log-probabilities → (batch, T_max, k) each, zero-padded
    (the target mask hides the padding)."""
    width = max(len(ids) for ids, _ in rows)
    k = max((len(top) for ids, _ in rows for top in ids), default=1)
    top_ids = torch.zeros(len(rows), width, k, dtype=torch.long)
    top_lp = torch.zeros(len(rows), width, k)
    for b, (ids, lps) in enumerate(rows):
        if ids:
            top_ids[b, : len(ids)] = torch.tensor(ids)
            top_lp[b, : len(lps)] = torch.tensor(lps)
    return top_ids, top_lp


def length_mask(seqs: list[list[int]]) -> torch.Tensor:
    """(batch, width) 1 for real tokens: from the lengths, not ``!= pad_id``, which would hide
    real tokens in vocabularies whose pad id doubles as eos."""
    width = max(len(s) for s in seqs)
    return (torch.arange(width) < torch.tensor([len(s) for s in seqs]).unsqueeze(1)).long()
