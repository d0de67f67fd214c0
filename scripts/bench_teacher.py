"""Local teacher scoring speed on the demo's classification prompts: before (the teacher at git
commit d5b25d3) → after, with the prefix cache off and on.

Prompts: the first ``--items`` test rows of the pipeline's first classification task, built
exactly as teach builds them (``teach.task_shots`` demonstrations included). Each variant scores
them all ``--repeats`` times, interleaved with the others so load from other processes hits all
alike; the best time counts. Agreement: the after variants read the old rule (one exact token per
verbalizer) from their own next-token distribution and are compared with "before"'s answers; the
new rule's answers are compared between prefix cache off and on.

FLOPs per pass over the prompts, counting real tokens only (padding is waste, not work)::

    linear    = 2 · N · T                          N: non-embedding parameters (blocks, final norm)
    attention = 4 · L · H · d · K                  L layers, H query heads of width d;
                                                   K = Σ over run tokens of the keys each attends to
    lm_head   = 2 · D · V · R                      D hidden, V vocabulary, R positions it is applied at

T = tokens run: Σ prompt lengths without the prefix cache; with it, the shared prefix counts once
per call (T = S + Σ (length − S)). K: a prompt of length n run whole attends n(n+1)/2 keys; with
the cache, a suffix of s tokens after a prefix of S attends s·S + s(s+1)/2 (and the prefix once,
S(S+1)/2). R: every position before (the old teacher took logits everywhere), one per prompt after.
Peak: the best of several fp32 2048×2048 ``torch.matmul`` runs in this process, 2·n³/t.

    .venv/bin/python scripts/bench_teacher.py [--items 64] [--teacher qwen2.5-coder-0.5b-instruct]
        [--out runs/bench/teacher.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
BEFORE_COMMIT = "d5b25d3"

import torch  # noqa: E402

from distill.core.config import PipelineConfig  # noqa: E402
from distill.core.errors import DistillError  # noqa: E402
from distill.pipeline import load as load_pipeline  # noqa: E402
from distill.tasks import load_split  # noqa: E402
from distill.teach.prompts import Prompt, classification_prompt  # noqa: E402
from distill.teach.teachers.local import LocalTeacher, _shared_length, distribution_from_token_logprobs  # noqa: E402


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def demo_prompts(cfg: PipelineConfig, items: int) -> tuple[list[Prompt], list[str]]:
    task = next(t for t in cfg.tasks if t.kind == "classification")
    try:
        from distill.teach.run import task_shots

        shots = task_shots(cfg, task)
    except ImportError:  # before the teach side ships task_shots
        from distill.teach.prompts import few_shot_examples

        shots = few_shot_examples(task, load_split(task, "train"), cfg.teach.few_shot)
    rows = load_split(task, "test")[:items]
    return [classification_prompt(task, ex, shots) for ex in rows], list(task.options.labels.values())


def before_teacher_class() -> type:
    """LocalTeacher as it was at BEFORE_COMMIT, imported from a temporary copy (read-only git)."""
    source = subprocess.run(
        ["git", "show", f"{BEFORE_COMMIT}:distill/teacher/local.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="bench_teacher_")) / "local_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("local_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LocalTeacher


def flops(model: torch.nn.Module, rows: Sequence[Sequence[int]], shared: int, head_everywhere: bool) -> float:
    """FLOPs of one pass (module docstring); ``shared`` = prefix tokens run once (0: no cache)."""
    config = model.config
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    n = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
    hidden, vocab = (
        model.get_output_embeddings().weight.shape[1],
        model.get_output_embeddings().weight.shape[0],
    )
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    lengths = [len(r) for r in rows]
    tokens = sum(lengths) - shared * (len(rows) - 1)
    keys = shared * (shared + 1) / 2 + sum(
        (m - shared) * shared + (m - shared) * (m - shared + 1) / 2 for m in lengths
    )
    attention = 4 * config.num_hidden_layers * config.num_attention_heads * head_dim * keys
    head = 2 * hidden * vocab * (sum(lengths) if head_everywhere else len(rows))
    return 2 * n * tokens + attention + head


def timed(score: Callable[[], dict[int, list[float]]]) -> tuple[float, dict[int, list[float]]]:
    start = time.perf_counter()
    answers = score()
    return time.perf_counter() - start, answers


def bench_teacher(
    name: str, cfg: PipelineConfig, prompts: list[Prompt], verbalizers: list[str], repeats: int
) -> dict[str, Any]:
    local = dataclasses.replace(cfg.teach.teacher.options, device="cpu")
    teacher_cfg = dataclasses.replace(cfg.teach.teacher, backend="local", model=name, options=local)
    before = before_teacher_class()(teacher_cfg)
    after = LocalTeacher(teacher_cfg)
    exact = [[i] for i in before.verbalizer_ids(verbalizers)]  # the old rule, for agreement
    old_rule: dict[bool, dict[int, list[float]]] = {}

    def run_before() -> dict[int, list[float]]:
        return {i: a["distribution"] for i, a in before.label_distribution(prompts, verbalizers)}

    def run_after(prefix_cache: bool) -> dict[int, list[float]]:
        """The new rule's answers (as label_distribution gives them) and, from the same next-token
        distributions, the old rule's, kept for the agreement check."""
        after.opts = dataclasses.replace(local, prefix_cache=prefix_cache)
        groups = after.label_groups(verbalizers)
        out, old_rule[prefix_cache] = {}, {}
        for batch, logprobs in after.next_token_logprobs(prompts):
            out.update(zip(batch, distribution_from_token_logprobs(logprobs, groups)[0].tolist()))
            old_rule[prefix_cache].update(
                zip(batch, distribution_from_token_logprobs(logprobs, exact)[0].tolist())
            )
        return out

    variants = {
        "before": run_before,
        "prefix_cache_off": lambda: run_after(False),
        "prefix_cache_on": lambda: run_after(True),
    }
    warm = prompts[: local.batch_size]
    list(before.label_distribution(warm, verbalizers))  # warm-up: first-call allocations, label groups
    list(after.label_distribution(warm, verbalizers))
    best = {k: float("inf") for k in variants}
    answers: dict[str, dict[int, list[float]]] = {}
    for _ in range(repeats):
        for key, score in variants.items():
            seconds, answers[key] = timed(score)
            best[key] = min(best[key], seconds)

    rows = after.encode(prompts)
    shared = _shared_length(rows)
    work = {
        "before": flops(after.model, rows, 0, head_everywhere=True),
        "prefix_cache_off": flops(after.model, rows, 0, head_everywhere=False),
        "prefix_cache_on": flops(after.model, rows, shared, head_everywhere=False),
    }

    def gap(a: dict[int, list[float]], b: dict[int, list[float]]) -> float:
        return max(abs(x - y) for i in a for x, y in zip(a[i], b[i]))

    return {
        "teacher": name,
        "items": len(prompts),
        "tokens_per_prompt": sum(map(len, rows)) / len(rows),
        "shared_prefix_tokens": shared,
        "seconds": best,
        "items_per_s": {k: len(prompts) / s for k, s in best.items()},
        "gflop": {k: w / 1e9 for k, w in work.items()},
        "gflops": {k: work[k] / best[k] / 1e9 for k in variants},
        "speedup_vs_before": {k: best["before"] / best[k] for k in variants},
        "max_abs_diff": {
            "old_rule_before_vs_cache_off": gap(answers["before"], old_rule[False]),
            "old_rule_before_vs_cache_on": gap(answers["before"], old_rule[True]),
            "new_rule_cache_off_vs_on": gap(answers["prefix_cache_off"], answers["prefix_cache_on"]),
            "new_rule_vs_old_rule": gap(answers["prefix_cache_on"], old_rule[True]),
        },
    }


def print_table(peak: float, results: list[dict[str, Any]]) -> None:
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s (this process, {torch.get_num_threads()} threads)")
    columns = ("items/s", "speedup", "GFLOP", "GFLOP/s", "of peak")
    print(f"{'teacher':28} {'variant':17} " + " ".join(f"{c:>8}" for c in columns))
    for r in results:
        for key in r["seconds"]:
            print(
                f"{r['teacher']:28} {key:17} {r['items_per_s'][key]:8.2f} "
                f"{r['speedup_vs_before'][key]:7.2f}x "
                f"{r['gflop'][key]:8.1f} {r['gflops'][key]:8.1f} {r['gflops'][key] / peak:8.1%}"
            )
        print(f"  {r['tokens_per_prompt']:.0f} tokens/prompt, {r['shared_prefix_tokens']} shared; max |Δp|:")
        for key, value in r["max_abs_diff"].items():
            print(f"    {key:32} {value:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default=str(REPO / "pipelines" / "demo.yaml"))
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--teacher", action="append", help="teacher alias or folder (repeatable)")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench" / "teacher.json"))
    args = parser.parse_args()

    os.chdir(REPO)  # the pipeline's data paths are relative to the repository
    cfg = load_pipeline(args.pipeline)
    prompts, verbalizers = demo_prompts(cfg, args.items)
    peak = matmul_peak_gflops()
    results = []
    for name in ["smollm2-135m-instruct", *(t for t in args.teacher or [] if t != "smollm2-135m-instruct")]:
        try:
            results.append(bench_teacher(name, cfg, prompts, verbalizers, args.repeats))
        except DistillError as e:
            print(f"skipping teacher {name!r}: {e}")
    peak = max(peak, matmul_peak_gflops())  # again after the runs: the best the machine gave
    print_table(peak, results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"matmul_peak_gflops": peak, "threads": torch.get_num_threads(), "results": results}, indent=2
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
