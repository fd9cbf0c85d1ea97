"""recipes.sweep: config checks before the first run, sizes other than fractions, custom-file tasks, one failing
run among finished ones, plain progress lines, the plot, and workers that die with their parent."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf
import yaml

from recipes import sweep

ROOT = Path(__file__).resolve().parents[1]

WORDS = "a good bad film movie fine awful great".split()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny BERT classifier and its word-level tokenizer saved as a model folder (no Hub)."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tf.BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = tf.BertConfig(
        vocab_size=5 + len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=32, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    tf.BertForSequenceClassification(config).save_pretrained(folder)
    return str(folder)


def write_config(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def write_glue(folder: Path, rows: int = 40) -> None:
    """Tiny GLUE release files (RTE, MRPC, SST-2; train and dev, the classes alternating), for the data check."""
    files = {
        "RTE": ("index\tsentence1\tsentence2\tlabel", "{i}\ta {i}\tb {i}\t{name}"),
        "MRPC": ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "{c}\t{i}\t{i}\ta {i}\tb {i}"),
        "SST-2": ("sentence\tlabel", "film {i}\t{c}"),
    }
    for task, (header, row) in files.items():
        (folder / task).mkdir(parents=True, exist_ok=True)
        for split, n in (("train", rows), ("dev", 10)):
            lines = [row.format(i=i, c=i % 2, name=("entailment", "not_entailment")[i % 2]) for i in range(n)]
            (folder / task / f"{split}.tsv").write_text("\n".join([header, *lines]) + "\n")


def glue_config(tmp_path: Path, **overrides) -> dict:
    """A config over tiny local GLUE files (written to ``tmp_path/glue`` if not there)."""
    if not (tmp_path / "glue").exists():
        write_glue(tmp_path / "glue")
    return {
        "output_dir": str(tmp_path / "out"),
        "tasks": {"rte": {"fractions": [0.1, 0.2]}},
        "seeds": [1, 2],
        "methods": ["ft", "tempbalance"],
        "args": {"glue_dir": str(tmp_path / "glue")},
    } | overrides


# --------------------------------------------------------------------------------------------------
# Command and config errors: exit status 2 before the first run


@pytest.mark.parametrize("shard", ["x", "0/2", "3/2", "1/0", "1-2"])
def test_bad_shard_is_a_usage_error(tmp_path, capsys, shard):
    with pytest.raises(SystemExit) as exit_:
        sweep.main([write_config(tmp_path, glue_config(tmp_path)), "--shard", shard])
    assert exit_.value.code == 2
    assert "--shard takes K/N with 1 <= K <= N" in capsys.readouterr().err


def test_shard_with_aggregate_only(tmp_path, capsys):
    path = write_config(tmp_path, glue_config(tmp_path))
    assert sweep.main([path, "--shard", "1/2", "--aggregate-only"]) == 0  # was UnboundLocalError: counts
    out = capsys.readouterr().out
    assert "nothing written" in out and "Results in" not in out and "8 runs have not run yet" in out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(methods=["ftt"]), r"methods \['ftt'\] are unknown"),
        (dict(method_args={"tempbalanc": {"tb_mapping": "sigmoid"}}), r"method_args has \['tempbalanc'\]"),
        (dict(baseline="llrd"), "baseline 'llrd' is not among the methods"),
        (dict(args={"learnin_rate": 1e-3}), "unrecognized arguments: --learnin_rate"),
        (dict(method_args={"tempbalance": {"tb_mapping": "cubic"}}), r"invalid choice: 'cubic'.*tempbalance/seed1"),
        (dict(args={"num_train_epochs": "three"}), "invalid float value: 'three'"),
        (dict(tasks={"rte": {"fractions": [2]}}), r"fractions must be a list of numbers in \(0, 1\]"),
        (dict(tasks={"rte": {"shots_per_class": [8.5]}}), "shots_per_class must be a list of whole numbers"),
        (dict(tasks={"rte": {"fractions": [0.1], "max_train_samples": [9]}}), "give exactly one of"),
        (dict(fractoins=[0.1]), r"unknown keys \['fractoins'\]"),
        (dict(seeds=13), "'seeds' must be a list of whole numbers"),
        (dict(lora=True), "'lora' must be a list of true/false"),
        (dict(tasks={"rte": 0.1}), "Task 'rte': its entry must map settings to values"),
        (dict(contrasts=["tempbalance vs llrd"]), r"contrast 'tempbalance vs llrd': \['llrd'\] not among the methods"),
        (dict(contrasts="tempbalance vs ft"), "'contrasts' is a list of 'A vs B'"),
        (dict(contrasts=["tempbalance - ft"]), "write 'A vs B' with two different methods"),
    ],
)
def test_bad_config_is_refused_before_the_first_run(tmp_path, capsys, monkeypatch, overrides, message):
    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: pytest.fail(f"{run.name} ran"))
    with pytest.raises(SystemExit) as exit_:
        sweep.main([write_config(tmp_path, glue_config(tmp_path, **overrides))])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err, flags=re.DOTALL), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_failed_runs_and_nothing_written_are_reported_truthfully(tmp_path, capsys, monkeypatch):
    def fail(run):
        raise RuntimeError("no data")

    monkeypatch.setattr(sweep.launch, "_run_inprocess", fail)
    assert sweep.main([write_config(tmp_path, glue_config(tmp_path))]) == 1
    out = capsys.readouterr().out
    assert "Results in" not in out and "nothing written" in out
    assert "8 runs failed (rte/frac0.1/ft/seed1, rte/frac0.1/tempbalance/seed1, " in out
    assert not (tmp_path / "out" / "results.csv").exists()


# --------------------------------------------------------------------------------------------------
# Sizes, custom files, one failing run, plain progress, re-runs


def test_grid_of_shots_samples_and_custom_files(tmp_path):
    config = glue_config(
        tmp_path,
        tasks={
            "sst2": {"shots_per_class": [8, 16]},
            "reviews": {
                "train_file": "t.csv", "validation_file": "d.csv", "text_columns": ["text"], "max_train_samples": [100]
            },
        },
        args={"glue_dir": "g", "train_fraction": 0.5},
    )  # fmt: skip
    runs = sweep.expand_grid(config)
    names = [r.name for r in runs]
    assert names[0] == "sst2/shots8/ft/seed1" and "reviews/n100/tempbalance/seed2" in names and len(runs) == 12
    sst2, reviews = runs[0].args, runs[-1].args
    assert sst2["task_name"] == "sst2" and sst2["shots_per_class"] == 8 and sst2["train_fraction"] is None
    assert "task_name" not in reviews and reviews["train_file"] == "t.csv" and reviews["max_train_samples"] == 100
    assert (runs[0].size_key, runs[0].size, runs[0].fraction) == ("shots_per_class", 8, None)
    # The existing configs keep their run folders.
    runs = sweep.expand_grid(sweep.load_config(ROOT / "recipes" / "sweeps" / "default.yaml"))
    assert runs[0].name == "rotten_tomatoes/frac0.005/ft/seed13" and runs[0].args["train_fraction"] == 0.005


@pytest.mark.slow  # a real training run or subprocess
def test_custom_file_sweep_end_to_end_with_one_failing_task(tmp_path, tiny_model_dir, capsys):
    rows = "".join(f"{w} film,{s}\n" for w, s in [("good", "pos"), ("bad", "neg"), ("great", "pos"), ("awful", "neg")])
    (tmp_path / "train.csv").write_text("text,stars\n" + rows * 3)
    (tmp_path / "dev.csv").write_text("text,stars\n" + rows * 2)
    files = {"train_file": str(tmp_path / "train.csv"), "text_columns": ["text"], "label_column": "stars"}
    config = {
        "output_dir": str(tmp_path / "out"),
        "tasks": {
            "reviews": files | {"validation_file": str(tmp_path / "dev.csv"), "shots_per_class": [2, 4]},
            "reviews_n": files | {"validation_file": str(tmp_path / "dev.csv"), "max_train_samples": [6]},
            # fails after its model loads (a data problem would stop the sweep before the first run)
            "broken": files | {"validation_file": str(tmp_path / "dev.csv"), "max_train_samples": [6],
                               "max_seq_length": 64},
        },
        "seeds": [1],
        "methods": ["ft", "tempbalance"],
        "args": {
            "model_name_or_path": tiny_model_dir, "num_train_epochs": 2, "learning_rate": 1e-3,
            "per_device_train_batch_size": 4, "max_seq_length": 16, "eval_strategy": "epoch",
            "logging_strategy": "epoch", "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
            "use_cpu": True,
        },
        "method_args": {"tempbalance": {"tb_update_steps": 1}},
    }  # fmt: skip
    path = write_config(tmp_path, config)
    assert sweep.main([path]) == 1  # the broken task's runs failed, the others finished
    captured = capsys.readouterr()
    out = Path(config["output_dir"])
    assert "--max_seq_length 64" in (out / "runs/broken/n6/ft/seed1/error.txt").read_text()
    wrote = "Wrote results.csv, summary.csv, summary.md, pooled.csv, alpha.csv, scores.png"
    assert wrote in captured.out and "(6 of 8 runs" in captured.out
    assert "2 runs failed (broken/n6/ft/seed1, broken/n6/tempbalance/seed1)" in captured.out
    # Not a terminal: one plain line per run, no bar and no escape codes.
    assert "sweep: [1/8] broken/n6/ft/seed1 FAILED" in captured.err
    assert "sweep: [3/8] reviews/shots2/ft/seed1 ok" in captured.err
    assert "\r" not in captured.err and "\x1b[" not in captured.err

    results = pd.read_csv(out / "results.csv")
    assert list(results.columns[:4]) == ["model", "task", "shots_per_class", "max_train_samples"]
    assert {"n_train", "n_eval", "best_epoch"} <= set(results.columns)
    shots = results[results["task"] == "reviews"].sort_values("shots_per_class")
    assert shots["n_train"].tolist() == [4, 4, 8, 8] and set(shots["n_eval"]) == {8}
    assert results["best_epoch"].dtype.kind == "i" and set(results["best_epoch"]) <= {1, 2}
    assert results.loc[results["task"] == "reviews_n", "n_train"].tolist() == [6, 6]
    assert "| task | size | n train |" in (out / "summary.md").read_text()
    assert "| reviews | 2 (shots per class) | 4 |" in (out / "summary.md").read_text()

    # Re-run: the finished runs are skipped and said to be, the failed ones are retried.
    assert sweep.main([path]) == 1
    assert "sweep: skipped 6 finished runs, 2 to run" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Outputs


def test_scores_plot_labels_sizes_and_dodges_methods(tmp_path):
    rows = []
    for fraction, n in ((0.005, 37), (0.02, 150)):
        for method, score in (("ft", 0.6), ("tempbalance", 0.61), ("llrd", 0.62)):
            rows.append(
                {"task": "rotten_tomatoes", "size_key": "fraction", "size": fraction, "method": method,
                 "metric": "accuracy", "n_train": n, "mean": score, "std": 0.03}
            )  # fmt: skip
    fig = sweep.plot_scores(pd.DataFrame(rows), tmp_path / "scores.png", ["ft", "tempbalance", "llrd"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5%\n(37 ex.)", "2%\n(150 ex.)"]
    assert "% of the training set" in ax.get_xlabel() and ax.get_xscale() == "linear"
    xs = [tuple(line.get_xdata()) for line in ax.lines if len(line.get_xdata()) == 2]
    assert len(set(xs)) == 3  # three methods, three different x positions: no overlapping error bars
    assert (tmp_path / "scores.png").stat().st_size > 0
    # a second task with only some of the methods: every method keeps its colour and the legend names all three
    rows += [r | {"task": "sst2", "mean": r["mean"] + 0.1} for r in rows if r["method"] != "tempbalance"]
    fig = sweep.plot_scores(pd.DataFrame(rows), tmp_path / "scores.png", ["ft", "tempbalance", "llrd"])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ft", "tempbalance", "llrd"]
    colours = [{line.get_color() for line in ax.lines if len(line.get_xdata()) == 2} for ax in fig.axes]
    assert len(colours[0]) == 3 and colours[1] == colours[0] - {"C1"}  # llrd is C2 in both panels


def test_results_csv_has_whole_best_epochs(tmp_path):
    config = glue_config(tmp_path, tasks={"rte": {"fractions": [0.1]}}, methods=["ft"], seeds=[1])
    run = sweep.expand_grid(config)[0]
    Path(run.args["output_dir"]).mkdir(parents=True)
    results = {"main_metric": "accuracy", "best_eval_accuracy": 0.6, "eval_accuracy": 0.5, "best_epoch": 2.0,
               "train_samples": 249, "eval_samples": 277}  # fmt: skip
    record = {"task": "rte", "fraction": 0.1, "method": "ft", "lora": False, "seed": 1, "results": results}
    (Path(run.args["output_dir"]) / sweep.RESULT_FILE).write_text(json.dumps(record))  # a record from before sizes
    sweep.aggregate(config)
    text = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert text[0].startswith("model,task,fraction,lora,method,seed,metric,n_train,n_eval,best,final,best_epoch")
    assert text[1].startswith(",rte,0.1,False,ft,1,accuracy,249,277,0.6,0.5,2,")  # a record without args: no model


# --------------------------------------------------------------------------------------------------
# Workers die with their parent


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.slow  # a real training run or subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux-only")
def test_sigkill_of_the_workers_parent_ends_its_workers_and_their_runs(tmp_path):
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(
        "import os, sys, time\n"
        "out = sys.argv[sys.argv.index('--output_dir') + 1]\n"
        "open(os.path.join(out, 'pids'), 'w').write(f'{os.getpid()} {os.getppid()}')\n"
        "time.sleep(300)\n"
    )
    config = glue_config(tmp_path, methods=["ft"], seeds=[1], launcher=f"{sys.executable} {sleeper}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    parent = subprocess.Popen(
        [sys.executable, "-m", "recipes.sweep", write_config(tmp_path, config), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
    )  # fmt: skip
    pid_files = [Path(r.args["output_dir"]) / "pids" for r in sweep.expand_grid(config)]
    try:
        deadline = time.time() + 240
        while not all(p.is_file() and p.read_text() for p in pid_files):
            assert parent.poll() is None and time.time() < deadline, "the workers did not start their runs"
            time.sleep(0.5)
        pids = [int(x) for p in pid_files for x in p.read_text().split()]  # each run and its worker
        assert all(map(_alive, pids)) and len(set(pids)) == 4
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 30
        while any(map(_alive, pids)) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, pids)), [p for p in pids if _alive(p)]
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in [int(x) for p in pid_files if p.is_file() for x in p.read_text().split()]:
            if _alive(pid):  # only when the test failed: leave no process behind
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------------
# Named method variants, sign counts, pooled tests, TempBalance's alpha across blocks and seeds


def variant_config(tmp_path, **overrides) -> dict:
    return (
        glue_config(
            tmp_path,
            tasks={"rte": {"shots_per_class": [4]}, "sst2": {"shots_per_class": [4]}},
            seeds=[1, 2, 3],
            methods=["ft", "ft-lr3x", "tempbalance-mb", "tempbalance-once", "tempbalance"],
            args={
                "glue_dir": str(tmp_path / "glue"),
                "learning_rate": 1e-4,
                "model_name_or_path": "~/models/mpnet-base/",
            },
            method_args={
                "ft-lr3x": {"method": "ft", "learning_rate": 3e-4},
                "tempbalance-mb": {"method": "tempbalance", "tb_mapping": "sigmoid", "tb_xmin_pos": 1.5},
                "tempbalance-once": {"method": "tempbalance", "tb_mapping": "sigmoid", "tb_update_steps": "once"},
                "tempbalance": {"tb_update_steps": 2},
            },
        )
        | overrides
    )


def test_named_method_variants_map_to_run_glue_methods(tmp_path):
    config = variant_config(tmp_path)
    runs = {r.name: r for r in sweep.expand_grid(config)}
    once = runs["rte/shots4/tempbalance-once/seed2"]
    assert once.method == "tempbalance-once" and once.args["method"] == "tempbalance"
    assert once.args["tb_update_steps"] == "once" and once.args["output_dir"].endswith("tempbalance-once/seed2")
    lr3x = runs["sst2/shots4/ft-lr3x/seed1"].args
    assert lr3x["method"] == "ft" and lr3x["learning_rate"] == 3e-4 and "tb_mapping" not in lr3x
    assert runs["sst2/shots4/ft/seed1"].args["learning_rate"] == 1e-4
    assert runs["rte/shots4/tempbalance/seed3"].args == runs["rte/shots4/tempbalance/seed3"].args | {
        "method": "tempbalance", "tb_update_steps": 2
    }  # fmt: skip
    sweep.validate(config, list(runs.values()))  # every variant parses as run_glue arguments
    assert sweep.recipe_method(config, "tempbalance-mb") == "tempbalance" and sweep.recipe_method(config, "ft") == "ft"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(methods=["ft", "tempbalance-mb"], method_args={}), r"methods \['tempbalance-mb'\] are unknown.*method:"),
        (dict(methods=["ft", "tb"], method_args={"tb": {"method": "sgd"}}), r"methods \['tb'\] are unknown"),
        (dict(methods=["ft", "tb/once"], method_args={}), "must be single words"),
        (dict(methods=["ft", "ft"], method_args={}), "lists a name twice"),
    ],
)
def test_bad_method_variants_are_refused(tmp_path, capsys, monkeypatch, overrides, message):
    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: pytest.fail(f"{run.name} ran"))
    with pytest.raises(SystemExit) as exit_:
        sweep.main([write_config(tmp_path, variant_config(tmp_path, **overrides))])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err, flags=re.DOTALL)


def fake_record(run, score: float, final: float, history: list[dict] | None = None) -> None:
    out = Path(run.args["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    results = {"main_metric": "accuracy", "best_eval_accuracy": score, "eval_accuracy": final, "best_epoch": 2,
               "train_samples": 8, "eval_samples": 277, "epoch_scores": [final, score],
               "eval_split": "validation"}  # fmt: skip
    record = {"task": run.task, "size_key": run.size_key, "size": run.size, "fraction": None, "method": run.method,
              "lora": run.lora, "seed": run.seed, "args": run.args, "results": results}  # fmt: skip
    (out / sweep.RESULT_FILE).write_text(json.dumps(record))
    if history is not None:
        (out / "tempbalance").mkdir(exist_ok=True)
        (out / "tempbalance" / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))


def test_sign_counts_pooled_test_and_model_column(tmp_path):
    from scipy.stats import ttest_rel

    config = variant_config(tmp_path, methods=["ft", "tempbalance-mb"])
    rng = np.random.default_rng(0)
    scores = {}
    for run in sweep.expand_grid(config):
        base = {"rte": 0.55, "sst2": 0.80}[run.task] + 0.01 * run.seed
        score = base + (rng.normal(0.01, 0.02) if run.method != "ft" else 0.0)
        scores[(run.task, run.seed, run.method)] = score
        fake_record(run, score, score - 0.05)
    sweep.aggregate(config)
    out = Path(config["output_dir"])
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns[:7]) == ["model", "task", "shots_per_class", "lora", "method", "seed", "metric"]
    assert set(results["model"]) == {"mpnet-base"} and set(results["eval_split"]) == {"validation"}
    assert {"learning_rate", "epoch_scores"} <= set(results.columns)

    summary = sweep.summarize(sweep.collect(out))
    rte = summary[(summary["task"] == "rte") & (summary["method"] == "tempbalance-mb")].iloc[0]
    d = [scores[("rte", s, "tempbalance-mb")] - scores[("rte", s, "ft")] for s in (1, 2, 3)]
    signs = (sum(x > 0 for x in d), sum(x < 0 for x in d), 0, 3)
    assert (rte["wins"], rte["losses"], rte["ties"], rte["n_pairs"]) == signs

    pool = sweep.pooled(sweep.collect(out))
    assert len(pool) == 1  # one model, one size: no separate per-size scope
    row = pool.iloc[0]
    a = [scores[(t, s, "tempbalance-mb")] for t in ("rte", "sst2") for s in (1, 2, 3)]
    b = [scores[(t, s, "ft")] for t in ("rte", "sst2") for s in (1, 2, 3)]
    assert (row["n_cells"], row["n_pairs"]) == (2, 6)
    assert row["diff_vs_baseline"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert row["p_value"] == pytest.approx(ttest_rel(a, b).pvalue)
    assert row["wins"] + row["losses"] == 6 and row["mean"] == pytest.approx(np.mean(a))

    text = (out / "summary.md").read_text()
    assert "tempbalance-mb − ft (p; wins:losses)" in text and "Pooled per model" in text
    assert "| mpnet-base | 4 (shots per class) | tempbalance-mb | 2 | 6 |" in text
    assert (out / "pooled.csv").is_file() and "TempBalance's α" not in text  # no history: no alpha section


def test_contrasts_between_methods_other_than_the_baseline(tmp_path, capsys):
    from scipy.stats import ttest_rel

    methods = ["ft", "tempbalance-mb", "tempbalance-once"]
    config = variant_config(tmp_path, methods=methods, contrasts=["tempbalance-mb vs tempbalance-once"])
    scores = {}
    for run in sweep.expand_grid(config):
        if (run.task, run.seed, run.method) == ("sst2", 3, "tempbalance-once"):
            continue  # unfinished: its tempbalance-mb run has no pair in the contrast
        score = 0.6 + 0.01 * run.seed * (methods.index(run.method) + 1) + 0.003 * (run.task == "rte") * run.seed**2
        scores[(run.task, run.seed, run.method)] = score
        fake_record(run, score, score - 0.05)
    sweep.aggregate(config)
    out = Path(config["output_dir"])
    table = pd.read_csv(out / "contrasts.csv")
    best = table[table["score"] == "best"]
    assert set(best["contrast"]) == {"tempbalance-mb − tempbalance-once"}
    assert best["scope"].tolist() == ["cell", "cell", "4 (shots per class)"]  # one size: pooled over it
    rte = best[(best["scope"] == "cell") & (best["task"] == "rte")].iloc[0]
    d = [scores[("rte", s, "tempbalance-mb")] - scores[("rte", s, "tempbalance-once")] for s in (1, 2, 3)]
    assert rte["diff_vs_baseline"] == pytest.approx(np.mean(d)) and (rte["wins"], rte["losses"]) == (0, 3)
    pairs = [(t, s) for t in ("rte", "sst2") for s in (1, 2, 3) if (t, s) != ("sst2", 3)]
    a = [scores[(t, s, "tempbalance-mb")] for t, s in pairs]
    b = [scores[(t, s, "tempbalance-once")] for t, s in pairs]
    pooled = best[best["scope"] != "cell"].iloc[0]
    assert pooled["n_pairs"] == 5 and pooled["p_value"] == pytest.approx(ttest_rel(a, b).pvalue)
    text = (out / "summary.md").read_text()
    assert "Contrasts (the config's `contrasts`" in text
    assert (
        "| tempbalance-mb − tempbalance-once | mpnet-base | **pooled** | 4 (shots per class) | 5 |" in text
        and "| 0:3:0 |" in text
    )
    # without contrasts in the config: no section and no file
    config.pop("contrasts")
    sweep.aggregate(config)
    assert not (out / "contrasts.csv").exists() and "Contrasts" not in (out / "summary.md").read_text()
    # a bad contrast stops --aggregate-only too, with the usage error and nothing rewritten
    config["contrasts"] = ["tempbalance-mb vs llrd"]
    before = (out / "summary.md").read_text()
    with pytest.raises(SystemExit) as exit_:
        sweep.main([write_config(tmp_path, config), "--aggregate-only"])
    assert exit_.value.code == 2 and (out / "summary.md").read_text() == before
    assert "['llrd'] not among the methods" in capsys.readouterr().err


def test_contrasts_pair_plain_with_plain_and_lora_with_lora(tmp_path):
    config = variant_config(
        tmp_path, methods=["ft", "tempbalance-mb", "tempbalance-once"], lora=[False, True], seeds=[1, 2],
        contrasts=["tempbalance-mb vs tempbalance-once"],
    )  # fmt: skip
    for run in sweep.expand_grid(config):  # LoRA runs 0.1 lower; mb ahead of once by 0.01 plain, 0.03 with LoRA
        gap = {"tempbalance-mb": 0.03 if run.lora else 0.01}.get(run.method, 0.0)
        score = 0.7 - 0.1 * run.lora + 0.01 * run.seed + gap
        fake_record(run, score, score)
    sweep.aggregate(config)
    table = pd.read_csv(Path(config["output_dir"]) / "contrasts.csv")
    pooled = table[(table["scope"] != "cell") & (table["score"] == "best")].set_index("lora")
    assert set(pooled["contrast"]) == {"tempbalance-mb − tempbalance-once"} and set(pooled.index) == {False, True}
    assert pooled.loc[False, "diff_vs_baseline"] == pytest.approx(0.01)
    assert pooled.loc[True, "diff_vs_baseline"] == pytest.approx(0.03)
    assert (pooled["n_pairs"] == 4).all()  # 2 tasks x 2 seeds, never a plain run paired with a LoRA one
    results = pd.read_csv(Path(config["output_dir"]) / "results.csv")  # lora is a column, not a name suffix
    assert set(results["method"]) == {"ft", "tempbalance-mb", "tempbalance-once"} and results["lora"].sum() == 12
    assert "| LoRA |" in (Path(config["output_dir"]) / "summary.md").read_text()


def test_pooled_scopes_per_size_and_unpaired_runs_left_out(tmp_path):
    config = variant_config(tmp_path, tasks={"rte": {"shots_per_class": [4, 8]}}, methods=["ft", "tempbalance"])
    for run in sweep.expand_grid(config):
        if run.method == "tempbalance" and run.seed == 3 and run.size == 8:
            continue  # not finished: its ft run has no pair
        fake_record(run, 0.6 + 0.01 * (run.method != "ft") * run.seed, 0.5)
    pool = sweep.pooled(sweep.collect(Path(config["output_dir"])))
    assert pool["scope"].tolist() == ["all", "4 (shots per class)", "8 (shots per class)"]
    assert pool["n_pairs"].tolist() == [5, 3, 2] and pool["wins"].tolist() == [5, 3, 2]


def test_alpha_spread_against_seed_noise(tmp_path):
    config = variant_config(tmp_path, tasks={"rte": {"shots_per_class": [4]}}, methods=["ft", "tempbalance"])
    for run in sweep.expand_grid(config):
        history = None
        if run.method == "tempbalance":
            a0 = {"layer.0": 3.0, "layer.1": 4.0 + 0.01 * run.seed, "layer.2": 5.0}
            last = {k: v + 0.1 * run.seed for k, v in a0.items()}
            history = [
                {
                    "step": 0,
                    "alpha": a0,
                    "factor": {"layer.0": 0.5, "layer.1": 1.0, "layer.2": 1.5},
                    "alpha_se": {"layer.0": 0.02 * run.seed, "layer.1": 0.04, "layer.2": None},
                },  # None: not finite
                {"step": 8, "alpha": {k: v + 0.05 for k, v in a0.items()}, "factor": {}},
                {"step": 16, "alpha": last, "factor": {}},
            ]
        fake_record(run, 0.6, 0.5, history)
    out = Path(config["output_dir"])
    alphas = sweep.collect_alpha(out)
    assert len(alphas) == 3 * 3 and set(alphas["method"]) == {"tempbalance"}  # 3 seeds x 3 blocks, ft has none
    row = sweep.alpha_spread(alphas).iloc[0]
    assert row["spread_step0"] == pytest.approx(2.0)
    assert row["fit_se_step0"] == pytest.approx(0.04)  # median over the fitted blocks (0.02 s, 0.04), mean over s
    assert row["seed_std_step0"] == pytest.approx(np.std([4.01, 4.02, 4.03], ddof=1))
    assert row["max_move"] == pytest.approx(0.2)  # 0.1 * seed, mean over seeds 1, 2, 3
    assert row["seed_std_last"] == pytest.approx(np.std([4.11, 4.22, 4.33], ddof=1))  # layer.1 varies most
    assert (row["factor_min"], row["factor_max"], row["updates"], row["n_blocks"]) == (0.5, 1.5, 3, 3)
    sweep.aggregate(config)
    text = (out / "summary.md").read_text()
    assert (
        "TempBalance's α per block" in text
        and "| mpnet-base | rte | 4 | tempbalance | 3 | 3 | 2.000 | 0.040 |" in text
    )
    assert pd.read_csv(out / "alpha.csv").shape[0] == 9


def test_methods_sizes_and_tasks_filters(tmp_path, capsys):
    config = variant_config(tmp_path, tasks={"rte": {"shots_per_class": [4, 8]}}, seeds=[1])
    path = write_config(tmp_path, config)
    assert sweep.main([path, "--dry-run", "--methods", "ft,tempbalance-once", "--sizes", "4"]) == 0
    assert capsys.readouterr().out.split()[1::2] == ["rte/shots4/ft/seed1", "rte/shots4/tempbalance-once/seed1"]
    assert sweep.main([path, "--dry-run", "--sizes", "8", "--shard", "2/2"]) == 0
    assert capsys.readouterr().out.split()[1::2] == ["rte/shots8/ft-lr3x/seed1", "rte/shots8/tempbalance-once/seed1"]
    config = variant_config(tmp_path, tasks={"rte": {"shots_per_class": [4]}, "mrpc": {"shots_per_class": [4]}},
                            seeds=[1], methods=["ft"], method_args={})  # fmt: skip
    path = write_config(tmp_path, config)
    assert sweep.main([path, "--dry-run"]) == 0
    assert capsys.readouterr().out.split()[1::2] == ["mrpc/shots4/ft/seed1", "rte/shots4/ft/seed1"]
    assert sweep.main([path, "--dry-run", "--tasks", "rte,mrpc"]) == 0  # in the order given, not the config's
    assert capsys.readouterr().out.split()[1::2] == ["rte/shots4/ft/seed1", "mrpc/shots4/ft/seed1"]
    for flags, message in ((["--methods", "ft,tb"], "--methods 'ft,tb': the config's methods are"),
                           (["--sizes", "16"], r"--sizes '16': the config's sizes are \['4'\]"),
                           (["--tasks", "rte,cola"], r"--tasks 'rte,cola': the config's tasks are \[")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            sweep.main([path, "--dry-run", *flags])
        assert exit_.value.code == 2 and re.search(message, capsys.readouterr().err)


def test_holdout_curves_for_choosing_lr_and_epochs(tmp_path):
    tasks = {"sst2": {"shots_per_class": [4]}}
    config = variant_config(tmp_path, tasks=tasks, methods=["ft-lr3x", "ft"], seeds=[1, 2])
    for run in sweep.expand_grid(config):
        out = Path(run.args["output_dir"])
        out.mkdir(parents=True)
        curve = [0.5, 0.7, 0.6] if run.method == "ft" else [0.6, 0.6 + 0.1 * run.seed, 0.9]
        results = {"main_metric": "accuracy", "best_eval_accuracy": max(curve), "eval_accuracy": curve[-1],
                   "epoch_scores": curve, "eval_split": "train_holdout", "train_samples": 8,
                   "eval_samples": 20}  # fmt: skip
        record = {"task": run.task, "size_key": run.size_key, "size": run.size, "method": run.method, "lora": False,
                  "seed": run.seed, "args": run.args, "results": results}  # fmt: skip
        (out / sweep.RESULT_FILE).write_text(json.dumps(record))
    frame = sweep.curves(sweep.collect(config["output_dir"]))
    lr3x = frame[frame["method"] == "ft-lr3x"].iloc[0]
    assert lr3x["mean_scores"] == pytest.approx([0.6, 0.75, 0.9]) and lr3x["best_eval"] == 3
    assert lr3x["learning_rate"] == 3e-4 and frame[frame["method"] == "ft"].iloc[0]["best_eval"] == 2
    sweep.aggregate(config)
    text = (Path(config["output_dir"]) / "summary.md").read_text()
    assert "on the train_holdout split" in text
    assert "| mpnet-base | sst2 | 4 | ft-lr3x | 0.0003 | 2 | 60.0 | 75.0 | 90.0 | 90.0 (3) |" in text


# --------------------------------------------------------------------------------------------------
# A finished run is keyed by its settings: a changed config is never reused silently


def _fake_results(run):
    return {"main_metric": "accuracy", "best_eval_accuracy": 0.6 + 0.01 * run.seed, "eval_accuracy": 0.5,
            "epoch_scores": [0.5], "train_samples": 8, "eval_samples": 10, "eval_split": "validation"}  # fmt: skip


def test_a_changed_config_is_refused_then_redone_with_redo_changed(tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: ran.append(run.name) or _fake_results(run))
    config = glue_config(tmp_path, methods=["ft"], seeds=[1], tasks={"rte": {"fractions": [0.1]}})
    config["args"] |= {"learning_rate": 1e-4}
    path = write_config(tmp_path, config)
    assert sweep.main([path]) == 0 and ran == ["rte/frac0.1/ft/seed1"]
    run = sweep.expand_grid(config)[0]
    stored = json.loads((run.out / sweep.RESULT_FILE).read_text())
    assert stored["key"] == run.key == sweep.run_key(stored["args"])
    assert sweep.main([path]) == 0 and len(ran) == 1  # the same settings: skipped
    # learning_rate changed in the config: the finished run is not reused, and the message says what changed
    config["args"]["learning_rate"] = 2e-4
    path = write_config(tmp_path, config)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        sweep.main([path])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(ran) == 1
    assert "1 finished run(s) were made with other settings" in err
    assert "rte/frac0.1/ft/seed1: learning_rate 0.0001 -> 0.0002" in err and "--redo-changed" in err
    assert sweep.main([path, "--dry-run"]) == 0
    assert "changed rte/frac0.1/ft/seed1  (learning_rate 0.0001 -> 0.0002)" in capsys.readouterr().out
    # --aggregate-only reports only runs made with the config's settings, and says so
    assert sweep.main([path, "--aggregate-only"]) == 0
    assert "1 finished runs were made with other settings and are left out" in capsys.readouterr().out
    assert not (tmp_path / "out" / "results.csv").exists()
    # --redo-changed: run again, the old result kept aside
    assert sweep.main([path, "--redo-changed"]) == 0 and len(ran) == 2
    assert json.loads((run.out / "result.replaced.json").read_text())["args"]["learning_rate"] == 1e-4
    assert json.loads((run.out / sweep.RESULT_FILE).read_text())["args"]["learning_rate"] == 2e-4
    assert pd.read_csv(tmp_path / "out" / "results.csv")["learning_rate"].tolist() == [2e-4]


def test_records_written_before_the_key_compare_their_arguments(tmp_path, monkeypatch):
    config = glue_config(tmp_path, methods=["ft"], seeds=[1], tasks={"rte": {"fractions": [0.1]}})
    run = sweep.expand_grid(config)[0]
    fake_record(run, 0.6, 0.5)  # a record without "key", as committed studies have
    assert sweep.status(run) == "done"
    config["args"]["num_train_epochs"] = 7
    assert sweep.status(sweep.expand_grid(config)[0]) == "changed"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(seeds=[1, 1]), r"'seeds' lists \[1\] more than once"),
        (dict(lora=[False, False]), r"'lora' lists \[False\] more than once"),
        (dict(tasks={"rte": {"fractions": [0.1, 0.1]}}), "fractions lists a size twice"),
    ],
)
def test_duplicates_in_the_grid_are_refused(tmp_path, capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_:
        sweep.main([write_config(tmp_path, glue_config(tmp_path, **overrides)), "--dry-run"])
    assert exit_.value.code == 2 and re.search(message, capsys.readouterr().err)


def test_output_dir_that_cannot_be_written_is_refused_before_the_first_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: pytest.fail(f"{run.name} ran"))
    (tmp_path / "a_file").write_text("")
    for out, message in ((tmp_path / "a_file", "is a file, not a folder"),
                         (tmp_path / "a_file" / "sub", "cannot write in output_dir"),
                         (Path("/proc/tb_hf_sweep_test"), "cannot write in output_dir")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            sweep.main([write_config(tmp_path, glue_config(tmp_path, output_dir=str(out)))])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and "Traceback" not in err, err


def test_flags_are_not_prefix_matched(tmp_path, capsys):
    path = write_config(tmp_path, glue_config(tmp_path))
    with pytest.raises(SystemExit) as exit_:
        sweep.main([path, "--method", "ft", "--dry-run"])  # not --methods
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized arguments: --method ft" in err and "did you mean --methods?" in err


def test_workers_are_capped_at_the_runs_to_do(tmp_path, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(sweep.launch, "start_workers", lambda argv, n: started.append(n) or [])
    monkeypatch.setattr(sweep.launch, "_run_inprocess", _fake_results)
    config = glue_config(tmp_path, methods=["ft"], tasks={"rte": {"fractions": [0.1]}}, seeds=[1, 2, 3])
    path = write_config(tmp_path, config)
    assert sweep.main([path, "--workers", "100"]) == 0
    assert started == [3] and "3 runs to do, so 3 worker(s) instead of 100" in capsys.readouterr().err
    fake_record(sweep.expand_grid(config)[0], 0.6, 0.5)
    fake_record(sweep.expand_grid(config)[1], 0.6, 0.5)
    assert sweep.main([path, "--workers", "4"]) == 0  # one run left: run here, no worker process
    assert started == [3] and sweep.status(sweep.expand_grid(config)[2]) == "done"


def test_per_task_method_args_and_the_seeds_filter(tmp_path, capsys):
    config = glue_config(
        tmp_path,
        methods=["ft", "llrd"],
        seeds=[1, 2, 3],
        tasks={
            "rte": {"fractions": [0.1], "learning_rate": 2e-4, "method_args": {"llrd": {"llrd_decay": 0.8}}},
            "mrpc": {"fractions": [0.1]},
        },
        method_args={"llrd": {"llrd_decay": 0.9}},
    )
    runs = {r.name: r.args for r in sweep.expand_grid(config)}
    assert runs["rte/frac0.1/llrd/seed1"]["llrd_decay"] == 0.8 and runs["mrpc/frac0.1/llrd/seed1"]["llrd_decay"] == 0.9
    assert runs["rte/frac0.1/ft/seed1"]["learning_rate"] == 2e-4 and "llrd_decay" not in runs["rte/frac0.1/ft/seed1"]
    assert "method_args" not in runs["rte/frac0.1/llrd/seed1"]
    path = write_config(tmp_path, config)
    assert sweep.main([path, "--dry-run", "--seeds", "3,1", "--tasks", "rte"]) == 0
    assert capsys.readouterr().out.split()[1::2] == [
        "rte/frac0.1/ft/seed1", "rte/frac0.1/llrd/seed1", "rte/frac0.1/ft/seed3", "rte/frac0.1/llrd/seed3"
    ]  # fmt: skip
    for bad, message in (
        (["--seeds", "4"], r"--seeds '4': the config's seeds are \[1, 2, 3\]"),
        (["--seeds", "x"], r"--seeds 'x'"),
    ):
        with pytest.raises(SystemExit) as exit_:
            sweep.main([path, "--dry-run", *bad])
        assert exit_.value.code == 2 and re.search(message, capsys.readouterr().err)
    config["tasks"]["mrpc"]["method_args"] = {"tempbalance": {}}
    with pytest.raises(SystemExit):
        sweep.main([write_config(tmp_path, config), "--dry-run"])
    assert "Task 'mrpc': method_args has ['tempbalance']" in capsys.readouterr().err


@pytest.mark.parametrize(
    "settings",
    [{"lora": [True], "lora_args": {"lora_alpha": 16}},  # LoRA asked for, no rank: it would train every weight
     {"lora": [False], "args": {"lora_r": 8}}],  # plain asked for, LoRA set: the tables would say "no LoRA"
)  # fmt: skip
def test_the_lora_column_must_be_what_the_run_does(tmp_path, settings):
    args = {"glue_dir": "g"} | settings.get("args", {})
    rest = {k: v for k, v in settings.items() if k != "args"}
    config = glue_config(tmp_path, tasks={"sst2": {"shots_per_class": [8]}}, args=args) | rest
    with pytest.raises(ValueError, match="needs lora_args with lora_r"):
        sweep.expand_grid(config)


@pytest.mark.parametrize(
    "overrides, match",
    [(dict(args={"glue_dir": "g", "task_name": "sst2"}), r"args sets \['task_name'\]"),  # would relabel the data
     (dict(args={"glue_dir": "g", "seed": 5}), r"args sets \['seed'\]"),
     (dict(tasks={"rte": {"fractions": [0.1], "method": "llrd"}}), r"task 'rte' sets \['method'\]"),
     (dict(tasks={"rte": {"fractions": [0.1234561, 0.1234562]}}), "would share one folder")],
)  # fmt: skip
def test_the_grid_refuses_what_it_would_silently_override_or_collide(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        sweep.expand_grid(glue_config(tmp_path, **overrides))


# --------------------------------------------------------------------------------------------------
# Issue 28, item 5: never reuse a result the sweep cannot vouch for; check the data before the first run


def custom_config(tmp_path: Path, rows: str, **task) -> dict:
    """A custom-file task (train.csv, dev.csv in tmp_path) with one run."""
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "dev.csv").write_text(rows)
    entry = {"train_file": str(tmp_path / "train.csv"), "validation_file": str(tmp_path / "dev.csv"),
             "text_columns": ["text"], "max_train_samples": [4]} | task  # fmt: skip
    return {"output_dir": str(tmp_path / "out"), "tasks": {"reviews": entry}, "seeds": [1], "methods": ["ft"]}


ROWS = "text,label\n" + "".join(f"t{i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))


def test_an_edited_data_file_is_never_reused(tmp_path, capsys, monkeypatch):
    """train.csv edited in place (same path, same arguments) reused the old results."""
    ran = []
    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: ran.append(run.name) or _fake_results(run))
    path = write_config(tmp_path, custom_config(tmp_path, ROWS))
    assert sweep.main([path]) == 0 and ran == ["reviews/n4/ft/seed1"]
    run = sweep.expand_grid(sweep.load_config(path))[0]
    stored = json.loads((run.out / sweep.RESULT_FILE).read_text())
    train = str(tmp_path / "train.csv")
    assert stored["data"][train] == __import__("hashlib").sha256((tmp_path / "train.csv").read_bytes()).hexdigest()
    assert sweep.main([path]) == 0 and len(ran) == 1  # same data: reused
    (tmp_path / "train.csv").write_text(ROWS + "t20,pos\n")  # edited in place
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        sweep.main([path])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(ran) == 1
    assert (
        f"reviews/n4/ft/seed1: data file {train} was edited since the run (sha256 " in err and "--redo-changed" in err
    )
    assert sweep.main([path, "--dry-run"]) == 0 and "changed reviews/n4/ft/seed1" in capsys.readouterr().out
    assert sweep.main([path, "--aggregate-only"]) == 0 and "left out of the tables" in capsys.readouterr().out
    assert sweep.main([path, "--redo-changed"]) == 0 and len(ran) == 2
    assert sweep.status(run) == "done" and (run.out / "result.replaced.json").is_file()


def test_glue_files_are_fingerprinted_and_a_hub_task_has_none(tmp_path):
    config = glue_config(tmp_path, methods=["ft"], seeds=[1], tasks={"rte": {"fractions": [0.1]}})
    run = sweep.expand_grid(config)[0]
    glue = str(tmp_path / "glue")
    assert sorted(sweep.fingerprints(run.args)) == [f"{glue}/RTE/dev.tsv", f"{glue}/RTE/train.tsv"]
    assert sweep.fingerprints({"task_name": "rte"}) == {}  # the Hub: no local file


def test_records_without_data_fingerprints_are_reused_with_one_warning(tmp_path, caplog, monkeypatch):
    """The committed studies' records predate fingerprints: accepted, with one warning naming the files."""
    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: pytest.fail(f"{run.name} ran"))
    config = glue_config(tmp_path, methods=["ft"], seeds=[1, 2, 3], tasks={"rte": {"fractions": [0.1]}})
    for run in sweep.expand_grid(config):
        fake_record(run, 0.6, 0.5)  # args, no key, no data: as the committed studies have
    path = write_config(tmp_path, config)
    for argv in ([], ["--dry-run"], ["--aggregate-only"]):
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert sweep.main([path, *argv]) == 0
        warnings = [r.getMessage() for r in caplog.records if "could not be checked" in r.getMessage()]
        assert len(warnings) == 1, (argv, warnings)
        assert "3 finished run(s) could not be checked against their data files" in warnings[0]
        assert (
            f"{tmp_path}/glue/RTE/train.tsv (3 runs)" in warnings[0] and "delete the runs' result.json" in warnings[0]
        )


def test_a_record_without_settings_is_never_reused_silently(tmp_path, capsys, monkeypatch):
    """A result.json of the oldest layout (no args, no key) was reused after the learning rate changed."""
    ran = []
    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: ran.append(run.name) or _fake_results(run))
    config = glue_config(tmp_path, methods=["ft"], seeds=[1], tasks={"rte": {"fractions": [0.1]}})
    config["args"] |= {"learning_rate": 2e-4}
    run = sweep.expand_grid(config)[0]
    fake_record(run, 0.6, 0.5)
    record = json.loads((run.out / sweep.RESULT_FILE).read_text())
    del record["args"]
    (run.out / sweep.RESULT_FILE).write_text(json.dumps(record))
    path = write_config(tmp_path, config)
    with pytest.raises(SystemExit) as exit_:
        sweep.main([path])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and not ran
    assert "result.json stores no settings" in err and "--redo-changed" in err
    assert sweep.main([path, "--aggregate-only"]) == 0  # left out of the tables, and said so
    assert "left out of the tables" in capsys.readouterr().out and not (tmp_path / "out" / "results.csv").exists()
    assert sweep.main([path, "--redo-changed"]) == 0 and ran == [run.name]
    assert pd.read_csv(tmp_path / "out" / "results.csv")["learning_rate"].tolist() == [2e-4]


def test_a_sweep_with_other_settings_on_the_same_folder_fails(tmp_path, capsys, monkeypatch):
    """The second of two sweeps with different settings on one folder exited 0 ('left to another sweep process')."""
    import socket

    ran = []
    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: ran.append(run.name) or _fake_results(run))
    config = glue_config(tmp_path, methods=["ft"], seeds=[1, 2], tasks={"rte": {"fractions": [0.1]}})
    path = write_config(tmp_path, config)
    first, second = sweep.expand_grid(config)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        first.out.mkdir(parents=True)
        lock = first.out / sweep.launch.LOCK_FILE
        lock.write_text(f"{socket.gethostname()} {other.pid} 0123456789abcdef")  # another config's run
        with pytest.raises(SystemExit) as exit_:
            sweep.main([path])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and not ran
        assert "being run by another sweep process with OTHER settings" in err and "0123456789abcdef" in err
        assert "its own output_dir" in err
        # the same settings in another process (--workers, shards): left to it, as before
        lock.write_text(f"{socket.gethostname()} {other.pid} {first.key}")
        assert sweep.main([path]) == 0 and ran == [second.name]
        assert "1 left to another sweep process" in capsys.readouterr().out
        # a conflict that appears after the check (the other sweep claims the run meanwhile): exit 1, named
        lock.unlink()
        (second.out / sweep.RESULT_FILE).unlink()

        def claim_first_meanwhile(run):
            lock.write_text(f"{socket.gethostname()} {other.pid} 0123456789abcdef")
            return _fake_results(run)

        monkeypatch.setattr(sweep.launch, "_run_inprocess", claim_first_meanwhile)
        monkeypatch.setattr(sweep.launch, "execute", _reversed(sweep.launch.execute))
        assert sweep.main([path]) == 1
        captured = capsys.readouterr()
        assert "1 NOT run (another sweep's settings)" in captured.out and "OTHER settings" in captured.err
        assert not (first.out / sweep.RESULT_FILE).exists()
    finally:
        other.kill()
        other.wait()


def _reversed(execute):
    return lambda runs, *args, **kwargs: execute(runs[::-1], *args, **kwargs)


def test_a_run_finished_meanwhile_with_other_settings_is_not_overwritten(tmp_path, monkeypatch):
    config = glue_config(tmp_path, methods=["ft"], seeds=[1, 2], tasks={"rte": {"fractions": [0.1]}})
    first, second = sweep.expand_grid(config)

    def other_sweep_finishes_second(run):
        fake_record(second, 0.9, 0.9)  # with other settings: another learning rate
        record = json.loads((second.out / sweep.RESULT_FILE).read_text())
        record["args"] = record["args"] | {"learning_rate": 1.0}
        (second.out / sweep.RESULT_FILE).write_text(json.dumps(record))
        return _fake_results(run)

    monkeypatch.setattr(sweep.launch, "_run_inprocess", other_sweep_finishes_second)
    counts = sweep.execute([first, second])
    assert counts["conflict"] == 1 and counts["ok"] == 1
    assert json.loads((second.out / sweep.RESULT_FILE).read_text())["args"]["learning_rate"] == 1.0


def test_aggregate_only_skips_a_damaged_result_with_a_warning(tmp_path, capsys, caplog):
    config = glue_config(tmp_path, methods=["ft"], seeds=[1, 2], tasks={"rte": {"fractions": [0.1]}})
    first, second = sweep.expand_grid(config)
    fake_record(first, 0.6, 0.5)
    fake_record(second, 0.7, 0.5)
    damaged = second.out / sweep.RESULT_FILE
    damaged.write_text(damaged.read_text()[:40])  # half-written
    with caplog.at_level("WARNING"):
        assert sweep.main([write_config(tmp_path, config), "--aggregate-only"]) == 0
    assert f"skipped {damaged}: not a complete result record" in caplog.text
    assert pd.read_csv(tmp_path / "out" / "results.csv")["seed"].tolist() == [1]
    assert "1 runs have not run yet" in capsys.readouterr().out
    assert sweep.status(second) == "todo"  # a normal run redoes it


@pytest.mark.parametrize(
    "task, message",
    [
        ({"sst3": {"fractions": [0.1]}}, r"Unknown task 'sst3'.*\(in 2 run\(s\), e.g. sst3/frac0.1/ft/seed1\)"),
        ({"rte": {"shots_per_class": [30]}}, r"rte: --shots_per_class 30 is more than some classes have"),
        ({"rte": {"fractions": [0.01]}}, r"rte: --train_fraction 0.01 of 40 training examples keeps none"),
        ({"qnli": {"fractions": [0.1]}}, r"QNLI/train.tsv does not exist"),
        ({"rte": {"shots_per_class": [4], "eval_on_train_holdout": 100}}, r"--eval_on_train_holdout 100"),
    ],
)
def test_the_data_is_checked_before_the_first_run(tmp_path, capsys, caplog, monkeypatch, task, message):
    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: pytest.fail(f"{run.name} ran"))
    config = glue_config(tmp_path, methods=["ft", "llrd"], seeds=[1], tasks=task)
    with pytest.raises(SystemExit) as exit_:
        sweep.main([write_config(tmp_path, config)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "the data of these runs cannot work (checked before the first run)" in err
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "runs").exists()
    with caplog.at_level("WARNING"):  # --dry-run lists the runs, and says they would stop
        assert sweep.main([write_config(tmp_path, config), "--dry-run"]) == 0
    assert "without --dry-run this sweep would stop before its first run" in caplog.text
    assert re.search(message, caplog.text) and "todo    " in capsys.readouterr().out


def test_custom_data_is_read_once_per_task_and_checked(tmp_path, capsys, monkeypatch, caplog):
    import recipes.data

    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: pytest.fail(f"{run.name} ran"))
    loads = []
    load_task = recipes.data.load_task
    monkeypatch.setattr(recipes.data, "load_task", lambda *a, **k: loads.append(a) or load_task(*a, **k))
    config = custom_config(tmp_path, ROWS, text_columns=["review"]) | {"seeds": [1, 2, 3], "methods": ["ft", "llrd"]}
    with pytest.raises(SystemExit):
        sweep.main([write_config(tmp_path, config)])
    err = capsys.readouterr().err
    assert "has no column(s) ['review']" in err and "(in 6 run(s), e.g. reviews/n4/ft/seed1)" in err
    assert len(loads) == 1  # once for the task, not per run
    # a subset of one class: a warning (once per distinct subset), and the sweep goes on
    sorted_rows = "text,label\n" + "".join(f"t{i},{'pos' if i < 10 else 'neg'}\n" for i in range(20))
    config = custom_config(tmp_path, sorted_rows, subset_strategy="first") | {"seeds": [1, 2]}
    with caplog.at_level("WARNING"):
        assert sweep.main([write_config(tmp_path, config), "--dry-run"]) == 0
    warned = [r.getMessage() for r in caplog.records if "holds only class" in r.getMessage()]
    assert len(warned) == 1 and "reviews: The training subset of 4 examples holds only class 'pos'" in warned[0]
    assert "(in 2 run(s)" in warned[0]


# --------------------------------------------------------------------------------------------------
# Packed runs (--pack): one compressed file per sweep, read and written by the sweep like loose runs


def _history(run) -> list[dict]:
    a0 = {"layer.0": 3.0 + 0.01 * run.seed, "layer.1": 4.0, "layer.2": float(len(run.method))}
    return [
        {"step": 0, "alpha": a0, "factor": {"layer.0": 0.5, "layer.1": 1.0, "layer.2": 1.5},
         "alpha_se": {"layer.0": 0.02, "layer.1": None, "layer.2": 0.03}},
        {"step": 8, "alpha": {k: v + 0.1 * run.seed for k, v in a0.items()}, "factor": {}},
    ]  # fmt: skip


def _tables(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in sweep.report.OUTPUTS if n != "scores.png" and (out / n).exists()}


def _run_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "runs").rglob("*")) if p.is_file()}


def test_a_packed_run_counts_as_finished_and_a_resumed_sweep_skips_it(tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: ran.append(run.name) or _fake_results(run))
    config = glue_config(tmp_path, methods=["ft", "llrd"], seeds=[1, 2], tasks={"rte": {"fractions": [0.1]}})
    path = write_config(tmp_path, config)
    out = tmp_path / "out"
    assert sweep.main([path, "--methods", "ft"]) == 0 and len(ran) == 2
    before = pd.read_csv(out / "results.csv")
    capsys.readouterr()
    assert sweep.main([path, "--pack"]) == 0
    assert "Packed 2 runs into" in capsys.readouterr().out
    assert (out / "runs.jsonl.xz").is_file() and not list(out.glob("runs/**/result.json"))
    assert (out / "runs" / "rte" / "frac0.1" / "ft" / "seed1" / "log.txt").is_file()  # other files stay
    assert sweep.main([path, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "done    rte/frac0.1/ft/seed1", "todo    rte/frac0.1/llrd/seed1",
        "done    rte/frac0.1/ft/seed2", "todo    rte/frac0.1/llrd/seed2",
    ]  # fmt: skip
    assert sweep.main([path]) == 0 and ran[2:] == ["rte/frac0.1/llrd/seed1", "rte/frac0.1/llrd/seed2"]
    assert "2 ran, 2 already done" in capsys.readouterr().out
    # the tables cover packed and loose runs; the ft rows are those of before the packing
    results = pd.read_csv(out / "results.csv")
    assert results["method"].tolist() == ["ft", "ft", "llrd", "llrd"]
    assert results[results["method"] == "ft"].equals(before)
    assert sweep.main([path, "--pack"]) == 0 and len(sweep.archive.load(out)) == 4
    assert sweep.main([path]) == 0 and len(ran) == 4  # nothing left to run
    assert pd.read_csv(out / "results.csv").equals(results)


def test_a_packed_run_with_a_changed_setting_is_refused_then_redone(tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: ran.append(run.name) or _fake_results(run))
    config = glue_config(tmp_path, methods=["ft"], seeds=[1, 2], tasks={"rte": {"fractions": [0.1]}})
    config["args"] |= {"learning_rate": 1e-4}
    path = write_config(tmp_path, config)
    assert sweep.main([path]) == 0 and sweep.main([path, "--pack"]) == 0 and len(ran) == 2
    config["args"]["learning_rate"] = 2e-4
    path = write_config(tmp_path, config)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        sweep.main([path])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(ran) == 2
    assert "2 finished run(s) were made with other settings" in err
    assert "rte/frac0.1/ft/seed1: learning_rate 0.0001 -> 0.0002" in err
    assert sweep.main([path, "--dry-run"]) == 0 and capsys.readouterr().out.startswith("changed ")
    assert sweep.main([path, "--aggregate-only"]) == 0 and "left out of the tables" in capsys.readouterr().out
    assert sweep.main([path, "--redo-changed"]) == 0 and len(ran) == 4
    run = sweep.expand_grid(config)[0]
    assert json.loads((run.out / "result.replaced.json").read_text())["args"]["learning_rate"] == 1e-4
    assert not (tmp_path / "out" / "runs.jsonl.xz").exists()  # both runs taken out of it: no empty archive
    assert pd.read_csv(tmp_path / "out" / "results.csv")["learning_rate"].tolist() == [2e-4, 2e-4]


def test_an_edited_data_file_is_refused_for_a_packed_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep.launch, "_run_inprocess", _fake_results)
    path = write_config(tmp_path, custom_config(tmp_path, ROWS))
    assert sweep.main([path]) == 0 and sweep.main([path, "--pack"]) == 0
    (tmp_path / "train.csv").write_text(ROWS + "t20,pos\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        sweep.main([path])
    assert exit_.value.code == 2 and "was edited since the run" in capsys.readouterr().err


def test_packed_records_without_data_fingerprints_are_reused_with_one_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: pytest.fail(f"{run.name} ran"))
    config = glue_config(tmp_path, methods=["ft"], seeds=[1, 2, 3], tasks={"rte": {"fractions": [0.1]}})
    for run in sweep.expand_grid(config):
        fake_record(run, 0.6, 0.5)  # args, no key, no data: as the committed studies have
    path = write_config(tmp_path, config)
    assert sweep.main([path, "--pack"]) == 0 and not list((tmp_path / "out").glob("runs/**/result.json"))
    for argv in ([], ["--dry-run"], ["--aggregate-only"]):
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert sweep.main([path, *argv]) == 0
        warnings = [r.getMessage() for r in caplog.records if "could not be checked" in r.getMessage()]
        assert len(warnings) == 1 and "3 finished run(s) could not be checked" in warnings[0], (argv, warnings)


def test_aggregating_packed_and_loose_runs_equals_aggregating_them_loose(tmp_path):
    """Every table, byte for byte, with some runs packed and the others loose; method names that sort differently
    as strings and as paths (``tempbalance`` and ``tempbalance-mb``) keep the order of alpha.csv's rows."""
    tables = {}
    for kind in ("loose", "mixed"):
        config = variant_config(tmp_path / kind, contrasts=["tempbalance-mb vs tempbalance"])
        config["output_dir"] = str(tmp_path / kind / "out")
        for run in sweep.expand_grid(config):
            score = 0.5 + 0.01 * run.seed + 0.001 * len(run.method) + (0.02 if run.task == "rte" else 0.0)
            fake_record(run, score, score - 0.01, _history(run) if run.method.startswith("tempbalance") else None)
        out = Path(config["output_dir"])
        if kind == "mixed":
            assert len(sweep.archive.pack(out)) == 30
            sweep.archive.unpack(out, [r.name for r in sweep.expand_grid(config) if r.seed == 2])
            assert len(sweep.archive.load(out)) == 20 and len(list(out.glob("runs/**/result.json"))) == 10
        sweep.aggregate(config, sweep.expand_grid(config))
        tables[kind] = _tables(out)
    assert tables["mixed"] == tables["loose"]
    alpha = pd.read_csv(tmp_path / "mixed" / "out" / "alpha.csv")
    assert len(alpha) == 2 * 3 * 3 * 3 and alpha["method"].iloc[0] == "tempbalance"  # tasks x seeds x methods x blocks


def test_packing_is_lossless_and_checked(tmp_path, monkeypatch):
    """Every byte of each result.json and history comes back, whatever the formatting: the sweep's own (parsed
    JSON in the archive, NaN included), another indentation or a history with a torn last line (kept as text)."""
    config = variant_config(tmp_path, methods=["ft", "tempbalance"], seeds=[1, 2])
    runs = sweep.expand_grid(config)
    for i, run in enumerate(runs):
        fake_record(run, 0.6, 0.5, _history(run) if run.method == "tempbalance" else None)
        record = json.loads((run.out / sweep.RESULT_FILE).read_text())
        (run.out / sweep.RESULT_FILE).write_text(json.dumps(record, indent=(1, None, 2)[i % 3]))
    hist = runs[1].out / "tempbalance" / "history.jsonl"
    hist.write_text(hist.read_text() + '{"step": 16, "alph')  # a crash mid-write
    hist = runs[3].out / "tempbalance" / "history.jsonl"
    hist.write_text(hist.read_text().replace("0.02", "NaN"))
    (runs[0].out / "log.txt").write_text("kept")
    out = Path(config["output_dir"])
    before = _run_files(out)
    collected = sweep.collect(out).to_csv()
    alphas = sweep.collect_alpha(out).to_csv()

    assert sweep.archive.pack(out) == sorted(r.name for r in runs)
    assert _run_files(out) == {"runs/rte/shots4/ft/seed1/log.txt": b"kept"}
    entries = sweep.archive.load(out)
    assert "result" in entries[runs[0].name] and "result_text" in entries[runs[1].name]  # indent=1: parsed
    assert "history" in entries[runs[5].name] and "history_text" in entries[runs[1].name]
    assert "history" in entries[runs[3].name] and "history" not in entries[runs[0].name]
    assert sweep.collect(out).to_csv() == collected and sweep.collect_alpha(out).to_csv() == alphas
    assert sweep.archive.unpack(out) == sorted(r.name for r in runs)
    assert _run_files(out) == before and not (out / "runs.jsonl.xz").exists()

    # a check that finds a difference deletes nothing
    monkeypatch.setattr(sweep.archive, "files", lambda entry: {})
    with pytest.raises(RuntimeError, match="nothing was deleted"):
        sweep.archive.pack(out)
    assert _run_files(out) == before


def test_a_damaged_archive_stops_the_sweep_and_pack_waits_for_running_runs(tmp_path, capsys, monkeypatch):
    import socket

    monkeypatch.setattr(sweep.launch, "_run_inprocess", lambda run: pytest.fail(f"{run.name} ran"))
    config = glue_config(tmp_path, methods=["ft"], seeds=[1, 2], tasks={"rte": {"fractions": [0.1]}})
    first, second = sweep.expand_grid(config)
    fake_record(first, 0.6, 0.5)
    path = write_config(tmp_path, config)
    fake_record(second, 0.6, 0.5)
    lock = second.out / sweep.launch.LOCK_FILE
    lock.write_text(f"{socket.gethostname()} {os.getppid()} {second.key}")  # a live process holds it
    with pytest.raises(SystemExit) as exit_:
        sweep.main([path, "--pack"])
    assert exit_.value.code == 2 and "being run by a sweep process" in capsys.readouterr().err
    lock.unlink()
    assert sweep.main([path, "--pack"]) == 0
    archive = tmp_path / "out" / "runs.jsonl.xz"
    archive.write_bytes(archive.read_bytes()[:-8])  # truncated
    for argv in ([], ["--aggregate-only"], ["--dry-run"]):
        with pytest.raises(SystemExit) as exit_:
            sweep.main([path, *argv])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "the archive of this sweep's finished runs is damaged" in err
    with pytest.raises(SystemExit):
        sweep.main([path, "--pack", "--aggregate-only"])
    assert "--aggregate-only and --pack do different things" in capsys.readouterr().err


def test_fraction_curve_trend_and_plot_from_a_sweep_with_several_fractions(tmp_path):
    """The gain over FT against the fraction: paired differences with intervals per size, the trend regression on
    log10(size) with one intercept per task, and curve.csv/md/png written by the sweep's report."""
    from scipy.stats import linregress, t, ttest_rel

    fractions = [0.001, 0.01, 0.1]
    config = variant_config(
        tmp_path,
        tasks={"rte": {"fractions": fractions}, "sst2": {"fractions": fractions}},
        methods=["ft", "tempbalance-mb", "tempbalance"],
        seeds=[1, 2, 3, 4],
    )
    rng = np.random.default_rng(0)
    finals = {}
    for run in sweep.expand_grid(config):
        # tempbalance-mb's gain shrinks by 2 points per tenfold more data (4 at 0.1%); tempbalance's is flat at 0
        gain = {"ft": 0.0, "tempbalance-mb": 0.02 * (-1 - math.log10(run.size)), "tempbalance": 0.0}[run.method]
        noise = rng.normal(0, 0.005) if run.method != "ft" else 0.0
        finals[(run.task, run.size, run.seed, run.method)] = 0.6 + 0.01 * run.seed + gain + noise
        fake_record(run, 0.9, finals[(run.task, run.size, run.seed, run.method)])
    results = sweep.collect(Path(config["output_dir"]))

    curve = sweep.stats.size_curve(results, baseline="ft", score="final")
    assert len(curve) == 2 * 3 * 2 and set(curve["method"]) == {"tempbalance-mb", "tempbalance"}  # tasks x sizes
    row = curve[(curve.task == "rte") & (curve["size"] == 0.01) & (curve.method == "tempbalance-mb")].iloc[0]
    a = [finals[("rte", 0.01, s, "tempbalance-mb")] for s in (1, 2, 3, 4)]
    b = [finals[("rte", 0.01, s, "ft")] for s in (1, 2, 3, 4)]
    d = np.subtract(a, b)
    half = t.ppf(0.975, 3) * np.std(d, ddof=1) / 2
    assert row["diff"] == pytest.approx(d.mean()) and row["p_value"] == pytest.approx(ttest_rel(a, b).pvalue)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    assert row["detectable"] == pytest.approx((t.ppf(0.975, 3) + t.ppf(0.8, 3)) * np.std(d, ddof=1) / 2)

    trend = sweep.stats.size_trend(results, baseline="ft", score="final").set_index(["method", "scope"])
    assert list(trend.loc["tempbalance-mb"].index) == ["all", "rte", "sst2"]
    mb = trend.loc[("tempbalance-mb", "rte")]
    pairs = [(math.log10(f), finals[("rte", f, s, "tempbalance-mb")] - finals[("rte", f, s, "ft")])
             for f in fractions for s in (1, 2, 3, 4)]  # fmt: skip
    fit = linregress(*zip(*pairs, strict=True))
    assert mb["slope"] == pytest.approx(fit.slope) and mb["slope_se"] == pytest.approx(fit.stderr)
    assert mb["p_value"] == pytest.approx(fit.pvalue) and mb["n_pairs"] == 12
    assert trend.loc[("tempbalance-mb", "all"), "slope"] == pytest.approx(-0.02, abs=0.003)
    assert trend.loc[("tempbalance-mb", "all"), "p_value"] < 1e-6  # the shrinking gain is found ...
    assert trend.loc[("tempbalance", "all"), "p_value"] > 0.01  # ... and the flat one is not called a trend
    assert trend.loc[("tempbalance-mb", "all"), "n_pairs"] == 24

    fig = sweep.report.plot_curve(curve, tmp_path / "curve.png", ["ft", "tempbalance-mb", "tempbalance"])
    ax = fig.axes[0]
    assert ax.get_title() == "mpnet-base: rte" and ax.get_xscale() == "log"
    assert [x.get_text() for x in ax.get_xticklabels()] == ["0.1%\n(8 ex.)", "1%\n(8 ex.)", "10%\n(8 ex.)"]
    assert any(list(line.get_ydata()) == [0.0, 0.0] for line in ax.lines)  # FT = 0
    assert [x.get_text() for x in fig.legends[0].get_texts()] == ["tempbalance-mb", "tempbalance", "ft (= 0)"]

    sweep.aggregate(config)
    out = Path(config["output_dir"])
    assert {"curve.csv", "curve.md", "curve.png"} <= {p.name for p in out.iterdir()}
    text = (out / "curve.md").read_text()
    assert "| mpnet-base | all | tempbalance-mb | 6 | 24 | -1.98 | 0.12 | 1.3e-13 |" in text
    first = text.index("| mpnet-base | rte | 0.001 | 8 | tempbalance-mb |")
    assert first < text.index("| rte | 0.001 | 8 | tempbalance |")  # the config's order of methods
    # one size per task: no curve (and an earlier curve is removed, as the other outputs are)
    one = variant_config(tmp_path / "one", tasks={"rte": {"fractions": [0.01]}}, methods=["ft", "tempbalance"])
    for run in sweep.expand_grid(one):
        fake_record(run, 0.9, 0.6)
    (Path(one["output_dir"]) / "curve.png").write_bytes(b"stale")
    sweep.aggregate(one)
    left = {p.name for p in Path(one["output_dir"]).iterdir()}
    assert "summary.md" in left and not left & {"curve.csv", "curve.md", "curve.png"}


@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_sweep_starts_with_its_command_and_every_run_parses(path):
    head = path.read_text().split("\n#\n", 1)[0]  # the commands before the first blank comment line
    assert head.startswith("# python") and f"# python -m recipes.sweep recipes/sweeps/{path.name}" in head
    config = sweep.load_config(path)
    runs = sweep.expand_grid(config)
    assert runs
    sweep.validate(config, runs)  # every run's arguments parse as run_glue's
    if path.name in ("roberta_glue.yaml", "minilm_fractions.yaml"):  # data-fraction sweeps: the report draws the curve
        sizes = {(r.task, r.size) for r in runs}
        assert all(len({s for t, s in sizes if t == task}) >= 3 for task, _ in sizes)
