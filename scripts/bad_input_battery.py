"""The bad-input battery: every bad input the issues and docs/bad-input.md name, tried as a user would, and classified.

    python -m scripts.bad_input_battery            # from the repository root: one line per input, the totals

Each case is a small function that feeds one bad input to the library, ``tb-hf analyze``, the recipe
(``recipes/glue/run_glue.py``) or the sweep (``python -m recipes.sweep``), in process, and says what a correct outcome
looks like. The outcome is classified as:

* ``clear error``: it stopped with a ValueError/TypeError/SystemExit whose message contains the expected words
  (the option, file, row or what to do instead), before any training;
* ``warning+correct``: it went on, logged a warning containing the expected words, and the result is right;
* ``correct``: it went on without a warning and the result is right (for inputs that are not errors at all);
* ``unclear crash``: any other exception, or an error message without the expected words;
* ``silently wrong``: it went on and the result is wrong, or an expected warning is missing.

The goal is 0 in the last two columns. Tiny models are built from configs; no Hub access.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
GLUE = ROOT.parent / "shared" / "data" / "glue"


class Expect:
    """What a case expects: an error or a warning containing ``words`` (all of them, case-insensitive)."""

    def __init__(self, kind: str, *words: str):
        self.kind, self.words = kind, [w.lower() for w in words]


CASES: list[tuple[str, Expect, callable]] = []


def case(name: str, kind: str = "correct", *words: str):
    """Register a case: ``kind`` is what a correct outcome is ("error", "warning" or "correct"), ``words`` what
    its message must say. The function feeds the input and asserts that a result it gets is right."""

    def register(fn):
        CASES.append((name, Expect(kind, *words), fn))
        return fn

    return register


def _tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="tb-battery-"))


def _csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------------------------------
# Options


def _config(**options):
    from tb_hf import TempBalanceConfig

    return TempBalanceConfig(output_dir=str(_tmp()), **options)


for _name, _options, _words in [
    (
        "sigmoid s_low = s_high = 2000",
        dict(tb_sigmoid_s_low=2000, tb_sigmoid_s_high=2000),
        ["tb_sigmoid_s_low", "[0, 6]"],
    ),
    ("tb_lr_max = inf", dict(tb_lr_max=math.inf), ["tb_lr_max", "finite"]),
    ("tb_xmin_pos = inf", dict(tb_xmin_pos=math.inf), ["tb_xmin_pos", "finite"]),
    ("tb_xmin_pos = nan", dict(tb_xmin_pos=math.nan), ["tb_xmin_pos"]),
    ("tb_xmin_pos = 1", dict(tb_xmin_pos=1.0), ["tb_xmin_pos"]),
    ("tb_lr_min > tb_lr_max", dict(tb_lr_min=2.0, tb_lr_max=1.0), ["tb_lr_min"]),
    ("tb_lr_min = 0", dict(tb_lr_min=0.0), ["tb_lr_min"]),
    ("tb_sigmoid_tau = 0", dict(tb_sigmoid_tau=0.0), ["tb_sigmoid_tau"]),
    ("tb_mapping = cubic", dict(tb_mapping="cubic"), ["tb_mapping"]),
    ("tb_update_steps = 0", dict(tb_update_steps="0"), ["tb_update_steps"]),
    ("tb_update_steps = sometimes", dict(tb_update_steps="sometimes"), ["tb_update_steps", "once"]),
    ("tb_max_overhead = 0", dict(tb_max_overhead=0.0), ["tb_max_overhead"]),
    ("tb_max_overhead = 5", dict(tb_max_overhead=5.0), ["tb_max_overhead"]),
    ("tb_farms_window without farms", dict(tb_farms_window=64), ["tb_estimator"]),
    ("tb_farms_aspect_ratio = -1", dict(tb_estimator="farms", tb_farms_aspect_ratio=-1.0), ["tb_farms_aspect_ratio"]),
    ("tb_farms_grid = 0", dict(tb_estimator="farms", tb_farms_grid=0), ["tb_farms_grid"]),
    ("tb_min_evals = 1", dict(tb_min_evals=1), ["tb_min_evals"]),
    ("tb_xmin_pos with ks", dict(tb_xmin_method="ks", tb_xmin_pos=1.5), ["tb_xmin_pos"]),
    ("tb_farms_aspect_ratio without farms", dict(tb_farms_aspect_ratio=2.0), ["tb_farms_aspect_ratio", "'farms'"]),
    ("tb_farms_grid without farms", dict(tb_farms_grid=4), ["tb_farms_grid", "'farms'"]),
    ("tb_update_steps = '²'", dict(tb_update_steps="²"), ["tb_update_steps", "positive integer"]),
    ("tb_min_evals = 10**8", dict(tb_min_evals=10**8), ["tb_min_evals", "[2, 10000000]"]),
    (
        "tb_farms_window = 2*10**6",
        dict(tb_estimator="farms", tb_farms_window=2 * 10**6),
        ["tb_farms_window", "[1, 1000000]"],
    ),
    ("tb_wd_min_ratio without weight-decay balancing", dict(tb_wd_min_ratio=0.2), ["tb_wd_min_ratio", "tb_balance"]),
    ("tb_se_threshold without the se map", dict(tb_se_threshold=3.0), ["tb_se_threshold", "tb_mapping='se'"]),
    ("tb_lr_min with the sigmoid map", dict(tb_mapping="sigmoid", tb_lr_min=0.2), ["tb_lr_min", "tb_sigmoid_s_low"]),
    (
        "tb_mapping with only the weight decay balanced",
        dict(tb_balance="weight_decay", weight_decay=0.1, tb_mapping="sigmoid"),
        ["tb_mapping", "tb_balance='lr' or 'both'"],
    ),
    (
        "tb_max_overhead with a fixed interval",
        dict(tb_update_steps="4", tb_max_overhead=0.1),
        ["tb_max_overhead", "tb_update_steps='auto'"],
    ),
    (
        "tb_balance='weight_decay' with weight_decay 0 (the default)",
        dict(tb_balance="weight_decay"),
        ["weight_decay", "which is 0", "e.g. 0.1"],
    ),
    ("tb_preset = llrd+alpha (unknown)", dict(tb_preset="llrd+alpha"), ["tb_preset", "'llrd-alpha'"]),
    (
        "tb_preset='se' with another map",
        dict(tb_preset="se", tb_mapping="sigmoid"),
        ["tb_preset='se' is defined by tb_mapping='se'", "drop one of the two"],
    ),
    (
        "tb_preset='alphadecay' with weight_decay 0",
        dict(tb_preset="alphadecay"),
        ["weight_decay", "which is 0"],
    ),
    (
        "tb_preset='llrd-alpha' with the sigmoid map",
        dict(tb_preset="llrd-alpha", tb_mapping="sigmoid"),
        ["tb_preset='llrd-alpha' is defined by tb_mapping='linear'", "tb_mapping='sigmoid'"],
    ),
    (  # the same conflict at the global default value used to train the preset's map without a word
        "tb_preset='model-balancing' with tb_mapping='linear'",
        dict(tb_preset="model-balancing", tb_mapping="linear"),
        ["tb_preset='model-balancing' is defined by tb_mapping='sigmoid'", "you set tb_mapping='linear'"],
    ),
    (
        "tb_preset='alphadecay' with tb_balance='lr'",
        dict(tb_preset="alphadecay", tb_balance="lr", weight_decay=0.1),
        ["tb_preset='alphadecay' is defined by tb_balance='weight_decay'", "you set tb_balance='lr'"],
    ),
    (
        "tb_preset='llrd' with a spectral option",
        dict(tb_preset="llrd", tb_estimator="farms"),
        ["tb_estimator='farms' has no effect", "no spectral pass"],
    ),
    ("tb_llrd_decay = np.True_", dict(tb_llrd_decay=__import__("numpy").True_), ["tb_llrd_decay", "(0, 1]"]),
]:

    def _fn(options=_options):
        _config(**options)

    case(f"option: {_name}", "error", *_words)(_fn)


@case("callback(TempBalanceConfig(...), mapping='sigmoid')", "correct")
def _():
    from tb_hf import TempBalanceCallback

    cb = TempBalanceCallback(_config(tb_xmin_pos=1.5), mapping="sigmoid")
    assert (cb.user_options.tb_mapping, cb.user_options.tb_xmin_pos) == ("sigmoid", 1.5)


@case("numpy integer options (np.int64(50))", "correct")
def _():
    import numpy as np

    config = _config(tb_min_evals=np.int64(50), tb_estimator="farms", tb_farms_window=np.int64(64))
    assert (config.tb_min_evals, config.tb_farms_window) == (50, 64) and type(config.tb_min_evals) is int


@case("tb_lr_min == tb_lr_max with tied alphas", "correct")
def _():
    from tb_hf import compute_factors

    assert compute_factors({"a": 3.0, "b": 3.0}, lr_min=0.7, lr_max=0.7) == {"a": 0.7, "b": 0.7}


@case("callback with a misspelled option", "error", "unknown tempbalance options", "valid")
def _():
    from tb_hf import TempBalanceCallback

    TempBalanceCallback(mappping="linear")


@case("compute_factors with an infinite factor option", "error", "lr_max", "finite")
def _():
    from tb_hf import compute_factors

    compute_factors({"a": 1.0, "b": 2.0}, lr_max=math.inf)


# --------------------------------------------------------------------------------------------------
# Models


def _train(model, tmp, dataset=None, resume=None, **options):
    from tb_hf import TempBalanceTrainer
    from tb_hf.testing import dataset_for, tiny_training_args

    args = tiny_training_args(tmp, **options)
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset or dataset_for(model))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@case("model without transformer blocks", "error", "no transformer blocks", "plain trainer")
def _():
    import torch.nn as nn

    from tb_hf import TempBalanceTrainer
    from tb_hf.testing import tiny_training_args

    TempBalanceTrainer(model=nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), args=tiny_training_args(_tmp()))


@case("NaN weight in one block", "warning", "non_finite", "keep factor 1")
def _():
    import torch

    from tb_hf.testing import ARCHS

    model = ARCHS["bert"][0]()
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.self.query.weight[0, 0] = float("nan")
    trainer = _train(model, _tmp(), tb_update_steps="once")
    factors = {g["tb_unit"]: g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]}
    assert factors["bert.encoder.layer.1"] == 1.0


@case("only the head trains (all blocks frozen)", "warning", "nothing to balance")
def _():
    from tb_hf.testing import ARCHS

    model = ARCHS["bert"][0]()
    for name, p in model.named_parameters():
        p.requires_grad = "classifier" in name
    _train(model, _tmp())


@case("zero-size nn.Linear(32, 0) in each block", "correct")
def _():
    import torch.nn as nn

    from tb_hf.testing import ARCHS

    model = ARCHS["bert"][0]()
    for layer in model.bert.encoder.layer:
        layer.pruned = nn.Linear(32, 0)
    trainer = _train(model, _tmp(), tb_update_steps="once")
    spectra = trainer.tempbalance.balancer.engine.run(model).spectra
    assert {s.status for k, s in spectra.items() if "pruned" in k.param} == {"too_small"}
    factors = {g["tb_unit"]: g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]}
    assert sorted(factors.values()) == [0.5, 1.5], factors  # the other matrices fit: balanced


@case("two blocks, one frozen (one trainable unit)", "warning", "single trainable unit", "tb_unit='matrix'")
def _():
    from tb_hf.testing import ARCHS

    model = ARCHS["bert"][0]()
    for name, p in model.named_parameters():
        p.requires_grad = not name.startswith("bert.encoder.layer.0.")
    trainer = _train(model, _tmp(), tb_update_steps="once")
    factors = {g["tb_unit"]: g["tb_factor"] for g in trainer.optimizer.param_groups if g["tb_unit"]}
    assert factors == {"bert.encoder.layer.1": 1.0}, factors


@case("tb_lora_view='delta' on a model without LoRA", "warning", "has no lora adapters", "tb_lora_view='effective'")
def _():
    from tb_hf.testing import ARCHS

    model = ARCHS["roberta"][0]()
    trainer = _train(model, _tmp(), tb_lora_view="delta", tb_update_steps="once")
    assert all(g["tb_factor"] == 1.0 for g in trainer.optimizer.param_groups)


@case("IterableDataset with tb_update_steps='auto'", "warning", "no length", "max_steps=6")
def _():
    from datasets import IterableDataset

    from tb_hf.testing import ARCHS, dataset_for

    model = ARCHS["bert"][0]()
    rows = dataset_for(model, n=64).to_list()
    trainer = _train(
        model, _tmp(), IterableDataset.from_generator(lambda: iter(rows)), max_steps=6, tb_update_steps="auto"
    )
    assert trainer.tempbalance.steps_per_epoch == 6 and trainer.tempbalance.schedule.rule == 1


@case("LoRA delta view (rank-r ΔW)", "correct")
def _():
    import peft
    import torch

    from tb_hf import TempBalanceArguments, partition_model
    from tb_hf.engine import SpectralEngine
    from tb_hf.testing import ARCHS

    model = peft.get_peft_model(ARCHS["llama"][0](), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    tb = TempBalanceArguments(tb_lora_view="delta", tb_min_evals=8)  # the tiny model's matrices are 16-32 wide
    result = SpectralEngine(model, partition_model(model), tb).run(model)
    assert {s.status for s in result.spectra.values()} == {"rank_deficient"}
    assert all(s.name.endswith(".ΔW") for s in result.spectra.values())


@case("quantized (packed uint8) base weight", "warning", "quantized", "cannot dequantize")
def _():
    import torch
    import torch.nn as nn

    from tb_hf import TempBalanceArguments, partition_model
    from tb_hf.engine import SpectralEngine
    from tb_hf.testing import ARCHS

    model = ARCHS["llama"][0]()
    q = model.model.layers[0].self_attn.q_proj
    q.weight = nn.Parameter(torch.randint(0, 255, q.weight.shape, dtype=torch.uint8), requires_grad=False)
    result = SpectralEngine(model, partition_model(model), TempBalanceArguments(tb_min_evals=8)).run(model)
    assert "quantized" in {s.status for s in result.spectra.values()}


@case("FARMS window larger than a matrix", "warning", "analysed whole", "tb_farms_window=64")
def _():
    import torch

    from tb_hf import analyze

    res = analyze({"small": torch.randn(40, 48)}, estimator="farms", farms_window=64, min_evals=10)
    assert res["small"].estimator == "plain"


@case("Mamba: conv1d and A_log are not matrices", "correct")
def _():
    import transformers as tf

    from tb_hf import partition_model

    m = tf.MambaForCausalLM(tf.MambaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, state_size=8))
    names = [n for u in partition_model(m).units for n in u.matrices]
    assert names and not any("conv1d" in n or "A_log" in n for n in names)


@case("RWKV: time_mix is not a matrix", "correct")
def _():
    import transformers as tf

    from tb_hf import partition_model

    m = tf.RwkvForCausalLM(
        tf.RwkvConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32)
    )
    names = [n for u in partition_model(m).units for n in u.matrices]
    assert names and not any("time_" in n for n in names)


@case("Jamba hybrid stack", "correct")
def _():
    import transformers as tf

    from tb_hf import find_blocks

    config = tf.JambaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=4,
        num_key_value_heads=2, num_experts=2, expert_layer_period=2, expert_layer_offset=1, attn_layer_period=2,
        attn_layer_offset=1, mamba_d_state=8, mamba_expand=2, mamba_dt_rank=4,
    )  # fmt: skip
    assert len(find_blocks(tf.JambaForCausalLM(config))) == 4


@case("ALBERT (one shared layer group)", "warning", "single transformer block", "tb_unit='matrix'")
def _():
    import transformers as tf

    from tb_hf import find_blocks

    model = tf.AlbertModel(
        tf.AlbertConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_attention_heads=4, embedding_size=16)
    )
    assert [p for p, _ in find_blocks(model)] == ["encoder.albert_layer_groups.0"]


@case("one-layer BERT", "warning", "single transformer block")
def _():
    import transformers as tf

    from tb_hf import find_blocks

    model = tf.BertModel(
        tf.BertConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=1)
    )
    assert len(find_blocks(model)) == 1


@case("optimizer built for other units than the callback's", "error", "built with unit='matrix'", "tb_unit='block'")
def _():
    import torch
    from transformers import Trainer, TrainingArguments

    from tb_hf import TempBalanceCallback, create_tempbalance_optimizer
    from tb_hf.testing import ARCHS, dataset_for

    model = ARCHS["bert"][0]()
    args = TrainingArguments(output_dir=str(_tmp()), max_steps=2, report_to="none", use_cpu=True, disable_tqdm=True)
    opt = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=1e-3, unit="matrix")
    Trainer(
        model=model, args=args, train_dataset=dataset_for(model), optimizers=(opt, None),
        callbacks=[TempBalanceCallback()],
    ).train()  # fmt: skip


@case("plain Trainer + callback without TempBalance's optimizer", "error", "create_tempbalance_optimizer")
def _():
    from transformers import Trainer, TrainingArguments

    from tb_hf import TempBalanceCallback
    from tb_hf.testing import ARCHS, dataset_for

    model = ARCHS["bert"][0]()
    args = TrainingArguments(output_dir=str(_tmp()), max_steps=2, report_to="none", use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=dataset_for(model), callbacks=[TempBalanceCallback()]).train()


# --------------------------------------------------------------------------------------------------
# Data


def _load(train: str, dev: str | None = None, **kw):
    from recipes.data import load_task

    return load_task(None, train_file=train, validation_file=dev or train, text_columns=["text"], **kw)


@case("numeric labels 1..5", "correct")
def _():
    path = _csv(_tmp() / "y.csv", "text,label\na,1\nb,2\nc,3\nd,4\ne,5\n")
    data, task = _load(path)
    assert sorted(set(data["train"]["label"])) == [0, 1, 2, 3, 4] and task.label_names == ("1", "2", "3", "4", "5")


@case("numeric labels 2 and 10 (numeric order)", "correct")
def _():
    path = _csv(_tmp() / "y.csv", "text,label\na,10\nb,2\nc,10\n")
    data, task = _load(path)
    assert task.label_names == ("2", "10") and data["train"]["label"] == [1, 0, 1]


@case("empty label cell", "error", "y.csv", "empty label", "row")
def _():
    _load(_csv(_tmp() / "y.csv", "text,label\na,pos\nb,\nc,neg\n"))


@case("labels differing in case (Pos / pos)", "error", "pos", "labels")
def _():
    _load(_csv(_tmp() / "y.csv", "text,label\na,pos\nb,Pos\nc,neg\n"))


@case("TSV text starting with a quote", "correct")
def _():
    path = _csv(_tmp() / "y.tsv", 'text\tlabel\n"quoted start of a text\tpos\nplain\tneg\n')
    data, _ = _load(path)
    assert data["train"]["text"][0].startswith('"quoted')


@case("continuous float labels without is_regression", "error", "y.csv", "--is_regression")
def _():
    values = [0.05, 0.087, 0.1, 0.15, 0.2, 0.33, 0.4, 0.5, 0.61, 0.75, 0.9, 0.95]
    _load(_csv(_tmp() / "y.csv", "text,label\n" + "".join(f"t{i},{v}\n" for i, v in enumerate(values))))


@case("JSONL line without the text key", "error", "y.jsonl", "line 2", "'text'")
def _():
    _load(_csv(_tmp() / "y.jsonl", '{"text": "a", "label": 1}\n{"review": "b", "label": 0}\n'))


for _suffix, _text in [
    ("csv", "text,label\nfine,pos\ncafé,neg\n"),
    ("jsonl", '{"text": "fine", "label": 1}\n{"text": "café", "label": 0}\n'),
]:

    def _fn(suffix=_suffix, text=_text):
        path = _tmp() / f"y.{suffix}"
        path.write_bytes(text.encode("latin-1"))
        _load(str(path))

    case(f"latin-1 encoded {_suffix.upper()}", "error", f"y.{_suffix}", "utf-8", "iconv -f latin1")(_fn)


@case("missing text column", "error", "review")
def _():
    from recipes.data import load_task

    path = _csv(_tmp() / "y.csv", "sentence,label\na,pos\nb,neg\n")
    load_task(None, train_file=path, validation_file=path, text_columns=["review"])


@case("unknown GLUE task", "error", "sst3")
def _():
    from recipes.data import load_task

    load_task("sst3", glue_dir=str(GLUE))


@case("impossible fraction", "error", "fraction")
def _():
    from recipes.data import select_train_indices

    select_train_indices([0, 1] * 10, fraction=2.0)


@case("label cell NaN after a blank line (issue 28)", "error", "y.csv", "missing label", "'nan'", "line 4", "fill")
def _():
    _load(_csv(_tmp() / "y.csv", "text,label\na,pos\n\nb,NaN\nc,neg\n"))


@case("header text,text,label (issue 28)", "error", "y.csv", "'text' twice", "rename or delete one")
def _():
    _load(_csv(_tmp() / "y.csv", "text,text,label\na,b,pos\nc,d,neg\n"))


@case("validation file with only a header (issue 28)", "error", "dev.csv", "no examples", "--validation_file")
def _():
    _load(_csv(_tmp() / "y.csv", "text,label\na,pos\nb,neg\n"), _csv(_tmp() / "dev.csv", "text,label\n"))


@case("training subset of one class (issue 28)", "warning", "only class 'pos'", "cannot learn")
def _():
    from recipes.glue import run_glue

    path = _csv(_tmp() / "y.csv", "text,label\n" + "".join(f"t{i},{'pos' if i < 10 else 'neg'}\n" for i in range(20)))
    argv = ["--train_file", path, "--validation_file", path, "--text_columns", "text", "--max_train_samples", "4"]
    argv += ["--subset_strategy", "first", "--output_dir", str(_tmp())]
    data = run_glue.prepare_data(*run_glue.parse_args(argv)[1:])
    assert data.indices == [0, 1, 2, 3]  # the subset asked for, with the warning


# --------------------------------------------------------------------------------------------------
# The recipe and the sweep


def _recipe(*argv: str) -> None:
    from recipes.glue import run_glue

    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            run_glue.cli(list(argv))
        except SystemExit as exit_:
            raise SystemExit(f"exit {exit_.code}: {err.getvalue().strip()}") from None


for _name, _argv, _words in [
    ("recipe --train_fraction 2", ["--task_name", "sst2", "--train_fraction", "2"], ["train_fraction"]),
    ("recipe unknown task", ["--task_name", "sst3"], ["sst3"]),
    ("recipe unknown flag", ["--task_name", "sst2", "--learning_rte", "1e-4"], ["unrecognized", "learning_rte"]),
    ("recipe missing model folder", ["--task_name", "sst2", "--model_name_or_path", "./nowhere"], ["nowhere"]),
    (
        "recipe abbreviated flag --learning_rat",
        ["--task_name", "sst2", "--learning_rat", "1e-3"],
        ["unrecognized", "did you mean --learning_rate?"],
    ),
    (
        "recipe --llrd_decay with --method tempbalance",
        ["--task_name", "sst2", "--method", "tempbalance", "--llrd_decay", "0.8"],
        ["llrd_decay", "--tb_llrd_decay"],
    ),
]:

    def _fn(argv=_argv):
        base = ["--output_dir", str(_tmp()), "--glue_dir", str(GLUE), "--model_name_or_path", "minilm"]
        _recipe(*base, *argv)

    case(_name, "error", "exit 2", *_words)(_fn)


@case("recipe --method ft with a TempBalance option", "warning", "--tb_mapping not used", "--method tempbalance")
def _():
    from recipes.glue import run_glue

    margs, _, targs = run_glue.parse_args(["--output_dir", str(_tmp()), "--method", "ft", "--tb_mapping", "sigmoid"])
    assert margs.method == "ft"  # it trains plain FT, as asked; the option is named as not used


@case("recipe YAML key learning_rat: 1e-3", "error", "exit 2", "learning_rat", "run.yaml", "--learning_rate?")
def _():
    config = _tmp() / "run.yaml"
    config.write_text(f"task_name: sst2\nglue_dir: {GLUE}\nlearning_rat: 1e-3\noutput_dir: {_tmp()}\n")
    _recipe(str(config))


# --------------------------------------------------------------------------------------------------
# tb-hf analyze


_SAVED: dict[str, Path] = {}


def _saved_model() -> Path:
    """A tiny BERT saved with save_pretrained, once per battery run."""
    if "bert" not in _SAVED:
        import torch
        import transformers as tf

        torch.manual_seed(0)
        path = _tmp() / "tiny-bert"
        tf.BertModel(
            tf.BertConfig(
                vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
            )
        ).save_pretrained(path)
        _SAVED["bert"] = path
    return _SAVED["bert"]


def _tbhf(*argv: str) -> None:
    from tb_hf import cli

    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            cli.main(list(argv))
        except SystemExit as exit_:
            if isinstance(exit_.code, int):
                raise SystemExit(f"exit {exit_.code}: {err.getvalue().strip()}") from None
            raise


@case("tb-hf analyze: damaged model.safetensors", "error", "model.safetensors", "damaged")
def _():
    import shutil

    broken = _tmp() / "broken"
    shutil.copytree(_saved_model(), broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _tbhf("analyze", str(broken))


@case("tb-hf analyze: --out is an existing file", "error", "--out", "is a file")
def _():
    out = _tmp() / "report.txt"
    out.write_text("x")
    _tbhf("analyze", str(_saved_model()), "--out", str(out))


@case("tb-hf analyze: --device cuda without CUDA (simulated)", "error", "--device cuda", "not available")
def _():
    import torch

    available = torch.cuda.is_available
    torch.cuda.is_available = lambda: False  # what a CPU-only machine reports
    try:
        _tbhf("analyze", str(_saved_model()), "--device", "cuda")
    finally:
        torch.cuda.is_available = available


@case("tb-hf analyze: --tb_lora_view delta without --adapter", "error", "delta", "--adapter")
def _():
    _tbhf("analyze", str(_saved_model()), "--tb_lora_view", "delta")


@case("tb-hf analyze: abbreviated flag --tb_mapp", "error", "exit 2", "did you mean --tb_mapping?")
def _():
    _tbhf("analyze", str(_saved_model()), "--tb_mapp", "sigmoid")


def _sweep(config: str, *argv: str) -> None:
    from recipes import sweep

    path = _tmp() / "sweep.yaml"
    path.write_text(config)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = sweep.main([str(path), *argv])
        except SystemExit as exit_:
            raise SystemExit(f"exit {exit_.code}: {err.getvalue().strip()}") from None
    if code:
        raise SystemExit(f"exit {code}: {err.getvalue().strip()}")


_SWEEP = """output_dir: {out}
tasks:
  rotten_tomatoes:
    fractions: [0.01]
seeds: [1]
methods: {methods}
args:
  model_name_or_path: minilm
"""

for _name, _methods, _argv, _words in [
    ("sweep unknown method", "[ftt]", [], ["ftt"]),
    ("sweep --shard x", "[ft]", ["--shard", "x"], ["--shard", "k/n"]),
    ("sweep --shard 0/2", "[ft]", ["--shard", "0/2"], ["--shard", "k/n"]),
]:

    def _fn(methods=_methods, argv=_argv):
        _sweep(_SWEEP.format(out=_tmp(), methods=methods), "--dry-run", *argv)

    case(_name, "error", "exit 2", *_words)(_fn)


for _name, _config_text, _argv, _words in [
    ("sweep: seeds [1, 1]", _SWEEP.replace("seeds: [1]", "seeds: [1, 1]"), [], ["seeds", "more than once"]),
    ("sweep: abbreviated flag --method", _SWEEP, ["--method", "ft"], ["did you mean --methods?"]),
]:

    def _fn(text=_config_text, argv=_argv):
        _sweep(text.format(out=_tmp(), methods="[ft]"), "--dry-run", *argv)

    case(_name, "error", "exit 2", *_words)(_fn)


@case("sweep: output_dir is a file", "error", "exit 2", "is a file, not a folder")
def _():
    out = _tmp() / "a_file"
    out.write_text("")
    _sweep(_SWEEP.format(out=out, methods="[ft]"))


@case("sweep: a finished run whose learning_rate changed in the config", "error", "exit 2", "other settings",
      "learning_rate 0.0001 -> 0.0002", "--redo-changed")  # fmt: skip
def _():
    import json

    from recipes import sweep

    out = _tmp()
    first = _SWEEP.format(out=out, methods="[ft]") + "  learning_rate: 1.0e-4\n"
    path = _tmp() / "first.yaml"
    path.write_text(first)
    run = sweep.expand_grid(sweep.load_config(path))[0]
    run.out.mkdir(parents=True)
    record = {"task": run.task, "size_key": run.size_key, "size": run.size, "method": run.method, "lora": False,
              "seed": run.seed, "key": run.key, "args": run.args,
              "results": {"main_metric": "accuracy", "best_eval_accuracy": 0.6, "eval_accuracy": 0.6}}  # fmt: skip
    (run.out / "result.json").write_text(json.dumps(record))  # as if it had run
    _sweep(first.replace("1.0e-4", "2.0e-4"))


def _custom_sweep(*, rows: str | None = None, **task) -> tuple[str, Path]:
    """(config text, its folder) of a one-run sweep over a custom train.csv (20 rows, classes alternating)."""
    import yaml

    folder = _tmp()
    rows = rows or "text,label\n" + "".join(f"t{i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))
    (folder / "train.csv").write_text(rows)
    entry = {"train_file": str(folder / "train.csv"), "validation_file": str(folder / "train.csv"),
             "text_columns": ["text"], "max_train_samples": [4]} | task  # fmt: skip
    config = {"output_dir": str(folder / "out"), "tasks": {"reviews": entry}, "seeds": [1], "methods": ["ft"]}
    return yaml.safe_dump(config), folder


def _as_if_run(config_text: str, folder: Path, **drop) -> object:
    """Write result.json for the config's run as the sweep writes it (``drop``: keys left out, as older sweeps)."""
    import json

    from recipes import sweep

    (folder / "sweep.yaml").write_text(config_text)
    run = sweep.expand_grid(sweep.load_config(folder / "sweep.yaml"))[0]
    run.out.mkdir(parents=True)
    record = {"task": run.task, "size_key": run.size_key, "size": run.size, "method": run.method, "lora": False,
              "seed": run.seed, "key": run.key, "args": run.args, "data": sweep.fingerprints(run.args),
              "results": {"main_metric": "accuracy", "best_eval_accuracy": 0.6, "eval_accuracy": 0.6}}  # fmt: skip
    (run.out / "result.json").write_text(json.dumps({k: v for k, v in record.items() if k not in drop}))
    return run


@case("sweep: train.csv edited in place after its run (issue 28)", "error", "exit 2", "train.csv",
      "edited since the run", "--redo-changed")  # fmt: skip
def _():
    text, folder = _custom_sweep()
    _as_if_run(text, folder)
    with open(folder / "train.csv", "a") as f:
        f.write("t20,pos\n")
    _sweep(text)


@case("sweep: result.json that stores no settings (issue 28)", "error", "exit 2", "stores no settings",
      "--redo-changed")  # fmt: skip
def _():
    text, folder = _custom_sweep()
    _as_if_run(text, folder, args=True, key=True, data=True)
    _sweep(text)


@case("sweep: results recorded before data fingerprints (issue 28)", "warning", "1 finished run(s) could not be "
      "checked", "train.csv (1 runs)")  # fmt: skip
def _():
    from recipes import sweep

    text, folder = _custom_sweep()
    run = _as_if_run(text, folder, data=True)
    _sweep(text, "--dry-run")
    assert sweep.status(run) == "done"  # reused, with the warning


@case("sweep: another config's sweep holds a run (issue 28)", "error", "exit 2", "other settings",
      "0123456789abcdef", "own output_dir")  # fmt: skip
def _():
    import socket

    from recipes import sweep

    text, folder = _custom_sweep()
    (folder / "sweep.yaml").write_text(text)
    run = sweep.expand_grid(sweep.load_config(folder / "sweep.yaml"))[0]
    run.out.mkdir(parents=True)
    (run.out / "running.lock").write_text(f"{socket.gethostname()} {os.getppid()} 0123456789abcdef")  # alive
    _sweep(text)


@case("sweep --aggregate-only with a half-written result.json (issue 28)", "warning", "skipped", "result.json",
      "not a complete result record")  # fmt: skip
def _():
    text, folder = _custom_sweep()
    run = _as_if_run(text, folder)
    damaged = run.out / "result.json"
    damaged.write_text(damaged.read_text()[:50])
    _sweep(text, "--aggregate-only")


for _name, _task, _words in [
    ("unknown task", {"sst3": {"fractions": [0.1]}}, ["unknown task 'sst3'"]),
    ("missing train file", {"train_file": "nope.csv"}, ["nope.csv", "does not exist"]),
    ("missing column", {"text_columns": ["review"]}, ["'review'", "--text_columns"]),
    ("shots_per_class above a class's size", {"shots_per_class": [30], "max_train_samples": None},
     ["--shots_per_class 30", "at most 10"]),
    ("a fraction that keeps no example", {"fractions": [0.01], "max_train_samples": None}, ["keeps none"]),
]:  # fmt: skip

    def _fn(task=_task):
        import yaml

        text, _ = _custom_sweep()
        config = yaml.safe_load(text)
        if "sst3" in task:
            config["tasks"] = task
        else:
            entry = config["tasks"]["reviews"] | task
            config["tasks"]["reviews"] = {k: v for k, v in entry.items() if v is not None}
        _sweep(yaml.safe_dump(config))  # stops before the first run (with --dry-run: a warning)

    case(f"sweep: {_name}, before the first run (issue 28)", "error", "exit 2", "before the first run", *_words)(_fn)


# --------------------------------------------------------------------------------------------------
# Resuming


def _resume_pair(tmp: Path, first: dict, then: dict, *, save_steps: int = 4):
    """Train 8 steps saving at ``save_steps``, then resume from that checkpoint with other options: the second
    trainer, and the history of the resumed run."""
    import torch

    from tb_hf.history import read_history
    from tb_hf.testing import ARCHS

    torch.manual_seed(0)
    _train(ARCHS["bert"][0](), tmp / "a", max_steps=8, save_strategy="steps", save_steps=save_steps, **first)
    torch.manual_seed(0)
    trainer = _train(ARCHS["bert"][0](), tmp / "b", max_steps=8, resume=str(tmp / "a" / f"checkpoint-{save_steps}"),
                     **then)  # fmt: skip
    return trainer, read_history(tmp / "b", missing_ok=True)


@case("resume with another tb_mapping and tb_update_steps", "warning", "other tempbalance options", "tb_mapping")
def _():
    trainer, records = _resume_pair(_tmp(), {}, {"tb_mapping": "sigmoid", "tb_update_steps": "3"})
    assert [r["step"] for r in records] == [4, 6] and trainer.tempbalance.schedule.interval == 3, records
    assert max(records[0]["factor"].values()) != 1.5  # the sigmoid map's factors, not the linear map's


@case("resume with another tb_unit", "error", "tb_unit='block'", "(now 'matrix')")
def _():
    _resume_pair(_tmp(), {}, {"tb_unit": "matrix"})


@case("resume from a save_only_model checkpoint, tb_update_steps once", "warning",
      "without tempbalance's optimizer state")  # fmt: skip
def _():
    once = {"tb_update_steps": "once"}
    trainer, records = _resume_pair(_tmp(), {**once, "save_only_model": True}, once)
    assert [r["step"] for r in records] == [4], records  # one fresh pass, not one every step
    assert set(trainer.tempbalance.balancer.factors.values()) == {0.5, 1.5}


@case("resume 'auto' from a checkpoint before its decision (step 2)", "correct")
def _():
    auto = {"tb_update_steps": "auto", "tb_max_overhead": 0.2}
    trainer, records = _resume_pair(_tmp(), auto, auto, save_steps=2)
    tb = trainer.tempbalance
    assert tb.schedule.decided and tb.schedule.start_step == 2 and min(tb.schedule.step_times) == 3
    assert len(records) <= 8 // tb.schedule.interval, records  # passes at the decided interval, not every step


@case("resume a plain Trainer's checkpoint with TempBalanceTrainer", "error",
      "without tempbalance's param groups", "from_pretrained")  # fmt: skip
def _():
    import torch
    from transformers import Trainer

    from tb_hf.testing import ARCHS, dataset_for, tiny_training_args

    tmp = _tmp()
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    args = tiny_training_args(tmp / "a", max_steps=2, save_strategy="steps", save_steps=2)
    Trainer(model=model, args=args, train_dataset=dataset_for(model, n=16)).train()
    _train(ARCHS["bert"][0](), tmp / "b", max_steps=4, resume=str(tmp / "a" / "checkpoint-2"))


@case("history.jsonl with a torn last line (kill -9 mid-write)", "warning", "cut short", "dropped")
def _():
    from tb_hf.history import read_history

    path = _tmp() / "history.jsonl"
    path.write_text('{"step": 0, "alpha": {}, "factor": {}}\n{"step": 4, "alph')
    assert [r["step"] for r in read_history(path)] == [0]


@case("resume_from_checkpoint=True with the newest checkpoint cut short", "warning", "not written to the end")
def _():
    import torch

    from tb_hf.testing import ARCHS

    tmp = _tmp()
    torch.manual_seed(0)
    _train(ARCHS["bert"][0](), tmp, max_steps=8, save_strategy="steps", save_steps=4)
    (tmp / "checkpoint-8" / "trainer_state.json").unlink()  # a crash while saving at step 8
    torch.manual_seed(0)
    trainer = _train(ARCHS["bert"][0](), tmp, max_steps=8, save_strategy="steps", save_steps=4, resume=True)
    assert trainer.state.global_step == 8 and (tmp / "checkpoint-8" / "trainer_state.json").is_file()  # saved again


# --------------------------------------------------------------------------------------------------
# Running the battery


# --------------------------------------------------------------------------------------------------
# Presets, LLRD, numbers and analyze: what trains is what was asked (the reliability issue's outside probe)


def _step0_scales(model=None, trainer_cls=None, **kw) -> dict[str, float]:
    """Each unit's learning rate ÷ learning_rate at the first step of a real trainer (constant schedule)."""
    from transformers import TrainerCallback

    from tb_hf import TempBalanceTrainer
    from tb_hf.testing import ARCHS, dataset_for, tiny_training_args

    seen = {}

    class First(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **_):
            seen.setdefault("groups", [(g["tb_unit"], g["lr"]) for g in optimizer.param_groups])

    model = model or ARCHS["bert"][0]()
    trainer_kw = {k: kw.pop(k) for k in ("llrd_decay", "optimizers") if k in kw}
    args = tiny_training_args(_tmp(), learning_rate=1e-2, max_steps=1, lr_scheduler_type="constant", **kw)
    trainer = (trainer_cls or TempBalanceTrainer)(model=model, args=args, train_dataset=dataset_for(model),
                                                  callbacks=[First()], **trainer_kw)  # fmt: skip
    trainer.train()
    return {unit: lr / 1e-2 for unit, lr in seen["groups"] if unit is not None}


_NO_PASS = dict(tb_update_steps=None, tb_min_evals=None)

for _name, _options, _attr, _want in [
    ("tb_preset='llrd-alpha' + tb_lr_min=0.5 (the default value)", dict(tb_preset="llrd-alpha", tb_lr_min=0.5),
     "lr_min", 0.5),
    ("tb_preset='se' + tb_lr_max=1.5 (the default value)", dict(tb_preset="se", tb_lr_max=1.5), "lr_max", 1.5),
    ("tb_preset='alphadecay' + tb_wd_min_ratio=0.5", dict(tb_preset="alphadecay", tb_wd_min_ratio=0.5,
                                                          weight_decay=0.1), "wd_min_ratio", 0.5),
    ("tb_preset='llrd-alpha' + tb_llrd_decay=1.0", dict(tb_preset="llrd-alpha", tb_llrd_decay=1.0), "llrd_decay", 1.0),
]:  # fmt: skip

    def _fn(options=_options, attr=_attr, want=_want):
        config = _config(**options)
        assert getattr(config.tb_options.balance, attr) == want, config.tb_options.balance
        assert config.to_dict()[f"tb_{attr}"] == want

    case(f"preset: {_name}", "correct")(_fn)


@case("preset: dataclasses.replace(llrd-alpha config, tb_preset='se')", "correct")
def _():
    import dataclasses

    config = dataclasses.replace(_config(tb_preset="llrd-alpha"), tb_preset="se")
    assert config.tb_options.balance == _config(tb_preset="se").tb_options.balance, config.tb_options.balance


@case("preset: llrd-alpha + tb_llrd_decay=1.0 trains without a depth profile", "correct")
def _():
    scales = _step0_scales(tb_preset="llrd-alpha", tb_llrd_decay=1.0, tb_update_steps="once")
    assert min(scales.values()) == 0.65 and max(scales.values()) == 1.35, scales  # the α map alone


@case("LLRD: resumed with another llrd_decay", "error", "tb_llrd_decay=0.9 (now 0.5)", "resume with")
def _():
    from tb_hf import LLRDTrainer
    from tb_hf.testing import ARCHS, dataset_for, tiny_training_args

    out = _tmp()
    model = ARCHS["bert"][0]()
    args = tiny_training_args(out, save_strategy="steps", save_steps=2, **_NO_PASS)
    LLRDTrainer(model=model, args=args, train_dataset=dataset_for(model), llrd_decay=0.9).train()
    again = LLRDTrainer(model=ARCHS["bert"][0](), args=args, train_dataset=dataset_for(model), llrd_decay=0.5)
    again.train(resume_from_checkpoint=str(out / "checkpoint-2"))


@case("LLRD: a head registered before the blocks", "correct")
def _():
    import torch

    class HeadFirst(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = torch.nn.Linear(16, 2)
            self.layers = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(16, 16)) for _ in range(3))
            self.embed = torch.nn.Embedding(50, 16)

    from tb_hf.baselines import llrd_param_groups

    model = HeadFirst()
    groups = llrd_param_groups(model, learning_rate=1e-3, decay=0.5)
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr[id(model.classifier.weight)] == 1e-3 and lr[id(model.embed.weight)] == 1e-3 * 0.5**3, lr


@case("LLRD: LLRDTrainer(llrd_decay=0.9) with an optimizer built at 0.5", "error", "llrd_decay=0.5",
      "tb_llrd_decay=0.9")  # fmt: skip
def _():
    import torch

    from tb_hf import LLRDTrainer
    from tb_hf.baselines import llrd_param_groups
    from tb_hf.testing import ARCHS, tiny_training_args

    model = ARCHS["bert"][0]()
    optimizer = torch.optim.AdamW(llrd_param_groups(model, learning_rate=1e-3, decay=0.5))
    LLRDTrainer(model=model, args=tiny_training_args(_tmp(), **_NO_PASS), optimizers=(optimizer, None),
                llrd_decay=0.9)  # fmt: skip


@case("LLRD: LLRDTrainer(args=TempBalanceConfig(tb_preset='llrd-alpha'))", "error", "tb_preset='llrd'",
      "tb_preset='llrd-alpha'")  # fmt: skip
def _():
    from tb_hf import LLRDTrainer
    from tb_hf.testing import ARCHS

    LLRDTrainer(model=ARCHS["bert"][0](), args=_config(tb_preset="llrd-alpha"))


@case("LLRD: recipe --method llrd --tb_llrd_decay 0.8", "error", "--llrd_decay", "--tb_llrd_decay 0.8")
def _():
    _recipe("--task_name", "sst2", "--glue_dir", str(GLUE), "--method", "llrd", "--tb_llrd_decay", "0.8",
            "--output_dir", str(_tmp()))  # fmt: skip


@case("LLRD: sweep whose shared args carry tb_preset into llrd", "error", "--tb_preset llrd-alpha", "--llrd_decay")
def _():
    out = _tmp()
    _sweep(_SWEEP.format(out=out, methods="[ft, llrd]") + "  tb_preset: llrd-alpha\n")
    assert not (out / "runs").exists()


for _name, _kind in [("np.float32 tb_llrd_decay", "float32"), ("np.float64 tb_lr_min", "float64")]:

    def _fn(kind=_kind):
        import numpy as np

        from tb_hf.testing import ARCHS

        out = _tmp()
        options = {"tb_llrd_decay": np.float32(0.8)} if kind == "float32" else {"tb_lr_min": np.float64(0.6)}
        _train(ARCHS["bert"][0](), out, save_strategy="steps", save_steps=2, **options)
        _train(ARCHS["bert"][0](), out, resume=str(out / "checkpoint-2"), **options)

    case(f"numbers: {_name}, checkpoint and resume", "correct")(_fn)


for _preset in ("llrd-alpha", "alphadecay", "llrd"):

    def _fn(preset=_preset):
        import copy

        from tb_hf import TempBalanceArguments
        from tb_hf.analysis import analyze_model
        from tb_hf.testing import ARCHS

        model = ARCHS["bert"][0]()
        spectral = {} if preset == "llrd" else {"tb_min_evals": 8, "tb_update_steps": "once"}
        analysis = analyze_model(copy.deepcopy(model), TempBalanceArguments(tb_preset=preset, **spectral))
        trained = _step0_scales(model, tb_preset=preset, weight_decay=0.1, **{**_NO_PASS, **spectral})
        assert analysis.lr_scales == __import__("pytest").approx(trained), (analysis.lr_scales, trained)
        if preset == "alphadecay":
            assert sorted(set(analysis.wd_factors.values())) == [0.75, 1.25], analysis.wd_factors

    case(f"analyze: tb_preset={_preset!r} shows what training does", "correct")(_fn)


# --------------------------------------------------------------------------------------------------
# Profiles, their search and SetFit


@case("profile: tb_head_lr_ratio = 0", "error", "tb_head_lr_ratio", "(0, 100]")
def _():
    _config(tb_head_lr_ratio=0.0)


@case("profile: search space of an unknown preset", "error", "preset must be one of", "'llrd'")
def _():
    from tb_hf.tuning import search_space

    search_space("llrd+alpha")


@case("profile: folds above a class's size", "error", "folds=5", "class 1", "(3)")
def _():
    from tb_hf.tuning import tuning_splits

    tuning_splits([0] * 10 + [1] * 3, folds=5)


@case("profile: a search space naming an option the trainer lacks", "error", "llrd_decay", "does not have")
def _():
    from tb_hf import TempBalanceTrainer
    from tb_hf.testing import ARCHS, dataset_for

    model = ARCHS["bert"][0]()
    args = _config(max_steps=2, report_to="none", use_cpu=True)
    trainer = TempBalanceTrainer(model_init=lambda: ARCHS["bert"][0](), args=args, train_dataset=dataset_for(model),
                                 eval_dataset=dataset_for(model, n=8))  # fmt: skip
    trainer.hyperparameter_search(hp_space=lambda trial: {"llrd_decay": 0.8}, backend="optuna", n_trials=1)


@case("profile: recipe --search_profile with --method llrd", "error", "--search_profile", "--method tempbalance")
def _():
    _recipe("--task_name", "sst2", "--glue_dir", str(GLUE), "--method", "llrd", "--search_profile", "llrd",
            "--output_dir", str(_tmp()))  # fmt: skip


@case("setfit: recipe on a regression task", "error", "--method setfit classifies", "stsb")
def _():
    _recipe("--task_name", "stsb", "--glue_dir", str(GLUE), "--method", "setfit", "--max_train_samples", "8",
            "--output_dir", str(_tmp()))  # fmt: skip


@case("setfit: a misspelled SetFit option", "error", "unrecognized", "--setfit_num_iteration")
def _():
    _recipe("--task_name", "sst2", "--glue_dir", str(GLUE), "--method", "setfit", "--setfit_num_iteration", "5",
            "--output_dir", str(_tmp()))  # fmt: skip


@case("setfit: a profile on a body without transformer blocks", "error", "no transformer blocks")
def _():
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding
    from setfit import SetFitModel, TrainingArguments
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from tb_hf import TempBalanceArguments
    from tb_hf.setfit import TempBalanceSetFitTrainer

    body = SentenceTransformer(modules=[StaticEmbedding(Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
                                                        embedding_dim=8)])  # fmt: skip
    train = Dataset.from_dict({"text": ["a", "b"] * 4, "label": [0, 1] * 4})
    TempBalanceSetFitTrainer(model=SetFitModel(model_body=body, model_head=None),
                             args=TrainingArguments(output_dir=str(_tmp()), report_to="none"), train_dataset=train,
                             tb_args=TempBalanceArguments(tb_preset="llrd"))  # fmt: skip


@case("profile: a search trial's decay with tb_args given", "correct")
def _():
    import optuna

    from tb_hf import TempBalanceArguments, TempBalanceTrainer
    from tb_hf.testing import ARCHS, dataset_for
    from tb_hf.tuning import hp_space

    seen = []

    class Seen(__import__("transformers").TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            seen.append(args.tb_options.balance.llrd_decay)

    model = ARCHS["bert"][0]()
    trainer = TempBalanceTrainer(
        model_init=lambda: ARCHS["bert"][0](),
        args=_config(max_steps=1, report_to="none"),
        train_dataset=dataset_for(model),
        eval_dataset=dataset_for(model, n=8),
        callbacks=[Seen()],
        tb_args=TempBalanceArguments(tb_preset="llrd", tb_llrd_decay=0.5),
    )
    space = hp_space("llrd")
    trainer.hyperparameter_search(
        hp_space=space,
        backend="optuna",
        n_trials=2,
        sampler=optuna.samplers.GridSampler({"llrd": list(space.choices)[:2]}),
    )
    assert sorted(seen) == [0.8, 0.85], seen  # the trials' decays, not tb_args' 0.5


@case("profile: recipe --search_folds above a class's size", "error", "--search_folds", "more than class")
def _():
    _recipe(
        "--task_name",
        "sst2",
        "--glue_dir",
        str(GLUE),
        "--search_profile",
        "llrd",
        "--shots_per_class",
        "3",
        "--search_folds",
        "4",
        "--output_dir",
        str(_tmp()),
    )


@case("setfit: recipe with --learning_rate", "error", "--learning_rate", "--setfit_body_learning_rate")
def _():
    _recipe(
        "--task_name",
        "sst2",
        "--glue_dir",
        str(GLUE),
        "--method",
        "setfit",
        "--learning_rate",
        "0.5",
        "--output_dir",
        str(_tmp()),
    )


@case("LLRD: MLP heads in a ModuleList beside the blocks", "correct")
def _():
    import torch

    from tb_hf.blocks import positions
    from tb_hf.testing import ARCHS

    model = ARCHS["bert"][0]()
    model.heads = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Tanh()) for _ in range(3))
    kinds = {positions(model)[f"heads.{i}.0.weight"].kind for i in range(3)}
    assert kinds == {"head"}, kinds


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def classify(expect: Expect, fn) -> tuple[str, str]:
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            fn()
    except (ValueError, TypeError, SystemExit) as err:
        message = str(err).strip()
        first = message.splitlines()[0][:140] if message else repr(err)
        if expect.kind != "error":
            return "unclear crash", f"stopped where it should have worked: {first}"
        missing = [w for w in expect.words if w not in message.lower()]
        return ("unclear crash", f"message lacks {missing}: {first}") if missing else ("clear error", first)
    except AssertionError as err:
        return "silently wrong", f"wrong result: {err!r}"
    except Exception as err:  # noqa: BLE001 - classified
        return "unclear crash", repr(err)[:150]
    finally:
        root.removeHandler(capture)
    text = " ".join(capture.messages)
    if expect.kind == "error":
        return "silently wrong", "went on where an error was expected"
    if expect.kind == "warning":
        missing = [w for w in expect.words if w not in text.lower()]
        return ("silently wrong", f"no warning saying {missing}") if missing else ("warning+correct", text[:140])
    return "correct", ""


def main() -> int:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    results = Counter()
    for name, expect, fn in CASES:
        outcome, detail = classify(expect, fn)
        results[outcome] += 1
        print(f"{outcome:16s} {name:50s} {detail}", flush=True)
    order = ["clear error", "warning+correct", "correct", "unclear crash", "silently wrong"]
    print(f"\n{len(CASES)} tried: " + ", ".join(f"{results[k]} {k}" for k in order))
    return 0 if results["unclear crash"] == results["silently wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
