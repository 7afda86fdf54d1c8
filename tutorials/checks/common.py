"""What every tutorial's checks share: the failure type, the [ok] line, hidden inputs, the
comparison helpers, and the guard that refuses an answer which calls amnp's own version of
the exercise (or a function of these checks)."""
from __future__ import annotations

import sys

import numpy as np


class CheckFailed(AssertionError):
    """A student's answer is wrong; the message carries the hint."""


def show(path):
    """Display a saved figure inline when running in a notebook; do nothing in a plain script."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    if get_ipython() is not None:
        display(Image(filename=str(path)))


def _fail(what, hint=None):
    raise CheckFailed(what + (f"\nhint: {hint}" if hint else ""))


def _ok(name, detail=""):
    print(f"[ok] {name}" + (f": {detail}" if detail else ""))


def _rng(name):
    """A generator seeded by the check's name: hidden, but the same inputs every run."""
    return np.random.default_rng([ord(ch) for ch in name])


LOW_PRECISION = (np.float16, np.float32)


def _refuse_low_precision(value, what):
    dtype = getattr(value, "dtype", None)
    if dtype is not None and dtype in LOW_PRECISION:
        _fail(f"{what} is {dtype}, but the inputs are float64 and the check compares to about 1e-9",
              "keep float64: do not cast with astype(np.float32), and create arrays with the input's "
              "dtype (np.zeros_like(x), or dtype=np.float64)")


def _as_float_array(value, what):
    _refuse_low_precision(value, what)
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        _fail(f"{what} should be an array of numbers, got {type(value).__name__}")


def _as_number(value, what, hint=None):
    """One float from a student's answer, or a CheckFailed saying what came back instead."""
    _refuse_low_precision(value, what)
    if isinstance(value, (bool, np.bool_)):
        _fail(f"{what} should be a number, got the boolean {value!r}", hint)
    size = getattr(value, "size", None)
    if size is not None and size != 1:
        _fail(f"{what} should be one number, got an array of shape {np.shape(value)}", hint)
    try:
        return float(np.asarray(value).reshape(()) if size == 1 else value)
    except (TypeError, ValueError):
        _fail(f"{what} should be one number, got {type(value).__name__} {value!r:.60}", hint)


def _expect_shape(value, shape, what, hint=None):
    value = _as_float_array(value, what)
    if value.shape != tuple(shape):
        _fail(f"{what} has shape {value.shape}, expected {tuple(shape)}", hint)
    return value


def _expect_tuple(value, names, function):
    if not isinstance(value, tuple) or len(value) != len(names):
        _fail(f"{function} should return a tuple ({', '.join(names)}), got {type(value).__name__}")
    return value


def _close(a, b, rtol=1e-6, atol=1e-9):
    return bool(np.allclose(a, b, rtol=rtol, atol=atol))


def _worst(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-12), initial=0.0))


def _unchanged(before, after, what, hint):
    if not np.array_equal(before, after):
        _fail(f"{what} was changed by your function (largest change "
              f"{np.max(np.abs(np.asarray(after, np.float64) - before)):.1e})", hint)


# Public helpers the tutorials' own cells use; every other function of these checks is off limits
# inside an answer.
TUTORIAL_HELPERS = {"show", "target_probability", "margin_only_on_target_test"}


def _own_functions():
    """{code object: dotted name} of the module-level functions of this checks package."""
    package = __name__.rpartition(".")[0]
    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + ".")):
            continue
        for attribute, value in vars(module).items():
            code = getattr(value, "__code__", None)
            if (code is not None and getattr(value, "__module__", None) == name
                    and attribute not in TUTORIAL_HELPERS):
                found[code] = f"checks.{attribute}"
    return found


def _qualified(function):
    return f"{function.__module__}.{function.__qualname__}"


def guarded(student, exercise, implementations):
    """``student`` wrapped so that a call which reaches one of ``implementations`` (amnp's own
    version of what the exercise asks for) or a function of these checks fails with a
    CheckFailed naming it: such an answer is not the student's work.

    Calls are seen through ``sys.setprofile``, so the function is caught however it was
    imported or renamed, and also when it is reached through another function (a layer's
    backward, say)."""
    forbidden = {fn.__code__: _qualified(fn) for fn in implementations}
    forbidden.update(_own_functions())

    def call(*args, **kwargs):
        reached = []

        def watch(frame, event, _arg):
            if event == "call" and not reached and frame.f_code in forbidden:
                reached.append(forbidden[frame.f_code])

        previous = sys.getprofile()
        sys.setprofile(watch)
        try:
            return student(*args, **kwargs)
        finally:
            sys.setprofile(previous)
            if reached:
                _fail(f"{exercise}: your answer calls {reached[0]}, which already implements what this "
                      f"exercise asks for; it scores 0",
                      "write it yourself from the formulas in the text (amnp is there to compare with)")

    return call
