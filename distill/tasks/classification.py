"""Classification of one text: the teacher gives a class distribution over the label words,
the student a label head on the shared encoder's mean-pooled states, trained with
soft_weight · T²·KL + (1 − soft_weight) · CE."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from distill.core.data import Example, read_jsonl
from distill.core.errors import ConfigError, DistillError
from distill.core.losses import IGNORE_INDEX, distillation_loss
from distill.core.tensors import length_mask, pad
from distill.eval.metrics.cascade import cascade_inputs, cascade_section
from distill.eval.metrics.classification import classification_metrics, macro_f1
from distill.tasks.base import Task, TimedCalls
from distill.tasks.rationale import Rationale, ask_rationales
from distill.teach.calibration import CONTENT_FREE_INPUTS, at_search_bound, calibrate, fit_temperature, nll
from distill.teach.prompts import classification_prompt, few_shot_examples, template_version
from distill.teach.select import PSEUDO_LABEL
from distill.train.batches import TaskTensors


@dataclass
class ClassificationOptions:
    text_field: str = "text"
    """The input text column."""
    label_field: str | None = "label"
    """Gold label column; rows may lack it (then the teacher's argmax is the hard label)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Label → verbalizer, the word the teacher answers with."""
    rationale: bool = False
    """Also ask the teacher why it gave each train row its label (one or two sentences, cached);
    with train.rationales the shared decoder learns them as task NAME_rationale (rationale.py)."""


class Classification(Task):
    kind = "classification"
    headline = "accuracy"
    Options = ClassificationOptions
    selectable = True

    @classmethod
    def check_config(cls, cfg) -> None:
        where = f"tasks.{cfg.name}"
        labels = cfg.options.labels
        if len(labels) < 2:
            raise ConfigError(f"{where}.labels: a classification task needs at least two labels")
        for label, verbalizer in labels.items():
            if not str(verbalizer).strip():
                raise ConfigError(f"{where}.labels.{label}: empty verbalizer")

    def check_pipeline(self, pipeline) -> None:
        cal, teach = pipeline.teach.calibration, pipeline.teach
        data = self.cfg.data
        if cal.temperature and cal.split not in data:
            raise ConfigError(
                f"teach.calibration.split: task {self.name} has no {cal.split} split "
                "to fit the temperature on"
            )
        if teach.few_shot and teach.few_shot_split not in data:
            raise ConfigError(
                f"teach.few_shot_split: task {self.name} has no {teach.few_shot_split} split to draw "
                "demonstrations from"
            )
        scored = data.get(pipeline.eval.split)
        fitted_on = {
            "teach.calibration.split": cal.split if cal.temperature else None,
            "teach.few_shot_split": teach.few_shot_split if teach.few_shot else None,
        }
        for key, split in fitted_on.items():
            if split and split != pipeline.eval.split and split in data and data[split] == scored:
                raise ConfigError(
                    f"{key}: task {self.name} reads {split} from {scored}, the same file as "
                    f"eval.split {pipeline.eval.split!r}"
                )

    @classmethod
    def spec_options(cls, entry):
        return cls.Options(labels={label: label for label in entry["labels"] or []})

    @property
    def labels(self) -> list[str]:
        return list(self.options.labels)

    # --- data and teacher -------------------------------------------------------------------
    def example(self, row: dict[str, Any], index: int, where: str) -> Example:
        return {
            "id": str(row.get("id", index)),
            "text": self._text(row, self.options.text_field, where, index),
            "label": self._label(row, index, where),
        }

    def data_row(self, example: dict[str, Any]) -> dict[str, Any]:
        """``example`` back in the task's data format (its fields), without a gold label: the form
        of a served request in the traffic log, which the task reads back as train rows."""
        row = {self.options.text_field: example["text"]}
        return {"id": example["id"], **row} if "id" in example else row

    def _label(self, row: dict[str, Any], index: int, where: str) -> str | None:
        column = self.options.label_field
        label = row.get(column) if column else None
        if label is None:
            return None
        label = str(label)
        if label not in self.options.labels:
            raise DistillError(
                f"{where}: row {index} has unknown label {label!r} (labels: {', '.join(self.labels)})"
            )
        return label

    def body(self, example: Example) -> str:
        """The input as the prompt shows it."""
        return f"Text: {example['text']}"

    def content_free_example(self, text: str, index: int) -> Example:
        """An input that says nothing (``text`` is "N/A", "" …), for the content-free prior."""
        return {"id": f"content-free-{index}", "text": text}

    def prompt(self, example: Example, shots: list[Example]):
        return classification_prompt(self.cfg, example, shots, self.body)

    def taught_splits(self, pipeline) -> list[str]:
        """teach.splits, plus the calibration dev split when a temperature is fitted."""
        splits = list(pipeline.teach.splits)
        cal = pipeline.teach.calibration
        if cal.temperature and cal.split not in splits:
            splits.append(cal.split)
        return splits

    def shots(self, pipeline, pool: list[Example] | None) -> list[Example]:
        """The demonstrations teach shows in every prompt (from ``teach.few_shot_split``); any
        stage rebuilds the exact prompts with them."""
        if not pipeline.teach.few_shot:
            return []
        if pool is None:
            pool = self.load_split(pipeline.teach.few_shot_split)
        return few_shot_examples(self.cfg, pool, pipeline.teach.few_shot)

    def ask_rows(self, cached, rows, shots, progress=None):
        return cached.label_distribution(
            [self.prompt(ex, shots) for ex in rows],
            list(self.options.labels.values()),
            template_version(self.cfg, self.options.labels),
            progress,
        )

    def teach(self, cached, pipeline, examples, shots):
        answers = self._ask_splits(
            pipeline, examples, lambda exs, progress: self.ask_rows(cached, exs, shots, progress)
        )
        cal = pipeline.teach.calibration
        if cal.prior == "none" and not cal.temperature:
            return answers, None
        return answers, self._fit_calibration(cached, pipeline, answers, examples, shots)

    def _fit_calibration(self, cached, pipeline, answers, examples, shots) -> dict[str, Any]:
        """The prior and temperature for this task, from raw (uncalibrated) answers."""
        cal = pipeline.teach.calibration
        fitted: dict[str, Any] = {"prior": None, "prior_source": cal.prior, "temperature": None}
        if cal.prior == "content_free":
            blanks = [self.content_free_example(t, i) for i, t in enumerate(CONTENT_FREE_INPUTS)]
            # The exact prompt real rows get, demonstrations included (Zhao et al. 2021): the prior
            # being divided out is the one this prompt induces.
            got = cached.label_distribution(
                [self.prompt(b, shots) for b in blanks],
                list(self.options.labels.values()),
                template_version(self.cfg, self.options.labels),
            )
            good = [a["distribution"] for a in got if "error" not in a]
            if not good:
                raise DistillError(
                    f"teach.calibration: the content-free inputs got no answer ({got[0]['error']})"
                )
            fitted["prior"] = np.mean(good, axis=0).tolist()
        elif cal.prior == "pool_mean":
            good = [a["distribution"] for a in answers["train"] if "error" not in a]
            fitted["prior"] = np.mean(good, axis=0).tolist()
        if cal.temperature:
            fitted.update(
                self._fit_temperature(answers[cal.split], examples[cal.split], fitted["prior"], cal.split)
            )
        return fitted

    def _fit_temperature(self, answers, examples, prior, split: str) -> dict[str, Any]:
        names = self.labels
        pairs = [
            (a["distribution"], names.index(ex["label"]))
            for a, ex in zip(answers, examples)
            if "error" not in a and ex["label"] is not None
        ]
        if len(pairs) < 10:
            raise DistillError(
                f"teach.calibration: task {self.name} has {len(pairs)} gold-labeled {split} answers; "
                "fitting a temperature needs at least 10"
            )
        dists = calibrate(np.array([p[0] for p in pairs]), prior, None)
        gold = np.array([p[1] for p in pairs])
        tau = fit_temperature(dists, gold)
        if at_search_bound(tau):
            print(
                f"teach: warning: task {self.name}: the fitted temperature {tau:.3g} "
                "sits at the search bound: its answers say little about the gold labels",
                file=sys.stderr,
            )
        return {
            "temperature": tau,
            "dev_nll": {
                "before": round(nll(dists, gold), 4),
                "after": round(nll(calibrate(dists, None, tau), gold), 4),
                "rows": len(pairs),
            },
        }

    def output_rows(self, examples, answers, fitted):
        names = self.labels
        raw = np.array([a["distribution"] for a in answers])
        dists = calibrate(raw, fitted["prior"], fitted["temperature"]) if fitted else raw
        rows = []
        for ex, a, dist, raw_dist in zip(examples, answers, dists.tolist(), raw.tolist()):
            row = {
                **ex,
                "teacher_distribution": dist,
                "teacher_label": names[max(range(len(names)), key=dist.__getitem__)],
                "teacher_label_mass": a["label_mass"],
                "teacher_method": a.get("method", "verbalizer_logits"),
            }
            if fitted:
                row["teacher_distribution_raw"] = raw_dist
            rows.append(row)
        return rows

    def pseudo_rows(self, examples, probs):
        names = self.labels
        return [
            {
                **ex,
                "teacher_distribution": p.tolist(),
                "teacher_label": names[int(p.argmax())],
                "teacher_label_mass": None,
                "teacher_method": PSEUDO_LABEL,
            }
            for ex, p in zip(examples, probs)
        ]

    def rationales(self, cached, pipeline, split, rows):
        return ask_rationales(self, cached, split, rows) if self.options.rationale else None

    def rationale_task(self):
        return Rationale(self) if self.options.rationale else None

    def split_counts(self, rows):
        methods: dict[str, int] = {}
        for r in rows:
            methods[r["teacher_method"]] = methods.get(r["teacher_method"], 0) + 1
        taught = [r for r in rows if r["teacher_method"] != PSEUDO_LABEL]
        return {
            "rows": len(rows),
            "with_gold": sum(r["label"] is not None for r in rows),
            "teacher_labels": {name: sum(r["teacher_label"] == name for r in rows) for name in self.labels},
            "mean_label_mass": round(sum(r["teacher_label_mass"] for r in taught) / max(len(taught), 1), 4),
            "methods": methods,
        }

    # --- student ----------------------------------------------------------------------------
    def student_entry(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": self.labels, "prefix": None}

    def exporter(self, spec) -> str:
        return "classifier"  # distill/ship/export/classifier.py

    def probe_row(self, text: str) -> dict[str, Any]:
        return {"text": text}

    def encode(
        self, rows: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> dict[str, list[list[int]]]:
        """input_ids (and, for kinds with segments, token_type_ids) per row, unpadded."""
        return {
            "input_ids": tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)[
                "input_ids"
            ]
        }

    def tensors(self, rows, tokenizer, spec, train, codec=None) -> TaskTensors:
        rows, counts = self._trusted(rows, train.teacher_confidence)
        encoded = self.encode(rows, tokenizer, spec.max_length)
        targets = self._targets(rows, train.hard_labels)
        if train.teacher_confidence is not None and train.teacher_confidence.weight:
            targets["row_weight"] = targets["teacher_probs"].max(-1).values
        return TaskTensors(
            self.name,
            encoded["input_ids"],
            token_type_ids=encoded.get("token_type_ids"),
            row_targets=targets,
            batch_size=train.batch_size,
            counts=counts,
        )

    def _trusted(self, rows, trust) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """train.teacher_confidence: the rows kept (min) and what was set aside or weighted."""
        if trust is None:
            return rows, None
        confidence = np.array([max(r["teacher_distribution"]) for r in rows])
        if trust.weight:
            return rows, {"weighted_by": trust.weight, "mean_weight": round(float(confidence.mean()), 4)}
        kept = [r for r, c in zip(rows, confidence) if c >= trust.min]
        if not kept:
            raise DistillError(
                f"task {self.name}: train.teacher_confidence.min {trust.min} drops every train row "
                f"(the teacher's highest confidence is {confidence.max():.3f})"
            )
        return kept, {"min_confidence": trust.min, "kept": len(kept), "dropped": len(rows) - len(kept)}

    def _targets(self, rows, source: str) -> dict[str, torch.Tensor]:
        """teacher_probs (rows, labels), and labels (rows,) for CE: gold (IGNORE_INDEX where a row
        has none) or the teacher's argmax; no labels for pure KD."""
        out = {"teacher_probs": torch.tensor([r["teacher_distribution"] for r in rows])}
        if source == "gold":
            names = self.labels
            out["labels"] = torch.tensor(
                [names.index(r["label"]) if r["label"] is not None else IGNORE_INDEX for r in rows]
            )
        elif source == "teacher":
            out["labels"] = torch.tensor([self.labels.index(r["teacher_label"]) for r in rows])
        return out

    def loss(self, model, inputs, train):
        model_inputs = ("input_ids", "attention_mask", "token_type_ids")
        out = model(self.name, **{k: inputs[k] for k in model_inputs if k in inputs})
        soft_weight = train.soft_weight if self.cfg.soft_weight is None else self.cfg.soft_weight
        temperature = train.kd_temperature if self.cfg.kd_temperature is None else self.cfg.kd_temperature
        logits = out.pop("logits")  # (batch, labels)
        parts = distillation_loss(
            logits,
            inputs["teacher_probs"],
            inputs.get("labels"),
            temperature,
            soft_weight,
            inputs.get("row_weight"),
        )
        return {**parts, **out}  # plus the sharing losses, if any

    # --- eval -------------------------------------------------------------------------------
    @torch.inference_mode()
    def student_probs(self, student, tokenizer, rows, batch: int) -> np.ndarray:
        """(n, labels) class probabilities on the student's device, from the inputs training saw."""
        encoded = self.encode(rows, tokenizer, student.spec.max_length)
        ids, segments = encoded["input_ids"], encoded.get("token_type_ids")
        device = next(student.parameters()).device
        out = []
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            x = pad(chunk, tokenizer.pad_token_id).to(device)
            types = pad(segments[start : start + batch], 0).to(device) if segments else None
            logits = student.classify(self.name, x, length_mask(chunk).to(device), types)
            out.append(logits.float().softmax(-1).cpu())
        return torch.cat(out).numpy()

    def evaluate(self, pipeline, rows, student, tokenizer, resamples):
        from distill.core.layout import output_path

        probs = self.student_probs(student, tokenizer, rows, pipeline.eval.batch_size)
        train_rows = read_jsonl(output_path(pipeline, self.name, "train"))
        min_mass = pipeline.teach.teacher.min_label_mass
        section = classification_metrics(self.labels, rows, probs, train_rows, resamples, min_mass)
        section["taught_train_rows"] = dict(Counter(r["teacher_method"] for r in train_rows))
        defer = pipeline.serve.defer
        validation = self._cascade_inputs(pipeline, student, tokenizer)
        section["cascade"] = cascade_section(
            validation, cascade_inputs(self.labels, rows, probs), resamples, defer.rate, defer.accuracy
        )
        return section, self._scores(probs.argmax(-1), rows)

    def _cascade_inputs(self, pipeline, student, tokenizer) -> dict[str, np.ndarray] | None:
        """The taught validation rows' cascade inputs (where the thresholds are chosen), or None."""
        from distill.core.layout import output_path

        path = output_path(pipeline, self.name, "validation")
        if pipeline.eval.split == "validation" or not path.is_file():
            return None
        rows = read_jsonl(path)
        if not rows:
            return None
        probs = self.student_probs(student, tokenizer, rows, pipeline.eval.batch_size)
        return cascade_inputs(self.labels, rows, probs)

    def _scores(self, predicted: np.ndarray, rows) -> dict[str, np.ndarray]:
        gold = np.array([self.labels.index(r["label"]) if r["label"] is not None else -1 for r in rows])
        correct = np.where(gold >= 0, (predicted == gold).astype(float), np.nan)
        return {"accuracy": correct, "prediction": predicted, "gold": gold}

    def row_scores(self, pipeline, rows, student, tokenizer):
        probs = self.student_probs(student, tokenizer, rows, pipeline.eval.batch_size)
        return self._scores(probs.argmax(-1), rows)

    def teacher_row_scores(self, rows):
        return self._scores(np.array([self.labels.index(r["teacher_label"]) for r in rows]), rows)

    def aggregate(self, scores):
        labeled = scores["gold"] >= 0
        return {
            "accuracy": float(np.nanmean(scores["accuracy"])),
            "macro_f1": macro_f1(scores["prediction"][labeled], scores["gold"][labeled]),
        }

    def timed_calls(self, pipeline, rows, student, tokenizer, teacher) -> TimedCalls:
        calls: TimedCalls = {
            "student": (lambda b: self.student_probs(student, tokenizer, list(b), len(b)), rows)
        }
        if teacher is not None:
            shots, verbalizers = self.shots(pipeline, None), list(self.options.labels.values())
            prompts = [self.prompt(r, shots) for r in rows]
            calls["teacher"] = (lambda b: list(teacher.label_distribution(b, verbalizers)), prompts)
        return calls
