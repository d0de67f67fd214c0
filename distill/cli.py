"""`distill` command line: a dispatch table from typer options to one config and one
``run`` call per stage. Heavy imports happen inside the commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from distill.core.errors import DistillError
from distill.ops.runs.launch import Launch, launch_train
from distill.ops.runs.lock import RunLocked
from distill.ops.runs.records import EXIT_CONFIG, EXIT_GATES, EXIT_LOCKED, EXIT_TEACHER

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

PIPELINE = typer.Argument(..., help="Pipeline YAML (see pipelines/demo.yaml).")
SET = typer.Option([], "--set", "-s", help="Override a config key: teach.teacher.batch_size=4 (repeatable).")


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import logging

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def _load(path: Path, overrides: list[str]):
    from distill.pipeline import load as load_pipeline

    return load_pipeline(path, overrides)


MAX_COST = typer.Option(None, "--max-cost", help="Stop asking the API teacher at this estimated cost (USD).")
MAX_REQUESTS = typer.Option(None, "--max-requests", help="Stop after this many API teacher requests.")


def _budget(overrides: list[str], max_cost: float | None, max_requests: int | None) -> list[str]:
    extra = [f"teach.teacher.max_cost={max_cost}"] if max_cost is not None else []
    extra += [f"teach.teacher.max_requests={max_requests}"] if max_requests is not None else []
    return [*overrides, *extra]


def _exit_on_failed_items(cfg, summary: dict) -> None:
    from distill.ops.runs.scheduled import teach_report

    for line in teach_report(cfg, summary):
        typer.echo(line, err=True)
    if not summary["complete"]:
        raise typer.Exit(EXIT_TEACHER)


def _fail_teacher(items: list[dict], message: str) -> None:
    """List the first failed items, say what to do, exit EXIT_TEACHER."""
    from distill.ops.runs.scheduled import failure_lines

    for line in failure_lines(items, message):
        typer.echo(line, err=True)
    raise typer.Exit(EXIT_TEACHER)


def _echo_usage(usage: dict | None) -> None:
    from distill.ops.runs.scheduled import usage_line

    if line := usage_line(usage):
        typer.echo(line, err=True)


def _exit_on_failed_gates(report: dict) -> None:
    failed = [k for k, g in report["gates"].items() if not g["passed"]]
    if failed:
        typer.echo(f"error: gates failed: {', '.join(failed)}", err=True)
        raise typer.Exit(EXIT_GATES)


SHARD = typer.Option(
    None,
    "--shard",
    metavar="i/N",
    help="Ask the teacher only for shard i of N (0 ≤ i < N, split by cache key) into this shard's "
    "own cache; writes no teach output. Then `distill teach --merge`, then `distill teach`.",
)
SHARD_CACHE = typer.Option(
    None,
    "--shard-cache",
    help="With --shard: the shard's cache file (default: the main cache's name with .shard-i-of-N).",
)
MERGE = typer.Option(
    False,
    "--merge",
    help="Fold shard caches into the main cache (default: every <cache>.shard-i-of-N file beside it). "
    "Where answers differ, the main cache's is kept.",
)
FROM = typer.Option([], "--from", help="With --merge: a shard cache file to fold in (repeatable).")


@app.command()
def teach(
    pipeline: Path = PIPELINE,
    set_: list[str] = SET,
    max_cost: float | None = MAX_COST,
    max_requests: int | None = MAX_REQUESTS,
    shard: str | None = SHARD,
    shard_cache: Path | None = SHARD_CACHE,
    merge: bool = MERGE,
    from_: list[Path] = FROM,
) -> None:
    """The teacher labels and summarises every configured split (answers are cached)."""
    cfg = _load(pipeline, _budget(set_, max_cost, max_requests))
    if shard and merge:
        raise DistillError("--shard and --merge: one at a time (label the shards, then merge them)")
    _quiet()
    from distill.teach import run as stage
    from distill.teach import shard as shards

    if merge:
        merged = shards.merge(cfg, from_)
        typer.echo(
            f"teach: merged {len(merged['sources'])} shard caches into {merged['dest']}: "
            f"{merged['added']} added, {merged['same']} already there, {merged['conflicts']} conflicts "
            "(kept the main cache's answer)",
            err=True,
        )
        for n, missing in (merged.get("missing_shards") or {}).items():
            typer.echo(f"warning: shard(s) {', '.join(map(str, missing))} of {n} not merged yet", err=True)
        return
    if shard:
        done = shards.run_shard(cfg, shards.parse_shard(shard), cache=shard_cache)
        _echo_usage(done["teacher"]["usage"])
        cache = done["cache"]
        typer.echo(
            f"teach: shard {done['shard']}: {cache['teacher_calls']} teacher answers ({cache['stored']} "
            f"stored), {cache['hits']} cache hits, {cache['other_shards']} left to other shards "
            f"→ {cache['path']}",
            err=True,
        )
        if not done["complete"]:
            _fail_teacher(
                done["failures"],
                f"the teacher failed {done['failed']} items of shard {done['shard']}; "
                "rerun this shard to retry only those.",
            )
        return
    summary = stage.run(cfg)
    typer.echo(
        f"teach: {summary['cache']['teacher_calls']} teacher answers ({summary['cache']['stored']} "
        f"stored), {summary['cache']['hits']} cache hits → {cfg.path / 'teach'}",
        err=True,
    )
    _exit_on_failed_items(cfg, summary)


NPROC = typer.Option(
    1, help="Training processes per machine (torchrun, or DeepSpeed's launcher with --hostfile)."
)
HOSTFILE = typer.Option(
    None, help="DeepSpeed hostfile ('host slots=N' lines): train across machines with DeepSpeed's launcher."
)
NUM_NODES = typer.Option(None, help="With --hostfile: how many of its hosts to use (DeepSpeed --num_nodes).")


@app.command()
def train(
    pipeline: Path = PIPELINE,
    set_: list[str] = SET,
    resume: bool = typer.Option(False, help="Continue from the latest checkpoint in the run folder."),
    nproc: int = NPROC,
    hostfile: Path | None = HOSTFILE,
    num_nodes: int | None = NUM_NODES,
) -> None:
    """Train the multi-task student inside DeepSpeed and export it."""
    cfg = _load(pipeline, set_)
    launch = Launch(nproc, hostfile, num_nodes)
    if launch.launched:
        raise typer.Exit(launch_train(launch, pipeline, set_, resume))
    _quiet()
    from distill.train import run as stage

    summary = stage.run(cfg, resume=resume)
    typer.echo(f"train: {summary['steps']} steps → {cfg.path / 'train' / 'student'}", err=True)


@app.command("eval")
def eval_(pipeline: Path = PIPELINE, set_: list[str] = SET) -> None:
    """Compare student, teacher and gold; exits 4 (EXIT_GATES) when a configured gate fails."""
    cfg = _load(pipeline, set_)
    _quiet()
    from distill.eval import run as stage
    from distill.eval.report.markdown import markdown

    report = stage.run(cfg)
    typer.echo(markdown(report))
    _exit_on_failed_gates(report)


@app.command()
def run(
    pipeline: Path = PIPELINE,
    set_: list[str] = SET,
    resume: bool = typer.Option(
        False, help="Continue the newest unfinished run (its folder and training checkpoint)."
    ),
    max_cost: float | None = MAX_COST,
    max_requests: int | None = MAX_REQUESTS,
    nproc: int = NPROC,
    hostfile: Path | None = HOSTFILE,
    num_nodes: int | None = NUM_NODES,
) -> None:
    """teach → train → eval → promotion, in a run folder of its own under run_dir, one run per
    pipeline at a time: for scheduled runs. Exit codes: README "Scheduled runs"."""
    overrides = _budget(set_, max_cost, max_requests)
    cfg = _load(pipeline, overrides)
    _quiet()
    from distill.ops.runs import scheduled

    raise typer.Exit(scheduled.run(cfg, pipeline, overrides, resume, Launch(nproc, hostfile, num_nodes)))


@app.command("config")
def config_(
    pipeline: Path = PIPELINE,
    prefix: str | None = typer.Argument(None, help="Only the keys under this one: train.weighting."),
    set_: list[str] = SET,
    wrap: bool = typer.Option(False, help="Wrap long values and docs instead of cutting them."),
) -> None:
    """The resolved pipeline, defaults and overrides applied: each key's type, value and doc,
    the chosen plugins' options included."""
    import shutil

    from distill.core.config.listing import config_rows, config_table

    rows = config_rows(_load(pipeline, set_), prefix)
    typer.echo(config_table(rows, shutil.get_terminal_size((120, 24)).columns, wrap))


@app.command("runs")
def runs_(pipeline: Path = PIPELINE, set_: list[str] = SET) -> None:
    """The history of scheduled runs of a pipeline (run_dir/history.jsonl), oldest first."""
    cfg = _load(pipeline, set_)
    from distill.ops.runs.history import history, table
    from distill.ops.runs.records import PROMOTED, pointed

    typer.echo(table(history(cfg.path), pointed(cfg.path, PROMOTED)))


@app.command()
def ablate(
    pipeline: Path = PIPELINE,
    set_: list[str] = SET,
    jobs: int = typer.Option(
        1, "--jobs", help="Students trained at once, one process each (the cores split among them)."
    ),
) -> None:
    """Train the multi-task student, one student per task, the gold-only / KD-only / KD+gold
    baselines and the pipeline's ablate.variants over ablate.seeds (and ablate.train_rows);
    write ablation.json/.md. Resumable: a rerun trains only the students not stored yet."""
    cfg = _load(pipeline, set_)  # validates, ablate section included, before anything runs
    _quiet()
    from distill.ops import ablate as stage

    table = stage.run(pipeline, set_, jobs=jobs)
    typer.echo(stage.markdown(table))
    typer.echo(f"ablate: → {cfg.path / 'ablation'}", err=True)


@app.command("export")
def export_(
    path: Path = typer.Argument(..., help="A student folder, a run folder, or a pipeline's run_dir."),
    out: Path = typer.Option(..., "--out", help="Folder to write: one subfolder per task, export.json."),
    task: list[str] = typer.Option([], "--task", help="Export only this task (repeatable)."),
    measure: int = typer.Option(
        0, help="Compare each export with the student on the first N test rows of the run (0: probe texts)."
    ),
    max_new_tokens: int | None = typer.Option(
        None, help="Summaries: default the student's max_summary_length."
    ),
) -> None:
    """Write each task of a student as a folder plain transformers loads (a text-classification
    model; a seq2seq or causal-LM summarizer), checked against the student."""
    _quiet()
    from distill.ship.export.run import export, teach_rows

    rows = None
    if measure:  # every task of the student unless --task: its spec names them, no weights needed
        import json

        from distill.core.layout import SPEC_FILE, resolve_student_dir

        names = task or list(json.loads((resolve_student_dir(path) / SPEC_FILE).read_text())["tasks"])
        rows = {t: teach_rows(path, t, "test", measure) for t in names}
    record = export(path, out, task or None, rows, max_new_tokens)
    for name, entry in record["tasks"].items():
        exact = "exact" if entry.get("exact") else "NOT exact: " + "; ".join(entry["not_exact_because"])
        typer.echo(f"export: {name} → {out / name} ({exact})", err=True)


@app.command()
def serve(
    path: Path = typer.Argument(..., help="A student folder, a run folder, or a pipeline's run_dir."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="Port (0: a free one, printed at start)."),
    max_batch: int = typer.Option(16, help="Most requests of one task run as one batch."),
    max_wait_ms: float = typer.Option(5.0, help="How long a batch waits for more after its first request."),
    max_chars: int = typer.Option(20000, help="Longer texts are refused (400)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    max_batch_tokens: int = typer.Option(
        512, help="A batch runs shortest-first in sub-batches of at most this many padded tokens."
    ),
    defer: Path | None = typer.Option(
        None,
        help="A pipeline YAML: classification requests below the student's stored confidence "
        "threshold go to its teacher (serve.defer), logged to run_dir/traffic/<task>.jsonl.",
    ),
    set_: list[str] = SET,
) -> None:
    """Serve a trained student over HTTP: POST /v1/classify, OpenAI-compatible
    /v1/chat/completions and /v1/completions (summaries), GET /health and /metrics."""
    _quiet()
    from distill.ship.serve.app import serve as run_server

    cfg = _load(defer, set_) if defer is not None else None
    run_server(path, host, port, max_batch, max_wait_ms, max_chars, device, max_batch_tokens, cfg)


def main() -> None:
    try:
        app()
    except RunLocked as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(EXIT_LOCKED)
    except DistillError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(EXIT_CONFIG)


if __name__ == "__main__":
    main()
