"""Scheduled runs' folders: every `distill run` in its own folder ``run_dir/<id>/``, one at a
time per pipeline (lock.py), a history line per run (history.py), and promotion of the new
student to ``run_dir/promoted`` (promotion.py); the sequence itself is scheduled.py.

Layout of a pipeline's ``run_dir`` after scheduled runs::

    <id>/{teach,train,eval}/, <id>/run.json     one run (id: UTC time + config/input hash)
    latest -> <id>                               newest run that finished eval
    promoted -> <id>                             the student in production
    history.jsonl                                one line per run, whatever its outcome
    .lock                                        held (flock) by the running run

The stages (`distill teach/train/eval`) stay usable on their own; they read and write
``run_dir/{teach,train,eval}`` directly. Only `distill run` makes run folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from distill.core.config import PipelineConfig
from distill.core.data import source_fingerprint

RUN_FILE = "run.json"
LATEST, PROMOTED = "latest", "promoted"

# Exit codes of `distill run` (and of the single stages, where they apply); README "Exit codes".
EXIT_OK = 0
EXIT_CRASH = 1  # an unexpected exception: a bug, or the machine (out of memory, disk full)
EXIT_CONFIG = 2  # bad config, data, cache or checkpoint: the message names the culprit
EXIT_TEACHER = 3  # the teacher failed items; their splits were not written (a rerun retries them)
EXIT_GATES = 4  # a configured eval gate failed; the student was not promoted
EXIT_LOCKED = 5  # another run of this pipeline holds the lock


def run_id(cfg: PipelineConfig, now: float | None = None) -> str:
    """``20261123T031500Z-1a2b3c4d``: the start time (UTC), then a hash of the resolved config
    (run_dir aside) and every data file's content, so two runs on the same inputs share it."""
    config = cfg.to_dict()
    config.pop("run_dir")
    sources = sorted({source for task in cfg.tasks for source in task.data.values()})
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for source in sources:
        digest.update(source_fingerprint(source).encode())
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{stamp}-{digest.hexdigest()[:8]}"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def point(run_dir: Path, name: str, target: str) -> None:
    """Atomically make ``run_dir/name`` a relative symlink to the run folder ``target``."""
    tmp = run_dir / f".{name}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target, target_is_directory=True)
    tmp.replace(run_dir / name)


def pointed(run_dir: Path, name: str) -> str | None:
    """The run id ``run_dir/name`` points at, if any."""
    link = run_dir / name
    return os.readlink(link) if link.is_symlink() and link.exists() else None


def remove_checkpoints(folder: Path) -> float:
    """Delete a finished run's training checkpoints (optimizer state: several GB for a 186M
    student) once its student is exported and evaluated; returns the MB freed. A run that
    did not finish keeps them for --resume."""
    ckpt = folder / "train" / "checkpoints"
    if not ckpt.is_dir():
        return 0.0
    size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    shutil.rmtree(ckpt)
    return round(size / 2**20, 1)


def resumable(run_dir: Path) -> str | None:
    """The newest run folder that did not finish (its run.json says running or crashed)."""
    if not run_dir.is_dir():
        return None
    for folder in sorted((p for p in run_dir.iterdir() if (p / RUN_FILE).is_file()), reverse=True):
        status = json.loads((folder / RUN_FILE).read_text()).get("status")
        if status in ("running", "crashed"):
            return folder.name
    return None
