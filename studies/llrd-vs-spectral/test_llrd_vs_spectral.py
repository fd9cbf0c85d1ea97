"""The llrd-vs-spectral study's scripts: every stage's config (make_study_configs.py) follows from the stage before
and passes the sweep's checks (run_glue parses every run) before any of its runs; the tuning choice
(choose_settings.py), the screen's rule (screen_winner.py) and the confirmation's verdict (confirm_result.py) are
read off the sweep's tables as PROTOCOL.md says. Pytest puts this folder on sys.path (the scripts run by path)."""

from __future__ import annotations

from pathlib import Path

import make_study_configs as make
import pytest
import yaml

from recipes import sweep

ROOT = Path(__file__).resolve().parents[2]


def _fake_chosen(tmp_path: Path, stage: str, tasks, families: dict) -> None:
    out = tmp_path / "studies" / "llrd-vs-spectral" / stage
    out.mkdir(parents=True, exist_ok=True)
    chosen = {task: {fam: {"variant": "x", **settings} for fam, settings in families.items()} for task in tasks}
    (out / "chosen.yaml").write_text(yaml.safe_dump(chosen))


@pytest.mark.parametrize("winner", ["tb-se", "llrd-alpha", "alphadecay"])
def test_every_stage_follows_from_the_one_before_and_validates(tmp_path, monkeypatch, winner):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(make, "HERE", tmp_path / "configs")
    (tmp_path / "configs").mkdir()
    ft = {"ft": {"learning_rate": 4e-4, "num_train_epochs": 20}}
    methods = {
        "llrd": {"llrd_decay": 0.85},
        "tb-se": {
            "tb_mapping": "se",
            "tb_se_threshold": 2.0,
            "tb_lr_min": 0.5,
            "tb_lr_max": 2.0,
            "tb_update_steps": 4,
        },
        "alphadecay": {"tb_balance": "weight_decay", "tb_wd_min_ratio": 0.5, "tb_wd_max_ratio": 1.5},
        "tempbalance-mb": {
            "tb_mapping": "sigmoid",
            "tb_xmin_pos": 1.5,
            "tb_sigmoid_s_low": 1.0,
            "tb_sigmoid_s_high": 0.5,
        },
    }
    alpha = {"llrd-alpha": {"tb_llrd_decay": 0.85, "tb_lr_min": 0.8, "tb_lr_max": 1.2, "tb_update_steps": 4}}
    for stage, tasks, families in (
        ("minilm-tune-ft", make.MINILM_TASKS, ft),
        ("minilm-tune-methods", make.MINILM_TASKS, methods),
        ("minilm-tune-llrd-alpha", make.MINILM_TASKS, alpha),
        ("mpnet-tune-ft", make.MPNET_TASKS, ft),
        (
            "mpnet-tune-methods",
            make.MPNET_TASKS,
            {
                "llrd": methods["llrd"],
                winner: {**methods, **alpha}.get(winner),
                "tempbalance-mb": methods["tempbalance-mb"],
            },
        ),  # fmt: skip
        ("mpnet-tune-llrd-alpha", make.MPNET_TASKS, alpha),
    ):
        _fake_chosen(tmp_path, stage, tasks, families)
    stages = ["minilm-tune-methods", "minilm-tune-llrd-alpha", "minilm-screen", "mpnet-tune-ft",
              "mpnet-tune-methods", "mpnet-confirm"]  # fmt: skip
    for stage in stages:
        path = tmp_path / "configs" / f"{stage.replace('-', '_')}.yaml"
        path.write_text(make.make(stage, winner))
        config = sweep.load_config(path)
        runs = sweep.expand_grid(config)
        sweep.validate(config, runs)  # every run's arguments parse as run_glue's
        assert path.read_text().startswith("# python -m recipes.sweep studies/llrd-vs-spectral/")
    screen = {
        r.name: r.args for r in sweep.expand_grid(sweep.load_config(tmp_path / "configs" / "minilm_screen.yaml"))
    }
    assert len(screen) == 6 * 20 * 6  # tasks x seeds x methods
    rte = screen["rte/shots16/llrd-alpha/seed13"]
    assert (rte["tb_llrd_decay"], rte["tb_lr_max"], rte["learning_rate"], rte["num_train_epochs"]) == (
        0.85,
        1.2,
        4e-4,
        20,
    )
    assert (
        screen["bbc/shots16/llrd/seed13"]["llrd_decay"] == 0.85 and screen["bbc/shots16/ft/seed13"]["method"] == "ft"
    )
    assert screen["sst2/shots16/tb-se/seed13"]["tb_mapping"] == "se" and "eval_on_train_holdout" not in rte
    confirm = sweep.load_config(tmp_path / "configs" / "mpnet_confirm.yaml")
    assert confirm["seeds"] == list(range(1001, 1016)) and confirm["args"]["eval_strategy"] == "no"
    assert f"{winner} vs llrd" in confirm["contrasts"] and "tempbalance-mb vs llrd" in confirm["contrasts"]
    runs = {r.name: r.args for r in sweep.expand_grid(confirm)}
    assert runs["rte/shots16/tempbalance-mb/seed1015"]["tb_sigmoid_s_low"] == 1.0  # the reference arm, tuned too
    tune = sweep.load_config(tmp_path / "configs" / "mpnet_tune_methods.yaml")
    assert {"llrd_d0.8", "tempbalance-mb_c2"} <= set(tune["methods"])
    assert runs[f"cola/shots16/{winner}-permuted/seed1001"]["tb_permute_factors"] is True
    # the controls keep the winner's tuned settings but their own interval, not the tuned one (a task's
    # method_args override the top-level ones)
    for task in make.MPNET_TASKS:
        tuned, once = runs[f"{task}/shots16/{winner}/seed1001"], runs[f"{task}/shots16/{winner}-once/seed1001"]
        permuted = runs[f"{task}/shots16/{winner}-permuted/seed1001"]
        assert tuned["tb_update_steps"] == 4
        assert once["tb_update_steps"] == permuted["tb_update_steps"] == "once"
        own = ("tb_update_steps", "output_dir")
        assert {k: v for k, v in once.items() if k not in own} == {k: v for k, v in tuned.items() if k not in own}
    assert runs["mrpc/shots16/llrd/seed1001"]["llrd_decay"] == 0.85


def test_the_first_tuning_config_is_the_committed_one():
    config = sweep.load_config(ROOT / "studies" / "llrd-vs-spectral" / "minilm_tune_ft.yaml")
    assert set(config["tasks"]) == set(make.MINILM_TASKS) and config["args"]["eval_on_train_holdout"] == 200


def test_choose_settings_picks_the_best_mean_final_holdout_score_per_task(tmp_path, capsys):
    import json

    import choose_settings

    config = {
        "output_dir": str(tmp_path / "tune"),
        "tasks": {"rte": {"shots_per_class": [4], "method_args": {"llrd_d0.9": {"llrd_decay": 0.9}}}},
        "seeds": [1, 2],
        "methods": ["llrd_d0.8", "llrd_d0.9", "tb-se_r1"],
        "baseline": "llrd_d0.8",
        "args": {"eval_on_train_holdout": 20},
        "method_args": {"llrd_d0.8": {"method": "llrd", "llrd_decay": 0.8}, "llrd_d0.9": {"method": "llrd"},
                        "tb-se_r1": {"method": "tempbalance", "tb_mapping": "se"}},
    }  # fmt: skip
    scores = {("llrd_d0.8", 1): 0.60, ("llrd_d0.8", 2): 0.70, ("llrd_d0.9", 1): 0.66, ("llrd_d0.9", 2): 0.66}
    for run in sweep.expand_grid(config):
        if run.method == "tb-se_r1":
            continue  # not finished: its family cannot be chosen yet
        run.out.mkdir(parents=True)
        final = scores[(run.method, run.seed)]
        results = {"main_metric": "accuracy", "best_eval_accuracy": final, "eval_accuracy": final,
                   "eval_split": "train_holdout", "epoch_scores": [final]}  # fmt: skip
        record = {"task": run.task, "size_key": run.size_key, "size": run.size, "method": run.method, "lora": False,
                  "seed": run.seed, "key": run.key, "args": run.args, "results": results}  # fmt: skip
        (run.out / "result.json").write_text(json.dumps(record))
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    assert choose_settings.main([str(path)]) == 2  # tb-se has no finished trial
    assert "['tb-se_r1'] have no finished run" in capsys.readouterr().err
    assert choose_settings.main([str(path), "--families", "llrd"]) == 0
    chosen = yaml.safe_load((tmp_path / "tune" / "chosen.yaml").read_text())
    # means 0.65 (0.8) and 0.66 (0.9): 0.9 wins; its decay comes from the task's own method_args
    assert chosen == {"rte": {"llrd": {"variant": "llrd_d0.9", "llrd_decay": 0.9}}}
    assert "**llrd_d0.9**" in (tmp_path / "tune" / "selection.md").read_text()
    capsys.readouterr()
    assert choose_settings.main([str(path), "--partial"]) == 0  # a preview writes nothing new
    assert "llrd_d0.9" in capsys.readouterr().out
    (tmp_path / "tune" / "runs" / "rte").rename(tmp_path / "elsewhere")
    assert choose_settings.main([str(path), "--families", "llrd"]) == 2


def test_detectable_effect_of_sixty_pairs_with_a_five_point_std():
    from detectable_effect import detectable

    assert detectable(5.0, 60) == pytest.approx(1.84, abs=0.01)  # the protocol's "about 1.8 points"
    assert detectable(5.0, 120) < detectable(5.0, 60) and detectable(5.0, 1) != detectable(5.0, 1)  # nan


def _contrasts(path: Path, diffs: dict, pairs: int) -> Path:
    rows = [
        {"contrast": f"{name} − llrd", "model": "minilm", "lora": False, "scope": scope, "n_pairs": pairs,
         "diff_vs_baseline": diff if scope == "all" else -1.0, "p_value": 0.5, "wins": 1, "losses": 2, "ties": 0,
         "sign_p": 1.0, "diff_std": 0.05, "score": score}
        for name, diff in diffs.items() for scope in ("all", "cell") for score in ("final", "best")
    ]  # fmt: skip
    import pandas as pd

    pd.DataFrame(rows).to_csv(path / "contrasts.csv", index=False)
    return path / "contrasts.csv"


def test_screen_winner_applies_the_protocols_rule_only_when_every_pair_is_in(tmp_path, capsys):
    import screen_winner

    diffs = {"llrd-alpha": 0.004, "tb-se": 0.011, "alphadecay": -0.002, "tempbalance-mb": 0.05}  # not a candidate
    path = _contrasts(tmp_path, diffs, 120)
    assert screen_winner.main([str(path)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "tb-se"
    # Before the 20 seeds are done the rule decides nothing: exit 2, or 0 with --interim, and no winner line.
    path = _contrasts(tmp_path, diffs, 54)
    assert screen_winner.main([str(path)]) == 2
    assert screen_winner.main([str(path), "--interim"]) == 0
    out = capsys.readouterr().out
    assert "54 of 120 pairs" in out and not out.strip().endswith("tb-se")
    # An exact tie goes to the candidate listed first.
    path = _contrasts(tmp_path, {"llrd-alpha": 0.01, "tb-se": 0.01, "alphadecay": 0.0}, 120)
    assert screen_winner.main([str(path)]) == 0 and capsys.readouterr().out.strip().endswith("llrd-alpha")
    # A missing comparison is named.
    path = _contrasts(tmp_path, {"llrd-alpha": 0.01, "tb-se": 0.01}, 120)
    assert screen_winner.main([str(path)]) == 2 and "alphadecay − llrd" in capsys.readouterr().err


def _confirm_tables(path: Path, diff: float, p: float, pairs: int) -> Path:
    import pandas as pd

    common = {"model": "mpnet", "lora": False, "wins": 30, "losses": 25, "ties": 5, "sign_p": 0.6, "diff_std": 0.05}
    rows = [
        {"contrast": name, "scope": scope, "task": "sst2" if scope == "cell" else None, "n_pairs": n,
         "diff_vs_baseline": d, "p_value": p, "score": score, **common}
        for name, d, n in [("tb-se − llrd", diff, pairs), ("tempbalance-mb − llrd", 0.03, pairs),
                           ("tb-se − tb-se-once", 0.01, 15),
                           ("tb-se-once − tb-se-permuted", 0.02, 15)]
        for scope in ("all", "cell") for score in ("final", "best")
    ]  # fmt: skip
    pooled = [
        {"method": m, "scope": "all", "n_pairs": pairs, "diff_vs_baseline": 0.02, "p_value": 0.01, "score": "final",
         **common}
        for m in ("tb-se", "llrd")
    ]  # fmt: skip
    path.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(path / "contrasts.csv", index=False)
    pd.DataFrame(pooled).to_csv(path / "pooled.csv", index=False)
    return path


def test_confirm_result_states_the_protocols_verdict_only_when_every_pair_is_in(tmp_path, capsys):
    import confirm_result

    stage = _confirm_tables(tmp_path / "confirm", 0.012, 0.2, 60)
    assert confirm_result.main([str(stage)]) == 0
    out = capsys.readouterr().out
    # std 5 points over 60 pairs: the protocol's detectable effect of about 1.8 points
    assert "| tb-se − llrd | 60 | +1.20 | 5.00 | 0.2 | 30:25:5 | 0.6 | 1.84 |" in out
    said = "No difference found between tb-se and tuned LLRD: +1.20 points (p 0.2, 60 pairs); these pairs would"
    assert out.strip().endswith(said + " detect a true difference of 1.84 points with 80% power.")
    assert "| tb-se-once − tb-se-permuted | 15 | +2.00 |" in out and "| llrd − ft | 60 | +2.0" in out
    assert "| tempbalance-mb − llrd | 60 | +3.00 |" in out  # the secondary arm: reported, never the verdict
    stage = _confirm_tables(tmp_path / "confirm", 0.02, 0.01, 60)
    assert confirm_result.main([str(stage)]) == 0
    assert capsys.readouterr().out.strip().endswith("tb-se beats tuned LLRD: +2.00 points (p 0.01, 60 pairs).")
    stage = _confirm_tables(tmp_path / "confirm", -0.02, 0.01, 60)
    assert confirm_result.main([str(stage)]) == 0
    assert capsys.readouterr().out.strip().endswith("Tuned LLRD beats tb-se: -2.00 points (p 0.01, 60 pairs).")
    # Before the fixed size is reached nothing is concluded: exit 2, or 0 with --interim, and no verdict.
    stage = _confirm_tables(tmp_path / "confirm", 0.02, 0.01, 24)
    assert confirm_result.main([str(stage)]) == 2
    assert confirm_result.main([str(stage), "--interim"]) == 0
    out = capsys.readouterr().out
    assert "Interim: 24 of 60 pairs" in out and "beats" not in out
    assert confirm_result.main([str(tmp_path / "nowhere")]) == 2 and "contrasts.csv" in capsys.readouterr().err


def test_confirm_result_reads_the_tables_the_sweep_writes_for_a_one_size_stage(tmp_path, capsys):
    """The confirmation has one size (16 per class), so the sweep names its pooled rows after that size, not
    ``all``: the verdict must be read from the tables `recipes.sweep.stats` really writes."""
    import confirm_result
    import numpy as np
    import pandas as pd

    from recipes.sweep import stats

    rng = np.random.default_rng(0)
    rows = []
    for task in ("sst2", "mrpc", "rte", "cola"):
        for seed in range(15):
            base = rng.uniform(0.4, 0.8)
            for method, shift in (("ft", 0.0), ("llrd", 0.02), ("tb-se", 0.02), ("tempbalance-mb", 0.01)):
                score = base + shift + (rng.normal(0, 0.01) if method != "ft" else 0.0)
                rows.append({"model": "mpnet", "task": task, "size_key": "shots_per_class", "size": 16,
                             "lora": False, "metric": "accuracy", "method": method, "seed": seed, "best": score,
                             "final": score, "n_train": 32, "n_eval": 800})  # fmt: skip
    results = pd.DataFrame(rows)
    pairs = [("tb-se", "llrd"), ("tempbalance-mb", "llrd")]
    stage = tmp_path / "confirm"
    stage.mkdir()
    scores = ("best", "final")
    pd.concat([stats.contrast_frame(results, pairs, score=k).assign(score=k) for k in scores]).to_csv(
        stage / "contrasts.csv", index=False
    )
    pd.concat([stats.pooled(results, score=k).assign(score=k) for k in scores]).to_csv(
        stage / "pooled.csv", index=False
    )
    assert set(pd.read_csv(stage / "pooled.csv")["scope"]) == {"16 (shots per class)"}  # the case that broke
    assert confirm_result.main([str(stage)]) == 0
    out = capsys.readouterr().out
    diff = 100 * (
        results[results.method == "tb-se"]["final"].mean() - results[results.method == "llrd"]["final"].mean()
    )
    assert f"| tb-se − llrd | 60 | {diff:+.2f} |" in out and "All 60 pairs in." in out
    assert "| tempbalance-mb − llrd | 60 |" in out and "| llrd − ft | 60 | +2.0" in out
