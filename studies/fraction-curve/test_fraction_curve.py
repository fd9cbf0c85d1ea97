"""The fraction-curve study's scripts: every config make_configs.py writes parses as run_glue will run it and carries
PROTOCOL.md's settings (Model Balancing's released per-ratio settings in protocol (a), about ten spectral passes per
run); each tuning step is chosen by the protocol's rule and ends in protocol (b)'s config; and curve.py states the
primary verdict only when every planned pair is in, and reads α's movement against the fit's error. Pytest puts
this folder on sys.path (the scripts run by path)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import curve
import make_configs as make
import pandas as pd
import pytest
import yaml

from recipes import sweep
from recipes.sweep.grid import validate


@pytest.fixture
def study(tmp_path, monkeypatch):
    """An empty study folder in a scratch repository root (the scripts' paths are relative to the root)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / make.HERE).mkdir(parents=True)
    return tmp_path / make.HERE


def fake(run, final: float, best: float | None = None, history: list[dict] | None = None) -> None:
    """A finished run's result.json (and TempBalance history), as the sweep writes them."""
    out = Path(run.args["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    split = "train_holdout" if run.args.get("eval_on_train_holdout") else "validation"
    results = {"main_metric": "accuracy", "best_eval_accuracy": final if best is None else best,
               "eval_accuracy": final, "best_epoch": 1, "train_samples": 13, "eval_samples": 872,
               "epoch_scores": [final], "eval_split": split}  # fmt: skip
    record = {"task": run.task, "size_key": run.size_key, "size": run.size, "method": run.method, "lora": False,
              "seed": run.seed, "args": run.args, "key": run.key, "results": results}  # fmt: skip
    (out / sweep.RESULT_FILE).write_text(json.dumps(record))
    if history is not None:
        (out / "tempbalance").mkdir(exist_ok=True)
        (out / "tempbalance" / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))


def runs_of(path: Path):
    config = sweep.load_config(path)
    return config, sweep.expand_grid(config)


def test_start_writes_protocol_a_with_the_released_settings_and_step_one_of_tuning(study):
    written = make.start()
    names = sorted(p.name for p in written)
    assert "mb_minilm_sst2_0.0002.yaml" in names and "tune_minilm_sst2_0.01.yaml" in names
    assert not any(n.startswith(("mb_minilm_sst2_0.05", "mb_mpnet")) for n in names)  # cut: see PROTOCOL.md
    assert "tune_mpnet_sst2_0.0002.yaml" in names
    for path in written:
        assert path.read_text().startswith(f"# python -m recipes.sweep {path.as_posix()} --workers 1\n")
        config, runs = runs_of(path)
        validate(config, runs)  # every run's arguments parse as run_glue's
    config, runs = runs_of(study / "mb_minilm_sst2_0.0005.yaml")
    args = {r.method: r.args for r in runs if r.seed == 13}
    assert args["ft"]["learning_rate"] == 2e-5 and args["ft"]["per_device_train_batch_size"] == 4  # configs.txt
    mb = args["tempbalance-mb"]
    assert (mb["learning_rate"], mb["per_device_train_batch_size"]) == (3e-5, 8)  # configs_sigmoid.txt
    assert (mb["tb_sigmoid_s_low"], mb["tb_sigmoid_s_high"], mb["tb_preset"]) == (1.25, 1.25, "model-balancing")
    assert mb["tb_update_steps"] == math.ceil(33 / 8) * 10 // 10  # about ten passes: every 5 of 50 steps
    assert args["llrd-alpha"]["per_device_train_batch_size"] == 4 and args["llrd"]["llrd_decay"] == 0.9
    assert {r.args["subset_strategy"] for r in runs} == {"first"} and config["args"]["eval_strategy"] == "epoch"
    assert config["methods"] == ["ft", "llrd", "tempbalance-mb", "llrd-alpha"]
    assert sorted({r.seed for r in runs}) == make.SEEDS
    config, runs = runs_of(study / "mb_minilm_sst2_0.01.yaml")
    assert {r.method: r.args for r in runs}["tempbalance-mb"]["tb_update_steps"] == 43  # 673 examples, batch 16
    config, runs = runs_of(study / "tune_minilm_sst2_0.0002.yaml")
    assert config["methods"] == ["ft_lr3e-5", "ft_lr1e-4", "ft_lr3e-4"] and config["seeds"] == [1, 2]
    assert {r.args["eval_on_train_holdout"] for r in runs} == {make.HOLDOUT}


def _finish(path: Path, score) -> None:
    for run in runs_of(path)[1]:
        if not (Path(run.args["output_dir"]) / sweep.RESULT_FILE).exists():
            fake(run, score(run))


def test_tuning_steps_follow_the_rule_and_end_in_protocol_b(study):
    make.start()
    tune = make.HERE / "tune_minilm_sst2_0.01.yaml"
    assert make.next_step(tune) == []  # nothing finished: waiting
    scores = {"ft_lr3e-5": 0.80, "ft_lr1e-4": 0.85, "ft_lr3e-4": 0.70, "llrd_d0.8": 0.86, "llrd_d0.9": 0.86,
              "llrd_d0.95": 0.80, "tempbalance-mb_c0.25": 0.81, "tempbalance-mb_c1": 0.87, "tempbalance-mb_c2": 0.5,
              "llrd-alpha_r0.1": 0.84, "llrd-alpha_r0.35": 0.83, "llrd-alpha_r0.5": 0.88}  # fmt: skip
    _finish(tune, lambda run: scores[run.method])
    assert make.next_step(tune) == [tune]  # step 2 at FT's chosen learning rate
    config, runs = runs_of(tune)
    step2 = {r.method: r.args for r in runs}
    assert step2["llrd_d0.9"]["learning_rate"] == 1e-4 and step2["tempbalance-mb_c1"]["tb_sigmoid_s_low"] == 2.0
    assert "llrd-alpha_r0.1" not in step2 and "step 2 of 3" in tune.read_text()
    _finish(tune, lambda run: scores[run.method])
    assert make.next_step(tune) == [tune]  # step 3 at LLRD's chosen decay: 0.8 (a tie with 0.9 goes to the first)
    step3 = {r.method: r.args for r in runs_of(tune)[1]}
    assert step3["llrd-alpha_r0.5"]["tb_llrd_decay"] == 0.8 and step3["llrd-alpha_r0.5"]["tb_lr_min"] == 0.5
    _finish(tune, lambda run: scores[run.method])
    written = make.next_step(tune)
    assert [p.name for p in written] == ["selection.md", "chosen.yaml", "ours_minilm_sst2_0.01.yaml",
                                         "ours_minilm_sst2_0.05.yaml"]  # fmt: skip
    chosen = yaml.safe_load((study / "tune" / "minilm-sst2-0.01" / "chosen.yaml").read_text())
    assert (chosen["ft"]["learning_rate"], chosen["llrd"]["llrd_decay"]) == (1e-4, 0.8)
    assert (chosen["tempbalance-mb"]["c"], chosen["llrd-alpha"]["r"]) == (1.0, 0.5)
    assert "**tempbalance-mb_c1**" in (study / "tune" / "minilm-sst2-0.01" / "selection.md").read_text()
    for name, seeds in (("ours_minilm_sst2_0.01.yaml", make.SEEDS), ("ours_minilm_sst2_0.05.yaml", make.SEEDS[:3])):
        config, runs = runs_of(study / name)
        validate(config, runs)
        assert config["seeds"] == seeds and config["args"]["stratify"] is True
        args = {r.method: r.args for r in runs if r.seed == 13}
        assert {a["learning_rate"] for a in args.values()} == {1e-4} and args["llrd"]["llrd_decay"] == 0.8
        assert args["llrd-alpha"]["tb_lr_max"] == 1.5 and args["tempbalance-mb"]["tb_sigmoid_s_high"] == 1.0
    once = {r.method: r.args for r in runs_of(study / "ours_minilm_sst2_0.05.yaml")[1]}["tempbalance-mb-once"]
    assert once["tb_update_steps"] == "once" and once["per_device_train_batch_size"] == 32
    assert "chosen at 1%" in (study / "ours_minilm_sst2_0.05.yaml").read_text()


def _protocol_b(study, gain, skip=None) -> None:
    """Protocol (b)'s configs at every planned fraction with fake runs: a method's final score is FT's plus
    ``gain(method, fraction)`` and a little noise; ``skip`` leaves one run out."""
    chosen = {"ft": {"learning_rate": 1e-4}, "llrd": {"llrd_decay": 0.9}, "tempbalance-mb": {"c": 1.0},
              "llrd-alpha": {"r": 0.1}}  # fmt: skip
    for (model, task, fraction), plan in make.PLAN.items():
        if model == "minilm" and plan.get("ours"):
            path = make.ours_config(model, task, fraction, plan, chosen, plan.get("tuned_at", fraction))
            for run in runs_of(path)[1]:
                if skip and (run.method, run.size, run.seed) == skip:
                    continue
                noise = 0.002 * ((run.seed * 7 + len(run.method)) % 5 - 2)
                history = None
                if run.method != "ft" and run.method != "llrd":
                    move = 0.5 if run.size >= 0.01 else 0.001  # α moves at the large fractions only
                    history = [{"step": 0, "alpha": {"b0": 3.0, "b1": 4.0}, "factor": {"b0": 0.9, "b1": 1.1},
                                "alpha_se": {"b0": 0.02, "b1": 0.02}},
                               {"step": 40, "alpha": {"b0": 3.0 + move, "b1": 4.0}, "factor": {}}]  # fmt: skip
                fake(run, 0.7 + 0.01 * (run.seed % 3) + gain(run.method, run.size) + noise, history=history)


def test_curve_states_the_primary_verdict_only_when_complete(study):
    def shrinking(method, fraction):  # tempbalance-mb: +3 points at 0.02%, less by 2 per tenfold more data
        return {"tempbalance-mb": 0.03 - 0.02 * math.log10(fraction / 0.0002)}.get(method, 0.0)

    _protocol_b(study, shrinking, skip=("tempbalance-mb", 0.001, 13))
    text = curve.analyse()
    assert "interim, decides nothing" in text and "shrinks" not in text
    _protocol_b(study, shrinking)
    text = curve.analyse()
    lines = [line for line in text.splitlines() if line.startswith("- tempbalance-mb − ")]
    assert len(lines) == 2 and all("**the gain shrinks as the fraction grows**" in line for line in lines)
    assert "slope -2.00 points per tenfold" in lines[0]
    assert (study / "curve_ours_minilm.png").is_file() and (study / "curve_ours_minilm_vs_llrd.png").is_file()
    alpha = pd.read_csv(study / "alpha.csv")
    moved = alpha[alpha["method"] == "tempbalance-mb"].set_index("size")["moved"].to_dict()
    assert moved == {0.0002: False, 0.0005: False, 0.001: False, 0.005: False, 0.01: True, 0.05: True}
    assert "| ours | minilm | 5% | tempbalance-mb-once |" in text  # the frozen control's α is in the table too


def test_no_trend_is_not_called_one(study):
    _protocol_b(study, lambda method, fraction: 0.0)
    lines = [line for line in curve.analyse().splitlines() if line.startswith("- tempbalance-mb − ")]
    assert len(lines) == 2 and all("**no trend found**" in line for line in lines)
