#!/bin/bash
# The fraction-curve study's queue (PROTOCOL.md beside this file): every stage in the protocol's order, with ONE
# single-threaded worker under nice, resumably (a finished run is never run again; a killed run starts over).
#
#   nohup setsid bash studies/fraction-curve/queue.sh > /dev/null 2>&1 &     # start or resume (repository root)
#   bash studies/fraction-curve/queue.sh status                              # done / to do per config
#   kill -- -"$(cat ../fraction-curve-logs/queue.pid)"                       # stop (then resume as above)
#
# Order, model by model (MiniLM, then MPNet): protocol (b)'s tuning at every tuned fraction (three steps each,
# make_configs.py next between them), then protocol (b) at those fractions, then protocol (a), then protocol (b) at
# the fractions that take their settings from another one; after each config its runs are packed and committed
# (commit.sh). The sweeps run from a copy of
# the code at one commit (CODE, its commit in CODE_COMMIT beside this file), because the working tree is shared
# with work in progress; the copy's studies/fraction-curve is a link to this folder, so the results land here.
set -u
STUDY_REL=studies/fraction-curve
REPO=$(cd "$(dirname "$0")/../.." && pwd)
LOGS=${FC_LOGS:-$(dirname "$REPO")/fraction-curve-logs}
CODE=${FC_CODE:-$(dirname "$REPO")/fraction-curve-code}
PY=${FC_PYTHON:-$REPO/.venv/bin/python}
mkdir -p "$LOGS"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$CODE

log() { echo "$(date -u +%FT%TZ) $*" >> "$LOGS/queue.log"; }

setup_code() {  # the copy of the code at the recorded commit (recorded at the first start)
  if [ ! -f "$REPO/$STUDY_REL/CODE_COMMIT" ]; then git -C "$REPO" rev-parse HEAD > "$REPO/$STUDY_REL/CODE_COMMIT"; fi
  local commit; commit=$(cat "$REPO/$STUDY_REL/CODE_COMMIT")
  if [ ! -f "$CODE/.commit" ] || [ "$(cat "$CODE/.commit")" != "$commit" ]; then
    rm -rf "$CODE" && mkdir -p "$CODE"
    git -C "$REPO" archive "$commit" | tar -x -C "$CODE"
    echo "$commit" > "$CODE/.commit"
  fi
  rm -rf "${CODE:?}/$STUDY_REL" && ln -s "$REPO/$STUDY_REL" "$CODE/$STUDY_REL"
}

sweep() {  # sweep CONFIG [flags]: one single-threaded worker, niced, from the code copy
  (cd "$CODE" && nice -n 10 "$PY" -m recipes.sweep "$@")
}

configs() {  # configs MODEL KIND tuned|untuned|all: the configs of make_configs.PLAN, in its order
  (cd "$CODE" && "$PY" - "$@" <<'EOF'
import sys
sys.path.insert(0, "studies/fraction-curve")
import make_configs as make
only, kind, which = sys.argv[1:4]
for (model, task, fraction), plan in make.PLAN.items():
    tuned = plan.get("tune") is not None
    if model == only and plan.get(kind) and (which == "all" or (which == "tuned") == tuned):
        print(f"studies/fraction-curve/{kind}_{make.stem(model, task, fraction)}.yaml")
EOF
  )
}

run_config() {  # run_config CONFIG: its sweep, then pack and commit what finished
  local cfg=$1 name; name=$(basename "$cfg" .yaml)
  log "start $name"
  local t0; t0=$(date +%s)
  sweep "$cfg" --workers 1 >> "$LOGS/$name.log" 2>&1
  local rc=$?
  log "end $name rc=$rc after $(( $(date +%s) - t0 )) s"
  bash "$REPO/$STUDY_REL/commit.sh" "$cfg" "$name" >> "$LOGS/commit.log" 2>&1 || log "commit of $name failed"
  return $rc
}

if [ "${1:-}" = "status" ]; then
  shopt -s nullglob
  setup_code >/dev/null 2>&1
  for cfg in "$REPO"/$STUDY_REL/*.yaml; do
    rel=$STUDY_REL/$(basename "$cfg")
    out=$(sweep "$rel" --dry-run 2>/dev/null)
    printf '%-48s done %4s  to do %4s\n' "$(basename "$cfg")" "$(grep -c '^done' <<<"$out")" "$(grep -c '^todo' <<<"$out")"
  done
  [ -f "$LOGS/queue.log" ] && tail -n 3 "$LOGS/queue.log"
  exit 0
fi

echo $$ > "$LOGS/queue.pid"
setup_code
log "queue started (pid $$, code $(cat "$CODE/.commit"))"
(cd "$CODE" && "$PY" $STUDY_REL/make_configs.py start) >> "$LOGS/queue.log" 2>&1

for model in minilm mpnet; do  # the models in turn: MPNet's stage is the last, the first to go if time runs out
for cfg in $(configs $model tune all); do  # protocol (b)'s tuning: step 1, 2, 3, then protocol (b)'s configs
  for step in 1 2 3 4; do
    run_config "$cfg" || log "$cfg: some runs failed (see its log); trying the next step anyway"
    next=$(cd "$CODE" && "$PY" $STUDY_REL/make_configs.py next "$cfg" 2>> "$LOGS/queue.log")
    log "next $cfg: $(echo $next)"
    case "$next" in
      *"$(basename "$cfg")"*) continue ;;  # the next step of the same tuning config
      *) break ;;                            # done (protocol (b)'s configs written) or waiting (failed runs)
    esac
  done
  bash "$REPO/$STUDY_REL/commit.sh" "$cfg" "$(basename "$cfg" .yaml) chosen" >> "$LOGS/commit.log" 2>&1
done
for cfg in $(configs $model ours tuned); do [ -f "$CODE/$cfg" ] && run_config "$cfg"; done
for cfg in $(configs $model mb all); do run_config "$cfg"; done
for cfg in $(configs $model ours untuned); do [ -f "$CODE/$cfg" ] && run_config "$cfg"; done
done
(cd "$CODE" && "$PY" $STUDY_REL/curve.py --interim) >> "$LOGS/curve.log" 2>&1
bash "$REPO/$STUDY_REL/commit.sh" "" "curve tables" >> "$LOGS/commit.log" 2>&1
log "queue finished"
