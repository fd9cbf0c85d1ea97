#!/usr/bin/env bash
# nohup bash studies/smollm2-fewshot/smollm2_fewshot.sh > /tmp/smollm2_fewshot.log 2>&1 &
#
# Runs (or resumes: finished runs are skipped, and runs another sweep process holds are left to it) the SmolLM2
# LoRA few-shot study in order of priority, WORKERS single-threaded workers (default 1) at nice 10:
#   0. the learning-rate selection on held-out training examples (studies/smollm2-fewshot/smollm2_fewshot_select.yaml);
#   1. FT against TempBalance-MB on SST-2, then on RTE (studies/smollm2-fewshot/smollm2_fewshot.yaml), seed by seed;
#   2. the frozen-profile control (tempbalance-once).
# In between: python -m recipes.sweep studies/smollm2-fewshot/smollm2_fewshot.yaml --aggregate-only; then --pack, commit
# studies/smollm2-fewshot/.
set -u
cd "$(dirname "$0")/../.."
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# One thread per worker, also with WORKERS=1: the studies share the 2 cores, and two processes of 2 threads each
# made every run 2x slower (measured: a 16-shot RTE run 716-754 s instead of 330-420 s).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
workers=${WORKERS:-1}
python scripts/prepare_smollm2.py || exit 1
nice -n 10 python -m recipes.sweep studies/smollm2-fewshot/smollm2_fewshot_select.yaml --workers "$workers"
config=studies/smollm2-fewshot/smollm2_fewshot.yaml
nice -n 10 python -m recipes.sweep "$config" --workers "$workers" --methods ft,tempbalance-mb
nice -n 10 python -m recipes.sweep "$config" --workers "$workers"
