"""tb_hf.options: every TempBalance option's help, choices and ranges, checked at construction (no torch needed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tb_hf import TempBalanceArguments, analyze
from tb_hf.options import DEFAULTS, MAPPINGS, PRESETS, TempBalanceOptions, resolve_options


def opts(**options) -> TempBalanceOptions:
    return TempBalanceArguments(**options).tb_options


def test_every_option_has_help_and_a_tb_name():
    fields = dataclasses.fields(TempBalanceArguments)
    assert all(f.name.startswith("tb_") and f.metadata.get("help") for f in fields)
    assert all(f.default is None for f in fields)  # every option is unset until the user sets it
    assert "se" in MAPPINGS and opts().balance.mapping == "linear"  # the default is TempBalance's
    assert (
        "Default: 0.5 (or the preset's: llrd-alpha)."
        in TempBalanceArguments.__dataclass_fields__["tb_lr_min"].metadata["help"]
    )


def test_update_interval_is_model_balancings_rule_for_auto():
    assert opts().schedule.interval_rule(320) == 32  # about ten passes an epoch
    assert opts().schedule.interval_rule(5000) == 100 and opts().schedule.interval_rule(4) == 1
    assert opts().schedule.interval_rule(None) == 100
    assert opts(tb_update_steps="7").schedule.interval_rule(320) == 7
    assert opts(tb_update_steps="once").schedule.interval_rule(320) is None


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


def test_options_in_use_are_accepted_and_unused_ones_refused_even_at_their_default():
    """An option the configuration does not use is refused even when it is set to its default value (it means
    nothing there: the user expected an effect), and the message names every such option at once."""
    TempBalanceArguments(tb_mapping="sigmoid", tb_sigmoid_s_low=3.0)
    with pytest.raises(ValueError, match=r"tb_lr_min=0.5 has no effect here.*the sigmoid map's range"):
        TempBalanceArguments(tb_mapping="sigmoid", tb_lr_min=0.5)
    with pytest.raises(ValueError, match=r"tb_mapping='linear' has no effect here.*tb_balance='lr' or 'both'"):
        TempBalanceArguments(tb_preset="alphadecay", tb_mapping="linear")
    with pytest.raises(ValueError, match=r"tb_min_evals=8 has no effect here.*tb_update_steps='4' has no effect here"):
        TempBalanceArguments(tb_preset="llrd", tb_min_evals=8, tb_update_steps="4")  # both named, not one per try
    for options, name in [
        (dict(tb_async=True, tb_update_steps="once"), "tb_async"),
        (dict(tb_max_overhead=0.5, tb_auto_interval=3), "tb_max_overhead"),
        (dict(tb_lora_average="all", tb_unit="matrix"), "tb_lora_average"),
    ]:
        with pytest.raises(ValueError, match=f"{name}=.* has no effect here"):
            TempBalanceArguments(**options)
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
    o = tb.tb_options
    assert o.balance.factor_kwargs()["se_threshold"] == 1.5 and o.balance.factor_kwargs()["mapping"] == "se"
    assert (o.balance.wd_min_ratio, o.balance.wd_max_ratio) == (0.2, 1.8)
    assert o.balance.balances_lr and o.balance.balances_wd
    assert tb.tb_auto_interval == 6 and type(tb.tb_auto_interval) is int and o.schedule.auto_interval == 6
    only_wd = opts(tb_balance="weight_decay")
    assert not only_wd.balance.balances_lr and only_wd.balance.balances_wd
    assert resolve_options(o) is o


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
        (dict(tb_farms_aspect_ratio=2.0), r"tb_farms_aspect_ratio=2.0 has no effect .* tb_estimator='farms'"),
        (dict(tb_farms_grid=4), r"tb_farms_grid=4 has no effect .* tb_estimator='farms'"),
        (dict(tb_farms_window=64), r"tb_farms_window=64 has no effect .* tb_estimator='farms'"),
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
    assert tb.tb_options.schedule.interval_rule(100) == 7
    assert TempBalanceArguments(tb_estimator="farms", tb_farms_aspect_ratio=1, tb_farms_grid=9).tb_farms_grid == 9
    res = analyze({"w": torch.randn(64, 64)}, min_evals=np.int64(10), farms_grid_size=np.int64(3))
    assert res["w"].ok
    with pytest.raises(ValueError, match=r"min_evals must be an integer in \[2, 10000000\]"):
        analyze({"w": torch.randn(64, 64)}, min_evals=10**8)


def test_presets_fill_what_is_unset_and_keep_what_was_set():
    b = opts(tb_preset="llrd-alpha", tb_lr_max=1.2).balance
    assert (b.llrd_decay, b.lr_min, b.lr_max, b.mapping) == (0.9, 0.65, 1.2, "linear")
    mb = opts(tb_preset="model-balancing", tb_sigmoid_s_low=4.0, tb_sigmoid_s_high=2.0)
    assert (mb.balance.mapping, mb.spectral.xmin_pos, mb.balance.sigmoid_s_low, mb.balance.sigmoid_s_high) == (
        "sigmoid", 1.5, 4.0, 2.0)  # fmt: skip
    se = opts(tb_preset="se").balance
    assert (se.mapping, se.se_threshold, se.lr_min, se.lr_max) == ("se", 2.0, 0.5, 2.0)
    wd = opts(tb_preset="alphadecay").balance
    assert (wd.balance, wd.wd_min_ratio, wd.wd_max_ratio) == ("weight_decay", 0.75, 1.25)
    llrd = opts(tb_preset="llrd").balance
    assert (llrd.mapping, llrd.llrd_decay, llrd.needs_alpha) == ("none", 0.9, False)
    for name in PRESETS:  # the fields keep what was set: a copy changes nothing, nothing of the preset leaks in
        tb = TempBalanceArguments(tb_preset=name)
        assert TempBalanceArguments(**dataclasses.asdict(tb)) == tb
        assert all(getattr(tb, f) is None for f in DEFAULTS)


@pytest.mark.parametrize(
    "options, attr, want",
    [  # an explicit value equal to the global default was overruled by the preset (outside probe)
        (dict(tb_preset="llrd-alpha", tb_lr_min=0.5), "lr_min", 0.5),
        (dict(tb_preset="se", tb_lr_max=1.5), "lr_max", 1.5),
        (dict(tb_preset="alphadecay", tb_wd_min_ratio=0.5), "wd_min_ratio", 0.5),
        (dict(tb_preset="llrd-alpha", tb_llrd_decay=1.0), "llrd_decay", 1.0),
        (dict(tb_preset="llrd", tb_llrd_decay=1.0), "llrd_decay", 1.0),
    ],
)
def test_an_option_set_to_its_default_value_is_never_replaced_by_a_preset(options, attr, want):
    assert getattr(opts(**options).balance, attr) == want


@pytest.mark.parametrize(
    "options, match",
    [  # the map or balanced quantity at the global default contradicted the preset, and the preset won silently
        (dict(tb_preset="model-balancing", tb_mapping="linear"),
         r"tb_preset='model-balancing' is defined by tb_mapping='sigmoid', and you set tb_mapping='linear'"),
        (dict(tb_preset="alphadecay", tb_balance="lr"),
         r"tb_preset='alphadecay' is defined by tb_balance='weight_decay', and you set tb_balance='lr'"),
        (dict(tb_preset="llrd", tb_mapping="linear"), r"is defined by tb_mapping='none'"),
    ],
)  # fmt: skip
def test_an_explicit_map_or_balance_against_the_preset_is_refused_with_both_values(options, match):
    with pytest.raises(ValueError, match=match):
        TempBalanceArguments(**options)


def test_replacing_the_preset_of_a_config_gives_the_new_presets_values_not_a_mix():
    first = TempBalanceArguments(tb_preset="llrd-alpha")
    second = dataclasses.replace(first, tb_preset="se")
    assert second.tb_options.balance == opts(tb_preset="se").balance  # no llrd 0.9 or lr_min 0.65 left over


@pytest.mark.parametrize("preset", [None, *PRESETS])
def test_to_dict_round_trips_for_every_preset_even_with_options_the_preset_then_leaves_unused(tmp_path, preset):
    """model-balancing with the 'ks' scan: the preset's tb_xmin_pos is unused, and to_dict() fed back refused it."""
    from tb_hf import TempBalanceConfig

    extra = {"tb_xmin_method": "ks"} if preset not in ("llrd", "alphadecay") else {}
    config = TempBalanceConfig(output_dir=str(tmp_path), weight_decay=0.1, tb_preset=preset, **extra)
    d = config.to_dict()
    again = TempBalanceConfig(**{k: v for k, v in d.items() if k in TempBalanceConfig.__dataclass_fields__})
    assert again.tb_options == config.tb_options


def test_to_dict_shows_the_resolved_values(tmp_path):
    from tb_hf import TempBalanceConfig

    config = TempBalanceConfig(output_dir=str(tmp_path), tb_preset="llrd-alpha", tb_lr_max=1.2)
    d = config.to_dict()
    assert (d["tb_preset"], d["tb_llrd_decay"], d["tb_lr_min"], d["tb_lr_max"], d["tb_xmin_pos"]) == (
        "llrd-alpha", 0.9, 0.65, 1.2, 2.0)  # fmt: skip
    assert config.tb_lr_min is None and config.tb_lr_max == 1.2  # the fields keep what was set
    again = TempBalanceConfig(**{k: v for k, v in d.items() if k in TempBalanceConfig.__dataclass_fields__})
    assert again.tb_options == config.tb_options  # the dict round-trips


def test_each_option_default_is_defined_once_and_every_layer_uses_it():
    """The typed options' field defaults are THE defaults: the functions that take an option as a keyword default to
    the same value, and no field of the flags holds one of its own."""
    import inspect

    from tb_hf import balancing, distributed, optim, spectral

    assert all(f.default is None for f in dataclasses.fields(TempBalanceArguments))
    checked = 0
    for fn, names in [
        (spectral.analyze, {"estimator": "tb_estimator", "xmin_method": "tb_xmin_method", "xmin_pos": "tb_xmin_pos",
                            "min_evals": "tb_min_evals", "filter_zeros": "tb_filter_zeros",
                            "farms_aspect_ratio": "tb_farms_aspect_ratio", "farms_grid_size": "tb_farms_grid"}),
        (spectral.farms_esd, {"aspect_ratio": "tb_farms_aspect_ratio", "grid": "tb_farms_grid"}),
        (spectral.farms_grid, {"aspect_ratio": "tb_farms_aspect_ratio", "grid": "tb_farms_grid"}),
        (spectral.farms_windows, {"aspect_ratio": "tb_farms_aspect_ratio", "grid": "tb_farms_grid"}),
        (spectral.fit_power_law, {"xmin_method": "tb_xmin_method", "xmin_pos": "tb_xmin_pos",
                                  "min_evals": "tb_min_evals"}),
        (distributed.matrix_cost, {"estimator": "tb_estimator", "farms_aspect_ratio": "tb_farms_aspect_ratio",
                                   "farms_grid_size": "tb_farms_grid"}),
        (balancing.compute_factors, {"mapping": "tb_mapping", "lr_min": "tb_lr_min", "lr_max": "tb_lr_max",
                                     "tau": "tb_sigmoid_tau", "s_low": "tb_sigmoid_s_low",
                                     "s_high": "tb_sigmoid_s_high", "se_threshold": "tb_se_threshold",
                                     "normalize": "tb_normalize"}),
        (balancing.compute_wd_factors, {"wd_min_ratio": "tb_wd_min_ratio", "wd_max_ratio": "tb_wd_max_ratio"}),
        (optim.create_tempbalance_optimizer, {"unit": "tb_unit", "llrd_decay": "tb_llrd_decay"}),
        (optim.tempbalance_param_groups, {"unit": "tb_unit", "llrd_decay": "tb_llrd_decay"}),
    ]:  # fmt: skip
        params = inspect.signature(fn).parameters
        for arg, option in names.items():
            if arg in params:
                assert params[arg].default == DEFAULTS[option], f"{fn.__qualname__}({arg}=...) vs {option}"
                checked += 1
    assert checked >= 25


@pytest.mark.parametrize("scalar", [np.float32(0.8), np.float64(0.8), torch.tensor(0.8)])
def test_numpy_and_torch_scalars_become_python_numbers_at_construction(scalar):
    tb = TempBalanceArguments(tb_llrd_decay=scalar, tb_lr_min=scalar, tb_max_overhead=scalar * 0.1)
    assert all(type(v) is float for v in (tb.tb_llrd_decay, tb.tb_lr_min, tb.tb_max_overhead))
    assert all(type(v) is float for v in dataclasses.astuple(tb.tb_options.balance) if isinstance(v, float))
    with pytest.raises(ValueError, match="tb_llrd_decay must be a finite number"):
        TempBalanceArguments(tb_llrd_decay=np.True_)


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(tb_preset="llrd+alpha"), r"tb_preset must be one of \['tempbalance', 'model-balancing', 'llrd'"),
        (dict(tb_preset="llrd-alpha", tb_mapping="sigmoid"), r"is defined by tb_mapping='linear'"),
        (dict(tb_preset="se", tb_mapping="sigmoid"), r"tb_preset='se' is defined by tb_mapping='se', and you set"),
        (dict(tb_preset="model-balancing", tb_mapping="se"), r"defined by tb_mapping='sigmoid', and you set .*'se'"),
        (dict(tb_preset="alphadecay", tb_balance="both"), r"defined by tb_balance='weight_decay', and you set"),
        (dict(tb_preset="alphadecay", tb_lr_max=2.0), "tb_lr_max=2.0 has no effect"),  # checked after the preset
        (dict(tb_preset="model-balancing", tb_lr_min=0.2), "tb_lr_min=0.2 has no effect"),
        (dict(tb_preset="llrd", tb_estimator="farms"), "tb_estimator='farms' has no effect .* no spectral pass"),
        (dict(tb_preset="llrd", tb_update_steps="4"), "tb_update_steps='4' has no effect"),
        (dict(tb_mapping="none", tb_balance="both"), "tb_mapping='none' gives it no"),
    ],
)
def test_presets_refuse_what_would_change_or_not_use_them(options, match):
    with pytest.raises(ValueError, match=match):
        TempBalanceArguments(**options)


def test_a_preset_fills_options_that_its_own_settings_then_leave_unused_without_complaint():
    """model-balancing's xmin position means nothing to the 'ks' scan: an explicit ks keeps the preset (before, the
    error blamed tb_xmin_pos, which the user had not set)."""
    o = opts(tb_preset="model-balancing", tb_xmin_method="ks")
    assert (o.spectral.xmin_method, o.balance.mapping) == ("ks", "sigmoid")


def test_each_preset_is_a_setting_the_study_ran():
    """The presets are the study's methods (studies/llrd-vs-spectral): each one's options, but for the depth decay
    (tuned with LLRD's per task) and the recompute interval, are the settings one task of the MiniLM screen ran."""
    from pathlib import Path

    import yaml

    config = Path(__file__).parents[1] / "studies/llrd-vs-spectral/minilm_screen.yaml"
    tasks = yaml.safe_load(config.read_text())["tasks"]
    study = {"model-balancing": "tempbalance-mb", "llrd-alpha": "llrd-alpha", "se": "tb-se",
             "alphadecay": "alphadecay"}  # fmt: skip
    assert set(study) == set(PRESETS) - {"tempbalance", "llrd"}
    for preset, method in study.items():
        want = opts(tb_preset=preset)
        ran = [
            TempBalanceArguments(**{k: v for k, v in task["method_args"][method].items() if k != "tb_update_steps"})
            for task in tasks.values()
        ]
        same = [
            tb for tb in ran
            if dataclasses.replace(tb.tb_options.balance, llrd_decay=want.balance.llrd_decay) == want.balance
            and tb.tb_options.spectral == want.spectral
        ]  # fmt: skip
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

    explicit = opts(tb_llrd_decay=0.9, tb_lr_min=0.65, tb_lr_max=1.35)
    assert changed_options(options_of(explicit), opts(tb_preset="llrd-alpha")) == {}
    changed = changed_options(options_of(explicit), opts(tb_preset="se"))
    assert set(changed) == {"tb_mapping", "tb_llrd_decay", "tb_lr_min", "tb_lr_max"}


def test_torch_scalars_of_every_kind_and_yaml_text_numbers():
    tb = TempBalanceArguments(tb_update_steps=torch.tensor(4), tb_normalize=torch.tensor(True))
    assert (tb.tb_update_steps, tb.tb_normalize) == ("4", True)
    with pytest.raises(ValueError, match=r"got '8e-1' \(text, not a number: in YAML write 0.8 or 8.0e-1"):
        TempBalanceArguments(tb_llrd_decay="8e-1")  # what PyYAML reads from `tb_llrd_decay: 8e-1`
