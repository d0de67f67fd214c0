"""`distill run`: one scheduled run, teach → train → eval → promotion → pointers → history, in
a run folder of its own (``run_dir/<id>``), under the pipeline's lock.

Whatever happens, the run ends recorded: run.json in its folder and a line in history.jsonl,
with its status (complete, gates_failed, teacher_failed, error, crashed), exit code and the
wall time of each stage. The report goes to stdout, progress and the verdict to stderr.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.core.config import PipelineConfig
from distill.core.errors import DistillError
from distill.core.manifest import now
from distill.ops.runs import history
from distill.ops.runs.launch import Launch, launch_train
from distill.ops.runs.lock import Lock, holder_record
from distill.ops.runs.promotion import promotion
from distill.ops.runs.records import (
    EXIT_GATES,
    EXIT_OK,
    EXIT_TEACHER,
    LATEST,
    PROMOTED,
    RUN_FILE,
    point,
    remove_checkpoints,
    resumable,
    run_id,
    write_json_atomic,
)

SELECT_COUNTS = (
    "learner",
    "strategy",
    "pool",
    "known",
    "new",
    "asked",
    "asked_new",
    "pseudo_labelled",
    "left",
)
"""What run.json keeps of teach.select's record per task."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def usage_line(usage: dict[str, Any] | None) -> str | None:
    """The API teacher's requests, tokens and cost (None for a local teacher)."""
    if not usage:
        return None
    cost = f", ~${usage['cost_usd']}" if usage.get("cost_usd") is not None else ""
    return (
        f"teach: {usage['requests']} API requests ({usage['retries']} retries), "
        f"{usage['input_tokens']} tokens in, {usage['output_tokens']} out{cost}"
    )


def failure_lines(items: list[dict[str, Any]], message: str) -> list[str]:
    """The first failed teacher items, then what to do."""
    shown = [f"  {item['task']}/{item['split']} {item['id']}: {item['reason']}" for item in items[:5]]
    return [*shown, f"error: {message}"]


def teach_report(cfg: PipelineConfig, summary: dict[str, Any]) -> list[str]:
    """What to say after teach: the API usage, and the failed items with what to do."""
    from distill.core.layout import failures_path
    from distill.teach.run import failed_items

    lines = [line] if (line := usage_line(summary["teacher"]["usage"])) else []
    if summary["complete"]:
        return lines
    failed = failed_items(cfg)
    message = (
        f"the teacher failed {len(failed)} items (all listed in {failures_path(cfg)}); "
        "their splits were not written. Rerun to retry only those."
    )
    return lines + failure_lines(failed, message)


def run(
    cfg: PipelineConfig,
    pipeline: Path,
    overrides: list[str],
    resume: bool = False,
    launch: Launch | None = None,
) -> int:
    """The scheduled run of ``pipeline`` (``cfg`` loaded from it with ``overrides``): a new run
    folder, or with ``resume`` the newest unfinished one; returns its exit code. Raises
    RunLocked when another run holds the lock (before anything is written)."""
    root = cfg.path
    rid = (resumable(root) if resume else None) or run_id(cfg)
    lock = Lock.acquire(root, holder_record(rid))
    try:
        if lock.took_over:
            who = lock.took_over
            say(
                f"warning: took over the lock of run {who.get('run_id')} (pid {who.get('pid')} on "
                f"{who.get('host')}, started {who.get('started')}), which ended without releasing it"
            )
        return ScheduledRun(cfg, root, rid, pipeline, overrides, resume, launch or Launch()).execute()
    finally:
        lock.release()


@dataclass
class ScheduledRun:
    """One run in ``root/rid``; ``record`` is its run.json as it goes."""

    cfg: PipelineConfig
    root: Path
    rid: str
    pipeline: Path
    overrides: list[str]
    resume: bool
    launch: Launch
    record: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[stage] = time.perf_counter() - start

    def execute(self) -> int:
        """The stages, recorded whatever happens (a crash or Ctrl-C is recorded, then re-raised)."""
        started = time.time()
        self.cfg.run_dir = str(self.root / self.rid)
        self.cfg.path.mkdir(parents=True, exist_ok=True)
        self.record = {"id": self.rid, "pipeline": str(self.pipeline), "started": now(), "status": "running"}
        self.record.update(host=socket.gethostname(), pid=os.getpid(), overrides=self.overrides)
        write_json_atomic(self.cfg.path / RUN_FILE, self.record)
        code = EXIT_OK
        try:
            code = self.stages()
        except DistillError as e:
            self.record.update(status="error", error=str(e))
            raise
        except BaseException as e:
            self.record.update(status="crashed", error=f"{type(e).__name__}: {e}")
            raise
        finally:
            self.finish(started, code)
        return code

    def stages(self) -> int:
        if not self.teach():
            self.record["status"] = "teacher_failed"
            return EXIT_TEACHER
        self.train()
        with self.timed("eval"):
            from distill.eval import run as evaluation
            from distill.eval.report.markdown import markdown

            report = evaluation.run(self.cfg)
        print(markdown(report), flush=True)
        return self.promote(report)

    def teach(self) -> bool:
        """Whether the teacher answered every item (a failed one leaves its split unwritten)."""
        from distill.teach import run as teach

        select = self.cfg.teach.select
        if select.active and select.learner == "student" and select.student is None:
            select.student = str(self.root)  # the promoted student (else latest) chooses tonight's rows
        with self.timed("teach"):
            summary = teach.run(self.cfg)
        usage = summary["teacher"]["usage"] or {}
        self.record["teach"] = {
            "teacher_calls": summary["cache"]["teacher_calls"],
            "cache_hits": summary["cache"]["hits"],
            "cost_usd": usage.get("cost_usd"),
            "select": {
                task: {k: v for k, v in r.items() if k in SELECT_COUNTS}
                for task, r in (summary["select"] or {}).items()
            },
        }
        for line in teach_report(self.cfg, summary):
            say(line)
        return bool(summary["complete"])

    def train(self) -> None:
        with self.timed("train"):
            if self.launch.launched:
                overrides = [*self.overrides, f"run_dir={self.cfg.path}"]
                if launch_train(self.launch, self.pipeline, overrides, self.resume) != 0:
                    raise RuntimeError("the launched training processes failed (their output is above)")
            else:
                from distill.train import run as train

                train.run(self.cfg, resume=self.resume)

    def promote(self, report: dict[str, Any]) -> int:
        """Promotion, the pointers, the record's verdict; EXIT_GATES when a gate failed."""
        failed = [k for k, g in report["gates"].items() if not g["passed"]]
        decision = promotion(self.cfg, self.root, not failed)
        self.record["headline"] = history.headline_means(self.cfg.path)
        self.record["gates"] = {"passed": not failed, "failed": failed}
        self.record["promotion"], self.record["drift"] = decision, decision["drift"]
        if decision["promote"]:
            point(self.root, PROMOTED, self.rid)
        point(self.root, LATEST, self.rid)
        self.record["status"] = "gates_failed" if failed else "complete"
        self.record["checkpoints_removed_mb"] = remove_checkpoints(self.cfg.path)
        verdict = "promoted" if decision["promote"] else "not promoted"
        drift = ", ".join(f"{t} {v:+.4f}" for t, v in decision["drift"].items())
        drift = f"; drift (best promoted − new): {drift}" if drift else ""
        say(f"run {self.rid}: {verdict} ({decision['reason']}){drift}")
        if failed:
            say(f"error: gates failed: {', '.join(failed)}")
            return EXIT_GATES
        return EXIT_OK

    def finish(self, started: float, code: int) -> None:
        record = self.record
        record["finished"], record["duration_s"] = now(), round(time.time() - started, 1)
        record["timings_s"] = {k: round(v, 1) for k, v in self.timings.items()}
        record["exit_code"] = code if record["status"] not in ("error", "crashed") else None
        write_json_atomic(self.cfg.path / RUN_FILE, record)
        history.append(self.root, record)
        say("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.timings.items()))
