"""`distill ablate`: the table the multi-task claim rests on.

On the pipeline's teach outputs and with its train settings (the same step budget), it
trains, once per seed in ``ablate.seeds``:

- ``mtl``: the multi-task student as the pipeline configures it;
- ``single/TASK``: one student per task, trained on that task alone;
- ``gold_only`` (no teacher: gold labels, reference summaries), ``kd_only`` (teacher only, no
  gold) and ``kd_gold`` (soft labels + gold hard labels);
- every variant in ``ablate.variants`` (--set overrides, e.g. a weighting method).

Each student is scored on the same test rows; the teacher is scored once. Per task and system
the table gives the mean ± std over seeds of the headline metric (accuracy, ROUGE-L) and a 95%
two-level bootstrap interval: each replicate resamples the seeds, then the test rows, so both
the training noise (seeds) and the sampling noise (rows) widen it. Per task it says whether
the multi-task student beat the single-task one beyond that noise: the same two-level
interval of their difference (rows paired) excludes 0. Every system gets the same step
budget (``train.steps`` is required), so with sampling ``all`` each task sees as many batches
in the multi-task student as in its single-task one. A finished (system, seed) keeps its
scores in ``ablation/SYSTEM/seedN/scores.json`` and is not trained again on a rerun of the
same train and eval settings.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.core.config import PipelineConfig
from distill.core.errors import ConfigError
from distill.eval.metrics.bootstrap import bootstrap_indices, percentile_interval
from distill.pipeline import load as load_pipeline
from distill.tasks import Task, tasks_for

BASELINES = {
    "gold_only": ["train.hard_labels=gold", "train.soft_weight=0.0", "train.summary_targets=reference"],
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


def system_config(
    pipeline: Path, overrides: list[str], base: PipelineConfig, system: System, seed: int
) -> PipelineConfig:
    """The pipeline with the system's overrides, its seed, and its own run folder whose
    ``teach`` is the pipeline's (a link: every system learns from the same teacher answers)."""
    folder = base.path / "ablation" / system.name / f"seed{seed}"
    cfg = load_pipeline(pipeline, [*overrides, *system.overrides, f"train.seed={seed}", f"run_dir={folder}"])
    if system.tasks is not None:
        cfg.tasks = [t for t in cfg.tasks if t.name in system.tasks]
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "teach"
    if link.is_symlink() and not link.exists():
        link.unlink()  # dangling: the pipeline's run folder moved
    if not link.exists():
        link.symlink_to((base.path / "teach").resolve(), target_is_directory=True)
    return cfg


def _fingerprint(cfg: PipelineConfig) -> str:
    """What a stored result was computed from: the train and eval config, the teach outputs it
    learned from and the rows it was scored on."""
    from distill.core.layout import outputs_sha256

    data = cfg.to_dict()
    decoding = {t["name"]: t.get("decoding") for t in data["tasks"]}  # a task's own decoding scores too
    settings = json.dumps({**{k: data[k] for k in ("train", "eval")}, "decoding": decoding}, sort_keys=True)
    names = ",".join(t.name for t in cfg.tasks)
    inputs = f"{outputs_sha256(cfg, 'train')}|{outputs_sha256(cfg, cfg.eval.split)}"
    return hashlib.sha256(f"{settings}|{names}|{inputs}".encode()).hexdigest()[:16]


def check(base: PipelineConfig) -> None:
    """Refuse what would make the table unfair or wrong, before anything trains."""
    if base.train.steps is None:
        raise ConfigError(
            "ablate: set train.steps; every system needs the same step budget (epochs would give a "
            "single-task student fewer steps than the multi-task one)"
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
        "parameters": summary["student_parameters"],
        "steps": summary["steps"],
        "final_losses": summary["final_losses"],
        "scores": scores,
    }


def run(pipeline: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    from distill.core.data import read_jsonl
    from distill.core.layout import output_path
    from distill.teach import run as teach
    from distill.train import distributed as dist

    overrides = overrides or []
    base = load_pipeline(pipeline, overrides)
    check(base)
    plan = [
        (system, seed, system_config(pipeline, overrides, base, system, seed))
        for system in systems(base)
        for seed in base.ablate.seeds
    ]  # every variant validated before hours of training
    teach.run(base)  # cached answers: a no-op for the teacher once the pipeline was taught
    dist.prepare_environment()
    tasks = {t.name: t for t in tasks_for(base)}
    test = {name: read_jsonl(output_path(base, name, base.eval.split)) for name in tasks}
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for system, seed, cfg in plan:
        stored = cfg.path / "scores.json"
        fingerprint = _fingerprint(cfg)
        if stored.is_file() and json.loads(stored.read_text()).get("fingerprint") == fingerprint:
            record = json.loads(stored.read_text())
        else:
            dist.print0(f"ablate: {system.name} seed {seed}")
            own = [tasks[t.name] for t in cfg.tasks]
            record = {"fingerprint": fingerprint, **train_and_score(cfg, own, test)}
            stored.write_text(json.dumps(record) + "\n")
        results.setdefault(system.name, {})[seed] = record
    table = tabulate(base, tasks, test, results)
    out = base.path / "ablation"
    (out / "ablation.json").write_text(json.dumps(table, indent=2) + "\n")
    (out / "ablation.md").write_text(markdown(table))
    return table


def replicate_means(per_seed: np.ndarray, seed_draws: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per-row scores of each seed (seeds, n) → (R,) bootstrap replicates of their mean: each
    replicate averages its resampled seeds (seed_draws, (R, seeds)) per row, then its
    resampled rows (rows, (R, n)); NaN rows (no gold) are skipped."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate whose rows are all NaN
        by_row = np.nanmean(per_seed[seed_draws], axis=1)  # (R, n)
        return np.nanmean(np.take_along_axis(by_row, rows, axis=1), axis=1)


def _seed_draws(seeds: int, rows: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, seeds, size=(rows.shape[0], seeds))


def _interval(per_seed: np.ndarray, rows: np.ndarray, seed: int) -> list[float] | None:
    return percentile_interval(replicate_means(per_seed, _seed_draws(len(per_seed), rows, seed), rows))


def tabulate(
    cfg: PipelineConfig,
    tasks: dict[str, Task],
    test: dict[str, list[dict]],
    results: dict[str, dict[int, dict[str, Any]]],
) -> dict[str, Any]:
    """Systems × tasks: every figure's mean ± std over seeds, and the headline metric's
    interval; then per task the multi-task vs single-task verdict."""
    ec = cfg.eval
    table: dict[str, Any] = {"seeds": cfg.ablate.seeds, "split": ec.split, "tasks": {}, "systems": {}}
    resamples = {
        name: bootstrap_indices(len(rows), ec.bootstrap_resamples, ec.bootstrap_seed)
        for name, rows in test.items()
    }
    for name, task in tasks.items():
        teacher = task.teacher_row_scores(test[name])
        table["tasks"][name] = {
            "kind": task.kind,
            "headline": task.headline,
            "rows": len(test[name]),
            "teacher": {
                **{k: round(v, 4) for k, v in task.aggregate(teacher).items()},
                "ci95": _interval(teacher[task.headline][None, :], resamples[name], ec.bootstrap_seed),
            },
        }
    for system, by_seed in results.items():
        entry: dict[str, Any] = {"tasks": {}}
        records = list(by_seed.values())
        entry["train_s"] = round(float(np.mean([r["train_s"] for r in records])), 1)
        entry["parameters"] = records[0]["parameters"]
        for name, task in tasks.items():
            per_seed = [
                {k: np.array(v) for k, v in r["scores"][name].items()} for r in records if name in r["scores"]
            ]
            if not per_seed:
                continue
            figures = [task.aggregate(s) for s in per_seed]
            entry["tasks"][name] = {
                **{
                    k: {
                        "mean": round(float(np.mean([f[k] for f in figures])), 4),
                        "std": round(float(np.std([f[k] for f in figures], ddof=1)), 4)
                        if len(figures) > 1
                        else None,
                    }
                    for k in figures[0]
                },
                "ci95": _interval(
                    np.stack([s[task.headline] for s in per_seed]), resamples[name], ec.bootstrap_seed
                ),
                "seeds": len(per_seed),
            }
        table["systems"][system] = entry
    table["single_task_parameters"] = sum(
        table["systems"][f"single/{t}"]["parameters"] for t in tasks if f"single/{t}" in table["systems"]
    )
    table["single_task_train_s"] = round(
        sum(table["systems"][f"single/{t}"]["train_s"] for t in tasks if f"single/{t}" in table["systems"]), 1
    )
    table["verdicts"] = verdicts(tasks, results, resamples, ec.bootstrap_seed)
    return table


def _per_seed(records: dict[int, dict[str, Any]], task: str, metric: str) -> np.ndarray:
    """(seeds, rows) per-row scores of one system on one task."""
    return np.stack([np.array(r["scores"][task][metric], dtype=float) for r in records.values()])


def verdicts(
    tasks: dict[str, Task],
    results: dict[str, dict[int, dict[str, Any]]],
    resamples: dict[str, np.ndarray],
    seed: int,
) -> dict[str, Any]:
    """Per task: multi-task minus single-task on the headline metric, with the two-level
    bootstrap interval of that difference (each system's seeds resampled on their own, the
    rows resampled once for both: paired), and what that says."""
    out = {}
    for name, task in tasks.items():
        single = results.get(f"single/{name}")
        if single is None or "mtl" not in results:
            continue
        mtl, alone = _per_seed(results["mtl"], name, task.headline), _per_seed(single, name, task.headline)
        rows = resamples[name]
        diff = replicate_means(mtl, _seed_draws(len(mtl), rows, seed + 1), rows) - replicate_means(
            alone, _seed_draws(len(alone), rows, seed + 2), rows
        )
        ci = percentile_interval(diff)
        if ci is None:
            verdict = "no rows to compare"
        elif ci[0] > 0:
            verdict = "multi-task better beyond the noise"
        elif ci[1] < 0:
            verdict = "multi-task worse beyond the noise"
        else:
            verdict = "no difference beyond the noise"
        point = float(np.nanmean(mtl)) - float(np.nanmean(alone))
        out[name] = {
            "metric": task.headline,
            "mtl_minus_single": round(point, 4),
            "ci95": ci,
            "verdict": verdict,
        }
    return out


def _cell(figure: dict[str, Any], ci: list[float] | None) -> str:
    std = f" ± {figure['std']:.3f}" if figure.get("std") is not None else ""
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return f"{figure['mean']:.3f}{std}{interval}"


def markdown(table: dict[str, Any]) -> str:
    tasks = list(table["tasks"])
    headlines = [table["tasks"][t]["headline"] for t in tasks]
    lines = [
        f"# Ablation ({table['split']} split, seeds {table['seeds']})",
        "",
        "Each cell: the headline metric's mean ± std over seeds, then its 95% two-level bootstrap "
        "interval (seeds, then test rows, resampled). Time: mean training seconds per seed. "
        "Summarization has no soft label: kd_only and kd_gold train its decoder alike.",
        "",
        "| system | " + " | ".join(f"{t} ({h})" for t, h in zip(tasks, headlines)) + " | params | train s |",
        "|---" * (len(tasks) + 3) + "|",
    ]
    teacher_cells = [
        f"{table['tasks'][t]['teacher'][h]:.3f}"
        + (f" [{c[0]:.3f}, {c[1]:.3f}]" if (c := table["tasks"][t]["teacher"]["ci95"]) else "")
        for t, h in zip(tasks, headlines)
    ]
    lines.append("| teacher | " + " | ".join(teacher_cells) + " | | |")
    for system, entry in table["systems"].items():
        cells = [
            _cell(entry["tasks"][t][h], entry["tasks"][t]["ci95"]) if t in entry["tasks"] else ""
            for t, h in zip(tasks, headlines)
        ]
        lines.append(
            f"| {system} | "
            + " | ".join(cells)
            + f" | {entry['parameters'] / 1e6:.1f}M | {entry['train_s']} |"
        )
    if table["single_task_parameters"]:
        mtl = table["systems"].get("mtl", {})
        lines += [
            "",
            f"Single-task students together: {table['single_task_parameters'] / 1e6:.1f}M parameters, "
            f"{table['single_task_train_s']} s of training per seed; the multi-task student: "
            f"{mtl.get('parameters', 0) / 1e6:.1f}M, {mtl.get('train_s')} s.",
        ]
    if table["verdicts"]:
        lines += ["", "| task | MTL − single-task | 95% interval | verdict |", "|---|---|---|---|"]
        for name, v in table["verdicts"].items():
            ci = f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]" if v["ci95"] else "n/a"
            lines.append(f"| {name} ({v['metric']}) | {v['mtl_minus_single']:+.3f} | {ci} | {v['verdict']} |")
    return "\n".join(lines) + "\n"
