"""Eval's metrics against hand-computed and sklearn values, its bootstrap intervals, the
majority baseline and its warnings, the gates, the speed slice, and the stale-student check."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from distill.core.config import EvalConfig
from distill.core.config.eval import Gate
from distill.core.devices import eval_device
from distill.core.errors import ConfigError, DistillError
from distill.eval.gates import check_gates
from distill.eval.metrics.bootstrap import bootstrap_indices, estimate, mean_estimate, percentile_interval
from distill.eval.metrics.classification import (
    classification_metrics,
    expected_calibration_error,
    label_mass_summary,
    macro_f1,
    majority_label,
)
from distill.eval.metrics.summaries import rouge_per_row
from distill.eval.provenance import student_provenance
from distill.eval.report.markdown import html, markdown
from distill.eval.run import baseline_warnings
from distill.eval.speed import time_slice
from distill.pipeline import load as load_pipeline
from tests.conftest import REPO, pipeline_dict, write_pipeline

LABELS = ["great", "other"]


# sklearn.metrics.f1_score(gold, pred, average="macro"), computed once with scikit-learn 1.9.1.
@pytest.mark.parametrize(
    ("gold", "pred", "expected"),
    [
        ([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 0.43333333333333335),  # label 3 of 4 absent from both
        ([0, 0, 1, 1], [0, 2, 1, 1], 0.5555555555555555),  # label 2 predicted, never gold
        ([1, 1, 1, 0], [1, 1, 1, 1], 0.42857142857142855),  # label 0 gold, never predicted
        ([3, 3, 0], [3, 3, 0], 1.0),  # labels 1 and 2 absent: a perfect model scores 1, not 0.5
    ],
)
def test_macro_f1_matches_sklearn(gold, pred, expected):
    assert macro_f1(np.array(pred), np.array(gold)) == pytest.approx(expected, abs=1e-12)


def test_ece_by_hand():
    probs = np.array([[0.95, 0.05], [0.92, 0.08], [0.35, 0.65], [0.55, 0.45]])
    gold = np.array([0, 1, 1, 1])
    # bin (0.9, 1]: 2 rows, accuracy 0.5, confidence 0.935; bin (0.6, 0.7]: 1 row, right at 0.65;
    # bin (0.5, 0.6]: 1 row, wrong at 0.55.
    expected = 2 / 4 * abs(0.5 - 0.935) + 1 / 4 * abs(1 - 0.65) + 1 / 4 * abs(0 - 0.55)
    assert expected_calibration_error(probs, gold) == pytest.approx(expected, abs=1e-12)
    calibrated = np.array([[0.75, 0.25]] * 4)  # confidence 0.75, right 3 times in 4
    assert expected_calibration_error(calibrated, np.array([0, 0, 0, 1])) == pytest.approx(0.0, abs=1e-12)


def test_bootstrap_interval_of_a_known_accuracy():
    correct = np.array([1.0] * 50 + [0.0] * 50)
    resamples = bootstrap_indices(100, 1000, seed=0)
    got = mean_estimate("accuracy", correct, resamples)
    lo, hi = got["accuracy_ci95"]
    # Binomial standard error sqrt(0.5·0.5/100) = 0.05: the interval is 0.5 ± 1.96·0.05.
    assert got["accuracy"] == 0.5
    assert lo == pytest.approx(0.5 - 1.96 * 0.05, abs=0.02) and hi == pytest.approx(
        0.5 + 1.96 * 0.05, abs=0.02
    )
    assert hi - lo == pytest.approx(2 * 1.96 * 0.05, abs=0.03)
    # The generic per-resample path gives the same interval as the vectorised mean.
    assert estimate("accuracy", lambda idx: correct[idx].mean(), 100, resamples) == got
    assert mean_estimate("accuracy", correct, bootstrap_indices(100, 1000, seed=0)) == got  # fixed seed


def test_constant_metric_has_a_zero_width_interval():
    got = mean_estimate("accuracy", np.ones(37), bootstrap_indices(37, 500, seed=3))
    assert got == {"accuracy": 1.0, "accuracy_ci95": [1.0, 1.0]}
    assert percentile_interval(np.arange(101.0)) == [2.5, 97.5]
    assert percentile_interval(np.array([np.nan, np.nan])) is None


def test_rows_without_gold_are_left_out_of_each_resample():
    correct = np.array([1.0, 0.0, np.nan, np.nan])
    got = mean_estimate("accuracy", correct, bootstrap_indices(4, 200, seed=0))
    assert got["accuracy"] == 0.5
    assert got["accuracy_ci95"] == [0.0, 1.0]


def rows(gold, teacher_right):
    """Eval rows whose teacher is right where ``teacher_right`` says."""
    out = []
    for g, right in zip(gold, teacher_right):
        first = (g == "great") == right if g is not None else True
        out.append(
            {
                "label": g,
                "teacher_distribution": [0.8, 0.2] if first else [0.3, 0.7],
                "teacher_label_mass": 0.5,
                "teacher_method": "verbalizer_logits",
            }
        )
    return out


def train_rows(labels):
    return [{"label": x} for x in labels]


def test_majority_baseline_on_a_crafted_split():
    # Train's majority is "great"; the scored rows' is "other": the baseline is the scored split's.
    train = train_rows(["great"] * 5 + ["other"] * 3 + [None] * 4)
    gold = ["great", "other", "other", "great", "other", None]
    test = rows(gold, [True, True, False, False, False, True])
    student = np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])  # all right
    m = classification_metrics(LABELS, test, student, train, bootstrap_indices(6, 200, seed=0))
    base = m["majority_baseline"]
    assert base["label"] == "other" and base["train_share"] == 0.375  # 3 of train's 8 gold rows
    assert base["accuracy"] == 0.6  # "other" on 3 of the 5 gold rows
    assert base["macro_f1"] == pytest.approx(0.375, abs=1e-4)  # sklearn: f1_score([0,1,1,0,1],[1]*5)
    assert "majority_baseline_note" not in m
    assert m["teacher"]["accuracy"] == 0.4 and m["teacher"]["at_or_below_majority"] is True
    assert m["student"]["accuracy"] == 1.0 and m["student"]["at_or_below_majority"] is False
    [line] = baseline_warnings({"tasks": {"reviews": m}})
    assert line == (
        "reviews: the teacher's accuracy 0.400 is at or below the majority-class baseline 0.600 "
        "(always 'other')"
    )


def test_majority_label_ties_go_to_the_first_label():
    assert majority_label(LABELS, np.array([1, 0, 0, 1, -1, -1])) == "great"
    assert majority_label(LABELS, np.array([1, 0, 1, -1])) == "other"
    assert majority_label(LABELS, np.array([-1, -1])) is None


def test_majority_baseline_without_gold_in_train():
    """Production data: the teach train rows carry no gold; the scored rows' gold still gives one."""
    gold = ["other", "other", "great", "other"]
    test = rows(gold, [True] * 4)  # a teacher right on every row: above the baseline
    student = np.array([[0.2, 0.8]] * 4)  # always "other": exactly the baseline
    m = classification_metrics(LABELS, test, student, train_rows([None] * 6), bootstrap_indices(4, 300, 0))
    base = m["majority_baseline"]
    assert base["label"] == "other" and base["train_share"] is None
    assert base["accuracy"] == 0.75
    lo, hi = base["accuracy_ci95"]
    assert lo < 0.75 < hi  # resampled, not a constant
    assert base["accuracy_ci95"] == m["student"]["accuracy_ci95"]  # same predictions, same rows
    assert m["student"]["at_or_below_majority"] is True
    [line] = baseline_warnings({"tasks": {"reviews": m}})
    assert line.startswith("reviews: the student's accuracy 0.750 is at or below the majority-class baseline")


def test_no_gold_on_the_scored_split_says_there_is_no_baseline():
    test = rows([None] * 4, [True] * 4)
    student = np.array([[0.9, 0.1]] * 4)
    m = classification_metrics(LABELS, test, student, train_rows(["great"] * 3), bootstrap_indices(4, 200, 0))
    assert m["majority_baseline"] is None
    assert "no majority-class baseline" in m["majority_baseline_note"]
    assert baseline_warnings({"tasks": {"reviews": m}}) == []
    report = report_with({"reviews": m})
    assert f"reviews: {m['majority_baseline_note']}." in markdown(report)
    assert f"<p>reviews: {m['majority_baseline_note']}.</p>" in html(report)
    json.dumps(report, allow_nan=True)  # what report.json holds: the note, as text


def test_gates_take_a_max_and_a_min():
    report = report_with({"reviews": {"student": {"accuracy": 0.7, "ece": 0.15}}})
    gates = EvalConfig(
        gates={
            "reviews.student.accuracy": 0.6,  # old style: a bare minimum, on a higher-is-better figure
            "reviews.student.ece": {"max": 0.1},
        }
    ).gates
    assert gates == {"reviews.student.accuracy": Gate(min=0.6), "reviews.student.ece": Gate(max=0.1)}
    got = check_gates(report, gates)
    assert got["reviews.student.accuracy"] == {"value": 0.7, "min": 0.6, "max": None, "passed": True}
    assert got["reviews.student.ece"] == {"value": 0.15, "min": None, "max": 0.1, "passed": False}
    report["tasks"]["reviews"]["student"]["ece"] = 0.05  # below the max: passes
    assert check_gates(report, gates)["reviews.student.ece"]["passed"] is True
    both = {"reviews.student.accuracy": Gate(min=0.6, max=0.65)}  # 0.7 is above the max
    assert check_gates(report, both)["reviews.student.accuracy"]["passed"] is False
    report["tasks"]["reviews"]["student"]["accuracy"] = float("nan")  # not measured: fails
    assert check_gates(report, gates)["reviews.student.accuracy"]["passed"] is False
    shown = report_with({})  # the report's gates table: both bounds, blank where unset
    shown["gates"] = check_gates(report, gates)
    assert "| gate | value | min | max | passed |" in markdown(shown)
    assert "| reviews.student.ece | 0.050 |  | 0.1 | True |" in markdown(shown)
    assert "<td>reviews.student.ece</td><td>0.050</td><td></td><td>0.1</td><td>True</td>" in html(shown)


def test_a_bare_number_on_a_lower_is_better_figure_is_a_config_error(tmp_path):
    data = pipeline_dict(tmp_path, "encoder", "teacher")
    data["eval"]["gates"] = {"reviews.student.accuracy": 0.6, "reviews.student.ece": 0.1}
    with pytest.raises(ConfigError) as err:
        load_pipeline(write_pipeline(tmp_path, data))
    assert "eval.gates.reviews.student.ece" in str(err.value) and "{max: 0.1}" in str(err.value)
    for key in ("reviews.kl_teacher_student", "papers.degeneration.student.repeated_3gram_rate"):
        with pytest.raises(ConfigError, match=f"eval.gates.{key}: .*write"):
            EvalConfig(gates={key: 0.2})
    data["eval"]["gates"] = {"reviews.student.accuracy": 0.6, "reviews.student.ece": {"max": 0.1}}
    cfg = load_pipeline(write_pipeline(tmp_path, data))
    assert cfg.eval.gates["reviews.student.accuracy"] == Gate(min=0.6)
    with pytest.raises(ConfigError, match="eval.gates.reviews.rows: set min, max or both"):
        EvalConfig(gates={"reviews.rows": {}})


def test_student_and_teacher_intervals_are_paired():
    gold = ["great", "other"] * 10
    test = rows(gold, [i % 3 != 0 for i in range(20)])
    teacher = np.array([r["teacher_distribution"] for r in test])
    m = classification_metrics(LABELS, test, teacher.copy(), train_rows(gold), bootstrap_indices(20, 300, 1))
    # Same rows in every resample: a student equal to the teacher gets the teacher's intervals.
    assert m["student"]["accuracy_ci95"] == m["teacher"]["accuracy_ci95"]
    assert m["student"]["macro_f1_ci95"] == m["teacher"]["macro_f1_ci95"]
    assert m["agreement"] == 1.0 and m["agreement_ci95"] == [1.0, 1.0]
    assert m["kl_teacher_student"] == pytest.approx(0.0, abs=1e-9)
    # Paired gap: identical models differ by exactly 0 in every resample.
    assert m["student_minus_teacher_accuracy"] == 0.0
    assert m["student_minus_teacher_accuracy_ci95"] == [0.0, 0.0]


def test_accuracy_gap_is_paired_per_row():
    gold = ["great", "other"] * 10
    test = rows(gold, [True] * 20)  # a teacher right on every row
    teacher = np.array([r["teacher_distribution"] for r in test])
    student = teacher.copy()
    student[:5] = student[:5, ::-1]  # the student flips rows 0-4: wrong on 5 of 20
    m = classification_metrics(LABELS, test, student, train_rows(gold), bootstrap_indices(20, 500, 2))
    assert m["student_minus_teacher_accuracy"] == pytest.approx(-0.25)
    assert m["student"]["accuracy"] - m["teacher"]["accuracy"] == pytest.approx(-0.25)
    lo, hi = m["student_minus_teacher_accuracy_ci95"]
    assert lo < -0.25 < hi <= 0.0  # never positive: the student is never right where the teacher is not


def test_label_mass_summary():
    mass = [{"teacher_label_mass": x / 10} for x in range(1, 11)]
    got = label_mass_summary(mass, 0.35)
    assert got == {
        "min": 0.1,
        "p5": 0.145,  # linear interpolation at position 0.05·9 = 0.45
        "p50": 0.55,
        "mean": 0.55,
        "min_label_mass": 0.35,
        "below_min": 3,
    }
    assert label_mass_summary(mass, None)["below_min"] is None


def test_rouge_per_row_mean_is_the_rouge_module():
    import evaluate

    predictions = ["the cat sat on the mat", "a dog ran", "nothing alike here"]
    references = ["the cat lay on the mat", "the dog ran fast", "completely different words"]
    module = evaluate.load(str(REPO / "distill" / "eval" / "metrics" / "rouge")).compute(
        predictions=predictions, references=references
    )
    per_row = rouge_per_row(predictions, references)
    for key, value in module.items():
        assert float(np.mean(per_row[key])) == pytest.approx(value, abs=1e-12)
    assert np.isnan(rouge_per_row(["x"], [""])["rouge1"][0])  # no reference: no score


class FakeClock:
    """Time that passes only when the timed model runs: 2 ms per item, so every figure is exact."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[int] = []

    def __call__(self) -> float:
        return self.now

    def model(self, batch) -> None:
        self.calls.append(len(batch))
        self.now += 0.002 * len(batch)


def test_time_slice_stays_in_its_budget_and_counts_what_it_timed():
    clock = FakeClock()
    got = time_slice(clock.model, list(range(5)), batch=4, budget_s=0.4, clock=clock)
    assert clock.calls[:2] == [4, 4]  # warm-up: 16 ms, not timed
    batched = clock.calls[2 : 2 + got["batched_items"] // 4]
    assert batched == [4] * len(batched)
    # Batched calls run until half of what the warm-up left (0.192 s): 24 calls of 8 ms.
    assert got["batched_items"] == 24 * 4 and got["batched_s"] == pytest.approx(0.192)
    assert clock.calls[2 + len(batched) :] == [1] * got["latency_samples"]
    assert got["latency_samples"] == 96  # the other 0.192 s at 2 ms a call
    assert clock.now == pytest.approx(0.4)
    assert got["items_per_s"] == pytest.approx(500.0)
    assert got["latency_p50_ms"] == pytest.approx(2.0) and got["latency_p95_ms"] == pytest.approx(2.0)
    assert got["batch_size"] == 4 and got["warmup_batches"] == 2


def test_a_slow_model_warms_up_once_and_overruns_by_one_call_per_phase():
    """Warm-up counts against the budget: a batch longer than a quarter of it ends the warm-up."""
    clock = FakeClock()
    got = time_slice(clock.model, [0], batch=50, budget_s=0.3, clock=clock)  # one batch: 0.1 s
    assert got["warmup_batches"] == 1 and clock.calls[0] == 50
    assert got["batched_items"] == 50  # warm-up ends at 0.1 s; batches until half the rest: 0.2 s
    assert got["latency_samples"] == 50  # the last 0.1 s at 2 ms a call
    assert clock.now == pytest.approx(0.3)


def test_p95_needs_twenty_samples():
    clock = FakeClock()
    few = time_slice(clock.model, [0], batch=1, budget_s=0.05, clock=clock)  # 11 latency calls
    assert few["latency_samples"] == 11 and few["latency_p95_ms"] is None
    assert few["latency_p95_note"].startswith("11 single-item calls")
    clock = FakeClock()
    enough = time_slice(clock.model, [0], batch=1, budget_s=0.2, clock=clock)
    assert enough["latency_samples"] >= 20 and enough["latency_p95_ms"] == pytest.approx(2.0)
    assert "latency_p95_note" not in enough


def test_old_speed_keys_are_config_errors(tmp_path):
    data = pipeline_dict(tmp_path, "encoder", "teacher")
    data["eval"]["latency_items"] = 4
    with pytest.raises(ConfigError, match="eval.latency_items: unknown key"):
        load_pipeline(write_pipeline(tmp_path, data))
    with pytest.raises(ConfigError, match="eval.bootstrap_resamples"):
        EvalConfig(bootstrap_resamples=10)
    with pytest.raises(ConfigError, match="eval.speed_budget_s"):
        EvalConfig(speed_budget_s=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_device_is_a_clear_error():
    with pytest.raises(DistillError, match="eval.device: cuda, but no CUDA device is visible"):
        eval_device("cuda")


@pytest.fixture
def trained_folder(tmp_path, tiny_encoder, tiny_teacher):
    """A pipeline with teach train outputs on disk and a saved tiny student."""
    from distill.core.layout import output_path, outputs_sha256
    from distill.student.model import build_student, load_student, save_student
    from distill.tasks import tasks_for

    cfg = load_pipeline(write_pipeline(tmp_path, pipeline_dict(tmp_path, tiny_encoder, tiny_teacher)))
    for task in cfg.tasks:
        output_path(cfg, task.name, "train").parent.mkdir(parents=True, exist_ok=True)
        output_path(cfg, task.name, "train").write_text(json.dumps({"task": task.name}) + "\n")
    student, tokenizer = build_student(cfg.train.student, tasks_for(cfg))
    folder = cfg.path / "train" / "student"

    def save(training):
        spec = dataclasses.replace(student.spec, training=training)
        save_student(student.state_dict(), spec, tokenizer, folder)
        return load_student(folder)[0]

    return cfg, folder, save, outputs_sha256(cfg, "train")


def test_stale_student_is_refused(trained_folder, capsys):
    from distill.core.layout import output_path, outputs_sha256

    cfg, folder, save, trained_on = trained_folder
    student = save({"hard_labels": "gold", "teach_outputs_sha256": trained_on})
    fresh = student_provenance(cfg, student, folder)
    assert fresh["stale"] is False and fresh["training"]["hard_labels"] == "gold"
    assert len(fresh["weights_sha256"]) == 64
    output_path(cfg, "reviews", "train").write_text('{"changed": true}\n')  # teach ran again
    now = outputs_sha256(cfg, "train")
    with pytest.raises(DistillError) as err:
        student_provenance(cfg, student, folder)
    assert trained_on in str(err.value) and now in str(err.value) and str(folder) in str(err.value)
    allowed = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, allow_stale_student=True))
    stale = student_provenance(allowed, student, folder)
    assert stale["stale"] is True and stale["teach_outputs_sha256_now"] == now
    assert "eval: warning:" in capsys.readouterr().err


def test_student_without_provenance_is_a_warning(trained_folder, capsys):
    cfg, folder, save, _ = trained_folder
    got = student_provenance(cfg, save(None), folder)
    assert got["training"] is None and got["stale"] is False
    assert "records no training provenance" in capsys.readouterr().err


def report_with(tasks):
    """A report.json around ``tasks``, with no speed figures or gates."""
    return {
        "split": "test",
        "warnings": [],
        "student_training": {"hard_labels": "teacher", "stale": False},
        "bootstrap": {"resamples": 1000, "seed": 0, "interval": "95% percentile"},
        "tasks": tasks,
        "models": {
            "student": {"parameters": 1e6, "speed": {}},
            "teacher": {"speed": {}},
            "compression": None,
        },
        "gates": {},
    }


def test_markdown_shows_intervals_and_bold_warnings():
    report = report_with({})
    report["warnings"] = [
        "reviews: the teacher's accuracy 0.500 is at or below the majority-class baseline 0.500"
    ]
    gold = ["great", "other"] * 10
    test = rows(gold, [True] * 20)
    report["tasks"]["reviews"] = classification_metrics(
        LABELS, test, np.array([[0.9, 0.1]] * 20), train_rows(gold), bootstrap_indices(20, 200, 0)
    )
    text = markdown(report)
    assert "**Warning: reviews: the teacher's accuracy 0.500" in text
    assert "Student trained with hard labels: teacher." in text
    assert "| reviews | teacher | 1.000 [1.000, 1.000] |" in text
    acc = report["tasks"]["reviews"]["student"]
    assert f"| reviews | student | {acc['accuracy']:.3f} [{acc['accuracy_ci95'][0]:.3f}, " in text


# Helpers for test_pipeline.py::test_teach_train_eval_end_to_end.


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def own_student_probs(run_dir, rows):
    """The trained student's class probabilities (n, labels), computed here without eval's code."""
    import torch

    from distill.student.model import load_student

    student, tokenizer = load_student(run_dir / "train" / "student")
    enc = tokenizer(
        [r["text"] for r in rows],
        truncation=True,
        max_length=student.spec.max_length,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return student.classify("reviews", enc["input_ids"], enc["attention_mask"]).softmax(-1).numpy()


def assert_intervals(node, contain):
    """Every `X_ci95` is ordered; for the means named in ``contain`` it holds the point estimate."""
    for key, ci in node.items():
        if key.endswith("_ci95"):
            lo, hi = ci
            assert lo <= hi, key
            if key[: -len("_ci95")] in contain:
                assert lo - 1e-9 <= node[key[: -len("_ci95")]] <= hi + 1e-9, key
