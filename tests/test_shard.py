"""`distill teach --shard i/N` and `--merge`: shards ask disjoint parts of the work into their own
caches, and after a merge a plain teach asks nothing and writes what an unsharded teach writes.
Real SQLite files, the real loopback HTTP teacher."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import yaml

from distill.core.errors import DistillError
from distill.core.layout import output_path
from distill.pipeline import load as load_pipeline
from distill.teach.cache import AnswerCache, answer_key, merge, shard_of
from distill.teach.run import run as teach
from distill.teach.shard import merge as merge_shards
from distill.teach.shard import parse_shard, run_shard, shard_cache_path
from tests.conftest import api_pipeline, make_data, write_jsonl

CALIBRATED = ["teach.calibration.prior=content_free", "teach.calibration.temperature=true"]
OUTPUTS = [("reviews", "train"), ("reviews", "test"), ("reviews", "validation")]
OUTPUTS += [("papers", "train"), ("papers", "test")]


def with_validation(tmp_path: Path, path: Path) -> Path:
    """The api pipeline plus a labeled validation split (10 fresh rows) to fit a temperature on."""
    data = yaml.safe_load(path.read_text())
    data["tasks"][0]["data"]["validation"] = make_data(tmp_path / "dev", seed=1)["reviews"]["test"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def stored(path: Path) -> dict[str, str]:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT key, value FROM answers"))
    finally:
        db.close()


def add_reviews(cfg, first: int, count: int) -> None:
    """``count`` more train reviews, marked item{first:03d} on, put first, the old rows after them
    in reverse order: a row's shard must not depend on where it sits in the file."""
    train = Path(cfg.tasks[0].data["train"])
    rows = [json.loads(x) for x in train.read_text().splitlines()][::-1]
    new = [
        {"review": f"item{i:03d} fresh tasty snack {i}", "score": "great", "id": f"train-{i}"}
        for i in range(first, first + count)
    ]
    write_jsonl(train, new + rows)


def test_shard_is_i_of_n_with_i_below_n():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard(" 3 / 4 ") == (3, 4)
    assert parse_shard("0/1") == (0, 1)
    for bad in ("4/4", "5/4", "1/0", "0/0"):
        with pytest.raises(DistillError, match=rf"--shard {bad}: needs N ≥ 1 and 0 ≤ i < N"):
            parse_shard(bad)
    for bad in ("-1/4", "1", "a/b", "1/4/2", ""):
        with pytest.raises(DistillError, match=r"expected i/N, e\.g\. 0/4"):
            parse_shard(bad)


def test_shard_of_a_key_is_its_hash_value_modulo_n():
    assert shard_of("0" * 63 + "a", 4) == 10 % 4 == 2
    assert shard_of("0" * 62 + "ff", 7) == 255 % 7 == 3
    assert shard_of("f" * 64, 2) == 1  # 16**64 - 1 is odd
    assert shard_of("0" * 64, 5) == 0
    key = answer_key(teacher="t", prompt="p")
    assert all(shard_of(key, n) == int(key, 16) % n for n in (1, 2, 3, 16))


def test_shards_ask_disjoint_parts_and_after_a_merge_teach_asks_nothing(tmp_path, tiny_encoder, server):
    path = with_validation(tmp_path, api_pipeline(tmp_path, tiny_encoder, server.url))
    whole = load_pipeline(
        path, [*CALIBRATED, f"run_dir={tmp_path / 'whole'}", f"teach.cache={tmp_path / 'whole.sqlite'}"]
    )
    unsharded = teach(whole)
    asked_whole = Counter(e["prompt"] for e in server.log)
    items = 32 + 10 + 10 + 12 + 4 + 3  # reviews train/test/validation, papers train/test, content-free
    assert sum(asked_whole.values()) == unsharded["cache"]["teacher_calls"] == items

    cfg = load_pipeline(path, CALIBRATED)  # its own run folder and an empty main cache
    per_shard = []
    for i in range(3):
        before = len(server.log)
        got = run_shard(cfg, (i, 3))
        asked = Counter(e["prompt"] for e in server.log[before:])
        per_shard.append(asked)
        assert got["complete"] and got["failures"] == []
        assert got["cache"]["path"] == str(tmp_path / f"cache.shard-{i}-of-3.sqlite")
        assert got["cache"]["teacher_calls"] == sum(asked.values()) > 0
        assert got["cache"]["teacher_calls"] + got["cache"]["other_shards"] == items
        assert got["cache"]["also_read"] is None  # no main cache yet
        assert len(stored(shard_cache_path(cfg, (i, 3)))) == got["cache"]["teacher_calls"]
    # Disjoint and covering: together the shards asked exactly what the unsharded run asked.
    assert sum(per_shard, Counter()) == asked_whole
    assert all(not (a.keys() & b.keys()) for a, b in [per_shard[:2], per_shard[1:], per_shard[::2]])
    blanks = [i for i, asked in enumerate(per_shard) if any("Text: N/A" in p for p in asked)]
    assert len(blanks) == 1  # a content-free prompt is asked by one shard, like any other prompt
    for task, split in OUTPUTS:  # a shard writes no (partial) output and no manifest
        assert not output_path(cfg, task, split).exists()
    assert not (cfg.path / "teach" / "manifest.json").exists()

    merged = merge_shards(cfg)
    assert [Path(s["path"]).name for s in merged["sources"]] == [
        f"cache.shard-{i}-of-3.sqlite" for i in range(3)
    ]
    assert (merged["added"], merged["same"], merged["conflicts"]) == (items, 0, 0)
    assert merged["entries"] == items and merged["missing_shards"] == {}

    before = len(server.log)
    final = teach(cfg)
    assert len(server.log) == before  # not one request
    assert final["complete"] and final["cache"]["teacher_calls"] == 0 and final["cache"]["hits"] == items
    for task, split in OUTPUTS:
        assert output_path(cfg, task, split).read_bytes() == output_path(whole, task, split).read_bytes()
    assert final["teacher"]["calibration"] == unsharded["teacher"]["calibration"]
    assert final["counts"] == unsharded["counts"]

    again = merge_shards(cfg)  # merging twice changes nothing
    assert (again["added"], again["same"], again["conflicts"], again["entries"]) == (0, items, 0, items)


def test_added_rows_keep_their_shard_and_the_main_cache_is_not_asked_again(tmp_path, tiny_encoder, server):
    cfg = load_pipeline(api_pipeline(tmp_path, tiny_encoder, server.url))
    for i in range(2):
        run_shard(cfg, (i, 2))
    first = [set(stored(shard_cache_path(cfg, (i, 2)))) for i in range(2)]

    add_reviews(cfg, 32, 8)
    before = len(server.log)
    added = [run_shard(cfg, (i, 2))["cache"]["teacher_calls"] for i in range(2)]
    prompts = [e["prompt"] for e in server.log[before:]]
    # Only the new rows were asked: no old row moved to the other shard (that one would ask it).
    assert sorted(p.split("Text: ")[1].split()[0] for p in prompts) == [f"item{i:03d}" for i in range(32, 40)]
    assert sum(added) == 8 and min(added) > 0
    second = [set(stored(shard_cache_path(cfg, (i, 2)))) for i in range(2)]
    assert first[0] <= second[0] and first[1] <= second[1] and not second[0] & second[1]

    # With the shards merged into the main cache, a shard in a fresh file asks only newer rows.
    merge_shards(cfg)
    add_reviews(cfg, 40, 4)
    fresh = tmp_path / "elsewhere" / "shard0.sqlite"
    before = len(server.log)
    got = run_shard(cfg, (0, 2), cache=fresh)
    asked = [e["prompt"] for e in server.log[before:]]
    assert got["cache"]["also_read"] == str(tmp_path / "cache.sqlite")
    assert all(any(f"item{i:03d}" in p for i in range(40, 44)) for p in asked)
    assert len(stored(fresh)) == got["cache"]["teacher_calls"] == len(asked)
    assert got["cache"]["hits"] + got["cache"]["other_shards"] + len(asked) == 44 + 10 + 12 + 4


def test_a_budget_applies_to_each_shard_alone(tmp_path, tiny_encoder, server):
    path = api_pipeline(tmp_path, tiny_encoder, server.url, concurrency=1)  # exact budgets are serial
    cfg = load_pipeline(path, ["teach.teacher.max_requests=3"])
    for i in range(2):
        before = len(server.log)
        got = run_shard(cfg, (i, 2))
        assert len(server.log) - before == got["cache"]["teacher_calls"] == 3  # not 3 for both together
        assert not got["complete"]
        mine = 32 + 10 + 12 + 4 - got["cache"]["other_shards"]
        assert got["failed"] == len(got["failures"]) == mine - 3
        assert all(f["reason"] == "budget: max_requests 3 reached" for f in got["failures"])
    assert len(stored(shard_cache_path(cfg, (0, 2)))) == 3  # failures are never cached


def fill(path: Path, answers: dict[str, object]) -> Path:
    cache = AnswerCache(path)
    cache.put_many(answers)
    cache.close()
    return path


def test_merge_keeps_the_first_answer_and_counts_conflicts(tmp_path):
    k1, k2, k3, k4 = (answer_key(item=i) for i in range(4))
    dest = fill(tmp_path / "main.sqlite", {k1: {"text": "a"}, k4: {"a": 1, "b": 2}})
    one = fill(tmp_path / "one.sqlite", {k1: {"text": "a"}, k2: {"text": "b"}})
    two = fill(tmp_path / "two.sqlite", {k1: {"text": "A"}, k2: {"text": "B"}, k3: {"text": "c"}})
    db = sqlite3.connect(two)  # same answer, other key order and spacing: not a conflict
    db.execute("INSERT INTO answers VALUES (?, ?)", (k4, '{"b":2,"a":1}'))
    db.execute("INSERT INTO answers VALUES (?, ?)", (answer_key(item=9), "{damaged"))
    db.commit()
    db.close()

    got = merge([one, two], dest)
    assert [
        (s["entries"], s["added"], s["same"], s["conflicts"], s["unreadable"]) for s in got["sources"]
    ] == [
        (2, 1, 1, 0, 0),  # k2 new; k1 as dest has it
        (5, 1, 1, 2, 1),  # k3 new; k4 same; k1 differs from dest, k2 from source one; one damaged
    ]
    assert (got["added"], got["same"], got["conflicts"], got["unreadable"]) == (2, 2, 2, 1)
    assert sorted(got["conflict_keys"]) == sorted([k1, k2])
    assert got["entries"] == 4
    assert {k: json.loads(v) for k, v in stored(dest).items()} == {
        k1: {"text": "a"},
        k2: {"text": "b"},
        k3: {"text": "c"},
        k4: {"a": 1, "b": 2},
    }
    snapshot = stored(dest)
    again = merge([one, two], dest)  # idempotent: nothing added, the same conflicts reported
    assert (again["added"], again["same"], again["conflicts"]) == (0, 4, 2)
    assert stored(dest) == snapshot


def test_a_bad_source_is_named_and_the_destination_is_unchanged(tmp_path):
    dest = fill(tmp_path / "main.sqlite", {answer_key(item=0): {"text": "kept"}})
    snapshot = stored(dest)
    good = fill(tmp_path / "good.sqlite", {answer_key(item=1): {"text": "new"}})
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE notes (body TEXT)")
    db.commit()
    db.close()
    cases = [
        (junk, r"teacher cache .*junk\.sqlite is unreadable \(file is not a database\); nothing was merged"),
        (other, r"other\.sqlite is no teacher cache \(no answers table"),
        (tmp_path / "absent.sqlite", r"teacher cache .*absent\.sqlite not found"),
        (dest, r"main\.sqlite is the merge destination itself"),
    ]
    for bad, message in cases:
        with pytest.raises(DistillError, match=message):
            merge([good, bad], dest)
        assert stored(dest) == snapshot
    with pytest.raises(DistillError, match="absent"):
        merge([tmp_path / "absent.sqlite"], tmp_path / "new.sqlite")
    assert not (tmp_path / "new.sqlite").exists()  # refused before the destination was created


def test_a_source_damaged_past_its_header_rolls_the_whole_merge_back(tmp_path):
    dest = fill(tmp_path / "main.sqlite", {answer_key(item=0): {"text": "kept"}})
    snapshot = stored(dest)
    good = fill(tmp_path / "good.sqlite", {answer_key(item=1): {"text": "new"}})
    big = fill(tmp_path / "big.sqlite", {answer_key(item=i): {"text": "x" * 300} for i in range(2, 2000)})
    raw = bytearray(big.read_bytes())
    assert len(raw) > 40 * 4096
    raw[8 * 4096 : 30 * 4096] = b"\xff" * (22 * 4096)  # the header and schema page still read
    big.write_bytes(bytes(raw))
    with pytest.raises(
        DistillError, match=r"big\.sqlite is unreadable .*nothing was merged into .*main\.sqlite"
    ):
        merge([good, big], dest)
    assert stored(dest) == snapshot  # not even good.sqlite's answer, merged before the damage was met


def test_merge_finds_the_shard_caches_and_names_missing_shards(tmp_path, tiny_encoder):
    cfg = load_pipeline(api_pipeline(tmp_path, tiny_encoder, "http://127.0.0.1:9/v1"))
    with pytest.raises(
        DistillError, match=r"no shard caches beside .*cache\.sqlite \(named cache\.shard-<i>-of-<N>"
    ):
        merge_shards(cfg)
    for i, key in ((0, 10), (2, 12)):
        fill(shard_cache_path(cfg, (i, 3)), {answer_key(item=key): {"text": str(key)}})
    fill(tmp_path / "cache.shard-1-of-3.sqlite-wal.bak", {})  # not a shard cache's name
    got = merge_shards(cfg)
    assert [Path(s["path"]).name for s in got["sources"]] == [
        "cache.shard-0-of-3.sqlite",
        "cache.shard-2-of-3.sqlite",
    ]
    assert got["missing_shards"] == {3: [1]} and got["added"] == 2
    named = fill(tmp_path / "from-machine-b.sqlite", {answer_key(item=11): {"text": "11"}})
    got = merge_shards(cfg, [named])
    assert got["added"] == 1 and got["missing_shards"] == {} and got["entries"] == 3


def test_the_cli_shards_merges_and_then_teaches_from_the_cache(tmp_path, tiny_encoder, server):
    """The commands a user types on N machines, then on one."""
    from tests.test_pipeline import distill

    path = api_pipeline(tmp_path, tiny_encoder, server.url)
    cfg = load_pipeline(path)
    calls = []
    for i in range(2):
        before = len(server.log)
        out = distill("teach", path, "--shard", f"{i}/2").stderr
        assert f"shard {i}/2:" in out and "left to other shards" in out
        calls.append(len(server.log) - before)
    assert not output_path(cfg, "reviews", "train").exists()  # a shard writes no outputs
    merged = distill("teach", path, "--merge").stderr
    assert f"{sum(calls)} added" in merged and "0 conflicts" in merged
    before = len(server.log)
    assert "teach: 0 teacher answers (0 stored)" in distill("teach", path).stderr
    assert len(server.log) == before and output_path(cfg, "reviews", "train").is_file()
    both = distill("teach", path, "--shard", "0/2", "--merge", check=False)
    assert both.returncode == 2 and "one at a time" in both.stderr
    bad = distill("teach", path, "--shard", "2/2", check=False)
    assert bad.returncode == 2 and "2/2" in bad.stderr
