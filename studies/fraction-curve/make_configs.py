"""Write the fraction-curve study's sweep configs (PROTOCOL.md beside this file), so that every config follows from
the protocol and from the tuning stage before it by a rule, not by hand.

    python studies/fraction-curve/make_configs.py start                     # every config that needs no tuning result
    python studies/fraction-curve/make_configs.py next studies/fraction-curve/tune_minilm_sst2_0.001.yaml

``start`` writes protocol (a)'s configs (``mb_<model>_<task>_<fraction>.yaml``: Model Balancing's released
settings) and step 1 of each tuning config (``tune_<model>_<task>_<fraction>.yaml``: FT's learning rate).
``next TUNE_CONFIG`` reads that tuning sweep's finished runs (final score on held-out training examples), chooses
each finished step's setting by PROTOCOL.md's rule, and writes the next step into the same config (a superset: the
finished trials keep their settings, so the sweep skips them); after the last step it writes ``selection.md`` and
``chosen.yaml`` into the tuning folder and protocol (b)'s config (``ours_<model>_<task>_<fraction>.yaml``, and that
of every fraction that takes its settings from this one). It prints what it wrote, or ``waiting`` when the step's
trials are not all finished. Run from the repository root.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from pathlib import Path

import yaml

try:
    from recipes.sweep import collect, expand_grid, load_config
except ImportError:  # run as a script from the repository root without PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from recipes.sweep import collect, expand_grid, load_config

HERE = Path("studies/fraction-curve")  # configs and results; run from the repository root

TRAIN_ROWS = {"sst2": 67349}  # GLUE training sets here (studies/../shared/data/glue)
EPOCHS = 10
PASSES = 10  # α recomputed every max(1, steps // PASSES) optimizer steps: about ten passes per run

# Model Balancing's released per-ratio settings (ZihangHLiu/ModelBalancing, config_files/configs.txt for fine-tuning
# and configs_sigmoid.txt for TempBalance; QNLI is the only task released): ratio -> (FT lr, FT batch), (TB lr, TB
# batch, sigmoid_min, sigmoid_max). Their sigmoid_min/max are the scales below/above the mean α (tb_sigmoid_s_low,
# tb_sigmoid_s_high; the library's model-balancing preset is their 5% setting, 2 and 1).
MB_RELEASED = {
    0.0002: ((3e-5, 4), (3e-5, 4, 0.25, 0.25)),
    0.0005: ((2e-5, 4), (3e-5, 8, 1.25, 1.25)),
    0.001: ((3e-5, 16), (3e-5, 16, 1.25, 1.25)),
    0.005: ((2e-5, 16), (2e-5, 16, 1.0, 1.0)),
    0.01: ((3e-5, 16), (3e-5, 16, 1.0, 1.0)),
    0.05: ((2e-5, 32), (3e-5, 32, 2.0, 1.0)),
}

SEEDS = [13, 37, 43, 57, 71]  # Model Balancing's 13, 37, 43 and two more

# The grid after the budget's cuts (PROTOCOL.md, "Grid and budget"): (model, task, fraction) -> what runs there.
#   mb: protocol (a)'s seeds (None: not run); tune: the tuning seeds (None: settings from `tuned_at`);
#   ours: protocol (b)'s seeds; farms: protocol (b) runs TempBalance with FARMS's α beside it; control: protocol
#   (b) runs the frozen-profile control (tempbalance-mb with α measured once, at step 0).
PLAN = {
    ("minilm", "sst2", 0.0002): {"mb": SEEDS, "tune": [1, 2], "ours": SEEDS, "farms": True},
    ("minilm", "sst2", 0.0005): {"mb": SEEDS, "tune": [1, 2], "ours": SEEDS},
    ("minilm", "sst2", 0.001): {"mb": SEEDS, "tune": [1, 2], "ours": SEEDS, "farms": True},
    ("minilm", "sst2", 0.005): {"mb": SEEDS, "tune": [1], "ours": SEEDS},
    ("minilm", "sst2", 0.01): {"mb": SEEDS, "tune": [1], "ours": SEEDS},
    ("minilm", "sst2", 0.05): {"mb": None, "tune": None, "tuned_at": 0.01, "ours": SEEDS[:3], "control": True},
    ("mpnet", "sst2", 0.0002): {"mb": None, "tune": [1, 2], "ours": SEEDS},
}

MODELS = {
    "minilm": {"model_name_or_path": "minilm", "per_device_eval_batch_size": 128},
    "mpnet": {"model_name_or_path": "~/.cache/tb_hf/mpnet-base", "per_device_eval_batch_size": 64},
}
COMMON = {
    "glue_dir": "../shared/data/glue",
    "max_seq_length": 128,
    "num_train_epochs": EPOCHS,
    "warmup_steps": 0.06,
    "weight_decay": 0.1,
    "logging_strategy": "epoch",
    "save_strategy": "no",
    "report_to": "none",
    "disable_tqdm": True,
    "dataloader_pin_memory": False,
}
HOLDOUT = 500  # held-out training examples for tuning (stratified, disjoint from the subset)

# Protocol (b): each method's one free parameter, the same number of trials for each (PROTOCOL.md).
FT_LR = {"minilm": [3e-5, 1e-4, 3e-4], "mpnet": [2e-5, 6e-5, 2e-4]}
LLRD_DECAY = [0.8, 0.9, 0.95]
MB_SCALE = [0.25, 1.0, 2.0]  # c: (tb_sigmoid_s_low, tb_sigmoid_s_high) = c * (2, 1)
ALPHA_RANGE = [0.1, 0.35, 0.5]  # r: llrd-alpha's linear map into [1 - r, 1 + r] on top of LLRD's chosen decay
FAMILIES = ("ft", "llrd", "tempbalance-mb", "llrd-alpha")
STEPS = (("ft",), ("llrd", "tempbalance-mb"), ("llrd-alpha",))  # the order of the tuning steps
PRESETS = {"llrd_decay": 0.9, "r": 0.35}  # protocol (a) has no released setting for these: the library's presets


def _g(x: float) -> str:
    return f"{x:g}"


def stem(model: str, task: str, fraction: float) -> str:
    return f"{model}_{task}_{_g(fraction)}"


def folder(kind: str, model: str, task: str, fraction: float) -> str:
    return (HERE / kind / f"{model}-{task}-{_g(fraction)}").as_posix()


def n_train(task: str, fraction: float) -> int:
    return math.floor(fraction * TRAIN_ROWS[task])


def interval(task: str, fraction: float, batch: int) -> int:
    """The recompute interval that makes about ten spectral passes in a run (besides the one at step 0)."""
    steps = math.ceil(n_train(task, fraction) / batch) * EPOCHS
    return max(1, steps // PASSES)


def mb_setting(fraction: float) -> tuple:
    """The released setting for a ratio; a ratio beyond the released ones takes the largest released (5%)."""
    return MB_RELEASED[fraction if fraction in MB_RELEASED else max(MB_RELEASED)]


def batch_size(fraction: float) -> int:
    """Protocol (b)'s batch size at a ratio: Model Balancing's fine-tuning batch size there, for every method."""
    return mb_setting(fraction)[0][1]


def spectral(task: str, fraction: float, batch: int, **extra) -> dict:
    return {"method": "tempbalance", "tb_update_steps": interval(task, fraction, batch), **extra}


def mb_sigmoid(s_low: float, s_high: float) -> dict:
    return {"tb_preset": "model-balancing", "tb_sigmoid_s_low": s_low, "tb_sigmoid_s_high": s_high}


def llrd_alpha(decay: float, r: float) -> dict:
    return {"tb_preset": "llrd-alpha", "tb_llrd_decay": decay, "tb_lr_min": round(1 - r, 6), "tb_lr_max": 1 + r}


def _lr(x: float) -> str:
    """A learning rate as a trial name says it: 3e-5, 1e-4."""
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _write(name: str, header: list[str], config: dict) -> Path:
    path = HERE / f"{name}.yaml"
    command = f"# python -m recipes.sweep {path.as_posix()} --workers 1"
    lines = [command, "#", *(f"# {line}" for line in textwrap.wrap(" ".join(header), 114))]
    path.write_text("\n".join(lines) + "\n" + yaml.safe_dump(config, sort_keys=False, width=119))
    return path


def _config(out: str, task: str, fraction: float, model: str, seeds, methods: dict, args: dict, contrasts=()):
    config = {
        "output_dir": out,
        "launcher": "inprocess",
        "tasks": {task: {"fractions": [fraction]}},
        "seeds": list(seeds),
        "methods": list(methods),
        "baseline": "ft" if "ft" in methods else next(iter(methods)),
    }
    pairs = [c for c in contrasts if all(m in methods for m in c.split(" vs "))]
    if pairs:
        config["contrasts"] = pairs
    config["args"] = {**MODELS[model], **COMMON, **args}
    config["method_args"] = methods
    return config


def mb_config(model: str, task: str, fraction: float, plan: dict) -> Path:
    """Protocol (a): the first ⌊fraction·N⌋ rows, Model Balancing's released lr and batch per ratio (fine-tuning's
    for ft, llrd and llrd-alpha; TempBalance's with its sigmoid scales for tempbalance-mb), best epoch."""
    (ft_lr, ft_bs), (tb_lr, tb_bs, s_low, s_high) = mb_setting(fraction)
    ft_like = {"learning_rate": ft_lr, "per_device_train_batch_size": ft_bs}
    tb_like = {"learning_rate": tb_lr, "per_device_train_batch_size": tb_bs}
    methods = {
        "ft": {"method": "ft", **ft_like},
        "llrd": {"method": "llrd", "llrd_decay": PRESETS["llrd_decay"], **ft_like},
        "tempbalance-mb": {**spectral(task, fraction, tb_bs, **mb_sigmoid(s_low, s_high)), **tb_like},
        "llrd-alpha": {
            **spectral(task, fraction, ft_bs, **llrd_alpha(PRESETS["llrd_decay"], PRESETS["r"])),
            **ft_like,
        },
    }
    name = stem(model, task, fraction)
    config = _config(
        folder("mb", model, task, fraction), task, fraction, model, plan["mb"], methods,
        {"subset_strategy": "first", "eval_strategy": "epoch"},
        ["tempbalance-mb vs llrd", "llrd-alpha vs llrd"],
    )  # fmt: skip
    header = [
        "The fraction-curve study (PROTOCOL.md beside this file), protocol (a),",
        f"{model} on {task} at {100 * fraction:g}% ({n_train(task, fraction)} examples):",
        "Model Balancing's protocol as published (the first rows of the training set, the same subset for every",
        "seed, 10 epochs, evaluated on dev every epoch, best epoch) with their released per-ratio settings (QNLI's,",
        "the only task released). Written by make_configs.py start.",
    ]
    return _write(f"mb_{name}", header, config)


def _tune_methods(model: str, task: str, fraction: float, chosen: dict) -> dict:
    """The tuning trials of every step whose inputs are chosen (FT's lr; LLRD's decay for llrd-alpha)."""
    bs = batch_size(fraction)
    methods = {f"ft_lr{_lr(lr)}": {"method": "ft", "learning_rate": lr} for lr in FT_LR[model]}
    if "ft" in chosen:
        lr = {"learning_rate": chosen["ft"]["learning_rate"]}
        methods |= {f"llrd_d{_g(d)}": {"method": "llrd", "llrd_decay": d, **lr} for d in LLRD_DECAY}
        for c in MB_SCALE:
            methods[f"tempbalance-mb_c{_g(c)}"] = {**spectral(task, fraction, bs, **mb_sigmoid(2 * c, c)), **lr}
    if "llrd" in chosen:
        d = chosen["llrd"]["llrd_decay"]
        methods |= {
            f"llrd-alpha_r{_g(r)}": {**spectral(task, fraction, bs, **llrd_alpha(d, r)), **lr} for r in ALPHA_RANGE
        }
    return methods


def tune_config(model: str, task: str, fraction: float, plan: dict, chosen: dict | None = None) -> Path:
    chosen = chosen or {}
    methods = _tune_methods(model, task, fraction, chosen)
    step = 1 + ("ft" in chosen) + ("llrd" in chosen)
    config = _config(
        folder("tune", model, task, fraction), task, fraction, model, plan["tune"], methods,
        {"subset_strategy": "random", "stratify": True, "eval_on_train_holdout": HOLDOUT, "eval_strategy": "no",
         "per_device_train_batch_size": batch_size(fraction)},
    )  # fmt: skip
    config["baseline"] = next(iter(methods))
    header = [
        "The fraction-curve study (PROTOCOL.md beside this file), protocol (b)'s tuning,",
        f"{model} on {task} at {100 * fraction:g}% ({n_train(task, fraction)} examples), step {step} of 3:",
        f"final score on {HOLDOUT} held-out TRAINING examples (never dev), stratified random subsets, the tuning",
        "seeds only. Written by make_configs.py (start, then next after each step: the finished trials keep their",
        "settings).",
    ]
    return _write(f"tune_{stem(model, task, fraction)}", header, config)


def ours_config(model: str, task: str, fraction: float, plan: dict, chosen: dict, source: float) -> Path:
    """Protocol (b): stratified random subsets (one per seed, shared by the methods), each method at its setting
    chosen on held-out training examples, one evaluation on dev at the end (the final score)."""
    bs = batch_size(fraction)
    lr = {"learning_rate": chosen["ft"]["learning_rate"]}
    c, d, r = chosen["tempbalance-mb"]["c"], chosen["llrd"]["llrd_decay"], chosen["llrd-alpha"]["r"]
    methods = {
        "ft": {"method": "ft", **lr},
        "llrd": {"method": "llrd", "llrd_decay": d, **lr},
        "tempbalance-mb": {**spectral(task, fraction, bs, **mb_sigmoid(2 * c, c)), **lr},
        "llrd-alpha": {**spectral(task, fraction, bs, **llrd_alpha(d, r)), **lr},
    }
    if plan.get("farms"):
        methods["tempbalance-mb-farms"] = {**methods["tempbalance-mb"], "tb_estimator": "farms"}
    if plan.get("control"):
        frozen = {k: v for k, v in methods["tempbalance-mb"].items() if k != "tb_update_steps"}
        methods["tempbalance-mb-once"] = {**frozen, "tb_update_steps": "once"}
    config = _config(
        folder("ours", model, task, fraction), task, fraction, model, plan["ours"], methods,
        {"subset_strategy": "random", "stratify": True, "eval_strategy": "no", "per_device_train_batch_size": bs},
        ["tempbalance-mb vs llrd", "llrd-alpha vs llrd", "tempbalance-mb-farms vs tempbalance-mb",
         "tempbalance-mb vs tempbalance-mb-once"],
    )  # fmt: skip
    where = "" if source == fraction else f" (chosen at {100 * source:g}%: no tuning at this fraction)"
    header = [
        f"The fraction-curve study (PROTOCOL.md beside this file), protocol (b), {model} on {task} at "
        f"{100 * fraction:g}% ({n_train(task, fraction)} examples): stratified random subsets, each method's setting",
        f"chosen on held-out training examples{where}, one evaluation on dev at the end (the final score).",
        f"Written by make_configs.py next from tune_{stem(model, task, source)}.yaml.",
    ]
    return _write(f"ours_{stem(model, task, fraction)}", header, config)


def choose(config: dict, families) -> tuple[dict, list[str]]:
    """Per family of ``families``: the trial with the highest mean final holdout score over the tuning seeds (a tie
    to 4 decimals goes to the trial listed first), as ``{family: {"variant": name, <its setting>}}``; and the
    selection table's rows. Raises LookupError while a trial of those families has not finished on every tuning
    seed."""
    runs = expand_grid(config)
    results = collect(config["output_dir"], runs)
    if not results.empty and set(results["eval_split"]) != {"train_holdout"}:
        raise ValueError(f"{config['output_dir']}: tuning runs must be evaluated on held-out training examples")
    scores = {}
    for method in config["methods"]:
        fam = method.rsplit("_", 1)[0]
        if fam not in families:
            continue
        got = results[results["method"] == method]["final"] if not results.empty else []
        if len(got) < len(config["seeds"]):
            raise LookupError(method)
        std = float(got.std(ddof=1)) if len(got) > 1 else 0.0
        scores.setdefault(fam, []).append((method, float(got.mean()), std))
    chosen, rows = {}, []
    for fam, trials in scores.items():
        best = max(trials, key=lambda t: round(t[1], 4))  # max keeps the first of equal values
        settings = dict(config["method_args"][best[0]])
        value = {"ft": "learning_rate", "llrd": "llrd_decay"}.get(fam)
        if fam == "tempbalance-mb":
            settings["c"] = settings["tb_sigmoid_s_high"]
        if fam == "llrd-alpha":
            settings["r"] = round(settings["tb_lr_max"] - 1, 6)
        chosen[fam] = {"variant": best[0], **({value: settings[value]} if value else {}), **settings}
        for method, mean, std in trials:
            mark = "**" if method == best[0] else ""
            n = len(config["seeds"])
            rows.append(f"| {fam} | {mark}{method}{mark} | {100 * mean:.2f} ± {100 * std:.2f} | {n} |")
    return chosen, rows


def next_step(path: Path) -> list[Path]:
    """Advance one tuning config (see the module's docstring). Returns the files written (empty: still waiting)."""
    config = load_config(path)
    out = Path(config["output_dir"])
    model, task, fraction = _key(config)
    plan = PLAN[(model, task, fraction)]
    done_families = [fam for step in STEPS for fam in step if any(m.startswith(f"{fam}_") for m in config["methods"])]
    try:
        chosen, rows = choose(config, done_families)
    except LookupError:
        return []
    chosen = {fam: chosen[fam] for fam in done_families}
    if "llrd-alpha" not in chosen:
        return [tune_config(model, task, fraction, plan, chosen)]
    table = ["| method | trial | final holdout score (mean ± std ×100) | seeds |", "|---|---|---|---|", *rows]
    (out / "selection.md").write_text(
        f"Tuning on {HOLDOUT} held-out training examples, {model} on {task} at {100 * fraction:g}%: the chosen trial "
        "of each method in bold (PROTOCOL.md's rule: the highest mean final holdout score over the tuning seeds; a "
        "tie to 4 decimals goes to the trial listed first).\n\n" + "\n".join(table) + "\n"
    )
    (out / "chosen.yaml").write_text(yaml.safe_dump(chosen, sort_keys=False))
    written = [out / "selection.md", out / "chosen.yaml"]
    for (m, t, f), p in PLAN.items():
        if (m, t) == (model, task) and p.get("ours") and (f == fraction or p.get("tuned_at") == fraction):
            written.append(ours_config(m, t, f, p, chosen, fraction))
    return written


def _key(config: dict) -> tuple[str, str, float]:
    ((task, entry),) = config["tasks"].items()
    model = next(m for m, a in MODELS.items() if a["model_name_or_path"] == config["args"]["model_name_or_path"])
    return model, task, float(entry["fractions"][0])


def start() -> list[Path]:
    written = []
    for (model, task, fraction), plan in PLAN.items():
        if plan.get("mb"):
            written.append(mb_config(model, task, fraction, plan))
        if plan.get("tune") and not (HERE / f"tune_{stem(model, task, fraction)}.yaml").exists():
            written.append(tune_config(model, task, fraction, plan))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("start", help="protocol (a)'s configs and step 1 of every tuning config")
    nxt = sub.add_parser("next", help="choose a tuning step's settings and write the next step (or protocol (b))")
    nxt.add_argument("config", type=Path)
    ns = parser.parse_args(argv)
    written = start() if ns.command == "start" else next_step(ns.config)
    print("\n".join(p.as_posix() for p in written) if written else "waiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
