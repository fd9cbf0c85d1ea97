"""tb_hf.setfit: layer-wise profiles inside real SetFit (setfit, sentence-transformers) on a tiny body built from a
config: the per-block learning rates of the body in the contrastive phase and in the end-to-end phase."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from datasets import Dataset
from setfit import SetFitModel, TrainingArguments

from tb_hf import TempBalanceArguments
from tb_hf.setfit import TempBalanceSetFitTrainer


@pytest.fixture(scope="module")
def tiny_body(tmp_path_factory):
    """A tiny BERT (2 blocks, hidden 32) with the bundled MiniLM's tokenizer, as a model folder SetFit loads."""
    from tb_hf.cli import builtin_model_path

    path = tmp_path_factory.mktemp("tiny-body")
    tokenizer = tf.AutoTokenizer.from_pretrained(builtin_model_path())
    torch.manual_seed(0)
    config = tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=64)  # fmt: skip
    tf.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _data(n=8):
    texts = [f"a fine film number {i}" if i % 2 else f"a dull film number {i}" for i in range(n)]
    return Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(n)]})


def _args(tmp_path, **kw):
    return TrainingArguments(output_dir=str(tmp_path), num_iterations=2, batch_size=(4, 4), num_epochs=(1, 1),
                             body_learning_rate=(1e-3, 1e-3), report_to="none", save_strategy="no",
                             show_progress_bar=False, seed=0, **kw)  # fmt: skip


def test_the_contrastive_phase_trains_the_body_with_the_profiles_per_block_rates(tiny_body, tmp_path):
    model = SetFitModel.from_pretrained(tiny_body)
    trainer = TempBalanceSetFitTrainer(model=model, args=_args(tmp_path), train_dataset=_data(),
                                       tb_args=TempBalanceArguments(tb_preset="llrd", tb_llrd_decay=0.5))  # fmt: skip
    trainer.train()
    base = {g["tb_unit"]: g["tb_base_lr"] for g in trainer.st_trainer.optimizer.param_groups if g["tb_unit"]}
    top, bottom = sorted(base)[-1], sorted(base)[0]
    assert top.endswith("encoder.layer.1") and base[top] == pytest.approx(1e-3)  # SetFit's body rate at the top
    assert bottom.endswith("encoder.layer.0") and base[bottom] == pytest.approx(5e-4)  # one block down: x0.5
    history = (tmp_path / "tempbalance" / "history.jsonl").read_text().splitlines()
    assert '"tb_preset": "llrd"' in history[0]
    assert model.predict(["a fine film"]).shape == (1,)  # the head was fitted after the body


def test_the_end_to_end_phase_gives_the_body_the_same_profile(tiny_body, tmp_path, monkeypatch):
    made = []

    class Recording(torch.optim.AdamW):
        def __init__(self, params, *a, **kw):
            super().__init__(params, *a, **kw)
            made.append([(g.get("tb_unit"), g["lr"]) for g in self.param_groups])

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    model = SetFitModel.from_pretrained(tiny_body, use_differentiable_head=True, head_params={"out_features": 2})
    args = _args(tmp_path, end_to_end=True, head_learning_rate=1e-2)
    trainer = TempBalanceSetFitTrainer(model=model, args=args, train_dataset=_data(),
                                       tb_args=TempBalanceArguments(tb_preset="llrd", tb_llrd_decay=0.5))  # fmt: skip
    trainer.train()
    end_to_end = made[-1]  # SetFit's own loop: our body groups, its head group
    units = {u: lr for u, lr in end_to_end if u}
    assert sorted(units.values()) == pytest.approx([5e-4, 1e-3])
    assert end_to_end[-1] == (None, 1e-2)  # the head at SetFit's head_learning_rate
    assert "_prepare_optimizer" not in model.__dict__  # SetFit's own method again after the phase


def test_a_body_without_transformer_blocks_is_refused_before_training(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tokenizer = Tokenizer(WordLevel({"[UNK]": 0, "a": 1, "film": 2}, unk_token="[UNK]"))
    body = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=8)])
    model = SetFitModel(model_body=body, model_head=None)
    with pytest.raises(ValueError, match="Found no transformer blocks"):
        TempBalanceSetFitTrainer(model=model, args=_args(tmp_path), train_dataset=_data(),
                                 tb_args=TempBalanceArguments(tb_preset="llrd"))  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The recipe's --method setfit

GLUE = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def _recipe(tiny_body, tmp_path, *flags, size=("--shots_per_class", "4")):
    from recipes.glue import run_glue

    argv = ["--model_name_or_path", tiny_body, "--glue_dir", str(GLUE), "--method", "setfit", *size,
            "--max_eval_samples", "40", "--max_seq_length", "32", "--setfit_num_iterations", "2",
            "--setfit_batch_size", "4", "--output_dir", str(tmp_path), "--seed", "3", *flags]  # fmt: skip
    return run_glue.main(*run_glue.parse_args(argv))


@pytest.mark.parametrize("task", ["sst2", "rte"])  # a single sentence; a pair, joined with the separator
def test_the_recipe_runs_setfit_with_the_same_subsets_and_outputs(tiny_body, tmp_path, task):
    import json

    results = _recipe(tiny_body, tmp_path, "--task_name", task)
    assert results["method"] == "setfit" and results["train_samples"] == 8 and results["eval_samples"] == 40
    assert 0 <= results["eval_accuracy"] <= 1 and results["epoch_scores"] == [results["eval_accuracy"]]
    assert json.loads((tmp_path / "all_results.json").read_text())["eval_accuracy"] == results["eval_accuracy"]
    subset = json.loads((tmp_path / "train_subset.json").read_text())
    assert len(subset["indices"]) == 8 and subset["seed"] == 3  # the subset every method of the seed trains on


def test_the_recipe_trains_setfits_body_with_a_profile(tiny_body, tmp_path):
    import json

    results = _recipe(tiny_body, tmp_path, "--task_name", "sst2", "--tb_preset", "llrd", "--tb_llrd_decay", "0.5")
    assert results["setfit_profile"] == "llrd"
    first = json.loads((tmp_path / "tempbalance" / "history.jsonl").read_text().splitlines()[0])
    assert sorted(first["lr_scale"].values()) == pytest.approx([0.5, 1.0])


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--task_name", "stsb", "--max_train_samples", "8"], "--method setfit classifies, and stsb is a regression"),
        (["--task_name", "sst2", "--setfit_end_to_end"], "--setfit_end_to_end trains a differentiable head"),
        (["--task_name", "sst2", "--llrd_decay", "0.8"], r"use --tb_llrd_decay \(with --tb_preset llrd"),
    ],
)
def test_the_recipe_refuses_what_setfit_cannot_take_before_training(tiny_body, tmp_path, flags, words):
    with pytest.raises(ValueError, match=words):
        _recipe(tiny_body, tmp_path, *flags, size=() if "stsb" in flags else ("--shots_per_class", "4"))


def test_setfit_options_with_another_method_and_a_misspelled_one_are_refused():
    from recipes.glue import run_glue

    with pytest.raises(ValueError, match="--setfit_num_iterations apply with --method setfit"):
        run_glue.parse_args(["--output_dir", "x", "--method", "ft", "--setfit_num_iterations", "5"])
    with pytest.raises(SystemExit):  # argparse: unrecognized arguments ... (did you mean --setfit_num_epochs?)
        run_glue.parse_args(["--output_dir", "x", "--method", "setfit", "--setfit_num_epoch", "2"])


def test_trainer_flags_setfit_ignores_are_refused_and_weight_decay_is_its_l2_weight():
    from recipes.glue import run_glue

    with pytest.raises(ValueError, match=r"--learning_rate \(use --setfit_body_learning_rate\), --max_steps would be"):
        run_glue.parse_args(["--output_dir", "x", "--method", "setfit", "--learning_rate", "0.5", "--max_steps", "1"])
    margs, _, targs = run_glue.parse_args(["--output_dir", "x", "--method", "setfit", "--weight_decay", "0.05"])
    assert margs.method == "setfit" and targs.weight_decay == 0.05  # passed on as SetFit's l2_weight


def test_setfit_scores_map_the_heads_classes_when_the_subset_lacks_one(tiny_body, tmp_path):
    """A 3-class file whose first 8 rows hold two classes: predict_proba has 2 columns, and their argmax was read as
    label ids, so 'pos' was scored as 'neu' (second outside probe)."""
    import csv

    rows = [("bad film", "neg"), ("great film", "pos")] * 4 + [("a film", "neu"), ("bad", "neg"), ("great", "pos")] * 4
    for name, part in (("train.csv", rows), ("dev.csv", rows[8:])):
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *part])
    results = _recipe(tiny_body, tmp_path / "out", "--train_file", str(tmp_path / "train.csv"), "--validation_file",
                      str(tmp_path / "dev.csv"), "--text_columns", "text", "--subset_strategy", "first",
                      "--save_model", size=("--max_train_samples", "8"))  # fmt: skip
    from setfit import SetFitModel

    model = SetFitModel.from_pretrained(str(tmp_path / "out"))  # --save_model saved it
    predicted = model.predict([t for t, _ in rows[8:]])
    names = sorted({label for _, label in rows})  # the recipe's ids: the class names in order
    truth = [names.index(label) for _, label in rows[8:]]
    assert results["eval_accuracy"] == pytest.approx(sum(int(p) == t for p, t in zip(predicted, truth)) / len(truth))
