"""``run_dir/history.jsonl``: one line per scheduled run, whatever its outcome (the run.json
record it ended with), and the table `distill runs` prints from it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from distill.core.errors import DistillError

HISTORY_FILE = "history.jsonl"


def append(run_dir: Path, record: dict[str, Any]) -> None:
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


def headline_means(folder: Path) -> dict[str, float | None]:
    """Task → the student's headline metric (accuracy, ROUGE-L) on the eval rows of a run."""
    rows = json.loads((folder / "eval" / "rows.json").read_text())
    out = {}
    for task, record in rows.items():
        values = [v for v in record["scores"][record["headline"]] if v is not None]
        out[task] = round(sum(values) / len(values), 4) if values else None
    return out


def table(records: list[dict[str, Any]], promoted: str | None) -> str:
    """The history as a markdown table: one line per run, the promoted one marked; drift is
    the best promoted student's headline minus the run's, per task, on the run's eval rows."""
    lines = [
        "| run | started | duration s | status | taught new / cached | teacher cost | headline | "
        "drift from best | gates | promoted |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        teach = r.get("teach") or {}
        taught = f"{teach['teacher_calls']} / {teach['cache_hits']}" if teach else ""
        cost = f"${teach['cost_usd']:.4f}" if teach.get("cost_usd") is not None else ""
        headline = ", ".join(f"{t} {v:.3f}" for t, v in (r.get("headline") or {}).items() if v is not None)
        drift = ", ".join(f"{t} {v:+.3f}" for t, v in (r.get("drift") or {}).items())
        gates = r.get("gates")
        gate = "" if gates is None else ("pass" if gates["passed"] else "FAIL " + ", ".join(gates["failed"]))
        decision = r.get("promotion") or {}
        mark = "yes" if decision.get("promote") else ("no" if decision else "")
        if r["id"] == promoted:
            mark += " (current)"
        cells = [r["id"], r.get("started", ""), str(r.get("duration_s", "")), r.get("status", "")]
        lines.append("| " + " | ".join([*cells, taught, cost, headline, drift, gate, mark]) + " |")
    return "\n".join(lines)
