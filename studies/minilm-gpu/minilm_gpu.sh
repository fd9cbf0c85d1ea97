#!/usr/bin/env bash
# The GPU MiniLM study, both steps, within a time budget (made for a GPU machine lent for minutes):
#
#   BUDGET_S=420 bash studies/minilm-gpu/minilm_gpu.sh
#
# 1. chooses the learning rate on held-out training examples (studies/minilm-gpu/minilm_gpu_select.yaml,
#    studies/minilm-gpu/choose_lr.py), never on dev;
# 2. runs studies/minilm-gpu/minilm_gpu.yaml at that rate, in order of priority: FT and TempBalance-MB at 16 per class
#    (STS-B: 32 examples) on every task and seed, then LLRD and the llrd-vs-spectral study's three methods at that
#    size, then FT and TempBalance-MB at 64 per class (STS-B: 128), then the frozen- and permuted-profile controls,
#    then the other methods;
# 3. aggregates both studies into studies/minilm-gpu/{select/,} and, if OUT is set, packs them (the aggregates,
#    each run's result.json and history.jsonl, failed runs' error.txt) into $OUT/minilm-gpu.tar.gz.
# A step still running when the budget is spent is stopped (its unfinished runs leave no result); a second call
# resumes: finished runs are skipped.
#
# Environment: MODEL (MiniLM folder; default run_glue's built-in 'minilm'), GLUE_DIR (default ../shared/data/glue),
# WORKERS (default: the cores less 2; on one GPU the runs of several single-threaded workers overlap, since a
# 40-step run is mostly Python), BUDGET_S (default 3600), SEEDS (e.g. 13,37: fewer seeds) and TASKS (e.g. sst2,rte:
# fewer tasks) for a smaller trial, STUDY_ROOT (write the studies under another folder than studies/).
set -u
cd "$(dirname "$0")/../.."
# The cores this process may use: not `nproc --all` (every processor of the host, which on a lent VM can be far more
# than it was given) and not a plain `nproc` after the export below (it answers OMP_NUM_THREADS).
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
workers=${WORKERS:-$((cores > 3 ? (cores < 16 ? cores - 2 : 14) : 1))}
budget=${BUDGET_S:-3600}
for value in "$budget" "$workers"; do
    [[ $value =~ ^[1-9][0-9]*$ ]] || { echo "BUDGET_S and WORKERS must be whole numbers >= 1, got '$value'" >&2; exit 2; }
done
t0=$SECONDS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# derive SRC DST [LR]: the study's YAML with this machine's paths (and the chosen rate) in it.
derive() {
    python - "$@" <<'PY'
import os, sys, yaml
src, dst, lr = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else None)
cfg = yaml.safe_load(open(src))
if os.environ.get("MODEL"):
    cfg["args"]["model_name_or_path"] = os.environ["MODEL"]
if os.environ.get("GLUE_DIR"):
    cfg["args"]["glue_dir"] = os.environ["GLUE_DIR"]
if os.environ.get("STUDY_ROOT"):
    cfg["output_dir"] = os.path.join(os.environ["STUDY_ROOT"], os.path.relpath(cfg["output_dir"], "studies"))
if os.environ.get("SEEDS"):
    try:
        cfg["seeds"] = [int(s) for s in os.environ["SEEDS"].split(",")]
    except ValueError:
        sys.exit(f"SEEDS must be whole numbers, comma-separated (e.g. 13,37), got {os.environ['SEEDS']!r}")
if os.environ.get("TASKS"):
    wanted = os.environ["TASKS"].split(",")
    known = yaml.safe_load(open("studies/minilm-gpu/minilm_gpu.yaml"))["tasks"]
    if unknown := [t for t in wanted if t not in known]:
        sys.exit(f"TASKS: unknown {unknown}; the study's tasks are {list(known)}")
    # the selection keeps its own tasks (SST-2, RTE) when TASKS names none of them
    cfg["tasks"] = {t: v for t, v in cfg["tasks"].items() if t in wanted} or cfg["tasks"]
if lr is not None:
    cfg["args"]["learning_rate"] = float(lr)
yaml.safe_dump(cfg, open(dst, "w"), sort_keys=False)
print(cfg["output_dir"])
PY
}

# pack: the results so far into $OUT/minilm-gpu.tar.gz (after every step, so that a machine taken back or a call
# cut short still returns what finished).
pack() {
    [ -n "${OUT:-}" ] && [ -n "${select_dir:-}" ] || return 0
    local dirs=("$select_dir")
    [ -n "${study_dir:-}" ] && [ -d "$study_dir" ] && dirs+=("$study_dir")
    {
        find "${dirs[@]}" -maxdepth 1 -type f
        find "${dirs[@]}" -path '*/runs/*' \( -name result.json -o -name history.jsonl -o -name error.txt \)
    } | sort -u > "$tmp/files"  # the selection's folder is inside the study's
    tar czf "$OUT/minilm-gpu.tar.gz.part" -T "$tmp/files" && mv "$OUT/minilm-gpu.tar.gz.part" "$OUT/minilm-gpu.tar.gz"
}

# step YAML FLAGS...: one sweep call, stopped when the budget is spent (its workers are in timeout's process group:
# SIGTERM reaches them all, SIGKILL 15 s later any that did not end), then packed.
step() {
    local left=$((budget - (SECONDS - t0)))
    if [ "$left" -le 10 ]; then
        echo "[minilm_gpu $((SECONDS - t0)) s] budget spent: not run: $*"
        return
    fi
    echo "[minilm_gpu $((SECONDS - t0)) s] $* (workers $workers, $left s left)"
    timeout -k 15 --signal=TERM "$left" python -m recipes.sweep "$@" --workers "$workers" > "$tmp/step.log" 2>&1
    tail -n 3 "$tmp/step.log"
    timeout -k 5 120 python -m recipes.sweep "$1" --aggregate-only > "$tmp/aggregate.log" 2>&1 || tail -n 20 "$tmp/aggregate.log"
    pack
}

select_dir=$(derive studies/minilm-gpu/minilm_gpu_select.yaml "$tmp/select.yaml") || exit 1
step "$tmp/select.yaml"
lr=$(python studies/minilm-gpu/choose_lr.py "$select_dir/results.csv") || { echo "no learning rate chosen: stopping"; exit 1; }
echo "[minilm_gpu $((SECONDS - t0)) s] learning rate chosen on held-out training examples: $lr"
study_dir=$(derive studies/minilm-gpu/minilm_gpu.yaml "$tmp/study.yaml" "$lr") || exit 1
mkdir -p "$study_dir" && echo "$lr" > "$study_dir/chosen_lr.txt"
# The smallest size of each task (16 per class; STS-B 32 examples), all of them first.
small=$(python - "$tmp/study.yaml" <<'PY'
import sys, yaml
tasks = yaml.safe_load(open(sys.argv[1]))["tasks"].values()
sizes = {min(v) for cfg in tasks for k, v in cfg.items() if k in ("shots_per_class", "max_train_samples", "fractions")}
print(",".join(f"{s:g}" for s in sorted(sizes)))
PY
)
step "$tmp/study.yaml" --methods ft,tempbalance-mb --sizes "$small"
step "$tmp/study.yaml" --methods llrd,llrd-alpha,tb-se,alphadecay --sizes "$small"
step "$tmp/study.yaml" --methods ft,tempbalance-mb
step "$tmp/study.yaml" --methods ft,tempbalance-mb,tempbalance-once,tempbalance-permuted
step "$tmp/study.yaml"
echo "[minilm_gpu $((SECONDS - t0)) s] done: $(find "$study_dir/runs" -name result.json | wc -l) runs finished in $study_dir"
