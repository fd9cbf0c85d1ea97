"""recipes/: run_glue end to end on tiny in-process models, configs, bad requests, the sweep and its aggregation."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers as tf
from scipy.stats import ttest_rel

from recipes import sweep
from recipes.glue import run_glue
from recipes.sweep.grid import validate
from tb_hf import cli as tb_cli
from tb_hf.baselines import LLRDTrainer, llrd_param_groups
from tb_hf.blocks import depths as llrd_depths

ROOT = Path(__file__).resolve().parents[1]

GLUE_DIR = ROOT.parent / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(
    not (GLUE_DIR / "RTE" / "train.tsv").is_file(),
    reason=f"the local GLUE release files are not at {GLUE_DIR} (../shared/data/glue beside the checkout)",
)

WORDS = "the a of and to is in it that film movie good bad not was he she man woman said . , ' s".split()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A tiny word-level BERT tokenizer built from a vocab file (no Hub)."""
    vocab = tmp_path_factory.mktemp("tok") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return tf.BertTokenizerFast(vocab_file=str(vocab))


def tiny_bert(num_labels: int, vocab_size: int) -> tf.BertForSequenceClassification:
    config = tf.BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        num_labels=num_labels,
        problem_type="regression" if num_labels == 1 else None,
    )
    torch.manual_seed(0)
    return tf.BertForSequenceClassification(config)


def recipe_args(tmp_path, **overrides):
    args = dict(
        glue_dir=str(GLUE_DIR),
        max_train_samples=24,
        max_seq_length=32,
        num_train_epochs=2,
        learning_rate=1e-3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=128,
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_pin_memory=False,
        output_dir=str(tmp_path / "out"),
        tb_update_steps=2,
    )
    return run_glue.parse_args(run_glue.config_to_argv(args | overrides))


@pytest.mark.slow  # a real training run or subprocess
@needs_glue
@pytest.mark.parametrize(
    "task, method, extra",
    [
        ("sst2", "tempbalance", dict(stratify=True)),  # single sentence
        ("rte", "llrd", dict(shots_per_class=8, max_train_samples=None)),  # sentence pair, string labels
        ("stsb", "ft", dict(max_eval_samples=300)),  # regression
        ("mrpc", "tempbalance", dict(lora_r=4, lora_alpha=8, use_rslora=True, tb_estimator="farms")),
    ],
)
def test_run_glue_end_to_end(tmp_path, tokenizer, task, method, extra):
    margs, dargs, targs = recipe_args(tmp_path, task_name=task, method=method, **extra)
    num_labels = 1 if task == "stsb" else 2
    results = run_glue.main(margs, dargs, targs, model=tiny_bert(num_labels, len(tokenizer)), tokenizer=tokenizer)

    out = Path(targs.output_dir)
    for name in ("all_results.json", "eval_results.json", "train_results.json", "trainer_state.json"):
        assert (out / name).is_file(), name
    main = {"sst2": "accuracy", "rte": "accuracy", "stsb": "combined_score", "mrpc": "combined_score"}[task]
    assert results["main_metric"] == main and results["method"] == method
    assert len(results["epoch_scores"]) == 2
    assert results[f"best_eval_{main}"] == max(results["epoch_scores"])
    assert results[f"eval_{main}"] == results["epoch_scores"][-1]
    assert results["eval_samples"] == {"sst2": 872, "rte": 277, "stsb": 300, "mrpc": 408}[task]
    assert results["train_samples"] == (16 if task == "rte" else 24)
    subset = json.loads((out / "train_subset.json").read_text())
    assert len(subset["indices"]) == results["train_samples"] and subset["seed"] == targs.seed
    history = out / "tempbalance" / "history.jsonl"
    assert history.is_file() == (method in ("tempbalance", "llrd"))  # LLRD is a profile of the same machinery
    if method == "llrd":  # its depth profile, visible in the history: 0.9 per block going down
        assert json.loads(history.read_text().splitlines()[0])["lr_scale"] == pytest.approx(
            {"bert.encoder.layer.0": 0.9, "bert.encoder.layer.1": 1.0}
        )
    assert results.get("tb_update_interval") == (2 if method == "tempbalance" else None)  # the interval in force
    assert json.loads((out / "all_results.json").read_text()).get("tb_update_interval") == results.get(
        "tb_update_interval"
    )
    assert results["lora"] == ("lora_r" in extra)
    if task == "stsb":
        assert {"eval_pearson", "eval_spearmanr"} <= results.keys()


@pytest.mark.slow  # 8 short trainings and the final one
@needs_glue
def test_run_glue_chooses_the_profile_on_the_training_subset(tmp_path, tokenizer):
    margs, dargs, targs = recipe_args(tmp_path, task_name="sst2", method="tempbalance", search_profile="llrd",
                                      search_folds=2, stratify=True, tb_update_steps=None)  # fmt: skip
    results = run_glue.main(margs, dargs, targs, model=tiny_bert(2, len(tokenizer)), tokenizer=tokenizer)
    search = results["search"]
    decays = [entry["setting"]["tb_llrd_decay"] for entry in search["scores"]]
    assert decays == [0.8, 0.85, 0.9, 0.95] and all(len(e["per_split"]) == 2 for e in search["scores"])
    assert search["splits"] == [{"train": 12, "eval": 12}] * 2  # the 24 training examples, never the dev set
    chosen = search["best"]["tb_llrd_decay"]
    first = json.loads((Path(targs.output_dir) / "tempbalance" / "history.jsonl").read_text().splitlines()[0])
    assert first["options"]["tb_preset"] == "llrd" and first["options"]["tb_llrd_decay"] == chosen
    assert first["lr_scale"]["bert.encoder.layer.0"] == pytest.approx(chosen)  # the final run trains the choice
    with pytest.raises(ValueError, match="--search_profile chooses a tb_hf profile, so it needs --method tempbalance"):
        run_glue.parse_args(["--output_dir", "x", "--method", "llrd", "--search_profile", "llrd"])
    with pytest.raises(ValueError, match="--search_profile llrd trains that preset .* --tb_preset is se"):
        run_glue.parse_args(["--output_dir", "x", "--search_profile", "llrd", "--tb_preset", "se"])
    with pytest.raises(ValueError, match="tb_update_steps='4' has no effect"):  # at parsing, not after the model loads
        run_glue.parse_args(["--output_dir", "x", "--search_profile", "llrd", "--tb_update_steps", "4"])


@needs_glue
def test_the_profile_search_is_checked_against_its_data_before_a_model_loads(tmp_path, monkeypatch):
    """--search_metric, --search_folds above a class's size and --tb_llrd_decay beside --search_profile llrd failed
    after the model loaded (or trained the search's choice without a word); the sweep checks the same per run."""
    calls = []
    monkeypatch.setattr(run_glue, "main", lambda *a, **k: calls.append(a))
    base = ["--task_name", "sst2", "--glue_dir", str(GLUE_DIR), "--search_profile", "llrd", "--output_dir", "x"]
    for flags, words in [
        (["--shots_per_class", "3", "--search_folds", "4"], "--search_folds: folds=4 is more than class"),
        (
            ["--shots_per_class", "8", "--search_metric", "accuracy"],
            r"--search_metric accuracy: sst2's evaluation gives",
        ),
        (["--shots_per_class", "8", "--tb_llrd_decay", "0.3"], "chooses --tb_llrd_decay itself"),
    ]:
        with pytest.raises(SystemExit):
            run_glue.cli(base + flags)
        with pytest.raises(ValueError, match=words):  # the same refusal, as the sweep's check raises it
            margs, dargs, targs = run_glue.parse_args(base + flags)
            data = run_glue.prepare_data(dargs, targs)
            run_glue.check_method_data(margs, data.task, data.train["label"])
    assert calls == []  # refused before main, so before any model loads
    config = {
        "output_dir": str(tmp_path / "sweep"), "tasks": {"stsb": {"max_train_samples": [8]}}, "seeds": [1],
        "methods": ["setfit"], "baseline": "setfit", "args": {"glue_dir": str(GLUE_DIR)},
    }  # fmt: skip
    runs = sweep.expand_grid(config)
    parsed = validate(config, runs)
    with pytest.raises(ValueError, match="--method setfit classifies, and stsb is a regression task"):
        sweep.grid.check_data(runs, parsed)


@needs_glue
def test_same_seed_same_subset(tmp_path, tokenizer):
    picks = []
    for seed in (13, 13, 37):
        _, dargs, targs = recipe_args(
            tmp_path, task_name="rte", train_fraction=0.01, seed=seed, max_train_samples=None
        )
        raw, task = run_glue.load_task("rte", glue_dir=dargs.glue_dir)
        picks.append(run_glue.select_train_indices(raw["train"]["label"], fraction=0.01, seed=targs.seed))
    assert picks[0] == picks[1] != picks[2]


@needs_glue
@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(task_name="rte", train_fraction=1.5, max_train_samples=None), r"must be in \(0, 1\]"),
        (dict(task_name="rte", train_fraction=0.0, max_train_samples=None), r"must be in \(0, 1\]"),
        (dict(task_name="rte", shots_per_class=5000, max_train_samples=None), "more than some classes have"),
        (dict(task_name="stsb", stratify=True), "regression task has no classes"),
        (dict(task_name="glue-sst9"), "Unknown task"),
    ],
)
def test_bad_requests_fail_before_any_model_is_loaded(tmp_path, overrides, message):
    margs, dargs, targs = recipe_args(tmp_path, model_name_or_path=str(tmp_path / "no-such-model"), **overrides)
    with pytest.raises(ValueError, match=message):
        run_glue.main(margs, dargs, targs)
    assert not (Path(targs.output_dir) / "trainer_state.json").exists()


def test_bad_custom_column_and_bad_flags(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text,label\ngood,1\nbad,0\n")
    margs, dargs, targs = recipe_args(
        tmp_path, train_file=str(data), validation_file=str(data), text_columns=["review"], max_train_samples=None
    )
    with pytest.raises(ValueError, match=r"no column\(s\) \['review'\].*--text_columns"):
        run_glue.main(margs, dargs, targs)
    with pytest.raises(ValueError, match="--method must be one of"):
        run_glue.ModelArguments(method="sgd")
    with pytest.raises(ValueError, match="--llrd_decay"):
        run_glue.ModelArguments(llrd_decay=0.0)
    # LoRA options without --lora_r would train every weight under a LoRA-looking command line: refused.
    with pytest.raises(ValueError, match=r"--lora_target_modules, --use_rslora have no effect without --lora_r"):
        run_glue.ModelArguments(lora_target_modules=["query"], use_rslora=True)
    assert run_glue.ModelArguments(lora_r=4, lora_alpha=8, use_rslora=True).use_rslora


def test_flags_that_would_not_do_what_they_say_are_refused_before_training(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="--stratify keeps the class proportions of a random subset"):
        recipe_args(tmp_path, task_name="sst2", subset_strategy="first", stratify=True)
    # A longer --max_seq_length than the model's 64 positions: refused before tokenizing or training, instead of a
    # shape error from inside the model at the first long example.
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"{w} film,{i % 2}\n" for i, w in enumerate(WORDS[:8])))
    margs, dargs, targs = recipe_args(
        tmp_path,
        train_file=str(data),
        validation_file=str(data),
        text_columns=["text"],
        max_seq_length=128,
        max_train_samples=None,
    )
    with pytest.raises(ValueError, match=r"--max_seq_length 128 is more than this model reads \(64 tokens\)"):
        run_glue.main(margs, dargs, targs, model=tiny_bert(2, len(tokenizer)), tokenizer=tokenizer)
    assert not (Path(targs.output_dir) / "trainer_state.json").exists()


def test_the_best_evaluation_leaves_out_nan_scores():
    nan = float("nan")
    epochs = [{"epoch": 1, "eval_x": nan}, {"epoch": 2, "eval_x": 0.4}, {"epoch": 3, "eval_x": 0.3}]
    assert run_glue.best_evaluation(epochs, "eval_x")["epoch"] == 2  # max() alone would keep the NaN at epoch 1
    assert run_glue.best_evaluation([{"epoch": 1, "eval_x": nan}] * 2, "eval_x")["epoch"] == 1


@pytest.mark.slow  # a real training run or subprocess
def test_custom_task_end_to_end(tmp_path, tokenizer):
    rows = [("a good film", "pos"), ("a bad film", "neg")] * 6
    (tmp_path / "train.csv").write_text("review,stars\n" + "\n".join(f"{t},{s}" for t, s in rows) + "\n")
    margs, dargs, targs = recipe_args(
        tmp_path,
        train_file=str(tmp_path / "train.csv"),
        validation_file=str(tmp_path / "train.csv"),
        text_columns=["review"],
        label_column="stars",
        max_train_samples=None,
        method="tempbalance",
    )
    results = run_glue.main(margs, dargs, targs, model=tiny_bert(2, len(tokenizer)), tokenizer=tokenizer)
    assert results["task"] == "custom" and results["eval_samples"] == 12 and "eval_f1" in results


@pytest.mark.slow  # a real training run or subprocess
def test_llama_lora_sets_pad_token(tmp_path, tokenizer):
    """A LLaMA-style decoder with LoRA: no pad token in the tokenizer, the recipe sets one."""
    rows = [("a good film", 1), ("a bad film", 0)] * 4
    (tmp_path / "t.csv").write_text("text,label\n" + "\n".join(f"{t},{s}" for t, s in rows) + "\n")
    tok = tf.BertTokenizerFast(vocab_file=tokenizer.vocab_file, pad_token=None)
    tok.eos_token = "[SEP]"
    assert tok.pad_token is None
    config = tf.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_labels=2, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = tf.LlamaForSequenceClassification(config)
    margs, dargs, targs = recipe_args(
        tmp_path,
        train_file=str(tmp_path / "t.csv"),
        validation_file=str(tmp_path / "t.csv"),
        text_columns=["text"],
        max_train_samples=None,
        method="tempbalance",
        lora_r=4,
        lora_target_modules=["q_proj", "v_proj"],
    )
    results = run_glue.main(margs, dargs, targs, model=model, tokenizer=tok)
    assert tok.pad_token == "[SEP]" and model.config.pad_token_id == tok.pad_token_id
    assert results["lora"] is True


# --------------------------------------------------------------------------------------------------
# The command line: user errors, imports, quiet output


def _custom_csv(tmp_path) -> str:
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "a good film,pos\na bad film,neg\n" * 6)
    return str(path)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--train_fraction", "2"], r"--train_fraction must be in \(0, 1\], got 2.0"),
        (["--train_fraction", "0.01"], "keeps none"),
        (["--shots_per_class", "7"], "more than some classes have"),
        (["--text_columns", "review"], r"no column\(s\) \['review'\]"),
        (["--method", "sgd"], "invalid choice: 'sgd'"),
        (["--llrd_decay", "0"], r"--llrd_decay must be in \(0, 1\]"),
        (["--task_nme", "rte"], "unrecognized arguments: --task_nme rte"),
        (["--task_name", "rte"], "Give either --task_name"),
        ([], "--model_name_or_path .*no-such-model: no such folder"),  # the data is fine: the model is next
    ],
)
def test_cli_user_errors_print_one_line_and_exit_2(tmp_path, capsys, flags, message):
    data = _custom_csv(tmp_path)
    argv = ["--train_file", data, "--validation_file", data, "--text_columns", "text"]
    argv += ["--model_name_or_path", str(tmp_path / "no-such-model"), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_:
        run_glue.cli(argv + flags)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert re.search(f": error: .*{message}", err) and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()  # nothing written, no model loaded


@pytest.mark.parametrize("kind", ["missing", "home", "empty", "file", "adapter"])
def test_the_recipe_and_tb_hf_analyze_resolve_a_model_path_alike(tmp_path, capsys, monkeypatch, kind):
    """One rule (`tb_hf.cli.resolve_model`) for --model_name_or_path and tb-hf analyze: the same reason for the
    same path, before any model loads."""
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / kind
    if kind == "empty":
        path.mkdir()
    elif kind == "file":
        path.write_bytes(b"x")
    elif kind == "adapter":
        path.mkdir()
        (path / "adapter_config.json").write_text('{"base_model_name_or_path": "roberta-base"}')
    name = "~/missing" if kind == "home" else str(path)
    data = _custom_csv(tmp_path)
    argv = ["--train_file", data, "--validation_file", data, "--text_columns", "text"]
    with pytest.raises(SystemExit) as recipe:
        run_glue.cli(argv + ["--model_name_or_path", name, "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert recipe.value.code == 2 and err.count("\n") == 1 and not (tmp_path / "out").exists(), err
    with pytest.raises(SystemExit) as analyze:
        tb_cli.main(["analyze", name, "--device", "cpu"])
    reason = str(analyze.value.code).removeprefix(f"Could not load {name!r}: ")
    assert reason != str(analyze.value.code)
    assert err.endswith(f": error: --model_name_or_path {name}: {reason}\n")
    expected = {"missing": "no such folder", "home": "no such folder", "empty": "the folder has no config.json",
                "file": "it is a file", "adapter": "it is a peft adapter, not a model. Pass the base model it was "
                "trained on (roberta-base); tb-hf analyze roberta-base --adapter"}  # fmt: skip
    assert reason.startswith(expected[kind])


def test_the_recipe_loads_in_the_dtypes_of_tb_hf_analyze():
    assert run_glue.DTYPES is tb_cli.DTYPES
    assert run_glue.ModelArguments().dtype == "float32"  # the recipe's default: trains correctly anywhere
    with pytest.raises(ValueError, match="--dtype must be one of"):
        run_glue.ModelArguments(dtype="int8")


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--learning_rat", "1e-3"],
            r"unrecognized arguments: --learning_rat 1e-3 \(did you mean --learning_rate\?\)",
        ),
        (["--learning", "1e-3"], r"unrecognized arguments: --learning 1e-3 \(did you mean --learning_rate"),
        (["--tb_mapp", "sigmoid"], r"unrecognized arguments: --tb_mapp sigmoid \(did you mean --tb_mapping\?\)"),
        (["--seeed=3"], r"unrecognized arguments: --seeed=3 \(did you mean --seed\?\)"),
    ],
)
def test_abbreviated_or_misspelled_flags_are_errors(tmp_path, capsys, flags, message):
    """Argparse took unique prefixes, so --learning_rat 1e-3 set learning_rate without a word (issue 18 F)."""
    data = _custom_csv(tmp_path)
    argv = ["--train_file", data, "--validation_file", data, "--text_columns", "text", "--output_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        run_glue.cli(argv + flags)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and re.search(message, err) and err.count("\n") == 1, err
    assert run_glue.parse_args(argv + ["--learning_rate", "1e-3"])[2].learning_rate == 1e-3  # the full name works


def test_misspelled_yaml_key_is_an_error_naming_the_key(tmp_path, capsys):
    """A recipe YAML's keys become flags: `learning_rat: 1e-3` silently set learning_rate (issue 18 F)."""
    data = _custom_csv(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"train_file: {data}\nvalidation_file: {data}\ntext_columns: text\noutput_dir: {tmp_path / 'out'}\n"
        "learning_rat: 1e-3\n"
    )
    with pytest.raises(SystemExit) as exit_:
        run_glue.cli([str(config)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized arguments: --learning_rat 1e-3" in err, err
    assert "did you mean --learning_rate?" in err and "key 'learning_rat' of" in err and "run.yaml" in err
    with pytest.raises(ValueError, match="did you mean --learning_rate"):  # the sweep's check of every run
        run_glue.parse_args(["--learning_rat", "1e-3"], run_glue.make_parser(raise_errors=True))


def test_cli_bad_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_glue.cli([str(tmp_path / "missing.yaml")])
    assert exit_.value.code == 2 and "cannot read the config file" in capsys.readouterr().err


@pytest.mark.slow  # a real training run or subprocess
def test_help_and_argument_errors_answer_before_the_training_stack_loads(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, runpy, sys\n"
        "out = {}\n"
        "heavy = ['transformers.trainer', 'datasets', 'evaluate', 'tb_hf.baselines', 'recipes.metrics']\n"
        "for argv in (['--help'], ['--method', 'sgd'], ['--train_fraction', '2', '--task_name', 'sst9']):\n"
        "    sys.argv = ['run_glue.py', *argv]\n"
        "    try:\n"
        f"        runpy.run_path({str(ROOT / 'recipes' / 'glue' / 'run_glue.py')!r}, run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        out[argv[0]] = [e.code, [m for m in heavy if m in sys.modules]]\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    probe = json.loads(proc.stdout.splitlines()[-1])
    assert probe == {"--help": [0, []], "--method": [2, []], "--train_fraction": [2, []]}, proc.stderr
    assert "error: Unknown task 'sst9'" in proc.stderr and "Traceback" not in proc.stderr


def test_pin_memory_off_without_cuda_and_no_bars_off_a_terminal_unless_asked():
    _, _, targs = run_glue.parse_args(["--output_dir", "x"])
    assert targs.dataloader_pin_memory is torch.cuda.is_available()
    assert targs.disable_tqdm is not sys.stderr.isatty()  # pytest captures stderr: not a terminal
    _, _, targs = run_glue.parse_args(["--output_dir", "x", "--dataloader_pin_memory", "true", "--disable_tqdm", "0"])
    assert targs.dataloader_pin_memory is True and targs.disable_tqdm is False


@pytest.mark.parametrize(
    "flags, words",
    [  # each was ignored without a word: a sweep's shared arguments may carry them for every method
        (
            ["--method", "ft", "--tb_mapping", "sigmoid"],
            "--tb_mapping not used: they only apply with --method tempbalance",
        ),
        (["--method", "llrd", "--tb_update_steps", "4", "--tb_xmin_pos", "1.5"], "--tb_xmin_pos, --tb_update_steps"),
        (["--method", "ft", "--llrd_decay", "0.8"], "--llrd_decay not used: it only applies with --method llrd"),
        (["--method", "ft", "--tb_preset", "se"], "--tb_preset not used:"),  # not the options it filled in
        (["--method", "ft", "--tb_preset", "se", "--tb_lr_max", "3"], "--tb_preset, --tb_lr_max not used:"),
    ],
)
def test_options_of_another_method_are_named_in_a_warning(flags, words, caplog):
    with caplog.at_level(logging.WARNING):
        run_glue.parse_args(["--output_dir", "x", *flags])
    assert words in caplog.text


def test_llrd_decay_with_tempbalance_is_refused_and_options_of_the_method_are_accepted(caplog):
    with pytest.raises(ValueError, match="for LLRD's depth profile under TempBalance use --tb_llrd_decay"):
        run_glue.parse_args(["--output_dir", "x", "--method", "tempbalance", "--llrd_decay", "0.8"])
    with caplog.at_level(logging.WARNING):
        margs, _, _ = run_glue.parse_args(["--output_dir", "x", "--method", "llrd", "--llrd_decay", "0.8"])
        _, _, targs = run_glue.parse_args(["--output_dir", "x", "--method", "tempbalance", "--tb_llrd_decay", "0.8"])
    assert margs.llrd_decay == 0.8 and targs.tb_llrd_decay == 0.8 and "not used" not in caplog.text


@pytest.mark.parametrize(
    "flags, words",
    [  # each warned, loaded the model, then stopped with advice for Python callers (outside probe)
        (["--method", "llrd", "--tb_llrd_decay", "0.8"], r"--method llrd .* --tb_llrd_decay 0.8 would not apply"),
        (["--method", "llrd", "--tb_preset", "llrd-alpha"], r"--tb_preset llrd-alpha would not apply .* --llrd_dec"),
        # an explicit --llrd_decay at the old default value was not noticed with tempbalance
        (["--method", "tempbalance", "--llrd_decay", "0.9"], "for LLRD's depth profile under TempBalance"),
        # trained plain fine-tuning reported as tempbalance: no LoRA to look at (outside probe)
        (["--method", "tempbalance", "--tb_lora_view", "delta"], "--tb_lora_view only act on LoRA adapters"),
        (["--method", "tempbalance", "--tb_lora_average", "all"], "--tb_lora_average only act on LoRA adapters"),
    ],
)
def test_options_that_would_change_what_a_method_trains_are_refused_at_parsing(flags, words):
    with pytest.raises(ValueError, match=words):
        run_glue.parse_args(["--output_dir", "x", *flags])


def test_a_sweep_whose_shared_arguments_carry_a_preset_into_llrd_is_refused_before_the_first_run(tmp_path):
    config = {
        "output_dir": str(tmp_path / "sweep"), "tasks": {"sst2": {"shots_per_class": [8]}}, "seeds": [1],
        "methods": ["ft", "llrd", "tempbalance"], "args": {"tb_preset": "llrd-alpha", "glue_dir": str(GLUE_DIR)},
    }  # fmt: skip
    runs = sweep.expand_grid(config)
    with pytest.raises(ValueError, match=r"--tb_preset llrd-alpha would not apply .*in 1 run\(s\), e.g. sst2/sh"):
        validate(config, runs)


def test_peft_wrapping_does_not_warn_about_transformers_internals():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_glue._peft_model(tiny_bert(2, 40), run_glue.ModelArguments(lora_r=4))
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def saved_model_args(tmp_path, model, tokenizer, **overrides):
    """Recipe arguments for plain FT of ``model``, saved with ``tokenizer`` to a folder, on a custom CSV task."""
    folder = tmp_path / "saved-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    csv_file = _custom_csv(tmp_path)
    return recipe_args(
        tmp_path,
        model_name_or_path=str(folder),
        train_file=csv_file,
        validation_file=csv_file,
        text_columns=["text"],
        max_train_samples=None,
        method="ft",
        **overrides,
    )


@pytest.mark.slow  # a real training run or subprocess
def test_model_load_report_has_no_escape_codes_and_epochs_are_ints(tmp_path, tokenizer, caplog):
    """A real from_pretrained of an encoder without a classifier head: transformers reports the new head."""
    margs, dargs, targs = saved_model_args(tmp_path, tiny_bert(2, len(tokenizer)).bert, tokenizer)
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(caplog.handler)  # transformers' loggers do not propagate to the root
    try:
        tf.logging.set_verbosity_warning()
        results = run_glue.main(margs, dargs, targs)
    finally:
        transformers_logger.removeHandler(caplog.handler)
    report = [r.getMessage() for r in caplog.records if "LOAD REPORT" in r.getMessage()]
    assert report and "\x1b[" not in report[0] and "classifier" in report[0]
    assert results["best_epoch"] in (1, 2) and isinstance(results["best_epoch"], int)
    assert isinstance(results["final_epoch"], int)


@pytest.mark.slow  # a real training run
@pytest.mark.parametrize("dtype", [None, "auto"])
def test_half_precision_checkpoints_train_in_float32(tmp_path, tokenizer, monkeypatch, caplog, dtype):
    """A checkpoint saved in bfloat16 (SmolLM2's is) loads in float32 unless --dtype auto asks for the checkpoint's
    dtype, and then a warning says the trainable weights are bfloat16 (transformers 5 loads 'auto' by default: the
    recipe once trained SmolLM2 + LoRA, classification head included, in pure bf16 without a word)."""
    loaded = []
    original = tf.AutoModelForSequenceClassification.from_pretrained

    def spy(*args, **kwargs):
        loaded.append(original(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(tf.AutoModelForSequenceClassification, "from_pretrained", spy)
    overrides = {} if dtype is None else {"dtype": dtype}
    model = tiny_bert(2, len(tokenizer)).to(torch.bfloat16)
    margs, dargs, targs = saved_model_args(tmp_path, model, tokenizer, num_train_epochs=1, **overrides)
    with caplog.at_level(logging.WARNING, logger="tb_hf"):
        run_glue.main(margs, dargs, targs)
    want = torch.bfloat16 if dtype == "auto" else torch.float32
    assert [m.dtype for m in loaded] == [want]
    assert all(p.dtype == want for p in loaded[0].parameters())
    warned = [r.getMessage() for r in caplog.records if "Trainable weights in torch.bfloat16" in r.getMessage()]
    assert bool(warned) == (dtype == "auto")


def test_configs_start_with_their_command_and_parse():
    configs = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# python") and str(path.relative_to(ROOT)) in path.read_text(), path
        if "glue/configs" in str(path):
            margs, dargs, targs = run_glue.parse_args([str(path), "--seed", "7"])
            assert targs.seed == 7 and dargs.task_name
        else:  # every run of every committed sweep parses as it will run (a typo in method_args fails here)
            config = sweep.load_config(path)
            runs = sweep.expand_grid(config)
            assert runs
            validate(config, runs)


# --------------------------------------------------------------------------------------------------
# LLRD


def test_llrd_groups():
    model = tiny_bert(2, 40)
    depths = llrd_depths(model)
    assert depths["bert.embeddings.word_embeddings.weight"] == 2
    assert depths["bert.encoder.layer.0.attention.self.query.weight"] == 1
    assert depths["bert.encoder.layer.1.output.dense.bias"] == 0
    assert depths["classifier.weight"] == 0 and depths["bert.pooler.dense.weight"] == 0
    groups = llrd_param_groups(model, learning_rate=1e-3, decay=0.5, weight_decay=0.1)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    for name, depth in depths.items():
        assert lr_of[id(params[name])] == pytest.approx(1e-3 * 0.5**depth)
    assert sum(len(g["params"]) for g in groups) == len(params)
    assert groups[0]["lr"] == 1e-3


def test_llrd_trainer_optimizer(tmp_path):
    model = tiny_bert(2, 40)
    args = tf.TrainingArguments(output_dir=str(tmp_path), learning_rate=2e-3, report_to="none", use_cpu=True)
    trainer = LLRDTrainer(model=model, args=args, llrd_decay=0.8)
    trainer.create_optimizer()
    assert sorted({g["lr"] for g in trainer.optimizer.param_groups}) == pytest.approx(
        [2e-3 * 0.8**2, 2e-3 * 0.8, 2e-3]
    )


# --------------------------------------------------------------------------------------------------
# Sweep


def sweep_config(tmp_path) -> dict:
    return {
        "output_dir": str(tmp_path / "sweep"),
        "tasks": {"rte": {"fractions": [0.1, 0.2]}, "stsb": {"fractions": [0.1], "stratify": False}},
        "seeds": [1, 2, 3],
        "methods": ["ft", "tempbalance"],
        "baseline": "ft",
        "args": {"glue_dir": "x", "stratify": True, "num_train_epochs": 3},
        "method_args": {"tempbalance": {"tb_mapping": "sigmoid"}},
    }


def fake_results(task: str, score: float) -> dict:
    main = "accuracy" if task == "rte" else "combined_score"
    return {
        "main_metric": main,
        f"best_eval_{main}": score,
        f"eval_{main}": score - 0.01,
        "train_samples": 249,
        "eval_samples": 277,
        "best_epoch": 2.0,
    }


def test_grid_skip_finished_and_retry_failed(tmp_path, monkeypatch):
    config = sweep_config(tmp_path)
    runs = sweep.expand_grid(config)
    assert len(runs) == 3 * 3 * 2  # (2 + 1 fractions) x 3 seeds x 2 methods
    tb = next(r for r in runs if r.method == "tempbalance" and r.task == "stsb")
    assert tb.args["tb_mapping"] == "sigmoid" and tb.args["stratify"] is False and tb.args["task_name"] == "stsb"
    assert tb.args["output_dir"].endswith("runs/stsb/frac0.1/tempbalance/seed1")

    calls = []

    def fake_run(run):
        calls.append(run.name)
        if run.seed == 3 and run.method == "ft":
            raise RuntimeError("out of memory")
        return fake_results(run.task, 0.5)

    monkeypatch.setattr(sweep.launch, "_run_inprocess", fake_run)
    counts = sweep.execute(runs)
    assert counts == {"done": 0, "ok": 15, "failed": 3, "elsewhere": 0, "conflict": 0} and len(calls) == 18
    failed = Path(runs[0].args["output_dir"]).parents[1] / "ft" / "seed3" / "error.txt"
    assert "out of memory" in failed.read_text()

    calls.clear()
    monkeypatch.setattr(
        sweep.launch, "_run_inprocess", lambda run: calls.append(run.name) or fake_results(run.task, 0.5)
    )
    assert sweep.execute(runs) == {"done": 15, "ok": 3, "failed": 0, "elsewhere": 0, "conflict": 0}
    assert sorted(calls) == sorted(r.name for r in runs if r.seed == 3 and r.method == "ft")
    assert not failed.exists()
    assert sweep.execute(runs) == {"done": 18, "ok": 0, "failed": 0, "elsewhere": 0, "conflict": 0}


def test_two_sweep_processes_share_a_grid(tmp_path, monkeypatch, capsys):
    """A run another live process holds (running.lock with its host and pid) is left to it, and so is one held on
    another machine (its pid cannot be checked from here); a run finished after this sweep listed its work is not
    run again; a lock whose process is gone is taken over and removed afterwards."""
    import socket

    runs = sweep.expand_grid(sweep_config(tmp_path))[:5]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    try:
        held, stale, remote = (Path(r.args["output_dir"]) for r in runs[1:4])
        locks = {held: f"{host} {other.pid}", stale: f"{host} {dead.pid}", remote: f"not-{host} {dead.pid}"}
        for folder, text in locks.items():
            folder.mkdir(parents=True)
            (folder / sweep.launch.LOCK_FILE).write_text(text)
        calls = []

        def fake_run(run):  # while the first run trains, another process finishes the last one
            calls.append(run.name)
            lock = (Path(run.args["output_dir"]) / sweep.launch.LOCK_FILE).read_text()
            assert lock == f"{host} {os.getpid()} {run.key}"  # the run key: same run or other settings
            if run is runs[0]:
                last = Path(runs[4].args["output_dir"])
                last.mkdir(parents=True)
                record = {"key": runs[4].key, "args": runs[4].args, "results": {}}
                (last / sweep.RESULT_FILE).write_text(json.dumps(record))
            return fake_results(run.task, 0.5)

        monkeypatch.setattr(sweep.launch, "_run_inprocess", fake_run)
        assert sweep.execute(runs) == {"done": 0, "ok": 2, "failed": 0, "elsewhere": 3, "conflict": 0}
        assert calls == [runs[0].name, runs[2].name]
        for folder in (held, remote):  # still the other processes'
            assert (folder / sweep.launch.LOCK_FILE).read_text() == locks[folder]
        assert not (stale / sweep.launch.LOCK_FILE).exists() and (stale / sweep.RESULT_FILE).is_file()
        assert not (Path(runs[0].args["output_dir"]) / sweep.launch.LOCK_FILE).exists()
        notes = capsys.readouterr().err
        assert f"running in process {other.pid}" in notes and f"running on not-{host}" in notes
        assert "finished elsewhere" in notes
    finally:
        other.kill()
        other.wait()


def write_fake_runs(config: dict, scores: dict[str, list[float]]) -> None:
    """A result.json for every run of ``config`` (rte): ``scores[method][seed - 1]`` as its best score."""
    for run in sweep.expand_grid(config):
        out = Path(run.args["output_dir"])
        out.mkdir(parents=True)
        record = {"task": run.task, "fraction": run.fraction, "method": run.method, "lora": run.lora, "seed": run.seed}
        record["results"] = fake_results("rte", scores[run.method][run.seed - 1])
        (out / sweep.RESULT_FILE).write_text(json.dumps(record))


def test_aggregation_table(tmp_path):
    config = sweep_config(tmp_path)
    config["tasks"] = {"rte": {"fractions": [0.1]}}
    scores = {"ft": [0.50, 0.55, 0.60], "tempbalance": [0.54, 0.56, 0.65]}
    write_fake_runs(config, scores)

    table = sweep.aggregate(config)
    out = Path(config["output_dir"])
    assert {"results.csv", "summary.csv", "summary.md", "scores.png"} <= {p.name for p in out.iterdir()}
    p = ttest_rel(scores["tempbalance"], scores["ft"]).pvalue
    header, rule, row = table.splitlines()
    assert header == "| task | fraction | n train | metric | ft | tempbalance | tempbalance − ft (p; wins:losses) |"
    assert row == f"| rte | 0.1 | 249 | accuracy | 55.00 ± 5.00 | 58.33 ± 5.86 | +3.33 ({p:.2f}; 3:0) |"
    summary = sweep.summarize(sweep.collect(out))
    tb = summary[summary["method"] == "tempbalance"].iloc[0]
    assert tb["diff_vs_baseline"] == pytest.approx(0.1 / 3) and tb["p_value"] == pytest.approx(p)
    assert math.isnan(summary[summary["method"] == "ft"].iloc[0]["p_value"])


def test_aggregation_of_a_lora_only_sweep_compares_with_plain_lora(tmp_path):
    """With lora: [true] every run has lora True and the baseline is the LoRA ft run (it once printed no difference
    at all); LoRA is a column of the tables, not a suffix of the method names."""
    config = sweep_config(tmp_path) | {"lora": [True], "tasks": {"rte": {"fractions": [0.1]}}}
    scores = {"ft": [0.50, 0.55, 0.60], "tempbalance": [0.54, 0.56, 0.65]}
    write_fake_runs(config, scores)
    table = sweep.aggregate(config)
    p = ttest_rel(scores["tempbalance"], scores["ft"]).pvalue
    head = table.splitlines()[0]
    assert "| LoRA |" in head and "| tempbalance − ft (p; wins:losses) |" in head
    assert "| yes |" in table.splitlines()[2] and table.splitlines()[2].endswith(f"| +3.33 ({p:.2f}; 3:0) |")
    summary_md = (Path(config["output_dir"]) / "summary.md").read_text()
    assert "Pooled per model" in summary_md and "| yes | 0.1 (fraction) | tempbalance | 1 | 3 |" in summary_md


def test_shards_split_the_grid(tmp_path, capsys):
    import yaml

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_config(tmp_path)))
    listed = []
    for shard in ("1/2", "2/2"):
        assert sweep.main([str(path), "--dry-run", "--shard", shard]) == 0
        listed.append(capsys.readouterr().out.split())
    names = [r.name for r in sweep.expand_grid(sweep.load_config(path))]
    assert sorted(listed[0][1::2] + listed[1][1::2]) == sorted(names) and len(listed[0]) == len(listed[1])


# --------------------------------------------------------------------------------------------------
# Evaluating on held-out training examples (choosing lr and epochs without the dev set)


def test_holdout_indices_are_disjoint_seeded_and_stratified():
    labels = [0] * 60 + [1] * 40
    train = list(range(0, 100, 10))  # 6 of class 0, 4 of class 1
    picks = run_glue.select_holdout_indices(labels, train, 20, seed=3)
    assert len(picks) == 20 and not set(picks) & set(train) and picks == sorted(picks)
    assert sum(labels[i] for i in picks) == 8  # 36 : 54 left -> 40% of 20 in class 1
    assert picks == run_glue.select_holdout_indices(labels, train, 20, seed=3)
    assert picks != run_glue.select_holdout_indices(labels, train, 20, seed=4)
    regression = run_glue.select_holdout_indices([0.5 * i for i in range(100)], train, 5, seed=3, is_regression=True)
    assert len(regression) == 5 and not set(regression) & set(train)
    with pytest.raises(ValueError, match="only 90 training examples are left"):
        run_glue.select_holdout_indices(labels, train, 91, seed=3)


def test_holdout_flag_conflicts():
    with pytest.raises(ValueError, match="drop --max_eval_samples"):
        run_glue.DataArguments(eval_on_train_holdout=50, max_eval_samples=10)
    with pytest.raises(ValueError, match="must be >= 1"):
        run_glue.DataArguments(eval_on_train_holdout=0)


@needs_glue
@pytest.mark.slow  # two training runs: ~6 s idle
def test_eval_on_train_holdout_end_to_end(tmp_path, tokenizer):
    margs, dargs, targs = recipe_args(
        tmp_path, task_name="rte", shots_per_class=8, max_train_samples=None, eval_on_train_holdout=40,
        eval_strategy="steps", eval_steps=0.5, method="ft",
    )  # fmt: skip
    results = run_glue.main(margs, dargs, targs, model=tiny_bert(2, len(tokenizer)), tokenizer=tokenizer)
    subset = json.loads((Path(targs.output_dir) / "train_subset.json").read_text())
    holdout, train = subset["eval_holdout_indices"], subset["indices"]
    assert len(holdout) == 40 and len(train) == 16 and not set(holdout) & set(train)
    assert subset["eval_split"] == results["eval_split"] == "train_holdout" and results["eval_samples"] == 40
    raw, _ = run_glue.load_task("rte", glue_dir=str(GLUE_DIR))
    assert sorted(raw["train"].select(holdout)["label"]).count(1) == 20  # RTE's train set is balanced
    # Steps evaluation at half and at the end of training: the end is evaluated once, not twice.
    assert len(results["epoch_scores"]) == 2 and results["final_epoch"] == 2
    # Without the flag the dev set is evaluated and says so.
    margs, dargs, targs = recipe_args(tmp_path, task_name="rte", max_train_samples=16, num_train_epochs=1)
    results = run_glue.main(margs, dargs, targs, model=tiny_bert(2, len(tokenizer)), tokenizer=tokenizer)
    assert results["eval_split"] == "validation" and results["eval_samples"] == 277
