"""Checkpoints of the training loop: save (keeping the newest few), resume only into the run
that wrote them, and the fp32 master weights a finished run exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from distill.core.errors import DistillError
from distill.train import distributed as dist


def _mismatches(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ between two nested dicts."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in _mismatches(a, b)]
        elif a != b:
            out.append(key)
    return out


def _check_resumable(where: Path, client: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse to continue a checkpoint made under another config, schedule or teach output."""
    for key, what in (
        ("train_config", "the train config"),
        ("schedule", "the schedule"),
        ("teach_outputs_sha256", "the teach outputs (teach/*/train.jsonl)"),
    ):
        if key not in client:
            raise DistillError(f"checkpoint {where} records no {key}; it was written by an older distill")
        if client[key] != expected[key]:
            detail = (
                f" (differs at {', '.join(_mismatches(client[key], expected[key]))})"
                if isinstance(expected[key], dict)
                else ""
            )
            raise DistillError(
                f"cannot resume from {where}: {what} changed since it was written{detail}; "
                "rerun without --resume to start over"
            )


def resume(engine: Any, ckpt_dir: Path, expected: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Load the latest checkpoint; returns the step to continue from (0 when none) and the
    checkpoint's client state."""
    if not (ckpt_dir / "latest").is_file():
        dist.print0(f"no checkpoint in {ckpt_dir}; starting from step 0")
        return 0, {}
    tag = (ckpt_dir / "latest").read_text().strip()
    try:
        path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    except Exception as e:  # noqa: BLE001 - torch.load / DeepSpeed raise many types for a bad file
        raise DistillError(
            f"checkpoint {ckpt_dir / tag} cannot be loaded ({type(e).__name__}: {e})"
        ) from None
    if path is None or "step" not in client:
        raise DistillError(f"checkpoint {ckpt_dir / tag} is incomplete (no model state or step)")
    _check_resumable(ckpt_dir / tag, client, expected)
    dist.print0(f"resumed from {ckpt_dir / tag} at step {client['step']}")
    return int(client["step"]), client


def truncate_log(log_path: Path, step: int) -> None:
    """Keep only records up to ``step``: those after the checkpoint are about to be redone."""
    if not log_path.is_file():
        return
    lines = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= step]
    tmp = log_path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(log_path)


def save(engine: Any, ckpt_dir: Path, step: int, keep: int, client_state: dict[str, Any]) -> None:
    engine.save_checkpoint(str(ckpt_dir), tag=f"step-{step:07d}", client_state={**client_state, "step": step})
    dist.barrier()
    if dist.is_main():
        tags = sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


BEST_TAG = "best"


def save_best(engine: Any, ckpt_dir: Path, step: int, client_state: dict[str, Any]) -> None:
    """The best step so far (by validation) under its own tag, overwritten at each new best; not
    recorded as ``latest``, so --resume still continues from the newest step."""
    engine.save_checkpoint(
        str(ckpt_dir), tag=BEST_TAG, client_state={**client_state, "step": step}, save_latest=False
    )
    dist.barrier()
    if dist.is_main():
        (ckpt_dir / BEST_TAG / "step.json").write_text(json.dumps({"step": step}) + "\n")


def best_step(ckpt_dir: Path) -> int | None:
    """The step the ``best`` tag holds, if it is there."""
    marker = ckpt_dir / BEST_TAG / "step.json"
    return json.loads(marker.read_text())["step"] if marker.is_file() else None


def consolidated_state_dict(
    ckpt_dir: Path, tag: str, stage: int, module: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """fp32 master weights from a checkpoint, whatever the ZeRO stage, precision and world size.

    ZeRO ≥ 1 keeps them in the optimizer partitions (zero_to_fp32 gathers them). ZeRO-0 with
    bf16 keeps bf16 module weights; the fp32 copies are in the optimizer state, per parameter
    ("fp32_groups", FP16_UnfusedOptimizer) or flat per group ("fp32_groups_flat",
    FP16_Optimizer), in the order of the group's parameter names recorded in the client state.
    ``module`` (the live student) maps tied weights (the decoder's output embedding) to the
    parameter they alias.
    """
    if stage > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    states = torch.load(ckpt_dir / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    state = {k: v.float() for k, v in states["module"].items()}
    optimizer = states.get("optimizer") or {}
    masters: dict[str, torch.Tensor] = {}
    if "fp32_groups" in optimizer:  # FP16_UnfusedOptimizer: one fp32 tensor per parameter
        for names, tensors in zip(states["param_groups"], optimizer["fp32_groups"]):
            masters.update({name: t.reshape(state[name].shape) for name, t in zip(names, tensors)})
    elif "fp32_groups_flat" in optimizer:  # FP16_Optimizer: one flat fp32 tensor per group
        for names, flat in zip(states["param_groups"], optimizer["fp32_groups_flat"]):
            sizes = [state[name].numel() for name in names]
            masters.update(
                {n: t.view(state[n].shape) for n, t in zip(names, flat[: sum(sizes)].split(sizes))}
            )
    else:  # fp32 training: the module weights are the masters
        return state
    canonical = {id(p): n for n, p in module.named_parameters()}
    for key, tensor in module.state_dict(keep_vars=True).items():
        if canonical.get(id(tensor)) in masters:
            state[key] = masters[canonical[id(tensor)]]
    return state
