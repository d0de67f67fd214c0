"""Rebuild data/bible_paraphrase/*.jsonl: KJV vs WEB verse pairs, an MRPC-like paraphrase task.

    apt-get download sword-text-kjv sword-text-web libsword-dev
    for f in sword-text-kjv_*.deb sword-text-web_*.deb libsword-dev_*.deb; do dpkg -x $f /tmp/sword; done
    python scripts/build_bible_paraphrase.py /tmp/sword

Both modules are SWORD zText: per testament, `.bzv` holds one `<IIH` record per verse slot
(block, offset in the block, size), `.bzs` one `<III` record per block (offset in `.bzz`,
compressed size, uncompressed size), and `.bzz` the zlib blocks. Slot order follows the
module's versification: module heading, testament heading, then per book a book heading
and per chapter a chapter heading followed by its verses. The KJV module uses KJV
versification but the WEB module uses NRSVA (deuterocanon in the OT, a few chapters one
verse longer), so slots do not line up by index: both are mapped to OSIS references
(`John.3.16`) with the verse tables in libsword-dev's `canon*.h`, and joined on those.

Pairs: a positive is the KJV and WEB text of one verse; a negative is the KJV text of one
verse with the WEB text of another, half a neighbour (±1 or ±2 in the same chapter, so the
topic overlaps) and half a random verse from another chapter. Which translation is text_a
is a coin flip per pair, so translation style says nothing about the label. Splits are by
chapter, so no verse (nor its neighbours) is shared between splits.
"""

import json
import random
import re
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

SEED = 13
SIZES = {"train": 3000, "validation": 500, "test": 1000}
MIN_WORDS, MAX_WORDS = 4, 80
# A negative whose two verses share (nearly) all their words is a refrain ("Where their worm
# dieth not, ..." in Mark 9:44/46/48) and would be a paraphrase labelled "different": skipped.
# Verses differing only in a name or number (Num 2:6 vs 2:8) stay, as the hardest negatives.
MAX_NEGATIVE_OVERLAP = 0.95
MODULES = {"kjv": "engKJV2006eb", "web": "engWEB2015eb"}

Ref = tuple[str, int, int]  # (OSIS book, chapter, verse)

# Same reference, different content: the WEB swaps Matt 23:13/14, keeps only the start of
# 1 John 5:7-8 (no Comma Johanneum) and joins Rom 16:25-27 onto Rom 14:23.
EXCLUDED: set[Ref] = {("Matt", 23, 13), ("Matt", 23, 14), ("1John", 5, 7), ("1John", 5, 8), ("Rom", 14, 23)}


def read_ztext(module_dir: Path, testament: str) -> list[str]:
    """Raw OSIS text of every slot in one testament file, empty string for empty slots."""
    bzv = (module_dir / f"{testament}.bzv").read_bytes()
    bzs = (module_dir / f"{testament}.bzs").read_bytes()
    bzz = (module_dir / f"{testament}.bzz").read_bytes()
    blocks: dict[int, bytes] = {}
    slots = []
    for block, offset, size in struct.iter_unpack("<IIH", bzv):
        if size == 0:
            slots.append("")
            continue
        if block not in blocks:
            start, compressed, _ = struct.unpack_from("<III", bzs, block * 12)
            blocks[block] = zlib.decompress(bzz[start : start + compressed])
        slots.append(blocks[block][offset : offset + size].decode("utf-8"))
    return slots


def read_versification(include_dir: Path, name: str) -> dict[str, list[tuple[str, list[int]]]]:
    """Per testament, (OSIS book, verses per chapter) in slot order, parsed from libsword's canon*.h."""
    suffix = "" if name == "KJV" else f"_{name.lower()}"
    source = (include_dir / f"canon{suffix}.h").read_text()
    if "ntbooks" + suffix + "[]" not in source:  # e.g. canon_nrsva.h: "for ntbooks_nrsva, use ntbooks"
        source += (
            (include_dir / "canon.h")
            .read_text()
            .split("int vm[]")[0]
            .replace("ntbooks[]", f"ntbooks{suffix}[]")
        )
    source = re.sub(r"//[^\n]*", "", source)  # "// Genesis" labels inside the verse table
    counts = [int(x) for x in re.search(rf"int vm{suffix}\[\] = \{{(.*?)\}};", source, re.S)[1].split(",")]
    books = {}
    for testament in ("ot", "nt"):
        table = re.search(rf"struct sbook {testament}books{suffix}\[\] = \{{(.*?)\n\}};", source, re.S)[1]
        books[testament] = [
            (osis, int(n)) for osis, n in re.findall(r'\{"[^"]+", "([^"]+)", "[^"]+", (\d+)\}', table)
        ]
    layout, cursor = {}, 0
    for testament in ("ot", "nt"):
        layout[testament] = []
        for osis, chapters in books[testament]:
            layout[testament].append((osis, counts[cursor : cursor + chapters]))
            cursor += chapters
    assert cursor == len(counts), f"{name}: {cursor} chapters in book tables, {len(counts)} in vm"
    return layout


def verse_slots(layout: dict[str, list[tuple[str, list[int]]]]) -> Iterator[tuple[str, int, Ref]]:
    """(testament, slot index, reference) of every verse, skipping the heading slots."""
    for testament, books in layout.items():
        slot = 2  # 0: module heading, 1: testament heading
        for osis, verses_per_chapter in books:
            slot += 1  # book heading
            for chapter, verses in enumerate(verses_per_chapter, 1):
                slot += 1  # chapter heading
                for verse in range(1, verses + 1):
                    yield testament, slot, (osis, chapter, verse)
                    slot += 1


# Elements whose content is not verse text: footnotes and cross-references (with their
# <reference>, <catchWord>, <rdg> children), headings and psalm titles, speaker labels.
DROPPED = re.compile(r"<(note|title|speaker)\b[^>]*>.*?</\1>", re.S)
# Inline wrappers keep their content and add no space (`<w lemma="strong:H0430">God</w>’s`).
INLINE = re.compile(r"</?(w|transChange|divineName|q|seg|foreign|hi|name)\b[^>]*>")
ANY_TAG = re.compile(r"<[^>]*>")
USFM_MARKER = re.compile(r"\\\+?[a-z]+\d*\*?")  # raw USFM left in a few KJV verses: "the \nd LORD"


# The last verse of a book also carries what follows the book's end (the WEB's glossary after Rev 22:21).
BOOK_END = re.compile(r"<div\b[^>]*\beID=[^>]*type=\"book\".*", re.S)


def clean(osis: str) -> str:
    text = DROPPED.sub(" ", BOOK_END.sub("", osis))
    text = INLINE.sub("", text)
    text = ANY_TAG.sub(" ", text)  # milestones, <l/>, <lb/>, <div/>: line or paragraph breaks
    text = USFM_MARKER.sub(" ", text)
    text = " ".join(text.replace("¶", " ").split())  # the KJV marks paragraph starts with a pilcrow
    # A note sitting between a word and its punctuation left a space there.
    return re.sub(r" ([,.;:!?)]|[”’](?=\s|$|[,.;:!?]))", r"\1", text)


def read_bible(root: Path, module: str) -> dict[Ref, str]:
    conf = (root / f"usr/share/sword/mods.d/{module}.conf").read_text()
    versification = re.search(r"^Versification=(\w+)", conf, re.M)[1]
    layout = read_versification(root / "usr/include/sword", versification)
    module_dir = root / f"usr/share/sword/modules/texts/ztext/{module}"
    slots = {t: read_ztext(module_dir, t) for t in layout}
    for testament, books in layout.items():
        expected = 2 + sum(1 + len(vpc) + sum(vpc) for _, vpc in books)
        assert len(slots[testament]) == expected, (
            f"{module} {testament}: {len(slots[testament])} != {expected}"
        )
    verses = {ref: clean(slots[t][slot]) for t, slot, ref in verse_slots(layout)}
    return {ref: text for ref, text in verses.items() if text}


def align(root: Path) -> dict[Ref, tuple[str, str]]:
    kjv, web = (read_bible(root, MODULES[name]) for name in ("kjv", "web"))
    both = {ref: (kjv[ref], web[ref]) for ref in kjv if ref in web and ref not in EXCLUDED}
    print(f"verses with text: kjv {len(kjv)}, web {len(web)}, in both {len(both)}")
    for ref in (("Gen", 1, 1), ("John", 3, 16), ("Ps", 23, 1), ("Rev", 22, 21)):
        print(f"  {fmt(ref)}\n    KJV: {both[ref][0]}\n    WEB: {both[ref][1]}")
    return both


def fmt(ref: Ref) -> str:
    return ".".join(map(str, ref))


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def overlap(a: str, b: str) -> float:
    wa, wb = words(a), words(b)
    return len(wa & wb) / max(1, len(wa | wb))


def split_chapters(verses: dict[Ref, tuple[str, str]], rng: random.Random) -> dict[str, list[Ref]]:
    """Whole chapters go to one split, in proportion to the split's pair count."""
    chapters: dict[tuple[str, int], list[Ref]] = {}
    for ref in verses:
        chapters.setdefault(ref[:2], []).append(ref)
    order = sorted(chapters)
    rng.shuffle(order)
    total, seen, pools = len(verses), 0, {s: [] for s in SIZES}
    bounds, cumulative = [], 0
    for split, n in SIZES.items():
        cumulative += n
        bounds.append((cumulative / sum(SIZES.values()), split))
    for chapter in order:
        split = next(s for b, s in bounds if seen / total < b)
        pools[split].extend(chapters[chapter])
        seen += len(chapters[chapter])
    return pools


def partner(anchor: Ref, kind: str, pool: set[Ref], pool_list: list[Ref], rng: random.Random) -> Ref | None:
    if kind == "same":
        return anchor
    if kind == "neighbour":
        book, chapter, verse = anchor
        near = [(book, chapter, verse + d) for d in (-2, -1, 1, 2) if (book, chapter, verse + d) in pool]
        return rng.choice(near) if near else None
    while True:
        other = rng.choice(pool_list)
        if other[:2] != anchor[:2]:
            return other


def make_pairs(
    split: str, refs: list[Ref], verses: dict[Ref, tuple[str, str]], rng: random.Random
) -> list[dict]:
    n = SIZES[split]
    kinds = ["same"] * (n // 2) + ["neighbour"] * (n // 4) + ["random"] * (n - n // 2 - n // 4)
    pool = set(refs)
    anchors = iter(rng.sample(refs, len(refs)))
    pairs = []
    for kind in kinds:
        while True:  # draw anchors until one has a usable partner of this kind
            anchor = next(anchors)
            other = partner(anchor, kind, pool, refs, rng)
            if other and (
                kind == "same" or overlap(verses[anchor][0], verses[other][0]) < MAX_NEGATIVE_OVERLAP
            ):
                break
        kjv, web = verses[anchor][0], verses[other][1]
        swap = rng.random() < 0.5
        pairs.append(
            {
                "id": f"{fmt(anchor)}~{fmt(other)}",
                "text_a": web if swap else kjv,
                "text_b": kjv if swap else web,
                "label": "paraphrase" if kind == "same" else "different",
                "kind": kind,
            }
        )
    rng.shuffle(pairs)
    return pairs


def main(root: str) -> None:
    verses = align(Path(root))
    verses = {
        ref: pair
        for ref, pair in verses.items()
        if all(MIN_WORDS <= len(t.split()) <= MAX_WORDS for t in pair)
    }
    print(f"verses with {MIN_WORDS}-{MAX_WORDS} words in both: {len(verses)}")
    rng = random.Random(SEED)
    pools = split_chapters(verses, rng)
    out = Path(__file__).resolve().parents[1] / "data" / "bible_paraphrase"
    out.mkdir(parents=True, exist_ok=True)
    for split, refs in pools.items():
        pairs = make_pairs(split, refs, verses, rng)
        with (out / f"{split}.jsonl").open("w") as f:
            f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
        kinds = {k: sum(p["kind"] == k for p in pairs) for k in ("same", "neighbour", "random")}
        print(split, len(pairs), f"from {len(refs)} verses", kinds)


if __name__ == "__main__":
    main(sys.argv[1])
