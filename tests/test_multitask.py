"""The multi-task student: task kinds as objects, gradient reversal, sampling/weighting/sharing
inside the real DeepSpeed engine (2 processes, ZeRO 0-2), and `distill ablate` end to end."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from distill.core.errors import ConfigError
from distill.pipeline import load as load_pipeline
from distill.student.sharing import gradient_reversal, orthogonality_penalty
from distill.tasks import task_config, task_for
from distill.train.distributed import free_port
from tests.conftest import REPO, pipeline_dict, write_pipeline
from tests.test_pipeline import distill


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    upstream = torch.tensor([0.5, 1.0, -4.0])
    out = gradient_reversal(x, 0.3)
    assert torch.equal(out, x.detach())  # identity forward
    out.backward(upstream)
    assert torch.allclose(x.grad, -0.3 * upstream)


def test_orthogonality_penalty_by_hand():
    shared = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    private = torch.tensor([[1.0, 1.0], [0.0, 5.0]])
    # Rows normalised: S = I, H = [[1/√2, 1/√2], [0, 1]] → ‖SᵀH‖²_F = ‖H‖²_F = 1/2 + 1/2 + 0 + 1.
    assert orthogonality_penalty(shared, private).item() == pytest.approx(2.0)
    assert orthogonality_penalty(shared, torch.tensor([[0.0, 0.0], [0.0, 0.0]])).item() == 0.0


def test_sentence_pair_tokenization_marks_the_second_text(bert_tokenizer):

    task = task_for(
        task_config(
            name="p", kind="sentence_pair", data={}, text_pair_field="b", labels={"y": "yes", "n": "no"}
        )
    )
    rows = [{"text": "in the beginning", "text_pair": "at first god made"}]
    encoded = task.encode(rows, bert_tokenizer, 32)
    ids, types = encoded["input_ids"][0], encoded["token_type_ids"][0]
    sep = bert_tokenizer.sep_token_id
    first_sep = ids.index(sep)
    # [CLS] a … [SEP] b … [SEP]: segment 0 through the first separator, 1 after it.
    assert ids[0] == bert_tokenizer.cls_token_id and ids[-1] == sep
    assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
    assert bert_tokenizer.decode(ids[first_sep + 1 : -1]) == "at first god made"
    assert "Text B: at first god made" in task.prompt(rows[0], []).user


def test_gradient_methods_refuse_zero3(tmp_path, tiny_encoder, tiny_teacher):
    data = pipeline_dict(
        tmp_path, tiny_encoder, tiny_teacher, deepspeed=str(REPO / "pipelines/deepspeed/zero3_fp32.json")
    )
    data["train"]["weighting"] = {"method": "pcgrad"}
    with pytest.raises(ConfigError, match="pcgrad needs per-task gradients .* ZeRO-3"):
        load_pipeline(write_pipeline(tmp_path, data))
    data["train"]["weighting"] = {"method": "uncertainty"}
    assert load_pipeline(write_pipeline(tmp_path, data)).train.weighting.method == "uncertainty"
    data["train"]["weighting"] = {"method": "dwa"}
    data["train"]["sampling"] = "temperature"
    with pytest.raises(
        ConfigError, match="dwa needs every task's loss at every step; it needs train.sampling: all"
    ):
        load_pipeline(write_pipeline(tmp_path, data))


def test_every_weighting_method_in_two_processes_at_zero_0_1_2(tmp_path, tiny_encoder):
    """Each method runs inside the real engine with 2 gloo processes at ZeRO 0, 1 and 2; both
    ranks end with identical parameters; PCGrad's shared gradient at ZeRO-2 equals the
    single-process computation on the whole batch."""
    from tests import mtl_worker

    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
    ]
    proc = subprocess.run(
        [*cmd, str(REPO / "tests" / "mtl_worker.py"), tiny_encoder, str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert len(results) == 3 * 7
    for key, record in results.items():
        assert record["ranks_identical"], key
        assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in record["losses"]), key
    # Dynamic methods really moved their weights away from 1 (static stays at 1).
    assert results["zero2/static"]["weights"][-1] == {"left": 1.0, "right": 1.0}
    assert results["zero2/rlw"]["weights"][0] != results["zero2/rlw"]["weights"][1]

    # The single-process reference: the same student, the whole batch, PCGrad, plain backward.
    student, weighting = mtl_worker.build(tiny_encoder, "pcgrad")
    from distill.core.config import TrainConfig

    vocab = student.encoder.config.vocab_size
    batches = {t.name: mtl_worker.global_batch(i, vocab) for i, t in enumerate(mtl_worker.tasks())}
    from distill.train.recipe import TrainModule

    model = TrainModule(student, weighting)
    weighting.bind(mtl_worker.shared_params(student))
    task_losses = mtl_worker.losses(model, batches, slice(0, mtl_worker.ROWS), TrainConfig(soft_weight=0.5))
    total, _ = weighting(task_losses, 0)
    total.backward()
    expected = torch.cat([p.grad.flatten() for p in student.shared_parameters()])
    for stage in (0, 1, 2):
        got = torch.tensor(results[f"zero{stage}/pcgrad"]["shared_grad"])
        assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4), (stage, (got - expected).abs().max())
    # …and it is not the plain (unprojected) sum, or the test could not tell them apart.
    plain_loss = sum(mtl_worker.losses(model, batches, slice(0, 4), TrainConfig(soft_weight=0.5)).values())
    shared = student.shared_parameters()
    plain = torch.autograd.grad(plain_loss, shared, allow_unused=True)
    plain = torch.cat(
        [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(plain, shared)]
    )
    assert not torch.allclose(plain, expected, atol=1e-4)


def test_sampling_weighting_and_adversarial_sharing_train_and_resume(tmp_path, tiny_encoder, tiny_teacher):
    data = pipeline_dict(
        tmp_path, tiny_encoder, tiny_teacher, steps=12, sampling="temperature", checkpoint_every=6
    )
    data["train"]["weighting"] = {"method": "uncertainty"}
    data["train"]["student"]["sharing"] = "adversarial"
    pipeline = write_pipeline(tmp_path, data)
    distill("teach", pipeline)
    env = {"DISTILL_TEST_EXIT_AFTER_STEP": "8"}
    assert distill("train", pipeline, check=False, env_extra=env).returncode != 0
    distill("train", pipeline, "--resume")
    log = [json.loads(line) for line in (tmp_path / "run/train/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    # One task per step, both tasks drawn over the run, and only the drawn task's weight logged.
    assert all(len(r["tasks"]) == 1 for r in log)
    assert {r["tasks"][0] for r in log} == {"reviews", "papers"}
    for r in log:
        task = r["tasks"][0]
        assert f"weight/{task}" in r and f"{task}/adversarial" in r and f"{task}/orthogonality" in r
    # The learned log σ² moved, so the logged uncertainty weights 1/(2 exp(s)) left 0.5.
    assert any(abs(r[f"weight/{r['tasks'][0]}"] - 0.5) > 1e-4 for r in log[2:])
    # The same run uninterrupted gives the same log (draws and weighting state resume exactly).
    fresh = tmp_path / "fresh"
    data["run_dir"] = str(fresh)
    distill("teach", write_pipeline(tmp_path, data))
    distill("train", write_pipeline(tmp_path, data))
    again = [json.loads(line) for line in (fresh / "train/log.jsonl").read_text().splitlines()]
    assert [r["tasks"] for r in again] == [r["tasks"] for r in log]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in log], rel=1e-4)
    # The saved student carries its private encoders and discriminator and loads alone.
    weights = load_file(str(tmp_path / "run/train/student/model.safetensors"))
    assert any(k.startswith("sharing.private.reviews.") for k in weights)
    assert "sharing.discriminator.weight" in weights
    assert not any(k.startswith("weighting.") for k in weights)
    distill("eval", pipeline)


def test_ablate_end_to_end(tmp_path, tiny_encoder, tiny_teacher):
    data = pipeline_dict(tmp_path, tiny_encoder, tiny_teacher, steps=4)
    data["ablate"] = {
        "seeds": [0, 1],
        "baselines": False,
        "variants": {"pcgrad": ["train.weighting.method=pcgrad"]},
    }
    pipeline = write_pipeline(tmp_path, data)
    distill("ablate", pipeline)
    table = json.loads((tmp_path / "run/ablation/ablation.json").read_text())
    assert set(table["systems"]) == {"mtl", "single/reviews", "single/papers", "pcgrad"}
    mtl, single = table["systems"]["mtl"], table["systems"]["single/reviews"]
    assert set(mtl["tasks"]) == {"reviews", "papers"} and set(single["tasks"]) == {"reviews"}
    # One multi-task student is smaller than two single-task ones (shared encoder).
    assert mtl["parameters"] < table["single_task_parameters"]
    assert set(table["verdicts"]) == {"reviews", "papers"}  # what each verdict says: the test below
    # Mean over seeds recomputed from the stored per-row scores.
    rows = [json.loads((tmp_path / f"run/ablation/mtl/seed{s}/scores.json").read_text()) for s in (0, 1)]
    accs = [sum(r["scores"]["reviews"]["accuracy"]) / len(r["scores"]["reviews"]["accuracy"]) for r in rows]
    assert mtl["tasks"]["reviews"]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2, abs=1e-4)
    assert "| mtl |" in (tmp_path / "run/ablation/ablation.md").read_text()
    # A rerun trains nothing: every (system, seed) is read back.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run/ablation").rglob("scores.json")}
    distill("ablate", pipeline)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_per_task_soft_weight_and_temperature_override_the_train_section():
    from distill.core.config import TrainConfig
    from distill.core.losses import distillation_loss

    logits = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    inputs = {
        "input_ids": torch.ones(2, 3, dtype=torch.long),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
        "teacher_probs": torch.tensor([[0.7, 0.3], [0.4, 0.6]]),
        "labels": torch.tensor([0, 1]),
    }
    train = TrainConfig(soft_weight=0.5, kd_temperature=2.0)

    def model(task, **batch):
        return {"logits": logits}

    def task(**overrides):
        return task_for(
            task_config(name="t", kind="classification", labels={"a": "a", "b": "b"}, **overrides)
        )

    got = task(soft_weight=0.9, kd_temperature=4.0).loss(model, inputs, train)["loss"]
    assert got.item() == pytest.approx(
        distillation_loss(logits, inputs["teacher_probs"], inputs["labels"], 4.0, 0.9)["loss"].item()
    )
    default = task().loss(model, inputs, train)["loss"]
    assert default.item() == pytest.approx(
        distillation_loss(logits, inputs["teacher_probs"], inputs["labels"], 2.0, 0.5)["loss"].item()
    )
    assert abs(got.item() - default.item()) > 1e-3


def test_each_summarization_task_reads_its_own_prefix(bert_tokenizer):

    news = task_for(task_config(name="news", kind="summarization"))
    papers = task_for(task_config(name="papers", kind="summarization", prefix="summarize paper: "))
    rows = [{"document": "the council met on monday"}]
    assert bert_tokenizer.decode(news.encode(rows, bert_tokenizer, 32)[0], skip_special_tokens=True) == (
        "news : the council met on monday"
    )
    assert bert_tokenizer.decode(papers.encode(rows, bert_tokenizer, 32)[0], skip_special_tokens=True) == (
        "summarize paper : the council met on monday"
    )
    assert news.student_entry() == {
        "kind": "summarization",
        "labels": None,
        "prefix": "news: ",
        "instruction": "Summarize the following text in two or three sentences.",
    }


def test_two_level_bootstrap_replicates_by_hand():
    import numpy as np

    from distill.ops.ablate import replicate_means

    per_seed = np.array([[1.0, 0.0, np.nan], [0.0, 0.0, np.nan]])  # (seeds, rows); row 2 has no gold
    seed_draws = np.array([[0, 0], [1, 1], [0, 1]])
    rows = np.array([[0, 1, 2], [0, 0, 0], [1, 1, 2]])
    # seeds (0,0): rows 0,1 → (1 + 0)/2; seeds (1,1): 0; seeds (0,1): row 1 twice → 0.
    assert replicate_means(per_seed, seed_draws, rows).tolist() == [0.5, 0.0, 0.0]


def _scored(right, gold):
    """One seed's per-row classification scores, as ``row_scores`` stores them: right (n,) bool,
    gold (n,) label indices (−1: no gold)."""
    import numpy as np

    prediction = np.where(right, gold, 1 - np.abs(gold))
    accuracy = np.where(gold >= 0, right.astype(float), np.nan)
    return {"accuracy": accuracy.tolist(), "prediction": prediction.tolist(), "gold": gold.tolist()}


def test_ablation_verdicts_from_constructed_scores(tmp_path):
    """Per-seed, per-row scores built so that the MTL − single-task interval is known to lie
    above 0, to straddle it, or to lie below it; the verdicts and the table say so."""
    import numpy as np

    from distill.ops.ablate import markdown, tabulate, verdicts

    n, seeds = 100, [0, 1, 2]
    gold = np.array([0, 1] * (n // 2))
    rows = np.arange(n)
    every = np.ones(n, dtype=bool)
    # Single-task right from row 40, 50, 30 on per seed: 0.6 on average; MTL always right, so the
    # per-row difference is >= 0 on every row of every seed draw, and 1 on rows 0-29.
    partly = [rows >= start for start in (40, 50, 30)]
    even = rows % 2 == 0  # right on the even rows; the other system on the odd ones: ±1, symmetric
    systems = {  # task → (MTL's right rows per seed, single-task's)
        "gains": ([every] * 3, partly),
        "ties": ([even] * 3, [~even] * 3),
        "losses": (partly, [every] * 3),
    }
    names = {"great": "great", "other": "other"}
    tasks = {t: task_for(task_config(name=t, kind="classification", labels=names)) for t in systems}
    results = {"mtl": {}, **{f"single/{t}": {} for t in systems}}
    for k, seed in enumerate(seeds):
        record = {"train_s": 1.0, "parameters": 1000}
        results["mtl"][seed] = {**record, "scores": {t: _scored(m[k], gold) for t, (m, _) in systems.items()}}
        for t, (_, single) in systems.items():
            results[f"single/{t}"][seed] = {**record, "scores": {t: _scored(single[k], gold)}}
    data = pipeline_dict(tmp_path, "encoder", "teacher", steps=4)
    data["ablate"] = {"seeds": seeds}
    cfg = load_pipeline(write_pipeline(tmp_path, data))
    labels = ["great", "other"]
    test = {t: [{"label": labels[g], "teacher_label": "great"} for g in gold] for t in systems}
    table = tabulate(cfg, tasks, test, results)
    got = table["verdicts"]

    assert got["gains"]["verdict"] == "multi-task better beyond the noise"
    assert got["gains"]["mtl_minus_single"] == pytest.approx(0.4)
    assert 0 < got["gains"]["ci95"][0] < 0.4 < got["gains"]["ci95"][1] <= 0.7
    assert got["losses"]["verdict"] == "multi-task worse beyond the noise"
    assert got["losses"]["mtl_minus_single"] == pytest.approx(-0.4)
    assert -0.7 <= got["losses"]["ci95"][0] < -0.4 < got["losses"]["ci95"][1] < 0
    # ±1 per row, seeds alike: the paired difference's standard error is 1/sqrt(100).
    assert got["ties"]["verdict"] == "no difference beyond the noise"
    assert got["ties"]["mtl_minus_single"] == 0.0
    lo, hi = got["ties"]["ci95"]
    assert lo == pytest.approx(-1.96 * 0.1, abs=0.03) and hi == pytest.approx(1.96 * 0.1, abs=0.03)
    text = markdown(table)
    for t, verdict in (("gains", "better"), ("ties", "no difference"), ("losses", "worse")):
        v = got[t]
        interval = f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
        assert f"| {t} (accuracy) | {v['mtl_minus_single']:+.3f} | {interval} | " in text
        assert f"{interval} | {v['verdict']} |" in text and verdict in v["verdict"]

    # No gold on the scored rows: nothing to compare.
    unlabeled = {s: {"scores": {"gains": _scored(every, np.full(n, -1))}} for s in seeds}
    both = {"mtl": unlabeled, "single/gains": unlabeled}
    with pytest.warns(RuntimeWarning, match="Mean of empty slice"):  # its point estimate: NaN
        none = verdicts({"gains": tasks["gains"]}, both, {"gains": np.tile(rows, (200, 1))}, 0)
    assert none["gains"]["ci95"] is None and none["gains"]["verdict"] == "no rows to compare"
