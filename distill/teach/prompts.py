"""Prompt templates. A template's version is part of every cache key, so editing a
template (or its version) never serves answers written for the old one."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from distill.core.config import TaskConfig
from distill.core.data import Example

PROMPT_VERSION = "v1"

CLASSIFY_INSTRUCTION = "Classify the text into one of these labels: {choices}."
SUMMARIZE_INSTRUCTION = "Summarize the following text in two or three sentences."
ANSWER_PREFIX = "Answer:"
"""Classification prompts end here, so the next token is the verbalizer (after a space)."""


@dataclass(frozen=True)
class Prompt:
    """A user turn ``head + body + tail`` and the text the assistant's reply begins with.

    ``body`` is the input itself: the one part a backend may shorten to fit its context.
    """

    head: str
    body: str
    tail: str = ""
    assistant_prefix: str = ""

    @property
    def user(self) -> str:
        return self.head + self.body + self.tail


def template_version(task: TaskConfig, labels: dict[str, str] | None = None) -> str:
    """PROMPT_VERSION plus a hash of everything that shapes this task's prompt: its kind,
    instruction and (a classification kind's) label → verbalizer map."""
    parts = [PROMPT_VERSION, task.kind, task.instruction or "", repr(sorted((labels or {}).items()))]
    return f"{PROMPT_VERSION}-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:12]}"


RATIONALE_INSTRUCTION = (
    "In one or two sentences, explain why the answer is {label}. Reply with the explanation only."
)


def rationale_prompt(task: TaskConfig, body: str, label_word: str) -> Prompt:
    """The teacher asked why it gave a row its label (distilling step-by-step, Hsieh et al. 2023):
    the task's own question and input (``body``, as the label prompt shows it), its answer, then
    the request for a reason."""
    choices = ", ".join(task.options.labels.values())
    instruction = (task.instruction or CLASSIFY_INSTRUCTION).format(choices=choices)
    why = RATIONALE_INSTRUCTION.format(label=label_word)
    return Prompt(head=f"{instruction}\n\n", body=body, tail=f"\n\n{ANSWER_PREFIX} {label_word}\n\n{why}")


def rationale_version(task: TaskConfig) -> str:
    """The rationale template's version: the label prompt's, plus a hash of the request."""
    digest = hashlib.sha256(RATIONALE_INSTRUCTION.encode()).hexdigest()[:8]
    return f"{template_version(task, task.options.labels)}-why-{digest}"


def text_body(example: Example) -> str:
    return f"Text: {example['text']}"


def classification_prompt(
    task: TaskConfig,
    example: Example,
    shots: Sequence[Example] = (),
    body: Callable[[Example], str] = text_body,
) -> Prompt:
    """Instruction, optional labeled shots, the example, then 'Answer:' for the label word.
    ``body`` shows an example's input (the task kind decides: one text, a pair …); the
    verbalizers are the kind's ``labels`` option."""
    labels = task.options.labels
    choices = ", ".join(labels.values())
    instruction = (task.instruction or CLASSIFY_INSTRUCTION).format(choices=choices)
    blocks = [instruction]
    for shot in shots:
        blocks.append(f"{body(shot)}\n{ANSWER_PREFIX} {labels[shot['label']]}")
    return Prompt(
        head="\n\n".join(blocks) + "\n\n",
        body=body(example),
        tail=f"\n\nAnswer with one word: {choices}.",
        assistant_prefix=ANSWER_PREFIX,
    )


def summary_prompt(task: TaskConfig, example: Example) -> Prompt:
    instruction = task.instruction or SUMMARIZE_INSTRUCTION
    return Prompt(head=f"{instruction}\n\n", body=example["document"])


def few_shot_examples(task: TaskConfig, pool: list[Example], k: int) -> list[Example]:
    """k gold-labeled examples, cycling through the labels so each is shown."""
    if k == 0:
        return []
    by_label: dict[str, list[Example]] = {label: [] for label in task.options.labels}
    for ex in pool:
        if ex["label"] is not None:
            by_label[ex["label"]].append(ex)
    shots: list[Example] = []
    depth = 0
    while len(shots) < k and any(len(v) > depth for v in by_label.values()):
        shots += [v[depth] for v in by_label.values() if len(v) > depth][: k - len(shots)]
        depth += 1
    return shots
