"""API teacher throughput against the loopback OpenAI-compatible server (tests/loopback_openai.py),
which answers every request after a fixed latency, in its own process.

For concurrency 1, 8 and 32: items/s through the real path (openai client → HTTP → parse →
SQLite cache, one commit per answer) as a fraction of the ideal, concurrency / latency.
Then a fully cached rerun's items/s (prompt rendering, hashing, SQLite lookup).

    .venv/bin/python scripts/bench_api_teacher.py [--latency-s 0.2] [--out runs/bench_api_teacher.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distill.core.config import TeacherConfig  # noqa: E402
from distill.pipeline import section  # noqa: E402
from distill.tasks import task_config  # noqa: E402
from distill.teach.cache import AnswerCache  # noqa: E402
from distill.teach.prompts import classification_prompt, template_version  # noqa: E402
from distill.teach.teachers.cached import CachedTeacher  # noqa: E402
from distill.teach.teachers.openai.client import APITeacher  # noqa: E402

TASK = task_config(name="reviews", kind="classification", labels={"great": "great", "other": "other"})


def prompts(n: int, tag: str) -> list:
    words = ["tasty", "stale", "fresh", "bland", "coffee", "box"]
    return [
        classification_prompt(TASK, {"text": f"{tag}-{i} " + " ".join(words[(i + j) % 6] for j in range(8))})
        for i in range(n)
    ]


def run(url: str, concurrency: int, items: list, cache: AnswerCache) -> float:
    settings = {"backend": "openai", "base_url": url, "model": "loopback", "concurrency": concurrency}
    cfg = section(TeacherConfig, settings, "teach.teacher")
    cached = CachedTeacher(APITeacher(cfg), cache)
    start = time.perf_counter()
    version = template_version(TASK, TASK.options.labels)
    answers = cached.label_distribution(items, ["great", "other"], version)
    elapsed = time.perf_counter() - start
    if any("error" in a for a in answers):
        raise SystemExit(f"failed items at concurrency {concurrency}: {answers[0]}")
    return elapsed


def start_server(latency_s: float) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.loopback_openai", "--latency-s", str(latency_s)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    return server, server.stdout.readline().strip()


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=20, help="items per worker at each concurrency")
    parser.add_argument("--cached-items", type=int, default=2000)
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_api_teacher.json"))
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = AnswerCache(Path(tmp) / "bench.sqlite")
        server, url = start_server(args.latency_s)
        try:
            run(url, 4, prompts(8, "warmup"), cache)
            for concurrency in (1, 8, 32):
                n = concurrency * args.rounds
                elapsed = run(url, concurrency, prompts(n, f"c{concurrency}"), cache)
                ideal = concurrency / args.latency_s
                rows.append(
                    {
                        "case": f"online, concurrency {concurrency}",
                        "items": n,
                        "seconds": round(elapsed, 3),
                        "items_per_s": round(n / elapsed, 1),
                        "ideal_items_per_s": round(ideal, 1),
                        "fraction_of_ideal": round(n / elapsed / ideal, 3),
                    }
                )
        finally:
            server.terminate()
        server, url = start_server(0.0)  # fill the cache fast, then stop the server: a rerun needs none
        try:
            items = prompts(args.cached_items, "cached")
            run(url, 32, items, cache)
        finally:
            server.terminate()
        times = [run(url, 32, items, cache) for _ in range(3)]  # same teacher id, server gone
        elapsed = sorted(times)[1]
        rows.append(
            {
                "case": "cached rerun (median of 3)",
                "items": len(items),
                "seconds": round(elapsed, 3),
                "items_per_s": round(len(items) / elapsed, 1),
            }
        )
    print_table(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"latency_s": args.latency_s, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
