#!/usr/bin/env bash
# Run (or resume) the profile-search study in the background on one single-threaded worker:
#   nohup bash studies/profile-search/run.sh > studies/profile-search/run.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../.."
source .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
nice -n 10 python -m recipes.sweep studies/profile-search/minilm.yaml --workers 1
