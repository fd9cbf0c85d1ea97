"""The sweep's grid: a YAML config -> the runs it defines (task × size × seed × method × LoRA), each with the exact
run_glue arguments that define it, checked before the first run."""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Size:
    """One way to size the training subset: the YAML key listing the sizes, run_glue's flag, the results column
    and the run folder prefix."""

    yaml_key: str
    flag: str
    column: str
    folder: str
    label: str  # in tables and plots


SIZES = {
    size.column: size
    for size in (
        Size("fractions", "train_fraction", "fraction", "frac", "fraction"),
        Size("shots_per_class", "shots_per_class", "shots_per_class", "shots", "shots per class"),
        Size("max_train_samples", "max_train_samples", "max_train_samples", "n", "max train samples"),
    )
}
CONFIG_KEYS = (
    "output_dir", "launcher", "tasks", "seeds", "methods", "baseline", "contrasts", "lora", "lora_args", "args",
    "method_args", *(size.yaml_key for size in SIZES.values()),
)  # fmt: skip

#: Run arguments that say where a run goes, not what it is: left out of its key.
_NOT_DEFINING = ("output_dir",)


def run_key(args: dict) -> str:
    """What defines a run, as a short hash of its resolved run_glue arguments (all but ``output_dir``). A finished
    run whose stored key differs from its config's was made with other settings (see `changed_settings`)."""
    defining = {k: v for k, v in args.items() if k not in _NOT_DEFINING}
    return hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_settings(old: dict, new: dict) -> dict[str, tuple]:
    """The run arguments that differ between a finished run (``old``) and its config now (``new``):
    name -> (old value, new value); missing values are None."""
    names = [k for k in dict.fromkeys([*old, *new]) if k not in _NOT_DEFINING]
    return {k: (old.get(k), new.get(k)) for k in names if old.get(k) != new.get(k)}


@dataclass(frozen=True)
class Run:
    task: str
    size_key: str  # "fraction", "shots_per_class" or "max_train_samples" (a key of SIZES)
    size: float | int
    method: str
    lora: bool
    seed: int
    args: dict  # run_glue arguments

    @property
    def name(self) -> str:
        size = f"{SIZES[self.size_key].folder}{self.size:g}"
        return f"{self.task}/{size}/{self.method}{'-lora' if self.lora else ''}/seed{self.seed}"

    @property
    def fraction(self) -> float | None:
        return self.size if self.size_key == "fraction" else None

    @property
    def out(self) -> Path:
        return Path(self.args["output_dir"])

    @property
    def root(self) -> Path:
        """The sweep's ``output_dir`` (the run's folder is ``<root>/runs/<name>``; its tables and archive are here)."""
        return self.out.parents[len(Path(self.name).parts)]

    @property
    def key(self) -> str:
        return run_key(self.args)

    def __hash__(self):
        return hash(self.name)


def load_config(path: str | Path) -> dict:
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read the sweep config {path}: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a sweep config is a mapping (see recipes/sweeps/default.yaml for the layout).")
    missing = [k for k in ("output_dir", "tasks", "seeds", "methods") if k not in config]
    if missing:
        raise ValueError(f"{path}: missing keys {missing} (see recipes/sweeps/default.yaml for the layout).")
    unknown = [k for k in config if k not in CONFIG_KEYS]
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; a sweep config has {list(CONFIG_KEYS)}.")
    return config


def _sizes(task: str, task_cfg: dict, config: dict) -> tuple[Size, list]:
    """The task's sizes (taken out of its entry) or else the top-level ones, checked."""
    names = [size.yaml_key for size in SIZES.values()]
    local = [k for k in names if k in task_cfg]
    given, source = (local, task_cfg) if local else ([k for k in names if config.get(k) is not None], config)
    if len(given) != 1:
        raise ValueError(
            f"Task {task!r}: give exactly one of {names} (in the task or at the top level), got {given or 'none'}."
        )
    size = next(s for s in SIZES.values() if s.yaml_key == given[0])
    values = source[given[0]]
    task_cfg.pop(given[0], None)
    values = values if isinstance(values, list) else [values]
    if size.column == "fraction":
        ok = [isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 1 for v in values]
        need = "numbers in (0, 1] (0.01 = 1% of the training set)"
    else:
        ok = [isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values]
        need = "whole numbers >= 1"
    if not values or not all(ok):
        raise ValueError(f"Task {task!r}: {size.yaml_key} must be a list of {need}, got {values}.")
    if len(set(values)) != len(values):
        raise ValueError(f"Task {task!r}: {size.yaml_key} lists a size twice: {values}.")
    return size, values


def _unique_list(config: dict, key: str, kind, example: str, what: str) -> list:
    values = config.get(key)
    if not isinstance(values, list) or not values or not all(isinstance(x, kind) for x in values):
        raise ValueError(f"'{key}' must be a list of {what}, e.g. {example}, got {values!r}.")
    if kind is int and any(isinstance(x, bool) for x in values):
        raise ValueError(f"'{key}' must be a list of {what}, e.g. {example}, got {values!r}.")
    twice = sorted({x for x in values if values.count(x) > 1})
    if twice:
        raise ValueError(f"'{key}' lists {twice} more than once: each would be the same run ({values!r}).")
    return values


def expand_grid(config: dict) -> list[Run]:
    """The runs of a sweep config, in order task, size, seed, method, lora.

    A task is a GLUE task or ``rotten_tomatoes`` by name, or any name with ``train_file``, ``validation_file``,
    ``text_columns`` (and ``label_column``) in its entry: a custom task. Its sizes are one of ``fractions``,
    ``shots_per_class`` or ``max_train_samples`` (a list, in the task or at the top level). A task's entry may set
    any run argument for all its runs (``learning_rate: 1.0e-4``) and, under ``method_args``, for one method's runs
    (``method_args: {llrd: {llrd_decay: 0.8}}``: settings chosen per task), over the top-level ``method_args``.
    """
    out_root = Path(config["output_dir"])
    tasks = config["tasks"]
    if isinstance(tasks, list):
        tasks = {t: {} for t in tasks}
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError("'tasks' must list task names, or map each task name to its settings.")
    seeds = _unique_list(config, "seeds", int, "[13, 37, 43]", "whole numbers")
    loras = _unique_list({"lora": config.get("lora", [False])}, "lora", bool, "[false, true]", "true/false")
    for key in ("args", "method_args", "lora_args"):
        if not isinstance(config.get(key) or {}, dict):
            raise ValueError(f"'{key}' must map names to values, got {config[key]!r}.")
    runs = []
    for task, task_cfg in tasks.items():
        if not isinstance(task_cfg or {}, dict):
            raise ValueError(f"Task {task!r}: its entry must map settings to values, e.g. {{fractions: [0.1]}}.")
        task_cfg = dict(task_cfg or {})
        size, values = _sizes(task, task_cfg, config)
        task_methods = task_cfg.pop("method_args", None) or {}
        if not isinstance(task_methods, dict) or any(not isinstance(v or {}, dict) for v in task_methods.values()):
            raise ValueError(
                f"Task {task!r}: its method_args must map method names to settings, got {task_methods!r}."
            )
        extra = [m for m in task_methods if m not in config["methods"]]
        if extra:
            raise ValueError(f"Task {task!r}: method_args has {extra}, which are not among the methods.")
        # What the grid sets for each run (a size flag outside the task's size list is dropped: the list wins).
        # A method_args entry may name a variant's run_glue "method"; args and the task entry may not.
        owned = {"task_name", "seed", "output_dir"}
        places = [
            ("args", config.get("args") or {}, owned | {"method"}),
            (f"task {task!r}", task_cfg, owned | {"method"}),
        ]
        places += [(f"method_args of {m!r}", v or {}, owned) for m, v in (config.get("method_args") or {}).items()]
        places += [(f"task {task!r}'s method_args of {m!r}", v or {}, owned) for m, v in task_methods.items()]
        for where, given, refused in places:
            clash = sorted(refused & set(given))
            if clash:
                raise ValueError(
                    f"{where} sets {clash}, which the sweep sets itself for each run (the task is the entry's name, "
                    "the seed from 'seeds', the method from 'methods', the folder from output_dir): remove them."
                )  # fmt: skip
        custom = "train_file" in task_cfg or "train_file" in (config.get("args") or {})
        for value, seed, method, lora in itertools.product(values, seeds, config["methods"], loras):
            args = ({} if custom else {"task_name": task}) | dict(config.get("args") or {}) | task_cfg
            method_args = dict((config.get("method_args") or {}).get(method) or {})
            method_args |= dict(task_methods.get(method) or {})  # the task's own settings for this method
            recipe = method_args.pop("method", method)  # a named variant: its run_glue --method
            args |= method_args
            if lora:
                args |= dict(config.get("lora_args") or {"lora_r": 8, "lora_alpha": 16})
            if bool(lora) != (args.get("lora_r") is not None):  # the tables' lora column must be what the run does
                raise ValueError(
                    f"Task {task!r}, method {method!r}: a 'lora: true' run needs lora_args with lora_r (e.g. "
                    "{lora_r: 8, lora_alpha: 16}), and a 'lora: false' run must not set lora_r (put LoRA settings "
                    f"in lora_args, not args or method_args); got lora={bool(lora)}, lora_r={args.get('lora_r')!r}."
                )
            args |= {s.flag: None for s in SIZES.values()}  # the sweep's size is the only one
            args |= {size.flag: value, "method": recipe, "seed": seed}
            value = float(value) if size.column == "fraction" else int(value)
            run = Run(task, size.column, value, method, bool(lora), int(seed), args)
            run.args["output_dir"] = str(out_root / "runs" / run.name)
            runs.append(run)
    same = sorted(n for n, k in collections.Counter(r.name for r in runs).items() if k > 1)
    if same and len(set(config["methods"])) == len(config["methods"]):  # a method listed twice: validate says so
        raise ValueError(
            f"Runs {same[:3]} would share one folder (sizes that print alike at 6 significant digits, or a size "
            "listed twice): make the sizes distinct."
        )
    return runs


def contrasts(config: dict) -> list[tuple[str, str]]:
    """The config's ``contrasts``: extra paired comparisons besides method − baseline, each ``"A vs B"`` (A − B,
    e.g. ``"tempbalance-mb vs llrd"``: does TempBalance beat the stronger baseline, not only plain FT?). Raises
    ValueError for anything else, or a method the sweep does not run."""
    given = config.get("contrasts") or []
    if not isinstance(given, list):
        raise ValueError(f"'contrasts' is a list of 'A vs B' (A − B, both among the methods), got {given!r}.")
    pairs = []
    for item in given:
        parts = item.split(" vs ") if isinstance(item, str) else []
        names = [x.strip() for x in parts]
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            raise ValueError(
                f"contrast {item!r}: write 'A vs B' with two different methods, e.g. 'tempbalance vs llrd'."
            )
        unknown = [m for m in names if m not in config["methods"]]
        if unknown:
            raise ValueError(f"contrast {item!r}: {unknown} not among the methods {config['methods']}.")
        pairs.append((names[0], names[1]))
    return pairs


def recipe_method(config: dict, name: str) -> str:
    """The run_glue ``--method`` of a sweep method name: the ``method`` of its ``method_args`` entry (a named
    variant, e.g. ``tempbalance-once: {method: tempbalance, tb_update_steps: once}``), else the name itself."""
    entry = (config.get("method_args") or {}).get(name) or {}
    return entry.get("method", name) if isinstance(entry, dict) else name


def validate(config: dict, runs: list[Run]) -> dict[str, tuple]:
    """Refuse a config that cannot run, before the first run: unknown methods, ``method_args`` for a method
    that is not swept, a baseline that is not swept, and any run whose arguments run_glue's parser rejects
    (parsed exactly as the run will be, without loading data or a model). Raises ValueError saying what to fix.

    Returns:
        Each run's parsed arguments (run name -> run_glue's (model, data, training) arguments), for `check_data`.
    """
    from recipes.glue import run_glue

    methods = config["methods"]
    if not isinstance(methods, list) or not methods:
        raise ValueError(f"'methods' must be a list of {list(run_glue.METHODS)}, got {methods!r}.")
    bad_names = [m for m in methods if not isinstance(m, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", m)]
    if bad_names:
        raise ValueError(
            f"method names {bad_names} must be single words (letters, digits, - _ . +): they name folders."
        )
    if len(set(methods)) != len(methods):
        raise ValueError(f"'methods' lists a name twice: {methods}.")
    unknown = [m for m in methods if recipe_method(config, m) not in run_glue.METHODS]
    if unknown:
        raise ValueError(
            f"methods {unknown} are unknown; run_glue's methods are {list(run_glue.METHODS)}. A named variant gives "
            f"its run_glue method in method_args, e.g. method_args: {{{unknown[0]}: {{method: tempbalance, "
            "tb_update_steps: once}}."
        )
    extra = [m for m in (config.get("method_args") or {}) if m not in methods]
    if extra:
        raise ValueError(f"method_args has {extra}, which are not among the methods {methods}: fix or drop them.")
    baseline = config.get("baseline", "ft")
    if baseline not in methods:
        raise ValueError(f"baseline {baseline!r} is not among the methods {methods}.")
    parser = run_glue.make_parser(raise_errors=True)
    problems: dict[str, list[str]] = {}
    parsed = {}
    for run in runs:
        try:
            parsed[run.name] = run_glue.parse_args(run_glue.config_to_argv(run.args), parser)
        except ValueError as err:
            problems.setdefault(str(err), []).append(run.name)
    if problems:
        raise ValueError("run_glue would refuse these runs' arguments:\n  " + _listed(problems))
    return parsed


def _listed(problems: dict[str, list[str]], limit: int = 5) -> str:
    """``message (in 3 run(s), e.g. rte/frac0.1/ft/seed1)`` per problem, one per line."""
    lines = [f"{msg} (in {len(names)} run(s), e.g. {names[0]})" for msg, names in problems.items()]
    more = [f"... and {len(lines) - limit} more problems"] if len(lines) > limit else []
    return "\n  ".join(lines[:limit] + more)


def check_data(runs: list[Run], parsed: dict[str, tuple]) -> dict[str, list[str]]:
    """Check the data of ``runs`` before the first run, as each run will read it: every distinct data setting (task,
    files, columns) is loaded once with the recipe's own loader (`recipes.data.load_task`: an unknown task, a missing
    file or column, bad labels, an empty split ...), and each run's training subset is drawn from its labels as the
    run will draw it (`recipes.data.select_train_indices`: a fraction that keeps no example, more shots than a
    class has, a holdout larger than what is left ...), once per distinct subset.

    Args:
        parsed: Each run's parsed arguments, as `validate` returns them.

    Returns:
        Warnings (a subset that holds one class) -> the names of the runs they concern.

    Raises:
        ValueError: listing every problem and how many runs it concerns.
    """
    from recipes.data import load_task, one_class_warning, select_train_indices
    from recipes.glue.run_glue import check_method_data, select_holdout_indices

    groups: dict[tuple, list[tuple[Run, object, object]]] = {}
    for run in runs:
        _, data, training = parsed[run.name]
        setting = (data.task_name, data.glue_dir, data.train_file, data.validation_file,
                   tuple(data.text_columns or ()), data.label_column, data.is_regression)  # fmt: skip
        groups.setdefault(setting, []).append((run, data, training))
    problems: dict[str, list[str]] = {}
    notes: dict[str, list[str]] = {}
    for (name, glue_dir, train, dev, text, label, regression), members in groups.items():
        try:
            raw, task = load_task(
                name, glue_dir=glue_dir, train_file=train, validation_file=dev, text_columns=list(text) or None,
                label_column=label, is_regression=regression,
            )  # fmt: skip
        except ValueError as err:
            problems.setdefault(str(err), []).extend(run.name for run, _, _ in members)
            continue
        labels = list(raw["train"]["label"])
        subsets: dict[tuple, tuple[str | None, str | None]] = {}
        for run, data, training in members:
            seed = training.seed if data.subset_seed is None else data.subset_seed
            how = (data.train_fraction, data.max_train_samples, data.shots_per_class, data.subset_strategy,
                   data.stratify, seed, data.eval_on_train_holdout)  # fmt: skip
            if how not in subsets:
                problem = note = None
                try:
                    indices = select_train_indices(
                        labels, fraction=data.train_fraction, max_samples=data.max_train_samples,
                        per_class=data.shots_per_class, strategy=data.subset_strategy, stratify=data.stratify,
                        seed=seed, is_regression=task.is_regression,
                    )  # fmt: skip
                    note = one_class_warning(labels, indices, task)
                    subset_labels = [labels[i] for i in indices]
                    if data.eval_on_train_holdout is not None:
                        select_holdout_indices(
                            labels, indices, data.eval_on_train_holdout, seed=seed, is_regression=task.is_regression
                        )
                except ValueError as err:
                    problem, subset_labels = f"{run.task}: {err}", None
                subsets[how] = (problem, note, subset_labels)
            problem, note, subset_labels = subsets[how]
            if problem is None:  # what the run's method needs of this subset (SetFit classifies, search folds fit)
                try:
                    check_method_data(parsed[run.name][0], task, subset_labels)
                except ValueError as err:
                    problem = f"{run.task}: {err}"
            if problem is not None:
                problems.setdefault(problem, []).append(run.name)
            if note is not None:
                notes.setdefault(f"{run.task}: {note}", []).append(run.name)
    if problems:
        raise ValueError("the data of these runs cannot work (checked before the first run):\n  " + _listed(problems))
    return notes


def select_runs(
    config: dict,
    runs: list[Run],
    methods: str | None,
    sizes: str | None,
    tasks: str | None = None,
    seeds: str | None = None,
) -> list[Run]:
    """The runs of the ``--methods``, ``--sizes``, ``--tasks`` and ``--seeds`` filters (comma-separated; None keeps
    all), in grid order, except that ``--tasks`` also sets the order of the tasks (the cheap ones first, say). A name,
    size or seed that the config does not have raises ValueError."""
    if seeds is not None:
        try:
            wanted = [int(x) for x in seeds.split(",") if x.strip()]
        except ValueError:
            wanted = []
        unknown = [x for x in wanted if x not in config["seeds"]]
        if unknown or not wanted:
            raise ValueError(f"--seeds {seeds!r}: the config's seeds are {config['seeds']} (comma-separated).")
        runs = [r for r in runs if r.seed in wanted]
    if methods is not None:
        wanted = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in config["methods"]]
        if unknown or not wanted:
            raise ValueError(f"--methods {methods!r}: the config's methods are {config['methods']}.")
        runs = [r for r in runs if r.method in wanted]
    if sizes is not None:
        have = list(dict.fromkeys(f"{r.size:g}" for r in runs))
        wanted = [x.strip() for x in sizes.split(",") if x.strip()]
        try:
            wanted = [f"{float(x):g}" for x in wanted]
        except ValueError:
            wanted = []
        unknown = [x for x in wanted if x not in have]
        if unknown or not wanted:
            raise ValueError(f"--sizes {sizes!r}: the config's sizes are {have} (numbers, comma-separated).")
        runs = [r for r in runs if f"{r.size:g}" in wanted]
    if tasks is not None:
        wanted = list(dict.fromkeys(t.strip() for t in tasks.split(",") if t.strip()))
        unknown = [t for t in wanted if t not in config["tasks"]]
        if unknown or not wanted:
            raise ValueError(f"--tasks {tasks!r}: the config's tasks are {list(config['tasks'])}.")
        runs = sorted((r for r in runs if r.task in wanted), key=lambda r: wanted.index(r.task))
    return runs


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; ValueError saying so otherwise."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise ValueError(
            f"--shard takes K/N with 1 <= K <= N (part K of N: 1/2 and 2/2 split a sweep in two), got {text!r}."
        )
    return k, n
