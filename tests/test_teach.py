"""What teach may and may not learn from: calibration and demonstrations kept off the scored
rows, the content-free prior measured on the real prompt, and off-label answers never stored
as confident labels."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from distill.core.data import read_jsonl
from distill.core.errors import ConfigError
from distill.core.layout import output_path
from distill.pipeline import load as load_pipeline
from distill.teach.run import failed_items
from distill.teach.run import run as teach
from tests.conftest import REPO, api_pipeline, make_data
from tests.loopback_openai import EXPECTED, judge


def rows_of(cfg, task, split):
    return [json.loads(x) for x in output_path(cfg, task, split).read_text().splitlines()]


def with_validation(tmp_path, path):
    """The api pipeline plus a validation split of fresh rows (not a copy of test)."""
    data = yaml.safe_load(path.read_text())
    data["tasks"][0]["data"]["validation"] = make_data(tmp_path / "dev", seed=1)["reviews"]["test"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["teach.calibration.temperature=true", "teach.calibration.split=test"],
            r"teach\.calibration\.split: 'test' is also eval\.split",
        ),
        (
            ["teach.few_shot=2", "teach.few_shot_split=test"],
            r"teach\.few_shot_split: 'test' is also eval\.split",
        ),
    ],
)
def test_nothing_is_fitted_on_or_shown_from_the_eval_split(
    tmp_path, tiny_encoder, server, overrides, message
):
    path = with_validation(tmp_path, api_pipeline(tmp_path, tiny_encoder, server.url))
    with pytest.raises(ConfigError, match=message):
        load_pipeline(path, overrides)


def test_the_eval_file_under_another_split_name_is_refused_too(tmp_path, tiny_encoder, server):
    path = api_pipeline(tmp_path, tiny_encoder, server.url)
    test_file = load_pipeline(path).tasks[0].data["test"]
    with pytest.raises(
        ConfigError, match=r"teach\.calibration\.split: task reviews reads validation from .*same file"
    ):
        load_pipeline(
            path, [f"tasks.reviews.data.validation={test_file}", "teach.calibration.temperature=true"]
        )
    with pytest.raises(ConfigError, match=r"teach\.few_shot_split: task reviews reads validation from"):
        load_pipeline(path, [f"tasks.reviews.data.validation={test_file}", "teach.few_shot=2"])


def test_content_free_prior_is_measured_on_the_prompt_real_rows_get(tmp_path, tiny_encoder, server):
    path = with_validation(tmp_path, api_pipeline(tmp_path, tiny_encoder, server.url))
    cfg = load_pipeline(path, ["teach.few_shot=2", "teach.calibration.prior=content_free"])
    summary = teach(cfg)
    shots = summary["teacher"]["few_shot"]["ids"]["reviews"]
    assert len(shots) == 2 and summary["teacher"]["few_shot"]["split"] == "validation"
    dev = {r["id"]: r for r in read_jsonl(Path(cfg.tasks[0].data["validation"]))}
    real = [e["prompt"] for e in server.log if "item000" in e["prompt"]]
    blank = [e["prompt"] for e in server.log if "Text: N/A" in e["prompt"]]
    assert real and len(blank) == 1
    for shot_id in shots:  # the demonstrations are in the content-free prompt, as in every real one
        assert dev[shot_id]["review"] in blank[0] and dev[shot_id]["review"] in real[0]
    # Same prompt up to the input: only the body differs.
    assert blank[0].split("Text: N/A")[0] == real[0].split("Text: item000")[0]


def test_demonstrations_leave_the_split_they_come_from(tmp_path, tiny_encoder, server):
    path = api_pipeline(tmp_path, tiny_encoder, server.url)
    cfg = load_pipeline(path, ["teach.few_shot=3", "teach.few_shot_split=train"])
    summary = teach(cfg)
    shown = set(summary["teacher"]["few_shot"]["ids"]["reviews"])
    train_ids = {r["id"] for r in rows_of(cfg, "reviews", "train")}
    assert len(shown) == 3 and not shown & train_ids
    assert len(train_ids) == 32 - 3
    assert summary["counts"]["reviews/train"]["rows"] == 29
    # The manifest says where, when and from what: host, commit, times, the data's own hash.
    manifest = json.loads((cfg.path / "teach" / "manifest.json").read_text())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert manifest["git_commit"].split("+")[0] == head.stdout.strip()
    assert manifest["host"] == socket.gethostname()
    assert manifest["started_at"] <= manifest["finished_at"]
    data = Path(cfg.tasks[0].data["train"]).read_bytes()
    assert manifest["inputs"]["reviews/train"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_an_answer_that_is_mostly_not_a_label_goes_to_the_fallback(tmp_path, tiny_encoder, server):
    """'banana' 0.9, 'apple' 0.07, the label 0.03: renormalised that would be a one-hot label."""
    server.faults["item003"] = ["sliver"]  # first answer off-label; sampling then answers normally
    server.faults["item005"] = ["always:offlabel"]  # off-label, and sampling never gives a label
    cfg = load_pipeline(api_pipeline(tmp_path, tiny_encoder, server.url))
    summary = teach(cfg)
    assert not summary["complete"]
    [failed] = failed_items(cfg)
    assert failed["id"] == "train-5"
    assert "label mass 0.030 < min_label_mass 0.05" in failed["reason"]
    assert "then none of 10 sampled answers is a label" in failed["reason"]

    server.faults["item005"] = []  # the rerun asks only for the failed item, which now answers
    before = len(server.log)
    assert teach(cfg)["complete"]
    assert [e["prompt"].count("item005") for e in server.log[before:]] == [1]
    rows = {r["id"]: r for r in rows_of(cfg, "reviews", "train")}
    # item003 was answered through 10 samples (7 right) in the first run and cached then.
    sampled = rows["train-3"]
    assert sampled["teacher_method"] == "samples:10"
    right = judge("Text: " + sampled["text"])
    assert sampled["teacher_distribution"][["great", "other"].index(right)] == pytest.approx(0.7)
    assert rows["train-4"]["teacher_distribution"] == pytest.approx(
        EXPECTED[judge("Text: " + rows["train-4"]["text"])]
    )


def test_off_label_answer_fails_with_its_reason_when_there_is_no_fallback(tmp_path, tiny_encoder, server):
    server.faults["item007"] = ["sliver"]
    cfg = load_pipeline(api_pipeline(tmp_path, tiny_encoder, server.url, no_logprobs="fail"))
    teach(cfg)
    [failed] = failed_items(cfg)
    assert failed["id"] == "train-7"
    assert failed["reason"] == "label mass 0.030 < min_label_mass 0.05 (teacher.no_logprobs: fail)"


def test_local_teacher_answers_below_min_label_mass_fail(pipeline):
    """The tiny random teacher puts ~0 mass on the labels: with a floor, every item fails, named."""
    cfg = load_pipeline(pipeline, ["teach.teacher.min_label_mass=0.5"])
    summary = teach(cfg)
    failed = failed_items(cfg)
    assert not summary["complete"] and len(failed) == 32 + 10
    assert all(f["reason"].startswith("label mass 0.0") for f in failed)
    # the 42 refused answers were still asked for and paid: counted as calls, not as stored
    cache = summary["cache"]
    assert cache["teacher_calls"] == cache["stored"] + 42 and cache["stored"] > 0
    assert not output_path(cfg, "reviews", "train").exists()
    assert output_path(cfg, "papers", "train").exists()  # summaries are not label answers
