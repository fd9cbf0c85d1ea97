"""tb_hf.tuning and Trainer.hyperparameter_search with tb_hf's trainers: each trial trains exactly its own values (real
optuna); the splits to tune on never include an evaluation set; the profile search over the study's grids."""

from __future__ import annotations

import optuna
import pytest
import torch
from transformers import TrainerCallback

from tb_hf import TempBalanceConfig, TempBalanceTrainer
from tb_hf.testing import ARCHS, dataset_for
from tb_hf.tuning import hp_space, search_profile, search_space, tuning_splits


def _model():
    torch.manual_seed(0)
    return ARCHS["bert"][0]()


def _args(tmp_path, **tb):
    return TempBalanceConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to="none",
                             use_cpu=True, save_strategy="no", disable_tqdm=True, learning_rate=1e-3,
                             lr_scheduler_type="constant", seed=0, **tb)  # fmt: skip


class GroupsAtStart(TrainerCallback):
    """Each trial's options as the arguments hold them and its param groups' rates, at the start of training."""

    def __init__(self):
        self.trials = []

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        by_unit = {g["tb_unit"]: g["tb_base_lr"] for g in optimizer.param_groups if g["params"]}
        self.trials.append((args.tb_options, args.learning_rate, by_unit))


def test_hyperparameter_search_trains_each_trials_own_values(tmp_path):
    model = _model()
    recorder = GroupsAtStart()
    trainer = TempBalanceTrainer(model_init=_model, args=_args(tmp_path), train_dataset=dataset_for(model),
                                 eval_dataset=dataset_for(model, n=8, seed=1), callbacks=[recorder])  # fmt: skip
    space = hp_space("llrd", learning_rates=[1e-3, 3e-3])
    best = trainer.hyperparameter_search(hp_space=space, backend="optuna", n_trials=3, direction="minimize",
                                         sampler=optuna.samplers.RandomSampler(seed=0))  # fmt: skip
    assert len(recorder.trials) == 3 and best.hyperparameters
    for options, lr, by_unit in recorder.trials:
        decay = options.balance.llrd_decay
        assert options.preset == "llrd" and decay in (0.8, 0.85, 0.9, 0.95) and lr in (1e-3, 3e-3)
        assert by_unit["bert.encoder.layer.1"] == pytest.approx(lr)  # the top block
        assert by_unit["bert.encoder.layer.0"] == pytest.approx(lr * decay)
    assert len({(o.balance.llrd_decay, lr) for o, lr, _ in recorder.trials}) > 1  # the trials really differed


def test_a_trial_that_changes_the_preset_keeps_nothing_of_the_previous_trial(tmp_path):
    """A trial setting tb_preset='llrd' after one that set llrd-alpha's α range would otherwise carry tb_lr_min over
    (and be refused as unused, or train a mix)."""
    model = _model()
    recorder = GroupsAtStart()
    settings = [{"tb_preset": "llrd-alpha", "tb_lr_min": 0.8, "tb_lr_max": 1.2}, {"tb_preset": "llrd"}]

    def space(trial):
        return settings[trial.suggest_categorical("i", [0, 1])]

    trainer = TempBalanceTrainer(model_init=_model, args=_args(tmp_path), train_dataset=dataset_for(model),
                                 eval_dataset=dataset_for(model, n=8, seed=1), callbacks=[recorder])  # fmt: skip
    trainer.hyperparameter_search(hp_space=space, backend="optuna", n_trials=2, direction="minimize",
                                  sampler=optuna.samplers.GridSampler({"i": [0, 1]}, seed=0))  # fmt: skip
    presets = {o.preset: o.balance for o, _, _ in recorder.trials}
    assert presets["llrd"].lr_min == 0.5 and presets["llrd"].mapping == "none"  # nothing carried over
    assert (presets["llrd-alpha"].lr_min, presets["llrd-alpha"].llrd_decay) == (0.8, 0.9)


def test_a_search_space_naming_an_option_the_trainer_does_not_have_is_refused_before_training(tmp_path):
    model = _model()
    recorder = GroupsAtStart()
    trainer = TempBalanceTrainer(model_init=_model, args=_args(tmp_path), train_dataset=dataset_for(model),
                                 eval_dataset=dataset_for(model, n=8, seed=1), callbacks=[recorder])  # fmt: skip
    with pytest.raises(ValueError, match=r"sets \['llrd_decay'\], which TempBalanceConfig does not have"):
        trainer.hyperparameter_search(hp_space=lambda trial: {"llrd_decay": 0.8}, backend="optuna", n_trials=1)
    assert recorder.trials == []


def test_search_spaces_are_the_studys_grids_and_check_their_input():
    assert [s["tb_llrd_decay"] for s in search_space("llrd")] == [0.8, 0.85, 0.9, 0.95]
    assert all(s["tb_preset"] == "llrd-alpha" for s in search_space("llrd-alpha"))
    assert len(search_space("se", learning_rates=[1e-4, 2e-4])) == 8
    for setting in search_space("alphadecay"):  # every setting is a valid configuration
        TempBalanceConfig(output_dir="x", weight_decay=0.1, **setting)
    with pytest.raises(ValueError, match="preset must be one of"):
        search_space("llrd+alpha")
    with pytest.raises(ValueError, match="learning_rates must be a non-empty list of positive numbers"):
        search_space("llrd", learning_rates=[0])


def test_tuning_splits_hold_out_or_cross_validate_within_the_training_examples():
    labels = [0] * 16 + [1] * 16
    folds = tuning_splits(labels, folds=4, seed=1)
    assert len(folds) == 4
    assert sorted(i for f in folds for i in f.eval) == list(range(32))  # each example held out once
    for f in folds:
        assert not set(f.train) & set(f.eval) and len(f.eval) == 8
        assert sorted(labels[i] for i in f.eval) == [0] * 4 + [1] * 4  # stratified
    assert tuning_splits(labels) == tuning_splits(labels, folds=4)  # few examples: 4 folds
    many = [0] * 900 + [1] * 300
    (held,) = tuning_splits(many)  # enough examples: a holdout of 200, in the class proportions
    assert len(held.eval) == 200 and sum(many[i] for i in held.eval) == 50
    with pytest.raises(ValueError, match=r"folds=5 is more than class 1 has examples \(3\)"):
        tuning_splits([0] * 10 + [1] * 3, folds=5)
    with pytest.raises(ValueError, match="holdout must be a whole number"):
        tuning_splits(labels, holdout=32)
    with pytest.raises(ValueError, match="give folds or holdout"):
        tuning_splits(labels, folds=2, holdout=4)


def test_search_profile_cross_validates_every_setting_on_the_training_data(tmp_path):
    model = _model()
    train = dataset_for(model, n=16)
    found = search_profile(_model, _args(tmp_path, tb_preset="llrd"), train, preset="llrd", folds=2)
    assert [s["tb_llrd_decay"] for s, _, _ in found.scores] == [0.8, 0.85, 0.9, 0.95]
    assert all(len(per) == 2 for _, _, per in found.scores) and found.metric == "eval_loss"
    best = min(found.scores, key=lambda item: item[1])
    assert (
        found.best == best[0]
        and found.apply(_args(tmp_path)).tb_options.balance.llrd_decay == best[0]["tb_llrd_decay"]
    )
    with pytest.raises(ValueError, match="tb_update_steps='4' has no effect"):  # checked before any training
        search_profile(_model, _args(tmp_path, tb_update_steps="4"), train, preset="llrd", folds=2)
    with pytest.raises(ValueError, match="folds=9 is more than class"):
        search_profile(_model, _args(tmp_path), train, preset="llrd", folds=9)


def test_the_trials_values_win_over_tb_args_and_the_best_trial_can_be_applied(tmp_path):
    """With tb_args=llrd 0.5 every trial trained 0.5 whatever it set, and the best trial's label could not be turned
    back into settings; the arguments kept the last trial's values (second outside probe)."""
    import dataclasses

    from tb_hf import TempBalanceArguments

    model = _model()
    recorder = GroupsAtStart()
    trainer = TempBalanceTrainer(model_init=_model, args=_args(tmp_path), train_dataset=dataset_for(model),
                                 eval_dataset=dataset_for(model, n=8, seed=1), callbacks=[recorder],
                                 tb_args=TempBalanceArguments(tb_preset="llrd", tb_llrd_decay=0.5))  # fmt: skip
    space = hp_space("llrd")
    grid = optuna.samplers.GridSampler({"llrd": list(space.choices)})
    best = trainer.hyperparameter_search(hp_space=space, backend="optuna", n_trials=4, direction="minimize",
                                         sampler=grid)  # fmt: skip
    trained = sorted(o.balance.llrd_decay for o, _, _ in recorder.trials)
    assert trained == [0.8, 0.85, 0.9, 0.95]  # each trial its own decay, not tb_args' 0.5
    assert trainer.args.tb_llrd_decay is None  # the arguments as before the search
    chosen = space.settings(best.hyperparameters)
    assert chosen["tb_preset"] == "llrd" and chosen["tb_llrd_decay"] in trained
    applied = dataclasses.replace(trainer.args, **chosen)
    assert applied.tb_options.balance.llrd_decay == chosen["tb_llrd_decay"]


def test_search_profile_checks_its_splits_and_regression_labels(tmp_path):
    from tb_hf.tuning import Split

    model = _model()
    train = dataset_for(model, n=8)
    for splits, words in [
        ([], "splits is empty"),
        ([Split((0, 1, 2), ())], "empty evaluation part"),
        ([Split((0, 1, 99), (3,))], "indices outside the 8 training examples"),
    ]:
        with pytest.raises(ValueError, match=words):
            search_profile(_model, _args(tmp_path), train, preset="llrd", splits=splits)
    with pytest.raises(ValueError, match="Cross-validation needs 2 examples of every class"):
        tuning_splits([0, 0, 0, 1], folds=2)
    labels = torch.tensor([0, 1] * 4)  # a torch-formatted label column
    assert len(tuning_splits(labels, folds=2)) == 2
    assert len(tuning_splits([0.0, 5.0, 3.2, 1.0] * 2, folds=2, is_regression=True)) == 2
