"""tb_hf.options: every TempBalance option's help, choices and ranges, checked at construction (no torch needed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tb_hf import TempBalanceArguments, analyze
from tb_hf.options import MAPPINGS, tb_arguments


def test_every_option_has_help_and_a_tb_name():
    fields = dataclasses.fields(TempBalanceArguments)
    assert all(f.name.startswith("tb_") and f.metadata.get("help") for f in fields)
    assert "se" in MAPPINGS and TempBalanceArguments().tb_mapping == "linear"  # the default is TempBalance's


def test_update_interval_is_model_balancings_rule_for_auto():
    assert TempBalanceArguments().update_interval(320) == 32  # about ten passes an epoch
    assert TempBalanceArguments().update_interval(5000) == 100 and TempBalanceArguments().update_interval(4) == 1
    assert TempBalanceArguments().update_interval(None) == 100
    assert TempBalanceArguments(tb_update_steps="7").update_interval(320) == 7
    assert TempBalanceArguments(tb_update_steps="once").update_interval(320) is None


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(tb_mapping="se", tb_metric="stable_rank"), "tb_mapping='se' .* needs tb_metric='alpha'"),
        (dict(tb_mapping="se", tb_lr_min=1.2, tb_lr_max=2.0), r"needs tb_lr_min <= 1 <= tb_lr_max"),
        (dict(tb_se_threshold=0), "tb_se_threshold must be a finite number in"),
        (dict(tb_llrd_decay=0), r"tb_llrd_decay must be a finite number in \(0, 1\]"),
        (dict(tb_llrd_decay=1.1), "tb_llrd_decay"),
        (dict(tb_balance="momentum"), "tb_balance must be one of"),
        (dict(tb_wd_min_ratio=2.0, tb_wd_max_ratio=1.0), "tb_wd_min_ratio must be <= tb_wd_max_ratio"),
        (dict(tb_wd_min_ratio=-1.0), "tb_wd_min_ratio must be a finite number"),
        (dict(tb_auto_interval=5, tb_update_steps="4"), "tb_auto_interval replays a tb_update_steps='auto' run"),
        (dict(tb_auto_interval=0), r"tb_auto_interval must be an integer in \[1, "),
        (dict(tb_auto_interval=2.5), "tb_auto_interval must be an integer"),
    ],
)
def test_the_new_methods_options_are_checked(options, match):
    with pytest.raises(ValueError, match=match):
        TempBalanceArguments(**options)


@pytest.mark.parametrize(
    "options, match",
    [  # an option the configuration does not use was ignored without a word (like the FARMS options before)
        (dict(tb_wd_min_ratio=0.2), r"tb_wd_min_ratio=0.2 has no effect .* applies with tb_balance='weight_decay'"),
        (dict(tb_wd_max_ratio=3.0), "tb_wd_max_ratio=3.0 has no effect"),
        (dict(tb_se_threshold=3.0), r"tb_se_threshold=3.0 has no effect .* applies with tb_mapping='se'"),
        (dict(tb_sigmoid_s_low=3.0), r"tb_sigmoid_s_low=3.0 .* applies with tb_mapping='sigmoid'"),
        (dict(tb_mapping="sigmoid", tb_lr_min=0.2), r"tb_lr_min=0.2 .* tb_mapping='linear' or tb_mapping='se'"),
        (dict(tb_mapping="sigmoid", tb_lr_max=3.0), "the sigmoid map's range is set by tb_sigmoid_s_low"),
        (dict(tb_mapping="se", tb_sigmoid_tau=5.0), "tb_sigmoid_tau=5.0 has no effect"),
        (dict(tb_balance="weight_decay", tb_mapping="sigmoid"), r"tb_mapping='sigmoid' .* tb_balance='lr' or 'both'"),
        (dict(tb_balance="weight_decay", tb_lr_max=2.0), "only the weight decay is balanced"),
        (dict(tb_balance="weight_decay", tb_normalize=True), "tb_normalize=True has no effect"),
        (dict(tb_balance="weight_decay", tb_metric="stable_rank"), "tb_metric='stable_rank' has no effect"),
        (dict(tb_update_steps="4", tb_max_overhead=0.1), r"tb_max_overhead=0.1 .* with tb_update_steps='auto'"),
    ],
)
def test_options_the_configuration_does_not_use_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        TempBalanceArguments(**options)


def test_options_in_use_and_defaults_are_accepted():
    TempBalanceArguments(tb_mapping="sigmoid", tb_sigmoid_s_low=3.0, tb_lr_min=0.5)  # lr_min at its default
    TempBalanceArguments(tb_mapping="se", tb_se_threshold=1.0, tb_lr_min=0.6, tb_lr_max=1.4)
    TempBalanceArguments(tb_balance="both", tb_mapping="sigmoid", tb_wd_min_ratio=0.1, tb_sigmoid_tau=3.0)
    TempBalanceArguments(tb_balance="weight_decay", tb_wd_max_ratio=2.0, tb_llrd_decay=0.9)  # depth + AlphaDecay


def test_weight_decay_balancing_without_weight_decay_is_refused(tmp_path):
    from tb_hf import TempBalanceConfig

    for balance in ("weight_decay", "both"):  # TrainingArguments' default weight_decay is 0: nothing to scale
        with pytest.raises(ValueError, match=rf"tb_balance='{balance}' scales each unit's weight_decay, which is 0"):
            TempBalanceConfig(output_dir=str(tmp_path), tb_balance=balance)
    TempBalanceConfig(output_dir=str(tmp_path), tb_balance="weight_decay", weight_decay=0.1)
    TempBalanceConfig(output_dir=str(tmp_path))  # lr balancing needs no weight decay


def test_the_new_methods_options_in_the_form_the_library_takes_them():
    tb = TempBalanceArguments(tb_mapping="se", tb_se_threshold=1.5, tb_balance="both", tb_wd_min_ratio=0.2,
                              tb_wd_max_ratio=1.8, tb_auto_interval=np.int64(6))  # fmt: skip
    assert tb.factor_options()["se_threshold"] == 1.5 and tb.factor_options()["mapping"] == "se"
    assert tb.wd_factor_options() == {"wd_min_ratio": 0.2, "wd_max_ratio": 1.8}
    assert tb.balances_lr and tb.balances_wd and tb.tb_auto_interval == 6 and type(tb.tb_auto_interval) is int
    only_wd = TempBalanceArguments(tb_balance="weight_decay")
    assert not only_wd.balances_lr and only_wd.balances_wd
    assert tb_arguments(tb_args=tb) is tb


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(tb_lora_average="some"), "tb_lora_average must be one of"),  # was silently 'all'
        (dict(tb_async="false"), "tb_async must be True or False"),  # a non-empty string was True
        (dict(tb_normalize="no"), "tb_normalize must be True or False"),
        (dict(tb_filter_zeros=1), "tb_filter_zeros must be True or False"),
    ],
)
def test_choice_and_boolean_options_are_checked(options, match):
    with pytest.raises(ValueError, match=match):
        TempBalanceArguments(**options)


def test_numpy_numbers_are_accepted_as_numbers():
    import numpy as np

    assert TempBalanceArguments(tb_xmin_pos=np.float32(1.5)).tb_xmin_pos == 1.5


@pytest.mark.parametrize(
    "options, match",
    [
        # FARMS options with the plain estimator were ignored without a word (tb_farms_window was refused)
        (dict(tb_farms_aspect_ratio=2.0), r"tb_farms_aspect_ratio is set but tb_estimator is 'plain'.*'farms'"),
        (dict(tb_farms_grid=4), r"tb_farms_grid is set but tb_estimator is 'plain'.*'farms'"),
        (dict(tb_farms_window=64), r"tb_farms_window is set but tb_estimator is 'plain'.*'farms'"),
        # '²' passed isdigit(), then failed in a bare int()
        (dict(tb_update_steps="²"), r"tb_update_steps must be 'auto', 'once' or a positive integer, got '²'"),
        (dict(tb_update_steps="٥"), r"tb_update_steps must be"),  # an Arabic-Indic digit: not an integer here
        (dict(tb_update_steps="-3"), r"tb_update_steps must be"),
        (dict(tb_update_steps="2.5"), r"tb_update_steps must be"),
        # hidden upper limits are stated
        (dict(tb_min_evals=10**8), r"tb_min_evals must be an integer in \[2, 10000000\].*got 100000000"),
        (dict(tb_min_evals=1), r"tb_min_evals must be an integer in \[2, 10000000\]"),
        (dict(tb_min_evals=50.0), r"tb_min_evals must be an integer"),
        (dict(tb_min_evals=True), r"tb_min_evals must be an integer"),
        (dict(tb_estimator="farms", tb_farms_window=2 * 10**6), r"tb_farms_window must be .*\[1, 1000000\].*2000000"),
        (dict(tb_estimator="farms", tb_farms_window=0), r"tb_farms_window must be .*\[1, 1000000\]"),
        (dict(tb_estimator="farms", tb_farms_grid=65), r"tb_farms_grid must be an integer in \[1, 64\]"),
        (dict(tb_estimator="farms", tb_farms_grid=np.True_), r"tb_farms_grid must be an integer"),
    ],
)
def test_issue18_options_are_refused_with_their_limits(options, match):
    with pytest.raises(ValueError, match=match):
        TempBalanceArguments(**options)


def test_numpy_integers_are_accepted_as_integers():
    """np.int64(50) was refused for integer options while numpy floats passed (issue 18 C); stored as int."""
    tb = TempBalanceArguments(
        tb_min_evals=np.int64(50), tb_estimator="farms", tb_farms_window=np.int32(64), tb_farms_grid=np.int16(5),
        tb_update_steps=np.int64(7), tb_lr_min=np.int64(1), tb_lr_max=np.int64(2),
    )  # fmt: skip
    assert (tb.tb_min_evals, tb.tb_farms_window, tb.tb_farms_grid, tb.tb_update_steps) == (50, 64, 5, "7")
    assert all(type(v) is int for v in (tb.tb_min_evals, tb.tb_farms_window, tb.tb_farms_grid))
    assert tb.update_interval(100) == 7
    assert TempBalanceArguments(tb_farms_aspect_ratio=1, tb_farms_grid=9).tb_farms_grid == 9  # the defaults pass
    res = analyze({"w": torch.randn(64, 64)}, min_evals=np.int64(10), farms_grid_size=np.int64(3))
    assert res["w"].ok
    with pytest.raises(ValueError, match=r"min_evals must be an integer in \[2, 10000000\]"):
        analyze({"w": torch.randn(64, 64)}, min_evals=10**8)


def test_presets_fill_the_defaults_and_keep_what_was_set(caplog):
    from tb_hf.options import PRESETS

    assert TempBalanceArguments(tb_preset="tempbalance") == TempBalanceArguments(tb_preset="tempbalance", **{})
    with caplog.at_level("INFO", logger="tb_hf.options"):
        tb = TempBalanceArguments(tb_preset="llrd-alpha", tb_lr_max=1.2)
    assert (tb.tb_llrd_decay, tb.tb_lr_min, tb.tb_lr_max, tb.tb_mapping) == (0.9, 0.65, 1.2, "linear")
    assert "tb_llrd_decay=0.9, tb_lr_min=0.65; kept as set: tb_lr_max=1.2" in caplog.text
    mb = TempBalanceArguments(tb_preset="model-balancing", tb_sigmoid_s_low=4.0, tb_sigmoid_s_high=2.0)
    assert (mb.tb_mapping, mb.tb_xmin_pos, mb.tb_sigmoid_s_low, mb.tb_sigmoid_s_high) == ("sigmoid", 1.5, 4.0, 2.0)
    se = TempBalanceArguments(tb_preset="se")
    assert (se.tb_mapping, se.tb_se_threshold, se.tb_lr_min, se.tb_lr_max) == ("se", 2.0, 0.5, 2.0)
    wd = TempBalanceArguments(tb_preset="alphadecay")
    assert (wd.tb_balance, wd.tb_wd_min_ratio, wd.tb_wd_max_ratio) == ("weight_decay", 0.75, 1.25)
    for name in PRESETS:  # a copy (tb_arguments of a TempBalanceConfig, a resumed run's options) changes nothing
        tb = TempBalanceArguments(tb_preset=name)
        assert TempBalanceArguments(**dataclasses.asdict(tb)) == tb


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(tb_preset="llrd+alpha"), r"tb_preset must be one of \['tempbalance', 'model-balancing', 'llrd-alpha'"),
        (dict(tb_preset="llrd-alpha", tb_mapping="sigmoid"), r"tb_lr_min=0.65 \(tb_preset='llrd-alpha' sets it\) has"),
        (dict(tb_preset="se", tb_mapping="sigmoid"), r"tb_preset='se' sets tb_mapping='se', and tb_mapping is 'sig"),
        (dict(tb_preset="model-balancing", tb_mapping="se"), r"sets tb_mapping='sigmoid', and tb_mapping is 'se'"),
        (dict(tb_preset="alphadecay", tb_balance="both"), r"sets tb_balance='weight_decay', and tb_balance is 'both'"),
        (dict(tb_preset="alphadecay", tb_lr_max=2.0), "tb_lr_max=2.0 has no effect"),  # checked after the preset
        (dict(tb_preset="model-balancing", tb_lr_min=0.2), "tb_lr_min=0.2 has no effect"),
    ],
)
def test_presets_refuse_what_would_change_or_not_use_them(options, match):
    with pytest.raises(ValueError, match=match):
        TempBalanceArguments(**options)


def test_each_preset_is_a_setting_the_study_ran():
    """The presets are the study's methods (results/llrd-vs-spectral): each one's options, but for the depth decay
    (tuned with LLRD's per task) and the recompute interval, are the settings one task of the MiniLM screen ran."""
    from pathlib import Path

    import yaml

    from tb_hf.options import PRESETS

    config = Path(__file__).parents[1] / "recipes/sweeps/llrd_vs_spectral/minilm_screen.yaml"
    tasks = yaml.safe_load(config.read_text())["tasks"]
    study = {"model-balancing": "tempbalance-mb", "llrd-alpha": "llrd-alpha", "se": "tb-se",
             "alphadecay": "alphadecay"}  # fmt: skip
    assert set(study) == set(PRESETS) - {"tempbalance"}
    for preset, method in study.items():
        want = TempBalanceArguments(tb_preset=preset)
        ran = [
            TempBalanceArguments(**{k: v for k, v in task["method_args"][method].items() if k != "tb_update_steps"})
            for task in tasks.values()
        ]
        depth = want.tb_llrd_decay
        same = [tb for tb in ran if dataclasses.replace(tb, tb_preset=preset, tb_llrd_decay=depth) == want]
        assert same, f"tb_preset={preset!r} is none of the settings the screen ran for {method}"


def test_a_preset_reaches_the_trainers_param_groups(tmp_path):
    from tb_hf import TempBalanceTrainer
    from tb_hf.testing import ARCHS, dataset_for, tiny_training_args

    model = ARCHS["bert"][0]()
    args = tiny_training_args(tmp_path, learning_rate=1e-2, tb_preset="llrd-alpha")
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model))
    trainer.create_optimizer()
    base = {g["tb_unit"]: g["tb_base_lr"] for g in trainer.optimizer.param_groups if g.get("tb_unit")}
    assert base == pytest.approx({"bert.encoder.layer.0": 1e-2 * 0.9, "bert.encoder.layer.1": 1e-2})


def test_a_resume_that_names_the_same_settings_by_their_preset_changes_nothing():
    from tb_hf.state import changed_options, options_of

    explicit = TempBalanceArguments(tb_llrd_decay=0.9, tb_lr_min=0.65, tb_lr_max=1.35)
    assert changed_options(options_of(explicit), TempBalanceArguments(tb_preset="llrd-alpha")) == {}
    changed = changed_options(options_of(explicit), TempBalanceArguments(tb_preset="se"))
    assert set(changed) == {"tb_mapping", "tb_llrd_decay", "tb_lr_min", "tb_lr_max"}
