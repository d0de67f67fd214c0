"""`distill train`: the multi-task student learns from the teacher inside DeepSpeed.

The loop talks only to the engine (forward, ``backward``, ``step``,
``save_checkpoint``/``load_checkpoint``). ``loss_step`` returns named losses; the loop
mixes the per-task ones with the task weights and logs every part.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from distill import distributed as dist
from distill.batches import MultiTaskSchedule, TaskTensors, task_tensors
from distill.config import PipelineConfig, TrainConfig
from distill.data import read_jsonl
from distill.errors import ConfigError, DistillError
from distill.losses import distillation_loss, sequence_kd_loss, weighted_total
from distill.manifest import Timer, write_manifest
from distill.student import build_student, save_student

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
        gradient_accumulation_steps=1,
        train_batch_size=cfg.batch_size * world,
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
        inputs = {k: v.to(engine.device) for k, v in tensors.items()}
        if "target_ids" in inputs:
            logits = engine(task, **{k: inputs[k] for k in ("input_ids", "attention_mask", "target_ids")})
            losses[task] = sequence_kd_loss(logits, inputs["target_ids"])
        else:
            logits = engine(task, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            parts = distillation_loss(
                logits, inputs["teacher_probs"], inputs["labels"], cfg.kd_temperature, cfg.soft_weight
            )
            losses[task] = parts["loss"]
            losses[f"{task}/kd"] = parts["kd"]
            losses[f"{task}/ce"] = parts["ce"]
    return losses


def _lr_lambda(total_steps: int, warmup_ratio: float):
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _load_task_data(cfg: PipelineConfig, tokenizer: Any, spec: Any) -> list[TaskTensors]:
    from distill.teach import output_path

    tasks = []
    for task in cfg.tasks:
        rows = read_jsonl(output_path(cfg, task.name, "train"))
        if not rows:
            raise DistillError(f"task {task.name}: the teacher's train output is empty")
        size = cfg.train.summary_batch_size if task.kind == "summarization" else cfg.train.batch_size
        tasks.append(task_tensors(task.name, task.kind, rows, tokenizer, spec, size))
    return tasks


def _resume(engine: Any, ckpt_dir: Path) -> int:
    """Load the latest checkpoint; returns the step to continue from (0 when none)."""
    if not (ckpt_dir / "latest").is_file():
        dist.print0(f"no checkpoint in {ckpt_dir}; starting from step 0")
        return 0
    tag = (ckpt_dir / "latest").read_text().strip()
    try:
        path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    except Exception as e:  # noqa: BLE001 - torch.load / DeepSpeed raise many types for a bad file
        raise DistillError(
            f"checkpoint {ckpt_dir / tag} cannot be loaded ({type(e).__name__}: {e})"
        ) from None
    if path is None or "step" not in client:
        raise DistillError(f"checkpoint {ckpt_dir / tag} is incomplete (no model state or step)")
    dist.print0(f"resumed from {ckpt_dir / tag} at step {client['step']}")
    return int(client["step"])


def _save(engine: Any, ckpt_dir: Path, step: int, keep: int) -> None:
    engine.save_checkpoint(str(ckpt_dir), tag=f"step-{step:07d}", client_state={"step": step})
    dist.barrier()
    if dist.is_main():
        tags = sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def consolidated_state_dict(ckpt_dir: Path, tag: str, stage: int) -> dict[str, torch.Tensor]:
    """fp32 weights from a checkpoint, whatever the ZeRO stage and world size it was written with."""
    if stage == 0:
        states = torch.load(
            ckpt_dir / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
        )
        return {k: v.float() for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)


def run(cfg: PipelineConfig, resume: bool = False) -> dict[str, Any]:
    dist.prepare_environment()
    import deepspeed
    from tqdm import tqdm

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
        tasks = _load_task_data(cfg, tokenizer, student.spec)
    schedule = MultiTaskSchedule(tasks, tc.seed, dist.rank(), dist.world_size())
    total_steps = schedule.steps_per_epoch * tc.epochs
    n_parameters = sum(p.numel() for p in student.parameters())  # before ZeRO-3 partitions them
    optimizer = torch.optim.AdamW(student.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, tc.warmup_ratio))
    with timer.section("engine_init"):
        engine, _, _, _ = deepspeed.initialize(
            model=student, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
    start = _resume(engine, ckpt_dir) if resume else 0
    weights = {t.name: tc.task_weights.get(t.name, 1.0) for t in cfg.tasks}
    log_path = out / "log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    engine.train()
    with (
        timer.section("train"),
        open(log_path, "a" if start else "w") as log,
        tqdm(total=total_steps, initial=start, desc="train", unit="step", disable=not dist.is_main()) as bar,
    ):
        for step in range(start, total_steps):
            # Dropout noise is a function of the step, so a resumed run replays it exactly.
            torch.manual_seed(tc.seed + 7919 * step + dist.rank())
            losses = loss_step(engine, schedule.batch(step, tokenizer.pad_token_id), tc)
            total = weighted_total({t: losses[t] for t in weights}, weights)
            engine.backward(total)
            engine.step()
            record = {
                "step": step + 1,
                "epoch": step // schedule.steps_per_epoch,
                "lr": scheduler.get_last_lr()[0],
                "loss": total.item(),
                **{k: round(v.item(), 5) for k, v in losses.items()},
            }
            if dist.is_main():
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in weights or k == "loss"})
            if (step + 1) % tc.checkpoint_every == 0 and step + 1 < total_steps:
                _save(engine, ckpt_dir, step + 1, tc.keep_checkpoints)
    with timer.section("export"):
        _save(engine, ckpt_dir, total_steps, tc.keep_checkpoints)
        if dist.is_main():
            state = consolidated_state_dict(ckpt_dir, f"step-{total_steps:07d}", zero_stage(ds_config))
            save_student(state, student.spec, tokenizer, out / "student")
    dist.barrier()
    summary = {
        "steps": total_steps,
        "resumed_from_step": start,
        "steps_per_epoch": schedule.steps_per_epoch,
        "world_size": dist.world_size(),
        "zero_stage": zero_stage(ds_config),
        "precision": "bf16" if ds_config.get("bf16", {}).get("enabled") else "fp32",
        "device": str(engine.device),
        "rows": {t.name: len(t) for t in tasks},
        "student_parameters": n_parameters,
        "final_losses": _tail_means(log_path, weights),
        "timings_s": timer.seconds,
    }
    if dist.is_main():
        write_manifest(out, "train", cfg, **summary)
    return summary


def _tail_means(log_path: Path, weights: dict[str, float], window: int = 10) -> dict[str, float]:
    """Mean of each task's loss over the last ``window`` logged steps."""
    records = [json.loads(line) for line in log_path.read_text().splitlines()[-window:]]
    return (
        {t: round(sum(r[t] for r in records) / max(len(records), 1), 4) for t in weights} if records else {}
    )
