"""Backend selection: NumPy on the CPU or CuPy on a CUDA GPU.

Kernels never consult the global setting: they take ``xp`` from their input
arrays with :func:`get_array_module`, so the same function runs on either
library.  The global backend only decides where *new* arrays (parameters,
minibatches) are created, through :func:`asarray` and :func:`xp`.

The backend is chosen with ``amnp.set_backend("numpy" | "cupy")``, the
``amnp.use_backend(name)`` context manager, or the ``AMNP_BACKEND``
environment variable.  The variable is read the first time the backend matters
(``get_backend()``, an array created with :func:`asarray`, a layer's
parameters), never at import: importing amnp cannot fail because of it.  An
unknown name or an unusable CuPy is then reported with the error
``set_backend`` gives, every time it matters, and nothing falls back to NumPy.
An explicit ``set_backend`` or ``use_backend`` takes precedence over the variable.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

BACKENDS = ("numpy", "cupy")

ENVIRONMENT_VARIABLE = "AMNP_BACKEND"

_current = None  # None until chosen: the first use then reads AMNP_BACKEND
_cupy = None  # the cupy module, imported on first use


def _import_cupy():
    """Import CuPy and make sure a CUDA device answers, or explain what is missing."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy
    except ImportError as exc:  # not installed, or a CUDA library is missing
        raise RuntimeError(
            "the cupy backend needs CuPy, which could not be imported "
            f"({type(exc).__name__}: {exc}). Install it with "
            "'pip install \"amnp[gpu]\"' (CuPy for CUDA 12) or 'pip install \"amnp[gpu-cuda13]\"' "
            "(CUDA 13; nvidia-smi shows the driver's CUDA version) on a machine with a CUDA GPU, "
            "or use the numpy backend."
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, driver missing, ...
        raise RuntimeError(
            "CuPy is installed but no CUDA device is usable "
            f"({type(exc).__name__}: {exc}). The cupy backend needs an NVIDIA GPU with a "
            "working driver; use the numpy backend on this machine."
        ) from None
    if count < 1:
        raise RuntimeError(
            "CuPy is installed but found no CUDA device; use the numpy backend on this machine."
        )
    _cupy = cupy
    return cupy


def cupy_available() -> tuple[bool, str]:
    """Return ``(True, "")`` when the cupy backend can be used, else ``(False, reason)``."""
    try:
        _import_cupy()
    except RuntimeError as exc:
        return False, str(exc)
    return True, ""


def set_backend(name: str) -> None:
    """Choose where new arrays are created: ``"numpy"`` (CPU) or ``"cupy"`` (GPU).

    Raises ValueError for an unknown name and RuntimeError when CuPy or a CUDA
    device is missing.
    """
    global _current
    _check_backend(name)
    _current = name


def _check_backend(name) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name == "cupy":
        _import_cupy()


def environment_backend() -> str | None:
    """The backend named by AMNP_BACKEND (case and surrounding spaces ignored), checked as
    :func:`set_backend` checks a name; None when the variable is unset or empty.

    Raises set_backend's ValueError or RuntimeError, its message prefixed with the variable.
    """
    raw = os.environ.get(ENVIRONMENT_VARIABLE, "")
    name = raw.strip().lower()
    if not name:
        return None
    try:
        _check_backend(name)
    except (ValueError, RuntimeError) as exc:
        raise type(exc)(f"{ENVIRONMENT_VARIABLE}={raw!r}: {exc}") from exc
    return name


def get_backend() -> str:
    """The name of the current backend, ``"numpy"`` or ``"cupy"``.

    Until set_backend is called, this is AMNP_BACKEND's backend, or numpy where the
    variable is unset; a bad value raises here (see :func:`environment_backend`).
    """
    global _current
    if _current is None:
        # Not cached on failure: every later use reports the same error, none falls back.
        _current = environment_backend() or "numpy"
    return _current


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: ``with amnp.use_backend("cupy"): ...`` restores the old backend after
    (an unread AMNP_BACKEND stays unread)."""
    global _current
    previous = _current
    set_backend(name)
    try:
        yield
    finally:
        _current = previous


def xp():
    """The array module of the current backend (numpy or cupy)."""
    return _import_cupy() if get_backend() == "cupy" else np


def _is_cupy_array(a) -> bool:
    # Checked by type name so that NumPy-only machines never import CuPy.
    return type(a).__module__.split(".")[0] == "cupy"


def _is_other_device_array(a) -> bool:
    """Any other array type that names its array module the Array API way
    (``__array_namespace__``), such as the tests' host-transfer guard (tests/host_guard.py),
    which stands in for CuPy on machines without a GPU.  Like CuPy arrays, such arrays are
    copied to the host only by an explicit ``.get()``."""
    return not isinstance(a, (np.ndarray, np.generic)) and hasattr(type(a), "__array_namespace__")


def _kind(a):
    if _is_cupy_array(a):
        return "a CuPy array"
    if isinstance(a, np.ndarray):
        return "a NumPy array"
    if _is_other_device_array(a):
        return f"a {type(a).__name__}"
    return None


def get_array_module(*arrays):
    """Return numpy or cupy according to the arrays given (non-arrays are ignored).

    Mixing NumPy and CuPy arrays in one call is a TypeError, because CuPy would
    otherwise raise an obscure error deep inside a kernel, or copy silently.
    """
    kinds = {}
    for position, a in enumerate(arrays):
        kind = _kind(a)
        if kind is not None:
            kinds.setdefault(kind, (position, a))
    if len(kinds) > 1:
        (first, (i, _)), (second, (j, _)) = sorted(kinds.items(), key=lambda item: item[1][0])[:2]
        raise TypeError(
            f"arrays from different backends were mixed: argument {i} is {first} and "
            f"argument {j} is {second}; move them to one backend with amnp.asarray or amnp.to_numpy"
        )
    if "a CuPy array" in kinds:
        return _import_cupy()
    if kinds and "a NumPy array" not in kinds:
        _, a = next(iter(kinds.values()))
        return a.__array_namespace__()
    return np


def to_numpy(a) -> np.ndarray:
    """Copy an array to the host as a NumPy array (a NumPy array is returned as is)."""
    if _is_cupy_array(a) or _is_other_device_array(a):
        return a.get()
    return np.asarray(a)


def asarray(a, dtype=None):
    """Put ``a`` on the current backend (copying between host and device if needed)."""
    if get_backend() == "cupy":
        return _import_cupy().asarray(a, dtype=dtype)
    return np.asarray(to_numpy(a), dtype=dtype)

