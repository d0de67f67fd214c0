"""Rebuild data/fine_foods/*.jsonl from Debian's r-cran-modeldata (small_fine_foods).

    apt-get download r-cran-modeldata && dpkg -x r-cran-modeldata_*.deb /tmp/modeldata
    python scripts/build_fine_foods.py /tmp/modeldata   # needs: pip install rdata

R keeps package data in a lazy-load database (Rdata.rdx index + Rdata.rdb blobs); each
blob is a 4-byte length, a 1-byte compression tag and a serialized R object, which
`rdata` parses. The 4000 training reviews are split 3500/500 into train/validation with
a fixed seed; the 1000 testing reviews are the test split.
"""

import json
import lzma
import random
import sys
import zlib
from pathlib import Path

import rdata

SEED = 13
VALIDATION = 500


def read_lazyload(data_dir: Path, name: str):
    index = rdata.read_rds(data_dir / "Rdata.rdx")
    offset, length = (int(x) for x in index["variables"][name])
    blob = (data_dir / "Rdata.rdb").read_bytes()[offset : offset + length]
    tag, payload = blob[4:5], blob[5:]
    if tag == b"Z":  # R's "compress3": a raw LZMA2 stream
        raw = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]).decompress(payload)
    elif tag == b"1":
        raw = zlib.decompress(payload)
    else:
        raw = zlib.decompress(blob[4:])  # compress1: zlib straight after the length
    return rdata.conversion.convert(rdata.parser.parse_data(raw))


def rows(frame) -> list[dict]:
    return [
        {
            "id": f"{r.product}-{i}",
            "review": " ".join(r.review.replace("<br />", " ").split()),
            "label": r.score,
        }
        for i, r in enumerate(frame.itertuples())
    ]


def main(root: str) -> None:
    data_dir = Path(root) / "usr/lib/R/site-library/modeldata/data"
    train = rows(read_lazyload(data_dir, "training_data"))
    test = rows(read_lazyload(data_dir, "testing_data"))
    random.Random(SEED).shuffle(train)
    out = Path(__file__).resolve().parents[1] / "data" / "fine_foods"
    out.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", train[VALIDATION:]), ("validation", train[:VALIDATION]), ("test", test)):
        with (out / f"{split}.jsonl").open("w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
        print(split, len(part))


if __name__ == "__main__":
    main(sys.argv[1])
