"""One-time warm-up of the summarization decoder (pre-train → fine-tune → distill).

A decoder that has never written English spends its first few hundred summary steps learning
to, and on a few hundred summaries it never does: it loops. The warm-up runs once on the
bundled unlabeled text (the documents of the pipeline's summarization train splits) and is
cached by content, like the teacher conversion, so every run that builds the same student
starts from the warmed-up weights:

- bert2bert: denoising (BART-style, Lewis et al. 2020, token masking only): the encoder reads a
  span with ``mask_rate`` of its tokens masked and the decoder writes the span's first
  ``target_length`` tokens, which teaches the decoder English and to copy through cross-attention.
- teacher_layers: recovery of the cut: next-token cross-entropy plus DistilBERT's cosine loss
  between the student's and the teacher's last hidden states (Sanh et al. 2019), so the kept
  layers take over the work of the dropped ones.

It is a plain PyTorch loop on one process (no DeepSpeed): it runs once per student design, before
training, and its result is a state dict like any pretrained checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import torch

from distill.core.assets import home
from distill.core.config import StudentConfig, WarmupConfig
from distill.core.errors import DistillError

STATE_FILE = "state.safetensors"
RECORD_FILE = "warmup.json"


def _key(student: Any, wc: WarmupConfig, documents: list[str]) -> str:
    """Content hash of what the warm-up depends on: the student's initial weights (which already
    name its design: encoder, cut layers, vocabulary), the warm-up settings and the text."""
    digest = hashlib.sha256(json.dumps(wc.__dict__, sort_keys=True).encode())
    for name, tensor in sorted(student.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    for doc in documents:
        digest.update(doc.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def spans(token_lists: list[list[int]], length: int) -> list[list[int]]:
    """Consecutive ``length``-token spans of each text (a shorter last one kept if >= length/4)."""
    out = []
    for ids in token_lists:
        for start in range(0, len(ids), length):
            piece = ids[start : start + length]
            if len(piece) >= max(8, length // 4):
                out.append(piece)
    return out


def _batches(n: int, wc: WarmupConfig) -> list[list[int]]:
    """``steps`` batches of row indices: seeded permutations of the spans, one after another."""
    g = torch.Generator().manual_seed(wc.seed)
    order: list[int] = []
    while len(order) < wc.steps * wc.batch_size:
        order += torch.randperm(n, generator=g).tolist()
    return [order[s * wc.batch_size : (s + 1) * wc.batch_size] for s in range(wc.steps)]


def warm_up(student: Any, tokenizer: Any, cfg: StudentConfig, documents: list[str]) -> dict[str, Any]:
    """Warm ``student``'s summarization path up in place (or load the cached result); returns
    the record: key, cached, steps, spans, seconds, first and last losses."""
    from safetensors.torch import load_model, save_model

    wc = cfg.warmup
    if not documents:
        raise DistillError(
            "train.student.warmup: no unlabeled text (the summarization tasks' train documents)"
        )
    key = _key(student, wc, documents)
    folder = home() / "warmup" / key
    if (folder / STATE_FILE).is_file() and (folder / RECORD_FILE).is_file():
        try:
            load_model(student, str(folder / STATE_FILE))  # strict
            return {**json.loads((folder / RECORD_FILE).read_text()), "cached": True}
        except (OSError, ValueError, RuntimeError) as e:  # a damaged cache entry is redone
            print(f"warm-up cache {folder} unreadable ({e}); warming up again")
    started = time.perf_counter()
    # The global RNG comes out as it went in, so training after a warm-up run and after a
    # cached one draw the same dropout masks.
    with torch.random.fork_rng():
        losses = _run(student, tokenizer, cfg, documents)
    record = {
        "key": key,
        "objective": losses.pop("objective"),
        "steps": wc.steps,
        "spans": losses.pop("spans"),
        "seconds": round(time.perf_counter() - started, 1),
        **losses,
    }
    # Written under temporary names and renamed: a crash, or another process warming up the same
    # student, never leaves a half-written entry that looks complete.
    folder.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp{os.getpid()}"
    save_model(student, str(folder / (STATE_FILE + suffix)))  # handles bert2bert's tied embeddings
    (folder / (RECORD_FILE + suffix)).write_text(json.dumps(record, indent=2) + "\n")
    os.replace(folder / (STATE_FILE + suffix), folder / STATE_FILE)
    os.replace(folder / (RECORD_FILE + suffix), folder / RECORD_FILE)
    return {**record, "cached": False}


def _run(student: Any, tokenizer: Any, cfg: StudentConfig, documents: list[str]) -> dict[str, Any]:
    wc = cfg.warmup
    torch.manual_seed(wc.seed)
    g = torch.Generator().manual_seed(wc.seed)
    objective = student.spec.summarizer_class.warmup(student, tokenizer, cfg, documents, g)
    params = objective.params
    rows = spans(objective.tokens, wc.length)
    if not rows:
        raise DistillError(
            f"train.student.warmup: no text has {max(8, wc.length // 4)} tokens or more; "
            "lower warmup.length or add text (warmup.extra_text)"
        )
    optimizer = torch.optim.AdamW(params, lr=wc.lr, weight_decay=0.0)
    student.train()
    history: list[float] = []
    for step, batch in enumerate(_batches(len(rows), wc)):
        picked = [rows[i] for i in batch]
        loss = objective.step(picked)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history.append(loss.item())
        if step % 20 == 0 or step == wc.steps - 1:
            print(f"warm-up step {step + 1}/{wc.steps} loss {history[-1]:.3f}", flush=True)
    # No warm-up gradient may leak into the first training step's accumulation.
    optimizer.zero_grad(set_to_none=True)
    student.eval()
    window = max(1, min(10, len(history) // 4))
    return {
        "objective": objective.name,
        "spans": len(rows),
        "loss_first": round(sum(history[:window]) / window, 4),
        "loss_last": round(sum(history[-window:]) / window, 4),
    }
