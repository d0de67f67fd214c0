"""One scheduled run per pipeline at a time: an exclusive flock on ``run_dir/.lock`` whose file
names its holder (pid, host, run id, start)."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from distill.core.errors import DistillError
from distill.core.manifest import now

LOCK_FILE = ".lock"


class RunLocked(DistillError):
    """Another `distill run` of the same pipeline is running."""


@dataclass
class Lock:
    """An exclusive flock on ``run_dir/.lock``. The kernel drops it when its holder dies, so a
    killed run's lock is never stuck: the file's holder record then names a process that no
    longer holds it, which the next run reports as taken over."""

    path: Path
    handle: TextIO
    took_over: dict[str, Any] | None

    @classmethod
    def acquire(cls, run_dir: Path, holder: dict[str, Any]) -> Lock:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_FILE
        handle = open(path, "a+")  # noqa: SIM115 - held open for the run's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            who = _holder(handle.read())
            handle.close()
            raise RunLocked(
                f"{path}: another run of this pipeline is running (pid {who.get('pid', '?')} on "
                f"{who.get('host', '?')}, run {who.get('run_id', '?')}, started {who.get('started', '?')}); "
                "this run did nothing"
            ) from None
        handle.seek(0)
        previous = _holder(handle.read()) or None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        return cls(path, handle, previous)

    def release(self) -> None:
        """Clear the holder record (a clean exit leaves nothing to take over), then unlock."""
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.flush()
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _holder(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"pid": "?", "note": "unreadable lock record"}
    return data if isinstance(data, dict) else {}


def holder_record(run: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run, "started": now()}
