"""What `distill export` gives up, per task of a run: the student against its exported folder,
and against faster forms of it.

    python scripts/bench_export.py --run runs/demo_smol [--out runs/bench_export] [--rows N]
                                   [--docs N] [--batch 8] [--no-onnx] [--no-pipeline]

1. ``distill.export.export`` the run's student into OUT/export (checked there on probe texts).
2. Per classification task, on its teach test split: the fp32 student (its eval path), the
   exported folder through ``pipeline("text-classification")``, that model with int8 dynamic
   quantization of its Linear layers (torch), and (unless --no-onnx) the exported model as ONNX
   (torch.onnx: encoder + mean pool + head) run by onnxruntime, fp32 and int8 (onnxruntime's
   dynamic quantization). Each: items/s and its ratio to the student's, accuracy against gold,
   agreement with the student's argmax, the largest probability difference.
3. Per summarization task, on the first --docs test documents: the student's greedy summaries,
   the exported model's from the export.json prompt recipe (batched as the student's eval
   batches), (teacher layers, unless --no-pipeline) through ``pipeline("text-generation")`` with
   chat messages one document at a time, and the exported model with int8 dynamic quantization.
   Each: items/s, summaries identical to the student's, ROUGE-L against the student's and
   against the references.

Every figure is one timed pass after a warm-up call (one batch; one document for a summarizer),
on the CPU: other jobs on the machine make timings noisy. The run's fp32 student is the baseline
of every ratio and change. Prints the tables; writes OUT/bench_export.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distill.ship.export.causal import (  # noqa: E402
    causal_summaries,
    pipeline_messages,
    recipe_prompt_ids,
)
from distill.ship.export.classifier import pipeline_probs  # noqa: E402
from distill.ship.export.run import teach_rows  # noqa: E402
from distill.ship.export.seq2seq import seq2seq_summaries  # noqa: E402
from distill.student.summarizers.teacher_layers.decoder import prompt_parts  # noqa: E402
from distill.tasks import task_from_student  # noqa: E402


def timed(call: Callable[[list[Any]], Any], items: list[Any], warmup: int) -> tuple[Any, float]:
    """call(items) and items/s of it, after one warm-up call on the first ``warmup`` items."""
    call(items[:warmup])
    start = time.perf_counter()
    out = call(items)
    return out, len(items) / (time.perf_counter() - start)


def quantized(model: torch.nn.Module) -> torch.nn.Module:
    """int8 dynamic quantization of every Linear (weights int8, activations quantized per batch)."""
    import copy

    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


# --- classification -----------------------------------------------------------------------------
def onnx_classifier(model: Any, tok: Any, path: Path) -> list[str]:
    """Export ``model`` (input ids, mask, segments → logits) to ``path`` with dynamic batch and length."""
    from torch.export import Dim

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits

    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = tok(
        ["a short text", "a somewhat longer text to pad the batch"], padding=True, return_tensors="pt"
    )
    batch, seq = Dim("batch", min=1, max=4096), Dim("seq", min=2, max=4096)
    torch.onnx.export(
        Logits(model).eval(), tuple(sample[n] for n in names), str(path), dynamo=True,
        dynamic_shapes={n: {0: batch, 1: seq} for n in names}, input_names=names,
        output_names=["logits"], external_data=False, verbose=False,
    )  # fmt: skip
    return names


def onnx_probs(session: Any, tok: Any, names: list[str], rows: list[dict], batch: int, max_length: int):
    out = []
    for start in range(0, len(rows), batch):
        texts = [r["text"] for r in rows[start : start + batch]]
        pairs = [r["text_pair"] for r in rows[start : start + batch]] if "text_pair" in rows[start] else None
        enc = tok(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="np")
        inputs = {n: enc[n].astype(np.int64) if n in enc else np.zeros_like(enc["input_ids"]) for n in names}
        logits = session.run(None, inputs)[0]
        out.append(torch.tensor(logits).softmax(-1).numpy())
    return np.concatenate(out)


def bench_classifier(args, student, tokenizer, name: str, folder: Path) -> list[dict[str, Any]]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    rows = teach_rows(args.run, name)[: args.rows]
    labels = student.spec.tasks[name]["labels"]
    gold = np.array([labels.index(r["label"]) if r.get("label") is not None else -1 for r in rows])
    task = task_from_student(name, student.spec.tasks[name])
    variants: dict[str, Callable[[list[dict]], np.ndarray]] = {
        "student fp32 (eval path)": lambda b: task.student_probs(student, tokenizer, b, args.batch)
    }
    pairs = student.spec.tasks[name]["kind"] == "sentence_pair"
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    for label, inner in (
        ("exported fp32 (pipeline)", model),
        ("exported int8 torch dynamic (pipeline)", quantized(model)),
    ):
        classify = pipeline("text-classification", model=inner, tokenizer=tok, device="cpu")
        variants[label] = lambda b, c=classify: pipeline_probs(c, b, labels, args.batch, pairs)
    if args.onnx:
        variants.update(onnx_variants(args, model, tok, name, rows, student.spec.max_length))
    results, reference = [], None
    for variant, call in variants.items():
        with torch.inference_mode():
            probs, rate = timed(call, rows, args.batch)  # one batch warms a classifier up
        reference = probs if reference is None else reference
        results.append(classifier_figures(variant, probs, rate, reference, gold, results))
    return results


def onnx_variants(args, model, tok, name: str, rows, max_length: int) -> dict[str, Callable]:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = args.out / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    fp32, int8 = folder / f"{name}.onnx", folder / f"{name}.int8.onnx"
    names = onnx_classifier(model, tok, fp32)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    out = {}
    for label, path in (("onnx fp32 (onnxruntime)", fp32), ("onnx int8 dynamic (onnxruntime)", int8)):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out[label] = lambda b, s=session: onnx_probs(s, tok, names, b, args.batch, max_length)
    return out


def classifier_figures(variant, probs, rate, reference, gold, done) -> dict[str, Any]:
    labeled = gold >= 0
    accuracy = float((probs.argmax(-1)[labeled] == gold[labeled]).mean()) if labeled.any() else None
    base = done[0] if done else None
    return {
        "variant": variant,
        "rows": len(probs),
        "items_per_s": round(rate, 2),
        "speed_ratio": round(rate / base["items_per_s"], 2) if base else 1.0,
        "accuracy": accuracy,
        "accuracy_change": round(accuracy - base["accuracy"], 4) if base and accuracy is not None else 0.0,
        "agreement_with_student": float((probs.argmax(-1) == reference.argmax(-1)).mean()),
        "max_abs_prob_diff": float(np.abs(probs - reference).max()),
    }


# --- summarization -------------------------------------------------------------------------------
def bench_summarizer(args, student, tokenizer, name: str, folder: Path, max_new: int) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    rows = teach_rows(args.run, name)[: args.docs]
    task = task_from_student(name, student.spec.tasks[name])
    # variant → (a call on a list of items, its items); every call batches as the student's eval
    # does (--batch) except the pipeline, which a user calls one document at a time.
    variants: dict[str, tuple[Callable[[list], list[str]], list[Any]]] = {
        "student fp32 (eval path)": (
            lambda b: task.student_summaries(student, tokenizer, b, args.batch, max_new)[0],
            rows,
        )
    }
    tok = AutoTokenizer.from_pretrained(folder)
    if student.summarizer is not None:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        instruction = student.spec.tasks[name]["instruction"]
        before, after = prompt_parts(tok, instruction)
        n = student.spec.max_document_length
        items = [recipe_prompt_ids(tok, before, after, r["document"], n) for r in rows]
        generate: Callable[..., list[str]] = causal_summaries
    else:
        model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
        items, generate = [r["document"] for r in rows], seq2seq_summaries
    variants["exported fp32 (generate)"] = (lambda b: generate(model, tok, b, args.batch), items)
    q = quantized(model)
    variants["exported int8 torch dynamic (generate)"] = (lambda b: generate(q, tok, b, args.batch), items)
    if args.pipeline and student.summarizer is not None:
        label = "exported fp32 (text-generation pipeline, batch 1)"
        variants[label] = (pipeline_call(folder, tok, instruction, n), rows[: args.pipeline_docs])
    results: list[dict[str, Any]] = []
    for variant, (call, inputs) in variants.items():
        print(f"bench_export: {name}: {variant}", file=sys.stderr, flush=True)
        with torch.inference_mode():
            texts, rate = timed(call, inputs, 1)  # one document warms a generator up
        results.append(summary_figures(variant, texts, rate, rows, results))
    return results


def pipeline_call(folder: Path, tok: Any, instruction: str, n: int) -> Callable[[list[dict]], list[str]]:
    from transformers import pipeline

    generate = pipeline("text-generation", model=str(folder), device="cpu")

    def call(rows: list[dict]) -> list[str]:
        chats = [pipeline_messages(tok, instruction, r["document"], n) for r in rows]
        return [out[0]["generated_text"].strip() for out in generate(chats, return_full_text=False)]

    return call


def summary_figures(variant, texts, rate, rows, done) -> dict[str, Any]:
    """Figures of one variant's summaries of the first len(texts) rows, each against the
    student's summaries of the same rows."""
    from distill.eval.metrics.summaries import rouge_per_row

    n = len(texts)
    references = [r.get("reference") or "" for r in rows[:n]]
    per_row = rouge_per_row(texts, references)["rougeL"]
    base = done[0] if done else {"texts": texts, "reference_rougeL": per_row}
    student_texts = base["texts"][:n]
    student_rouge = np.array(base["reference_rougeL"][:n], dtype=float)  # None → NaN
    vs_student = rouge_per_row(texts, [t or " " for t in student_texts])["rougeL"]
    return {
        "variant": variant,
        "rows": n,
        "items_per_s": round(rate, 3),
        "speed_ratio": round(rate / base.get("items_per_s", rate), 2),
        "identical_to_student": sum(a == b for a, b in zip(texts, student_texts)),
        "rougeL_vs_student": round(float(np.mean(vs_student)), 4),
        "rougeL_vs_reference": round(float(np.nanmean(per_row)), 4),
        "rougeL_change": round(float(np.nanmean(per_row) - np.nanmean(student_rouge)), 4),
        "texts": texts,
        "reference_rougeL": [None if np.isnan(x) else round(float(x), 4) for x in per_row],
    }


# --- report --------------------------------------------------------------------------------------
CLASSIFIER_COLUMNS = ["variant", "items_per_s", "speed_ratio", "accuracy", "accuracy_change",
                      "agreement_with_student", "max_abs_prob_diff"]  # fmt: skip
SUMMARY_COLUMNS = ["variant", "rows", "items_per_s", "speed_ratio", "identical_to_student",
                   "rougeL_vs_student", "rougeL_vs_reference", "rougeL_change"]  # fmt: skip


def table(task: str, results: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e-2 and value else f"{value:.4f}".rstrip("0").rstrip(".")
        return str(value)

    head = "| task | " + " | ".join(columns) + " |\n|" + "---|" * (len(columns) + 1) + "\n"
    rows = "".join(f"| {task} | " + " | ".join(cell(r[c]) for c in columns) + " |\n" for r in results)
    return head + rows


def markdown(record: dict[str, Any]) -> str:
    parts = [f"# bench_export: {record['run']}\n", f"{record['note']}\n"]
    for name, task in record["tasks"].items():
        exported = record["export"]["tasks"][name]
        why = "; ".join(exported["not_exact_because"]) or "-"
        parts.append(f"## {name}\n\nexport: exact {exported['exact']} ({why})\n")
        columns = CLASSIFIER_COLUMNS if task["kind"] != "summarization" else SUMMARY_COLUMNS
        parts.append(table(name, task["results"], columns))
        if "pipeline_prompt_matches" in task:
            parts.append(
                f"\nprompt ids of the text-generation pipeline (chat messages) equal to the student's: "
                f"{task['pipeline_prompt_matches']} of {task['rows']}\n"
            )
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_export")
    parser.add_argument("--rows", type=int, default=None, help="classification test rows (all)")
    parser.add_argument("--docs", type=int, default=8, help="summarization test documents")
    parser.add_argument(
        "--pipeline-docs", type=int, default=2, help="of those, how many through the pipeline, one at a time"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--no-onnx", dest="onnx", action="store_false")
    parser.add_argument("--no-pipeline", dest="pipeline", action="store_false")
    args = parser.parse_args()

    import transformers

    from distill.core.layout import resolve_student_dir
    from distill.ship.export.run import export
    from distill.student.model import load_student

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    started = time.time()
    record_export = export(args.run, args.out / "export", max_new_tokens=args.max_new_tokens)
    student, tokenizer = load_student(resolve_student_dir(args.run))
    max_new = args.max_new_tokens or student.spec.max_summary_length
    record: dict[str, Any] = {
        "run": str(args.run),
        "note": (
            f"CPU, {torch.get_num_threads()} threads, batch {args.batch}; one timed pass after a "
            "warm-up call (one batch of a classifier, one document of a summarizer); other jobs "
            "share the CPU, so timings are noisy. Ratios are against the "
            f"fp32 student's items/s; summaries greedy, at most {max_new} new tokens."
        ),
        "export": record_export,
        "tasks": {},
    }
    for name, entry in student.spec.tasks.items():
        folder = args.out / "export" / name
        if entry["labels"] is not None:
            results = bench_classifier(args, student, tokenizer, name, folder)
            record["tasks"][name] = {"kind": entry["kind"], "rows": results[0]["rows"], "results": results}
        else:
            results = bench_summarizer(args, student, tokenizer, name, folder, max_new)
            record["tasks"][name] = {"kind": "summarization", "rows": results[0]["rows"], "results": results}
            if student.summarizer is not None:
                record["tasks"][name].update(prompt_matches(student, name, args.docs, args.run))
    record["seconds"] = round(time.time() - started, 1)
    text = markdown(record)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_export.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "bench_export.md").write_text(text)


def prompt_matches(student, name: str, docs: int, run: Path) -> dict[str, int]:
    """Rows whose text-generation pipeline prompt (chat messages) is the student's very prompt."""
    codec, n = student.codec, student.spec.max_document_length
    instruction = student.spec.tasks[name]["instruction"]
    same = 0
    for row in teach_rows(run, name)[:docs]:
        chat = codec.tokenizer.apply_chat_template(
            pipeline_messages(codec.tokenizer, instruction, row["document"], n),
            tokenize=True, add_generation_prompt=True, return_dict=True,
        )["input_ids"]  # fmt: skip
        same += chat == codec.teacher(codec.prompt_ids(instruction, row["document"], n))
    return {"pipeline_prompt_matches": same}


if __name__ == "__main__":
    main()
