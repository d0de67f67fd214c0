"""Best-step selection (distill/train/validation.py) on constructed per-step scores, and the
seeded sample of validation rows it scores."""

import pytest

from distill.core.data import sample_rows
from distill.tasks import task_config, task_for
from distill.train.validation import select_step, validation_rows
from tests.conftest import write_jsonl


def step(n: int, rows: dict[str, list[float | None]]) -> dict:
    """A validation record as Validation.run writes it."""
    scores = {t: sum(v for v in r if v is not None) / sum(v is not None for v in r) for t, r in rows.items()}
    return {"step": n, "scores": scores, "score": sum(scores.values()) / len(scores), "rows": rows}


def test_a_best_within_the_noise_keeps_the_last_step():
    # step 2 gets 2 more of 40 rows right than the last step: a 5-point gain an interval spans 0 for
    last = [1.0] * 28 + [0.0] * 12
    best = [1.0] * 30 + [0.0] * 10
    records = [step(2, {"t": best}), step(4, {"t": last})]
    selected = select_step(records, 1000, 0)
    assert selected["best_step"] == 2 and selected["step"] == 4
    assert selected["gain_over_last"] == pytest.approx(0.05)
    lo, hi = selected["gain_ci95"]
    assert lo <= 0.0 < hi and "within the noise" in selected["why"]
    assert selected["steps_scored"] == [2, 4] and selected["score"] == pytest.approx(0.7)
    assert selected["score_ci95"][0] < 0.7 < selected["score_ci95"][1]  # the last step's interval


def test_a_best_beyond_the_noise_is_chosen():
    # step 2 is right on 15 rows the last step gets wrong (and wrong on none it gets right)
    last = [1.0] * 20 + [0.0] * 20
    best = [1.0] * 35 + [0.0] * 5
    summaries = [0.3] * 10  # a second task that did not move: the mean over tasks still gains
    records = [
        step(2, {"t": best, "s": summaries}),
        step(4, {"t": last, "s": summaries}),
        step(6, {"t": last, "s": summaries}),
    ]
    selected = select_step(records, 1000, 0)
    assert selected["step"] == 2 and "beyond the noise" in selected["why"]
    assert selected["gain_over_last"] == pytest.approx(0.375 / 2)  # (35 − 20) / 40, halved over 2 tasks
    assert selected["gain_ci95"][0] > 0
    assert selected["scores"] == {"t": 0.875, "s": pytest.approx(0.3)}
    assert selected["rows"] == {"t": 40, "s": 10}


def test_the_best_is_the_step_the_checkpoint_holds_and_the_last_step_wins_ties():
    last = [1.0] * 20 + [0.0] * 20
    best = [1.0] * 35 + [0.0] * 5
    records = [step(2, {"t": best}), step(4, {"t": last})]
    # the best tag holds step 4 (a resumed run redid step 2): step 2's weights are gone
    assert select_step(records, 500, 0, best_step=4)["step"] == 4
    tie = select_step([step(2, {"t": last}), step(4, {"t": last})], 500, 0)
    assert tie["step"] == 4 and tie["best_step"] == 2 and tie["gain_over_last"] == 0.0
    alone = select_step([step(4, {"t": last})], 500, 0)
    assert alone["step"] == 4 and alone["why"] == "the last step scored best"


def test_rows_without_gold_are_skipped_pairwise():
    # None: no gold on that row; the paired difference uses the rows both steps scored
    last = [0.0] * 30 + [None] * 10
    best = [1.0] * 30 + [None] * 10
    selected = select_step([step(2, {"t": best}), step(4, {"t": last})], 500, 0)
    assert selected["step"] == 2 and selected["gain_over_last"] == 1.0


def test_validation_rows_are_a_seeded_sample_not_the_first_n(tmp_path):
    rows = [{"text": f"text {i}", "label": "a" if i % 2 else "b"} for i in range(60)]
    source = write_jsonl(tmp_path / "v.jsonl", rows)
    cfg = task_config(
        name="t", kind="classification", data={"train": source, "validation": source},
        labels={"a": "a", "b": "b"},
    )  # fmt: skip
    task = task_for(cfg)
    picked = validation_rows(task, 12, seed=0)
    texts = [r["text"] for r in picked]
    assert len(picked) == 12 and texts != [f"text {i}" for i in range(12)]
    assert picked == sample_rows(task.load_split("validation"), 12, 0)
    assert texts != [r["text"] for r in validation_rows(task, 12, seed=1)]  # the seed picks them
    assert [r["text"] for r in validation_rows(task, 12, seed=0)] == texts
