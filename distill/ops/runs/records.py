"""Scheduled runs: every `distill run` in its own folder ``run_dir/<id>/``, one at a time per
pipeline (a lock), a history line per run, and promotion of the new student to
``run_dir/promoted`` only when its gates pass and it is not worse than the promoted one.

Layout of a pipeline's ``run_dir`` after scheduled runs::

    <id>/{teach,train,eval}/, <id>/run.json     one run (id: UTC time + config/input hash)
    latest -> <id>                               newest run that finished eval
    promoted -> <id>                             the student in production
    history.jsonl                                one line per run, whatever its outcome
    .lock                                        held (flock) by the running run

The stages (`distill teach/train/eval`) stay usable on their own; they read and write
``run_dir/{teach,train,eval}`` directly. Only `distill run` makes run folders.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from distill.core.config import PipelineConfig
from distill.core.data import source_fingerprint
from distill.core.errors import DistillError
from distill.core.manifest import now

RUN_FILE = "run.json"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = ".lock"
LATEST, PROMOTED = "latest", "promoted"

# Exit codes of `distill run` (and of the single stages, where they apply); README "Exit codes".
EXIT_OK = 0
EXIT_CRASH = 1  # an unexpected exception: a bug, or the machine (out of memory, disk full)
EXIT_CONFIG = 2  # bad config, data, cache or checkpoint: the message names the culprit
EXIT_TEACHER = 3  # the teacher failed items; their splits were not written (a rerun retries them)
EXIT_GATES = 4  # a configured eval gate failed; the student was not promoted
EXIT_LOCKED = 5  # another run of this pipeline holds the lock


class RunLocked(DistillError):
    """Another `distill run` of the same pipeline is running."""


def run_id(cfg: PipelineConfig, now: float | None = None) -> str:
    """``20261123T031500Z-1a2b3c4d``: the start time (UTC), then a hash of the resolved config
    (run_dir aside) and every data file's content, so two runs on the same inputs share it."""
    config = cfg.to_dict()
    config.pop("run_dir")
    sources = sorted({source for task in cfg.tasks for source in task.data.values()})
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for source in sources:
        digest.update(source_fingerprint(source).encode())
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{stamp}-{digest.hexdigest()[:8]}"


@dataclass
class Lock:
    """An exclusive flock on ``run_dir/.lock``. The kernel drops it when its holder dies, so a
    killed run's lock is never stuck: the file's holder record then names a process that no
    longer holds it, which the next run reports as taken over."""

    path: Path
    handle: TextIO
    took_over: dict[str, Any] | None

    @classmethod
    def acquire(cls, run_dir: Path, holder: dict[str, Any]) -> Lock:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_FILE
        handle = open(path, "a+")  # noqa: SIM115 - held open for the run's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            who = _holder(handle.read())
            handle.close()
            raise RunLocked(
                f"{path}: another run of this pipeline is running (pid {who.get('pid', '?')} on "
                f"{who.get('host', '?')}, run {who.get('run_id', '?')}, started {who.get('started', '?')}); "
                "this run did nothing"
            ) from None
        handle.seek(0)
        previous = _holder(handle.read()) or None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        return cls(path, handle, previous)

    def release(self) -> None:
        """Clear the holder record (a clean exit leaves nothing to take over), then unlock."""
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.flush()
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _holder(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"pid": "?", "note": "unreadable lock record"}
    return data if isinstance(data, dict) else {}


def holder_record(run: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run, "started": now()}


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def point(run_dir: Path, name: str, target: str) -> None:
    """Atomically make ``run_dir/name`` a relative symlink to the run folder ``target``."""
    tmp = run_dir / f".{name}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target, target_is_directory=True)
    tmp.replace(run_dir / name)


def pointed(run_dir: Path, name: str) -> str | None:
    """The run id ``run_dir/name`` points at, if any."""
    link = run_dir / name
    return os.readlink(link) if link.is_symlink() and link.exists() else None


def remove_checkpoints(folder: Path) -> float:
    """Delete a finished run's training checkpoints (optimizer state: several GB for a 186M
    student) once its student is exported and evaluated; returns the MB freed. A run that
    did not finish keeps them for --resume."""
    ckpt = folder / "train" / "checkpoints"
    if not ckpt.is_dir():
        return 0.0
    size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    shutil.rmtree(ckpt)
    return round(size / 2**20, 1)


def append_history(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / HISTORY_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            raise DistillError(f"{path}:{n}: not a JSON line; fix or remove it") from None
    return out


def resumable(run_dir: Path) -> str | None:
    """The newest run folder that did not finish (its run.json says running or crashed)."""
    if not run_dir.is_dir():
        return None
    for folder in sorted((p for p in run_dir.iterdir() if (p / RUN_FILE).is_file()), reverse=True):
        status = json.loads((folder / RUN_FILE).read_text()).get("status")
        if status in ("running", "crashed"):
            return folder.name
    return None


def headline_means(folder: Path) -> dict[str, float | None]:
    """Task → the student's headline metric (accuracy, ROUGE-L) on the eval rows of a run."""
    rows = json.loads((folder / "eval" / "rows.json").read_text())
    out = {}
    for task, record in rows.items():
        values = [v for v in record["scores"][record["headline"]] if v is not None]
        out[task] = round(sum(values) / len(values), 4) if values else None
    return out


def history_table(records: list[dict[str, Any]], promoted: str | None) -> str:
    """The history as a markdown table: one line per run, the promoted one marked."""
    lines = [
        "| run | started | duration s | status | taught new / cached | teacher cost | headline | "
        "gates | promoted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        teach = r.get("teach") or {}
        taught = f"{teach['teacher_calls']} / {teach['cache_hits']}" if teach else ""
        cost = f"${teach['cost_usd']:.4f}" if teach.get("cost_usd") is not None else ""
        headline = ", ".join(f"{t} {v:.3f}" for t, v in (r.get("headline") or {}).items() if v is not None)
        gates = r.get("gates")
        gate = "" if gates is None else ("pass" if gates["passed"] else "FAIL " + ", ".join(gates["failed"]))
        decision = r.get("promotion") or {}
        mark = "yes" if decision.get("promote") else ("no" if decision else "")
        if r["id"] == promoted:
            mark += " (current)"
        cells = [r["id"], r.get("started", ""), str(r.get("duration_s", "")), r.get("status", "")]
        lines.append("| " + " | ".join([*cells, taught, cost, headline, gate, mark]) + " |")
    return "\n".join(lines)


# --- promotion -------------------------------------------------------------------------------
def compare_rows(new: dict[str, Any], old: dict[str, Any], resamples: int, seed: int) -> dict[str, Any]:
    """Paired comparison of two students' per-row headline scores on the same rows (one task):
    the means, their difference new − old, and its 95% percentile bootstrap interval."""
    from distill.eval.stats import bootstrap_indices, mean_estimate

    headline = new["headline"]
    if new["ids"] != old["ids"]:
        raise DistillError("promotion: the two students were scored on different rows")
    a = np.array([np.nan if v is None else v for v in new["scores"][headline]], dtype=float)
    b = np.array([np.nan if v is None else v for v in old["scores"][headline]], dtype=float)
    draws = bootstrap_indices(len(a), resamples, seed)
    diff = mean_estimate("diff", a - b, draws)
    return {
        "headline": headline,
        "rows": len(a),
        "new": round(float(np.nanmean(a)), 4),
        "promoted": round(float(np.nanmean(b)), 4),
        "diff": diff["diff"],
        "diff_ci95": diff["diff_ci95"],
    }


def decide(gates_passed: bool, comparison: dict[str, Any] | None, margin: float) -> dict[str, Any]:
    """Promote when the gates pass and no task is worse than the promoted student beyond the
    noise: the upper end of its new − promoted interval is not below ``-margin``."""
    if not gates_passed:
        return {"promote": False, "reason": "gates failed"}
    if comparison is None:
        return {"promote": True, "reason": "no promoted student yet"}
    worse = [
        f"{task} ({c['headline']} {c['new']:.4f} vs {c['promoted']:.4f}, "
        f"new − promoted 95% CI [{c['diff_ci95'][0]:.4f}, {c['diff_ci95'][1]:.4f}])"
        for task, c in comparison.items()
        if c["diff_ci95"] is not None and c["diff_ci95"][1] < -margin
    ]
    if worse:
        reason = "worse than the promoted student beyond the noise: " + "; ".join(worse)
        return {"promote": False, "reason": reason}
    return {"promote": True, "reason": "not worse than the promoted student beyond the noise on any task"}


def rescore_promoted(cfg: PipelineConfig, promoted_student: Path, new_rows: dict[str, Any]) -> dict[str, Any]:
    """The promoted student's per-row scores on this run's eval rows (the same rows the new
    student was scored on), for the tasks both students have."""
    import torch

    from distill.core.data import read_jsonl
    from distill.core.devices import eval_device
    from distill.core.layout import output_path
    from distill.eval.run import row_record
    from distill.student.model import load_student
    from distill.tasks import tasks_for

    student, tokenizer = load_student(promoted_student)
    student.to(eval_device(cfg.eval.device))
    torch.set_grad_enabled(False)
    out = {}
    for task in tasks_for(cfg):
        if task.name not in new_rows or task.name not in student.spec.tasks:
            continue
        rows = read_jsonl(output_path(cfg, task.name, cfg.eval.split))
        out[task.name] = row_record(task, rows, task.row_scores(cfg, rows, student, tokenizer))
    return out


def promotion(cfg: PipelineConfig, run_dir: Path, gates_passed: bool) -> dict[str, Any]:
    """Decide on this run's student (``cfg.path`` is the run folder); returns the record kept
    in run.json and the history: the decision, its reason, and the per-task comparison."""
    promoted = pointed(run_dir, PROMOTED)
    new_rows = json.loads((cfg.path / "eval" / "rows.json").read_text())
    comparison = None
    if promoted is not None and gates_passed:
        old_rows = rescore_promoted(cfg, run_dir / promoted / "train" / "student", new_rows)
        ec = cfg.eval
        comparison = {
            task: compare_rows(new_rows[task], old_rows[task], ec.bootstrap_resamples, ec.bootstrap_seed)
            for task in old_rows
        }
    decision = decide(gates_passed, comparison, cfg.eval.promote_margin)
    return {**decision, "against": promoted, "comparison": comparison}
