"""The ablation's jobs: which students it trains (systems × seeds × train sizes), each one's
settings and folder, training and scoring them serially or ``--jobs`` at a time, and the run
that ties it together (the table itself: table.py)."""

from __future__ import annotations

import gc
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.core.config import PipelineConfig
from distill.core.errors import ConfigError, DistillError
from distill.ops.ablate.table import markdown, tabulate
from distill.pipeline import load as load_pipeline
from distill.tasks import Task, tasks_for

BASELINES = {
    "gold_only": [
        "train.hard_labels=gold",
        "train.soft_weight=0.0",
        "train.summary_targets=reference",
        "train.rationales=false",
    ],
    "kd_only": ["train.hard_labels=none", "train.soft_weight=1.0"],
    "kd_gold": ["train.hard_labels=gold", "train.soft_weight=0.5"],
}
"""The teacher/gold baselines, as overrides of the pipeline's train section. Summarization has
no soft label: its decoder learns the references in gold_only and the teacher's summaries in
both kd_only and kd_gold (for those tasks the two are the same run)."""


@dataclass
class System:
    name: str
    overrides: list[str] = field(default_factory=list)
    tasks: list[str] | None = None
    """None: every task (a multi-task student); else the tasks this student learns."""


def systems(cfg: PipelineConfig) -> list[System]:
    out = [System("mtl")]
    if cfg.ablate.single_task and len(cfg.tasks) > 1:
        out += [System(f"single/{t.name}", tasks=[t.name]) for t in cfg.tasks]
    if cfg.ablate.baselines:
        out += [System(name, overrides) for name, overrides in BASELINES.items()]
    out += [System(name, list(overrides)) for name, overrides in cfg.ablate.variants.items()]
    return out


@dataclass
class Job:
    """One student to train and score: a system, a seed and a train size."""

    system: System
    seed: int
    rows: int | None = None
    """Rows of each task it learns from (train.train_rows); None: every row."""

    @property
    def label(self) -> str:
        size = "" if self.rows is None else f", {self.rows} rows"
        return f"{self.system.name} seed {self.seed}{size}"


def sizes(base: PipelineConfig) -> list[int | None]:
    return list(base.ablate.train_rows) or [None]


def size_steps(base: PipelineConfig, rows: int | None) -> int:
    """The step budget of every system at train size ``rows``."""
    if rows is None or base.ablate.epochs is None:
        assert base.train.steps is not None  # check() refused it otherwise
        return base.train.steps
    return max(1, math.ceil(base.ablate.epochs * rows / base.train.batch_size))


def job_folder(base: PipelineConfig, job: Job) -> Path:
    root = base.path / "ablation" if job.rows is None else base.path / "ablation" / f"rows{job.rows}"
    return root / job.system.name / f"seed{job.seed}"


def system_config(pipeline: Path, overrides: list[str], base: PipelineConfig, job: Job) -> PipelineConfig:
    """The pipeline with the job's size, the system's overrides, its seed, and its own run
    folder whose ``teach`` is the pipeline's (a link: every system learns from the same teacher
    answers)."""
    folder = job_folder(base, job)
    size = []
    if job.rows is not None:
        size = [f"train.train_rows={job.rows}", f"train.steps={size_steps(base, job.rows)}"]
    cfg = load_pipeline(
        pipeline, [*overrides, *size, *job.system.overrides, f"train.seed={job.seed}", f"run_dir={folder}"]
    )
    if job.system.tasks is not None:
        cfg.tasks = [t for t in cfg.tasks if t.name in job.system.tasks]
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "teach"
    if link.is_symlink() and not link.exists():
        link.unlink()  # dangling: the pipeline's run folder moved
    if not link.exists():
        link.symlink_to((base.path / "teach").resolve(), target_is_directory=True)
    return cfg


def _fingerprint(cfg: PipelineConfig) -> str:
    """What a stored result was computed from: the train and eval config, the teach outputs it
    learned from and the rows it was scored on. A train or eval key set to None (an option that
    is off) is left out, so a release that adds such an option keeps the stored results."""
    from distill.core.layout import outputs_sha256

    data = cfg.to_dict()
    decoding = {t["name"]: t.get("decoding") for t in data["tasks"]}  # a task's own decoding scores too
    stages = {k: {key: v for key, v in data[k].items() if v is not None} for k in ("train", "eval")}
    settings = json.dumps({**stages, "decoding": decoding}, sort_keys=True)
    names = ",".join(t.name for t in cfg.tasks)
    inputs = f"{outputs_sha256(cfg, 'train')}|{outputs_sha256(cfg, cfg.eval.split)}"
    return hashlib.sha256(f"{settings}|{names}|{inputs}".encode()).hexdigest()[:16]


def check(base: PipelineConfig) -> None:
    """Refuse what would make the table unfair or wrong, before anything trains."""
    if base.train.steps is None and base.ablate.epochs is None:
        raise ConfigError(
            "ablate: set train.steps; every system needs the same step budget (epochs would give a "
            "single-task student fewer steps than the multi-task one), or ablate.epochs with "
            "ablate.train_rows"
        )
    overridden = [t.name for t in base.tasks if t.soft_weight is not None or t.kd_temperature is not None]
    if overridden and base.ablate.baselines:
        raise ConfigError(
            f"ablate.baselines: tasks {overridden} override soft_weight/kd_temperature, which the "
            "gold-only and KD-only baselines set for every task; remove the overrides or the baselines"
        )


def train_and_score(cfg: PipelineConfig, tasks: list[Task], test: dict[str, list[dict]]) -> dict[str, Any]:
    """Train one student, score it on the test rows, drop its weights; returns the record."""
    import torch

    from distill.student.model import load_student
    from distill.train import run as train

    started = time.perf_counter()
    summary = train.run(cfg)
    train_s = time.perf_counter() - started
    student, tokenizer = load_student(cfg.path / "train" / "student")
    with torch.no_grad():
        scores = {
            t.name: {k: v.tolist() for k, v in t.row_scores(cfg, test[t.name], student, tokenizer).items()}
            for t in tasks
            if t.name in test
        }
    for heavy in ("student", "checkpoints"):  # ~90 MB per student; the scores are what is kept
        shutil.rmtree(cfg.path / "train" / heavy, ignore_errors=True)
    del student
    gc.collect()
    return {
        "train_s": round(train_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "parameters": summary["student_parameters"],
        "steps": summary["steps"],
        "rows": summary["rows"],
        "final_losses": summary["final_losses"],
        "weight_range": summary["weight_range"],
        "scores": scores,
    }


def stored_record(cfg: PipelineConfig) -> dict[str, Any] | None:
    """The job's record when it was trained on these settings and inputs already."""
    stored = cfg.path / "scores.json"
    if not stored.is_file():
        return None
    try:
        record = json.loads(stored.read_text())
    except ValueError:
        return None  # torn by a kill mid-write: trained again
    return record if record.get("fingerprint") == _fingerprint(cfg) else None


def train_job(pipeline: Path, overrides: list[str], job: Job, threads: int | None = None) -> dict[str, Any]:
    """Train and score one job from the files alone (the pipeline, its teach outputs) and store
    its record in its folder's scores.json: what the serial loop and each ``--jobs`` worker
    process run. ``threads``: a worker's share of the cores (and its own rendezvous port)."""
    from distill.core.data import read_jsonl
    from distill.core.layout import output_path
    from distill.train import distributed as dist

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        os.environ["MASTER_PORT"] = str(dist.free_port())
    dist.prepare_environment()
    base = load_pipeline(pipeline, overrides)
    cfg = system_config(pipeline, overrides, base, job)
    names = {t.name for t in cfg.tasks}
    tasks = [t for t in tasks_for(base) if t.name in names]
    test = {t.name: read_jsonl(output_path(base, t.name, base.eval.split)) for t in tasks}
    record = {"fingerprint": _fingerprint(cfg), **train_and_score(cfg, tasks, test)}
    tmp = cfg.path / "scores.json.tmp"
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(cfg.path / "scores.json")
    return record


def train_all(pipeline: Path, overrides: list[str], pending: list[Job], jobs: int) -> None:
    """Train the pending jobs, ``jobs`` at a time. A failed job does not stop the others (their
    records are stored as each finishes); the failures are one error at the end, and a rerun
    trains only what is missing."""
    from distill.train import distributed as dist

    if jobs == 1:
        for i, job in enumerate(pending, 1):
            dist.print0(f"ablate: {job.label} ({i}/{len(pending)})")
            train_job(pipeline, overrides, job)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failed = []
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state inherited
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {pool.submit(train_job, pipeline, overrides, job, threads): job for job in pending}
        for done, future in enumerate(as_completed(futures), 1):
            job = futures[future]
            try:
                record = future.result()
            except Exception as e:  # noqa: BLE001 (named in the error below, the others go on)
                failed.append(f"{job.label}: {type(e).__name__}: {e}")
                continue
            dist.print0(f"ablate: {job.label} done, {record['wall_s']} s ({done}/{len(pending)})")
    if failed:
        raise DistillError(
            f"ablate: {len(failed)} of {len(pending)} jobs failed (the others' scores are kept; a "
            "rerun trains only the missing ones): " + "; ".join(failed)
        )


def run(pipeline: Path, overrides: list[str] | None = None, jobs: int = 1) -> dict[str, Any]:
    from distill.core.data import read_jsonl
    from distill.core.layout import output_path
    from distill.teach import run as teach
    from distill.train import distributed as dist

    overrides = overrides or []
    if jobs < 1:
        raise ConfigError(f"ablate --jobs: must be >= 1, not {jobs}")
    if jobs > 1 and dist.world_size() > 1:
        raise ConfigError("ablate --jobs: runs one process per job; start distill ablate as one process")
    base = load_pipeline(pipeline, overrides)
    check(base)
    plan = [
        (job, system_config(pipeline, overrides, base, job))
        for rows in sizes(base)
        for system in systems(base)
        for job in (Job(system, seed, rows) for seed in base.ablate.seeds)
    ]  # every variant validated before hours of training
    teach.run(base)  # cached answers: a no-op for the teacher once the pipeline was taught
    dist.prepare_environment()
    pending = [job for job, cfg in plan if stored_record(cfg) is None]
    started = time.perf_counter()
    train_all(pipeline, overrides, pending, jobs)
    wall = time.perf_counter() - started
    results: dict[int | None, dict[str, dict[int, dict[str, Any]]]] = {rows: {} for rows in sizes(base)}
    for job, cfg in plan:
        record = stored_record(cfg)
        if record is None:
            raise DistillError(f"ablate: {job.label}: no scores in {cfg.path / 'scores.json'} after training")
        results[job.rows].setdefault(job.system.name, {})[job.seed] = record
    tasks = {t.name: t for t in tasks_for(base)}
    test = {name: read_jsonl(output_path(base, name, base.eval.split)) for name in tasks}
    if base.ablate.train_rows:
        table: dict[str, Any] = {
            "seeds": base.ablate.seeds,
            "split": base.eval.split,
            "train_rows": base.ablate.train_rows,
            "epochs": base.ablate.epochs,
            "sizes": {
                str(rows): {
                    **tabulate(base, tasks, test, results[rows]),
                    "train_rows": rows,
                    "steps": size_steps(base, rows),
                }
                for rows in base.ablate.train_rows
            },
        }
    else:
        table = tabulate(base, tasks, test, results[None])
    read_back = len(plan) - len(pending)
    table["run"] = {"jobs": jobs, "trained": len(pending), "read_back": read_back, "wall_s": round(wall, 1)}
    out = base.path / "ablation"
    (out / "ablation.json").write_text(json.dumps(table, indent=2) + "\n")
    (out / "ablation.md").write_text(markdown(table))
    return table
