"""teach → train → eval through the real CLI and the real DeepSpeed engine, on tiny models."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.core.config import TrainConfig
from distill.core.errors import ConfigError
from distill.core.layout import outputs_sha256
from distill.ops.runs.records import EXIT_CONFIG, EXIT_GATES
from distill.pipeline import load as load_pipeline
from distill.student.model import load_student
from distill.train.checkpoint import truncate_log
from distill.train.recipe import deepspeed_config
from distill.train.run import EXIT_AFTER_STEP_ENV
from tests.conftest import REPO, pipeline_dict, write_pipeline


def distill(*args, check=True, env_extra=None, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", *map(str, args)], capture_output=True, text=True, env=env, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"distill {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return proc


def weights(run_dir):
    return load_file(str(run_dir / "train" / "student" / "model.safetensors"))


def test_teach_train_eval_end_to_end(pipeline):
    import numpy as np

    from distill.core.manifest import sha256_files
    from tests.test_evaluation import assert_intervals, own_student_probs, read_rows

    distill("teach", pipeline)
    distill("train", pipeline)
    proc = distill("eval", pipeline, "--set", "eval.gates={reviews.agreement: 0.0, papers.rows: 4}")
    run_dir = pipeline.parent / "run"
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    reviews, papers = report["tasks"]["reviews"], report["tasks"]["papers"]

    # Quality, recomputed from the teach rows and the student's own predictions.
    rows = read_rows(run_dir / "teach" / "reviews" / "test.jsonl")
    gold = np.array([["great", "other"].index(r["label"]) for r in rows])
    teacher = np.array([r["teacher_distribution"] for r in rows])
    student = own_student_probs(run_dir, rows)
    assert reviews["student"]["accuracy"] == pytest.approx((student.argmax(-1) == gold).mean(), abs=1e-4)
    assert reviews["teacher"]["accuracy"] == pytest.approx((teacher.argmax(-1) == gold).mean(), abs=1e-4)
    assert reviews["agreement"] == pytest.approx((student.argmax(-1) == teacher.argmax(-1)).mean(), abs=1e-4)
    kl = np.mean(np.sum(teacher * (np.log(teacher) - np.log(student)), axis=-1))
    assert reviews["kl_teacher_student"] == pytest.approx(kl, abs=1e-3)

    # The majority baseline is the train split's majority label, scored on the test rows.
    train_labels = [r["label"] for r in read_rows(run_dir / "teach" / "reviews" / "train.jsonl")]
    majority = max(["great", "other"], key=train_labels.count)
    base = reviews["majority_baseline"]
    assert base["label"] == majority == "great"  # conftest: 2 of every 3 reviews are great
    assert base["train_share"] == pytest.approx(train_labels.count(majority) / len(train_labels), abs=1e-4)
    assert base["accuracy"] == pytest.approx((gold == 0).mean(), abs=1e-4)
    markdown = (run_dir / "eval" / "report.md").read_text()
    for who in ("teacher", "student"):
        below = reviews[who]["accuracy"] <= base["accuracy"]
        assert reviews[who]["at_or_below_majority"] is below
        assert (f"**Warning: reviews: the {who}'s accuracy" in markdown) is below
        assert (f"reviews: the {who}'s accuracy" in proc.stderr) is below
    for node in (reviews, reviews["student"], reviews["teacher"], base):
        assert_intervals(node, contain={"accuracy", "agreement", "kl_teacher_student"})
    for key in ("student_vs_reference", "teacher_vs_reference", "student_vs_teacher"):
        assert set(papers[key]) == {f"rouge{t}{s}" for t in ("1", "2", "L", "Lsum") for s in ("", "_ci95")}
        assert_intervals(papers[key], contain={"rouge1", "rouge2", "rougeL", "rougeLsum"})
    # ROUGE-L recomputed by an independent scorer from the summaries the report shows (every
    # test row: there are 4, the report keeps 5) and the references of the teach rows.
    from rouge_score.rouge_scorer import RougeScorer

    references = [r["reference"] for r in read_rows(run_dir / "teach" / "papers" / "test.jsonl")]
    examples = papers["examples"]
    assert len(examples) == len(references) == papers["rows"] == 4
    assert [e["reference"] for e in examples] == references
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    own = [scorer.score(ref, e["student"])["rougeL"].fmeasure for ref, e in zip(references, examples)]
    written = json.loads((run_dir / "eval" / "rows.json").read_text())["papers"]["scores"]["rougeL"]
    assert written == pytest.approx(own, abs=1e-6)
    # report.json rounds means to 4 digits (CI_DIGITS)
    assert papers["student_vs_reference"]["rougeL"] == pytest.approx(float(np.mean(own)), abs=5e-5 + 1e-6)
    cell = f"{reviews['student']['accuracy']:.3f} [{reviews['student']['accuracy_ci95'][0]:.3f}, "
    assert f"| reviews | student | {cell}" in proc.stdout

    # Label mass and cut summaries, from the same rows.
    mass = [r["teacher_label_mass"] for r in rows]
    assert reviews["teacher_label_mass"]["min"] == pytest.approx(min(mass), abs=1e-4)
    assert reviews["teacher_methods"] == {"verbalizer_logits": len(rows)}
    papers_rows = read_rows(run_dir / "teach" / "papers" / "test.jsonl")
    cut = sum(r["teacher_finish_reason"] == "length" for r in papers_rows)
    assert papers["teacher_cut_by_length"] == cut

    # Speed: both models on one device and batch size, each pair within its slice of the budget.
    pairs = [(who, task) for who in ("student", "teacher") for task in ("reviews", "papers")]
    for who, task in pairs:
        s = report["models"][who]["speed"][task]
        assert s["device"] == "cpu" and s["batch_size"] == 4 and s["budget_s"] == 4.0 / len(pairs)
        assert s["batched_items"] % 4 == 0
        assert s["items_per_s"] == pytest.approx(s["batched_items"] / s["batched_s"], rel=0.02)
        assert (s["latency_p95_ms"] is None) is (s["latency_samples"] < 20)

    # Provenance: the weights eval loaded and what they were trained on.
    spec = json.loads((run_dir / "train" / "student" / "student.json").read_text())
    manifest = json.loads((run_dir / "eval" / "manifest.json").read_text())
    weights_sha = sha256_files([run_dir / "train" / "student" / "model.safetensors"])
    assert manifest["student"]["weights_sha256"] == weights_sha
    assert manifest["student"]["training"] == spec["training"] and manifest["student"]["stale"] is False
    assert report["student_training"]["hard_labels"] == spec["training"]["hard_labels"]
    assert f"Student trained with hard labels: {spec['training']['hard_labels']}." in markdown

    assert report["models"]["student"]["parameters"] > 0 and report["gates"]["papers.rows"]["passed"]
    log = [json.loads(line) for line in (run_dir / "train" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, len(log) + 1))
    assert {"reviews", "reviews/kd", "reviews/ce", "papers"} <= set(log[0])
    assert log[-1]["papers"] < log[0]["papers"]  # the decoder learns the teacher's summaries
    for stage in ("teach", "train", "eval"):
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        assert manifest["versions"]["deepspeed"] and manifest["config"]["run_dir"] == str(run_dir)

    failing = distill("eval", pipeline, "--set", "eval.gates={reviews.student.accuracy: 1.01}", check=False)
    assert failing.returncode == EXIT_GATES and "gates failed: reviews.student.accuracy" in failing.stderr


def test_killed_training_resumes_exactly(tmp_path, tiny_encoder, tiny_teacher):
    data = pipeline_dict(
        tmp_path, tiny_encoder, tiny_teacher, epochs=12, checkpoint_every=5, gradient_accumulation_steps=2
    )
    pipeline = write_pipeline(tmp_path, data)
    run_dir = tmp_path / "run"
    distill("teach", pipeline)
    distill("train", pipeline)
    reference = weights(run_dir)
    manifest = json.loads((run_dir / "train" / "manifest.json").read_text())
    total = manifest["steps"]
    # 32 rows / 8 per micro-batch = 4 micro-batches per epoch, 2 per optimizer step.
    assert manifest["schedule"]["steps_per_epoch"] == 2 and total == 24

    # Die (like a kill) right after step 13 is logged: checkpoint 10 is the latest, steps 11-13
    # are in the log and must not appear twice after the resume.
    died = distill("train", pipeline, check=False, env_extra={EXIT_AFTER_STEP_ENV: "13"})
    assert died.returncode == 1
    ckpt = run_dir / "train" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step-0000010"
    log_path = run_dir / "train" / "log.jsonl"
    assert [json.loads(line)["step"] for line in log_path.read_text().splitlines()][-1] == 13

    changed = distill("train", pipeline, "--resume", "--set", "train.lr=0.002", check=False)
    assert (
        changed.returncode != 0
        and "the train config changed since it was written (differs at lr)" in changed.stderr
    )
    teach_out = run_dir / "teach" / "reviews" / "train.jsonl"
    original = teach_out.read_text()
    teach_out.write_text(original.replace('"great"', '"other"', 1))
    retaught = distill("train", pipeline, "--resume", check=False)
    assert retaught.returncode != 0 and "the teach outputs (teach/*/train.jsonl) changed" in retaught.stderr
    teach_out.write_text(original)

    resumed = distill("train", pipeline, "--resume")
    assert "at step 10" in resumed.stderr
    manifest = json.loads((run_dir / "train" / "manifest.json").read_text())
    assert manifest["resumed_from_step"] == 10 and manifest["steps"] == total
    log = [json.loads(line)["step"] for line in log_path.read_text().splitlines()]
    assert log == list(range(1, total + 1))  # no repeated steps
    for key, tensor in weights(run_dir).items():
        assert (tensor - reference[key]).abs().max().item() < 1e-5, key


def test_schedule_change_refuses_resume(tmp_path, tiny_encoder, tiny_teacher):
    """Checked through the recorded schedule, not just the config: fewer teach rows, same config."""
    data = pipeline_dict(tmp_path, tiny_encoder, tiny_teacher, epochs=3, checkpoint_every=2)
    pipeline = write_pipeline(tmp_path, data)
    distill("teach", pipeline)
    distill("train", pipeline, check=False, env_extra={EXIT_AFTER_STEP_ENV: "3"})
    client = torch.load(
        tmp_path / "run" / "train" / "checkpoints" / "step-0000002" / "mp_rank_00_model_states.pt",
        weights_only=False,
    )
    assert client["schedule"] == {
        "total_steps": 12,
        "warmup_steps": 1,
        "lr_schedule": "linear_warmup_linear_decay",
        "steps_per_epoch": 4,
        "micro_steps_per_epoch": 4,
        "sampling": "all",
    }
    assert client["teach_outputs_sha256"] == outputs_sha256(load_pipeline(pipeline), "train")
    grown = distill("train", pipeline, "--resume", "--set", "train.epochs=4", check=False)
    assert "the train config changed" in grown.stderr and "(differs at epochs)" in grown.stderr


def test_bf16_sentence_pairs_gold_labels_and_provenance(tmp_path, tiny_encoder, tiny_teacher):
    data = pipeline_dict(
        tmp_path,
        tiny_encoder,
        tiny_teacher,
        epochs=1,
        hard_labels="gold",
        deepspeed=str(REPO / "pipelines" / "deepspeed" / "zero0_bf16.json"),
    )
    reviews = data["tasks"][0]
    for path in reviews["data"].values():
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        # Every other row loses its gold label; each gets a second text.
        rows = [
            {**r, "score": r["score"] if i % 2 else None, "other": f"pair {i}"} for i, r in enumerate(rows)
        ]
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    reviews["text_pair_field"] = "other"
    reviews["kind"] = "sentence_pair"
    pipeline = write_pipeline(tmp_path, data)
    run_dir = tmp_path / "run"
    distill("teach", pipeline)
    distill("train", pipeline)

    exported = weights(run_dir)
    ckpt = torch.load(
        run_dir / "train" / "checkpoints" / "step-0000004" / "mp_rank_00_model_states.pt", weights_only=False
    )
    # The engine wraps TrainModule(student, weighting): the student's keys carry "student.".
    assert ckpt["module"]["student.heads.reviews.1.weight"].dtype == torch.bfloat16  # the module copy is bf16
    masters = ckpt["optimizer"]["fp32_groups"]  # DeepSpeed's fp32 copy, one tensor per parameter
    for names, tensors in zip(ckpt["param_groups"], masters):
        for name, master in zip(names, tensors):
            assert name.startswith("student."), name  # static weighting has no parameters of its own
            assert torch.equal(exported[name.removeprefix("student.")].flatten(), master.flatten()), name
    not_bf16 = sum(int((t != t.bfloat16().float()).sum()) for t in exported.values())
    assert not_bf16 > 0.5 * sum(t.numel() for t in exported.values())

    spec = json.loads((run_dir / "train" / "student" / "student.json").read_text())
    sha = outputs_sha256(load_pipeline(pipeline), "train")
    assert spec["training"] == {
        "hard_labels": "gold",
        "soft_weight": 0.5,
        "kd_temperature": 2.0,
        "teach_outputs_sha256": sha,
        "cut_summaries": "no_eos",
        "summary_targets": "teacher",
        "sampling": "all",
        "weighting": "static",
        "seed": 0,
        "steps": 4,
        "token_kd_weight": 0.0,
        "warmup": None,
        "selected": {"step": 4, "by": "last step"},
    }
    manifest = json.loads((run_dir / "train" / "manifest.json").read_text())
    teach_manifest = json.loads((run_dir / "teach" / "manifest.json").read_text())
    assert manifest["inputs"] == {"teach_outputs_sha256": sha, "split": "train"}
    cut = teach_manifest["counts"]["papers/train"]["cut_by_length"]
    assert manifest["row_counts"] == {"papers": {"cut": cut, "excluded": 0}}
    log = [json.loads(line) for line in (run_dir / "train" / "log.jsonl").read_text().splitlines()]
    assert all(0 < r["tokens_real"] < r["tokens_padded"] for r in log)
    student, tokenizer = load_student(run_dir / "train" / "student")
    x = tokenizer(["good coffee"], ["pair 1"], return_tensors="pt")
    with torch.no_grad():  # the segment ids reach the encoder: changing them changes the logits
        with_types = student.classify("reviews", x.input_ids, x.attention_mask, x.token_type_ids)
        without = student.classify("reviews", x.input_ids, x.attention_mask)
    assert not torch.allclose(with_types, without)


def test_deepspeed_batch_sizes_follow_accumulation(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 0}}')
    config = TrainConfig(deepspeed=str(ds), batch_size=8, gradient_accumulation_steps=3)
    got = deepspeed_config(config, world=2)
    assert (got["train_micro_batch_size_per_gpu"], got["gradient_accumulation_steps"]) == (8, 3)
    assert got["train_batch_size"] == 48


def test_truncate_log_drops_steps_after_the_checkpoint(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 8)))
    truncate_log(log, 5)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_pure_kd_needs_full_soft_weight():
    with pytest.raises(
        ConfigError, match=r"train.hard_labels: none .* needs train.soft_weight: 1.0, not 0.5"
    ):
        TrainConfig(hard_labels="none")
    assert TrainConfig(hard_labels="none", soft_weight=1.0).hard_labels == "none"
    assert TrainConfig().hard_labels == "teacher"


@pytest.mark.parametrize("zero", ["zero2_fp32", "zero3_bf16"])
def test_zero_stages_train_and_export(tmp_path, tiny_encoder, tiny_teacher, zero):
    data = pipeline_dict(
        tmp_path,
        tiny_encoder,
        tiny_teacher,
        epochs=1,
        deepspeed=str(REPO / "pipelines" / "deepspeed" / f"{zero}.json"),
    )
    pipeline = write_pipeline(tmp_path, data)
    distill("teach", pipeline)
    distill("train", pipeline)
    manifest = json.loads((tmp_path / "run" / "train" / "manifest.json").read_text())
    assert manifest["zero_stage"] == int(zero[4])
    # The exported student is DeepSpeed's own consolidation of the partitioned fp32 masters,
    # tensor by tensor, at the selected step.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run = tmp_path / "run"
    selected = json.loads((run / "train" / "student" / "student.json").read_text())["training"]["selected"]
    assert selected["by"] == "last step"
    masters = get_fp32_state_dict_from_zero_checkpoint(
        str(run / "train" / "checkpoints"), tag=f"step-{selected['step']:07d}"
    )
    masters = {k.removeprefix("student."): v for k, v in masters.items() if k.startswith("student.")}
    exported = weights(run)
    assert set(exported) <= set(masters) and len(exported) > 0.9 * len(masters)
    for name, tensor in exported.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, masters[name].float()), name
    for name in set(masters) - set(exported):  # tied weights: saved once, under the name they alias
        assert any(torch.equal(masters[name], t) for t in exported.values()), name
    if zero.endswith("bf16"):  # the fp32 masters, not the engine's bf16 module copy
        not_bf16 = sum(int((t != t.bfloat16().float()).sum()) for t in exported.values())
        assert not_bf16 > 0.5 * sum(t.numel() for t in exported.values())


def test_two_processes(tmp_path, tiny_encoder, tiny_teacher):
    data = pipeline_dict(
        tmp_path,
        tiny_encoder,
        tiny_teacher,
        epochs=1,
        deepspeed=str(REPO / "pipelines" / "deepspeed" / "zero2_fp32.json"),
    )
    pipeline = write_pipeline(tmp_path, data)
    distill("teach", pipeline)
    distill("train", pipeline, "--nproc", "2")
    manifest = json.loads((tmp_path / "run" / "train" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert manifest["steps_per_epoch"] == 2  # 32 rows / (8 per rank × 2 ranks)
    distill("eval", pipeline)


def test_bad_pipeline_is_one_clear_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("run_dir: x\ntasks: []\nteach: {teacher: {model: m, temperature: 2}}\n")
    proc = distill("teach", path, check=False)
    assert proc.returncode == EXIT_CONFIG
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: teach.teacher.temperature: unknown key (known: backend, model, ")
