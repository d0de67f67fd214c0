"""Which teacher, prompt and calibration should a pipeline use? Measure them on its labeled data.

    .venv/bin/python scripts/compare_teachers.py pipelines/demo.yaml --task fine_foods \
        --teacher smollm2-135m-instruct:0 --teacher qwen2.5-coder-0.5b-instruct:0 \
        --teacher qwen2.5-coder-0.5b-instruct:2 --rows 120

Each ``--teacher ALIAS:SHOTS`` runs the real ``distill teach`` (same prompts, same cache) on the
task's validation and test splits with a content-free prior and a temperature fitted on
validation, then scores the test rows against gold under each calibration: none (raw), the
content-free prior (fitted on the exact prompt), the validation pool mean as prior, and prior +
temperature. A variant's items/s is its teach time over the items it asked (0 when cached).
Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.core.data import read_jsonl  # noqa: E402
from distill.core.layout import output_path
from distill.eval.metrics.classification import expected_calibration_error  # noqa: E402
from distill.pipeline import load as load_pipeline
from distill.teach.calibration import calibrate, nll  # noqa: E402
from distill.teach.run import run as teach  # noqa: E402


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def score(rows: list[dict], names: list[str], prior, tau) -> dict[str, dict[str, float]]:
    raw = np.array([r["teacher_distribution_raw"] for r in rows])
    gold = np.array([names.index(r["label"]) for r in rows])
    majority = max(np.mean(gold == c) for c in range(len(names)))
    out = {}
    for name, dists in (
        ("raw", raw),
        ("content_free", calibrate(raw, prior["content_free"], None)),
        ("pool_mean", calibrate(raw, prior["pool_mean"], None)),
        ("content_free+T", calibrate(raw, prior["content_free"], tau)),
    ):
        out[name] = {
            "accuracy": round(float((dists.argmax(-1) == gold).mean()), 4),
            "nll": round(nll(dists, gold), 4),
            "ece": round(expected_calibration_error(dists, gold), 4),
        }
    out["auc_first_label"] = round(auc(raw[:, 0], gold == 0), 4)
    out["majority_accuracy"] = round(float(majority), 4)
    out["mean_label_mass"] = round(float(np.mean([r["teacher_label_mass"] for r in rows])), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("--task", required=True)
    parser.add_argument("--teacher", action="append", required=True, help="ALIAS:SHOTS (repeatable)")
    parser.add_argument("--rows", type=int, default=120, help="validation and test rows")
    parser.add_argument("--run-dir", default="runs/compare_teachers")
    parser.add_argument("--out", default="runs/compare_teachers/compare.json")
    parser.add_argument("--set", action="append", default=[], help="extra pipeline overrides")
    args = parser.parse_args()
    results = []
    for variant in args.teacher:
        alias, _, shots = variant.partition(":")
        run_dir = Path(args.run_dir) / variant.replace(":", "-")
        overrides = [
            f"run_dir={run_dir}",
            f"teach.teacher.model={alias}",
            f"teach.few_shot={int(shots or 0)}",
            "teach.splits=[test]",
            "teach.calibration={prior: content_free, temperature: true, split: validation}",
            "teach.teacher.min_label_mass=0.0",  # measure every answer, however little is a label
            f"tasks.{args.task}.max_rows={{validation: {args.rows}, test: {args.rows}}}",
            *args.set,
        ]
        cfg = load_pipeline(args.pipeline, overrides)
        cfg.tasks = [t for t in cfg.tasks if t.name == args.task]
        start = time.perf_counter()
        summary = teach(cfg)
        seconds = time.perf_counter() - start
        fitted = summary["teacher"]["calibration"][args.task]
        task = cfg.tasks[0]
        dev = read_jsonl(output_path(cfg, task.name, "validation"))
        prior = {
            "content_free": fitted["prior"],
            "pool_mean": np.mean([r["teacher_distribution_raw"] for r in dev], axis=0).tolist(),
        }
        test = read_jsonl(output_path(cfg, task.name, "test"))
        asked = summary["cache"]["teacher_calls"]
        results.append(
            {
                "teacher": alias,
                "few_shot": int(shots or 0),
                "test_rows": len(test),
                "temperature": round(fitted["temperature"], 3),
                "items_per_s": round(asked / seconds, 2) if asked else None,
                **score(test, list(task.options.labels), prior, fitted["temperature"]),
            }
        )
    print_table(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def print_table(results: list[dict]) -> None:
    head = (
        "| teacher | shots | majority | AUC | mass | acc raw | acc CF | acc pool "
        "| NLL raw | NLL CF+T | ECE CF+T | τ | items/s |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in results:
        cells = [
            r["teacher"],
            r["few_shot"],
            r["majority_accuracy"],
            r["auc_first_label"],
            r["mean_label_mass"],
            r["raw"]["accuracy"],
            r["content_free"]["accuracy"],
            r["pool_mean"]["accuracy"],
            r["raw"]["nll"],
            r["content_free+T"]["nll"],
            r["content_free+T"]["ece"],
            r["temperature"],
            r["items_per_s"],
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
