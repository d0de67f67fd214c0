"""Active teaching (teach.select): the uncertainty scores against hand-computed values, a
selection that is the same under a seed and after a resume, a budget that holds with a failing
API, and the rounds recorded where a user reads them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from distill.core.data import read_jsonl
from distill.core.errors import ConfigError
from distill.core.layout import output_path
from distill.pipeline import load as load_pipeline
from distill.teach.active import state_path
from distill.teach.run import run as teach
from distill.teach.select import (
    Round,
    committee_scores,
    entropy_scores,
    margin_scores,
    select,
    top_rows,
)
from tests.conftest import api_pipeline

P = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [1.0, 0.0, 0.0]])


def test_margin_is_one_minus_the_top_two_gap():
    assert margin_scores(P).tolist() == pytest.approx([1 - 0.5, 1 - 0.05, 0.0])


def test_entropy_in_nats():
    expected = [-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))]
    expected.append(-(0.4 * math.log(0.4) + 0.35 * math.log(0.35) + 0.25 * math.log(0.25)))
    expected.append(0.0)
    assert entropy_scores(P).tolist() == pytest.approx(expected)


def test_committee_is_the_mean_kl_to_the_members_mean():
    members = np.array([[[0.9, 0.1], [0.5, 0.5]], [[0.1, 0.9], [0.5, 0.5]]])
    # row 0: the mean is (0.5, 0.5); each member's KL to it is 0.9 ln 1.8 + 0.1 ln 0.2
    kl = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert committee_scores(members).tolist() == pytest.approx([kl, 0.0])


def test_top_rows_takes_the_highest_and_breaks_ties_by_row():
    candidates = np.array([4, 1, 7, 3])
    assert top_rows(np.array([0.5, 0.9, 0.5, 0.1]), candidates, 3).tolist() == [1, 4, 7]
    assert top_rows(np.array([0.2, 0.2, 0.2, 0.2]), candidates, 2).tolist() == [1, 3]


def pool(n=120, seed=0):
    """Two Gaussian classes in 8-d, the teacher's distribution a logistic of the first axis."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    p = 1 / (1 + np.exp(-3 * x[:, 0]))
    return x, np.stack([p, 1 - p], axis=1)


def asker(targets, log, fail=()):
    def ask(rows):
        log.append(list(rows))
        got = {i: targets[i] for i in rows if i not in fail}
        return got, len(rows) - len(got), None

    return ask


@pytest.mark.parametrize("strategy", ["random", "margin", "entropy", "committee"])
def test_selection_is_deterministic_and_keeps_the_budget(strategy):
    x, targets = pool()
    runs = []
    for _ in range(2):
        log: list[list[int]] = []
        sel = select(x, asker(targets, log), strategy, seed_rows=10, per_round=7, budget=40, seed=3)
        runs.append(sel.asked)
        assert sum(map(len, log)) == 40  # the last round shrinks to fit: 10 + 7·4 + 2
        assert [len(r) for r in log] == [10, 7, 7, 7, 7, 2]
        assert len(set(sel.asked)) == 40 and sel.stopped == "budget"
    assert runs[0] == runs[1]
    other = select(x, asker(targets, []), strategy, seed_rows=10, per_round=7, budget=40, seed=4)
    assert other.asked != runs[0]  # the seed matters


def test_margin_asks_about_the_rows_near_the_boundary():
    x, targets = pool(400)
    sel = select(x, asker(targets, []), "margin", seed_rows=20, per_round=20, budget=100)
    later = [i for r in sel.rounds[1:] for i in r.rows]
    # the teacher is least sure where |x0| is small; margin picks those far more than chance
    assert np.median(np.abs(x[later, 0])) < 0.5 * np.median(np.abs(x[:, 0]))


def test_a_resume_mid_selection_chooses_the_same_rows():
    x, targets = pool()
    whole = select(x, asker(targets, []), "committee", 10, 7, 40, seed=1)

    saved: list[Round] = []

    class Killed(Exception):
        pass

    def dies_in_round_3(rows):
        if len(saved) == 3:
            raise Killed
        return {i: targets[i] for i in rows}, 0, None

    with pytest.raises(Killed):
        select(x, dies_in_round_3, "committee", 10, 7, 40, seed=1, on_round=lambda r, s: saved.append(r))
    log: list[list[int]] = []
    resumed = select(x, asker(targets, log), "committee", 10, 7, 40, seed=1, done=saved)
    assert resumed.asked == whole.asked
    assert log[:3] == [r.rows for r in saved]


def test_a_saved_state_from_other_rows_is_refused():
    x, targets = pool()
    with pytest.raises(ValueError, match="round 0: the saved state chose other rows"):
        select(x, asker(targets, []), "margin", 10, 7, 40, done=[Round(0, [0, 1, 2])])


def test_a_failed_row_ends_the_rounds_and_is_not_learned():
    x, targets = pool()
    first = select(x, asker(targets, []), "margin", 10, 7, 40, seed=0)
    victim = first.rounds[1].rows[0]
    sel = select(x, asker(targets, [], fail={victim}), "margin", 10, 7, 40, seed=0)
    assert sel.stopped == "failures" and len(sel.rounds) == 2
    assert victim not in sel.targets and sel.rounds[1].failed == 1


def test_max_cost_stops_before_the_estimate_passes_it():
    x, targets = pool()

    def ask(rows):
        return {i: targets[i] for i in rows}, 0, 0.01 * len(rows)  # one cent a row

    sel = select(x, ask, "entropy", 10, 7, None, max_cost=0.255)
    assert len(sel.asked) == 25 and sel.stopped == "max_cost"  # 10 + 7 + 7 + 1 rows: $0.25


def test_select_config_is_checked(tmp_path, tiny_encoder, server):
    path = api_pipeline(tmp_path, tiny_encoder, server.url)
    with pytest.raises(ConfigError, match=r"teach\.select\.strategy: 'best' is not one of"):
        load_pipeline(path, ["teach.select.strategy=best"])
    with pytest.raises(ConfigError, match=r"teach\.select\.budget: must be >= 1"):
        load_pipeline(path, ["teach.select.budget=0"])
    with pytest.raises(ConfigError, match=r"teach\.select\.committee: a committee needs at least 2"):
        load_pipeline(path, ["teach.select.strategy=committee", "teach.select.committee=1"])


SELECT = ["teach.select.strategy=margin", "teach.select.seed_rows=8", "teach.select.per_round=4"]


def train_prompts(server):
    """Distinct train rows the API was asked about (train review i carries item{i:03d})."""
    return {e["prompt"].split("item", 1)[1][:3] for e in server.log if "item" in e["prompt"]}


def test_selected_teach_asks_only_the_budget_and_a_rerun_pays_nothing(tmp_path, tiny_encoder, server):
    cfg = load_pipeline(api_pipeline(tmp_path, tiny_encoder, server.url), [*SELECT, "teach.select.budget=16"])
    summary = teach(cfg)
    assert summary["complete"]
    asked = train_prompts(server)
    assert len(asked) == 16  # of a pool of 32
    rows = read_jsonl(output_path(cfg, "reviews", "train"))
    assert sorted(r["text"].split()[0][4:] for r in rows) == sorted(asked)
    record = summary["select"]["reviews"]
    assert record["pool"] == 32 and record["asked"] == 16 and record["left"] == 16
    assert [r["rows"] for r in record["rounds"]] == [8, 4, 4] and record["stopped"] == "budget"
    manifest = json.loads((cfg.path / "teach" / "manifest.json").read_text())
    assert manifest["select"]["reviews"]["rounds"] == record["rounds"]
    # the test split is taught whole: eval compares the student with the teacher on every row
    assert len(read_jsonl(output_path(cfg, "reviews", "test"))) == 10
    state = state_path(cfg, "reviews").read_text().splitlines()
    assert len(state) == 4 and sum(len(json.loads(line)["ids"]) for line in state[1:]) == 16

    requests = len(server.log)
    again = teach(cfg)
    assert len(server.log) == requests and again["select"]["reviews"]["teacher_calls"] == 0
    assert again["select"]["reviews"]["resumed_rounds"] == 3
    assert read_jsonl(output_path(cfg, "reviews", "train")) == rows


def test_the_budget_holds_when_the_api_fails_and_a_rerun_resumes(tmp_path, tiny_encoder, server):
    cfg = load_pipeline(api_pipeline(tmp_path, tiny_encoder, server.url), [*SELECT, "teach.select.budget=16"])
    # Which rows round 1 picks, from the same data under another cache and run folder.
    clean = load_pipeline(
        api_pipeline(tmp_path / "clean", tiny_encoder, server.url), [*SELECT, "teach.select.budget=16"]
    )
    teach(clean)
    round_1 = json.loads(state_path(clean, "reviews").read_text().splitlines()[2])["ids"]
    # one row of round 1 fails every time, another twice and then answers (retried)
    ids = [int(i.split("-")[1]) for i in round_1]
    server.faults[f"item{ids[0]:03d}"] = ["always:500"]
    server.faults[f"item{ids[1]:03d}"] = ["500", "500"]
    server.log.clear()
    summary = teach(cfg)
    assert not summary["complete"]
    assert len(train_prompts(server)) <= 16
    record = summary["select"]["reviews"]
    assert record["stopped"] == "failures" and [r["rows"] for r in record["rounds"]] == [8, 4]
    assert not output_path(cfg, "reviews", "train").exists()  # never a partial split
    server.faults.clear()
    server.log.clear()
    again = teach(cfg)
    assert again["complete"] and again["select"]["reviews"]["asked"] == 16
    assert len(train_prompts(server)) == 16 - 8 - 4 + 1  # the failed row, then round 2
    assert again["select"]["reviews"]["resumed_rounds"] == 2


def test_pseudo_labels_are_marked_and_kept_out_of_the_label_mass(tmp_path, tiny_encoder, server):
    cfg = load_pipeline(
        api_pipeline(tmp_path, tiny_encoder, server.url),
        [*SELECT, "teach.select.budget=12", "teach.select.pseudo_label.min_confidence=0.5"],
    )
    summary = teach(cfg)
    rows = read_jsonl(output_path(cfg, "reviews", "train"))
    pseudo = [r for r in rows if r["teacher_method"] == "pseudo_label"]
    assert len(rows) == 32 and len(pseudo) == 20  # min_confidence 0.5: every unseen row
    assert all(r["teacher_label_mass"] is None for r in pseudo)
    assert summary["select"]["reviews"]["pseudo_labelled"] == 20
    counts = summary["counts"]["reviews/train"]
    assert counts["methods"]["pseudo_label"] == 20 and counts["mean_label_mass"] == pytest.approx(0.9)


def test_the_nightly_student_chooses_the_new_rows_within_the_budget(trained_run, tmp_path):
    """learner student: rows appended since the student's run are scored by that student; the
    budget's least sure go to the teacher, the confident rest are pseudo labels, the old rows
    come from the cache, and a rerun pays nothing."""
    import shutil

    import yaml

    from distill.student.model import load_student
    from distill.tasks import tasks_for
    from tests.conftest import review

    data = yaml.safe_load((trained_run.parent / "pipeline.yaml").read_text())
    data["run_dir"] = str(tmp_path / "run")
    reviews = data["tasks"][0]
    train = tmp_path / "reviews-train.jsonl"
    shutil.copy(reviews["data"]["train"], train)
    rng = __import__("random").Random(7)
    appended = [{"review": review(rng, i % 2 == 0), "score": None, "id": f"new-{i}"} for i in range(16)]
    with train.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in appended)
    reviews["data"]["train"] = str(train)
    data["teach"]["select"] = {"strategy": "margin", "learner": "student", "student": str(trained_run),
                               "budget": 5, "pseudo_label": {"min_confidence": 0.5}}  # fmt: skip
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_pipeline(path)
    record = teach(cfg)["select"]["reviews"]
    assert (record["learner"], record["known"], record["new"]) == ("student", 32, 16)
    assert (record["asked"], record["asked_new"], record["pseudo_labelled"], record["left"]) == (37, 5, 11, 0)
    assert record["teacher_calls"] == 5  # the 32 known rows and the test split: cache hits
    # the five taught are the new rows the student is least sure of (by margin)
    student, tokenizer = load_student(trained_run / "train" / "student")
    task = next(t for t in tasks_for(cfg) if t.name == "reviews")
    new = [{"text": r["review"]} for r in appended]
    margins = margin_scores(task.student_probs(student, tokenizer, new, 8))
    want = {new[i]["text"] for i in top_rows(margins, np.arange(16), 5)}
    rows = read_jsonl(output_path(cfg, "reviews", "train"))
    taught_new = {
        r["text"] for r in rows if r["id"].startswith("new-") and r["teacher_method"] != "pseudo_label"
    }
    assert taught_new == want
    assert sum(r["teacher_method"] == "pseudo_label" for r in rows) == 11
    assert teach(cfg)["select"]["reviews"]["teacher_calls"] == 0  # a rerun pays nothing
