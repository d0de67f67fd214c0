"""Reading task data with ``datasets`` and checking it before any model sees it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from distill.core.config import TaskConfig
from distill.core.errors import DistillError

Example = dict[str, Any]
"""A validated row, shaped by its task kind (distill/tasks/): classification id, text, label
(gold or None); sentence pairs add text_pair; summarization id, document, reference."""


def read_split(task: TaskConfig, split: str) -> list[dict[str, Any]]:
    """The raw rows of one split of a task, ``max_rows`` and ``sample`` applied; each task kind
    turns them into validated examples (``Task.load_split``)."""
    source = task.data.get(split)
    if source is None:
        raise DistillError(f"task {task.name}: no {split} split in data")
    rows = read_rows(source, split, task.name)
    limit = task.max_rows.get(split)
    if limit is not None:
        rows = rows[:limit] if task.sample == "first" else sample_rows(rows, limit, task.sample_seed)
    if split == "train" and task.traffic and Path(task.traffic).is_file():
        rows += traffic_rows(task.traffic, {str(r["id"]) for r in rows if "id" in r})
    return rows


def traffic_rows(path: str, seen: set[str]) -> list[dict[str, Any]]:
    """The requests ``distill serve --defer`` logged (one per id: a text asked twice is one row;
    ids already in the split are skipped). A torn last line (a server killed mid-write) is
    skipped; any other bad line is an error naming it."""
    out = []
    lines = Path(path).read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if n == len(lines):
                break
            raise DistillError(f"{path}: line {n} is not JSON") from None
        if str(row.get("id")) not in seen:
            seen.add(str(row.get("id")))
            out.append(row)
    return out


def sample_rows(
    rows: list[dict[str, Any]], n: int, seed: int, key_field: str | None = None
) -> list[dict[str, Any]]:
    """The ``n`` rows with the smallest sha256(seed, row content), in their file order
    (bottom-k hashing): deterministic, independent of row positions, so appending rows to a
    file never reshuffles which old rows are in, and the ``n`` rows lie inside the ``m > n``
    rows of the same seed. ``key_field``: hash that field's value instead of the whole row
    (where present), so a row keeps its place when other fields change (a teacher's answer)."""

    def key(row: dict[str, Any]) -> str:
        value = row[key_field] if key_field is not None and key_field in row else row
        content = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(f"{seed}\n{content}".encode()).hexdigest()

    keys = [key(row) for row in rows]
    chosen = set(sorted(range(len(rows)), key=lambda i: (keys[i], i))[:n])
    return [row for i, row in enumerate(rows) if i in chosen]


def source_fingerprint(source: str) -> str:
    """sha256 of a local data file (or the hub name itself) for manifests."""
    path = Path(source)
    if source.startswith("hub:") or not path.is_file():
        return "hub:" + hashlib.sha256(source.encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_rows(source: str, split: str, task_name: str) -> list[dict[str, Any]]:
    import datasets

    datasets.disable_progress_bars()
    if source.startswith("hub:"):
        name, _, config = source[4:].partition(":")
        try:
            ds = datasets.load_dataset(name, config or None, split=split)
        except Exception as e:  # noqa: BLE001 - the hub raises many types; all mean "cannot read"
            raise DistillError(f"task {task_name}: cannot load hub dataset {name!r}: {e}") from None
        return list(ds)
    path = Path(source)
    if not path.is_file():
        raise DistillError(f"task {task_name}: {split} data file {source} not found")
    builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}[path.suffix]
    if path.suffix == ".jsonl":
        # read here, not by datasets: its errors name neither file nor line, and it fills a field
        # a row lacks with None, so "missing" could not be told from "empty"
        return jsonl_rows(path, f"task {task_name}")
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:  # noqa: BLE001
        raise DistillError(f"task {task_name}: cannot read {source}: {e}") from None
    return list(ds)


def jsonl_rows(path: Path, where: str) -> list[dict[str, Any]]:
    """The rows of a JSONL data file: each non-blank line one JSON object, else an error naming
    the file and the line."""
    rows = []
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DistillError(
                        f"{where}: {path} line {number} is not JSON ({e.msg}, column {e.colno})"
                    ) from None
                if not isinstance(value, dict):
                    raise DistillError(
                        f"{where}: {path} line {number} is a JSON {type(value).__name__}, not an object"
                    )
                rows.append(value)
    except UnicodeDecodeError as e:
        raise DistillError(f"{where}: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return rows


def text_field(row: dict[str, Any], key: str, where: str, index: int, max_chars: int) -> str:
    """A row's non-empty text field, at most ``max_chars`` long; an error names the row otherwise."""
    if key not in row:
        raise DistillError(f"{where}: row {index} has no field {key!r} (fields: {', '.join(row)})")
    value = row[key]
    if value is None:
        raise DistillError(f"{where}: row {index} field {key!r} is null")
    if not isinstance(value, str):
        raise DistillError(f"{where}: row {index} field {key!r} is a {type(value).__name__}, not text")
    if not value.strip():
        raise DistillError(f"{where}: row {index} field {key!r} is empty")
    if len(value) > max_chars:
        raise DistillError(
            f"{where}: row {index} field {key!r} has {len(value)} characters (max_chars {max_chars})"
        )
    return value


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """The one JSONL writer: atomic, so a crash never leaves a half file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A stage's output rows (the same line-numbered parsing as data files, ``jsonl_rows``)."""
    if not path.is_file():
        raise DistillError(f"{path} not found (run the stage that writes it first)")
    try:
        return jsonl_rows(path, "stage output")
    except DistillError as e:
        raise DistillError(f"{e}; rerun the stage that writes it") from None
