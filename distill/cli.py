"""`distill` command line: a dispatch table from typer options to one config and one
``run`` call per stage. Heavy imports happen inside the commands."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import typer

from distill.errors import DistillError

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
    from distill.config import load_pipeline

    return load_pipeline(path, overrides)


MAX_COST = typer.Option(None, "--max-cost", help="Stop asking the API teacher at this estimated cost (USD).")
MAX_REQUESTS = typer.Option(None, "--max-requests", help="Stop after this many API teacher requests.")


def _budget(overrides: list[str], max_cost: float | None, max_requests: int | None) -> list[str]:
    extra = [f"teach.teacher.max_cost={max_cost}"] if max_cost is not None else []
    extra += [f"teach.teacher.max_requests={max_requests}"] if max_requests is not None else []
    return [*overrides, *extra]


def _exit_on_failed_items(cfg, summary: dict) -> None:
    from distill.teach import failed_items, failures_path

    usage = summary["teacher"]["usage"]
    if usage:
        cost = f", ~${usage['cost_usd']}" if usage.get("cost_usd") is not None else ""
        typer.echo(
            f"teach: {usage['requests']} API requests ({usage['retries']} retries), "
            f"{usage['input_tokens']} tokens in, {usage['output_tokens']} out{cost}",
            err=True,
        )
    if summary["complete"]:
        return
    failed = failed_items(cfg)
    for item in failed[:5]:
        typer.echo(f"  {item['task']}/{item['split']} {item['id']}: {item['reason']}", err=True)
    typer.echo(
        f"error: the teacher failed {len(failed)} items (all listed in {failures_path(cfg)}); "
        "their splits were not written. Rerun to retry only those.",
        err=True,
    )
    raise typer.Exit(1)


def _exit_on_failed_gates(report: dict) -> None:
    failed = [k for k, g in report["gates"].items() if not g["passed"]]
    if failed:
        typer.echo(f"error: gates failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


@app.command()
def teach(
    pipeline: Path = PIPELINE,
    set_: list[str] = SET,
    max_cost: float | None = MAX_COST,
    max_requests: int | None = MAX_REQUESTS,
) -> None:
    """The teacher labels and summarises every configured split (answers are cached)."""
    cfg = _load(pipeline, _budget(set_, max_cost, max_requests))
    _quiet()
    from distill import teach as stage

    summary = stage.run(cfg)
    typer.echo(
        f"teach: {summary['cache']['teacher_calls']} teacher calls, {summary['cache']['hits']} cache hits "
        f"→ {cfg.path / 'teach'}",
        err=True,
    )
    _exit_on_failed_items(cfg, summary)


@app.command()
def train(
    pipeline: Path = PIPELINE,
    set_: list[str] = SET,
    resume: bool = typer.Option(False, help="Continue from the latest checkpoint in the run folder."),
    nproc: int = typer.Option(1, help="Processes to train with (launched through torchrun)."),
) -> None:
    """Train the multi-task student inside DeepSpeed and export it."""
    cfg = _load(pipeline, set_)
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        args = [a for a in sys.argv[1:] if not a.startswith("--nproc")]
        if "--nproc" in sys.argv:  # "--nproc N" form: drop the value too
            i = sys.argv.index("--nproc")
            args = sys.argv[1:i] + sys.argv[i + 2 :]
        from distill.distributed import free_port

        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}",
            "-m",
            "distill.cli",
            *args,
        ]
        raise typer.Exit(subprocess.call(cmd))
    _quiet()
    from distill import train as stage

    summary = stage.run(cfg, resume=resume)
    typer.echo(f"train: {summary['steps']} steps → {cfg.path / 'train' / 'student'}", err=True)


@app.command("eval")
def eval_(pipeline: Path = PIPELINE, set_: list[str] = SET) -> None:
    """Compare student, teacher and gold; exits 1 when a configured gate fails."""
    cfg = _load(pipeline, set_)
    _quiet()
    from distill import evaluation as stage
    from distill.report import markdown

    report = stage.run(cfg)
    typer.echo(markdown(report))
    _exit_on_failed_gates(report)


@app.command()
def run(
    pipeline: Path = PIPELINE,
    set_: list[str] = SET,
    resume: bool = typer.Option(
        False, help="Resume training from the run folder's latest checkpoint (after a crash)."
    ),
    max_cost: float | None = MAX_COST,
    max_requests: int | None = MAX_REQUESTS,
) -> None:
    """teach → train → eval, for scheduled batch runs."""
    cfg = _load(pipeline, _budget(set_, max_cost, max_requests))
    _quiet()
    from distill import evaluation, teach, train
    from distill.report import markdown

    timings = {}
    for name, fn in (
        ("teach", lambda: teach.run(cfg)),
        ("train", lambda: train.run(cfg, resume=resume)),
        ("eval", lambda: evaluation.run(cfg)),
    ):
        start = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - start
        if name == "teach":
            _exit_on_failed_items(cfg, result)
    typer.echo(markdown(result))
    typer.echo("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), err=True)
    _exit_on_failed_gates(result)


@app.command()
def ablate(pipeline: Path = PIPELINE, set_: list[str] = SET) -> None:
    """Train the multi-task student, one student per task, the gold-only / KD-only / KD+gold
    baselines and the pipeline's ablate.variants over ablate.seeds; write ablation.json/.md."""
    cfg = _load(pipeline, set_)  # validates, ablate section included, before anything runs
    _quiet()
    from distill import ablate as stage

    table = stage.run(pipeline, set_)
    typer.echo(stage.markdown(table))
    typer.echo(f"ablate: → {cfg.path / 'ablation'}", err=True)


def main() -> None:
    try:
        app()
    except DistillError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
