#!/bin/bash
# Pack one config's finished runs into its stage's runs.jsonl.xz and commit the study folder (only it):
#
#   bash studies/fraction-curve/commit.sh studies/fraction-curve/mb_minilm_sst2_0.0002.yaml "mb 0.02%"
#   bash studies/fraction-curve/commit.sh "" "curve tables"          # no config: commit what is there
#
# queue.sh calls it after every config. The sweep runs from the queue's code copy (CODE); git runs in this
# repository and commits nothing outside studies/fraction-curve (other work in the same checkout stays as it is).
set -u
STUDY_REL=studies/fraction-curve
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CODE=${FC_CODE:-$(dirname "$REPO")/fraction-curve-code}
PY=${FC_PYTHON:-$REPO/.venv/bin/python}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=$CODE
cfg=${1:-}
what=${2:-$(basename "${cfg:-study}" .yaml)}
done_runs=""
if [ -n "$cfg" ] && [ -d "$CODE" ]; then
  out=$(cd "$CODE" && "$PY" -c "from recipes.sweep import load_config; print(load_config('$cfg')['output_dir'])")
  if [ -d "$CODE/$out/runs" ] || [ -f "$CODE/$out/runs.jsonl.xz" ]; then
    (cd "$CODE" && nice -n 10 "$PY" -m recipes.sweep "$cfg" --pack) || echo "pack of $cfg failed"
    done_runs=$(cd "$CODE" && "$PY" -m recipes.sweep "$cfg" --dry-run 2>/dev/null | grep -c '^done')
  fi
fi
cd "$REPO" || exit 1
for attempt in 1 2 3 4 5 6 7 8 9 10; do  # another process may hold git's index lock for a moment
  if [ -z "$(git status --porcelain -- "$STUDY_REL")" ]; then
    echo "$(date -u +%FT%TZ) nothing new to commit for $what"
    exit 0
  fi
  if git add -- "$STUDY_REL" && git commit -q -m "fraction-curve study: $what${done_runs:+ ($done_runs runs finished)}" \
    -- "$STUDY_REL"; then
    echo "$(date -u +%FT%TZ) committed $what: $(git log -1 --format=%h)"
    exit 0
  fi
  sleep 20
done
echo "$(date -u +%FT%TZ) could not commit $what"
exit 1
