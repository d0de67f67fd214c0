"""``train.validate_every``: which training step becomes the exported student.

Every N steps (and at the last one) the student is scored on a seeded random sample of each
task's validation split (``train.validation_rows`` rows, picked by ``train.seed`` with the same
bottom-k hashing as ``max_rows``), on the task's headline metric (accuracy, ROUGE-L), row by
row. The step with the best mean over tasks is kept as checkpoint tag ``best``; at the end it
replaces the last step only when its gain over the last step is beyond the noise: the 95%
paired bootstrap interval of (best − last), over the sampled rows, lies above 0. A few dozen
rows cannot tell apart steps a point or two apart, and picking the luckiest of several noisy
scores would otherwise export an earlier, less trained student for nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distill.core.data import sample_rows
from distill.core.errors import DistillError
from distill.eval.metrics.bootstrap import bootstrap_indices, percentile_interval
from distill.train import checkpoint
from distill.train import distributed as dist

if TYPE_CHECKING:
    from distill.tasks.base import Task
    from distill.train.recipe import Recipe

VALIDATION_FILE = "validation.jsonl"


def validation_rows(task: Task, n: int, seed: int) -> list[dict[str, Any]]:
    """The ``n`` validation rows of a task that are scored: a seeded random sample (bottom-k
    hashing, so it does not drift when rows are appended), not the file's first ``n``."""
    return sample_rows(task.load_split("validation"), n, seed)


def last_step(total_steps: int) -> dict[str, Any]:
    """The selection record without validation: the last step."""
    return {"step": total_steps, "by": "last step"}


def _resampled_means(per_row: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(resamples,) the mean of ``per_row`` over each resample of its rows, NaN rows skipped."""
    with np.errstate(invalid="ignore"):
        picked = per_row[draws]  # (resamples, n)
        counts = (~np.isnan(picked)).sum(-1)
        return np.where(counts > 0, np.nansum(picked, -1) / np.maximum(counts, 1), np.nan)


def _per_row(record: dict[str, Any], task: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in record["rows"][task]], dtype=float)


def _interval(
    per_task: dict[str, np.ndarray], draws: dict[str, np.ndarray]
) -> tuple[float, list[float] | None]:
    """The mean over tasks of each task's row mean, and its 95% bootstrap interval (each task's
    rows resampled on their own, the same draws for every step, so differences are paired)."""
    value = float(np.mean([np.nanmean(v) for v in per_task.values()]))
    with np.errstate(invalid="ignore"):
        samples = np.nanmean(np.stack([_resampled_means(v, draws[t]) for t, v in per_task.items()]), 0)
    return round(value, 5), percentile_interval(samples)


def select_step(
    records: list[dict[str, Any]], resamples: int, seed: int, best_step: int | None = None
) -> dict[str, Any]:
    """The selection record: the step exported, its score and interval, and why.

    ``records`` are the validated steps in order, the last being the last training step; each
    holds ``rows`` (task → per-row headline scores, None where undefined) and ``score``.
    ``best_step``: the step the ``best`` checkpoint holds (default: the best score, first of
    equals). It is chosen over the last step only if the paired interval of (best − last) lies
    above 0."""
    last = records[-1]
    by_step = {r["step"]: r for r in records}
    best = by_step.get(best_step) if best_step is not None else max(records, key=lambda r: r["score"])
    best = best or last
    tasks = [t for t in last["rows"] if t in best["rows"] and len(best["rows"][t]) == len(last["rows"][t])]
    draws = {t: bootstrap_indices(len(last["rows"][t]), resamples, seed) for t in tasks}
    record: dict[str, Any] = {"by": "validation", "steps_scored": [r["step"] for r in records]}
    record["best_step"], gain = best["step"], None
    if best is last:
        chosen, why = last, "the last step scored best"
    elif not tasks:
        chosen, why = last, f"step {best['step']} has no per-row scores to compare: kept the last step"
    else:
        diff = {t: _per_row(best, t) - _per_row(last, t) for t in tasks}
        gain, gain_ci = _interval(diff, draws)
        record.update(gain_over_last=gain, gain_ci95=gain_ci)
        span = "no interval" if gain_ci is None else f"95% CI [{gain_ci[0]:.4f}, {gain_ci[1]:.4f}]"
        beyond = gain_ci is not None and gain_ci[0] > 0
        chosen = best if beyond else last
        why = f"step {best['step']} beats the last step {last['step']} by {gain:.4f} ({span}): " + (
            "beyond the noise" if beyond else "within the noise, kept the last step"
        )
    record["step"], record["why"] = chosen["step"], why
    if tasks:
        record["score"], record["score_ci95"] = _interval({t: _per_row(chosen, t) for t in tasks}, draws)
    else:
        record["score"], record["score_ci95"] = chosen["score"], None
    record["scores"] = chosen["scores"]
    record["rows"] = {t: len(v) for t, v in chosen["rows"].items()}
    return record


@dataclass
class Validation:
    """The sampled validation rows, the records so far (``train/validation.jsonl``, one per
    validated step, per-row scores included so a resumed run can still select), and the step
    the ``best`` checkpoint holds."""

    rows: dict[str, list[dict[str, Any]]]
    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    @classmethod
    def setup(cls, recipe: Recipe, start: int) -> Validation:
        tc = recipe.cfg.train
        rows = {
            name: validation_rows(task, tc.validation_rows, tc.seed)
            for name, task in recipe.tasks.items()
            if "validation" in task.cfg.data
        }
        path = recipe.out / VALIDATION_FILE
        kept = [json.loads(x) for x in path.read_text().splitlines()] if start and path.is_file() else []
        kept = [r for r in kept if r["step"] <= start and "rows" in r]  # a resumed run redoes later ones
        if dist.is_main():
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        best = max(kept, key=lambda r: r["score"], default=None)
        if best is not None and checkpoint.best_step(recipe.ckpt_dir) != best["step"]:
            best = None  # the tag holds a step this resumed run redoes: the next validation saves anew
        return cls({k: v for k, v in rows.items() if v}, path, kept, best)

    def due(self, step: int, every: int, total: int) -> bool:
        return step % every == 0 or step == total

    def run(self, recipe: Recipe, step: int) -> dict[str, Any]:
        """Score the student now; save it as ``best`` when it beats every earlier step."""
        student = recipe.student
        student.eval()
        per_row: dict[str, list[float | None]] = {}
        try:
            with torch.no_grad():
                for name, rows in self.rows.items():
                    task = recipe.tasks[name]
                    values = task.row_scores(recipe.cfg, rows, student, recipe.tokenizer)[task.headline]
                    if not np.isnan(values).all():  # no gold on these rows: not a selection signal
                        per_row[name] = [None if v != v else round(float(v), 5) for v in values]
        finally:
            recipe.engine.train()
        if not per_row:
            raise DistillError("train.validate_every: no validation row has a gold label or reference")
        scores = {t: round(float(np.nanmean(_per_row({"rows": per_row}, t))), 5) for t in per_row}
        record = {"step": step, "scores": scores, "score": round(sum(scores.values()) / len(scores), 5)}
        record["rows"] = per_row
        self.records.append(record)
        if dist.is_main():
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.best is None or record["score"] > self.best["score"]:
            self.best = record
            client = {**recipe.client_state, "weighting_state": recipe.weighting.extra_state()}
            checkpoint.save_best(recipe.engine, recipe.ckpt_dir, step, client)
        return record

    def select(self, recipe: Recipe) -> dict[str, Any]:
        """The selection record of this training run (see ``select_step``)."""
        if not self.records:  # nothing validated (a run resumed at its end with no records kept)
            return last_step(recipe.plan["total_steps"])
        ec = recipe.cfg.eval
        best_step = self.best["step"] if self.best is not None else None
        return select_step(self.records, ec.bootstrap_resamples, ec.bootstrap_seed, best_step)
