"""Promotion: whether a scheduled run's student becomes ``run_dir/promoted``.

The new student is compared task by task, row by row on this run's eval rows, with two
students rescored on those same rows: the promoted one, and the best one ever promoted (by the
headline mean its history line recorded), so a chain of runs each within the noise of the
previous one cannot ratchet down. A task that cannot be compared (the promoted student lacks
it; no row has a score from both students) is recorded with why, and refuses promotion unless
``eval.promote_when_uncompared: allow``. The rule itself: ``decide``; EvalConfig documents it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.core.config import PipelineConfig
from distill.core.errors import DistillError
from distill.ops.runs.history import history
from distill.ops.runs.records import PROMOTED, pointed


def compare_rows(
    new: dict[str, Any], old: dict[str, Any], resamples: int, seed: int
) -> dict[str, Any] | None:
    """Paired comparison of two students' per-row headline scores on the same rows (one task):
    the means, their difference new − old, and its 95% percentile bootstrap interval; None when
    no row has a score from both (nothing to tell them apart by)."""
    from distill.eval.metrics.bootstrap import bootstrap_indices, mean_estimate

    headline = new["headline"]
    if new["ids"] != old["ids"]:
        raise DistillError("promotion: the two students were scored on different rows")
    a = np.array([np.nan if v is None else v for v in new["scores"][headline]], dtype=float)
    b = np.array([np.nan if v is None else v for v in old["scores"][headline]], dtype=float)
    if np.isnan(a - b).all():
        return None
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


@dataclass
class Comparisons:
    """Task → the comparison with the promoted student, with the best promoted ever (each with
    the ``run`` it was), and why a task could not be compared."""

    promoted: dict[str, dict[str, Any]] = field(default_factory=dict)
    best_ever: dict[str, dict[str, Any]] = field(default_factory=dict)
    not_compared: dict[str, str] = field(default_factory=dict)

    def add(
        self, into: dict[str, dict[str, Any]], new_rows: dict[str, Any], old_rows: dict[str, Any],
        run: str, resamples: int, seed: int,
    ) -> None:  # fmt: skip
        """Compare every task of ``new_rows`` with the student of ``run`` (``old_rows``: its
        rescored rows, the tasks it has)."""
        for task, new in new_rows.items():
            if task not in old_rows:
                self.not_compared.setdefault(task, f"the student of run {run} has no task {task}")
                continue
            compared = compare_rows(new, old_rows[task], resamples, seed)
            if compared is None:
                reason = f"no eval row has a {new['headline']} score from both students"
                self.not_compared.setdefault(task, reason)
            else:
                into[task] = {**compared, "run": run}

    def drift(self) -> dict[str, float]:
        """Task → best promoted ever − new, headline mean on this run's eval rows."""
        return {task: round(-c["diff"], 4) for task, c in self.best_ever.items()}


def _ci(c: dict[str, Any]) -> str:
    lo, hi = c["diff_ci95"]
    return f"{c['headline']} {c['new']:.4f} vs {c['promoted']:.4f}, new − old 95% CI [{lo:.4f}, {hi:.4f}]"


def decide(
    gates_passed: bool, comparisons: Comparisons | None, margin: float, when_uncompared: str = "refuse"
) -> dict[str, Any]:
    """Promote when the gates pass and no task is worse than the promoted student, nor than the
    best promoted ever, beyond the noise (the upper end of new − old's interval below
    ``-margin``), and every task was compared (or ``when_uncompared`` is allow)."""
    if not gates_passed:
        return {"promote": False, "reason": "gates failed"}
    if comparisons is None:
        return {"promote": True, "reason": "no promoted student yet"}

    def beyond(c: dict[str, Any]) -> bool:
        return c["diff_ci95"] is not None and c["diff_ci95"][1] < -margin

    worse = [f"{t} ({_ci(c)})" for t, c in comparisons.promoted.items() if beyond(c)]
    if worse:
        reason = "worse than the promoted student beyond the noise: " + "; ".join(worse)
        return {"promote": False, "reason": reason}
    # past the check above, a best-ever comparison beyond the noise is with another run
    below = [f"{t} (run {c['run']}: {_ci(c)})" for t, c in comparisons.best_ever.items() if beyond(c)]
    if below:
        reason = "worse than the best promoted student beyond the noise: " + "; ".join(below)
        return {"promote": False, "reason": reason}
    unknown = "; ".join(f"{t} ({why})" for t, why in comparisons.not_compared.items())
    if unknown and when_uncompared != "allow":
        reason = f"could not compare {unknown}; eval.promote_when_uncompared: allow promotes anyway"
        return {"promote": False, "reason": reason}
    reason = "not worse than the promoted student, nor the best promoted, beyond the noise on any task"
    if unknown:
        reason += f" compared; not compared (eval.promote_when_uncompared: allow): {unknown}"
    return {"promote": True, "reason": reason}


def best_promoted(records: list[dict[str, Any]], run_dir: Path) -> dict[str, dict[str, Any]]:
    """Task → the promoted run (``run``) with the highest headline mean its history line
    recorded (``headline``, on its own eval rows), among runs whose student is still in
    ``run_dir`` (deleting a run folder retires it from the comparison)."""
    best: dict[str, dict[str, Any]] = {}
    for r in records:
        if not (r.get("promotion") or {}).get("promote"):
            continue
        if not (run_dir / r["id"] / "train" / "student").is_dir():
            continue
        for task, value in (r.get("headline") or {}).items():
            if value is not None and (task not in best or value > best[task]["headline"]):
                best[task] = {"run": r["id"], "headline": value}
    return best


def rescore(cfg: PipelineConfig, student_dir: Path, new_rows: dict[str, Any]) -> dict[str, Any]:
    """Another student's per-row scores on this run's eval rows (the rows the new student was
    scored on), for the tasks of ``new_rows`` that student has."""
    import torch

    from distill.core.data import read_jsonl
    from distill.core.devices import eval_device
    from distill.core.layout import output_path
    from distill.eval.run import row_record
    from distill.student.model import load_student
    from distill.tasks import tasks_for

    student, tokenizer = load_student(student_dir)
    student.to(eval_device(cfg.eval.device))
    out = {}
    for task in tasks_for(cfg):
        if task.name not in new_rows or task.name not in student.spec.tasks:
            continue
        rows = read_jsonl(output_path(cfg, task.name, cfg.eval.split))
        with torch.no_grad():  # a scoped switch: this runs inside other processes' code (tests, run)
            out[task.name] = row_record(task, rows, task.row_scores(cfg, rows, student, tokenizer))
    return out


def compare(cfg: PipelineConfig, run_dir: Path, promoted: str, new_rows: dict[str, Any]) -> Comparisons:
    """Rescore the promoted student, and each best promoted student that is another run, on this
    run's eval rows and compare them with the new student."""
    ec, found = cfg.eval, Comparisons()

    def student(run: str) -> Path:
        return run_dir / run / "train" / "student"

    old = rescore(cfg, student(promoted), new_rows)
    found.add(found.promoted, new_rows, old, promoted, ec.bootstrap_resamples, ec.bootstrap_seed)
    best = best_promoted(history(run_dir), run_dir)
    for run in sorted({b["run"] for b in best.values()} - {promoted}):
        tasks = {t: new_rows[t] for t, b in best.items() if b["run"] == run and t in new_rows}
        rows = rescore(cfg, student(run), tasks)
        found.add(found.best_ever, tasks, rows, run, ec.bootstrap_resamples, ec.bootstrap_seed)
    for task, c in found.promoted.items():  # the promoted student is the best one on the rest
        found.best_ever.setdefault(task, c)
    return found


def promotion(cfg: PipelineConfig, run_dir: Path, gates_passed: bool) -> dict[str, Any]:
    """Decide on this run's student (``cfg.path`` is the run folder); returns the record kept
    in run.json and the history: the decision, its reason, the per-task comparisons, the tasks
    not compared and the drift from the best promoted student."""
    promoted = pointed(run_dir, PROMOTED)
    found = None
    if promoted is not None and gates_passed:
        new_rows = json.loads((cfg.path / "eval" / "rows.json").read_text())
        found = compare(cfg, run_dir, promoted, new_rows)
    decision = decide(gates_passed, found, cfg.eval.promote_margin, cfg.eval.promote_when_uncompared)
    return {
        **decision,
        "against": promoted,
        "comparison": found.promoted if found else None,
        "best_ever": found.best_ever if found else None,
        "not_compared": found.not_compared if found else {},
        "drift": found.drift() if found else {},
    }
