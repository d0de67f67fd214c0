"""`teach.select`: ask the teacher about the train rows the learner is least sure of, round by
round (the rounds: distill/teach/select.py), instead of every row.

Round 0 asks about the seed rows together with the task's other taught splits (validation,
test: always taught whole, as eval and calibration need them); every later round asks only
about pool rows. Each round's distributions are calibrated as the teach output is, so the
learner fits what the student will. After each round its rows are appended to
``teach/<task>/select.jsonl``; a rerun replays those rounds from the answer cache (no call),
checks that it chooses the same rows, and goes on from there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.assets import resolve_encoder
from distill.core.config import PipelineConfig
from distill.core.data import Example
from distill.core.errors import DistillError
from distill.core.tensors import length_mask, pad
from distill.tasks import Task
from distill.teach.select import Round, Selection, select
from distill.teach.teachers.cached import CachedTeacher


def state_path(cfg: PipelineConfig, task: str) -> Path:
    return cfg.path / "teach" / task / "select.jsonl"


@torch.inference_mode()
def embed(cfg: PipelineConfig, task: Task, rows: list[Example], batch: int = 64) -> np.ndarray:
    """(rows, hidden) float64: the frozen student encoder's mean-pooled states of the inputs the
    student reads (pairs as pairs)."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder(cfg.train.student.encoder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()
    except OSError as e:
        raise DistillError(
            f"teach.select: cannot load the encoder {cfg.train.student.encoder!r} ({e})"
        ) from None
    encoded = task.encode(rows, tokenizer, cfg.train.student.max_length)
    ids, types = encoded["input_ids"], encoded.get("token_type_ids")
    out = []
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        mask = length_mask(chunk)
        extra = {"token_type_ids": pad(types[start : start + batch], 0)} if types else {}
        states = model(input_ids=pad(chunk, tokenizer.pad_token_id or 0), attention_mask=mask, **extra)[0]
        m = mask.unsqueeze(-1).to(states.dtype)
        out.append(((states * m).sum(1) / m.sum(1).clamp(min=1.0)).double())
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.hidden_size))


def _settings(cfg: PipelineConfig, pool: list[Example]) -> dict[str, Any]:
    """What the rounds depend on: a saved state is replayed only under the same settings."""
    s = cfg.teach.select
    ids = hashlib.sha256(json.dumps([ex["id"] for ex in pool]).encode()).hexdigest()[:16]
    return {
        "strategy": s.strategy,
        "seed_rows": s.seed_rows,
        "per_round": s.per_round,
        "seed": s.seed,
        "committee": s.committee,
        "l2": s.l2,
        "learner": s.learner,
        "encoder": cfg.train.student.encoder,
        "pool_ids": ids,
    }


def _saved_rounds(path: Path, settings: dict[str, Any], index: dict[str, int]) -> list[Round]:
    if not path.is_file():
        return []
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError:
        return []  # a torn last line (killed mid-write): start over, the cache makes that free
    if not lines or lines[0].get("settings") != settings:
        return []
    return [
        Round(r["round"], [index[i] for i in r["ids"]])
        for r in lines[1:]
        if all(i in index for i in r["ids"])
    ]


def teach_selected(
    task: Task,
    cached: CachedTeacher,
    cfg: PipelineConfig,
    examples: dict[str, list[Example]],
    shots: list[Example],
) -> tuple[dict[str, list[Any]], dict[str, Any] | None, list[Example], list[dict[str, Any]], dict[str, Any]]:
    """Teach ``task`` with its train pool selected.

    Returns what ``Task.teach`` returns for the train rows asked (and the other splits whole),
    the train examples those answers belong to, the pseudo-labelled rows, and the record for the
    teach manifest."""
    sel_cfg = cfg.teach.select
    pool = examples["train"]
    others = {split: rows for split, rows in examples.items() if split != "train"}
    x = embed(cfg, task, pool)
    settings = _settings(cfg, pool)
    index = {ex["id"]: i for i, ex in enumerate(pool)}
    path = state_path(cfg, task.name)
    done = _saved_rounds(path, settings, index)
    resumed = len(done)
    teacher = cached.teacher
    fitted_in_round_0: list[Any] = []

    def cost() -> float | None:
        return teacher.usage().get("cost_usd")

    def ask(rows: list[int]) -> tuple[dict[int, np.ndarray], int, float | None]:
        before = cost()
        asked = [pool[i] for i in rows]
        if not fitted_in_round_0:  # round 0: the seed rows, with the other splits
            answers, fitted = task.teach(cached, cfg, {**others, "train": asked}, shots)
            fitted_in_round_0.append(fitted)
            got = answers["train"]
        else:
            got = task.ask_rows(cached, asked, shots)
        ok = [(i, a) for i, a in zip(rows, got) if "error" not in a]
        out = task.output_rows([pool[i] for i, _ in ok], [a for _, a in ok], fitted_in_round_0[0])
        dists = {i: np.asarray(r["teacher_distribution"], dtype=np.float64) for (i, _), r in zip(ok, out)}
        after = cost()
        return dists, len(rows) - len(ok), None if before is None or after is None else after - before

    def save(current: Round, sel: Selection) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if current.index == 0:
            path.write_text(json.dumps({"settings": settings}) + "\n")
        with path.open("a") as f:
            f.write(json.dumps({**current.record(), "ids": [pool[i]["id"] for i in current.rows]}) + "\n")

    calls_before = cached.calls
    sel = select(
        x,
        ask,
        sel_cfg.strategy,
        sel_cfg.seed_rows,
        sel_cfg.per_round,
        sel_cfg.budget,
        seed=sel_cfg.seed,
        committee=sel_cfg.committee,
        l2=sel_cfg.l2,
        max_cost=sel_cfg.max_cost,
        done=done,
        on_round=save,
    )
    asked = [pool[i] for i in sel.asked]
    answers, fitted = task.teach(cached, cfg, {**others, "train": asked}, shots)
    pseudo: list[dict[str, Any]] = []
    if sel_cfg.pseudo_label and sel.proxy is not None:
        seen = set(sel.asked)
        rest = [i for i in range(len(pool)) if i not in seen]
        if rest:
            probs = sel.proxy.predict(x[rest])
            keep = probs.max(-1) >= sel_cfg.pseudo_label.min_confidence
            pseudo = task.pseudo_rows([pool[i] for i, k in zip(rest, keep) if k], probs[keep])
    record = {
        "strategy": sel_cfg.strategy,
        "learner": sel_cfg.learner,
        "pool": len(pool),
        "budget": sel_cfg.budget,
        "asked": len(sel.asked),
        "answered": len(sel.targets),
        "pseudo_labelled": len(pseudo),
        "left": len(pool) - len(sel.asked) - len(pseudo),
        "stopped": sel.stopped,
        "resumed_rounds": resumed,
        "teacher_calls": cached.calls - calls_before,
        "rounds": [r.record() for r in sel.rounds],
        "state": str(path),
    }
    return answers, fitted, asked, pseudo, record
