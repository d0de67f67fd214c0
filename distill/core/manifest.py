"""Every stage leaves a manifest.json describing what it did and from what."""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import statistics
import subprocess
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from distill.core.config import PipelineConfig

PACKAGES = ("distill", "torch", "transformers", "datasets", "deepspeed", "evaluate", "openai")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def latency_percentiles(ms: list[float], digits: int = 2) -> dict[str, float | None]:
    """p50 and p95 (nearest rank) of latencies in milliseconds; None when there are none."""
    if not ms:
        return {"latency_p50_ms": None, "latency_p95_ms": None}
    ordered = sorted(ms)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"latency_p50_ms": round(statistics.median(ordered), digits), "latency_p95_ms": round(p95, digits)}


def sha256_files(paths: list[Path]) -> str:
    """One sha256 over the files' names and bytes, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def git_commit() -> str | None:
    """The commit of the checkout distill runs from (with '+dirty' for local changes), if any."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def now() -> str:
    """Local time with its UTC offset, as every record (manifests, runs) writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Timer:
    """Named wall-clock sections, recorded in seconds, and when the stage started."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started_at = now()

    @contextmanager
    def section(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def write_manifest(stage_dir: Path, stage: str, cfg: PipelineConfig, timer: Timer, **sections: Any) -> Path:
    """stage_dir/manifest.json: what ran (resolved config, versions, git commit, host), when, how
    long each section took, and the stage's own sections (inputs with their hashes, counts, ...)."""
    manifest = {
        "stage": stage,
        "started_at": timer.started_at,
        "finished_at": now(),
        "host": socket.gethostname(),
        "git_commit": git_commit(),
        "config": cfg.to_dict(),
        "versions": versions(),
        "timings_s": timer.seconds,
        **sections,
    }
    stage_dir.mkdir(parents=True, exist_ok=True)
    path = stage_dir / "manifest.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path
