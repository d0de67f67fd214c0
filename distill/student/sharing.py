"""How tasks share the student (``train.student.sharing``), after Liu, Qiu & Huang (2017),
"Adversarial Multi-task Learning for Text Classification":

- ``hard``: every task reads the one shared encoder.
- ``shared_private``: each task also has a small private encoder (one transformer layer over
  the shared embeddings); a label head reads [shared; private] pooled features, a summary
  decoder reads shared + private states.
- ``adversarial``: shared_private, plus a task discriminator on the pooled shared features
  behind a gradient-reversal layer (the encoder learns features the discriminator cannot tell
  apart: L_adv, weight λ_adv) and the orthogonality penalty ‖SᵀH‖²_F between a batch's
  shared and private features (L_diff, weight γ), which pushes task-specific information out
  of the shared space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

AUX_LOSSES = ("adversarial", "orthogonality")
"""Names of the sharing losses a student's forward returns beside its logits (already weighted)."""


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def gradient_reversal(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient flowing back is multiplied by −scale (Ganin & Lempitsky 2015)."""
    return _GradientReversal.apply(x, scale)


class PrivateEncoder(nn.Module):
    """One pre-norm transformer layer: a task's private feature extractor."""

    def __init__(self, hidden: int, heads: int, feedforward: int, dropout: float):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            hidden, heads, feedforward, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(hidden)

    def forward(self, embedded: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """embedded (batch, seq, hidden), attention_mask (batch, seq) 1 = real → (batch, seq, hidden)."""
        return self.norm(self.layer(embedded, src_key_padding_mask=attention_mask == 0))


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq, hidden) → (batch, hidden), averaging real tokens only."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (batch, seq, 1)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def orthogonality_penalty(shared: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
    """‖SᵀH‖²_F for a batch's shared S and private H features, both (batch, hidden).

    Rows are L2-normalised first (as the domain separation networks of Bousmalis et al. 2016
    do), so the penalty measures directions, not the features' scale, and lies in [0, batch²].
    It is a sum over the batch, as in the paper, so a task with larger batches feels more of it."""
    s = F.normalize(shared.float(), dim=-1)
    h = F.normalize(private.float(), dim=-1)
    return (s.transpose(0, 1) @ h).pow(2).sum()


def adversarial_task_loss(logits: torch.Tensor, task_index: int) -> torch.Tensor:
    """Cross-entropy of the task discriminator, logits (batch, tasks), every row from ``task_index``."""
    target = torch.full((logits.shape[0],), task_index, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), target)
