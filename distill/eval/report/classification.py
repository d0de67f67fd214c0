"""The report's classification tables and notes: student, teacher and majority class; the
teacher's label mass and per-class precision/recall; the cascade."""

from __future__ import annotations

from typing import Any

from distill.eval.report.table import Table, cell, fmt


def classification_table(cls: dict[str, Any]) -> Table:
    rows = []
    for name, m in cls.items():
        for who in ("majority_baseline", "teacher", "student"):
            node = m[who]
            extra = [cell(m, "agreement"), cell(m, "kl_teacher_student")] if who == "student" else ["", ""]
            label = f"majority ({node['label']})" if who == "majority_baseline" and node else who
            cells = [*(cell(node, k) for k in ("accuracy", "macro_f1", "ece")), *extra]
            rows.append([name, label.replace("_", " "), *cells])
    header = ["task", "model", "accuracy", "macro-F1", "ECE", "agreement", "KL(t‖s)"]
    return Table(header, rows)


def baseline_notes(cls: dict[str, Any]) -> list[str]:
    """Why a task has no majority-class baseline row (no gold on the scored split)."""
    return [
        f"{name}: {m['majority_baseline_note']}."
        for name, m in cls.items()
        if m.get("majority_baseline_note")
    ]


def accuracy_gap_notes(cls: dict[str, Any]) -> list[str]:
    notes = [(name, cell(m, "student_minus_teacher_accuracy")) for name, m in cls.items()]
    return [f"{name}: student − teacher accuracy {gap} (paired)." for name, gap in notes if gap]


def label_mass_table(cls: dict[str, Any]) -> Table:
    rows = []
    for name, m in cls.items():
        mass = m["teacher_label_mass"]
        below = "" if mass["below_min"] is None else f"{mass['below_min']} (< {mass['min_label_mass']})"
        methods = ", ".join(f"{k}: {v}" for k, v in m["teacher_methods"].items())
        rows.append([name, *(str(mass[k]) for k in ("min", "p5", "p50", "mean")), below, methods])
    header = ["task", "label mass min", "p5", "p50", "mean", "below min_label_mass", "teacher methods"]
    return Table(header, rows)


def teacher_class_table(cls: dict[str, Any]) -> Table:
    rows = []
    for name, m in cls.items():
        per = m.get("teacher_per_class")
        if not per:
            continue
        below = set(per["below_majority_rate"])
        for label, c in per["classes"].items():
            flag = f"below the majority rate {per['majority_rate']:.3f}" if label in below else ""
            rows.append([name, label, fmt(c["precision"]), fmt(c["recall"]), str(c["support"]), flag])
    return Table(["task", "class", "teacher precision", "teacher recall", "gold rows", ""], rows)


def cascade_table(cls: dict[str, Any]) -> Table:
    rows = []
    for name, m in cls.items():
        casc = m.get("cascade") or {}
        points = [(f"{p['target_rate']:.0%}", p) for p in casc.get("rows", [])]
        if casc.get("chosen"):
            points.append((f"chosen: {casc['chosen']['target']} (serve.defer)", casc["chosen"]))
        for label, p in points:
            calls, latency = fmt(p["teacher_calls_per_1000"], "{:.0f}"), fmt(p.get("latency_ms"), "{:.1f}")
            rows.append([name, label, fmt(p["threshold"], "{:.3f}"), f"{p['deferred']:.1%}",
                         cell(p, "accuracy"), cell(p, "agreement"), calls, latency])  # fmt: skip
    header = ["task", "deferral (validation)", "threshold", "deferred (eval)", "accuracy", "agreement",
              "teacher calls /1000", "est. ms/request"]  # fmt: skip
    return Table(header, rows)


CASCADE_NOTE = (
    "Cascade: the student answers, and defers to the teacher the requests whose top class "
    "probability is below the threshold, chosen on the validation split for each deferral rate "
    "and scored here. ms/request: the student's single-item p50 latency plus the deferred share "
    "of the teacher's (n/a for an API teacher, which eval does not time)."
)


def cascade_notes(cls: dict[str, Any]) -> list[str]:
    notes = [
        f"{name}: {m['cascade']['note']}." for name, m in cls.items() if (m.get("cascade") or {}).get("note")
    ]
    for name, m in cls.items():
        taught = m.get("taught_train_rows") or {}
        if "pseudo_label" in taught:
            notes.append(
                f"{name}: {taught['pseudo_label']} of {sum(taught.values())} train rows are pseudo labels "
                "(teach.select's learner, not the teacher)."
            )
    return notes


def select_table(select: dict[str, Any] | None) -> Table:
    """teach.select: per task, which pool rows the teacher labelled, which the learner did, and
    which were left out of training."""
    rows = []
    for name, r in (select or {}).items():
        new = f"{r['asked_new']} of {r['new']} new" if "new" in r else ""
        rows.append([name, f"{r['strategy']} / {r['learner']}", str(r["pool"]), str(r["asked"]), new,
                     str(r["pseudo_labelled"]), str(r["left"]), str(r["teacher_calls"])])  # fmt: skip
    header = ["task", "selection / learner", "pool", "taught", "new rows taught", "pseudo-labelled", "left",
              "teacher calls"]  # fmt: skip
    return Table(header, rows)
