"""`teacher.mode: batch`: the misses go to the OpenAI Batch API as one JSONL job.

The job's id is written to ``<run>/teach/batches/`` the moment the job exists, so a rerun
after a crash collects that job instead of submitting (and paying for) a new one. The
answers are parsed exactly as online answers are and handed to the cache; a job is
forgotten once its answers have all been handed over.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.core.errors import DistillError
from distill.teach.prompts import Prompt
from distill.teach.teachers.answers import ItemFailed, NoLogprobs, parse_label
from distill.teach.teachers.openai.labels import label_body, summary_body

if TYPE_CHECKING:
    from distill.teach.teachers.openai.client import APITeacher

TERMINAL = ("completed", "failed", "expired", "cancelled")


def run_batch(
    teacher: APITeacher, kind: str, prompts: Sequence[Prompt], verbalizers: Sequence[str]
) -> Iterator[tuple[int, dict[str, Any]]]:
    folder = (teacher.state_dir or Path(".")) / "batches"
    make = label_body if kind == "label" else summary_body
    bodies = [make(teacher.cfg, p) for p in prompts]
    where: dict[str, list[int]] = {}  # custom_id → prompt indices (identical requests are asked once)
    for i, body in enumerate(bodies):
        custom_id = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]
        where.setdefault(custom_id, []).append(i)
    client = teacher.client(asynchronous=False)
    pending = set(where)
    jobs = [(path, json.loads(path.read_text())) for path in sorted(folder.glob("*.json"))]
    for path, state in jobs:  # jobs an earlier, interrupted run submitted
        mine = pending & set(state["custom_ids"])
        if mine:
            print(f"teach: resuming batch {state['batch_id']} ({len(mine)} requests)", file=sys.stderr)
            yield from _spread(collect(teacher, client, state, kind, verbalizers, mine), where)
            pending -= mine
            path.unlink()
    if not pending:
        return
    todo = sorted(pending)
    limit = teacher.opts.max_requests
    allowed = len(todo) if limit is None else max(0, limit - teacher.counts["requests"])
    if teacher.budget_left(0):  # the cost budget is already spent
        allowed = 0
    if allowed < len(todo):
        reason = teacher.budget_left(len(todo)) or "budget reached"
        yield from _spread(((c, {"error": reason}) for c in todo[allowed:]), where)
        todo = todo[:allowed]
    if todo:
        path, state = submit(teacher, client, kind, {c: bodies[where[c][0]] for c in todo}, folder)
        yield from _spread(collect(teacher, client, state, kind, verbalizers, set(todo)), where)
        path.unlink()


def _spread(answers: Iterator[tuple[str, dict[str, Any]]], where: dict[str, list[int]]):
    for custom_id, answer in answers:
        for i in where[custom_id]:
            yield i, answer


def submit(
    teacher: APITeacher, client: Any, kind: str, bodies: dict[str, dict[str, Any]], folder: Path
) -> tuple[Path, dict[str, Any]]:
    lines = [
        json.dumps({"custom_id": c, "method": "POST", "url": "/v1/chat/completions", "body": b})
        for c, b in bodies.items()
    ]
    job = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    uploaded = client.files.create(
        file=(f"distill-{kind}-{job}.jsonl", ("\n".join(lines) + "\n").encode(), "application/jsonl"),
        purpose="batch",
    )
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"distill_job": job, "kind": kind},
    )
    state = {
        "batch_id": batch.id,
        "input_file_id": uploaded.id,
        "kind": kind,
        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "custom_ids": sorted(bodies),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(path)
    print(f"teach: submitted batch {batch.id} ({len(lines)} requests)", file=sys.stderr)
    return path, state


def collect(
    teacher: APITeacher,
    client: Any,
    state: dict[str, Any],
    kind: str,
    verbalizers: Sequence[str],
    wanted: set[str],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Wait for the job, then yield (custom_id, answer) for every wanted request."""
    batch_id = state["batch_id"]
    while (batch := client.batches.retrieve(batch_id)).status not in TERMINAL:
        done = getattr(batch.request_counts, "completed", "?") if batch.request_counts else "?"
        print(f"teach: batch {batch_id} {batch.status} ({done}/{len(state['custom_ids'])})", file=sys.stderr)
        time.sleep(teacher.opts.batch_poll_s)
    answers: dict[str, dict[str, Any]] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            for line in client.files.content(file_id).text.splitlines():
                if line.strip():
                    custom_id, answer = _answer(teacher, line, kind, verbalizers)
                    answers[custom_id] = answer
    if batch.status == "failed" and not answers:
        errors = [e.message for e in (batch.errors.data or [])] if batch.errors else []
        raise DistillError(f"batch {batch_id} failed: {'; '.join(map(str, errors)) or 'no reason given'}")
    for custom_id in sorted(wanted):
        yield (
            custom_id,
            answers.get(custom_id) or {"error": f"batch {batch_id} ended {batch.status} without it"},
        )


def _answer(
    teacher: APITeacher, line: str, kind: str, verbalizers: Sequence[str]
) -> tuple[str, dict[str, Any]]:
    try:
        record = json.loads(line)
        custom_id = record["custom_id"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DistillError(f"batch output line is not a result record: {line[:120]!r}") from None
    response = record.get("response") or {}
    body = response.get("body")
    if record.get("error") or response.get("status_code") != 200 or not isinstance(body, dict):
        detail = record.get("error") or (body or {}).get("error") or response.get("status_code")
        return custom_id, {"error": teacher.redact(f"batch request failed: {json.dumps(detail)[:200]}")}
    teacher.account(body.get("usage"))
    try:
        answer = parse_label(body, verbalizers) if kind == "label" else teacher.parse_summary(body)
    except NoLogprobs:
        answer = {"error": "no logprobs in the batch answer (batch mode has no fallback; use mode: online)"}
    except ItemFailed as e:
        answer = {"error": str(e)}
    return custom_id, answer
