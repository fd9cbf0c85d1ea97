"""Write the sweep configs of the llrd-vs-spectral study (studies/llrd-vs-spectral/PROTOCOL.md) from the settings each
tuning stage chose, so that every stage's config follows from the one before by a rule, not by hand.

    python studies/llrd-vs-spectral/make_study_configs.py minilm-tune-methods     # needs minilm-tune-ft/chosen.yaml
    python studies/llrd-vs-spectral/make_study_configs.py minilm-tune-llrd-alpha  # + minilm-tune-methods/chosen.yaml
    python studies/llrd-vs-spectral/make_study_configs.py minilm-screen           # + minilm-tune-llrd-alpha/...
    python studies/llrd-vs-spectral/make_study_configs.py mpnet-tune-ft
    python studies/llrd-vs-spectral/make_study_configs.py mpnet-tune-methods --winner tb-se   # the screen's winner
    python studies/llrd-vs-spectral/make_study_configs.py mpnet-confirm --winner tb-se

Each writes ``studies/llrd-vs-spectral/<stage>.yaml`` (underscores for dashes), beside the stage's folder
``<stage>/``. The chosen settings are read from ``studies/llrd-vs-spectral/<tuning stage>/chosen.yaml`` (written by
``choose_settings.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path("studies/llrd-vs-spectral")  # the configs; run from the repository root
RESULTS = HERE  # the stages' folders

# The tasks: GLUE by name, BBC News from prepare_bbc_news.py (amendment 1).
GLUE = {
    "sst2": {"shots_per_class": [16], "max_seq_length": 64},
    "cola": {"shots_per_class": [16], "max_seq_length": 64},
    "mrpc": {"shots_per_class": [16], "max_seq_length": 128},
    "rte": {"shots_per_class": [16], "max_seq_length": 128},
    "stsb": {"max_train_samples": [32], "max_seq_length": 128},
}
BBC = {
    "bbc": {
        "train_file": "~/.cache/tb_hf/bbc-news/train.csv",
        "validation_file": "~/.cache/tb_hf/bbc-news/dev.csv",
        "text_columns": ["text"],
        "label_column": "label",
        "shots_per_class": [16],
        "max_seq_length": 64,
    }
}
MINILM_TASKS = {**GLUE, **BBC}
MPNET_TASKS = {k: GLUE[k] for k in ("sst2", "mrpc", "rte", "cola")}

SCREEN_SEEDS = [13, 37, 43, 57, 71, 101, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167, 173, 179, 181, 191]
CONFIRM_SEEDS = list(range(1001, 1016))

COMMON = {
    "subset_strategy": "random",
    "warmup_steps": 0.06,
    "weight_decay": 0.1,
    "per_device_train_batch_size": 8,
    "logging_strategy": "epoch",
    "save_strategy": "no",
    "report_to": "none",
    "disable_tqdm": True,
    "dataloader_pin_memory": False,
}
MODELS = {
    "minilm": {"model_name_or_path": "minilm", "per_device_eval_batch_size": 128},
    "mpnet": {"model_name_or_path": "~/.cache/tb_hf/mpnet-base", "per_device_eval_batch_size": 32},
}
SPECTRAL = {"method": "tempbalance", "tb_update_steps": 4}


def _num(x: float) -> str:
    return f"{x:g}"


# The one free parameter of each method (PROTOCOL.md), as named trials: name -> method_args.
def llrd_trials() -> dict:
    return {f"llrd_d{_num(d)}": {"method": "llrd", "llrd_decay": d} for d in (0.8, 0.85, 0.9, 0.95)}


def se_trials() -> dict:
    return {
        f"tb-se_r{_num(r)}": {**SPECTRAL, "tb_mapping": "se", "tb_se_threshold": 2.0,
                              "tb_lr_min": round(1 / (1 + r), 6), "tb_lr_max": 1 + r}
        for r in (0.25, 0.5, 1.0, 2.0)
    }  # fmt: skip


def alphadecay_trials() -> dict:
    return {
        f"alphadecay_r{_num(r)}": {**SPECTRAL, "tb_balance": "weight_decay", "tb_wd_min_ratio": round(1 - r, 6),
                                   "tb_wd_max_ratio": 1 + r}
        for r in (0.25, 0.5, 0.75, 0.95)
    }  # fmt: skip


def mb_trials() -> dict:
    return {
        f"tempbalance-mb_c{_num(c)}": {**SPECTRAL, "tb_mapping": "sigmoid", "tb_xmin_pos": 1.5,
                                       "tb_sigmoid_s_low": 2 * c, "tb_sigmoid_s_high": c}
        for c in (0.25, 0.5, 1.0, 2.0)
    }  # fmt: skip


def llrd_alpha_trials() -> dict:
    """The decay comes from LLRD's choice per task (set per task); the range r from these trials."""
    return {
        f"llrd-alpha_r{_num(r)}": {**SPECTRAL, "tb_lr_min": round(1 - r, 6), "tb_lr_max": 1 + r}
        for r in (0.1, 0.2, 0.35, 0.5)
    }  # fmt: skip


#: The library's Model Balancing setting: tuned and confirmed on MPNet beside the winner, as a secondary arm
#: (PROTOCOL.md, amendment 4), whatever the screen shows.
REFERENCE = "tempbalance-mb"

TRIALS = {"llrd": llrd_trials, "tb-se": se_trials, "alphadecay": alphadecay_trials, "tempbalance-mb": mb_trials,
          "llrd-alpha": llrd_alpha_trials}  # fmt: skip


def chosen(stage: str) -> dict:
    path = RESULTS / stage / "chosen.yaml"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run that tuning stage, then python {HERE}/choose_settings.py CONFIG")
    return yaml.safe_load(path.read_text())


def _settings(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "variant"}


def _tasks_with_ft(base: dict, ft: dict) -> dict:
    """Each task's entry with FT's chosen lr and epochs."""
    return {task: {**cfg, **_settings(ft[task]["ft"])} for task, cfg in base.items()}


def _config(header: str, output_dir: str, model: str, tasks: dict, seeds: list, methods: dict, *, baseline: str,
            holdout: bool, evals: str, contrasts: list | None = None) -> str:  # fmt: skip
    args = {**MODELS[model], "glue_dir": "../shared/data/glue", **COMMON}
    if holdout:
        args["eval_on_train_holdout"] = 200
    if evals == "twice":
        args |= {"eval_strategy": "steps", "eval_steps": 0.5}
    else:
        args |= {"eval_strategy": "no"}  # one evaluation, at the end (run_glue evaluates after training)
    config = {
        "output_dir": str(RESULTS / output_dir),
        "launcher": "inprocess",
        "tasks": tasks,
        "seeds": seeds,
        "methods": list(methods),
        "baseline": baseline,
        **({"contrasts": contrasts} if contrasts else {}),
        "args": args,
        "method_args": {name: entry for name, entry in methods.items() if entry},
    }
    parts = []
    for key, value in config.items():  # args in block style, one setting a line; lists and task entries compact
        flow = None if isinstance(value, dict | list) and key != "args" else False
        parts.append(yaml.safe_dump({key: value}, sort_keys=False, width=118, default_flow_style=flow))
    return header + "".join(parts)


def _header(stage: str, text: str) -> str:
    import textwrap

    name = stage.replace("-", "_")
    about = textwrap.wrap(f"The llrd-vs-spectral study (PROTOCOL.md beside this file): {text}", width=116)
    return (
        f"# python -m recipes.sweep studies/llrd-vs-spectral/{name}.yaml --workers 2\n"
        f"#\n# Written by python studies/llrd-vs-spectral/make_study_configs.py {stage} (do not edit by hand).\n"
        + "".join(f"# {line}\n" for line in about)
    )


def make(stage: str, winner: str | None = None) -> str:
    if stage == "minilm-tune-methods":
        ft = chosen("minilm-tune-ft")
        methods = {**llrd_trials(), **se_trials(), **alphadecay_trials(), **mb_trials()}
        return _config(
            _header(stage, "tuning step 2 on MiniLM-L6, each method's one parameter at the task's FT lr and epochs, "
                    "on 200 held-out training examples (seeds 1-3)."),  # fmt: skip
            "minilm-tune-methods", "minilm", _tasks_with_ft(MINILM_TASKS, ft), [1, 2, 3], methods,
            baseline="llrd_d0.9", holdout=True, evals="twice",
        )  # fmt: skip
    if stage == "minilm-tune-llrd-alpha":
        ft, picked = chosen("minilm-tune-ft"), chosen("minilm-tune-methods")
        tasks = _tasks_with_ft(MINILM_TASKS, ft)
        methods = llrd_alpha_trials()
        for task in tasks:  # alpha on top of LLRD's chosen decay for the task
            decay = picked[task]["llrd"]["llrd_decay"]
            tasks[task]["method_args"] = {name: {"tb_llrd_decay": decay} for name in methods}
        return _config(
            _header(stage, "tuning step 2b on MiniLM-L6, llrd-alpha's range at LLRD's chosen decay per task."),
            "minilm-tune-llrd-alpha", "minilm", tasks, [1, 2, 3], methods, baseline="llrd-alpha_r0.1",
            holdout=True, evals="twice",
        )  # fmt: skip
    if stage == "minilm-screen":
        ft, picked, alpha = chosen("minilm-tune-ft"), chosen("minilm-tune-methods"), chosen("minilm-tune-llrd-alpha")
        tasks = _tasks_with_ft(MINILM_TASKS, ft)
        methods = {"ft": {}, "llrd": {"method": "llrd"}, "llrd-alpha": dict(SPECTRAL), "tb-se": dict(SPECTRAL),
                   "alphadecay": dict(SPECTRAL), "tempbalance-mb": dict(SPECTRAL)}  # fmt: skip
        for task in tasks:
            per = {
                family: _settings(picked[task][family]) for family in ("llrd", "tb-se", "alphadecay", "tempbalance-mb")
            }
            per["llrd-alpha"] = _settings(alpha[task]["llrd-alpha"])
            for entry in per.values():
                entry.pop("method", None)
            tasks[task]["method_args"] = per
        return _config(
            _header(stage, "the screen on MiniLM-L6: every method at its setting chosen per task on held-out training "
                    "examples, 20 seeds, full dev sets, evaluated half-way and at the end."),  # fmt: skip
            "minilm-screen", "minilm", tasks, SCREEN_SEEDS, methods, baseline="ft", holdout=False, evals="twice",
            contrasts=["llrd-alpha vs llrd", "tb-se vs llrd", "alphadecay vs llrd", "tempbalance-mb vs llrd"],
        )  # fmt: skip
    if stage == "mpnet-tune-ft":
        methods = {f"ft_lr{_num(lr)}_ep10": {"method": "ft", "learning_rate": lr, "num_train_epochs": 10}
                   for lr in (5e-5, 1e-4, 2e-4)}  # fmt: skip
        return _config(
            _header(stage, "tuning step 1 on MPNet-base, FT's learning rate per task at 10 epochs, on 200 held-out "
                    "training examples (seeds 1, 2), one evaluation at the end."),  # fmt: skip
            "mpnet-tune-ft", "mpnet", dict(MPNET_TASKS), [1, 2], methods, baseline="ft_lr0.0001_ep10",
            holdout=True, evals="once",
        )  # fmt: skip
    if stage == "mpnet-tune-methods" and winner is None:  # LLRD's decay first: it does not wait for the screen
        ft = chosen("mpnet-tune-ft")
        return _config(
            _header(stage, "tuning step 2 on MPNet-base: LLRD's decay per task, at the task's FT lr, on 200 held-out "
                    "training examples (seeds 1, 2); the screen's winner's trials are added when it is known."),
            "mpnet-tune-methods", "mpnet", _tasks_with_ft(MPNET_TASKS, ft), [1, 2], llrd_trials(),
            baseline="llrd_d0.9", holdout=True, evals="once",
        )  # fmt: skip
    if winner not in TRIALS or winner in ("llrd", "tempbalance-mb"):
        raise SystemExit(f"--winner must be one of llrd-alpha, tb-se, alphadecay (the screen's rule), got {winner!r}")
    if stage == "mpnet-tune-methods":
        ft = chosen("mpnet-tune-ft")
        tasks = _tasks_with_ft(MPNET_TASKS, ft)
        methods = llrd_trials()
        if winner != "llrd-alpha":  # llrd-alpha is tuned after LLRD, at its decay (mpnet-tune-llrd-alpha)
            methods |= TRIALS[winner]()
        methods |= TRIALS[REFERENCE]()
        return _config(
            _header(stage, f"tuning step 2 on MPNet-base: LLRD's decay, {winner}'s parameter and {REFERENCE}'s scale "
                    "per task, at the task's FT lr, on 200 held-out training examples (seeds 1, 2)."),  # fmt: skip
            "mpnet-tune-methods", "mpnet", tasks, [1, 2], methods, baseline="llrd_d0.9", holdout=True, evals="once",
        )  # fmt: skip
    if stage == "mpnet-tune-llrd-alpha":
        ft, picked = chosen("mpnet-tune-ft"), chosen("mpnet-tune-methods")
        tasks = _tasks_with_ft(MPNET_TASKS, ft)
        methods = llrd_alpha_trials()
        for task in tasks:
            tasks[task]["method_args"] = {n: {"tb_llrd_decay": picked[task]["llrd"]["llrd_decay"]} for n in methods}
        return _config(
            _header(stage, "tuning step 2b on MPNet-base, llrd-alpha's range at LLRD's chosen decay per task."),
            "mpnet-tune-llrd-alpha", "mpnet", tasks, [1, 2], methods, baseline="llrd-alpha_r0.1", holdout=True,
            evals="once",
        )  # fmt: skip
    if stage == "mpnet-confirm":
        ft, picked = chosen("mpnet-tune-ft"), chosen("mpnet-tune-methods")
        winner_pick = chosen("mpnet-tune-llrd-alpha") if winner == "llrd-alpha" else picked
        tasks = _tasks_with_ft(MPNET_TASKS, ft)
        methods = {"ft": {}, "llrd": {"method": "llrd"}, winner: dict(SPECTRAL), REFERENCE: dict(SPECTRAL),
                   f"{winner}-once": {**SPECTRAL, "tb_update_steps": "once"},
                   f"{winner}-permuted": {**SPECTRAL, "tb_update_steps": "once",
                                          "tb_permute_factors": True}}  # fmt: skip
        for task in tasks:
            llrd = _settings(picked[task]["llrd"])
            llrd.pop("method", None)
            mine = _settings(winner_pick[task][winner])
            mine.pop("method", None)
            reference = _settings(picked[task][REFERENCE])
            reference.pop("method", None)
            # The controls take the winner's tuned settings but not its update interval: a task's method_args
            # override the top-level ones, and the controls are defined by theirs ("once").
            control = {k: v for k, v in mine.items() if k != "tb_update_steps"}
            tasks[task]["method_args"] = {"llrd": llrd, winner: dict(mine), f"{winner}-once": dict(control),
                                          f"{winner}-permuted": dict(control), REFERENCE: reference}  # fmt: skip
        return _config(
            _header(stage, f"the confirmation on MPNet-base: {winner} (the screen's winner) against LLRD and FT, and "
                    f"{REFERENCE} as a secondary arm, each at its setting chosen per task on held-out training "
                    "examples, 15 seeds (60 pairs), full dev sets, one evaluation at the end; the frozen and "
                    "permuted controls run on SST-2 only (--methods/--tasks)."),  # fmt: skip
            "mpnet-confirm", "mpnet", tasks, CONFIRM_SEEDS, methods, baseline="ft", holdout=False, evals="once",
            contrasts=[f"{winner} vs llrd", f"{REFERENCE} vs llrd", f"{winner} vs {winner}-once",
                       f"{winner}-once vs {winner}-permuted"],  # fmt: skip
        )  # fmt: skip
    raise SystemExit(f"unknown stage {stage!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("stage")
    parser.add_argument("--winner", help="The screen's winner (for the MPNet stages after FT's tuning).")
    ns = parser.parse_args(argv)
    text = make(ns.stage, ns.winner)
    path = HERE / f"{ns.stage.replace('-', '_')}.yaml"
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
