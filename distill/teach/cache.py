"""Content-addressed teacher answer cache in one SQLite file.

The key is a hash of everything that determines an answer (teacher id, prompt template
version, the rendered input, decoding parameters), so a changed prompt or decoding
setting misses the cache instead of returning a stale answer. Each batch is committed
as it completes: a crash loses at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from distill.core.errors import DistillError


def answer_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class AnswerCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives a killed process (not a power cut) and costs no fsync,
            # so committing every answer the moment it arrives stays cheap.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise DistillError(
                f"teacher cache {self.path} is unreadable ({e}); move it aside to start a fresh cache"
            ) from None

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):  # SQLite caps bound parameters per statement
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, value FROM answers WHERE key IN ({marks})", chunk)
            for key, value in rows:
                try:
                    found[key] = json.loads(value)
                except json.JSONDecodeError:
                    continue  # a damaged entry is a miss: the teacher is asked again
        return found

    def put_many(self, items: dict[str, Any]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO answers (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in items.items()],
            )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def shard_of(key: str, shards: int) -> int:
    """The shard (0 ≤ shard < ``shards``) that asks the teacher for ``key``.

    A key is already a SHA-256 of the answer's content, so its value is a uniform, stable hash:
    every machine agrees without talking, and adding rows never moves an old row's key.
    """
    return int(key, 16) % shards


class LayeredCache:
    """Writes go to ``primary``; reads try ``primary``, then ``also_read`` (never written). A
    shard run writes its own file yet skips what the main cache already holds."""

    def __init__(self, primary: AnswerCache, also_read: AnswerCache):
        self.primary = primary
        self.also_read = also_read
        self.path = primary.path

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        found = self.primary.get_many(keys)
        found.update(self.also_read.get_many([k for k in keys if k not in found]))
        return found

    def put_many(self, items: dict[str, Any]) -> None:
        self.primary.put_many(items)

    def __len__(self) -> int:
        return len(self.primary)

    def close(self) -> None:
        self.primary.close()
        self.also_read.close()


def merge(sources: list[Path], dest: Path) -> dict[str, Any]:
    """Fold the answers of ``sources`` (cache files) into ``dest`` in one transaction.

    A key ``dest`` (or an earlier source) already holds keeps that answer: the same answer
    counts as ``same``, another one as a conflict (reported, never overwritten, so a merge
    cannot silently change what an earlier teach wrote). An entry that is not JSON is left out
    (``unreadable``), as ``get_many`` would ignore it. Any unreadable or non-cache source
    raises DistillError naming it, with ``dest`` unchanged; merging again changes nothing.
    """
    sources = [Path(s) for s in sources]
    for source in sources:  # refuse before opening dest, so a bad list cannot even create it
        _check_source(source, dest)
    target = AnswerCache(dest)
    db = target._db
    per_source = []
    try:
        db.execute("BEGIN IMMEDIATE")  # the write lock up front: no teach writes between read and insert
        for source in sources:
            per_source.append(_merge_one(db, source, dest))
        db.commit()
    except BaseException:
        db.rollback()
        raise
    finally:
        entries = len(target)
        target.close()
    totals = {k: sum(s[k] for s in per_source) for k in ("added", "same", "conflicts", "unreadable")}
    return {
        "dest": str(dest),
        "entries": entries,
        **totals,
        "conflict_keys": [k for s in per_source for k in s.pop("conflict_keys")][:10],
        "sources": per_source,
    }


def _open_source(source: Path) -> sqlite3.Connection:
    # Not mode=ro: a read-only connection leaves -wal/-shm files beside the source; this one
    # never writes and, closed last, removes them.
    return sqlite3.connect(source, timeout=60)


def _check_source(source: Path, dest: Path) -> None:
    if not source.is_file():
        raise DistillError(f"teacher cache {source} not found; nothing was merged into {dest}")
    if dest.exists() and source.resolve() == dest.resolve():
        raise DistillError(f"teacher cache {source} is the merge destination itself")
    db = _open_source(source)
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(answers)")}
    except sqlite3.DatabaseError as e:
        raise DistillError(
            f"teacher cache {source} is unreadable ({e}); nothing was merged into {dest}"
        ) from None
    finally:
        db.close()
    if not {"key", "value"} <= columns:
        raise DistillError(
            f"{source} is no teacher cache (no answers table with key and value); "
            f"nothing was merged into {dest}"
        )


def _merge_one(db: sqlite3.Connection, source: Path, dest: Path) -> dict[str, Any]:
    """Copy one source's new answers into ``db`` (inside the caller's transaction); its counts."""
    counts: dict[str, Any] = {"path": str(source), "entries": 0, "added": 0, "same": 0, "conflicts": 0}
    counts["unreadable"], conflict_keys = 0, []
    src = _open_source(source)
    try:
        rows = src.execute("SELECT key, value FROM answers")
        while chunk := rows.fetchmany(500):  # SQLite caps bound parameters per statement
            counts["entries"] += len(chunk)
            marks = ",".join("?" * len(chunk))
            keys = [k for k, _ in chunk]
            held = dict(db.execute(f"SELECT key, value FROM answers WHERE key IN ({marks})", keys))
            new = []
            for key, value in chunk:
                if not _readable(value):
                    counts["unreadable"] += 1
                elif key not in held:
                    new.append((key, value))
                elif _same_answer(held[key], value):
                    counts["same"] += 1
                else:
                    counts["conflicts"] += 1
                    conflict_keys.append(key)
            db.executemany("INSERT INTO answers (key, value) VALUES (?, ?)", new)
            counts["added"] += len(new)
    except sqlite3.DatabaseError as e:
        raise DistillError(
            f"teacher cache {source} is unreadable ({e}); nothing was merged into {dest}"
        ) from None
    finally:
        src.close()
    return {**counts, "conflict_keys": conflict_keys}


def _readable(value: Any) -> bool:
    try:
        json.loads(value)
    except (TypeError, json.JSONDecodeError):
        return False
    return True


def _same_answer(a: str, b: str) -> bool:
    """Equal as JSON (key order and spacing aside): the same answer written by another writer."""
    if a == b:
        return True
    try:
        return json.loads(a) == json.loads(b)
    except (TypeError, json.JSONDecodeError):
        return False
