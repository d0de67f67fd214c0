"""A report table: formatted cells built once, rendered to markdown or HTML."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


def fmt(value: Any, spec: str = "{:.3f}") -> str:
    if value is None:
        return "n/a"
    return spec.format(value) if isinstance(value, float) else str(value)


def cell(node: dict[str, Any] | None, key: str) -> str:
    """'0.812 [0.771, 0.850]': a figure and its 95% interval."""
    if not node or key not in node:
        return ""
    ci = node.get(f"{key}_ci95")
    return fmt(node[key]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
