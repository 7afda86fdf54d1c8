"""A test-only array backend that refuses to reach the host unless asked, as CuPy does.

On a GPU every implicit device-to-host copy (``float(loss)``, ``if (x > 0).any():``,
``np.asarray(grad)``, ``x.item()``) stalls the device until it has caught up.  CuPy
makes most of them visible: ``__array__`` raises, and the rest (``float``, ``bool``,
``item``) copy silently.  :class:`GuardedArray` wraps a NumPy array and raises
:class:`HostTransfer` on *every* implicit conversion, and counts the explicit ones
(``.get()``, which ``amnp.to_numpy`` calls), so that a CPU-only test can prove that a
piece of code never reads device values back.

amnp finds the array module through ``__array_namespace__`` (see
``amnp.backend.get_array_module``), so every kernel runs unchanged on guarded arrays,
and new arrays they create (``xp.zeros``...) are guarded too.  Mixing a guarded array
with a plain NumPy array in one operation is a TypeError, as mixing CuPy and NumPy is.

How to use it on any piece of amnp (the trainer, a head, an evaluation loop):

    from tests.host_guard import guard, guard_parameters, transfers

    guard_parameters(model)                # parameters become guarded arrays in place
    x = guard(x_host)                      # inputs too (an upload, never counted)
    with transfers() as count:             # count explicit downloads within the block
        ...the code under test...          # an implicit download raises HostTransfer
    assert count.downloads == 0

Code that must report a value (a loss to log) should collect device arrays and call
``amnp.to_numpy`` once, outside the step; then the count says exactly how many times.
"""
from __future__ import annotations

import contextlib
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin


class HostTransfer(TypeError):
    """An implicit device-to-host conversion: the value would have been read back silently."""


class _Counter:
    downloads = 0


_counter = _Counter()


def _refuse(what):
    raise HostTransfer(
        f"{what} would copy a device array to the host implicitly; call amnp.to_numpy(...) "
        "(or .get()) where a host value is really needed, outside the training step")


def _unwrap(value, host_arrays_allowed=False):
    """GuardedArray -> its NumPy array, recursively through tuples, lists and dicts."""
    if isinstance(value, GuardedArray):
        return value._data
    if isinstance(value, np.ndarray) and not host_arrays_allowed:
        raise TypeError("a NumPy (host) array was mixed with guarded (device) arrays; "
                        "move it with amnp.asarray first")
    if isinstance(value, (tuple, list)):
        return type(value)(_unwrap(v, host_arrays_allowed) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, host_arrays_allowed) for k, v in value.items()}
    return value


def _wrap(value):
    """NumPy results -> GuardedArray; NumPy scalars become 0-d device arrays, as in CuPy."""
    if isinstance(value, (np.ndarray, np.generic)):
        return GuardedArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class _Namespace(types.ModuleType):
    """The array module of guarded arrays: NumPy's functions on unwrapped arguments, with
    results wrapped.  ``asarray``/``array`` accept host data (an upload, like cupy.asarray)."""

    _UPLOADS = ("asarray", "array", "ascontiguousarray")

    def __getattr__(self, name):
        attribute = getattr(np, name)
        if not callable(attribute) or isinstance(attribute, type):
            return attribute  # constants (inf, newaxis) and dtypes (float32)
        allow_host = name in self._UPLOADS

        def call(*args, **kwargs):
            return _wrap(attribute(*_unwrap(args, allow_host), **_unwrap(kwargs, allow_host)))

        call.__name__ = name
        return call


namespace = _Namespace("host_guard_numpy")


def _as_strided(x, shape=None, strides=None):
    """A strided view of the guarded array's memory, as cupy.lib.stride_tricks.as_strided."""
    return _wrap(np.lib.stride_tricks.as_strided(_unwrap(x), shape, strides))


# the one NumPy submodule function amnp calls (the channels-last convolution's window view)
namespace.lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(as_strided=_as_strided))


class GuardedArray(NDArrayOperatorsMixin):
    """A NumPy array standing in for a device array: arithmetic, indexing and methods work
    and return guarded arrays; implicit conversions to host values raise HostTransfer."""

    __slots__ = ("_data",)

    def __init__(self, data):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"GuardedArray wraps a NumPy array, got {type(data).__name__}")
        self._data = data

    # --- what the Array API and amnp.backend look for
    def __array_namespace__(self, api_version=None):
        return namespace

    def get(self):
        """The explicit download: a NumPy copy, counted."""
        _counter.downloads += 1
        return self._data.copy()

    # --- metadata is known on the host without a transfer, as on a GPU
    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    strides = property(lambda self: self._data.strides)
    flags = property(lambda self: self._data.flags)
    T = property(lambda self: GuardedArray(self._data.T))

    def __len__(self):
        return len(self._data)

    def __repr__(self):  # no values: printing a device array would download it
        return f"GuardedArray(shape={self.shape}, dtype={self.dtype})"

    # --- implicit conversions to host values: all refused
    def __array__(self, dtype=None, copy=None):
        _refuse("np.asarray / __array__")

    def __float__(self):
        _refuse("float()")

    def __int__(self):
        _refuse("int()")

    def __index__(self):
        _refuse("using an array as an index (__index__)")

    def __complex__(self):
        _refuse("complex()")

    def __bool__(self):
        _refuse("bool() / if on an array")

    def item(self, *args):
        _refuse(".item()")

    def tolist(self):
        _refuse(".tolist()")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    # --- operations stay on the "device"
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs)))

    def __array_function__(self, func, types, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getitem__(self, key):
        return _wrap(self._data[_unwrap(key)])

    def __setitem__(self, key, value):
        self._data[_unwrap(key)] = _unwrap(value)

    def __getattr__(self, name):  # ndarray methods: reshape, transpose, sum, argmax, copy ...
        if name.startswith("__"):  # __array_interface__ & co. would hand NumPy the host memory
            raise AttributeError(name)
        attribute = getattr(self._data, name)
        if not callable(attribute):
            return _wrap(attribute)

        def method(*args, **kwargs):
            return _wrap(attribute(*_unwrap(args), **_unwrap(kwargs)))

        return method


def guard(a) -> GuardedArray:
    """Put a host array on the guarded "device" (a copy, like cupy.asarray)."""
    return GuardedArray(np.array(a))


def guard_parameters(model) -> None:
    """Replace every parameter of an amnp layer or model by a guarded copy, in place."""
    for _, owner, key in model.named_parameters():
        owner.params[key] = guard(owner.params[key])


@contextlib.contextmanager
def transfers():
    """Count explicit downloads (``.get()``, ``amnp.to_numpy``) made within the block."""
    result = _Counter()
    start = _counter.downloads
    try:
        yield result
    finally:
        result.downloads = _counter.downloads - start
