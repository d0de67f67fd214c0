"""Every stage leaves a manifest.json describing what it did and from what."""

from __future__ import annotations

import json
import platform
import statistics
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from distill.config import PipelineConfig

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


class Timer:
    """Named wall-clock sections, recorded in seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def section(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def write_manifest(stage_dir: Path, stage: str, cfg: PipelineConfig, **sections: Any) -> Path:
    manifest = {
        "stage": stage,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": cfg.to_dict(),
        "versions": versions(),
        **sections,
    }
    stage_dir.mkdir(parents=True, exist_ok=True)
    path = stage_dir / "manifest.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path
