"""report.json's figure data (reliability bins, confusion matrices) against hand-computed values,
and report.html: its figures are real PNGs with findable titles, its tables hold report.json's
numbers, and every text is escaped; from a hand-made report and from a real tiny run."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from distill.eval.metrics.bootstrap import bootstrap_indices
from distill.eval.metrics.classification import (
    classification_metrics,
    confidence_bins,
    confusion_matrix,
    expected_calibration_error,
    reliability_table,
)
from distill.eval.report.markdown import html, markdown

# --- reliability bins and confusion matrices ----------------------------------------------------

# Five rows, two labels. Top-label confidence: 0.7, 0.7, 0.5, 1.0, 0.95; predicted 1, 0, 0, 0, 0.
PROBS = np.array([[0.3, 0.7], [0.7, 0.3], [0.5, 0.5], [1.0, 0.0], [0.95, 0.05]])
GOLD = np.array([1, 1, 0, 0, 1])


def test_confidence_bins_close_on_the_right():
    # (lo, hi]: 0.1 closes bin 0, 0.3 closes bin 2 (linspace's 0.30000000000000004 edge), 1.0 is bin 9.
    got = confidence_bins(np.array([0.05, 0.1, 0.100001, 0.3, 0.5, 0.95, 1.0]))
    assert got.tolist() == [0, 0, 1, 2, 4, 9, 9]


def test_reliability_table_by_hand():
    table = reliability_table(PROBS, GOLD)
    assert table["edges"] == pytest.approx([i / 10 for i in range(11)])
    # bin 4 (0.4, 0.5]: the 0.5 row, right; bin 6 (0.6, 0.7]: both 0.7 rows, one right;
    # bin 9 (0.9, 1.0]: 1.0 (right) and 0.95 (wrong).
    assert table["count"] == [0, 0, 0, 0, 1, 0, 2, 0, 0, 2]
    assert table["mean_confidence"] == [None] * 4 + [0.5, None, 0.7, None, None, 0.975]
    assert table["accuracy"] == [None] * 4 + [1.0, None, 0.5, None, None, 0.5]


def test_ece_is_the_reliability_tables_weighted_gap():
    # By hand: (1·|1 − 0.5| + 2·|0.5 − 0.7| + 2·|0.5 − 0.975|) / 5 = (0.5 + 0.4 + 0.95) / 5 = 0.37
    assert expected_calibration_error(PROBS, GOLD) == pytest.approx(0.37, abs=1e-12)
    table = reliability_table(PROBS, GOLD)
    full = [i for i, c in enumerate(table["count"]) if c]
    gap = sum(table["count"][i] * abs(table["accuracy"][i] - table["mean_confidence"][i]) for i in full)
    assert gap / len(GOLD) == pytest.approx(expected_calibration_error(PROBS, GOLD), abs=1e-12)


def test_confusion_matrix_by_hand():
    # gold 0 (rows 2, 3): predicted 0, 0; gold 1 (rows 0, 1, 4): predicted 1, 0, 0.
    assert confusion_matrix(PROBS.argmax(-1), GOLD, 2) == [[2, 0], [2, 1]]
    three = confusion_matrix(np.array([2, 2, 0, 1]), np.array([0, 2, 0, 0]), 3)
    assert three == [[1, 1, 1], [0, 0, 0], [0, 0, 1]]  # counts[gold][predicted]


LABELS = ["great", "other"]


def test_classification_report_holds_both_models_figure_data_on_gold_rows_only():
    gold = ["great", "other", "other", None]  # the last row has no gold label: left out
    teacher = [[0.92, 0.08], [0.35, 0.65], [0.82, 0.18], [0.6, 0.4]]
    test = [
        {"label": g, "teacher_distribution": t, "teacher_label_mass": 1.0, "teacher_method": "v"}
        for g, t in zip(gold, teacher)
    ]
    student = np.array([[0.75, 0.25], [0.45, 0.55], [0.45, 0.55], [0.99, 0.01]])
    train = [{"label": "great"}, {"label": "other"}]
    m = classification_metrics(LABELS, test, student, train, bootstrap_indices(4, 20, 0))
    assert m["labels"] == ["great", "other"]
    # teacher: great→great, other→other, other→great; confidences 0.92, 0.65, 0.82.
    assert m["teacher"]["confusion"] == [[1, 0], [1, 1]]
    assert m["teacher"]["reliability"]["count"] == [0] * 6 + [1, 0, 1, 1]
    assert m["teacher"]["reliability"]["accuracy"][8] == 0.0  # the 0.82 row is wrong
    # student: great→great, other→other twice; confidences 0.75, 0.55, 0.55.
    assert m["student"]["confusion"] == [[1, 0], [0, 2]]
    assert m["student"]["reliability"]["count"] == [0] * 5 + [2, 0, 1, 0, 0]
    assert m["student"]["reliability"]["mean_confidence"][5] == pytest.approx(0.55)


# --- report.html ---------------------------------------------------------------------------------


class Page(HTMLParser):
    """The tables (rows of unescaped cell texts) and images (alt, src) of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[tuple[str, str]] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append((attrs.get("alt", ""), attrs["src"]))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def row(self, *first: str) -> list[str]:
        """The one table row whose leading cells are ``first``."""
        found = [r for t in self.tables for r in t if r[: len(first)] == list(first)]
        assert len(found) == 1, f"{len(found)} rows start with {first}"
        return found[0]


ROUNDING = 5e-4 + 1e-9  # the tables print 3 decimals


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", cell)]


def figure_and_interval(node: dict, key: str) -> list[float]:
    return [node[key], *(node.get(f"{key}_ci95") or [])]


def assert_real_png(src: str, alt: str) -> None:
    assert src.startswith("data:image/png;base64,"), alt
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, alt
    image = Image.open(io.BytesIO(data))
    image.load()
    assert 300 <= image.width <= 2000 and 150 <= image.height <= 1600, (alt, image.size)
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 20, f"{alt}: (nearly) one flat colour"


def assert_page(report: dict, log: list[dict] | None, page_text: str) -> Page:
    """Figures, titles and table numbers every page must show for ``report``."""
    page = Page(page_text)
    assert not re.search(r'(?:src|href)="(?!data:)', page_text)  # self-contained
    assert "<script" not in page_text
    for alt, src in page.images:
        assert_real_png(src, alt)
    alts = [alt for alt, _ in page.images]
    for name, m in report["tasks"].items():
        if "student" in m:
            assert f"{name}: reliability diagram, teacher and student" in alts
            assert f"{name}: confusion matrix (rows gold, columns predicted), teacher and student" in alts
            for who in ("teacher", "student"):
                row = page.row(name, who)
                for column, key in ((2, "accuracy"), (3, "macro_f1"), (4, "ece")):
                    assert numbers(row[column]) == pytest.approx(
                        figure_and_interval(m[who], key), abs=ROUNDING
                    )
            student_row = page.row(name, "student")
            assert numbers(student_row[5]) == pytest.approx(figure_and_interval(m, "agreement"), abs=ROUNDING)
        else:
            for label, key in (
                ("teacher vs reference", "teacher_vs_reference"),
                ("student vs teacher", "student_vs_teacher"),
            ):
                row = page.row(name, label)
                assert numbers(row[2]) == pytest.approx(figure_and_interval(m[key], "rouge1"), abs=ROUNDING)
                assert numbers(row[4]) == pytest.approx(figure_and_interval(m[key], "rougeL"), abs=ROUNDING)
            assert f"<h3>{name}</h3>" in page_text  # its examples
    for who in ("teacher", "student"):
        for task, s in report["models"][who]["speed"].items():
            assert numbers(page.row(who, task)[4]) == pytest.approx([s["items_per_s"], s["batched_items"]])
    assert any(alt.startswith("throughput per task") for alt in alts)
    trained = [a for a in alts if a.startswith(("training loss per task", "task weights per step"))]
    if log:
        assert len(trained) == 2
        for name in report["tasks"]:
            assert all(name in alt for alt in trained)
    else:
        assert not trained
    return page


DOCUMENT = 'If a < b && c > d then <script>alert("x")</script>\n  stays | literal.'


def hand_made_report() -> dict:
    def rel(count, confidence, accuracy):
        return {
            "edges": [i / 10 for i in range(11)],
            "count": count,
            "mean_confidence": confidence,
            "accuracy": accuracy,
        }

    empty = [None] * 5
    teacher = {
        "accuracy": 0.75,
        "accuracy_ci95": [0.5, 1.0],
        "macro_f1": 0.7333,
        "macro_f1_ci95": [0.4, 1.0],
        "ece": 0.1625,
        "ece_ci95": [0.05, 0.3],
        "at_or_below_majority": False,
        "reliability": rel(
            [0] * 5 + [1, 0, 1, 0, 2],
            empty + [0.55, None, 0.8, None, 0.95],
            empty + [1.0, None, 0.0, None, 1.0],
        ),
        "confusion": [[2, 1], [0, 1]],
    }
    student = {
        "accuracy": 0.5,
        "accuracy_ci95": [0.25, 0.75],
        "macro_f1": 0.4667,
        "macro_f1_ci95": [0.2, 0.8],
        "ece": 0.3,
        "ece_ci95": [0.1, 0.5],
        "at_or_below_majority": True,
        "reliability": rel(
            [0] * 5 + [2, 2, 0, 0, 0],
            empty + [0.55, 0.65, None, None, None],
            empty + [0.5, 0.5, None, None, None],
        ),
        "confusion": [[1, 2], [0, 1]],
    }
    classification = {
        "rows": 4,
        "labels": ["great", "other"],
        "rows_with_gold": 4,
        "student": student,
        "teacher": teacher,
        "agreement": 0.75,
        "agreement_ci95": [0.5, 1.0],
        "kl_teacher_student": 0.0123,
        "kl_teacher_student_ci95": [0.001, 0.03],
        "student_minus_teacher_accuracy": -0.25,
        "student_minus_teacher_accuracy_ci95": [-0.5, 0.0],
        "majority_baseline": {
            "label": "great",
            "train_share": 0.6,
            "accuracy": 0.75,
            "accuracy_ci95": [0.5, 1.0],
            "macro_f1": 0.4286,
            "macro_f1_ci95": [0.3, 0.5],
        },
        "teacher_label_mass": {
            "min": 0.9,
            "p5": 0.91,
            "p50": 0.95,
            "mean": 0.94,
            "min_label_mass": 0.05,
            "below_min": 0,
        },
        "teacher_methods": {"verbalizer_logits": 4},
    }
    rouge = {
        "rouge1": 0.4211,
        "rouge1_ci95": [0.3, 0.5],
        "rouge2": 0.1,
        "rouge2_ci95": [0.05, 0.2],
        "rougeL": 0.3333,
        "rougeL_ci95": [0.25, 0.4],
    }
    summary = {
        "rows": 2,
        "student_vs_reference": rouge,
        "teacher_vs_reference": {**rouge, "rouge1": 0.5},
        "student_vs_teacher": {**rouge, "rouge1": 0.9, "rougeL": 0.875},
        "teacher_cut_by_length": 0,
        "examples": [
            {"document": DOCUMENT, "reference": None, "teacher": "Tom & Jerry <b>win</b>", "student": "a<b"},
            {"document": "Plain.", "reference": "Ref.", "teacher": "T.", "student": "S."},
        ],
    }

    def speed(rate, items):
        return {
            "device": "cpu",
            "batch_size": 8,
            "items_per_s": rate,
            "batched_items": items,
            "latency_p50_ms": 5.0,
            "latency_p95_ms": 9.5,
            "latency_samples": 40,
        }

    return {
        "split": "test",
        "warnings": ["reviews: the student's accuracy 0.500 is at or below <majority> 0.750"],
        "student_training": {"hard_labels": "teacher", "stale": False},
        "bootstrap": {"resamples": 50, "seed": 0, "interval": "95% percentile"},
        "tasks": {"reviews": classification, "papers": summary},
        "models": {
            "student": {
                "parameters": 2e6,
                "speed": {"reviews": speed(120.5, 480), "papers": speed(3.25, 16)},
            },
            "teacher": {"parameters": 5e8, "speed": {"reviews": speed(2.5, 8), "papers": speed(0.5, 8)}},
            "compression": 250.0,
        },
        "gates": {
            "reviews.student.accuracy": {"value": 0.5, "min": 0.6, "passed": False},  # older: no max
            "reviews.student.ece": {"value": 0.3, "min": None, "max": 0.1, "passed": False},
        },
    }


def hand_made_log(steps: int = 40) -> list[dict]:
    log = []
    for step in range(1, steps + 1):
        record = {
            "step": step,
            "loss": 3.0,
            "lr": 1e-4,
            "reviews": 0.7 / step**0.3,
            "papers": 6.0 / step**0.2,
        }
        record |= {"weight/reviews": 1 + step / steps, "weight/papers": 1 - step / (2 * steps)}
        log.append(record)
    del log[5]["papers"]  # a step whose batch held no summarization rows
    return log


def test_html_from_a_hand_made_report():
    report, log = hand_made_report(), hand_made_log()
    text = html(report, log)
    page = assert_page(report, log, text)
    assert len(page.images) == 5  # reliability, confusion, loss, weights, speed
    # Escaped text: no markup of the document leaks, and the cells read back as the raw text.
    assert "<script>alert" not in text and "<b>win" not in text and "<majority>" not in text
    assert "If a &lt; b &amp;&amp; c &gt; d then &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    example = page.row("1")
    assert example == ["1", DOCUMENT, "(none)", "Tom & Jerry <b>win</b>", "a<b"]
    assert (
        "Warning: reviews: the student&#x27;s accuracy 0.500 is at or below &lt;majority&gt; 0.750." in text
    )
    assert page.row("reviews.student.accuracy") == ["reviews.student.accuracy", "0.500", "0.6", "", "False"]
    assert page.row("reviews.student.ece") == ["reviews.student.ece", "0.300", "", "0.1", "False"]
    assert page.row("reviews", "majority (great)")[2] == "0.750 [0.500, 1.000]"
    assert "reviews: student − teacher accuracy -0.250 [-0.500, 0.000] (paired)." in text
    # markdown() still renders the same report (its tables are the same Table objects).
    assert "| reviews | student | 0.500 [0.250, 0.750] | 0.467 [0.200, 0.800] |" in markdown(report)


def test_html_without_a_log_or_figure_data():
    """An older report.json (no reliability or confusion) and no train log: tables, no such figures."""
    report = hand_made_report()
    for who in ("teacher", "student"):
        del report["tasks"]["reviews"][who]["reliability"], report["tasks"]["reviews"][who]["confusion"]
    page = Page(html(report))
    assert [alt for alt, _ in page.images] == ["throughput per task (items/s), student vs teacher"]
    assert page.row("reviews", "teacher")[2] == "0.750 [0.500, 1.000]"


def test_html_figures_change_with_the_data():
    """The figures are drawn from the report, not a fixed picture."""
    report = hand_made_report()
    before = dict(Page(html(report)).images)
    report["tasks"]["reviews"]["student"]["confusion"] = [[3, 0], [0, 1]]
    after = dict(Page(html(report)).images)
    confusion = "reviews: confusion matrix (rows gold, columns predicted), teacher and student"
    reliability = "reviews: reliability diagram, teacher and student"
    assert before[confusion] != after[confusion] and before[reliability] == after[reliability]


def test_html_of_a_real_tiny_run(trained_run):
    report = json.loads((trained_run / "eval" / "report.json").read_text())
    log = [json.loads(line) for line in (trained_run / "train" / "log.jsonl").read_text().splitlines()]
    cls = [name for name, m in report["tasks"].items() if "student" in m]
    assert cls and len(cls) < len(report["tasks"])  # both kinds are on the page
    for name in cls:
        m = report["tasks"][name]
        for who in ("teacher", "student"):
            assert sum(m[who]["reliability"]["count"]) == m["rows_with_gold"]
            assert np.sum(m[who]["confusion"]) == m["rows_with_gold"]
    written = (trained_run / "eval" / "report.html").read_text()  # what `distill eval` wrote
    assert written == html(report, log)
    assert_page(report, log, written)
