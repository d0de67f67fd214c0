"""Sharing modes (distill/student/sharing/): each mode's forward against the tiny encoder,
its penalty and ramp by hand, branch storage, the options' loading, and exact export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.core.config import SharingConfig, StudentConfig
from distill.core.errors import ConfigError
from distill.pipeline import load as load_pipeline
from distill.pipeline import section
from distill.ship.export.classifier import exported_probs
from distill.ship.export.run import export
from distill.student.model import build_student, load_student, save_student
from distill.student.sharing import confusion_loss, orthogonality_penalty, reversal_ramp, tie_penalty
from distill.tasks import task_from_student
from tests.conftest import REPO, pipeline_dict, write_pipeline
from tests.test_export import _rows, _task


def _tasks():
    return [_task("reviews", "classification"), _task("pairs", "sentence_pair")]


def _student(encoder: str, sharing: dict):
    torch.manual_seed(0)
    cfg = StudentConfig(encoder=encoder, sharing=section(SharingConfig, sharing), max_length=16)
    return build_student(cfg, _tasks())


def _batch(tokenizer, texts):
    enc = tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_a_mode_written_as_its_name_alone_is_its_section_and_old_keys_are_moved():
    assert section(StudentConfig, {"sharing": "branch"}).sharing.options.shared_layers == 3
    with pytest.raises(
        ConfigError, match="adversarial_weight: moved; use train.student.sharing.adversarial_weight"
    ):
        section(StudentConfig, {"adversarial_weight": 0.1}, "train.student")
    with pytest.raises(ConfigError, match="shared_layers: unknown key"):
        section(StudentConfig, {"sharing": {"method": "soft", "shared_layers": 2}}, "train.student")


def test_soft_penalty_is_the_sum_of_squared_distances_to_the_mean_of_the_copies(tiny_encoder):
    student, tokenizer = _student(tiny_encoder, {"method": "soft", "tie_weight": 0.5})
    copy = student.sharing.copies["pairs"]
    for p in copy.parameters():  # move the copy away from the encoder it started as
        p.data += 0.01 * torch.randn_like(p)
    own = [p for p in student.encoder.parameters()]
    other = [p for p in copy.parameters()]
    # two copies: θ̄ = (a + b) / 2, Σ_t ‖θ_t − θ̄‖² = ‖a − b‖² / 2
    by_hand = sum(((a - b) ** 2).sum() for a, b in zip(own, other)) / 2
    batch = _batch(tokenizer, ["the coffee was great", "too sweet"])
    total = sum(student(t, **batch)["tie"] for t in ("reviews", "pairs"))
    assert torch.isclose(total, 0.5 * by_hand, rtol=1e-5)
    assert torch.isclose(tie_penalty([own, other], 0) + tie_penalty([own, other], 1), by_hand, rtol=1e-5)
    # each task reads its own copy
    a = student.features("reviews", **batch, token_type_ids=None).shared
    b = student.features("pairs", **batch, token_type_ids=None).shared
    assert not torch.allclose(a, b)


def test_branch_shares_storage_below_k_and_not_above(tiny_encoder):
    student, _ = _student(tiny_encoder, {"method": "branch", "shared_layers": 1})
    main, view = student.encoder, student.sharing.branches["pairs"]
    assert view.embeddings is main.embeddings
    assert (
        view.encoder.layer[0].attention.self.query.weight.data_ptr()
        == main.encoder.layer[0].attention.self.query.weight.data_ptr()
    )
    assert (
        view.encoder.layer[1].attention.self.query.weight.data_ptr()
        != main.encoder.layer[1].attention.self.query.weight.data_ptr()
    )
    assert torch.equal(
        view.encoder.layer[1].attention.self.query.weight, main.encoder.layer[1].attention.self.query.weight
    )
    shared = {id(p) for p in student.shared_parameters()}
    assert id(main.encoder.layer[0].output.dense.weight) in shared
    assert id(main.encoder.layer[1].output.dense.weight) not in shared
    with pytest.raises(ConfigError, match="shared_layers: 5, but the encoder has 2 layers"):
        _student(tiny_encoder, {"method": "branch", "shared_layers": 5})


def test_reversal_ramp_and_the_normalised_penalty_by_hand():
    assert reversal_ramp(0.0, 0.5) == 0.0
    assert reversal_ramp(0.25, 0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert reversal_ramp(0.9, 0.5) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert reversal_ramp(0.0, 0.0) == 1.0
    s, h = torch.eye(4, 8), torch.eye(4, 8)  # each row parallel to itself, orthogonal to others
    assert orthogonality_penalty(s, h).item() == pytest.approx(4.0)
    assert orthogonality_penalty(s, h, mean=True).item() == pytest.approx(4.0 / 16)


def test_adversarial_reversal_grows_with_progress(tiny_encoder):
    student, tokenizer = _student(tiny_encoder, {"method": "adversarial", "reversal_ramp": 0.5})
    batch = _batch(tokenizer, ["the coffee was great", "too sweet"])
    grads = []
    for progress in (0.0, 1.0):
        student.zero_grad()
        student.set_progress(progress)
        student("reviews", **batch)["adversarial"].backward()
        grads.append(student.encoder.encoder.layer[-1].output.dense.weight.grad.norm().item())
    assert grads[0] == 0.0 and grads[1] > 0.0  # no reversal at step 0, full at the end


def test_confusion_trains_the_discriminator_on_the_task_and_the_encoder_towards_uniform(
    tiny_encoder, tiny_teacher, tmp_path
):
    assert confusion_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4))  # chance: ln T
    # Row [2, 0]: −½(log p₀ + log p₁) = log(1 + e²) − 1; row [0, 0]: ln 2; the loss is their mean.
    by_hand = (math.log(1 + math.e**2) - 1 + math.log(2)) / 2
    assert confusion_loss(torch.tensor([[2.0, 0.0], [0.0, 0.0]])).item() == pytest.approx(by_hand)
    sharing = {"method": "adversarial", "adversary": "confusion", "reversal_ramp": 0}
    sharing["orthogonality_weight"] = 0
    student, tokenizer = _student(tiny_encoder, sharing)
    student.eval()  # no dropout: the forward by hand below sees the same states
    batch = _batch(tokenizer, ["the coffee was great", "too sweet"])
    student("reviews", **batch)["adversarial"].backward()
    d = student.sharing.discriminator
    shared_grad = student.encoder.encoder.layer[-1].output.dense.weight.grad.clone()
    d_grad = d.weight.grad.clone()
    # The same forward by hand: the discriminator's gradient is its task CE's alone (on detached
    # features), the encoder's is the confusion CE's alone (through detached weights).
    student.zero_grad()
    states = student.encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (states * mask).sum(1) / mask.sum(1)
    task_ce = torch.nn.functional.cross_entropy(d(pooled.detach()), torch.zeros(2, dtype=torch.long))
    (0.05 * task_ce).backward(retain_graph=True)
    assert torch.allclose(d.weight.grad, d_grad, atol=1e-6)
    student.zero_grad()
    (0.05 * confusion_loss(pooled @ d.weight.detach().T + d.bias.detach())).backward()
    assert torch.allclose(student.encoder.encoder.layer[-1].output.dense.weight.grad, shared_grad, atol=1e-6)
    data = pipeline_dict(
        tmp_path, tiny_encoder, tiny_teacher, deepspeed=str(REPO / "pipelines/deepspeed/zero3_fp32.json")
    )
    data["train"]["student"]["sharing"] = sharing
    with pytest.raises(ConfigError, match="confusion reads the discriminator's whole weights"):
        load_pipeline(write_pipeline(tmp_path, data))
    sharing["adversary"] = "reversal"  # the paper's reversal runs under ZeRO-3
    assert load_pipeline(write_pipeline(tmp_path, data)).train.student.sharing.options.adversary == "reversal"


@pytest.mark.parametrize(
    "sharing",
    [
        {"method": "shared_private", "private_init": "first_layer"},
        {"method": "adversarial", "private_init": "last_layer"},
        {"method": "soft"},
        {"method": "branch", "shared_layers": 1},
    ],
    ids=lambda s: f"{s['method']}-{s.get('private_init', '')}",
)
def test_every_mode_saves_loads_and_exports_exactly(tiny_encoder, tmp_path, sharing):
    student, tokenizer = _student(tiny_encoder, sharing)
    for p in student.heads.parameters():
        torch.nn.init.normal_(p, std=1.0)
    for module in student.sharing.modules():  # private, copied or branched parts away from the shared
        if (
            module is not student.sharing
            and hasattr(module, "weight")
            and isinstance(module.weight, torch.nn.Parameter)
        ):
            module.weight.data += 0.05 * torch.randn_like(module.weight)
    folder = tmp_path / "student"
    save_student(student.state_dict(), student.spec, tokenizer, folder)
    loaded, tokenizer = load_student(folder)
    rows = [{**r, "text_pair": r["teacher_summary"]} for r in _rows(6)]
    record = export(folder, tmp_path / "out", measure_rows={"reviews": rows, "pairs": rows})
    assert all(record["tasks"][t]["exact"] for t in ("reviews", "pairs"))
    for name in ("reviews", "pairs"):
        task = task_from_student(name, loaded.spec.tasks[name])
        theirs = exported_probs(tmp_path / "out" / name, rows, ["great", "other"], pairs=name == "pairs")
        np.testing.assert_allclose(theirs, task.student_probs(student.eval(), tokenizer, rows, 8), atol=1e-5)
