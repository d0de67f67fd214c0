"""Where models run: one rule for eval, serve and promotion, so their speeds and answers compare."""

from __future__ import annotations

import torch

from distill.core.errors import DistillError


def eval_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise DistillError("eval.device: cuda, but no CUDA device is visible")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)
