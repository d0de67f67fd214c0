"""``eval.gates`` held against a report: each gate's figure found by its dotted path in
report.json and checked against its min and/or max. Gates decide promotion, so a figure with no
value (None: not measured; NaN: no row to measure it on) fails its gate rather than passing."""

from __future__ import annotations

import math
from typing import Any

from distill.core.config.eval import Gate
from distill.core.errors import DistillError


def lookup(report: dict[str, Any], dotted: str) -> Any:
    """The report.json value at ``dotted``; a path that starts with a task name is read under
    ``tasks`` (``fine_foods.student.accuracy``)."""
    node: Any = report["tasks"] if dotted.split(".")[0] in report["tasks"] else report
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise DistillError(f"eval.gates: {dotted!r} is not in the report")
        node = node[key]
    return node


def within(value: float | None, gate: Gate) -> bool:
    """Whether ``value`` is measured and inside ``gate``'s bounds (both inclusive)."""
    if value is None or math.isnan(value):
        return False
    return (gate.min is None or value >= gate.min) and (gate.max is None or value <= gate.max)


def check_gates(report: dict[str, Any], gates: dict[str, Gate]) -> dict[str, Any]:
    """Per gate: the figure, its bounds and whether it passed (what report.json and the run
    records store)."""
    results = {}
    for path, gate in gates.items():
        value = lookup(report, path)
        if value is not None and not isinstance(value, (int, float)):
            raise DistillError(
                f"eval.gates: {path!r} is a {type(value).__name__} in the report, not a number"
            )
        results[path] = {"value": value, "min": gate.min, "max": gate.max, "passed": within(value, gate)}
    return results
