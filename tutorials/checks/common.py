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


def _numerical_vjp(forward, inputs, index, dout, h=1e-6):
    """d<dout, forward(*inputs)>/d inputs[index] by central differences, entry by entry."""
    x = inputs[index]
    grad = np.zeros_like(x, dtype=np.float64)
    for i in range(x.size):
        original = x.flat[i]
        try:
            x.flat[i] = original + h
            plus = float(np.sum(dout * np.asarray(forward(*inputs), dtype=np.float64)))
            x.flat[i] = original - h
            minus = float(np.sum(dout * np.asarray(forward(*inputs), dtype=np.float64)))
        finally:
            x.flat[i] = original
        grad.flat[i] = (plus - minus) / (2 * h)
    return grad


def _check_derived(name, forward, backward, inputs, reference_forward, wrt, mistakes=(), rng=None):
    """A backward pass the student derived, checked by central differences of the forward in
    the tutorial (itself compared with ``reference_forward`` first).

    ``backward(dout, *inputs)`` returns the gradient for each input named in ``wrt`` (a dict
    {input index: name}; one gradient, or a tuple in that order); ``mistakes`` are (function
    of (dout, *inputs) giving the same tuple, hint) pairs for known wrong derivations."""
    rng = rng if rng is not None else _rng(name)
    out = _as_float_array(forward(*[a.copy() for a in inputs]), "the forward's output")
    want_out = np.asarray(reference_forward(*inputs), dtype=np.float64)
    if out.shape != want_out.shape or not _close(out, want_out, rtol=1e-9, atol=1e-12):
        _fail(f"{name}: the forward function given in the tutorial does not compute what the text says",
              "the check differentiates that forward: restore it as it was")
    dout = rng.standard_normal(want_out.shape)
    before = [a.copy() for a in inputs]
    got = backward(dout, *inputs)
    for original, after in zip(before, inputs):
        _unchanged(original, after, "an input", "compute on copies; the caller still needs its arrays")
    got = (got,) if len(wrt) == 1 and not isinstance(got, tuple) else got
    got = _expect_tuple(got, tuple(wrt.values()), name)
    numeric = [_numerical_vjp(forward, [a.copy() for a in inputs], index, dout) for index in wrt]
    results = [_expect_shape(g, inputs[index].shape, what) for g, (index, what) in zip(got, wrt.items())]
    if all(_close(g, n, rtol=1e-5, atol=1e-8) for g, n in zip(results, numeric)):
        _ok(name, "agrees with central differences of the forward")
        return
    for mistake, hint in mistakes:
        wrong = mistake(dout, *inputs)
        wrong = (wrong,) if not isinstance(wrong, tuple) else wrong
        if all(_close(g, w, rtol=1e-7, atol=1e-10) for g, w in zip(results, wrong)):
            _fail(f"{name}: your gradient differs from central differences of the forward", hint)
    bad = [(what, _worst(g, n)) for g, n, what in zip(results, numeric, wrt.values()) if not _close(g, n, 1e-5, 1e-8)]
    _fail(f"{name}: {bad[0][0]} differs from central differences of the forward (relative error {bad[0][1]:.1e})",
          "derive it again step by step, and compare each step with central differences")
