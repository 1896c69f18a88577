#!/usr/bin/env bash
# Builds .venv-bench, the separate environment benchmarks/speed.py runs llama-index-finetuning's
# SentenceTransformersFinetuneEngine in. It is separate because llama-index-finetuning 0.4.2 pins
# llama-index-postprocessor-cohere-rerank<0.6 (this package needs >=0.10), so it cannot be an extra.
#
#     bash benchmarks/anchor_env.sh [PYTHON]     # PYTHON defaults to python3 (3.10+)
#
# torch goes in first and pinned: pip then keeps that CPU build, where an unpinned torch pulled in as a
# dependency is the multi-GB CUDA one. The other pins are one set under which the engine installs and imports
# (mistralai 2+ breaks llama-index-finetuning's import).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-bench"
python="${1:-python3}"

"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "torch==2.13.0"
"$venv/bin/pip" install --quiet \
    "llama-index-finetuning==0.4.2" \
    "llama-index-core==0.14.25" \
    "llama-index-llms-mistralai==0.7.1" \
    "mistralai==1.12.4" \
    "llama-index-postprocessor-cohere-rerank==0.5.1" \
    "cohere==5.21.1" \
    "sentence-transformers[train]==6.2.0" \
    "transformers==5.24.0"
"$venv/bin/python" -c "from llama_index.finetuning import SentenceTransformersFinetuneEngine, EmbeddingQAFinetuneDataset; import torch; print('anchor env ready: torch', torch.__version__)"
