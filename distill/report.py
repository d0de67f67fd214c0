"""report.md: the eval report as tables a person reads (report.json holds the same numbers)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str = "{:.3f}") -> str:
    if value is None:
        return "n/a"
    return spec.format(value) if isinstance(value, float) else str(value)


def _cell(node: dict[str, Any] | None, key: str) -> str:
    """'0.812 [0.771, 0.850]': a figure and its 95% interval."""
    if not node or key not in node:
        return ""
    ci = node.get(f"{key}_ci95")
    return _fmt(node[key]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _classification_lines(cls: dict[str, Any]) -> list[str]:
    lines = [
        "| task | model | accuracy | macro-F1 | ECE | agreement | KL(t‖s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in cls.items():
        for who in ("majority_baseline", "teacher", "student"):
            node = m[who]
            extra = [_cell(m, "agreement"), _cell(m, "kl_teacher_student")] if who == "student" else ["", ""]
            label = f"majority ({node['label']})" if who == "majority_baseline" and node else who
            row = [
                name,
                label.replace("_", " "),
                *(_cell(node, k) for k in ("accuracy", "macro_f1", "ece")),
                *extra,
            ]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for name, m in cls.items():
        gap = _cell(m, "student_minus_teacher_accuracy")
        if gap:
            lines.append(f"{name}: student − teacher accuracy {gap} (paired).")
    lines += [
        "",
        "| task | label mass min | p5 | p50 | mean | below min_label_mass | teacher methods |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in cls.items():
        mass = m["teacher_label_mass"]
        below = "" if mass["below_min"] is None else f"{mass['below_min']} (< {mass['min_label_mass']})"
        methods = ", ".join(f"{k}: {v}" for k, v in m["teacher_methods"].items())
        row = [name, *(str(mass[k]) for k in ("min", "p5", "p50", "mean")), below, methods]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


ROUGE_COLUMNS = ("rouge1", "rouge2", "rougeL")
# Degeneration columns and their formats: shares as 0.xxx, counts per 100 and lengths as 0.0.
DEGENERATION_COLUMNS = {
    "repeated_3gram_rate": "{:.3f}",
    "distinct_outputs_per_100": "{:.1f}",
    "distinct_2": "{:.3f}",
    "mean_words": "{:.1f}",
    "empty": "{}",  # counts: ints, which _fmt prints as they are
    "cut": "{}",
}


def _rouge_comparisons(m: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """(label, rouge node) in the table's order; rows an older report.json lacks are left out."""
    lead = m.get("lead") or {}
    rows = [
        ("teacher vs reference", m["teacher_vs_reference"]),
        ("student vs reference", m["student_vs_reference"]),
    ]
    if m.get("student_vs_reference_greedy"):
        rows.append(("student (greedy) vs reference", m["student_vs_reference_greedy"]))
    if lead:
        rows.append(("Lead sentence vs reference", lead["lead_sentence"]))
        rows.append((f"Lead-{lead['lead_words_n']} words vs reference", lead["lead_words"]))
    return rows + [("student vs teacher", m["student_vs_teacher"])]


def _summary_rouge_lines(summ: dict[str, Any]) -> list[str]:
    lines = ["| task | comparison | ROUGE-1 | ROUGE-2 | ROUGE-L |", "|---|---|---|---|---|"]
    for name, m in summ.items():
        for label, node in _rouge_comparisons(m):
            lines.append("| " + " | ".join([name, label, *(_cell(node, k) for k in ROUGE_COLUMNS)]) + " |")
    cut = ", ".join(f"{name}: {m['teacher_cut_by_length']} of {m['rows']}" for name, m in summ.items())
    return lines + ["", f"Teacher summaries cut by the length limit: {cut}", ""]


def _decoding_text(decoding: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in decoding.items()) if decoding else "not recorded"


def _degeneration_lines(summ: dict[str, Any]) -> list[str]:
    tasks = {name: m for name, m in summ.items() if m.get("degeneration")}
    if not tasks:
        return []
    lines = [
        "| task | model | repeated 3-grams | distinct outputs /100 | distinct-2 | mean words | empty | cut |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in tasks.items():
        for who in ("teacher", "student"):
            node = m["degeneration"][who]
            row = [name, who, *(_fmt(node[k], f) for k, f in DEGENERATION_COLUMNS.items())]
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Degeneration is measured on plain greedy output (the student's greedy summaries, whatever "
        "decoding its ROUGE used; the teacher's stored summaries), so beams or n-gram blocking "
        "cannot hide repetition.",
        "",
    ]
    for name, m in tasks.items():
        ratio = _fmt(m["degeneration"].get("student_to_teacher_length"))
        lines.append(
            f"- {name}: student decoding {_decoding_text(m.get('decoding'))}; student/teacher length {ratio}"
        )
    return lines + [""]


def _one_line(text: str | None) -> str:
    """Text for one markdown bullet: whitespace (newlines included) collapsed, pipes escaped."""
    if text is None:
        return "(none)"
    return " ".join(text.split()).replace("|", "\\|") or "(empty)"


def _example_lines(summ: dict[str, Any]) -> list[str]:
    """Each task's first rows side by side; placed last in the report, as they are long."""
    lines: list[str] = []
    for name, m in summ.items():
        examples = m.get("examples") or []
        if not examples:
            continue
        lines += [f"### {name}", ""]
        for i, example in enumerate(examples, 1):
            lines.append(f"{i}.")
            # Older reports hold only student and teacher: show the fields there are.
            for key in ("document", "reference", "teacher", "student"):
                if key in example:
                    lines.append(f"   - **{key}**: {_one_line(example[key])}")
            lines.append("")
    return lines


def _summary_lines(summ: dict[str, Any]) -> list[str]:
    return _summary_rouge_lines(summ) + _degeneration_lines(summ)


def _speed_lines(models: dict[str, Any]) -> list[str]:
    lines = [
        "| model | task | device | batch | items/s (items timed) | p50 ms | p95 ms | latency samples "
        "| parameters |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for who in ("teacher", "student"):
        for task, s in models[who]["speed"].items():
            row = [
                who,
                task,
                s["device"],
                str(s["batch_size"]),
                f"{_fmt(s['items_per_s'])} ({s['batched_items']})",
                _fmt(s["latency_p50_ms"]),
                _fmt(s["latency_p95_ms"]),
                str(s["latency_samples"]),
                f"{models[who]['parameters'] / 1e6:.1f}M",
            ]
            lines.append("| " + " | ".join(row) + " |")
    notes = [
        f"{who} {task}: {s['latency_p95_note']}"
        for who in ("teacher", "student")
        for task, s in models[who]["speed"].items()
        if "latency_p95_note" in s
    ]
    return lines + ([""] + [f"p95 not reported: {n}" for n in notes] if notes else [])


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# distill report ({report['split']} split)", ""]
    for warning in report.get("warnings", []):
        lines += [f"**Warning: {warning}.**", ""]
    lines += [
        f"Student trained with hard labels: {report['student_training']['hard_labels']}. "
        f"Intervals: {report['bootstrap']['interval']} bootstrap, "
        f"{report['bootstrap']['resamples']} resamples of the eval rows.",
        "",
    ]
    cls = {k: v for k, v in report["tasks"].items() if "student" in v}
    if cls:
        lines += _classification_lines(cls)
    summ = {k: v for k, v in report["tasks"].items() if "student_vs_reference" in v}
    if summ:
        lines += _summary_lines(summ)
    models = report["models"]
    lines += _speed_lines(models)
    if models["compression"]:
        lines += ["", f"Teacher/student parameter ratio: {models['compression']}×"]
    usage = models["teacher"].get("api_usage")
    if usage:
        cost = f", estimated ${usage['cost_usd']}" if usage.get("cost_usd") is not None else ""
        lines += [
            "",
            f"API teacher (last teach run): {usage['requests']} requests, {usage['retries']} retries, "
            f"{usage['input_tokens']} tokens in, {usage['output_tokens']} out{cost}; "
            f"request latency p50 {usage['latency_p50_ms']} ms, p95 {usage['latency_p95_ms']} ms",
        ]
    if report["gates"]:
        lines += ["", "| gate | value | min | passed |", "|---|---|---|---|"]
        lines += [
            f"| {k} | {_fmt(g['value'])} | {g['min']} | {g['passed']} |" for k, g in report["gates"].items()
        ]
    examples = _example_lines(summ) if summ else []
    if examples:
        lines += ["", "## Summary examples", "", *examples[:-1]]  # [:-1]: no blank line at the end
    return "\n".join(lines) + "\n"
