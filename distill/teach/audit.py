"""Teacher labels checked before they are learned: the rows a calibrated teacher was least sure
of, which teach writes to ``teach/<task>/audit.jsonl`` for a person to look at (beside the
teacher's per-class precision and recall on the validation gold, in the teach manifest)."""

from __future__ import annotations

from typing import Any

from distill.teach.select import PSEUDO_LABEL


def least_sure(rows_by_split: dict[str, list[dict[str, Any]]], n: int) -> list[dict[str, Any]]:
    """The ``n`` taught rows (every split; pseudo labels excluded) with the lowest top teacher
    probability, least sure first (ties: split, then file order): each with its split, its
    confidence and the margin between its top two classes."""
    scored = []
    for split, rows in rows_by_split.items():
        for i, row in enumerate(rows):
            if row.get("teacher_method") == PSEUDO_LABEL:  # not the teacher's answer
                continue
            top = sorted(row["teacher_distribution"], reverse=True)
            margin = top[0] - (top[1] if len(top) > 1 else 0.0)
            scored.append((top[0], split, i, {"split": split, **row, "teacher_confidence": round(top[0], 6),
                                              "teacher_margin": round(margin, 6)}))  # fmt: skip
    order = sorted(scored, key=lambda s: (s[0], list(rows_by_split).index(s[1]), s[2]))
    return [s[3] for s in order[:n]]
