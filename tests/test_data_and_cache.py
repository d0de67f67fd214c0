import json
import sqlite3

import pytest

from distill.core.errors import DistillError
from distill.core.layout import cache_path, output_path
from distill.pipeline import load as load_pipeline
from distill.teach.cache import AnswerCache, answer_key
from distill.teach.run import run as teach
from distill.teach.teachers import load_teacher
from tests.conftest import write_jsonl


def test_cache_round_trip_in_a_real_sqlite_file(tmp_path):
    cache = AnswerCache(tmp_path / "c.sqlite")
    k1, k2 = answer_key(a=1), answer_key(a=2)
    cache.put_many({k1: {"distribution": [0.25, 0.75]}})
    assert cache.get_many([k1, k2]) == {k1: {"distribution": [0.25, 0.75]}}
    cache.close()
    rows = sqlite3.connect(tmp_path / "c.sqlite").execute("SELECT COUNT(*) FROM answers").fetchone()
    assert rows == (1,)
    assert answer_key(a=1, b=[1, 2]) == answer_key(b=[1, 2], a=1) != answer_key(a=1, b=[2, 1])


def test_corrupt_cache_file_is_named(tmp_path):
    path = tmp_path / "broken.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DistillError, match="broken.sqlite.*unreadable"):
        AnswerCache(path)


def test_unknown_label_and_missing_file_are_named(pipeline, tmp_path):
    cfg = load_pipeline(pipeline)
    bad = output_path(cfg, "x", "y").parent.parent.parent / "bad.jsonl"
    write_jsonl(bad, [{"review": "fine", "score": "great"}, {"review": "meh", "score": "terrible"}])
    with pytest.raises(DistillError, match=r"bad.jsonl: row 1 has unknown label 'terrible'"):
        teach(load_pipeline(pipeline, [f"tasks.reviews.data.train={bad}"]))
    with pytest.raises(DistillError, match=r"train data file .*nowhere.jsonl not found"):
        teach(load_pipeline(pipeline, ["tasks.reviews.data.train=nowhere.jsonl"]))
    write_jsonl(bad, [{"review": "   ", "score": "great"}])
    with pytest.raises(DistillError, match=r"row 0 field 'review' is empty"):
        teach(load_pipeline(pipeline, [f"tasks.reviews.data.train={bad}"]))
    # a row without the field among rows with it: missing, with the fields it has (datasets
    # filled it with None, reported as "empty")
    write_jsonl(bad, [{"review": "fine", "score": "great"}, {"text": "meh", "score": "bad"}])
    with pytest.raises(DistillError, match=r"row 1 has no field 'review' \(fields: text, score\)"):
        teach(load_pipeline(pipeline, [f"tasks.reviews.data.train={bad}"]))


def test_a_malformed_jsonl_line_is_named_by_file_and_line(pipeline, tmp_path):
    cfg = load_pipeline(pipeline)
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"review": "fine", "score": "great"}\n\n{"review": "meh", "score": \n')
    with pytest.raises(DistillError, match=r"task reviews: .*broken.jsonl line 3 is not JSON"):
        teach(load_pipeline(pipeline, [f"tasks.reviews.data.train={bad}"]))
    bad.write_text('{"review": "fine", "score": "great"}\n["not", "a row"]\n')
    with pytest.raises(DistillError, match=r"broken.jsonl line 2 is a JSON list, not an object"):
        teach(load_pipeline(pipeline, [f"tasks.reviews.data.train={bad}"]))
    assert not (cfg.path / "teach" / "manifest.json").exists()  # refused before the teacher ran


class CrashingTeacher:
    """The real local teacher, made to die after a number of answers (like a killed run)."""

    def __init__(self, inner, answers_before_crash):
        self.inner = inner
        self.left = answers_before_crash
        self.id = inner.id
        self.asked = 0

    def _count(self, answers):
        for item in answers:
            if self.left == 0:
                raise KeyboardInterrupt("simulated kill")
            self.left -= 1
            self.asked += 1
            yield item

    def label_distribution(self, prompts, verbalizers):
        return self._count(self.inner.label_distribution(prompts, verbalizers))

    def summarize(self, prompts):
        return self._count(self.inner.summarize(prompts))

    def decoding_params(self):
        return self.inner.decoding_params()

    def num_parameters(self):
        return self.inner.num_parameters()

    def usage(self):
        return {}


def test_interrupted_teach_resumes_without_asking_twice(pipeline):
    cfg = load_pipeline(pipeline)
    real = load_teacher(cfg.teach.teacher)
    first = CrashingTeacher(real, answers_before_crash=12)
    with pytest.raises(KeyboardInterrupt):
        teach(cfg, teacher=first)
    assert first.asked == 12  # twelve answers were committed, one by one, before the crash
    assert not output_path(cfg, "reviews", "train").exists()

    second = CrashingTeacher(real, answers_before_crash=10**6)
    summary = teach(cfg, teacher=second)
    total = sum(c["rows"] for c in summary["counts"].values())
    assert summary["cache"]["hits"] == 12
    assert second.asked == summary["cache"]["teacher_calls"] == total - 12

    third = CrashingTeacher(real, answers_before_crash=0)  # any call would raise
    again = teach(cfg, teacher=third)
    assert again["cache"]["hits"] == total and again["cache"]["teacher_calls"] == 0
    rows = [json.loads(x) for x in output_path(cfg, "reviews", "train").read_text().splitlines()]
    assert len(rows) == 32
    assert all(abs(sum(r["teacher_distribution"]) - 1) < 1e-5 for r in rows)
    assert {r["teacher_label"] for r in rows} <= {"great", "other"}
    manifest = json.loads((cfg.path / "teach" / "manifest.json").read_text())
    assert manifest["cache"]["path"] == str(cache_path(cfg))
    assert manifest["inputs"]["reviews/train"]["sha256"]


def test_changed_prompt_misses_the_cache(pipeline):
    cfg = load_pipeline(pipeline)
    real = load_teacher(cfg.teach.teacher)
    teach(cfg, teacher=real)
    changed = load_pipeline(pipeline, ["tasks.reviews.instruction=Pick one of {choices}."])
    summary = teach(changed, teacher=real)
    assert summary["cache"]["teacher_calls"] == 32 + 10  # reviews train + test re-asked, papers cached


def test_teacher_distribution_is_batch_invariant(pipeline):
    """Left padding must not change a row's answer: batched == one at a time."""
    from distill.teach.prompts import classification_prompt

    cfg = load_pipeline(pipeline)
    teacher = load_teacher(cfg.teach.teacher)
    task = cfg.tasks[0]
    prompts = [classification_prompt(task, {"text": t}) for t in ["short", "a much longer text " * 5]]
    batched = dict(teacher.label_distribution(prompts, ["great", "other"]))
    assert sorted(batched) == [0, 1]
    for i, prompt in enumerate(prompts):
        together = batched[i]
        [(_, alone)] = teacher.label_distribution([prompt], ["great", "other"])
        assert alone["distribution"] == pytest.approx(together["distribution"], abs=1e-4)


def test_a_corrupt_stage_output_is_named_with_its_line(tmp_path):
    from distill.core.data import read_jsonl

    out = tmp_path / "train.jsonl"
    out.write_text('{"id": "a"}\n{"id": \n')
    with pytest.raises(
        DistillError, match=r"train\.jsonl line 2 is not JSON .*; rerun the stage that writes it"
    ):
        read_jsonl(out)
    out.write_text('{"id": "a"}\n')
    assert read_jsonl(out) == [{"id": "a"}]
