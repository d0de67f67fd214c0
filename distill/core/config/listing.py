"""What ``distill config`` prints: the resolved pipeline as a table of (key, type, value, doc),
one key per line, plugin options included, so a reader sees every setting a run will use and
what it means without opening the schema's source."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from distill.core.config.loader import described
from distill.core.errors import ConfigError

Row = tuple[str, str, str, str]

TYPE_WIDTH = 18
VALUE_WIDTH = 24
KEY_WIDTH = 40
GAP = "  "


def config_rows(cfg: Any, prefix: str | None = None) -> list[Row]:
    """(key, type, value as written in YAML, doc) of every leaf key under the dotted ``prefix``
    (a whole segment: ``train.weighting``, ``tasks.fine_foods``); ConfigError naming an unknown one."""
    rows = [(key, kind, _value_text(value), doc) for key, kind, value, doc in described(cfg)]
    if not prefix:
        return rows
    prefix = prefix.strip(".")
    picked = [r for r in rows if r[0] == prefix or r[0].startswith(prefix + ".")]
    if not picked:
        raise ConfigError(f"{prefix}: no such key or section ({_known_under(rows, prefix)})")
    return picked


def _known_under(rows: list[Row], prefix: str) -> str:
    """The keys one level below the deepest existing parent of ``prefix``, to name in the error."""
    parts = prefix.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        parent = ".".join(parts[:depth])
        under = [r[0] for r in rows if not parent or r[0].startswith(parent + ".")]
        if under:
            children = dict.fromkeys(k.split(".")[depth] for k in under)
            return f"known {'under ' + parent if parent else 'sections'}: {', '.join(children)}"
    return "the pipeline has no keys"


def _value_text(value: Any) -> str:
    """A value as it would be written in the pipeline file or after ``--set KEY=``."""
    return value if isinstance(value, str) and value else json.dumps(value, ensure_ascii=False)


def config_table(rows: list[Row], width: int = 120, wrap: bool = False) -> str:
    """An aligned table fitting ``width`` columns: types and values over their column's width,
    and docs past the line's end, are cut with … (``wrap``: continued on the lines below)."""
    header: Row = ("key", "type", "value", "doc")
    widths = [
        min(max(len(r[0]) for r in (header, *rows)), KEY_WIDTH),
        min(max(len(r[1]) for r in (header, *rows)), TYPE_WIDTH),
        min(max(len(r[2]) for r in (header, *rows)), VALUE_WIDTH),
    ]
    widths.append(max(width - sum(widths) - 3 * len(GAP), 20))
    lines = []
    for row in (header, *rows):
        cells = [_wrapped(text, w) if wrap else [_cut(text, w)] for text, w in zip(row, widths)]
        for i in range(max(map(len, cells))):
            parts = [(c[i] if i < len(c) else "").ljust(w) for c, w in zip(cells, widths)]
            lines.append(GAP.join(parts).rstrip())
    return "\n".join(lines)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _wrapped(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]
