"""`distill export`: a trained student as one folder per task that plain ``transformers`` loads.

- **Classification** → a sequence classifier for ``pipeline("text-classification")``. The student's
  head reads the encoder's states *mean-pooled over real tokens*; a stock
  ``BertForSequenceClassification`` reads the CLS pooler (dense + tanh on the first token), and
  no transformers config option switches a BERT to mean pooling, so the folder ships its own
  ~60-line modeling file (``auto_map``; load with ``trust_remote_code=True``, offline). Its config
  has a model type of its own, so loading it *without* trust_remote_code fails loudly instead of
  silently building a stock classifier from the same weight names. Shared-private and
  adversarial students export exactly too: the file carries the task's private encoder.
- **Summarization, BERT2BERT** → the student's ``EncoderDecoderModel`` (``AutoModelForSeq2SeqLM``)
  with its generation config. transformers 5 removed the ``summarization`` pipeline, so the
  folder is used through ``generate``; the task prefix is in ``config.prefix`` and export.json.
  A private-sharing student's decoder reads shared + private states, which the stock model
  cannot: refused.
- **Summarization, teacher layers** → the cut decoder as its source architecture
  (``AutoModelForCausalLM``, ``pipeline("text-generation")``) with the decoder's tokenizer and
  chat template. A corpus vocabulary is mapped back to the full one (rows outside it zero, and
  ``generation_config.suppress_tokens`` keeps outputs inside it). The bridge (an
  encoder-dependent vector added to every prompt embedding) has no input in a plain causal LM:
  a nonzero bridge is exported as if zero, recorded ``"exact": false``, and measured.

Every task folder is loaded back through transformers and compared with the student's own eval
path on probe texts (or on ``measure_rows``); ``export.json`` records what was written, how to
call it, whether it is exact and why not, and those measurements.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.errors import DistillError
from distill.student.summarizers.teacher_layers.decoder import prompt_parts
from distill.tasks import kind_class, task_from_student

EXPORT_FILE = "export.json"
MODELING_FILE = "modeling_distill.py"
PROBE_TEXTS = [
    "The coffee arrived fresh and it was really wonderful.",
    "Stale, bland and broken: I asked for a refund.",
]
"""Inputs a task folder is checked on when no rows are given (the second grows past any
truncation length in ``_probe_rows``)."""
PROB_TOLERANCE = 1e-4
"""Largest |exported − student| class probability still called the same model (float noise is ~1e-7)."""

MODELING_TEMPLATE = '''"""Written by `distill export`: the distill student's classifier for one task.
A {model_class} encoder whose states are averaged over real tokens (mean pooling, not the CLS pooler), read
by one linear layer; with private sharing, the mean-pooled states of a one-layer private
encoder over the same embeddings are concatenated first. Load with trust_remote_code=True."""

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput
from {module} import {config_class}, {model_class}, {pretrained_class}


class MeanPoolConfig({config_class}):
    model_type = "distill_mean_pool"


def mean_pool(states, attention_mask):
    """(batch, seq, hidden) -> (batch, hidden), averaging real tokens only."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class PrivateEncoder(nn.Module):
    """One pre-norm transformer layer over the encoder's embeddings (distill/sharing.py)."""

    def __init__(self, hidden, heads, feedforward, dropout):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            hidden, heads, feedforward, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(hidden)

    def forward(self, embedded, attention_mask):
        return self.norm(self.layer(embedded, src_key_padding_mask=attention_mask == 0))


class MeanPoolForSequenceClassification({pretrained_class}):
    config_class = MeanPoolConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.{prefix} = {model_class}(config)
        private = config.distill_private
        self.private = None
        if private:
            self.private = PrivateEncoder(
                config.hidden_size, config.num_attention_heads, private["feedforward"], private["dropout"]
            )
        self.dropout = nn.Dropout(config.distill_dropout)
        width = config.hidden_size * (2 if private else 1)
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {{}} if token_type_ids is None else {{"token_type_ids": token_type_ids}}
        states = self.{prefix}(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        pooled = mean_pool(states, attention_mask)
        if self.private is not None:
            embedded = self.{prefix}.embeddings(input_ids=input_ids, **extra)
            private_states = self.private(embedded, attention_mask)
            pooled = torch.cat([pooled, mean_pool(private_states, attention_mask)], -1)
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
'''


# --- task objects -----------------------------------------------------------------------------
def _probe_rows(entry: dict[str, Any], max_length: int) -> list[dict[str, Any]]:
    long = " ".join([PROBE_TEXTS[1]] * (max_length // 4 + 2))  # longer than the truncation length
    texts = [PROBE_TEXTS[0], long]
    if entry["labels"] is None:
        return [{"document": t} for t in texts]
    if kind_class(entry["kind"]).pairs:
        return [{"text": t, "text_pair": t[::-1]} for t in texts]
    return [{"text": t} for t in texts]


# --- classification -----------------------------------------------------------------------------
def _classifier_config(student: Any, name: str, labels: list[str]) -> dict[str, Any]:
    spec, encoder = student.spec, student.encoder
    config = encoder.config.to_dict()
    private = {"feedforward": spec.private_feedforward, "dropout": spec.dropout} if spec.private else None
    config.update(
        model_type="distill_mean_pool",
        architectures=["MeanPoolForSequenceClassification"],
        auto_map={
            "AutoConfig": "modeling_distill.MeanPoolConfig",
            "AutoModelForSequenceClassification": "modeling_distill.MeanPoolForSequenceClassification",
        },
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="single_label_classification",
        distill_private=private,
        distill_dropout=spec.dropout,
        distill_task=name,
    )
    return config


def _write_classifier(student: Any, tokenizer: Any, name: str, folder: Path) -> dict[str, Any]:
    """Write ``folder`` for classification task ``name``; what export.json records of it."""
    from safetensors.torch import save_file

    encoder = student.encoder
    cls = type(encoder)
    base = cls.__bases__[0]  # its PreTrainedModel, whose _init_weights sets the encoder's buffers
    prefix = cls.base_model_prefix
    labels = student.spec.tasks[name]["labels"]
    folder.mkdir(parents=True)
    (folder / MODELING_FILE).write_text(
        MODELING_TEMPLATE.format(
            module=cls.__module__,
            config_class=type(encoder.config).__name__,
            model_class=cls.__name__,
            pretrained_class=base.__name__,
            prefix=prefix,
        )
    )
    config = _classifier_config(student, name, labels)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {f"{prefix}.{k}": v for k, v in encoder.state_dict().items()}
    head = student.heads[name][1]  # Sequential(Dropout, Linear)
    state |= {"classifier.weight": head.weight, "classifier.bias": head.bias}
    if student.spec.private:
        state |= {f"private.{k}": v for k, v in student.private[name].state_dict().items()}
    tensors = {k: v.detach().float().contiguous() for k, v in state.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _save_tokenizer(tokenizer, folder, student.spec.max_length)
    return {
        "kind": student.spec.tasks[name]["kind"],
        "loads_with": "transformers.pipeline('text-classification', model=DIR, trust_remote_code=True)",
        "custom_code": MODELING_FILE,
        "why_custom_code": (
            "the student's head reads mean-pooled encoder states; stock *ForSequenceClassification "
            "models read the CLS pooler, and no config option selects mean pooling"
        ),
        "call": {"top_k": None, "truncation": True},
        "max_length": student.spec.max_length,
        "labels": labels,
        "sharing": student.spec.sharing,
    }


def _save_tokenizer(tokenizer: Any, folder: Path, max_length: int) -> None:
    """The tokenizer, truncating at the student's length when called with truncation=True."""
    saved = tokenizer.model_max_length
    tokenizer.model_max_length = max_length
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.model_max_length = saved


def exported_probs(
    folder: Path, rows: list[dict[str, Any]], labels: list[str], pairs: bool = False
) -> np.ndarray:
    """(n, labels) probabilities of an exported classifier through ``pipeline``, in ``labels`` order."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(folder), trust_remote_code=True, device="cpu")
    return pipeline_probs(classify, rows, labels, pairs=pairs)


def pipeline_probs(
    classify: Any, rows: list[dict[str, Any]], labels: list[str], batch: int = 1, pairs: bool = False
) -> np.ndarray:
    """(n, labels) probabilities from a text-classification pipeline, called as export.json says
    (``pairs``: a sentence-pair task, each row's "text" and "text_pair")."""
    inputs = [{"text": r["text"], "text_pair": r["text_pair"]} if pairs else r["text"] for r in rows]
    out = classify(inputs, top_k=None, truncation=True, batch_size=batch)
    return np.array([[{d["label"]: d["score"] for d in row}[label] for label in labels] for row in out])


def _check_classifier(
    student: Any, tokenizer: Any, name: str, folder: Path, rows: list[dict[str, Any]]
) -> dict:
    labels = student.spec.tasks[name]["labels"]
    ours = task_from_student(name, student.spec.tasks[name]).student_probs(student, tokenizer, rows, 8)
    theirs = exported_probs(folder, rows, labels, kind_class(student.spec.tasks[name]["kind"]).pairs)
    diff = float(np.abs(ours - theirs).max())
    return {
        "rows": len(rows),
        "max_abs_prob_diff": diff,
        "argmax_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).mean()),
        "same": diff <= PROB_TOLERANCE,
    }


# --- summarization: BERT2BERT ------------------------------------------------------------------
def _write_bert2bert(student: Any, tokenizer: Any, name: str, folder: Path, max_new: int) -> dict[str, Any]:
    assert not student.spec.private  # refused by _chosen: the decoder reads shared + private states
    model = student.backbone
    prefix = student.spec.tasks[name]["prefix"]
    model.save_pretrained(folder)
    # The prefix as metadata (transformers 5 has no summarization pipeline to apply it), and
    # greedy decoding as eval runs it; written into the files, the student stays untouched.
    _update_json(folder / "config.json", prefix=prefix)
    generation = copy.deepcopy(model.generation_config)
    generation.update(max_new_tokens=max_new, do_sample=False, num_beams=1)
    generation.save_pretrained(folder)
    _save_tokenizer(tokenizer, folder, student.spec.max_document_length)
    return {
        "kind": student.spec.tasks[name]["kind"],
        "summarizer": "bert2bert",
        "loads_with": "transformers.AutoModelForSeq2SeqLM.from_pretrained(DIR) (EncoderDecoderModel)",
        "why_not_pipeline": "transformers 5 removed the summarization pipeline; call generate",
        "prefix": prefix,
        "max_document_length": student.spec.max_document_length,
        "usage": (
            "tok = AutoTokenizer.from_pretrained(DIR); model = AutoModelForSeq2SeqLM.from_pretrained(DIR); "
            "ids = model.generate(**tok([model.config.prefix + document], truncation=True, "
            "return_tensors='pt')); tok.decode(ids[0], skip_special_tokens=True).strip()"
        ),
        "generation": {
            "max_new_tokens": max_new,
            "num_beams": 1,
            "eos_token_id": generation.eos_token_id,
            "pad_token_id": generation.pad_token_id,
        },  # fmt: skip
    }


def _update_json(path: Path, **values: Any) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def exported_seq2seq_summaries(folder: Path, documents: list[str], batch: int = 8) -> list[str]:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return seq2seq_summaries(AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), tok, documents, batch)


def seq2seq_summaries(model: Any, tok: Any, documents: list[str], batch: int = 8) -> list[str]:
    """Greedy summaries of an exported EncoderDecoderModel, called as export.json says."""
    texts = []
    for start in range(0, len(documents), batch):
        chunk = [model.config.prefix + d for d in documents[start : start + batch]]
        inputs = tok(chunk, truncation=True, padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs)
        texts += [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
    return texts


# --- summarization: teacher layers ---------------------------------------------------------------
def recipe_prompt_ids(tokenizer: Any, before: str, after: str, document: str, max_document: int) -> list[int]:
    """The prompt as a user of the exported folder builds it (export.json ``prompt.input_ids``):
    each piece tokenized on its own, the document cut to ``max_document`` tokens."""

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return ids(before) + ids(document)[:max_document] + ids(after)


def _full_vocabulary(summarizer: Any, codec: Any) -> tuple[Any, list[int]]:
    """The summarizer's LM over the teacher's whole vocabulary, and the ids it may write
    (all, or the corpus vocabulary's kept ids: their rows are copied, the others are zero and
    suppressed at generation)."""
    from transformers import AutoModelForCausalLM

    lm = summarizer.lm
    if codec.vocab is None:
        return lm, list(range(lm.config.vocab_size))
    kept = summarizer.kept_ids  # student id i is teacher id kept[i]
    tok = codec.tokenizer
    config = lm.config.__class__.from_dict(lm.config.to_dict())
    config.vocab_size = max(len(tok), int(kept.max()) + 1)
    config.bos_token_id, config.eos_token_id = tok.bos_token_id, codec.end_id
    config.pad_token_id = tok.pad_token_id
    full = AutoModelForCausalLM.from_config(config).eval()
    state = lm.state_dict()
    for key in ("model.embed_tokens.weight", "lm_head.weight", "lm_head.bias"):
        if key in state:
            rows = state[key].new_zeros((config.vocab_size, *state[key].shape[1:]))
            rows[kept] = state[key]
            state[key] = rows
    full.load_state_dict(state)
    return full, kept.tolist()


def _bridge_norm(summarizer: Any) -> float:
    bridge = summarizer.bridge
    if bridge is None:
        return 0.0
    return float(torch.cat([bridge.weight.flatten(), bridge.bias]).detach().norm())


def _write_causal(student: Any, name: str, folder: Path, max_new: int) -> dict[str, Any]:
    """Write ``folder`` for a teacher-layers summarization task; why it is not exact, if it is not."""
    from transformers import GenerationConfig

    summarizer, codec, spec = student.summarizer, student.codec, student.spec
    model, kept = _full_vocabulary(summarizer, codec)
    stops = codec.teacher(codec.stop_student_ids)
    outside = sorted(set(range(model.config.vocab_size)) - set(kept))
    model.save_pretrained(folder)
    GenerationConfig(
        max_new_tokens=max_new, do_sample=False, num_beams=1, eos_token_id=stops, pad_token_id=stops[0],
        bos_token_id=codec.tokenizer.bos_token_id, suppress_tokens=outside or None,
    ).save_pretrained(folder)  # fmt: skip
    codec.tokenizer.save_pretrained(folder)
    instruction = spec.tasks[name]["instruction"]
    before, after = prompt_parts(codec.tokenizer, instruction)
    reasons = []
    if _bridge_norm(summarizer) > 0:
        reasons.append(
            f"bridge: the student adds bridge(mean-pooled encoder state) to every prompt embedding "
            f"(weights' norm {_bridge_norm(summarizer):.4g}); a plain causal LM has no input for it, so "
            "the export decodes as if the bridge were zero"
        )
    if outside:
        reasons.append(
            f"vocabulary: the student keeps {len(kept)} of {model.config.vocab_size} tokens and read any "
            "other token of a prompt spelled by its bytes; the export reads the token itself (its "
            "outputs stay inside the kept ids through generation_config.suppress_tokens)"
        )
    return {
        "kind": student.spec.tasks[name]["kind"],
        "summarizer": "teacher_layers",
        "architecture": type(model).__name__,
        "loads_with": "transformers.pipeline('text-generation', model=DIR) / AutoModelForCausalLM",
        "decoder_source": spec.decoder_source,
        "decoder_layers": spec.decoder_layers,
        "vocabulary": {"kept": len(kept), "of": model.config.vocab_size},
        "prompt": {
            "instruction": instruction,
            "messages": [{"role": "user", "content": instruction + "\n\n{document}"}],
            "text_before_document": before,
            "text_after_document": after,
            "document_max_tokens": spec.max_document_length,
            "input_ids": (
                "tok(text_before_document, add_special_tokens=False).input_ids + "
                "tok(document, add_special_tokens=False).input_ids[:document_max_tokens] + "
                "tok(text_after_document, add_special_tokens=False).input_ids"
            ),
            "note": (
                "the student read exactly input_ids (each piece tokenized on its own); the "
                "text-generation pipeline with `messages` (document cut to document_max_tokens "
                "first) tokenizes the whole rendered chat at once, which can merge tokens across "
                "the instruction/document boundary differently: see check.pipeline_prompt_matches"
            ),
        },
        "call": {"return_full_text": False},
        "generation": {"max_new_tokens": max_new, "num_beams": 1, "eos_token_id": stops},
        "not_exact_because": reasons,
    }


def exported_causal_summaries(folder: Path, prompts: list[list[int]], batch: int = 8) -> list[str]:
    """Greedy summaries of an exported causal LM from prompt ids, left-padded in batches as the
    student's eval pads them (so any difference is the model's, not the batching's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return causal_summaries(model, tok, prompts, batch)


def causal_summaries(model: Any, tok: Any, prompts: list[list[int]], batch: int = 8) -> list[str]:
    """Greedy summaries from prompt ids (export.json ``prompt.input_ids``), left-padded in batches."""
    from distill.core.tensors import left_pad

    texts = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        ids, mask = left_pad(chunk, 0), left_pad([[1] * len(p) for p in chunk], 0)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask)
        texts += [t.strip() for t in tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)]
    return texts


def pipeline_messages(tokenizer: Any, instruction: str, document: str, max_document: int) -> list[dict]:
    """The chat a text-generation pipeline user sends: the document cut to the student's length."""
    ids = tokenizer(document, add_special_tokens=False)["input_ids"]
    if len(ids) > max_document:
        document = tokenizer.decode(ids[:max_document])
    return [{"role": "user", "content": f"{instruction}\n\n{document}"}]


def _causal_check(
    student: Any, tokenizer: Any, name: str, folder: Path, rows: list[dict[str, Any]], max_new: int
) -> dict[str, Any]:
    codec, spec = student.codec, student.spec
    instruction = spec.tasks[name]["instruction"]
    before, after = prompt_parts(codec.tokenizer, instruction)
    n = spec.max_document_length
    prompts = [recipe_prompt_ids(codec.tokenizer, before, after, r["document"], n) for r in rows]
    read = [codec.teacher(codec.prompt_ids(instruction, r["document"], n)) for r in rows]
    chats = [
        codec.tokenizer.apply_chat_template(
            pipeline_messages(codec.tokenizer, instruction, r["document"], n),
            tokenize=True, add_generation_prompt=True, return_dict=True,
        )["input_ids"]
        for r in rows
    ]  # fmt: skip
    return {
        "recipe_prompt_matches": sum(a == b for a, b in zip(prompts, read)),
        "pipeline_prompt_matches": sum(a == b for a, b in zip(chats, read)),
        **_compare_summaries(
            student, tokenizer, name, rows, max_new, exported_causal_summaries(folder, prompts)
        ),
    }


def _compare_summaries(
    student: Any, tokenizer: Any, name: str, rows: list[dict[str, Any]], max_new: int, theirs: list[str]
) -> dict[str, Any]:
    """The exported model's greedy summaries against the student's eval path on the same rows."""
    from distill.eval.stats import rouge_per_row

    task = task_from_student(name, student.spec.tasks[name])
    ours, _ = task.student_summaries(student, tokenizer, rows, 8, max_new)
    same = sum(a == b for a, b in zip(ours, theirs))
    rouge = rouge_per_row(theirs, [o or " " for o in ours])["rougeL"]
    return {
        "rows": len(rows),
        "identical": same,
        "rougeL_vs_student": round(float(np.mean(rouge)), 4),
        "same": same == len(rows),
    }


# --- the command ----------------------------------------------------------------------------------
def _chosen(spec: Any, tasks: list[str] | None) -> list[str]:
    names = list(spec.tasks) if not tasks else list(dict.fromkeys(tasks))
    unknown = [t for t in names if t not in spec.tasks]
    if unknown:
        raise DistillError(
            f"export: unknown task {', '.join(map(repr, unknown))} "
            f"(this student has: {', '.join(spec.tasks)})"
        )
    if spec.private and spec.summarizer == "bert2bert":
        blocked = [t for t in names if spec.tasks[t]["labels"] is None]
        if blocked:
            raise DistillError(
                f"export: task {', '.join(blocked)}: a BERT2BERT summarizer under sharing "
                f"{spec.sharing!r} reads shared + private encoder states, which a stock "
                "EncoderDecoderModel cannot compute; export the classification tasks alone (--task)"
            )
    return names


def _prepare(out: Path, names: list[str], student: str) -> dict[str, Any]:
    """``out`` empty, new, or a previous export of the same student: the task folders being
    rewritten go, and the entries of its other tasks are returned (export.json keeps them)."""
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return {}
    if not (out / EXPORT_FILE).is_file():
        raise DistillError(f"{out}: not empty and not a previous export; choose a new folder")
    previous = json.loads((out / EXPORT_FILE).read_text())
    if previous.get("student") != student:
        raise DistillError(
            f"{out}: holds an export of another student ({previous.get('student')}); choose a new folder"
        )
    for name in names:
        if (out / name).exists():
            shutil.rmtree(out / name)
    return {k: v for k, v in previous.get("tasks", {}).items() if k not in names}


def _exactness(info: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    reasons = list(info.pop("not_exact_because", []))
    if not check["same"] and not reasons:
        reasons.append("measured: the exported model's outputs differ from the student's (see check)")
    return {"exact": not reasons, "not_exact_because": reasons}


def export(
    path: Path,
    out: Path,
    tasks: list[str] | None = None,
    measure_rows: dict[str, list[dict[str, Any]]] | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Export the student of ``path`` (a student folder or a run) into ``out/<task>/`` for each
    of ``tasks`` (all by default), checked against the student's eval path on ``measure_rows``
    (task → teach rows: "text" / "document") or on probe texts; writes and returns export.json.
    ``max_new_tokens``: summary length in the generation configs (default: the student's
    max_summary_length)."""
    import transformers

    from distill.core.layout import resolve_student_dir
    from distill.student.model import load_student

    folder = resolve_student_dir(path)
    student, tokenizer = load_student(folder)
    spec = student.spec
    names = _chosen(spec, tasks)
    out = Path(out)
    kept = _prepare(out, names, str(folder.resolve()))
    max_new = max_new_tokens or spec.max_summary_length
    record: dict[str, Any] = {
        "student": str(folder.resolve()),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]},
        "tasks": kept,
    }
    for name in names:
        rows = (measure_rows or {}).get(name)
        record["tasks"][name] = _export_task(student, tokenizer, name, out / name, rows, max_new)
        (out / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _export_task(
    student: Any, tokenizer: Any, name: str, folder: Path, rows: list[dict[str, Any]] | None, max_new: int
) -> dict[str, Any]:
    spec, entry = student.spec, student.spec.tasks[name]
    check_rows = rows or _probe_rows(entry, spec.max_length if entry["labels"] else spec.max_document_length)
    if entry["labels"] is not None:
        info = _write_classifier(student, tokenizer, name, folder)
        check = _check_classifier(student, tokenizer, name, folder, check_rows)
    elif spec.summarizer == "teacher_layers":
        info = _write_causal(student, name, folder, max_new)
        check = _causal_check(student, tokenizer, name, folder, check_rows, max_new)
    else:
        info = _write_bert2bert(student, tokenizer, name, folder, max_new)
        theirs = exported_seq2seq_summaries(folder, [r["document"] for r in check_rows])
        check = _compare_summaries(student, tokenizer, name, check_rows, max_new, theirs)
    check["on"] = "given rows" if rows else "probe texts"
    exactness = _exactness(info, check)
    return {"folder": name, **info, **exactness, "check": check}


def teach_rows(path: Path, task: str, split: str = "test", limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``task``'s teach output in the run ``path`` (or the run holding the student
    folder ``path``): what ``measure_rows`` takes."""
    from distill.core.data import read_jsonl

    path = Path(path)
    for run in (path, path / "promoted", path / "latest", path.parent.parent):
        file = run / "teach" / task / f"{split}.jsonl"
        if file.is_file():
            return read_jsonl(file)[:limit]
    raise DistillError(f"{path}: no teach/{task}/{split}.jsonl here (a run folder has one per task)")
