"""Choosing a layer-wise profile on your own training data, without the evaluation set.

Three pieces (docs: "Choosing a profile for your data"):

* `search_space` / `hp_space`: the values of each preset's one free parameter that the project's study tried (LLRD's
  decay 0.8-0.95, the α range of ``llrd-alpha``, ...), as a list of option settings, or as the ``hp_space`` function
  `transformers.Trainer.hyperparameter_search` takes (optuna backend).
* `tuning_splits`: what to tune on: a held-out part of the training examples when there are enough, stratified k-fold
  cross-validation over them when there are not (32 examples leave no 200 to hold out).
* `search_profile`: every setting of the space (× learning rates), each trained on every split's training part and
  scored on its held-out part by the trainer's own ``evaluate``; the best mean wins. The evaluation set is never
  used.

Example:
    ```python
    from transformers import AutoModelForSequenceClassification
    from tb_hf import TempBalanceConfig, TempBalanceTrainer
    from tb_hf.tuning import search_profile

    def build_model():
        return AutoModelForSequenceClassification.from_pretrained("roberta-base", num_labels=2)

    args = TempBalanceConfig(output_dir="out", learning_rate=1e-4, num_train_epochs=2, tb_preset="llrd")
    found = search_profile(build_model, args, train, preset="llrd", folds=2)
    args = found.apply(args)            # tb_preset="llrd", tb_llrd_decay=<the best decay>
    trainer = TempBalanceTrainer(model=build_model(), args=args, train_dataset=train, eval_dataset=dev)
    ```
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers.utils import logging

from .arguments import TempBalanceArguments
from .options import PRESETS

logger = logging.get_logger(__name__)

__all__ = ["ProfileSearch", "ProfileSpace", "Split", "hp_space", "search_profile", "search_space", "tuning_splits"]


def _range(r: float) -> dict[str, float]:
    return {"tb_lr_min": round(1 - r, 6), "tb_lr_max": 1 + r}


#: Each preset's one free parameter at the values the project's study tuned it over (its tuning grids).
_SPACES: dict[str, list[dict[str, Any]]] = {
    "llrd": [{"tb_llrd_decay": d} for d in (0.8, 0.85, 0.9, 0.95)],
    "llrd-alpha": [_range(r) for r in (0.1, 0.2, 0.35, 0.5)],
    "tempbalance": [_range(r) for r in (0.25, 0.5)],
    "model-balancing": [{"tb_sigmoid_s_low": 2 * c, "tb_sigmoid_s_high": c} for c in (0.25, 0.5, 1.0, 2.0)],
    "se": [{"tb_lr_min": round(1 / (1 + r), 6), "tb_lr_max": 1 + r} for r in (0.25, 0.5, 1.0, 2.0)],
    "alphadecay": [{"tb_wd_min_ratio": round(1 - r, 6), "tb_wd_max_ratio": 1 + r} for r in (0.25, 0.5, 0.75, 0.95)],
}
assert set(_SPACES) == set(PRESETS), "every preset has its search space"


def search_space(preset: str, *, learning_rates: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """The settings to try for ``preset``: each a dict of options (``tb_preset`` included), one per value of the
    preset's free parameter in the study's grid, times each of ``learning_rates`` (as ``learning_rate``) if given.

    Raises:
        ValueError: For an unknown preset or an empty or non-positive list of learning rates.
    """
    if preset not in _SPACES:
        raise ValueError(f"preset must be one of {list(_SPACES)}, got {preset!r}")
    settings = [{"tb_preset": preset, **values} for values in _SPACES[preset]]
    if learning_rates is not None:
        rates = list(learning_rates)
        if not rates or not all(isinstance(r, int | float) and not isinstance(r, bool) and r > 0 for r in rates):
            raise ValueError(f"learning_rates must be a non-empty list of positive numbers, got {learning_rates!r}")
        settings = [{**s, "learning_rate": float(r)} for r in rates for s in settings]
    return settings


def _label(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items())


class ProfileSpace:
    """An ``hp_space`` for `transformers.Trainer.hyperparameter_search(backend="optuna", ...)` with a tb_hf trainer
    (`hp_space`): each trial picks one setting of `search_space` (a categorical choice named after the preset), so the
    trial's ``tb_*`` values (and ``learning_rate``) are exactly one of the study's settings."""

    def __init__(self, preset: str, learning_rates: Sequence[float] | None = None):
        self.preset = preset
        self.choices = {_label(s): s for s in search_space(preset, learning_rates=learning_rates)}

    def __call__(self, trial) -> dict[str, Any]:
        return dict(self.choices[trial.suggest_categorical(self.preset, list(self.choices))])

    def settings(self, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        """The options of a trial from its ``hyperparameters`` (a `transformers.trainer_utils.BestRun`'s): apply them
        with ``dataclasses.replace(args, **space.settings(best.hyperparameters))``."""
        label = hyperparameters.get(self.preset)
        if label not in self.choices:
            raise ValueError(f"{hyperparameters!r} holds no setting of this space (its choices: {list(self.choices)})")
        return dict(self.choices[label])


def hp_space(preset: str, *, learning_rates: Sequence[float] | None = None) -> ProfileSpace:
    """The `ProfileSpace` of ``preset`` (and ``learning_rates``) for ``hyperparameter_search(hp_space=...)``."""
    return ProfileSpace(preset, learning_rates)


@dataclass(frozen=True)
class Split:
    """Indices of the training examples to train on and of those to score on."""

    train: tuple[int, ...]
    eval: tuple[int, ...]


def tuning_splits(
    labels: Sequence,
    *,
    folds: int | None = None,
    holdout: int | None = None,
    seed: int = 0,
    is_regression: bool = False,
) -> list[Split]:
    """What to tune on, from the training examples only: ``holdout`` examples held out once (stratified by class), or
    ``folds``-fold cross-validation (each class's examples shuffled with ``seed`` and dealt round-robin, so every fold
    holds each class). With neither: a holdout of 200 when there are at least 1,000 examples, else 4 folds.

    Raises:
        ValueError: For both or an impossible split: more folds than a class has examples (each fold must hold
            every class), fewer than 2 folds, or a holdout that leaves nothing to train on.
    """
    labels = labels.tolist() if hasattr(labels, "tolist") else list(labels)  # a tensor or array of labels
    n = len(labels)
    if folds is not None and holdout is not None:
        raise ValueError("give folds or holdout, not both")
    if folds is None and holdout is None:
        holdout, folds = (200, None) if n >= 1000 else (None, 4)
    rng = random.Random(seed)
    by_class: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(None if is_regression else label, []).append(i)
    for members in by_class.values():
        rng.shuffle(members)
    if holdout is not None:
        if not (isinstance(holdout, int) and not isinstance(holdout, bool) and 1 <= holdout < n):
            raise ValueError(
                f"holdout must be a whole number in [1, {n - 1}] (examples held out of {n}), got {holdout}"
            )
        shares = {c: holdout * len(m) / n for c, m in by_class.items()}  # largest remainder: the class proportions
        take = {c: int(s) for c, s in shares.items()}
        for c in sorted(shares, key=lambda c: shares[c] - take[c], reverse=True)[: holdout - sum(take.values())]:
            take[c] += 1
        held = sorted(i for c, m in by_class.items() for i in m[: take[c]])
        rest = sorted(set(range(n)) - set(held))
        return [Split(tuple(rest), tuple(held))]
    if not (isinstance(folds, int) and not isinstance(folds, bool) and folds >= 2):
        raise ValueError(f"folds must be a whole number >= 2, got {folds!r}")
    smallest = min(by_class.items(), key=lambda item: len(item[1]))
    if not is_regression and folds > len(smallest[1]):
        fewest = len(smallest[1])
        use = f"Use folds <= {fewest}" if fewest >= 2 else "Cross-validation needs 2 examples of every class: add some"
        raise ValueError(
            f"folds={folds} is more than class {smallest[0]!r} has examples ({fewest}): every fold must hold every "
            f"class. {use}, or use a holdout (tuning_splits(labels, holdout=...)) with more training examples."
        )
    if folds > n:
        raise ValueError(f"folds={folds} is more than the {n} examples")
    assignment: list[list[int]] = [[] for _ in range(folds)]
    k = 0
    for members in by_class.values():
        for i in members:
            assignment[k % folds].append(i)
            k += 1
    return [
        Split(
            tuple(sorted(i for j, f in enumerate(assignment) if j != held for i in f)), tuple(sorted(assignment[held]))
        )
        for held in range(folds)
    ]


def _check_splits(splits: Sequence[Split], n: int) -> None:
    if not splits:
        raise ValueError("splits is empty: give at least one Split (tuning_splits(...) makes them)")
    for k, split in enumerate(splits):
        if not split.train or not split.eval:
            raise ValueError(f"split {k} has an empty {'training' if not split.train else 'evaluation'} part")
        bad = [i for i in (*split.train, *split.eval) if not (isinstance(i, int) and 0 <= i < n)]
        if bad:
            raise ValueError(f"split {k} holds indices outside the {n} training examples: {bad[:5]}")


@dataclass
class ProfileSearch:
    """The outcome of `search_profile`: the best setting, every setting's mean score and per-split scores."""

    best: dict[str, Any]
    metric: str
    direction: str
    scores: list[tuple[dict[str, Any], float, list[float]]] = field(default_factory=list)
    splits: list[Split] = field(default_factory=list)
    seconds: float = 0.0

    def apply(self, args):
        """``args`` (a `tb_hf.TempBalanceConfig`) with the best setting (a copy; the options checked again)."""
        return dataclasses.replace(args, **self.best)

    def to_dict(self) -> dict[str, Any]:
        return {
            "best": dict(self.best), "metric": self.metric, "direction": self.direction, "seconds": self.seconds,
            "splits": [{"train": len(s.train), "eval": len(s.eval)} for s in self.splits],
            "scores": [{"setting": s, "mean": m, "per_split": per} for s, m, per in self.scores],
        }  # fmt: skip


def search_profile(
    model_init: Callable[[], Any],
    args,
    train_dataset,
    *,
    preset: str,
    learning_rates: Sequence[float] | None = None,
    splits: Sequence[Split] | None = None,
    folds: int | None = None,
    holdout: int | None = None,
    label_column: str = "labels",
    is_regression: bool | None = None,
    metric: str = "eval_loss",
    direction: str | None = None,
    trainer_cls=None,
    **trainer_kwargs,
) -> ProfileSearch:
    """Every setting of ``search_space(preset, learning_rates=...)``, trained on each split's training part of
    ``train_dataset`` and scored by ``trainer.evaluate()[metric]`` on its held-out part; the setting with the best mean
    wins. Never touches an evaluation set: pass only training data.

    Args:
        model_init: Returns a fresh model (called once per setting and split).
        args: A `tb_hf.TempBalanceConfig`: everything but the searched options (they are set per setting); each
            training writes under ``<output_dir>/profile-search/`` and saves no checkpoint.
        train_dataset: The training examples (tokenized, with ``label_column``).
        preset: The preset whose parameter is searched (`search_space`).
        learning_rates: Learning rates to try each setting at (`search_space`).
        splits: Explicit splits; else `tuning_splits` of the labels with ``folds`` / ``holdout`` and ``args.seed``.
        is_regression: Whether the labels are numbers to regress on (no classes to stratify by); default: any label
            that is a float with a fractional part says so.
        metric: The key of ``trainer.evaluate()`` to compare (``eval_loss`` by default; with ``compute_metrics``
            e.g. ``eval_accuracy``).
        direction: ``"minimize"`` or ``"maximize"``; default: minimize a loss, maximize anything else.
        trainer_cls: Default `tb_hf.TempBalanceTrainer`.
        **trainer_kwargs: Passed to each trainer (``data_collator``, ``compute_metrics``, ``processing_class``).

    Raises:
        ValueError: Before any training, for args that are not a `TempBalanceConfig`, an unknown preset, a
            missing label column, impossible splits, or a metric the evaluation does not return (after the first
            training).
    """
    from .trainer import TempBalanceTrainer

    if not isinstance(args, TempBalanceArguments) or not hasattr(args, "output_dir"):
        raise ValueError("search_profile needs a tb_hf.TempBalanceConfig as args (it sets tb_* options per setting)")
    settings = search_space(preset, learning_rates=learning_rates)
    direction = direction or ("minimize" if "loss" in metric else "maximize")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    if splits is None:
        if label_column not in train_dataset.column_names:
            raise ValueError(
                f"train_dataset has no column {label_column!r} to split by (columns: {train_dataset.column_names}); "
                "pass label_column=..., or splits=tuning_splits(...)"
            )
        labels = train_dataset[label_column]
        labels = labels.tolist() if hasattr(labels, "tolist") else list(labels)
        if is_regression is None:
            is_regression = any(isinstance(x, float) and not x.is_integer() for x in labels)
        splits = tuning_splits(labels, folds=folds, holdout=holdout, seed=args.seed, is_regression=is_regression)
    _check_splits(splits, len(train_dataset))
    for setting in settings:  # every setting is checked before the first training
        dataclasses.replace(args, **setting)
    trainer_cls = trainer_cls or TempBalanceTrainer
    root = os.path.join(args.output_dir, "profile-search")
    begin = time.perf_counter()
    out = ProfileSearch(best={}, metric=metric, direction=direction, splits=list(splits))
    for s, setting in enumerate(settings):
        per_split = []
        for k, split in enumerate(splits):
            run_args = dataclasses.replace(
                args, **setting, output_dir=os.path.join(root, f"setting{s}", f"split{k}"), save_strategy="no",
                eval_strategy="no", load_best_model_at_end=False, report_to="none", push_to_hub=False,
            )  # fmt: skip
            parts = dict(
                train_dataset=train_dataset.select(split.train), eval_dataset=train_dataset.select(split.eval)
            )
            trainer = trainer_cls(model_init=model_init, args=run_args, **parts, **trainer_kwargs)
            trainer.train()
            result = trainer.evaluate()
            if metric not in result:
                raise ValueError(f"metric {metric!r} is not among the evaluation's results {sorted(result)}")
            per_split.append(float(result[metric]))
        mean = math.fsum(per_split) / len(per_split)
        out.scores.append((setting, mean, per_split))
        logger.info(f"profile search: {_label(setting)}: {metric} {mean:.4g} over {len(splits)} split(s)")
    finite = [(sc, m) for sc, m, _ in out.scores if math.isfinite(m)] or [(sc, m) for sc, m, _ in out.scores]
    pick = min if direction == "minimize" else max
    out.best = dict(pick(finite, key=lambda item: item[1])[0])  # the first of tied settings
    out.seconds = time.perf_counter() - begin
    return out
