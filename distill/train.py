"""`distill train`: the multi-task student learns from the teacher inside DeepSpeed.

The loop talks only to the engine (forward, ``backward``, ``step``,
``save_checkpoint``/``load_checkpoint``). ``loss_step`` returns named losses; the loop
mixes the per-task ones with the task weights and logs every part. One optimizer step is
``gradient_accumulation_steps`` micro-batches, each its own ``engine.backward``/``engine.step``
(DeepSpeed steps the optimizer on the last). Each log record is one optimizer step: the
losses averaged over its micro-batches, ``tokens_real`` (tokens that are not padding) and
``tokens_padded`` (positions the model computed on, padding included), inputs and summary
targets together.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from distill import checkpoint
from distill import distributed as dist
from distill.batches import MultiTaskSchedule, TaskTensors, task_tensors
from distill.config import PipelineConfig, TrainConfig
from distill.data import read_jsonl
from distill.errors import ConfigError, DistillError
from distill.losses import IGNORE_INDEX, distillation_loss, sequence_kd_loss, weighted_total
from distill.manifest import Timer, write_manifest
from distill.student import build_student, save_student

EXIT_AFTER_STEP_ENV = "DISTILL_TEST_EXIT_AFTER_STEP"
"""Test hook: the process dies (os._exit, no cleanup, like a kill) right after logging this step."""
LR_SCHEDULE = "linear_warmup_linear_decay"

ENGINE_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "optimizer",
    "scheduler",
)


def deepspeed_config(cfg: TrainConfig, world: int) -> dict[str, Any]:
    """The DeepSpeed JSON plus what the pipeline owns (batch size, no DS optimizer)."""
    path = Path(cfg.deepspeed)
    if not path.is_file():
        raise ConfigError(f"train.deepspeed: {path} not found")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"train.deepspeed: {path} is not valid JSON ({e})") from None
    for key in ENGINE_KEYS:
        if key in ds:
            raise ConfigError(
                f"{path}: {key!r} is set by the pipeline's train section; remove it from the JSON"
            )
    if ds.get("fp16", {}).get("enabled") and not torch.cuda.is_available():
        raise ConfigError(f"{path}: fp16 needs a GPU; use bf16 or fp32 on CPU")
    ds.update(
        train_micro_batch_size_per_gpu=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        train_batch_size=cfg.batch_size * cfg.gradient_accumulation_steps * world,
    )
    return ds


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def loss_step(
    engine: Any, batch: dict[str, dict[str, torch.Tensor]], cfg: TrainConfig
) -> dict[str, torch.Tensor]:
    """One forward pass per task → named losses: ``task`` (its total) and ``task/part``."""
    losses: dict[str, torch.Tensor] = {}
    for task, tensors in batch.items():
        inputs = {k: v.to(engine.device, non_blocking=True) for k, v in tensors.items()}
        if "target_ids" in inputs:
            logits = engine(task, **{k: inputs[k] for k in ("input_ids", "attention_mask", "target_ids")})
            losses[task] = sequence_kd_loss(logits, inputs["target_ids"])
            continue
        model_inputs = ("input_ids", "attention_mask", "token_type_ids")
        logits = engine(task, **{k: inputs[k] for k in model_inputs if k in inputs})  # (batch, labels)
        parts = distillation_loss(
            logits, inputs["teacher_probs"], inputs.get("labels"), cfg.kd_temperature, cfg.soft_weight
        )
        losses[task] = parts.pop("loss")
        losses.update({f"{task}/{name}": value for name, value in parts.items()})
    return losses


def token_counts(batch: dict[str, dict[str, torch.Tensor]]) -> tuple[int, int]:
    """(real tokens, positions computed on) in a batch's inputs and summary targets (CPU, no sync)."""
    real = padded = 0
    for tensors in batch.values():
        real += int(tensors["attention_mask"].sum())
        padded += tensors["input_ids"].numel()
        if "target_ids" in tensors:
            real += int((tensors["target_ids"] != IGNORE_INDEX).sum())
            padded += tensors["target_ids"].numel()
    return real, padded


def decay_groups(model: torch.nn.Module) -> dict[str, list[str]]:
    """Parameter names with and without weight decay: biases and normalisation weights get
    none (decaying them towards 0 only fights the scale they must hold)."""
    norm_params = {
        f"{module_name}.{name}" if module_name else name
        for module_name, module in model.named_modules()
        if isinstance(module, torch.nn.LayerNorm) or "Norm" in type(module).__name__
        for name, _ in module.named_parameters(recurse=False)
    }
    groups: dict[str, list[str]] = {"decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            no_decay = name.endswith(".bias") or name in norm_params
            groups["no_decay" if no_decay else "decay"].append(name)
    return groups


def optimizer_groups(model: torch.nn.Module, groups: dict[str, list[str]], weight_decay: float) -> list[dict]:
    params = dict(model.named_parameters())
    return [
        {"params": [params[n] for n in groups["decay"]], "weight_decay": weight_decay},
        {"params": [params[n] for n in groups["no_decay"]], "weight_decay": 0.0},
    ]


def _lr_lambda(total_steps: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _load_task_data(cfg: PipelineConfig, tokenizer: Any, spec: Any) -> list[TaskTensors]:
    from distill.teach import output_path

    tc = cfg.train
    tasks = []
    for task in cfg.tasks:
        rows = read_jsonl(output_path(cfg, task.name, "train"))
        if not rows:
            raise DistillError(f"task {task.name}: the teacher's train output is empty")
        size = tc.summary_batch_size if task.kind == "summarization" else tc.batch_size
        tasks.append(
            task_tensors(task.name, task.kind, rows, tokenizer, spec, size, tc.hard_labels, tc.cut_summaries)
        )
    return tasks


def _schedule_info(schedule: MultiTaskSchedule, tc: TrainConfig) -> dict[str, Any]:
    steps_per_epoch = math.ceil(schedule.steps_per_epoch / tc.gradient_accumulation_steps)
    total = steps_per_epoch * tc.epochs
    return {
        "total_steps": total,
        "warmup_steps": max(1, int(total * tc.warmup_ratio)),
        "lr_schedule": LR_SCHEDULE,
        "steps_per_epoch": steps_per_epoch,
        "micro_steps_per_epoch": schedule.steps_per_epoch,
    }


def train_steps(
    engine: Any,
    schedule: MultiTaskSchedule,
    tc: TrainConfig,
    weights: dict[str, float],
    steps: range,
    pad_id: int,
    on_step: Any,
) -> None:
    """Optimizer steps ``steps``; each is ``gradient_accumulation_steps`` micro-batches whose
    mean losses go to ``on_step(step, values)`` after one host sync."""
    accum = tc.gradient_accumulation_steps
    for step in steps:
        summed: torch.Tensor | None = None  # (1 + parts,) detached losses, summed over micro-batches
        real = padded = 0
        for micro in range(step * accum, (step + 1) * accum):
            # Dropout noise is a function of the micro-step, so a resumed run replays it exactly.
            torch.manual_seed(tc.seed + 7919 * micro + dist.rank())
            batch = schedule.batch(micro, pad_id)
            counts = token_counts(batch)
            real, padded = real + counts[0], padded + counts[1]
            losses = loss_step(engine, batch, tc)
            total = weighted_total({t: losses[t] for t in weights}, weights)
            engine.backward(total)
            engine.step()
            stacked = torch.stack([total.detach(), *(v.detach() for v in losses.values())])
            summed = stacked if summed is None else summed + stacked
        assert summed is not None
        means = (summed / accum).tolist()  # the step's one device → host sync
        values = {
            "loss": means[0],
            **dict(zip(losses, means[1:])),
            "tokens_real": real,
            "tokens_padded": padded,
        }
        on_step(step, values)


def run(cfg: PipelineConfig, resume: bool = False) -> dict[str, Any]:
    dist.prepare_environment()
    import deepspeed
    from tqdm import tqdm

    from distill.teach import outputs_sha256

    timer = Timer()
    out = cfg.path / "train"
    ckpt_dir = out / "checkpoints"
    tc = cfg.train
    ds_config = deepspeed_config(tc, dist.world_size())
    if not resume and dist.is_main() and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # a fresh run must not resume from, or mix with, an old one
    torch.manual_seed(tc.seed)
    with timer.section("build_student"):
        student, tokenizer = build_student(tc.student, cfg.tasks)
    with timer.section("tokenize"):
        teach_sha = outputs_sha256(cfg, "train")
        tasks = _load_task_data(cfg, tokenizer, student.spec)
    schedule = MultiTaskSchedule(tasks, tc.seed, dist.rank(), dist.world_size(), tc.group_by_length)
    plan = _schedule_info(schedule, tc)
    total_steps = plan["total_steps"]
    n_parameters = sum(p.numel() for p in student.parameters())  # before ZeRO-3 partitions them
    groups = decay_groups(student)
    optimizer = torch.optim.AdamW(optimizer_groups(student, groups, tc.weight_decay), lr=tc.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, plan["warmup_steps"]))
    with timer.section("engine_init"):
        engine, _, _, _ = deepspeed.initialize(
            model=student, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
    client_state = {
        "train_config": dataclasses.asdict(tc),
        "schedule": plan,
        "teach_outputs_sha256": teach_sha,
        "param_groups": [groups["decay"], groups["no_decay"]],
    }
    start = checkpoint.resume(engine, ckpt_dir, client_state) if resume else 0
    weights = {t.name: tc.task_weights.get(t.name, 1.0) for t in cfg.tasks}
    log_path = out / "log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    if dist.is_main():
        checkpoint.truncate_log(log_path, start)  # start 0: a fresh log
    exit_after = int(os.environ.get(EXIT_AFTER_STEP_ENV, "0"))
    engine.train()
    with (
        timer.section("train"),
        open(log_path, "a") as log,
        tqdm(total=total_steps, initial=start, desc="train", unit="step", disable=not dist.is_main()) as bar,
    ):

        def on_step(step: int, values: dict[str, Any]) -> None:
            record = {
                "step": step + 1,
                "epoch": step // plan["steps_per_epoch"],
                "lr": scheduler.get_last_lr()[0],
                **{k: round(v, 5) if isinstance(v, float) else v for k, v in values.items()},
            }
            if dist.is_main():
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in weights or k == "loss"})
            if (step + 1) % tc.checkpoint_every == 0 and step + 1 < total_steps:
                checkpoint.save(engine, ckpt_dir, step + 1, tc.keep_checkpoints, client_state)
            if step + 1 == exit_after:
                os._exit(1)  # the test hook: die like a killed process, with no cleanup

        train_steps(engine, schedule, tc, weights, range(start, total_steps), tokenizer.pad_token_id, on_step)
    with timer.section("export"):
        checkpoint.save(engine, ckpt_dir, total_steps, tc.keep_checkpoints, client_state)
        if dist.is_main():
            state = checkpoint.consolidated_state_dict(
                ckpt_dir, f"step-{total_steps:07d}", zero_stage(ds_config), engine.module
            )
            training = {
                "hard_labels": tc.hard_labels,
                "soft_weight": tc.soft_weight,
                "kd_temperature": tc.kd_temperature,
                "teach_outputs_sha256": teach_sha,
                "cut_summaries": tc.cut_summaries,
                "steps": total_steps,
            }
            spec = dataclasses.replace(student.spec, training=training)
            save_student(state, spec, tokenizer, out / "student")
    dist.barrier()
    summary = {
        "steps": total_steps,
        "resumed_from_step": start,
        "steps_per_epoch": plan["steps_per_epoch"],
        "schedule": plan,
        "world_size": dist.world_size(),
        "zero_stage": zero_stage(ds_config),
        "precision": "bf16" if ds_config.get("bf16", {}).get("enabled") else "fp32",
        "device": str(engine.device),
        "inputs": {"teach_outputs_sha256": teach_sha, "split": "train"},
        "rows": {t.name: len(t) for t in tasks},
        "summaries": {t.name: t.counts for t in tasks if t.counts is not None},
        "weight_decay_groups": {k: len(v) for k, v in groups.items()},
        "student_parameters": n_parameters,
        "final_losses": _tail_means(log_path, weights),
    }
    if dist.is_main():
        write_manifest(out, "train", cfg, timer, **summary)
    return summary


def _tail_means(log_path: Path, weights: dict[str, float], window: int = 10) -> dict[str, float]:
    """Mean of each task's loss over the last ``window`` logged steps."""
    records = [json.loads(line) for line in log_path.read_text().splitlines()[-window:]]
    return (
        {t: round(sum(r[t] for r in records) / max(len(records), 1), 4) for t in weights} if records else {}
    )
