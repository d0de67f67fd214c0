"""`distill ablate` by train size and in parallel: nested seeded subsets, the step budget per
size, the parallel table equal to the serial one, what each system's weighting and auxiliary
losses did."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from distill.core.data import sample_rows
from distill.core.errors import ConfigError
from distill.pipeline import load as load_pipeline
from tests.conftest import pipeline_dict, write_pipeline
from tests.test_pipeline import distill


def _ids(rows):
    return {r["id"] for r in rows}


def test_train_subsets_are_seeded_bottom_k_nested_and_stable_under_appends():
    rows = [{"id": f"r{i}", "text": f"row {i}", "teacher_label": "a"} for i in range(400)]
    small, large = sample_rows(rows, 50, 3, "id"), sample_rows(rows, 200, 3, "id")
    # By hand: the 50 ids whose sha256(seed, id) is smallest, kept in file order.
    digest = {r["id"]: hashlib.sha256(f"3\n{json.dumps(r['id'])}".encode()).hexdigest() for r in rows}
    assert _ids(small) == set(sorted(digest, key=digest.get)[:50])
    assert [r["id"] for r in small] == [r["id"] for r in rows if r["id"] in _ids(small)]
    assert len(large) == 200 and _ids(small) < _ids(large)  # nested
    assert _ids(sample_rows(rows, 50, 4, "id")) != _ids(small)  # the seed draws the subset
    # A row keeps its place when the teacher's answer changes (the key is its id).
    relabeled = [{**r, "teacher_label": "b"} for r in rows]
    assert _ids(sample_rows(relabeled, 50, 3, "id")) == _ids(small)
    # 100 rows appended: an old row leaves the 50 only for a new row that enters, and the
    # subsets stay nested.
    new = [{"id": f"n{i}", "text": f"new {i}", "teacher_label": "a"} for i in range(100)]
    grown = rows + new
    after = _ids(sample_rows(grown, 50, 3, "id"))
    entered, left = after - _ids(small), _ids(small) - after
    assert entered <= _ids(new) and len(left) == len(entered) < 25
    assert after < _ids(sample_rows(grown, 200, 3, "id"))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"ablate": {"train_rows": [200, 50]}}, "ablate.train_rows: positive sizes in increasing order"),
        ({"ablate": {"train_rows": [0, 50]}}, "ablate.train_rows: positive sizes"),
        ({"ablate": {"epochs": 3}}, "ablate.epochs: must be > 0, and needs ablate.train_rows"),
        ({"train": {"train_rows": 0}}, "train.train_rows: must be >= 1"),
    ],
)
def test_train_size_settings_are_checked(tmp_path, section, message):
    data = pipeline_dict(tmp_path, "encoder", "teacher", steps=4)
    for key, value in section.items():
        data.setdefault(key, {}).update(value)
    with pytest.raises(ConfigError, match=message):
        load_pipeline(write_pipeline(tmp_path, data))


def _without_time(table):
    """The table minus what a run's clock and process layout change."""
    drop = {"train_s", "wall_s", "single_task_train_s", "run"}
    if isinstance(table, dict):
        return {k: _without_time(v) for k, v in table.items() if k not in drop}
    if isinstance(table, list):
        return [_without_time(v) for v in table]
    return round(table, 6) if isinstance(table, float) else table


@pytest.mark.slow
def test_ablation_by_size_in_parallel_equals_the_serial_one(tmp_path, tiny_encoder, tiny_teacher):
    data = pipeline_dict(tmp_path, tiny_encoder, tiny_teacher)
    data["ablate"] = {
        "seeds": [0],
        "baselines": False,
        "train_rows": [8, 24],
        "epochs": 2,
        "variants": {
            "uncertainty": ["train.weighting.method=uncertainty"],
            "adversarial": ["train.student.sharing=adversarial"],
        },
    }
    serial_dir, parallel_dir = tmp_path / "serial", tmp_path / "parallel"
    data["run_dir"] = str(serial_dir)
    distill("ablate", write_pipeline(tmp_path, data))
    serial = json.loads((serial_dir / "ablation/ablation.json").read_text())
    data["run_dir"] = str(parallel_dir)  # the same teach cache: the teacher answers alike
    pipeline = write_pipeline(tmp_path, data)
    distill("ablate", pipeline, "--jobs", "2")
    parallel = json.loads((parallel_dir / "ablation/ablation.json").read_text())

    assert parallel["run"] == {**parallel["run"], "jobs": 2, "trained": 10, "read_back": 0}
    assert _without_time(parallel) == _without_time(serial)
    for size, train_rows in (("8", 8), ("24", 24)):
        table = parallel["sizes"][size]
        # Each size's budget: ceil(epochs · N / batch_size), for every system alike.
        assert table["steps"] == math.ceil(2 * train_rows / 8)
        assert {s["steps"] for s in table["systems"].values()} == {table["steps"]}
        # N rows of each task, or all of a task's rows where it has fewer (papers: 12).
        assert table["systems"]["mtl"]["rows"] == {"reviews": train_rows, "papers": min(train_rows, 12)}
        assert table["systems"]["single/reviews"]["rows"] == {"reviews": train_rows}
        # A static run stays at weight 1; uncertainty's weights moved (and the table says so).
        assert set(map(tuple, table["systems"]["mtl"]["weights"].values())) == {(1.0, 1.0)}
        moved = table["systems"]["uncertainty"]["weights"]
        assert all(lo < hi for lo, hi in moved.values())
        # The auxiliary losses' scale next to the task losses, for the system that has them.
        assert set(table["systems"]["adversarial"]["losses"]) == {"task", "adversarial", "orthogonality"}
        assert set(table["systems"]["mtl"]["losses"]) == {"task"}
        assert set(table["versus_single"]) == {"mtl", "uncertainty", "adversarial"}
        assert table["versus_single"]["mtl"] == table["verdicts"]
    # Per-row scores of every student are the same whichever process trained it.
    for stored in serial_dir.glob("ablation/rows*/*/seed0/scores.json"):
        twin = parallel_dir / stored.relative_to(serial_dir)
        pair = [json.loads(path.read_text()) for path in (stored, twin)]
        assert _without_time(pair[0]) == _without_time(pair[1])  # scores, losses, weights, rows
    text = (parallel_dir / "ablation/ablation.md").read_text()
    assert "## 8 rows per task (2 steps; rows used: reviews 8, papers 8)" in text
    assert "## System − single-task, by train size" in text
    v = parallel["sizes"]["8"]["versus_single"]["uncertainty"]["reviews"]
    assert f"| uncertainty | reviews | {v['mtl_minus_single']:+.3f} [{v['ci95'][0]:+.3f}, " in text
    # A rerun reads every student back.
    distill("ablate", pipeline, "--jobs", "2")
    again = json.loads((parallel_dir / "ablation/ablation.json").read_text())
    assert again["run"]["trained"] == 0 and again["run"]["read_back"] == 10
