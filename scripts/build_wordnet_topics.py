"""Rebuild data/wordnet_topics/*.jsonl: WordNet noun definitions labelled with their lexicographer file.

    apt-get download wordnet-base && dpkg -x wordnet-base_*.deb /tmp/wordnet
    python scripts/build_wordnet_topics.py /tmp/wordnet

Each synset line of `data.noun` reads `offset lex_filenum ss_type w_cnt(hex) word lex_id ...
| gloss`. The label is the lexicographer file (noun.person, noun.animal, ...) of eight large
noun categories. The text is the definition part of the gloss: quoted example sentences after
`; "` are dropped because they usually contain the head word. Synsets whose definition still
contains a quote, is shorter than four words, or contains a word of any of the synset's own
lemmas or a word starting with one ("food that is simply prepared ..." for comfort_food,
"northeastern" for northeast) are skipped, so the text never names the thing defined. Each
class contributes the same number of seeded random synsets to every split, so the majority
baseline is exactly 1/8.
"""

import json
import random
import re
import sys
from pathlib import Path

SEED = 13
PER_CLASS = {"train": 300, "validation": 50, "test": 100}
MIN_WORDS = 4
# Lexicographer file numbers (lexnames(5WN)). All eight have >2500 synsets; noun.state,
# noun.attribute, noun.substance and noun.cognition are as large but abstract and overlapping.
CATEGORIES = {
    "04": "act",
    "05": "animal",
    "06": "artifact",
    "10": "communication",
    "13": "food",
    "15": "location",
    "18": "person",
    "20": "plant",
}
# Function words inside multi-word lemmas (kingdom_of_heaven) that may appear in any definition.
STOPWORDS = {"the", "of", "and", "for", "in", "to", "a", "an", "or", "on", "with", "by", "at", "from", "as"}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def names_itself(definition: str, lemmas: list[str]) -> bool:
    """Whether the definition uses a word of the synset's lemmas, or one derived from it
    ("plants", "northeastern", "Asclepiadaceae" for plant, northeast, asclepiad)."""
    lemma_words = {w for lemma in lemmas for w in words(lemma) if w not in STOPWORDS and len(w) > 2}
    return any(d == w or (len(w) >= 4 and d.startswith(w)) for d in words(definition) for w in lemma_words)


def parse_synset(line: str) -> dict | None:
    """One data.noun line -> row, or None when it is not in CATEGORIES or its text is unusable."""
    fields = line.split(" ")
    label = CATEGORIES.get(fields[1])
    if label is None:
        return None
    lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(int(fields[3], 16))]
    gloss = line.split(" | ", 1)[1].strip()
    definition = gloss.split('; "')[0].rstrip("; ").strip()
    if '"' in definition or len(definition.split()) < MIN_WORDS:
        return None
    if names_itself(definition, lemmas):
        return None
    # Glosses quote as `like this' and sometimes keep a lemma's underscores (comic_strip).
    definition = definition.replace("`", "'").replace("_", " ")
    return {"id": fields[0], "text": definition, "label": label, "lemma": lemmas[0]}


def read_synsets(data_noun: Path) -> dict[str, list[dict]]:
    by_label: dict[str, list[dict]] = {label: [] for label in CATEGORIES.values()}
    seen_texts: set[str] = set()
    with data_noun.open() as f:
        for line in f:
            if line.startswith("  "):  # the license header
                continue
            row = parse_synset(line)
            if row and row["text"] not in seen_texts:
                seen_texts.add(row["text"])
                by_label[row["label"]].append(row)
    return by_label


def main(root: str) -> None:
    by_label = read_synsets(Path(root) / "usr/share/wordnet/data.noun")
    rng = random.Random(SEED)
    splits: dict[str, list[dict]] = {split: [] for split in PER_CLASS}
    for label, rows in by_label.items():
        picked = rng.sample(rows, sum(PER_CLASS.values()))
        print(f"{label:14s} usable {len(rows):5d}")
        start = 0
        for split, n in PER_CLASS.items():
            splits[split].extend(picked[start : start + n])
            start += n
    out = Path(__file__).resolve().parents[1] / "data" / "wordnet_topics"
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        rng.shuffle(rows)
        with (out / f"{split}.jsonl").open("w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        counts = {label: sum(r["label"] == label for r in rows) for label in CATEGORIES.values()}
        print(split, len(rows), counts)


if __name__ == "__main__":
    main(sys.argv[1])
