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
from distill.core.data import Example, read_jsonl
from distill.core.errors import DistillError
from distill.core.layout import resolve_student_dir
from distill.core.tensors import length_mask, pad
from distill.tasks import Task
from distill.teach.select import (
    PSEUDO_LABEL,
    Round,
    Selection,
    entropy_scores,
    margin_scores,
    select,
    top_rows,
)
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


def _content(ex: dict[str, Any]) -> tuple[str, str | None]:
    """A row's identity across runs: its text (and second text), not its position."""
    return ex["text"], ex.get("text_pair")


def teach_by_student(
    task: Task,
    cached: CachedTeacher,
    cfg: PipelineConfig,
    examples: dict[str, list[Example]],
    shots: list[Example],
    student_dir: Path,
) -> tuple[dict[str, list[Any]], dict[str, Any] | None, list[Example], list[dict[str, Any]], dict[str, Any]]:
    """The nightly loop (learner student): what ``teach_selected`` returns, with the pool rows
    chosen by a trained student. Rows its own run was taught ("known") are asked again (the cache
    holds them); of the new rows, the ``budget`` the student is least sure of (strategy margin,
    entropy, or random) go to the teacher, and with ``pseudo_label`` the student's confident
    rest become pseudo labels."""
    from distill.student.model import load_student

    sel_cfg = cfg.teach.select
    pool = examples["train"]
    others = {split: rows for split, rows in examples.items() if split != "train"}
    student, tokenizer = load_student(student_dir)
    entry = student.spec.tasks.get(task.name)
    if entry is None or entry.get("labels") != task.labels:
        raise DistillError(
            f"teach.select.learner student: {student_dir} has no task {task.name!r} with labels {task.labels}"
        )
    taught_path = output_path_of(student_dir, task.name)
    known_rows = read_jsonl(taught_path) if taught_path.is_file() else []
    known_keys = {_content(r) for r in known_rows if r.get("teacher_method") != PSEUDO_LABEL}
    known = [ex for ex in pool if _content(ex) in known_keys]
    new = [ex for ex in pool if _content(ex) not in known_keys]
    probs = task.student_probs(student, tokenizer, new, cfg.eval.batch_size) if new else np.zeros((0, 1))
    k = len(new) if sel_cfg.budget is None else min(sel_cfg.budget, len(new))
    if sel_cfg.strategy == "random":
        scores = np.random.default_rng(sel_cfg.seed).permutation(len(new)).astype(float)
    else:
        scores = (
            (margin_scores if sel_cfg.strategy == "margin" else entropy_scores)(probs) if new else np.zeros(0)
        )
    chosen = sorted(int(i) for i in top_rows(scores, np.arange(len(new)), k)) if new else []
    asked = known + [new[i] for i in chosen]
    calls_before = cached.calls
    answers, fitted = task.teach(cached, cfg, {**others, "train": asked}, shots)
    pseudo: list[dict[str, Any]] = []
    if sel_cfg.pseudo_label:
        rest = sorted(set(range(len(new))) - set(chosen))
        keep = [i for i in rest if probs[i].max() >= sel_cfg.pseudo_label.min_confidence]
        pseudo = task.pseudo_rows([new[i] for i in keep], probs[keep]) if keep else []
    record = {
        "strategy": sel_cfg.strategy,
        "learner": "student",
        "student": str(student_dir),
        "pool": len(pool),
        "budget": sel_cfg.budget,
        "known": len(known),
        "new": len(new),
        "asked": len(asked),
        "asked_new": len(chosen),
        "pseudo_labelled": len(pseudo),
        "left": len(new) - len(chosen) - len(pseudo),
        "teacher_calls": cached.calls - calls_before,
        "scores": {
            "chosen_mean": round(float(scores[chosen].mean()), 4) if chosen else None,
            "new_mean": round(float(scores.mean()), 4) if new else None,
        },  # fmt: skip
    }
    return answers, fitted, asked, pseudo, record


def output_path_of(student_dir: Path, task: str) -> Path:
    """The train rows the run holding ``student_dir`` (``<run>/train/student``) was taught."""
    return Path(student_dir).resolve().parent.parent / "teach" / task / "train.jsonl"


def teach_pool(
    task: Task,
    cached: CachedTeacher,
    cfg: PipelineConfig,
    examples: dict[str, list[Example]],
    shots: list[Example],
) -> tuple[dict[str, list[Any]], dict[str, Any] | None, list[Example], list[dict[str, Any]], dict[str, Any]]:
    """teach.select's entry: the student's nightly choice when there is a student to choose,
    else the proxy's rounds (recorded as such)."""
    sel_cfg = cfg.teach.select
    if sel_cfg.learner == "student":
        student_dir = None
        if sel_cfg.student:
            try:
                student_dir = resolve_student_dir(sel_cfg.student)
            except DistillError:
                student_dir = None  # the first night: nothing trained yet
        if student_dir is not None:
            return teach_by_student(task, cached, cfg, examples, shots, student_dir)
        out = teach_selected(task, cached, cfg, examples, shots)
        out[-1]["learner"] = "proxy (no student yet)"
        return out
    return teach_selected(task, cached, cfg, examples, shots)
