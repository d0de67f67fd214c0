"""`distill serve` under load: dynamic batching against one item per forward (max_batch=1).

For each mode the server runs in its own process on a free loopback port; at concurrency 1, 8
and 32, that many client threads (one keep-alive http.client connection each, one text per
request) send requests until ``--requests`` are done or ``--time-cap-s`` has passed. The table
gives latency percentiles, items/s and the mean batch size the server ran (from /metrics), and
the gain of dynamic batching over max_batch=1 at each concurrency. Texts come from the run's
teach outputs (``<run>/teach/<task>/test.jsonl``) when the student sits in a run folder, else
from a small built-in set. Numbers on a shared machine are noisy.

    .venv/bin/python scripts/bench_serve.py [--student runs/demo_smol/train/student] [--task NAME]
        [--summarize] [--requests 300] [--out runs/bench_serve]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distill.core.manifest import latency_percentiles  # noqa: E402

DEFAULT_STUDENT = REPO / "runs" / "demo_smol" / "train" / "student"
LEVELS = (1, 8, 32)
FALLBACK_TEXTS = [
    "The coffee arrived fresh and tasted wonderful, I will buy it again.",
    "Stale crackers, the box was broken and the taste was bland.",
    "Great snack for the office, my colleagues love it.",
    "Disappointing: soggy chips and a late delivery, asking for a refund.",
    "Perfect tea, delicate aroma, excellent value for the price.",
    "Awful aftertaste; the sauce was far too salty for us.",
]


# --- the server -----------------------------------------------------------------------------
def start_server(
    student: Path, max_batch: int, max_wait_ms: float, device: str
) -> tuple[subprocess.Popen, int]:
    """`serve` on port 0 in a child process; its port, read from uvicorn's start line."""
    options = f"port=0, max_batch={max_batch}, max_wait_ms={max_wait_ms}, device={device!r}"
    code = f"from distill.ship.serve.app import serve; serve({str(student)!r}, {options})"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    assert proc.stderr is not None
    tail: list[str] = []
    for line in proc.stderr:
        tail.append(line)
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if found:
            # Keep draining its log, or a full pipe would stall the server.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(found.group(1))
    raise SystemExit("the server did not start:\n" + "".join(tail[-20:]))


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def call(
    conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None
) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        return call(conn, "GET", path)[1]
    finally:
        conn.close()


# --- the load -------------------------------------------------------------------------------
def request_for(task: str, writes: bool, max_tokens: int) -> tuple[str, Callable[[str], dict]]:
    """The endpoint and a text → body function for ``task``."""
    if writes:
        return "/v1/chat/completions", lambda text: {
            "model": task,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens,
        }
    return "/v1/classify", lambda text: {"task": task, "texts": [text]}


def load(port: int, path: str, body, texts: list[str], concurrency: int, requests: int, cap_s: float) -> dict:
    """``concurrency`` threads send requests until ``requests`` are sent or ``cap_s`` passes."""
    lock, sent = threading.Lock(), [0]
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + cap_s

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.perf_counter() < deadline:
            with lock:
                if sent[0] >= requests:
                    break
                i = sent[0]
                sent[0] += 1
            start = time.perf_counter()
            try:
                status, reply = call(conn, "POST", path, body(texts[i % len(texts)]))
            except (OSError, http.client.HTTPException) as e:
                status, reply = 0, {"error": {"message": repr(e)}}
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                if status == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors.append(f"{status}: {reply.get('error', {}).get('message', reply)}")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = latency_percentiles([1000 * s for s in latencies], digits=1)
    return {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": ms["latency_p50_ms"],
        "p95_ms": ms["latency_p95_ms"],
        "items_per_s": round(len(latencies) / wall, 2),
        "wall_s": round(wall, 2),
    }


def bench_mode(
    args, student: Path, mode: str, max_batch: int, jobs: list[tuple[str, bool, list[str]]]
) -> list[dict]:
    proc, port = start_server(student, max_batch, args.max_wait_ms if max_batch > 1 else 0.0, args.device)
    rows = []
    try:
        for task, writes, texts in jobs:
            path, body = request_for(task, writes, args.max_tokens)
            requests = args.summary_requests if writes else args.requests
            load(port, path, body, texts, 2, 4, 60)  # warm-up: first-call costs out of the numbers
            for concurrency in args.levels:
                before = get(port, "/metrics")["tasks"].get(task, {"batches": 0, "items": 0})
                row = load(port, path, body, texts, concurrency, requests, args.time_cap_s)
                after = get(port, "/metrics")["tasks"][task]
                batches = after["batches"] - before["batches"]
                mean = (after["items"] - before["items"]) / batches if batches else None
                row = {"mode": mode, "task": task, "concurrency": concurrency, **row,
                       "mean_batch_size": mean and round(mean, 2)}  # fmt: skip
                print(table_line(row), flush=True)
                rows.append(row)
    finally:
        stop_server(proc)
    return rows


# --- inputs and output ----------------------------------------------------------------------
def bench_texts(student: Path, task: str, writes: bool) -> tuple[list[str], str]:
    """The task's test texts from the run's teach outputs, else the built-in ones."""
    path = student.parent.parent / "teach" / task / "test.jsonl"
    field = "document" if writes else "text"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        texts = [r[field] for r in rows if isinstance(r.get(field), str) and r[field].strip()]
        if texts:
            return texts, str(path)
    return FALLBACK_TEXTS, "built-in"


HEADER = "| mode | task | concurrency | requests | errors | p50 ms | p95 ms | items/s | mean batch |"


def table_line(r: dict) -> str:
    return (
        f"| {r['mode']} | {r['task']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
        f"{r['p50_ms']} | {r['p95_ms']} | {r['items_per_s']} | {r['mean_batch_size']} |"
    )


def gains(rows: list[dict]) -> list[dict]:
    """Dynamic over max_batch=1 at each (task, concurrency): items/s ratio and p50 ratio."""
    out = []
    base = {(r["task"], r["concurrency"]): r for r in rows if r["mode"] == "batch1"}
    for r in rows:
        b = base.get((r["task"], r["concurrency"]))
        if r["mode"] != "dynamic" or b is None or not b["items_per_s"] or not r["p50_ms"]:
            continue
        out.append({
            "task": r["task"], "concurrency": r["concurrency"],
            "throughput_gain": round(r["items_per_s"] / b["items_per_s"], 2),
            "p50_ratio": round(r["p50_ms"] / b["p50_ms"], 2) if b["p50_ms"] else None,
        })  # fmt: skip
    return out


def markdown(result: dict) -> str:
    lines = [
        f"# distill serve benchmark ({result['date']})",
        "",
        f"Student `{result['student']}`; texts from {result['texts']}; {result['cpus']} CPUs, "
        f"load average {result['load_average']} at start (a shared machine: numbers are noisy). "
        f"dynamic = max_batch {result['max_batch']}, max_wait {result['max_wait_ms']} ms; "
        "batch1 = max_batch 1. One text per request, keep-alive connections.",
        "",
        HEADER,
        "|---|---|---|---|---|---|---|---|---|",
        *(table_line(r) for r in result["rows"]),
        "",
        "| task | concurrency | items/s dynamic ÷ batch1 | p50 dynamic ÷ batch1 |",
        "|---|---|---|---|",
        *(
            f"| {g['task']} | {g['concurrency']} | {g['throughput_gain']} | {g['p50_ratio']} |"
            for g in result["gains"]
        ),
    ]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--student", type=Path, default=None, help=f"student or run folder (default {DEFAULT_STUDENT})"
    )
    parser.add_argument("--task", help="classification task (default: the student's first)")
    parser.add_argument(
        "--summarize", action="store_true", help="also the summarization task, via chat completions"
    )
    parser.add_argument(
        "--requests", type=int, default=300, help="classification requests per concurrency level"
    )
    parser.add_argument("--summary-requests", type=int, default=24, help="summary requests per level")
    parser.add_argument("--max-tokens", type=int, default=16, help="summary max_tokens")
    parser.add_argument("--time-cap-s", type=float, default=15.0, help="wall-clock cap per level")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=list(LEVELS))
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_serve")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from distill.core.errors import DistillError
    from distill.core.layout import SPEC_FILE, resolve_student_dir

    if args.student is None and not DEFAULT_STUDENT.is_dir():
        raise SystemExit(f"no student at {DEFAULT_STUDENT}: pass one with --student PATH")
    try:
        student = resolve_student_dir(args.student or DEFAULT_STUDENT).resolve()
    except DistillError as e:
        raise SystemExit(f"error: {e}") from None
    tasks = json.loads((student / SPEC_FILE).read_text())["tasks"]
    # sentence_pair tasks are left out: the benchmark sends one text per request.
    labelers = [n for n, e in tasks.items() if e["kind"] == "classification"]
    writers = [n for n, e in tasks.items() if e["kind"] == "summarization"]
    task = args.task or (labelers[0] if labelers else None)
    if task not in labelers:
        raise SystemExit(
            f"--task: {task!r} is not a classification task of this student ({', '.join(labelers)})"
        )
    if args.summarize and not writers:
        raise SystemExit("--summarize: the student has no summarization task")
    texts, source = bench_texts(student, task, False)
    jobs = [(task, False, texts)]
    if args.summarize:
        jobs.append((writers[0], True, bench_texts(student, writers[0], True)[0]))

    print(HEADER, flush=True)
    load_average = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for mode, max_batch in (("dynamic", args.max_batch), ("batch1", 1)):
        rows += bench_mode(args, student, mode, max_batch, jobs)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "student": str(student),
        "texts": source,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": load_average,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
        "gains": gains(rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_serve.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench_serve.md").write_text(markdown(result))
    print()
    print(markdown(result).split("\n\n", 2)[2])
    print(f"→ {args.out / 'bench_serve.json'} (+ .md)")


if __name__ == "__main__":
    main()
