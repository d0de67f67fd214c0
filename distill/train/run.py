"""`distill train`: the multi-task student learns from the teacher inside DeepSpeed.

``run`` is the table of contents: ``setup`` (distill/train/recipe.py) → resume → ``train_step``
× N with the log, validation (distill/train/validation.py) and checkpoints → the selected
step's ``export`` → the manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from distill.core.config import PipelineConfig
from distill.core.manifest import Timer, write_manifest
from distill.student.sharing import AUX_LOSSES
from distill.train import checkpoint
from distill.train import distributed as dist
from distill.train.recipe import (
    Recipe,
    export,
    resume_from_checkpoint,
    save_checkpoint,
    setup,
    train_step,
    zero_stage,
)
from distill.train.validation import Validation, last_step

EXIT_AFTER_STEP_ENV = "DISTILL_TEST_EXIT_AFTER_STEP"
"""Test hook: the process dies (os._exit, no cleanup, like a kill) right after logging this step."""


def run(cfg: PipelineConfig, resume: bool = False) -> dict[str, Any]:
    """setup → (resume) → train_step × N with logging, validation and checkpoints → select the
    step to export (the last, or a validated best beyond the noise) → export → manifest."""
    dist.prepare_environment()
    from tqdm import tqdm

    timer = Timer()
    recipe = setup(cfg, resume, timer)
    tc, plan = cfg.train, recipe.plan
    total_steps = plan["total_steps"]
    start = resume_from_checkpoint(recipe) if resume else 0
    log_path = recipe.out / "log.jsonl"
    recipe.out.mkdir(parents=True, exist_ok=True)
    if dist.is_main():
        checkpoint.truncate_log(log_path, start)  # start 0: a fresh log
    exit_after = int(os.environ.get(EXIT_AFTER_STEP_ENV, "0"))
    validation = Validation.setup(recipe, start) if tc.validate_every else None
    recipe.engine.train()
    with (
        timer.section("train"),
        open(log_path, "a") as log,
        tqdm(total=total_steps, initial=start, desc="train", unit="step", disable=not dist.is_main()) as bar,
    ):
        for step in range(start, total_steps):
            values = train_step(recipe, step)
            record = {
                "step": step + 1,
                "epoch": step // plan["steps_per_epoch"],
                "lr": recipe.scheduler.get_last_lr()[0],
                **{k: round(v, 5) if isinstance(v, float) else v for k, v in values.items()},
            }
            if dist.is_main():
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in recipe.tasks or k == "loss"})
            if validation is not None and validation.due(step + 1, tc.validate_every, total_steps):
                with timer.section("validation"):
                    validation.run(recipe, step + 1)
            if (step + 1) % tc.checkpoint_every == 0 and step + 1 < total_steps:
                save_checkpoint(recipe, step + 1)
            if step + 1 == exit_after:
                os._exit(1)  # the test hook: die like a killed process, with no cleanup
    selected = validation.select(recipe) if validation is not None else last_step(total_steps)
    with timer.section("export"):
        export(recipe, total_steps, selected)
    dist.barrier()
    summary = {**_summary(recipe, start, log_path), "selected": selected}
    if dist.is_main():
        write_manifest(recipe.out, "train", cfg, timer, **summary)
    return summary


def _summary(recipe: Recipe, start: int, log_path: Path) -> dict[str, Any]:
    tc, ds_config = recipe.cfg.train, recipe.ds_config
    return {
        "steps": recipe.plan["total_steps"],
        "resumed_from_step": start,
        "steps_per_epoch": recipe.plan["steps_per_epoch"],
        "schedule": recipe.plan,
        "world_size": dist.world_size(),
        "zero_stage": zero_stage(ds_config),
        "precision": "bf16" if ds_config.get("bf16", {}).get("enabled") else "fp32",
        "device": str(recipe.engine.device),
        "sampling": tc.sampling,
        "weighting": tc.weighting.method,
        "sharing": tc.student.sharing.method,
        "inputs": {"teach_outputs_sha256": recipe.client_state["teach_outputs_sha256"], "split": "train"},
        "rows": {t.name: len(t) for t in recipe.tensors},
        "row_counts": {t.name: t.counts for t in recipe.tensors if t.counts is not None},
        "weight_decay_groups": {k: len(v) for k, v in recipe.decay.items()},
        "student_parameters": recipe.n_parameters,
        "final_losses": _tail_means(log_path, list(recipe.tasks)),
        "weight_range": _weight_range(log_path, list(recipe.tasks)),
    }


def _tail_means(log_path: Path, tasks: list[str], window: int = 10) -> dict[str, float]:
    """Mean of each task's loss, and of each auxiliary sharing loss it logged (``task/adversarial``
    …, already weighted), over the last ``window`` logged steps it appears in."""
    records = [json.loads(line) for line in log_path.read_text().splitlines()[-window * len(tasks) :]]
    out = {}
    for key in [k for t in tasks for k in (t, *(f"{t}/{a}" for a in AUX_LOSSES))]:
        seen = [r[key] for r in records if key in r][-window:]
        if seen:
            out[key] = round(sum(seen) / len(seen), 4)
    return out


def _weight_range(log_path: Path, tasks: list[str]) -> dict[str, list[float]]:
    """Each task's [min, max] logged weight over training: how far a dynamic weighting moved."""
    out: dict[str, list[float]] = {}
    for line in log_path.read_text().splitlines():
        record = json.loads(line)
        for t in tasks:
            if (w := record.get(f"weight/{t}")) is not None:
                lo, hi = out.get(t, [w, w])
                out[t] = [min(lo, w), max(hi, w)]
    return out
