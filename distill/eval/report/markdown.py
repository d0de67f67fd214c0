"""The eval report for a person: report.md (tables) and report.html (the same tables, escaped,
with the figures of ``distill.figures`` embedded as PNG). report.json holds the numbers; each
table here is built once (a ``Table`` of formatted cells) and rendered to either format."""

from __future__ import annotations

import html as html_lib
from typing import Any

from distill.eval.report.classification import (
    CASCADE_NOTE,
    accuracy_gap_notes,
    baseline_notes,
    cascade_notes,
    cascade_table,
    classification_table,
    label_mass_table,
    select_table,
    teacher_class_table,
)
from distill.eval.report.figures import classification_figures, speed_figure, training_figures
from distill.eval.report.table import Table, cell, fmt

# --- the tables and notes, shared by both formats ------------------------------------------------


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
DEGENERATION_NOTE = (
    "Degeneration is measured on plain greedy output (the student's greedy summaries, whatever "
    "decoding its ROUGE used; the teacher's stored summaries), so beams or n-gram blocking "
    "cannot hide repetition."
)


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


def rouge_table(summ: dict[str, Any]) -> Table:
    rows = [
        [name, label, *(cell(node, k) for k in ROUGE_COLUMNS)]
        for name, m in summ.items()
        for label, node in _rouge_comparisons(m)
    ]
    return Table(["task", "comparison", "ROUGE-1", "ROUGE-2", "ROUGE-L"], rows)


def length_cut_note(summ: dict[str, Any]) -> str:
    cut = ", ".join(f"{name}: {m['teacher_cut_by_length']} of {m['rows']}" for name, m in summ.items())
    return f"Teacher summaries cut by the length limit: {cut}"


def _decoding_text(decoding: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in decoding.items()) if decoding else "not recorded"


def degeneration_table(tasks: dict[str, Any]) -> Table:
    """``tasks``: the summary tasks whose report has degeneration figures."""
    rows = [
        [name, who, *(fmt(m["degeneration"][who][k], f) for k, f in DEGENERATION_COLUMNS.items())]
        for name, m in tasks.items()
        for who in ("teacher", "student")
    ]
    header = ["task", "model", "repeated 3-grams", "distinct outputs /100", "distinct-2", "mean words"]
    return Table([*header, "empty", "cut"], rows)


def decoding_notes(tasks: dict[str, Any]) -> list[str]:
    return [
        f"{name}: student decoding {_decoding_text(m.get('decoding'))}; student/teacher length "
        f"{fmt(m['degeneration'].get('student_to_teacher_length'))}"
        + (f"; student.json's decoding {m['student_json_decoding']}" if "student_json_decoding" in m else "")
        for name, m in tasks.items()
    ]


def speed_table(models: dict[str, Any]) -> Table:
    rows = [
        [
            who,
            task,
            s["device"],
            str(s["batch_size"]),
            f"{fmt(s['items_per_s'])} ({s['batched_items']})",
            fmt(s["latency_p50_ms"]),
            fmt(s["latency_p95_ms"]),
            str(s["latency_samples"]),
            f"{models[who]['parameters'] / 1e6:.1f}M",
        ]
        for who in ("teacher", "student")
        for task, s in models[who]["speed"].items()
    ]
    header = ["model", "task", "device", "batch", "items/s (items timed)", "p50 ms", "p95 ms"]
    return Table([*header, "latency samples", "parameters"], rows)


def p95_notes(models: dict[str, Any]) -> list[str]:
    return [
        f"p95 not reported: {who} {task}: {s['latency_p95_note']}"
        for who in ("teacher", "student")
        for task, s in models[who]["speed"].items()
        if "latency_p95_note" in s
    ]


def api_usage_note(usage: dict[str, Any]) -> str:
    cost = f", estimated ${usage['cost_usd']}" if usage.get("cost_usd") is not None else ""
    return (
        f"API teacher (last teach run): {usage['requests']} requests, {usage['retries']} retries, "
        f"{usage['input_tokens']} tokens in, {usage['output_tokens']} out{cost}; "
        f"request latency p50 {usage['latency_p50_ms']} ms, p95 {usage['latency_p95_ms']} ms"
    )


def gates_table(gates: dict[str, Any]) -> Table:
    """Each gate's figure, its bounds (blank: no such bound; older reports have no max) and verdict."""

    def bound(g: dict[str, Any], key: str) -> str:
        return "" if g.get(key) is None else str(g[key])

    rows = [
        [k, fmt(g["value"]), bound(g, "min"), bound(g, "max"), str(g["passed"])] for k, g in gates.items()
    ]
    return Table(["gate", "value", "min", "max", "passed"], rows)


def intro_note(report: dict[str, Any]) -> str:
    return (
        f"Student trained with hard labels: {report['student_training']['hard_labels']}. "
        f"Intervals: {report['bootstrap']['interval']} bootstrap, "
        f"{report['bootstrap']['resamples']} resamples of the eval rows."
    )


def classification_tasks(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report["tasks"].items() if "student" in v}


def summary_tasks(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report["tasks"].items() if "student_vs_reference" in v}


EXAMPLE_FIELDS = ("document", "reference", "teacher", "student")


# --- report.md -----------------------------------------------------------------------------------


def _markdown_table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    return lines + ["| " + " | ".join(row) + " |" for row in table.rows]


def _classification_lines(cls: dict[str, Any]) -> list[str]:
    notes = [*baseline_notes(cls), *accuracy_gap_notes(cls)]
    lines = [*_markdown_table(classification_table(cls)), "", *notes, ""]
    lines += _markdown_table(label_mass_table(cls)) + [""]
    lines += _markdown_table(teacher_class_table(cls)) + [""]
    casc = cascade_table(cls)
    if casc.rows:
        lines += [*_markdown_table(casc), "", CASCADE_NOTE, ""]
    notes = cascade_notes(cls)
    return lines + ([*notes, ""] if notes else [])


def _degeneration_lines(summ: dict[str, Any]) -> list[str]:
    tasks = {name: m for name, m in summ.items() if m.get("degeneration")}
    if not tasks:
        return []
    notes = [f"- {note}" for note in decoding_notes(tasks)]
    return [*_markdown_table(degeneration_table(tasks)), "", DEGENERATION_NOTE, "", *notes, ""]


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
            for key in EXAMPLE_FIELDS:
                if key in example:
                    lines.append(f"   - **{key}**: {_one_line(example[key])}")
            lines.append("")
    return lines


def _summary_lines(summ: dict[str, Any]) -> list[str]:
    lines = [*_markdown_table(rouge_table(summ)), "", length_cut_note(summ), ""]
    return lines + _degeneration_lines(summ)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# distill report ({report['split']} split)", ""]
    for warning in report.get("warnings", []):
        lines += [f"**Warning: {warning}.**", ""]
    lines += [intro_note(report), ""]
    cls = classification_tasks(report)
    if cls:
        lines += _classification_lines(cls)
    selected = select_table(report.get("teach_select"))
    if selected.rows:
        lines += ["Active teaching (teach.select): the train rows the teacher labelled.", "",
                  *_markdown_table(selected), ""]  # fmt: skip
    summ = summary_tasks(report)
    if summ:
        lines += _summary_lines(summ)
    models = report["models"]
    lines += _markdown_table(speed_table(models))
    notes = p95_notes(models)
    lines += [""] + notes if notes else []
    if models["compression"]:
        lines += ["", f"Teacher/student parameter ratio: {models['compression']}×"]
    usage = models["teacher"].get("api_usage")
    if usage:
        lines += ["", api_usage_note(usage)]
    if report["gates"]:
        lines += ["", *_markdown_table(gates_table(report["gates"]))]
    examples = _example_lines(summ) if summ else []
    if examples:
        lines += ["", "## Summary examples", "", *examples[:-1]]  # [:-1]: no blank line at the end
    return "\n".join(lines) + "\n"


# --- report.html ---------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; display: block; }
.warning { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 1em; font-weight: bold; }
table.examples { table-layout: fixed; width: 100%; font-size: 0.82em; }
table.examples td { white-space: pre-wrap; word-wrap: break-word; }
table.examples th:first-child { width: 2em; }
"""


def _esc(text: Any) -> str:
    return html_lib.escape(str(text))


def html_table(table: Table, css_class: str = "") -> str:
    attr = f' class="{css_class}"' if css_class else ""
    head = "".join(f"<th>{_esc(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>\n" for row in table.rows)
    return f"<table{attr}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>"


def _paragraphs(notes: list[str]) -> list[str]:
    return [f"<p>{_esc(note)}</p>" for note in notes]


def _classification_html(cls: dict[str, Any]) -> list[str]:
    parts = [
        "<h2>Classification</h2>",
        html_table(classification_table(cls)),
        *_paragraphs(baseline_notes(cls)),
        *_paragraphs(accuracy_gap_notes(cls)),
    ]
    parts += ["<h3>Teacher label mass</h3>", html_table(label_mass_table(cls))]
    parts += ["<h3>Teacher per class</h3>", html_table(teacher_class_table(cls))]
    casc = cascade_table(cls)
    if casc.rows:
        parts += [
            "<h3>Cascade: deferring to the teacher</h3>",
            html_table(casc),
            *_paragraphs([CASCADE_NOTE]),
        ]
    parts += _paragraphs(cascade_notes(cls))
    for name, m in cls.items():
        figures = classification_figures(name, m)
        parts += [f"<h3>{_esc(name)}: calibration and errors</h3>", *figures] if figures else []
    return parts


def _summary_html(summ: dict[str, Any]) -> list[str]:
    parts = ["<h2>Summarization</h2>", html_table(rouge_table(summ)), *_paragraphs([length_cut_note(summ)])]
    tasks = {name: m for name, m in summ.items() if m.get("degeneration")}
    if tasks:
        notes = "".join(f"<li>{_esc(note)}</li>" for note in decoding_notes(tasks))
        parts += [
            html_table(degeneration_table(tasks)),
            *_paragraphs([DEGENERATION_NOTE]),
            f"<ul>{notes}</ul>",
        ]
    return parts


def _examples_html(summ: dict[str, Any]) -> list[str]:
    parts = []
    for name, m in summ.items():
        examples = m.get("examples") or []
        if not examples:
            continue
        fields = [k for k in EXAMPLE_FIELDS if any(k in e for e in examples)]  # older reports: fewer
        header = ["#", *("document (start)" if k == "document" else k for k in fields)]
        rows = [[str(i), *(_none(e.get(k)) for k in fields)] for i, e in enumerate(examples, 1)]
        parts += [f"<h3>{_esc(name)}</h3>", html_table(Table(header, rows), "examples")]
    return ["<h2>Summary examples</h2>", *parts] if parts else []


def _none(text: str | None) -> str:
    return "(none)" if text is None else text


def _speed_html(models: dict[str, Any], gates: dict[str, Any]) -> list[str]:
    parts = ["<h2>Speed</h2>", html_table(speed_table(models)), *_paragraphs(p95_notes(models))]
    if models["student"]["speed"] or models["teacher"]["speed"]:
        parts.append(speed_figure(models))
    if models["compression"]:
        parts += _paragraphs([f"Teacher/student parameter ratio: {models['compression']}×"])
    usage = models["teacher"].get("api_usage")
    parts += _paragraphs([api_usage_note(usage)]) if usage else []
    return parts + (["<h2>Gates</h2>", html_table(gates_table(gates))] if gates else [])


def html(report: dict[str, Any], train_log: list[dict[str, Any]] | None = None) -> str:
    """report.html: report.md's tables and notes plus figures (reliability diagrams, confusion
    matrices, per-task loss and task weights from ``train_log`` (train/log.jsonl's records) when
    given, speed bars); one file, images inline, no scripts or external resources."""
    title = f"distill report ({report['split']} split)"
    parts = [f"<h1>{_esc(title)}</h1>"]
    parts += [f'<p class="warning">Warning: {_esc(w)}.</p>' for w in report.get("warnings", [])]
    parts += _paragraphs([intro_note(report)])
    cls, summ = classification_tasks(report), summary_tasks(report)
    parts += _classification_html(cls) if cls else []
    selected = select_table(report.get("teach_select"))
    if selected.rows:
        parts += ["<h3>Active teaching (teach.select)</h3>", html_table(selected)]
    parts += _summary_html(summ) if summ else []
    if train_log:
        parts += ["<h2>Training</h2>", *training_figures(list(report["tasks"]), train_log)]
    parts += _speed_html(report["models"], report["gates"])
    parts += _examples_html(summ)
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_esc(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
