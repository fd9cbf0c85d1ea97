#!/usr/bin/env bash
# Run (or resume) the setfit-profiles study in the background on one single-threaded worker:
#   nohup bash studies/setfit-profiles/run.sh > studies/setfit-profiles/run.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../.."
source .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
nice -n 10 python -m recipes.sweep studies/setfit-profiles/minilm.yaml --workers 1
