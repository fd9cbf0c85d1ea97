"""Option values as the library stores them: Python numbers, checked against their ranges, with messages that name
the option and say what is allowed. Torch- and transformers-free (``--help`` answers at once)."""

from __future__ import annotations

import math
import numbers
import re

__all__ = [
    "FACTOR_RANGES", "check_int", "check_range", "choice", "flag", "integer", "real",
    "to_float", "update_steps",
]  # fmt: skip

#: Sane ranges of the factor options (name, low, high, low open): factors stay within 1e-3..1e3 of the base
#: learning rate. Model Balancing used s in 0.25..2 and τ = 10; TempBalance 0.5..1.5.
FACTOR_RANGES = (
    ("lr_min", 0.0, 100.0, True),
    ("lr_max", 0.0, 100.0, True),
    ("tau", 0.0, 1000.0, True),
    ("s_low", 0.0, 6.0, False),
    ("s_high", 0.0, 6.0, False),
)


def to_float(name: str, value) -> float:
    """``value`` as a Python float: any real number (a numpy or 0-d torch scalar too, which a checkpoint could not
    store); a bool, a string or anything else is a ValueError naming ``name``."""
    if _is_scalar_tensor(value):
        value = value.item()
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or _is_numpy_bool(value):
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    return float(value)


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_numpy_bool(value) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")


def _is_scalar_tensor(value) -> bool:
    return type(value).__name__ in ("Tensor", "Parameter") and getattr(value, "ndim", None) == 0


def check_range(name: str, value, low: float, high: float, *, low_open: bool = False, why: str = "") -> float:
    """``value`` as a float, or a ValueError naming ``name`` unless it is a finite number in [low, high] ((low, high]
    with ``low_open``). The message states the range, so a typo or an absurd setting is caught before training."""
    bracket = "(" if low_open else "["
    message = f"{name} must be a finite number in {bracket}{low:g}, {high:g}]{why}, got {value!r}"
    if isinstance(value, str) and _parses_as_float(value):
        message += (
            " (text, not a number: in YAML write 0.8 or 8.0e-1, since YAML 1.1 reads 8e-1 without a dot as text)"
        )
    try:
        number = to_float(name, value)
    except ValueError:
        raise ValueError(message) from None
    if not (math.isfinite(number) and (number > low if low_open else number >= low) and number <= high):
        raise ValueError(message)
    return number


def check_int(name: str, value, low: int, high: int, *, why: str = "") -> int:
    """``value`` as an int, or a ValueError naming ``name`` and the range [low, high]. Any integer type counts (a
    numpy integer from a config or a sweep grid, a 0-d integer tensor); bool does not, nor does a float, even 50.0."""
    if _is_scalar_tensor(value) and not value.is_floating_point() and not value.is_complex():
        value = value.item()
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high):
        raise ValueError(f"{name} must be an integer in [{low}, {high}]{why}, got {value!r}")
    return int(value)


def choice(allowed):
    def check(name, value):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        return value

    return check


def flag(name, value):
    if _is_scalar_tensor(value) and str(value.dtype) == "torch.bool":
        value = bool(value.item())
    if _is_numpy_bool(value):
        value = bool(value)
    if not isinstance(value, bool):  # a string such as "false" would count as True
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def real(low, high, *, low_open=False, why=""):
    return lambda name, value: check_range(name, value, low, high, low_open=low_open, why=why)


def integer(low, high, *, why="", optional=False):
    def check(name, value):
        return None if optional and value is None else check_int(name, value, low, high, why=why)

    return check


def update_steps(name, value):
    if _is_scalar_tensor(value) and not value.is_floating_point() and str(value.dtype) != "torch.bool":
        value = value.item()
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):  # numpy integers too
        text = str(int(value))
    else:
        text = None
    # ASCII digits only: '²' and other Unicode digits pass str.isdigit() but not int()
    if text is None or (text not in ("auto", "once") and not (re.fullmatch(r"[0-9]+", text) and int(text) > 0)):
        raise ValueError(f"{name} must be 'auto', 'once' or a positive integer, got {value!r}")
    return text if text in ("auto", "once") else str(int(text))
