"""`distill` command line: a dispatch table from typer options to one config and one
``run`` call per stage. Heavy imports happen inside the commands."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import typer

from distill.core.errors import DistillError
from distill.ops.runs.records import EXIT_CONFIG, EXIT_GATES, EXIT_LOCKED, EXIT_TEACHER, RunLocked

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
    from distill.core.layout import failures_path
    from distill.teach.run import failed_items

    _echo_usage(summary["teacher"]["usage"])
    if summary["complete"]:
        return
    failed = failed_items(cfg)
    _fail_teacher(
        failed,
        f"the teacher failed {len(failed)} items (all listed in {failures_path(cfg)}); "
        "their splits were not written. Rerun to retry only those.",
    )


def _fail_teacher(items: list[dict], message: str) -> None:
    """List the first failed items, say what to do, exit EXIT_TEACHER."""
    for item in items[:5]:
        typer.echo(f"  {item['task']}/{item['split']} {item['id']}: {item['reason']}", err=True)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_TEACHER)


def _echo_usage(usage: dict | None) -> None:
    if usage:
        cost = f", ~${usage['cost_usd']}" if usage.get("cost_usd") is not None else ""
        typer.echo(
            f"teach: {usage['requests']} API requests ({usage['retries']} retries), "
            f"{usage['input_tokens']} tokens in, {usage['output_tokens']} out{cost}",
            err=True,
        )


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

    if merge:
        merged = stage.merge(cfg, from_)
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
        done = stage.run_shard(cfg, stage.parse_shard(shard), cache=shard_cache)
        _echo_usage(done["teacher"]["usage"])
        cache = done["cache"]
        typer.echo(
            f"teach: shard {done['shard']}: {cache['teacher_calls']} teacher calls, {cache['hits']} cache "
            f"hits, {cache['other_shards']} left to other shards → {cache['path']}",
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
        f"teach: {summary['cache']['teacher_calls']} teacher calls, {summary['cache']['hits']} cache hits "
        f"→ {cfg.path / 'teach'}",
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


def train_command(
    args: list[str], nproc: int, hostfile: Path | None, num_nodes: int | None, port: int
) -> list[str]:
    """The launcher command that runs ``distill.cli train ARGS`` in every process: torchrun on
    this machine, or DeepSpeed's launcher (ssh/pdsh to the hostfile's hosts) across machines.
    DeepSpeed's ``--no_local_rank``: the processes read LOCAL_RANK from the environment."""
    if hostfile is not None:
        nodes = ["--num_nodes", str(num_nodes)] if num_nodes else []
        return [
            sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), *nodes,
            "--num_gpus", str(nproc), "--master_port", str(port), "--no_local_rank",
            "--module", "distill.cli", "train", *args,
        ]  # fmt: skip
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
        f"--master_port={port}", "-m", "distill.cli", "train", *args,
    ]  # fmt: skip


def _launched(nproc: int, hostfile: Path | None) -> bool:
    """Whether training runs in launched processes (and this one only launches them)."""
    return (nproc > 1 or hostfile is not None) and "LOCAL_RANK" not in os.environ


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
    if _launched(nproc, hostfile):
        from distill.train.distributed import free_port

        args = [str(pipeline), *(a for o in set_ for a in ("--set", o)), *(["--resume"] if resume else [])]
        raise typer.Exit(subprocess.call(train_command(args, nproc, hostfile, num_nodes, free_port())))
    _quiet()
    from distill.train import run as stage

    summary = stage.run(cfg, resume=resume)
    typer.echo(f"train: {summary['steps']} steps → {cfg.path / 'train' / 'student'}", err=True)


@app.command("eval")
def eval_(pipeline: Path = PIPELINE, set_: list[str] = SET) -> None:
    """Compare student, teacher and gold; exits 1 when a configured gate fails."""
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
    from distill.ops.runs import records as runs

    root = cfg.path
    rid = (runs.resumable(root) if resume else None) or runs.run_id(cfg)
    lock = runs.Lock.acquire(root, runs.holder_record(rid))
    try:
        if lock.took_over:
            who = lock.took_over
            typer.echo(
                f"warning: took over the lock of run {who.get('run_id')} (pid {who.get('pid')} on "
                f"{who.get('host')}, started {who.get('started')}), which ended without releasing it",
                err=True,
            )
        code = _scheduled(cfg, rid, pipeline, overrides, resume, nproc, hostfile, num_nodes)
    finally:
        lock.release()
    raise typer.Exit(code)


def _scheduled(
    cfg, rid: str, pipeline: Path, overrides: list[str], resume: bool, nproc: int,
    hostfile: Path | None, num_nodes: int | None,
) -> int:  # fmt: skip
    """One scheduled run in ``run_dir/<rid>``; records it (run.json, history) whatever happens."""
    from distill.eval import run as evaluation
    from distill.eval.report.markdown import markdown
    from distill.ops.runs import records as runs
    from distill.teach import run as teach

    root, started = cfg.path, time.time()
    cfg.run_dir = str(root / rid)
    cfg.path.mkdir(parents=True, exist_ok=True)
    record: dict = {"id": rid, "pipeline": str(pipeline), "started": runs.now(), "status": "running"}
    record.update(host=socket.gethostname(), pid=os.getpid(), overrides=overrides)
    runs.write_json_atomic(cfg.path / runs.RUN_FILE, record)
    timings: dict[str, float] = {}
    code = 0
    try:
        start = time.perf_counter()
        summary = teach.run(cfg)
        timings["teach"] = time.perf_counter() - start
        usage = summary["teacher"]["usage"] or {}
        record["teach"] = {
            "teacher_calls": summary["cache"]["teacher_calls"],
            "cache_hits": summary["cache"]["hits"],
            "cost_usd": usage.get("cost_usd"),
        }
        _exit_on_failed_items(cfg, summary)
        start = time.perf_counter()
        if _launched(nproc, hostfile):
            from distill.train.distributed import free_port

            args = [str(pipeline), *(a for o in [*overrides, f"run_dir={cfg.path}"] for a in ("--set", o))]
            args += ["--resume"] if resume else []
            if subprocess.call(train_command(args, nproc, hostfile, num_nodes, free_port())) != 0:
                raise RuntimeError("the launched training processes failed (their output is above)")
        else:
            from distill.train import run as train

            train.run(cfg, resume=resume)
        timings["train"] = time.perf_counter() - start
        start = time.perf_counter()
        report = evaluation.run(cfg)
        timings["eval"] = time.perf_counter() - start
        typer.echo(markdown(report))
        gates_passed = all(g["passed"] for g in report["gates"].values())
        decision = runs.promotion(cfg, root, gates_passed)
        record["headline"] = runs.headline_means(cfg.path)
        failed = [k for k, g in report["gates"].items() if not g["passed"]]
        record["gates"] = {"passed": gates_passed, "failed": failed}
        record["promotion"] = decision
        if decision["promote"]:
            runs.point(root, runs.PROMOTED, rid)
        runs.point(root, runs.LATEST, rid)
        record["status"] = "complete" if gates_passed else "gates_failed"
        record["checkpoints_removed_mb"] = runs.remove_checkpoints(cfg.path)
        verdict = "promoted" if decision["promote"] else "not promoted"
        typer.echo(f"run {rid}: {verdict} ({decision['reason']})", err=True)
        _exit_on_failed_gates(report)
    except typer.Exit as e:
        code = e.exit_code
        record["status"] = {EXIT_TEACHER: "teacher_failed", EXIT_GATES: "gates_failed"}.get(code, "failed")
    except DistillError as e:
        record.update(status="error", error=str(e))
        raise
    except BaseException as e:  # a crash (or Ctrl-C): recorded, then re-raised
        record.update(status="crashed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        record["finished"], record["duration_s"] = runs.now(), round(time.time() - started, 1)
        record["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
        record["exit_code"] = code if record["status"] not in ("error", "crashed") else None
        runs.write_json_atomic(cfg.path / runs.RUN_FILE, record)
        runs.append_history(root, record)
        typer.echo("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), err=True)
    return code


@app.command("runs")
def runs_(pipeline: Path = PIPELINE, set_: list[str] = SET) -> None:
    """The history of scheduled runs of a pipeline (run_dir/history.jsonl), oldest first."""
    cfg = _load(pipeline, set_)
    from distill.ops.runs import records as runs

    typer.echo(runs.history_table(runs.history(cfg.path), runs.pointed(cfg.path, runs.PROMOTED)))


@app.command()
def ablate(pipeline: Path = PIPELINE, set_: list[str] = SET) -> None:
    """Train the multi-task student, one student per task, the gold-only / KD-only / KD+gold
    baselines and the pipeline's ablate.variants over ablate.seeds; write ablation.json/.md."""
    cfg = _load(pipeline, set_)  # validates, ablate section included, before anything runs
    _quiet()
    from distill.ops import ablate as stage

    table = stage.run(pipeline, set_)
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
) -> None:
    """Serve a trained student over HTTP: POST /v1/classify, OpenAI-compatible
    /v1/chat/completions and /v1/completions (summaries), GET /health and /metrics."""
    _quiet()
    from distill.ship.serve.app import serve as run_server

    run_server(path, host, port, max_batch, max_wait_ms, max_chars, device, max_batch_tokens=max_batch_tokens)


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
