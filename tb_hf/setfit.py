"""Layer-wise profiles inside SetFit: its sentence-transformer body trained with per-block learning rates.

SetFit (PyPI ``setfit``) fine-tunes a sentence-transformer body contrastively on pairs of the training examples
(a `transformers.Trainer` subclass of sentence-transformers does it), then fits a classification head; with a
differentiable head and ``end_to_end=True`` it trains body and head together in a loop of its own. It trains every
layer of the body at one learning rate: `TempBalanceSetFitTrainer` gives the body a layer-wise profile in both
phases (any ``tb_preset``: LLRD's depth profile, TempBalance's α factors, ...), with the same options, checks,
logs and ``history.jsonl`` as `tb_hf.TempBalanceTrainer`.

Example:
    ```python
    from datasets import Dataset
    from setfit import SetFitModel, TrainingArguments
    from tb_hf import TempBalanceArguments, builtin_model_path
    from tb_hf.setfit import TempBalanceSetFitTrainer

    train = Dataset.from_dict({"text": ["great fun", "a bore", "moving", "tedious"] * 2, "label": [1, 0, 1, 0] * 2})
    model = SetFitModel.from_pretrained(builtin_model_path("minilm"))  # or a Hub id
    trainer = TempBalanceSetFitTrainer(
        model=model, args=TrainingArguments(output_dir="out", num_iterations=2, report_to="none"),
        train_dataset=train, tb_args=TempBalanceArguments(tb_preset="llrd", tb_llrd_decay=0.9),
    )
    trainer.train()
    ```

In the contrastive phase the body's rates follow SetFit's warmup and linear decay times the profile; in the
end-to-end phase (constant rate, SetFit's StepLR halving) the body's groups start at the profile's rates (α from one
pass before the phase) and the head keeps SetFit's ``head_learning_rate``. Biases and norms of the body take no
weight decay there (the Trainer's rule), unlike SetFit's own optimizer, which decays every parameter.
"""

from __future__ import annotations

import contextlib

import torch
from setfit import Trainer as SetFitTrainer
from setfit.trainer import BCSentenceTransformersTrainer

from .arguments import TempBalanceArguments
from .balancer import Balancer
from .optim import tempbalance_param_groups
from .options import TempBalanceOptions
from .trainer import TempBalanceMixin

__all__ = ["TempBalanceSetFitTrainer"]


class _ProfiledBodyTrainer(TempBalanceMixin, BCSentenceTransformersTrainer):
    """SetFit's body trainer with tb_hf's param groups and callback (built by `TempBalanceSetFitTrainer`)."""


class TempBalanceSetFitTrainer(SetFitTrainer):
    """`setfit.Trainer` with a layer-wise profile on the sentence-transformer body (see the module docstring).

    Args:
        *args: As for `setfit.Trainer` (``model``, ``args``, ``train_dataset``, ...).
        **kwargs: As for `setfit.Trainer` (``callbacks``, ``column_mapping``, ...).
        tb_args: The profile's options (`tb_hf.TempBalanceArguments`, e.g. ``tb_preset="llrd"``); default: the
            defaults (TempBalance's linear α map).
    """

    def __init__(self, *args, tb_args: TempBalanceArguments | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        body = self.st_trainer
        body.__class__ = _ProfiledBodyTrainer  # SetFit builds its body trainer itself: give it the mixin
        body._tb_setup(tb_args)
        if body.tb_options.balance.head_lr_ratio != 1:
            raise ValueError(
                "tb_head_lr_ratio has nothing to act on in SetFit: the body's pooler is unused and SetFit trains its "
                "head at its own head_learning_rate (TrainingArguments(head_learning_rate=...)): leave it unset."
            )

    def hyperparameter_search(self, hp_space=None, *args, **kwargs):
        """`setfit.Trainer.hyperparameter_search`, where the ``tb_*`` values a trial sets (e.g. from
        `tb_hf.tuning.hp_space`) train that trial's body; SetFit applies the others."""
        body = self.st_trainer

        def split(trial):
            params = hp_space(trial) if hp_space is not None else {}
            body._tb_trial = {k: v for k, v in params.items() if k.startswith("tb_")}
            body.tb_options  # noqa: B018 - the trial's options checked now
            return {k: v for k, v in params.items() if not k.startswith("tb_")}

        try:
            return super().hyperparameter_search(split if hp_space is not None else None, *args, **kwargs)
        finally:
            body._tb_trial = {}

    @property
    def tempbalance(self):
        """The body trainer's `tb_hf.TempBalanceCallback` (its schedule and balancer after training)."""
        return self.st_trainer.tempbalance

    @property
    def tb_options(self) -> TempBalanceOptions:
        return self.st_trainer.tb_options

    def train_classifier(self, x_train, y_train, args=None) -> None:
        args = args or self.args
        end_to_end = args.end_to_end and self.model.has_differentiable_head
        with _profiled_end_to_end(self.model, self.tb_options) if end_to_end else contextlib.nullcontext():
            super().train_classifier(x_train, y_train, args=args)


@contextlib.contextmanager
def _profiled_end_to_end(model, options: TempBalanceOptions):
    """While SetFit's end-to-end phase runs: its optimizer over the profile's per-block groups of the body (α from
    one pass now, factors applied to the rates) and SetFit's own head group."""
    body = model.model_body

    def prepare(head_learning_rate, body_learning_rate, l2_weight):
        body_learning_rate, l2_weight = body_learning_rate or head_learning_rate, l2_weight or 1e-2
        balancer = Balancer(body, options)
        b = options.balance
        groups = tempbalance_param_groups(
            body, lr=body_learning_rate, weight_decay=l2_weight, unit=b.unit, llrd_decay=b.llrd_decay,
            partition=balancer.partition, head_lr_ratio=b.head_lr_ratio, embeddings_lr_ratio=b.embeddings_lr_ratio,
        )  # fmt: skip
        head = {"params": list(model.model_head.parameters()), "lr": head_learning_rate, "weight_decay": l2_weight}
        optimizer = torch.optim.AdamW([*groups, head])
        balancer.start(body)
        balancer.update(body, optimizer, None, step=0)
        return optimizer

    model._prepare_optimizer = prepare  # an instance attribute: SetFitModel.fit calls self._prepare_optimizer
    try:
        yield
    finally:
        del model._prepare_optimizer
