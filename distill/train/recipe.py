"""The training recipe: ``setup`` (student, data, schedule, weighting, engine), ``train_step``,
checkpoints and ``export``; ``distill.train.run`` strings them together.

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
import shutil
from collections import UserDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill.core.config import PipelineConfig, TrainConfig
from distill.core.config.loader import plain
from distill.core.data import read_jsonl, sample_rows
from distill.core.errors import ConfigError, DistillError
from distill.core.losses import IGNORE_INDEX
from distill.core.manifest import Timer
from distill.student.model import Student, build_student, save_student
from distill.student.sharing import AUX_LOSSES
from distill.tasks import Task, train_tasks
from distill.train import checkpoint
from distill.train import distributed as dist
from distill.train.batches import MultiTaskSchedule, TaskTensors
from distill.train.sampling import TaskSampler, steps_for_epochs
from distill.train.weighting import SharedParameters, Weighting, build_weighting

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


class TaskOutputs(UserDict):
    """A task's forward outputs in a mapping DeepSpeed's engine does not look into (it is no
    dict, tuple or tensor), so the engine hooks no backward prologue onto them: gradient
    methods may take per-task gradients through them with ``torch.autograd.grad``. The engine
    hooks the combined loss instead (``TrainModule.forward`` with ``losses``)."""


class TrainModule(torch.nn.Module):
    """What the DeepSpeed engine wraps: the student, plus the weighting method, so one optimizer
    trains the method's own parameters (uncertainty's log σ²) and checkpoints hold them, and
    ZeRO-3 gathers them. Only the student is exported.

    Two calls through the engine make one micro-step: ``engine(task, **batch)`` per task (the
    student's outputs), then ``engine(losses=…, aux=…, step=…)``, which runs the weighting
    method *inside* the engine's forward and returns the loss ``engine.backward`` takes. The
    engine's backward prologue (ZeRO's reduction bookkeeping) is hooked onto that loss alone,
    so it runs once, at ``engine.backward``, and never during a method's per-task gradients."""

    def __init__(self, student: Student, weighting: Weighting):
        super().__init__()
        self.student = student
        self.weighting = weighting

    def forward(
        self,
        task: str | None = None,
        losses: dict[str, torch.Tensor] | None = None,
        aux: torch.Tensor | None = None,
        step: int = 0,
        **batch: torch.Tensor,
    ) -> Any:
        if losses is None:
            assert task is not None
            return TaskOutputs(self.student(task, **batch))
        combined, weights = self.weighting(losses, step)
        return (combined if aux is None else combined + aux), weights


def loss_step(
    engine: Any, tasks: dict[str, Task], batch: dict[str, dict[str, torch.Tensor]], tc: TrainConfig
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, dict[str, torch.Tensor]]:
    """One forward pass per drawn task → (each task's loss, the auxiliary sharing losses summed
    or None, every named part for the log: ``task``, ``task/kd``, ``task/adversarial`` …)."""
    task_losses: dict[str, torch.Tensor] = {}
    aux: torch.Tensor | None = None
    logged: dict[str, torch.Tensor] = {}
    for name, tensors in batch.items():
        inputs = {k: v.to(engine.device, non_blocking=True) for k, v in tensors.items()}
        parts = tasks[name].loss(engine, inputs, tc)
        task_losses[name] = parts.pop("loss")
        logged[name] = task_losses[name]
        for key in AUX_LOSSES:
            if key in parts:
                aux = parts[key] if aux is None else aux + parts[key]
        logged.update({f"{name}/{key}": value for key, value in parts.items()})
    return task_losses, aux, logged


def token_counts(batch: dict[str, dict[str, torch.Tensor]]) -> tuple[int, int]:
    """(real tokens, positions computed on) in a batch's inputs and summary targets (CPU, no sync)."""
    real = padded = 0
    for tensors in batch.values():
        real += int(tensors["attention_mask"].sum())
        padded += tensors["input_ids"].numel()
        if "target_ids" in tensors:
            real += int((tensors["target_ids"] != IGNORE_INDEX).sum())
            padded += tensors["target_ids"].numel()
        if "decoder_prompt_mask" in tensors:  # what a teacher-layers summarizer reads
            real += int(tensors["decoder_prompt_mask"].sum())
            padded += tensors["decoder_prompt_mask"].numel()
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
            # The weighting method's own parameters (log σ²) must not be pulled towards 0 either.
            no_decay = name.endswith(".bias") or name in norm_params or name.startswith("weighting.")
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


def _plan(schedule: MultiTaskSchedule, tc: TrainConfig) -> dict[str, Any]:
    """Steps, warm-up and epoch length: a step budget (train.steps), or epochs over the data."""
    batches = [schedule.batches_per_epoch(i) for i in range(len(schedule.tasks))]
    micro_per_epoch = steps_for_epochs(tc.sampling, batches, 1)
    accum = tc.gradient_accumulation_steps
    steps_per_epoch = math.ceil(micro_per_epoch / accum)
    total = tc.steps if tc.steps is not None else steps_per_epoch * tc.epochs
    return {
        "total_steps": total,
        "warmup_steps": max(1, int(total * tc.warmup_ratio)),
        "lr_schedule": LR_SCHEDULE,
        "steps_per_epoch": steps_per_epoch,
        "micro_steps_per_epoch": micro_per_epoch,
        "sampling": tc.sampling,
    }


@dataclass
class Recipe:
    """Everything ``setup`` builds and the loop, checkpointing and export use."""

    cfg: PipelineConfig
    tasks: dict[str, Task]
    tensors: list[TaskTensors]
    schedule: MultiTaskSchedule
    plan: dict[str, Any]
    engine: Any
    student: Student
    weighting: Weighting
    scheduler: Any
    tokenizer: Any
    ds_config: dict[str, Any]
    client_state: dict[str, Any]
    decay: dict[str, list[str]]
    n_parameters: int
    timer: Timer

    @property
    def out(self) -> Path:
        return self.cfg.path / "train"

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"


def unlabeled_text(cfg: PipelineConfig, tasks: list[Task]) -> list[str]:
    """The warm-up's text: the summarization tasks' train documents and warmup.extra_text, never
    a file any task is evaluated on."""
    evaluated = {Path(t.data[cfg.eval.split]).resolve() for t in cfg.tasks if cfg.eval.split in t.data}
    texts = [d for task in tasks for d in task.unlabeled_text()]
    for path, field_name in cfg.train.student.warmup.extra_text.items():
        if Path(path).resolve() in evaluated:
            raise ConfigError(f"train.student.warmup.extra_text: {path} is an eval split")
        rows = read_jsonl(Path(path))
        texts += [r[field_name] for r in rows if isinstance(r.get(field_name), str) and r[field_name].strip()]
    return texts


def setup(cfg: PipelineConfig, resume: bool, timer: Timer) -> Recipe:
    """Student, data, batch schedule, weighting, optimizer and the DeepSpeed engine."""
    import deepspeed

    from distill.core.layout import outputs_sha256

    tc = cfg.train
    ds_config = deepspeed_config(tc, dist.world_size())
    ckpt_dir = cfg.path / "train" / "checkpoints"
    if not resume and dist.is_main() and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # a fresh run must not resume from, or mix with, an old one
    torch.manual_seed(tc.seed)
    tasks = {t.name: t for t in train_tasks(cfg)}
    corpus = {}
    for task in tasks.values():
        corpus[task.name] = task.train_rows(cfg)
        if not corpus[task.name]:
            raise DistillError(f"task {task.name}: the teacher's train output is empty")
        if tc.train_rows is not None:
            corpus[task.name] = sample_rows(corpus[task.name], tc.train_rows, tc.seed, key_field="id")
        if not cfg.decoder_reads_teacher_tokens:  # another vocabulary: the text is what it learns
            for row in corpus[task.name]:
                row.pop("teacher_tokens", None)
    unlabeled = unlabeled_text(cfg, list(tasks.values())) if tc.student.warmup.steps else []
    with timer.section("build_student"):
        student, tokenizer = build_student(tc.student, list(tasks.values()), corpus, unlabeled)
    with timer.section("tokenize"):
        teach_sha = outputs_sha256(cfg, "train")
        tensors = [
            task.tensors(corpus[task.name], tokenizer, student.spec, tc, student.codec)
            for task in tasks.values()
        ]
    schedule = MultiTaskSchedule(tensors, tc.seed, dist.rank(), dist.world_size(), tc.group_by_length)
    plan = _plan(schedule, tc)
    if tc.sampling != "all":
        micro_total = plan["total_steps"] * tc.gradient_accumulation_steps
        # Sizes in batches, not rows: a draw is one batch, and summarization batches hold fewer
        # rows than classification ones; so p ∝ batches gives each task one pass per epoch.
        batches = [schedule.batches_per_epoch(i) for i in range(len(tensors))]
        schedule.sampler = TaskSampler(tc.sampling, batches, tc.seed, micro_total, tc.sampling_temperature)
    weighting = build_weighting(
        tc.weighting.method,
        list(tasks),
        {name: tc.task_weights.get(name, 1.0) for name in tasks},
        tc.seed,
        options=tc.weighting.options,
    )
    model = TrainModule(student, weighting)
    n_parameters = sum(p.numel() for p in student.parameters())  # before ZeRO-3 partitions them
    decay = decay_groups(model)
    optimizer = torch.optim.AdamW(optimizer_groups(model, decay, tc.weight_decay), lr=tc.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(plan["total_steps"], plan["warmup_steps"])
    )
    with timer.section("engine_init"):
        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
    weighting.bind(
        SharedParameters(
            shared=student.shared_parameters(),
            last_shared=student.last_shared_parameters(),
            trainable=[p for p in student.parameters() if p.requires_grad],
        )
    )
    client_state = {
        "train_config": plain(tc),  # the file's own shape: plugin options flat
        "schedule": plan,
        "teach_outputs_sha256": teach_sha,
        "param_groups": [decay["decay"], decay["no_decay"]],
    }
    return Recipe(
        cfg, tasks, tensors, schedule, plan, engine, student, weighting, scheduler, tokenizer,
        ds_config, client_state, decay, n_parameters, timer,
    )  # fmt: skip


def train_step(recipe: Recipe, step: int) -> dict[str, Any]:
    """One optimizer step: ``gradient_accumulation_steps`` micro-batches, each weighted by the
    weighting method and backpropagated through the engine. Returns the step's log values,
    each the mean over the micro-batches it appeared in, after one device → host sync."""
    tc, engine = recipe.cfg.train, recipe.engine
    accum = tc.gradient_accumulation_steps
    values: dict[str, list[torch.Tensor]] = {}
    weights: dict[str, list[float]] = {}
    real = padded = 0
    drawn: set[str] = set()
    recipe.student.set_progress(
        step / max(1, recipe.plan["total_steps"])
    )  # a function of the step: resumable
    for micro in range(step * accum, (step + 1) * accum):
        # Dropout noise is a function of the micro-step, so a resumed run replays it exactly.
        torch.manual_seed(tc.seed + 7919 * micro + dist.rank())
        batch = recipe.schedule.batch(micro, recipe.tokenizer.pad_token_id)
        drawn.update(batch)
        counts = token_counts(batch)
        real, padded = real + counts[0], padded + counts[1]
        task_losses, aux, logged = loss_step(engine, recipe.tasks, batch, tc)
        total, micro_weights = engine(losses=task_losses, aux=aux, step=micro)
        engine.backward(total)
        engine.step()
        for key, value in {"loss": total, **logged}.items():
            values.setdefault(key, []).append(value.detach().float())
        for name, weight in micro_weights.items():
            weights.setdefault(f"weight/{name}", []).append(weight)
    keys = list(values)
    means = torch.stack([torch.stack(values[k]).mean() for k in keys]).tolist()  # the one sync
    return {
        **dict(zip(keys, means)),
        **{k: round(sum(v) / len(v), 5) for k, v in weights.items()},
        "tasks": sorted(drawn),
        "tokens_real": real,
        "tokens_padded": padded,
    }


def save_checkpoint(recipe: Recipe, step: int) -> None:
    """Engine state (model, optimizer, LR schedule) plus the weighting method's own state."""
    client = {**recipe.client_state, "weighting_state": recipe.weighting.extra_state()}
    checkpoint.save(recipe.engine, recipe.ckpt_dir, step, recipe.cfg.train.keep_checkpoints, client)


def resume_from_checkpoint(recipe: Recipe) -> int:
    start, client = checkpoint.resume(recipe.engine, recipe.ckpt_dir, recipe.client_state)
    if start:
        recipe.weighting.load_extra_state(client.get("weighting_state") or {})
    return start


def export(recipe: Recipe, total_steps: int, selected: dict[str, Any]) -> None:
    """The fp32 master weights of the selected step (the last one, or the ``best`` tag that
    validation chose) as a self-contained student folder; ``selected`` is recorded in it."""
    tc = recipe.cfg.train
    save_checkpoint(recipe, total_steps)
    if not dist.is_main():
        return
    from_best = selected["step"] != total_steps
    if from_best and checkpoint.best_step(recipe.ckpt_dir) != selected["step"]:
        raise DistillError(f"train: the best checkpoint does not hold the selected step {selected['step']}")
    tag = checkpoint.BEST_TAG if from_best else f"step-{total_steps:07d}"
    state = checkpoint.consolidated_state_dict(
        recipe.ckpt_dir, tag, zero_stage(recipe.ds_config), recipe.engine.module
    )
    prefix = "student."
    student_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    training = {
        "hard_labels": tc.hard_labels,
        "soft_weight": tc.soft_weight,
        "kd_temperature": tc.kd_temperature,
        "teach_outputs_sha256": recipe.client_state["teach_outputs_sha256"],
        "cut_summaries": tc.cut_summaries,
        "summary_targets": tc.summary_targets,
        "sampling": tc.sampling,
        "weighting": tc.weighting.method,
        "seed": tc.seed,
        "steps": total_steps,
        "token_kd_weight": tc.token_kd_weight,
        "warmup": recipe.student.warmup_record,
        "selected": selected,
    }  # the same record as the train manifest's "selected"
    from distill.tasks.summarization import shipped_decodings

    # How eval will decode each summary (eval rewrites it if it scores other settings).
    decoding = shipped_decodings(recipe.cfg, recipe.tasks.values())
    spec = dataclasses.replace(recipe.student.spec, training=training, decoding=decoding)
    save_student(student_state, spec, recipe.tokenizer, recipe.out / "student", recipe.student.codec)
