"""The teacher's rationales as a second task (tasks.NAME.rationale): the prompt, the cached
answers and their cost in the teach manifest, and the student's decoder learning them beside
the label head."""

from __future__ import annotations

import json

from distill.core.data import read_jsonl
from distill.pipeline import load as load_pipeline
from distill.tasks import task_config, train_tasks
from distill.teach.prompts import rationale_prompt, rationale_version, template_version
from tests.conftest import pipeline_dict, write_pipeline
from tests.test_pipeline import distill


def test_rationale_prompt_and_version_by_hand():
    labels = {"positive": "good", "negative": "bad"}
    cfg = task_config(name="rt", kind="classification", labels=labels, instruction="Is it {choices}?")
    prompt = rationale_prompt(cfg, "Text: a fine film", "good")
    assert prompt.user == (
        "Is it good, bad?\n\nText: a fine film\n\nAnswer: good\n\n"
        "In one or two sentences, explain why the answer is good. Reply with the explanation only."
    )
    assert prompt.body == "Text: a fine film"  # the one part a backend may shorten
    # Its own cache version: never the label prompt's, and it follows the task's instruction.
    other = task_config(name="rt", kind="classification", labels=labels, instruction="Which: {choices}?")
    assert rationale_version(cfg) != template_version(cfg, labels)
    assert rationale_version(cfg) != rationale_version(other)


def test_rationales_are_taught_once_and_learned_by_the_decoder_beside_the_head(
    tmp_path, tiny_encoder, tiny_teacher
):
    data = pipeline_dict(tmp_path, tiny_encoder, tiny_teacher, steps=3)
    data["tasks"] = [t for t in data["tasks"] if t["name"] == "reviews"]  # no summarization task
    data["tasks"][0]["rationale"] = True
    pipeline = write_pipeline(tmp_path, data)
    cfg = load_pipeline(pipeline)
    assert [t.name for t in train_tasks(cfg)] == ["reviews", "reviews_rationale"]
    distill("teach", pipeline)
    rows = read_jsonl(tmp_path / "run/teach/reviews/train.jsonl")
    written = [r for r in rows if r["teacher_rationale"]]
    assert written and all(isinstance(r["teacher_rationale"], str) for r in written)
    assert "teacher_rationale" not in read_jsonl(tmp_path / "run/teach/reviews/test.jsonl")[0]
    manifest = json.loads((tmp_path / "run/teach/manifest.json").read_text())
    cost = manifest["counts"]["reviews/train"]["rationales"]
    assert cost["rows"] == len(rows) and cost["written"] == len(written)
    assert cost["teacher_calls"] == len(rows) and cost["cache_hits"] == 0
    assert cost["words"] == sum(len(r["teacher_rationale"].split()) for r in written)
    # A rerun pays nothing: every rationale comes from the cache, the same text.
    distill("teach", pipeline)
    again = json.loads((tmp_path / "run/teach/manifest.json").read_text())["counts"]["reviews/train"]
    assert again["rationales"]["teacher_calls"] == 0 and again["rationales"]["cache_hits"] == len(rows)
    assert read_jsonl(tmp_path / "run/teach/reviews/train.jsonl") == rows

    # The student has a decoder only because of the rationales, and learns both tasks.
    distill("train", pipeline)
    log = [json.loads(line) for line in (tmp_path / "run/train/log.jsonl").read_text().splitlines()]
    assert all({"reviews", "reviews_rationale"} <= set(r["tasks"]) for r in log)
    train_manifest = json.loads((tmp_path / "run/train/manifest.json").read_text())
    assert train_manifest["rows"] == {"reviews": len(rows), "reviews_rationale": len(written)}
    spec = json.loads((tmp_path / "run/train/student/student.json").read_text())
    assert spec["tasks"]["reviews_rationale"]["prefix"] == "reviews rationale: "
    assert spec["tasks"]["reviews"]["labels"] == ["great", "other"]
    # train.rationales: false: the label head alone, from the same teach output.
    distill("train", pipeline, "--set", "train.rationales=false")
    log = [json.loads(line) for line in (tmp_path / "run/train/log.jsonl").read_text().splitlines()]
    assert {t for r in log for t in r["tasks"]} == {"reviews"}
    distill("eval", pipeline)  # the report scores the label task; the rationale task is train-only
