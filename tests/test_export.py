"""distill export: every exported folder, loaded by plain transformers, gives what the student's
own eval path gives; what cannot be exact is recorded as such, with a measured difference."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.core.errors import DistillError
from distill.pipeline import section
from distill.ship.export.causal import pipeline_messages
from distill.ship.export.classifier import exported_probs
from distill.ship.export.run import EXPORT_FILE, export, teach_rows
from distill.student.model import load_student
from distill.student.summarizers.teacher_layers.decoder import prompt_parts
from distill.tasks import task_config, task_from_student
from tests.conftest import review


def _summaries(student, tokenizer, task: str, rows, max_new: int, decoding: dict | None = None) -> list[str]:
    """The student's summaries (greedy, or with the generate options of a stored ``decoding``)."""
    from distill.core.config import DecodingConfig

    options = DecodingConfig(**{k: v for k, v in (decoding or {}).items() if k != "max_new_tokens"})
    return task_from_student(task, student.spec.tasks[task]).student_summaries(
        student, tokenizer, rows, 8, max_new, options
    )[0]


# --- BERT2BERT run: classification + summarization ---------------------------------------------
def test_classifier_through_pipeline_gives_the_students_probabilities(trained_run, tmp_path):
    from transformers import pipeline

    rows = teach_rows(trained_run, "reviews")
    long_row = {"text": " ".join(r["text"] for r in rows[:6])}  # past max_length 32: truncated
    record = export(trained_run, tmp_path / "out", tasks=["reviews"], measure_rows={"reviews": rows})
    entry = record["tasks"]["reviews"]
    assert entry["exact"] and entry["check"]["rows"] == len(rows) and entry["check"]["on"] == "given rows"
    assert json.loads((tmp_path / "out" / EXPORT_FILE).read_text()) == record

    student, tokenizer = load_student(trained_run / "train" / "student")
    labels = student.spec.tasks["reviews"]["labels"]
    ours = task_from_student("reviews", student.spec.tasks["reviews"]).student_probs(
        student, tokenizer, [*rows, long_row], 4
    )
    folder = tmp_path / "out" / "reviews"
    classify = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    got = classify([r["text"] for r in [*rows, long_row]], top_k=None, truncation=True)
    assert {d["label"] for d in got[0]} == set(labels) == {"great", "other"}
    theirs = np.array([[{d["label"]: d["score"] for d in row}[name] for name in labels] for row in got])
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "great", "1": "other"} and config["label2id"]["other"] == 1
    # The modeling code is the packaged, linted module itself, copied byte for byte.
    from distill.ship.export import modeling_distill

    assert (folder / "modeling_distill.py").read_bytes() == Path(modeling_distill.__file__).read_bytes()
    assert config["distill_encoder_type"] == "bert"
    # A stock BERT classifier (CLS pooler) would give other numbers: the custom code is needed,
    # and a load without trust_remote_code fails instead of silently building that stock model.
    from transformers import AutoModelForSequenceClassification

    with pytest.raises(ValueError):
        AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=False)


def test_bert2bert_through_generate_gives_the_students_summaries(trained_run, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    rows = teach_rows(trained_run, "papers")
    record = export(trained_run, tmp_path / "out", tasks=["papers"], measure_rows={"papers": rows})
    entry = record["tasks"]["papers"]
    assert entry["exact"] and entry["check"]["identical"] == len(rows) and list(record["tasks"]) == ["papers"]

    folder = tmp_path / "out" / "papers"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    student, tokenizer = load_student(trained_run / "train" / "student")
    # It decodes as eval scored (eval.max_new_tokens 8), not up to max_summary_length (12).
    assert student.spec.decoding["papers"] == {"max_new_tokens": 8, "num_beams": 1}
    assert entry["decoding"]["max_new_tokens"] == 8 and entry["decoding"]["source"].startswith("student.json")
    assert model.config.prefix == "papers: " and model.generation_config.max_new_tokens == 8
    theirs = []
    for r in rows:  # one at a time, as a user would
        ids = model.generate(
            **tok([model.config.prefix + r["document"]], truncation=True, return_tensors="pt")
        )
        theirs.append(tok.decode(ids[0], skip_special_tokens=True).strip())
    assert theirs == _summaries(student, tokenizer, "papers", rows, 8)
    assert any(theirs)
    # Another task of the same student into the same folder: export.json lists both.
    again = export(trained_run, tmp_path / "out", tasks=["reviews"])
    assert list(again["tasks"]) == ["papers", "reviews"] and again["tasks"]["papers"] == entry


def test_refusals_name_the_problem(trained_run, tmp_path):
    with pytest.raises(DistillError, match="unknown task 'nope'.*reviews, papers"):
        export(trained_run, tmp_path / "a", tasks=["nope"])
    with pytest.raises(DistillError, match="no student here"):
        export(tmp_path, tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(DistillError, match="not empty and not a previous export"):
        export(trained_run, tmp_path / "c", tasks=["reviews"])
    assert not (tmp_path / "a").exists()  # nothing written before the refusal


# --- students built here: private sharing, teacher layers ----------------------------------------
def _rows(n: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "id": str(i),
            "text": review(rng, i % 2 == 0),
            "document": " ".join(review(rng, i % 2 == 0) for _ in range(3)),
            "teacher_summary": review(rng, i % 2 == 0),
            "teacher_finish_reason": "stop",
        }
        for i in range(n)
    ]


def _task(name: str, kind: str):
    from distill.tasks import task_for

    extra: dict = {}
    if kind != "summarization":
        extra["labels"] = {"great": "great", "other": "other"}
    if kind == "sentence_pair":
        extra["text_pair_field"] = "text_pair"
    return task_for(task_config(name=name, kind=kind, data={}, **extra))


def _save(student, tokenizer, folder: Path) -> Path:
    from distill.student.model import save_student

    save_student(student.state_dict(), student.spec, tokenizer, folder, student.codec)
    return folder


def test_shared_private_classifiers_are_exact_and_its_bert2bert_summarizer_refused(tiny_encoder, tmp_path):
    from distill.core.config import SharingConfig, StudentConfig
    from distill.student.model import build_student

    torch.manual_seed(0)
    cfg = StudentConfig(
        encoder=tiny_encoder,
        summarizer="bert2bert",
        sharing=section(
            SharingConfig, {"method": "shared_private", "private_init": "random", "private_feedforward": 48}
        ),
        max_length=16,
    )
    tasks = [
        _task("reviews", "classification"),
        _task("pairs", "sentence_pair"),
        _task("papers", "summarization"),
    ]
    student, tokenizer = build_student(cfg, tasks)
    for p in student.heads.parameters():  # heads far from zero, so the private half matters
        torch.nn.init.normal_(p, std=1.0)
    folder = _save(student, tokenizer, tmp_path / "student")
    with pytest.raises(
        DistillError, match="papers: a BERT2BERT summarizer under sharing 'shared_private' reads its task"
    ):
        export(folder, tmp_path / "out")
    rows = [{**r, "text_pair": r["teacher_summary"]} for r in _rows(6)]  # pairs past max_length 16
    record = export(
        folder, tmp_path / "out", tasks=["reviews", "pairs"], measure_rows={"reviews": rows, "pairs": rows}
    )
    assert all(record["tasks"][t]["exact"] for t in ("reviews", "pairs"))
    assert record["tasks"]["reviews"]["sharing"] == "shared_private"
    student, tokenizer = load_student(folder)
    for name in ("reviews", "pairs"):
        task = task_from_student(name, student.spec.tasks[name])
        ours = task.student_probs(student, tokenizer, rows, 8)
        theirs = exported_probs(tmp_path / "out" / name, rows, ["great", "other"], pairs=name == "pairs")
        np.testing.assert_allclose(theirs, ours, atol=1e-5)
        # Without the private encoder the numbers would differ: the export really carries it.
        student.sharing.private[name].norm.bias.data += 1.0
        assert np.abs(task.student_probs(student, tokenizer, rows, 8) - theirs).max() > 1e-3


def test_prompt_parts_are_the_chat_template_around_the_instruction(bpe_tokenizer):
    before, after = prompt_parts(bpe_tokenizer, "Write a headline.")
    assert before == "<|im_start|>user\nWrite a headline.\n\n"
    assert after == "<|im_end|>\n<|im_start|>assistant\n"
    messages = pipeline_messages(bpe_tokenizer, "Write a headline.", "the coffee was great", 2)
    cut = bpe_tokenizer.decode(
        bpe_tokenizer("the coffee was great", add_special_tokens=False)["input_ids"][:2]
    )
    assert messages == [{"role": "user", "content": f"Write a headline.\n\n{cut}"}] and len(cut) < 20


@pytest.fixture(scope="module")
def layers_students(tmp_path_factory, tiny_encoder, tiny_bpe_teacher) -> dict[str, Path]:
    """Teacher-layers students (3 of the tiny Qwen2's 4 layers, no training): full vocabulary with
    a zero and with a nonzero bridge, and a corpus vocabulary with a zero bridge."""
    from distill.core.config import StudentConfig
    from distill.student.model import build_student

    root = tmp_path_factory.mktemp("layers_students")
    corpus = {"papers": _rows(8)}
    out = {}
    for vocab in ("full", "corpus"):
        torch.manual_seed(0)
        cfg = section(StudentConfig, {
            "encoder": tiny_encoder, "summarizer": "teacher_layers", "decoder_source": tiny_bpe_teacher,
            "decoder_layers": 3, "decoder_vocab": vocab, "max_document_length": 40, "max_summary_length": 10,
        }, "train.student")  # fmt: skip
        student, tokenizer = build_student(cfg, [_task("papers", "summarization")], corpus)
        out[f"{vocab}_zero"] = _save(student, tokenizer, root / f"{vocab}_zero")
        if vocab == "full":
            torch.nn.init.normal_(student.summarizer.bridge.weight, std=2.0)
            out["full_bridge"] = _save(student, tokenizer, root / "full_bridge")
    return out


def test_teacher_layers_with_zero_bridge_is_exact_through_the_text_generation_pipeline(
    layers_students, tmp_path
):
    from transformers import pipeline

    rows = _rows(6, seed=5)
    record = export(layers_students["full_zero"], tmp_path / "out", measure_rows={"papers": rows})
    entry = record["tasks"]["papers"]
    assert entry["exact"] and entry["not_exact_because"] == [] and entry["architecture"] == "Qwen2ForCausalLM"
    assert entry["check"]["identical"] == len(rows) and entry["check"]["recipe_prompt_matches"] == len(rows)
    assert entry["vocabulary"]["kept"] == entry["vocabulary"]["of"]

    student, tokenizer = load_student(layers_students["full_zero"])
    ours = _summaries(student, tokenizer, "papers", rows, 10)
    generate = pipeline("text-generation", model=str(tmp_path / "out" / "papers"))
    prompt = entry["prompt"]
    theirs = [
        generate(
            pipeline_messages(
                generate.tokenizer, prompt["instruction"], r["document"], prompt["document_max_tokens"]
            ),
            return_full_text=False,
        )[0]["generated_text"].strip()
        for r in rows
    ]
    # This tokenizer has no merge across the instruction/document boundary, so the chat path
    # reads the student's very prompt (export.json says how many rows did: all here).
    assert entry["check"]["pipeline_prompt_matches"] == len(rows)
    assert theirs == ours and any(ours)


def test_the_scored_beam_search_is_what_ships_and_an_older_student_decodes_greedily(
    layers_students, tmp_path
):
    import dataclasses

    from transformers import GenerationConfig

    from distill.student.model import save_student

    rows = _rows(6, seed=5)
    older = export(layers_students["full_zero"], tmp_path / "older", measure_rows={"papers": rows})
    assert older["tasks"]["papers"]["decoding"] == {
        "max_new_tokens": 10,  # max_summary_length: this student records no scored decoding
        "num_beams": 1,
        "source": "greedy up to max_summary_length: the student records no scored decoding",
    }
    student, tokenizer = load_student(layers_students["full_zero"])
    exports = {}
    for ngram in (0, 2):
        scored = {"max_new_tokens": 7, "num_beams": 3, "no_repeat_ngram_size": ngram, "length_penalty": 0.5}
        spec = dataclasses.replace(student.spec, decoding={"papers": scored})
        folder = tmp_path / f"scored_{ngram}"
        save_student(student.state_dict(), spec, tokenizer, folder, student.codec)
        exports[ngram] = export(folder, tmp_path / f"out_{ngram}", measure_rows={"papers": rows})
        generation = GenerationConfig.from_pretrained(tmp_path / f"out_{ngram}" / "papers")
        assert (generation.max_new_tokens, generation.num_beams) == (7, 3)
        assert (generation.no_repeat_ngram_size, generation.length_penalty) == (ngram, 0.5)
    entry = exports[0]["tasks"]["papers"]
    assert entry["decoding"] == {
        "max_new_tokens": 7,
        "num_beams": 3,
        "length_penalty": 0.5,
        "source": "student.json decoding: as eval scored the student",
    }
    # The exported model's beam search writes the student's beam-search summaries, not its greedy ones.
    assert entry["exact"] and entry["check"]["identical"] == len(rows)
    beams = {"num_beams": 3, "length_penalty": 0.5}
    assert _summaries(student, tokenizer, "papers", rows, 7) != _summaries(
        student, tokenizer, "papers", rows, 7, beams
    )
    # An n-gram ban sees the prompt in a plain causal LM but not in the student: said so.
    banned = exports[2]["tasks"]["papers"]
    assert banned["decoding"]["no_repeat_ngram_size"] == 2 and not banned["exact"]
    assert banned["not_exact_because"][0].startswith("no_repeat_ngram_size 2:")


def test_teacher_layers_with_a_trained_bridge_is_marked_inexact_and_measured(layers_students, tmp_path):
    rows = _rows(6, seed=5)
    record = export(layers_students["full_bridge"], tmp_path / "out", measure_rows={"papers": rows})
    entry = record["tasks"]["papers"]
    assert not entry["exact"] and entry["not_exact_because"][0].startswith("bridge:")
    check = entry["check"]
    assert check["on"] == "given rows" and check["rows"] == 6
    assert check["identical"] < 6 and 0.0 <= check["rougeL_vs_student"] < 1.0
    # Without rows it is still measured, on the probe texts, and still not called exact.
    again = export(layers_students["full_bridge"], tmp_path / "out")  # rewrites a previous export
    assert again["tasks"]["papers"]["check"]["on"] == "probe texts" and not again["tasks"]["papers"]["exact"]


def test_corpus_vocabulary_maps_back_to_the_full_one(layers_students, tmp_path):
    from transformers import AutoModelForCausalLM

    rows = _rows(8)  # the corpus the vocabulary was measured on: every token is kept
    record = export(layers_students["corpus_zero"], tmp_path / "out", measure_rows={"papers": rows})
    entry = record["tasks"]["papers"]
    kept, total = entry["vocabulary"]["kept"], entry["vocabulary"]["of"]
    assert kept < total
    assert not entry["exact"] and entry["not_exact_because"][0].startswith("vocabulary:")
    assert entry["check"]["identical"] == len(rows) and entry["check"]["recipe_prompt_matches"] == len(rows)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "papers")
    student, _ = load_student(layers_students["corpus_zero"])
    ids = student.summarizer.kept_ids
    assert model.config.vocab_size == total and len(model.generation_config.suppress_tokens) == total - kept
    assert torch.equal(
        model.get_input_embeddings().weight[ids], student.summarizer.lm.get_input_embeddings().weight
    )
    with pytest.raises(DistillError, match="holds an export of another student"):
        export(layers_students["full_zero"], tmp_path / "out")


def test_the_cli_exports_a_run_and_says_what_is_exact(tmp_path, trained_run):
    from tests.test_pipeline import distill

    out = tmp_path / "exported"
    proc = distill("export", trained_run, "--out", out, "--task", "reviews", "--measure", "4")
    assert f"export: reviews → {out / 'reviews'} (exact)" in proc.stderr
    record = json.loads((out / "export.json").read_text())
    assert list(record["tasks"]) == ["reviews"]
    bad = distill("export", trained_run, "--out", tmp_path / "x", "--task", "nope", check=False)
    assert bad.returncode == 2 and "nope" in bad.stderr
