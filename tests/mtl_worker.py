"""Run by torchrun (2 processes) from tests/test_multitask.py: every weighting method inside the
real DeepSpeed engine at ZeRO 0, 1 and 2, on fixed batches split across the ranks.

Writes, from rank 0, a JSON with per (stage, method): the losses, whether both ranks end with
identical parameters, and for pcgrad the shared-encoder gradient the engine holds after
backward (to compare with the single-process computation the test does itself).
"""

from __future__ import annotations

import json
import sys

import torch

from distill.core.config import StudentConfig
from distill.student.model import build_student
from distill.tasks import task_config, task_for
from distill.train import distributed as dist
from distill.train.recipe import TrainModule
from distill.train.weighting import METHODS, SharedParameters, build_weighting

ROWS = 4  # global rows per task; each of the 2 ranks takes 2


def tasks():
    return [
        task_for(task_config(name=name, kind="classification", labels={"a": "a", "b": "b", "c": "c"}))
        for name in ("left", "right")
    ]


def build(encoder: str, method: str, seed: int = 0):
    torch.manual_seed(seed)
    student, _ = build_student(StudentConfig(encoder=encoder, dropout=0.0, summarizer="bert2bert"), tasks())
    student.eval()  # no dropout: both computations see the same function
    weighting = build_weighting(method, ["left", "right"], {}, seed)
    return student, weighting


def global_batch(task_index: int, vocab: int) -> dict[str, torch.Tensor]:
    # Seeds whose two tasks' shared gradients conflict (negative dot product) at the start, so
    # PCGrad really projects and its result differs from the plain sum.
    g = torch.Generator().manual_seed(120 + task_index)
    ids = torch.randint(1000, vocab, (ROWS, 10), generator=g)
    probs = torch.rand(ROWS, 3, generator=g).softmax(-1)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "teacher_probs": probs,
        "labels": torch.randint(0, 3, (ROWS,), generator=g),
    }


def losses(model, batches, rows: slice, train_cfg) -> dict[str, torch.Tensor]:
    return {
        t.name: t.loss(model, {k: v[rows] for k, v in batches[t.name].items()}, train_cfg)["loss"]
        for t in tasks()
    }


def shared_params(student):
    return SharedParameters(
        shared=student.shared_parameters(),
        last_shared=student.last_shared_parameters(),
        trainable=[p for p in student.parameters() if p.requires_grad],
    )


def main(encoder: str, out: str) -> None:
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from distill.core.config import TrainConfig

    dist.prepare_environment()
    train_cfg = TrainConfig(soft_weight=0.5, hard_labels="teacher")
    rank, world = dist.rank(), dist.world_size()
    mine = slice(rank * ROWS // world, (rank + 1) * ROWS // world)
    results = {}
    for stage in (0, 1, 2):
        for method in METHODS:
            student, weighting = build(encoder, method)
            vocab = student.encoder.config.vocab_size
            batches = {t.name: global_batch(i, vocab) for i, t in enumerate(tasks())}
            model = TrainModule(student, weighting)
            config = {
                "train_micro_batch_size_per_gpu": ROWS // world,
                "gradient_accumulation_steps": 1,
                "train_batch_size": ROWS,
                "zero_optimization": {"stage": stage},
                "zero_allow_untested_optimizer": True,
            }
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
            engine.module.eval()
            weighting.bind(shared_params(student))
            record = {"losses": []}
            for step in range(3):
                task_losses = losses(engine, batches, mine, train_cfg)
                total, weights = engine(losses=task_losses, step=step)
                engine.backward(total)
                if step == 0 and method == "pcgrad":
                    grads = [safe_get_full_grad(p) for p in student.shared_parameters()]
                    record["shared_grad"] = torch.cat([g.flatten() for g in grads]).tolist()
                engine.step()
                record["losses"].append({k: float(v) for k, v in task_losses.items()})
                record.setdefault("weights", []).append(weights)
            flat = torch.cat([p.detach().float().flatten() for p in student.parameters()])
            gathered = [torch.zeros_like(flat) for _ in range(world)]
            torch.distributed.all_gather(gathered, flat)
            record["ranks_identical"] = all(torch.equal(gathered[0], g) for g in gathered[1:])
            results[f"zero{stage}/{method}"] = record
            del engine
    if dist.is_main():
        with open(out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
