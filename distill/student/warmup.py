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
import torch.nn.functional as F

from distill.core.assets import home
from distill.core.config import StudentConfig, WarmupConfig
from distill.core.errors import DistillError
from distill.core.tensors import length_mask, pad
from distill.student.summarizers.teacher_layers.options import teacher_layers_options

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


def denoise_step(
    student: Any, tokenizer: Any, rows: list[list[int]], wc: WarmupConfig, g: torch.Generator
) -> torch.Tensor:
    """bert2bert: mask ``mask_rate`` of the encoder's tokens; the decoder writes the span's start."""
    from distill.core.losses import IGNORE_INDEX, sequence_kd_loss
    from distill.student.tokens import decoder_inputs

    ids, mask = pad(rows, tokenizer.pad_token_id), length_mask(rows)
    masked = (torch.rand(ids.shape, generator=g) < wc.mask_rate) & mask.bool()
    corrupted = torch.where(masked, tokenizer.mask_token_id, ids)
    end = student.backbone.generation_config.eos_token_id
    targets = [r[: wc.target_length - 1] + [end] for r in rows]
    target_ids = pad(targets, IGNORE_INDEX)
    config = student.backbone.config
    decoder_ids, decoder_mask = decoder_inputs(target_ids, config.decoder_start_token_id, config.pad_token_id)
    logits = student.backbone(
        input_ids=corrupted,
        attention_mask=mask,
        decoder_input_ids=decoder_ids,
        decoder_attention_mask=decoder_mask,
    ).logits
    return sequence_kd_loss(logits, target_ids)


def heal_step(student: Any, teacher: Any, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """teacher_layers: next-token CE and 1 − cos to the teacher's last hidden states.

    ``rows``: spans in teacher ids; the student reads the same tokens in its own ids (its
    vocabulary holds every token of the warm-up text, so the two align position by position)."""
    codec = student.codec
    student_rows = [codec.student(r) for r in rows]
    if any(len(a) != len(b) for a, b in zip(student_rows, rows)):
        raise DistillError("warm-up: a span's tokens are outside the student's vocabulary")
    ids, mask = pad(student_rows, 0), length_mask(student_rows)
    teacher_ids = pad(rows, 0)
    with torch.no_grad():
        target = teacher(input_ids=teacher_ids, attention_mask=mask, output_hidden_states=True).hidden_states[
            -1
        ]
    out = student.summarizer.lm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    real = mask.bool()
    labels = torch.where(real, ids, -100)[:, 1:]
    ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    cos = F.cosine_similarity(out.hidden_states[-1][real].float(), target[real].float(), dim=-1)
    return ce, (1.0 - cos).mean()


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
        "objective": "heal" if student.summarizer is not None else "denoise",
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
    teacher = None
    if student.summarizer is not None:
        from transformers import AutoModelForCausalLM

        from distill.core.assets import resolve_teacher

        teacher = AutoModelForCausalLM.from_pretrained(
            resolve_teacher(teacher_layers_options(cfg).decoder_source), dtype=torch.float32
        ).eval()
        tokens = student.codec.tokenizer(documents, add_special_tokens=False)["input_ids"]
        params = [p for p in student.summarizer.parameters() if p.requires_grad]
    else:
        tokens = tokenizer(documents, add_special_tokens=False)["input_ids"]
        params = [p for p in student.backbone.parameters() if p.requires_grad]
    rows = spans(tokens, wc.length)
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
        if teacher is not None:
            ce, cos = heal_step(student, teacher, picked)
            loss = ce + wc.hidden_weight * cos
        else:
            loss = denoise_step(student, tokenizer, picked, wc, g)
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
        "spans": len(rows),
        "loss_first": round(sum(history[:window]) / window, 4),
        "loss_last": round(sum(history[-window:]) / window, 4),
    }
