#!/usr/bin/env bash
# nohup bash studies/mpnet-fewshot/mpnet_fewshot.sh > /tmp/mpnet_fewshot.log 2>&1 &
#
# Runs (or resumes: finished runs are skipped) the MPNet few-shot study of studies/mpnet-fewshot/mpnet_fewshot.yaml in
# order of priority, two single-threaded workers at nice 10 (so other work on the machine keeps its CPU):
#   1. FT against TempBalance-MB at 16 examples per class, every task and seed, then the frozen- and permuted-
#      profile controls (tempbalance-once, tempbalance-permuted) there: the core comparison;
#   2. FT against TempBalance-MB at 64 per class (the study's minimum; SST-2 and MRPC before RTE, which costs
#      twice as much), then the two controls there;
#   3. the other methods (tempbalance defaults, FARMS, LLRD).
# WORKERS=1 runs one worker (leaves a core to another study, e.g. the SmolLM2 one).
# Each step aggregates into studies/mpnet-fewshot/ when it ends; in between, run
#   python -m recipes.sweep studies/mpnet-fewshot/mpnet_fewshot.yaml --aggregate-only
# and, once a step is done, pack the runs (the same command with --pack: one runs.jsonl.xz) and commit
# studies/mpnet-fewshot/.
set -u
cd "$(dirname "$0")/../.."
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# One thread per worker, also with WORKERS=1: the studies share the 2 cores, and two processes of 2 threads each
# made every run 2x slower (measured: a 16-shot RTE run 716-754 s instead of 330-420 s).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
config=studies/mpnet-fewshot/mpnet_fewshot.yaml
core=ft,tempbalance-mb,tempbalance-once,tempbalance-permuted
workers=${WORKERS:-2}
python scripts/prepare_mpnet.py || exit 1
nice -n 10 python -m recipes.sweep "$config" --workers "$workers" --methods ft,tempbalance-mb --sizes 16
nice -n 10 python -m recipes.sweep "$config" --workers "$workers" --methods "$core" --sizes 16
nice -n 10 python -m recipes.sweep "$config" --workers "$workers" --methods ft,tempbalance-mb --sizes 64 --tasks sst2,mrpc,rte
nice -n 10 python -m recipes.sweep "$config" --workers "$workers" --methods "$core"
nice -n 10 python -m recipes.sweep "$config" --workers "$workers"
