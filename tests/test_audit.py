"""Teacher labels checked before they are learned: the least-sure rows a person should look at,
and the teacher's per-class precision and recall on the validation gold."""

from __future__ import annotations

import shutil

import pytest
import yaml

from distill.core.data import read_jsonl
from distill.pipeline import load as load_pipeline
from distill.teach.audit import least_sure
from distill.teach.run import run as teach


def row(dist, label_mass=0.9, **extra):
    return {
        "id": extra.pop("id", "x"),
        "teacher_distribution": dist,
        "teacher_label_mass": label_mass,
        **extra,
    }


def test_least_sure_orders_by_top_probability_and_skips_pseudo_labels():
    rows = {
        "train": [
            row([0.9, 0.1], id="a"),
            row([0.55, 0.45], id="b"),
            row([0.3, 0.3, 0.4], id="p", teacher_method="pseudo_label"),
        ],
        "test": [row([0.6, 0.4], id="c"), row([0.55, 0.45], id="d")],
    }
    got = least_sure(rows, 3)
    assert [(r["split"], r["id"]) for r in got] == [("train", "b"), ("test", "d"), ("test", "c")]
    assert got[0]["teacher_confidence"] == 0.55 and got[0]["teacher_margin"] == pytest.approx(0.1)
    assert least_sure(rows, 0) == []


def test_teach_writes_the_audit_and_the_teachers_per_class_scores(tmp_path, pipeline):
    data = yaml.safe_load(pipeline.read_text())
    for task in data["tasks"]:
        validation = tmp_path / f"{task['name']}-validation.jsonl"
        shutil.copy(task["data"]["train"], validation)
        task["data"]["validation"] = str(validation)
    data["teach"]["splits"] = ["train", "validation", "test"]
    data["teach"]["audit_rows"] = 5
    pipeline.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_pipeline(pipeline)
    summary = teach(cfg)
    out = cfg.path / "teach" / "reviews"
    written = {s: read_jsonl(out / f"{s}.jsonl") for s in ("train", "validation", "test")}
    confidences = sorted(max(r["teacher_distribution"]) for rows in written.values() for r in rows)
    audit = read_jsonl(out / "audit.jsonl")
    assert [r["teacher_confidence"] for r in audit] == pytest.approx(confidences[:5], abs=1e-6)
    assert all(r["split"] in written for r in audit)
    assert not (cfg.path / "teach" / "papers" / "audit.jsonl").exists()  # summaries: no class distribution
    validation = summary["audit"]["reviews"]["validation"]
    val = written["validation"]
    for name in ("great", "other"):
        said = [r for r in val if r["teacher_label"] == name]
        truly = [r for r in val if r["label"] == name]
        hits = sum(r["label"] == name for r in said)
        c = validation["classes"][name]
        assert c["support"] == len(truly)
        assert c["recall"] == pytest.approx(hits / len(truly), abs=1e-4)
        assert c["precision"] == (pytest.approx(hits / len(said), abs=1e-4) if said else None)
    majority = max(sum(r["label"] == n for r in val) for n in ("great", "other")) / len(val)
    assert validation["majority_rate"] == pytest.approx(majority, abs=1e-4)
    assert validation["below_majority_rate"] == [
        n
        for n, c in validation["classes"].items()
        if c["recall"] is not None and c["recall"] < validation["majority_rate"]
    ]
