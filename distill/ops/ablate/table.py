"""The ablation's table: per task and system the mean ± std over seeds and a two-level
bootstrap interval (seeds, then test rows), each multi-task system minus single-task with its
verdict, and the markdown of it all."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from distill.core.config import PipelineConfig
from distill.eval.metrics.bootstrap import bootstrap_indices, percentile_interval
from distill.tasks import Task
from distill.tasks.rationale import SUFFIX as RATIONALE


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
        entry["wall_s"] = round(float(np.mean([r.get("wall_s", r["train_s"]) for r in records])), 1)
        entry["parameters"] = records[0]["parameters"]
        entry["steps"] = records[0].get("steps")
        entry["rows"] = records[0].get("rows")
        entry["weights"] = _weight_range(records)
        entry["losses"] = _final_losses(records, list(tasks))
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
    multi = ["mtl", *cfg.ablate.variants]
    versus = {s: verdicts(tasks, results, resamples, ec.bootstrap_seed, s) for s in multi}
    table["verdicts"] = versus["mtl"]
    table["versus_single"] = {s: v for s, v in versus.items() if v}  # none without single-task students
    return table


def _weight_range(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per task, the lowest and highest weight any seed's training logged."""
    out: dict[str, list[float]] = {}
    for record in records:
        for task, (lo, hi) in record.get("weight_range", {}).items():
            was = out.get(task, [lo, hi])
            out[task] = [min(was[0], lo), max(was[1], hi)]
    return out


def _final_losses(records: list[dict[str, Any]], tasks: list[str]) -> dict[str, float]:
    """The end-of-training loss scale, mean over seeds and tasks: ``task`` (the tasks' own
    losses) and each auxiliary sharing loss (as weighted in the total), side by side."""
    parts: dict[str, list[float]] = {}
    for record in records:
        for key, value in record.get("final_losses", {}).items():
            task, _, aux = key.partition("/")
            if task.endswith(RATIONALE) and task[: -len(RATIONALE)] in tasks:
                parts.setdefault("rationale", []).append(value)  # the decoder's loss on rationales
            elif task in tasks:
                parts.setdefault(aux or "task", []).append(value)
    return {k: round(float(np.mean(v)), 4) for k, v in parts.items()}


def _per_seed(records: dict[int, dict[str, Any]], task: str, metric: str) -> np.ndarray:
    """(seeds, rows) per-row scores of one system on one task."""
    return np.stack([np.array(r["scores"][task][metric], dtype=float) for r in records.values()])


def verdicts(
    tasks: dict[str, Task],
    results: dict[str, dict[int, dict[str, Any]]],
    resamples: dict[str, np.ndarray],
    seed: int,
    system: str = "mtl",
) -> dict[str, Any]:
    """Per task: ``system`` (a multi-task student) minus single-task on the headline metric,
    with the two-level bootstrap interval of that difference (each system's seeds resampled on
    their own, the rows resampled once for both: paired), and what that says."""
    out = {}
    for name, task in tasks.items():
        single = results.get(f"single/{name}")
        if single is None or system not in results:
            continue
        mtl, alone = _per_seed(results[system], name, task.headline), _per_seed(single, name, task.headline)
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


def _weights_cell(weights: dict[str, list[float]]) -> str:
    if not weights:
        return ""
    return f"{min(w[0] for w in weights.values()):.3f}–{max(w[1] for w in weights.values()):.3f}"


def _losses_cell(losses: dict[str, float]) -> str:
    return " · ".join(f"{k} {v:.3g}" for k, v in losses.items())


def _versus_cell(v: dict[str, Any]) -> str:
    if v["ci95"] is None:
        return "n/a"
    mark = {"better": " ↑", "worse": " ↓"}.get(v["verdict"].split()[1], "")
    return f"{v['mtl_minus_single']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]{mark}"


def _section(table: dict[str, Any]) -> list[str]:
    """One size's systems × tasks table, its size note and its MTL − single-task verdicts."""
    tasks = list(table["tasks"])
    headlines = [table["tasks"][t]["headline"] for t in tasks]
    lines = [
        "| system | "
        + " | ".join(f"{t} ({h})" for t, h in zip(tasks, headlines))
        + " | params | train s | wall s | weights (min–max) | final losses |",
        "|---" * (len(tasks) + 6) + "|",
    ]
    teacher_cells = [
        f"{table['tasks'][t]['teacher'][h]:.3f}"
        + (f" [{c[0]:.3f}, {c[1]:.3f}]" if (c := table["tasks"][t]["teacher"]["ci95"]) else "")
        for t, h in zip(tasks, headlines)
    ]
    lines.append("| teacher | " + " | ".join(teacher_cells) + " | | | | | |")
    for system, entry in table["systems"].items():
        cells = [
            _cell(entry["tasks"][t][h], entry["tasks"][t]["ci95"]) if t in entry["tasks"] else ""
            for t, h in zip(tasks, headlines)
        ]
        lines.append(
            f"| {system} | "
            + " | ".join(cells)
            + f" | {entry['parameters'] / 1e6:.1f}M | {entry['train_s']} | {entry.get('wall_s', '')} | "
            + f"{_weights_cell(entry.get('weights', {}))} | {_losses_cell(entry.get('losses', {}))} |"
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
    return lines


_LEGEND = (
    "Each cell: the headline metric's mean ± std over seeds, then its 95% two-level bootstrap "
    "interval (seeds, then test rows, resampled). Train s / wall s: mean seconds per seed of "
    "training / of training and scoring. Weights: the lowest and highest task weight the "
    "weighting logged over training (a static run stays at its weights; a dynamic one that "
    "never left them did not move). Final losses: mean over tasks and seeds of the last steps' "
    "task loss, each auxiliary sharing loss as weighted in the total, and the rationale tasks' "
    "decoder loss (train.rationales). Summarization has no "
    "soft label: kd_only and kd_gold train its decoder alike."
)


def _run_line(table: dict[str, Any]) -> str:
    run = table.get("run")
    if not run:
        return ""
    return (
        f"This run: {run['trained']} students trained, {run['read_back']} read back, "
        f"{run['wall_s']} s wall with --jobs {run['jobs']}."
    )


def markdown(table: dict[str, Any]) -> str:
    if "sizes" not in table:
        title = f"# Ablation ({table['split']} split, seeds {table['seeds']})"
        lines = [title, "", _LEGEND, "", *_section(table)]
        return "\n".join([*lines, "", _run_line(table)]).rstrip() + "\n"
    sizes = list(table["sizes"].values())
    lines = [
        f"# Ablation by train size ({table['split']} split, seeds {table['seeds']}, "
        f"sizes {table['train_rows']})",
        "",
        "Every student of a size learns from the same seeded rows of each task (nested: a seed's "
        "smaller subset lies inside its larger one) on the same step budget. " + _LEGEND,
    ]
    for size in sizes:
        first = next(iter(size["systems"].values()), {})
        rows = ", ".join(f"{t} {n}" for t, n in (first.get("rows") or {}).items())
        lines += ["", f"## {size['train_rows']} rows per task ({size['steps']} steps; rows used: {rows})", ""]
        lines += _section(size)
    systems = list(dict.fromkeys(s for size in sizes for s in size["versus_single"]))
    if systems:
        lines += [
            "",
            "## System − single-task, by train size",
            "",
            "Headline metric difference and its paired 95% two-level interval; ↑ / ↓: better / "
            "worse beyond the noise.",
            "",
            "| system | task | " + " | ".join(f"{s['train_rows']} rows" for s in sizes) + " |",
            "|---" * (len(sizes) + 2) + "|",
        ]
        tasks = list(sizes[0]["tasks"])
        for system in systems:
            for task in tasks:
                cells = [
                    _versus_cell(v) if (v := size["versus_single"].get(system, {}).get(task)) else ""
                    for size in sizes
                ]
                lines.append(f"| {system} | {task} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", _run_line(table)]).rstrip() + "\n"
