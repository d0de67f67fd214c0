"""Byte-level BPE's byte ↔ character alphabet (GPT-2's), shared by the teacher's token answers and
the teacher-layers summarizer's vocabulary."""

from __future__ import annotations


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-level BPE table: each byte → the printable character that stands for it in
    the vocabulary (' ' → 'Ġ'). The inverse turns a vocabulary entry back into its bytes."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars
