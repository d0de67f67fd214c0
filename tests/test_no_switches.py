"""No stage switches on a plugin's details: outside the task kinds (distill/tasks/) and the
summarizers (distill/student/summarizers/), no code compares a task's kind, a student's
summarizer or a task's labels against a literal, and no code compares with (or dispatches on)
a string naming a task kind or a summarizer. Such code asks the plugin instead (``Task.exporter``,
``StudentSpec.summarizer_class``, ``StudentSpec.head_labels`` …), so adding a kind or a
summarizer is its own file plus its registry entry.

An AST check, not a grep: it reads comparisons (``==``, ``!=``, ``in``, ``is`` …), ``match``
cases and dict-literal dispatch tables, and it ignores docstrings and messages that merely name
a kind.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from distill.student.summarizers import SUMMARIZERS
from distill.tasks import KINDS
from distill.teach.teachers import BACKENDS

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "distill"
PLUGINS = ("distill/tasks/", "distill/student/summarizers/", "distill/teach/teachers/")
"""Where a plugin's own details live: the kinds, summarizers and backends may name themselves."""
NAMES = frozenset(KINDS) | frozenset(SUMMARIZERS) | frozenset(BACKENDS)
"""Every registered kind, summarizer and teacher backend name (a new one is covered by
registering it)."""
SUBJECTS = ("kind", "summarizer", "labels", "backend")
"""Fields whose comparison with a literal is a switch on a plugin's details."""
KNOWN: set[tuple[str, str]] = set()
"""Switches left for their owners (each one a follow-up, not a precedent): none."""


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(_is_literal(e) for e in node.elts)
    return False


def _names_a_plugin(node: ast.AST) -> bool:
    """A string literal (or a collection of them) naming a registered kind or summarizer."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_plugin(e) for e in node.elts)
    return False


def _case_names_a_plugin(pattern: ast.pattern) -> bool:
    return any(_names_a_plugin(n.value) for n in ast.walk(pattern) if isinstance(n, ast.MatchValue))


def _is_subject(node: ast.AST) -> bool:
    """``x.kind``, ``x["kind"]``, ``x.get("kind")`` (and the same for summarizer, labels)."""
    if isinstance(node, ast.Attribute):
        return node.attr in SUBJECTS
    if isinstance(node, ast.Subscript):
        key = node.slice
        return isinstance(key, ast.Constant) and key.value in SUBJECTS
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        first = node.args[0] if node.args else None
        return isinstance(first, ast.Constant) and first.value in SUBJECTS
    return False


def switches(source: str) -> list[str]:
    """Every switch on a plugin's details in ``source``, as "line: code"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            subject = any(_is_subject(o) for o in operands) and any(_is_literal(o) for o in operands)
            if subject or any(_names_a_plugin(o) for o in operands):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.match_case) and _case_names_a_plugin(node.pattern):
            found.append(f"{node.pattern.lineno}: case {ast.unparse(node.pattern)}")
        elif isinstance(node, ast.Dict) and any(k is not None and _names_a_plugin(k) for k in node.keys):
            found.append(f"{node.lineno}: dispatch table {ast.unparse(node)[:60]}")
    return found


def test_no_stage_switches_on_a_kind_a_summarizer_or_labels():
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(REPO))
        if where.startswith(PLUGINS):
            continue
        found |= {(where, hit.split(": ", 1)[1]) for hit in switches(path.read_text())}
    assert found - KNOWN == set()


@pytest.mark.parametrize(
    "code",
    [
        'if entry["labels"] is None: pass',
        'if spec.tasks[t].get("labels") is not None: pass',
        'if spec.summarizer == "teacher_layers": pass',
        'ok = spec.summarizer != "bert2bert"',
        'if task.kind in ("classification", "sentence_pair"): pass',
        'if cfg["kind"] == "summarization": pass',
        'ok = "sentence_pair" == name',
        'match name:\n    case "bert2bert":\n        pass',
        'write = {"teacher_layers": a, "bert2bert": b}[spec.summarizer]',
    ],
)
def test_each_form_of_a_switch_is_caught(code):
    assert len(switches(code)) == 1, code


@pytest.mark.parametrize(
    "code",
    [
        'raise ValueError("a BERT2BERT summarizer: export the classification tasks alone")',
        'x = {"kind": task.kind, "summarizer": spec.summarizer}',
        "if labels is not None: loss = ce(logits, labels)",  # a tensor argument, not a task's labels
        "exporter = EXPORTERS[task.exporter(spec)]",
        'ok = answer_kind == "summary"',
    ],
)
def test_what_is_not_a_switch_passes(code):
    assert switches(code) == []


def _at_layout_commit(path: str) -> str:
    old = subprocess.run(["git", "show", f"08c4908:{path}"], cwd=REPO, capture_output=True, text=True)
    if old.returncode != 0:
        pytest.skip("no git history here")
    return old.stdout


def test_export_and_student_as_they_were_are_caught():
    """The check finds the switches of export and the student at the layout commit (08c4908),
    before they asked the task kinds and summarizers."""
    found = {hit.split(": ", 1)[1] for hit in switches(_at_layout_commit("distill/ship/export/run.py"))}
    assert found == {
        "entry['labels'] is None",
        "entry['labels'] is not None",
        "spec.summarizer == 'bert2bert'",
        "spec.summarizer == 'teacher_layers'",
        "spec.tasks[t]['labels'] is None",
    }
    found = {hit.split(": ", 1)[1] for hit in switches(_at_layout_commit("distill/student/model.py"))}
    assert {
        "cfg.summarizer == 'bert2bert'",
        "cfg.summarizer == 'teacher_layers'",
        "spec.summarizer != 'teacher_layers'",
        "self.spec.tasks[task]['labels'] is None",
    } <= found
