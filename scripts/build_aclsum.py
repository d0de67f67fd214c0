"""Rebuild data/aclsum/*.jsonl from the PyPI package aclsum (pip install aclsum).

document = the paper's abstract (title first); summary = its three aspect summaries
(challenge, approach, outcome) joined. Splits as shipped: train/val/test → train/validation/test.
"""

import json
from pathlib import Path

from aclsum import ACLSum

SPLITS = {"train": "train", "validation": "val", "test": "test"}


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "data" / "aclsum"
    out.mkdir(parents=True, exist_ok=True)
    for split, source in SPLITS.items():
        docs = ACLSum(source)
        with (out / f"{split}.jsonl").open("w") as f:
            for doc in docs:
                abstract = " ".join(doc.sentences["abstract"])
                summary = " ".join(doc.summaries[a] for a in ("challenge", "approach", "outcome"))
                row = {
                    "id": doc.id,
                    "title": doc.title,
                    "document": f"{doc.title}. {abstract}",
                    "summary": summary,
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(split, len(docs))


if __name__ == "__main__":
    main()
