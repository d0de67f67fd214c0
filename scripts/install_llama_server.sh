#!/usr/bin/env bash
# Install llama-cpp-python's OpenAI-compatible server into .venv, built portably.
#
# A native build (pip's default) crashes on hosts with AMX (/proc/cpuinfo: amx_tile amx_int8
# amx_bf16): the server dies with a general protection fault in libggml-cpu on its first chat
# completion, and a client then sees only connection errors. Built with AVX2/AVX-512 and AMX off
# it answers, two requests at once included. pip's wheel cache ignores CMAKE_ARGS, so a wheel a
# native build once cached would be reused: this builds without pip's cache, into a folder keyed
# by the version and the flags, and installs from there (a rebuild only when either changes).
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.3.36
flags="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
key=$(printf '%s %s' "$version" "$flags" | sha256sum | cut -c1-16)
wheels="${XDG_CACHE_HOME:-$HOME/.cache}/distill/llama-cpp-wheels/$key"
if ! ls "$wheels"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
    mkdir -p "$wheels"
    CMAKE_ARGS="$flags" .venv/bin/pip wheel -q --no-deps --no-cache-dir -w "$wheels" "llama-cpp-python==$version"
fi
wheel=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl | head -1)
# --force-reinstall --no-deps: replace a natively built copy already in the venv; then the extras.
.venv/bin/pip install -q --force-reinstall --no-deps "$wheel"
.venv/bin/pip install -q "${wheel}[server]"
