#!/usr/bin/env bash
# Commit a running study's finished runs without stopping it: pack the runs that have a whole result.json into the
# stage's runs.jsonl.xz (a run in progress has none yet and is left alone), rebuild its tables, commit its folder.
#   bash scripts/commit_study.sh studies/profile-search/minilm.yaml "profile-search: SST-2 done"
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
config=$1 message=$2
out=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['output_dir'])" "$config")
HF_HUB_OFFLINE=1 python - "$out" <<'PY'
import sys
from recipes.sweep import archive
from recipes.sweep.results import read_record
names = archive.pack(sys.argv[1], complete=lambda path: read_record(path) is not None)
print(f"packed {len(names)} finished runs into {archive.archive_path(sys.argv[1])}")
PY
HF_HUB_OFFLINE=1 python -m recipes.sweep "$config" --aggregate-only > /dev/null 2>&1 || true
study=$(dirname "$config")
git add "$study"
git commit -q -m "$message" -- "$study" && git log --oneline -1
