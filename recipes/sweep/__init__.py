"""Sweeps over tasks × training-set sizes × seeds × methods (× LoRA on/off) with recipes/glue/run_glue.py.

Run from the repository root: ``python -m recipes.sweep CONFIG``.

One YAML file describes the grid (see recipes/sweeps/*.yaml and the studies' studies/<study>/*.yaml; each starts
with the command that runs it). A task is a GLUE task or ``rotten_tomatoes`` by name, or your own files (a task
entry with ``train_file``, ``validation_file``, ``text_columns`` and ``label_column``); its training-set sizes are
``fractions``, ``shots_per_class`` or ``max_train_samples`` (a list, per task or at the top level). Every run gets
its own folder ``<output_dir>/runs/<task>/<size>/<method>[-lora]/seed<s>/`` (``<size>``: ``frac0.01``,
``shots16`` or ``n500``) holding the recipe's outputs and ``result.json``, written only when the run succeeded,
with the run's resolved arguments, their key (a hash of them) and ``data``: the sha256 of every local data file
the run read (a custom task's files, a GLUE task's files under ``glue_dir``, the built-in data's CSV; a GLUE task
from the Hub has none).
The config, every run's arguments and the data are checked before the first run: each distinct task's data is read
once with the recipe's loader and every run's training subset is drawn from its labels (an unknown task, a missing
file or column, bad labels, more shots than a class has: one error listing the runs; a one-class subset: a warning).
Re-running the sweep skips runs that have ``result.json`` for the same arguments and data and retries the others (a
failed run leaves ``error.txt``); a finished run whose arguments or data files have changed since, or whose
``result.json`` stores no arguments, is never reused: the sweep stops before the first run and names what changed
(``--redo-changed`` runs them again). A result recorded before data fingerprints were stored is reused with one
warning naming the files it could not verify. Then the results of the grid's runs are aggregated (a half-written
``result.json`` is skipped with a warning):

* ``<output_dir>/results.csv``: one row per run (the size, ``lora``, ``n_train``, ``n_eval``, best- and final-
  evaluation scores, best evaluation, wall time, TempBalance's recompute interval ``tb_interval``);
* ``<output_dir>/summary.csv`` and ``summary.md``: best- and final-epoch scores, mean ± std over seeds per task,
  size and method, and each method's difference to the baseline with a paired t-test over seeds
  (``scipy.stats.ttest_rel``);
* ``<output_dir>/scores.png``: the metric at each training-set size, one panel per task, one line per method.

Usage:

```bash
python -m recipes.sweep recipes/sweeps/default.yaml              # the built-in default (bash scripts/run.sh)
python -m recipes.sweep recipes/sweeps/minilm_kshot.yaml         # k-shot subsets (and your own files)
python -m recipes.sweep recipes/sweeps/roberta_glue.yaml         # roberta-base with the Hub, the paper's grid
python -m recipes.sweep recipes/sweeps/default.yaml --aggregate-only
python -m recipes.sweep recipes/sweeps/default.yaml --dry-run    # list the runs and whether they are done
python -m recipes.sweep recipes/sweeps/default.yaml --workers 2  # 2 single-threaded processes, then aggregate
python -m recipes.sweep recipes/sweeps/default.yaml --shard 1/4  # the first quarter of the grid (e.g. per machine)
python -m recipes.sweep recipes/sweeps/default.yaml --methods ft,llrd --sizes 0.005  # part of the grid
python -m recipes.sweep recipes/sweeps/default.yaml --pack       # the finished runs into runs.jsonl.xz
```

A method is one of run_glue's ``--method`` choices (``ft``, ``tempbalance``, ``llrd``) or a named variant whose
``method_args`` entry says which, e.g. ``tempbalance-once: {method: tempbalance, tb_update_steps: once}`` or
``ft-lr1e-4: {method: ft, learning_rate: 1.0e-4}``; the name is the run folder's and the results' method.
``summary.md`` also pools each method − baseline per model over every (task, size, seed) pair (paired t-test and
sign count), compares other pairs of methods the same way where the config lists them (``contrasts: ["tempbalance
vs llrd"]``, also in ``contrasts.csv``) and, for TempBalance runs, compares the spread of block α at step 0 with
its run-to-run noise.

``--pack`` (once the sweep has finished) moves every finished run's ``result.json`` and
``tempbalance/history.jsonl`` into one compressed file, ``<output_dir>/runs.jsonl.xz`` (one JSON line per run:
``{"name": ..., "result": {...}, "history": [...]}``, see `recipes.sweep.archive`), checked byte for byte before
a file is deleted; ``--unpack`` writes them back. The sweep reads packed runs as it reads loose ones: a packed run
is finished under the same checks of its settings and data (so resuming a packed sweep skips it, and a changed
setting is still refused), ``--aggregate-only`` reads packed and loose runs alike, and ``--redo-changed`` takes a
changed packed run out of the archive (kept as ``result.replaced.json``). The committed studies (``studies/``) keep
their runs packed.

Runs go in-process by default (``launcher: inprocess``, no start-up cost per run); ``launcher: python`` starts
each in its own process and ``launcher: accelerate launch --num_processes 2 --multi_gpu`` under accelerate.

Several sweep processes may work on one grid at once (a second one started later on a free core, or machines that
share the folder): each run is claimed with a ``running.lock`` file holding its host, process id and run key, a run
another live process holds or has finished with the same settings is skipped, one held or finished with other
settings (another config on this output_dir) is an error, and a lock left by a killed process of this machine is
taken over.

The package: `recipes.sweep.grid` (config -> runs, checked with their data), `recipes.sweep.provenance` (what a
result.json vouches for: arguments and data fingerprints), `recipes.sweep.archive` (packed runs),
`recipes.sweep.launch` (what is done, claims, launchers, workers), `recipes.sweep.results` (finished runs ->
tables), `recipes.sweep.stats` (paired tests, pooled, contrasts, curves, α spread), `recipes.sweep.report`
(markdown, plot, the files) and `recipes.sweep.cli` (the command).
"""

from .cli import main
from .grid import (
    RESULT_FILE,
    SIZES,
    Run,
    check_data,
    contrasts,
    expand_grid,
    load_config,
    recipe_method,
    run_key,
    select_runs,
    validate,
)
from .launch import execute, is_done, status
from .provenance import fingerprints
from .report import aggregate, markdown_table, plot_curve, plot_scores
from .results import collect, collect_alpha
from .stats import alpha_spread, contrast_frame, curves, pooled, size_curve, size_trend, summarize

__all__ = [
    "RESULT_FILE", "SIZES", "Run", "aggregate", "alpha_spread", "check_data", "collect", "collect_alpha",
    "contrast_frame", "contrasts", "curves", "execute", "expand_grid", "fingerprints", "is_done", "load_config",
    "main", "markdown_table", "plot_curve", "plot_scores", "pooled", "recipe_method", "run_key", "select_runs",
    "size_curve", "size_trend", "status", "summarize", "validate",
]  # fmt: skip
