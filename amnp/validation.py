"""Input checks shared by the ops, layers and losses.

Every check raises ValueError or TypeError with a message that starts with the
name of the op, layer or loss (``where``), says what was expected and what came,
so a wrong input never travels deep into a kernel to fail there obscurely, or
worse, to produce a wrong answer silently.  The policy: a wrong type or dtype is a
TypeError, a wrong shape or value a ValueError.

Shapes, dtypes and backends are always checked.  The checks of *values* (labels in
range, finite scores) read values back from the device, which on a GPU stalls it
until it catches up; a training loop that checked its labels once turns them off
for its steps with ``value_checks(False)``, and watches the loss instead.
"""
from __future__ import annotations

import contextlib
import numbers
import threading

import numpy as np

from .backend import get_array_module, to_numpy


_switch = threading.local()


def values_checked() -> bool:
    """Whether the value checks run in this thread (see ``value_checks``); on by default."""
    return getattr(_switch, "on", True)


@contextlib.contextmanager
def value_checks(on: bool):
    """Within the block, in this thread, run the checks that read values back from the
    device (``on``) or skip them (the kernels then trust their inputs' values)."""
    previous = values_checked()
    _switch.on = bool(on)
    try:
        yield
    finally:
        _switch.on = previous


def pair(value, name: str, where: str) -> tuple[int, int]:
    """Turn an int or an (h, w) pair of ints into a tuple ``(h, w)``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value), int(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"{where}: {name} must be an int or a pair of ints (h, w), got {value!r}")


def positive_int(value, name: str, where: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def floating_array(x, ndim: int, layout: str, where: str, name: str = "input"):
    """Check that ``x`` is a floating-point array with ``ndim`` dimensions (``layout`` names them)."""
    if not hasattr(x, "ndim") or not hasattr(x, "dtype"):
        raise TypeError(f"{where}: {name} must be a NumPy or CuPy array, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(
            f"{where}: {name} must have {ndim} dimensions {layout}, got shape {tuple(x.shape)}"
        )
    if x.dtype.kind != "f":
        raise TypeError(f"{where}: {name} must be a floating-point array, got dtype {x.dtype}")


def same_dtype(where: str, **arrays) -> None:
    """Refuse mixed float32/float64 operands, which would silently promote or lose precision."""
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"{where}: operands must share one dtype, got {listing}")


class NonFiniteError(ValueError):
    """NaN or Inf where finite numbers are needed (a diverging training run raises it)."""


def finite(x, where: str, name: str) -> None:
    """Reads one value back from the device (an explicit, counted transfer)."""
    xp = get_array_module(x)
    if not bool(to_numpy(xp.isfinite(x).all())):
        raise NonFiniteError(f"{where}: {name} contains NaN or Inf")


def class_labels(labels, num_samples: int, num_classes: int, where: str) -> None:
    """Labels must be integers in [0, num_classes), one per sample.

    Checked before any indexing: NumPy and CuPy wrap negative indices silently
    and CuPy wraps out-of-range ones too, which would train on the wrong class.
    The range check reads the labels back from the device: it is a value check,
    skipped within ``value_checks(False)`` (labels checked when they entered).
    """
    if not hasattr(labels, "dtype") or not hasattr(labels, "ndim"):
        raise TypeError(f"{where}: labels must be an integer array, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != num_samples:
        raise ValueError(
            f"{where}: expected one label per sample, shape ({num_samples},), "
            f"got shape {tuple(labels.shape)}"
        )
    if num_samples == 0 or not values_checked():
        return
    low, high = int(to_numpy(labels.min())), int(to_numpy(labels.max()))
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{where}: labels must lie in [0, {num_classes - 1}] for {num_classes} classes, "
            f"got values from {low} to {high}"
        )


def matching_state(given: dict, own: dict, where: str = "", complete: bool = True) -> None:
    """Check that the arrays ``given`` ({name: array}) can replace ``own`` ({name: array}):
    no name ``own`` lacks, every name of ``own`` when ``complete``, the same shapes and the
    same dtypes.  Raises ValueError naming every mismatch (TypeError when only dtypes
    differ), the message starting with ``where``; the one check of state dicts, optimizer
    state and checkpoints."""
    problems, dtypes = [], []
    missing = sorted(set(own) - set(given)) if complete else []
    unexpected = sorted(set(given) - set(own))
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    for name in sorted(set(given) & set(own)):
        if tuple(given[name].shape) != tuple(own[name].shape):
            problems.append(f"{name} has shape {tuple(given[name].shape)}, "
                            f"the model needs {tuple(own[name].shape)}")
        elif np.dtype(given[name].dtype) != np.dtype(own[name].dtype):
            dtypes.append(f"{name} has dtype {given[name].dtype}, the model needs {own[name].dtype}")
    if problems or dtypes:
        message = "; ".join(problems + dtypes)
        raise (ValueError if problems else TypeError)(f"{where}: {message}" if where else message)


def integer_array(values, name: str, ndim: int | None = None) -> np.ndarray:
    """``values`` as an int64 NumPy array (with ``ndim`` dimensions, when given): TypeError
    for other than integers, ValueError for another number of dimensions."""
    array = np.asarray(values)
    if array.size == 0:  # an empty list has dtype float64 and is still a valid empty array
        array = array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {array.shape}")
    return array.astype(np.int64, copy=False)


def row_indices(values, size: int, name: str, what: str):
    """``values`` as an int64 NumPy array of indices into the ``size`` rows of ``what``
    (:func:`integer_array`), ValueError when one lies outside [0, size).  Negative indices
    are refused on purpose: NumPy would wrap them around to the end of the array and pick
    the wrong row."""
    indices = integer_array(values, name)
    if indices.size == 0:
        return indices
    if indices.min() < 0 or indices.max() >= size:
        raise ValueError(f"{name} must index {what} (0..{size - 1}): out of range, "
                         f"found values from {indices.min()} to {indices.max()}")
    return indices


def window(kernel_size, stride, padding, where: str):
    """Normalise a sliding-window geometry to three (h, w) pairs and check it.

    ``stride=None`` means stride = kernel_size (the pooling default).
    """
    kernel = pair(kernel_size, "kernel_size", where)
    stride = kernel if stride is None else pair(stride, "stride", where)
    padding = pair(padding, "padding", where)
    if min(kernel) <= 0 or min(stride) <= 0 or min(padding) < 0:
        raise ValueError(
            f"{where}: kernel_size and stride must be positive and padding >= 0, got "
            f"kernel_size={kernel}, stride={stride}, padding={padding}"
        )
    return kernel, stride, padding
