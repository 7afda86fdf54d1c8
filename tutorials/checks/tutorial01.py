"""Checks of Tutorial 1: backward is a vector-Jacobian product."""
from __future__ import annotations

import math

import numpy as np

from amnp import gradcheck

from .common import _as_number, _check_derived, _close, _expect_shape, _fail, _ok, _rng, _unchanged, _worst, guarded

# amnp's own versions of this tutorial's exercises: an answer that calls one scores 0
IMPLEMENTATIONS = (gradcheck.numerical_gradient, gradcheck.rel_error, gradcheck.check_function)


def _hidden_scalar_functions():
    """(f, exact gradient) pairs of scalar functions of an array."""
    return [
        (lambda x: float(np.sum(x ** 3) / 3 + np.sum(np.sin(x))), lambda x: x ** 2 + np.cos(x)),
        (lambda x: float(np.log(np.sum(np.exp(x)))), lambda x: np.exp(x) / np.sum(np.exp(x))),
        (lambda x: float(np.sum(x[:, :-1] * x[:, 1:] ** 2)),
         lambda x: np.pad(x[:, 1:] ** 2, ((0, 0), (0, 1))) + np.pad(2 * x[:, :-1] * x[:, 1:], ((0, 0), (1, 0)))),
    ]


def check_numerical_gradient(numerical_gradient):
    """numerical_gradient(f, x, h) -> array like x: central differences of the scalar f(x),
    one entry at a time, with every entry of x restored."""
    numerical_gradient = guarded(numerical_gradient, "numerical_gradient", IMPLEMENTATIONS)
    rng = _rng("numerical_gradient")
    h = 1e-4
    for k, (f, exact) in enumerate(_hidden_scalar_functions()):
        x = rng.standard_normal((3, 4))
        before = x.copy()
        grad = numerical_gradient(f, x, h)
        _unchanged(before, x, f"hidden function {k}: x",
                   "restore each entry after perturbing it (save it, and put it back in a finally: block)")
        grad = _expect_shape(grad, x.shape, "the gradient",
                             "return one partial derivative per entry of x, in x's shape")
        want = exact(x)
        if _worst(grad, want) < 1e-6:
            continue
        forward = np.array([(f(_moved(x, i, h)) - f(x)) / h for i in range(x.size)]).reshape(x.shape)
        all_at_once = (f(x + h) - f(x - h)) / (2 * h)
        if _close(grad, 2 * want, rtol=1e-5):
            _fail(f"hidden function {k}: your gradient is twice the true one",
                  "the central difference divides by 2h, the distance between x - h and x + h")
        if _close(grad, want / 2, rtol=1e-3):
            _fail(f"hidden function {k}: your gradient is half the true one",
                  "your second point is x, not x - h (did you subtract h from x + h?); "
                  "set the entry from the saved original each time")
        if _close(grad, forward, rtol=1e-9, atol=1e-12):
            _fail(f"hidden function {k}: your gradient is the one-sided difference (f(x+h) - f(x)) / h",
                  "its error is O(h); the central difference (f(x+h) - f(x-h)) / 2h has error O(h^2)")
        if _close(grad, np.full(x.shape, all_at_once), rtol=1e-6):
            _fail(f"hidden function {k}: every entry of your gradient is the same number",
                  "you moved every entry of x at once: perturb one entry (x.flat[i]) at a time")
        _fail(f"hidden function {k}: relative error {_worst(grad, want):.1e} against the exact gradient")
    _ok("numerical_gradient", "central differences, input restored")


def _moved(x, i, step):
    y = x.copy()
    y.flat[i] += step
    return y


def check_rel_error(rel_error):
    """rel_error(a, b) -> max over entries of |a - b| / max(|a| + |b|, 1e-8).  A floor added to
    the denominator instead, |a - b| / (|a| + |b| + 1e-8), is accepted: it differs by < 1e-5 here."""
    rel_error = guarded(rel_error, "rel_error", IMPLEMENTATIONS)

    def reference(a, b):
        return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8)))

    cases = {
        "entries of opposite sign": (np.array([1.0, -2.0, 3.0]), np.array([-1.0, -2.0, 3.0])),
        "entries that are both 0": (np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0 + 1e-6])),
        "a small entry with a large error next to large correct entries":
            (np.array([1e-3, 100.0, 100.0]), np.array([2e-3, 100.0, 100.0])),
        "swapped arguments": (np.array([1.0, 4.0]), np.array([3.0, 4.0])),
    }
    for name, (a, b) in cases.items():
        got = _as_number(rel_error(a.copy(), b.copy()), "rel_error's result",
                         "return the worst entry's ratio as one float: float(np.max(...))")
        want = reference(a, b)
        if math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-15):
            continue
        shown = f"rel_error on {name}: got {got:.6g}, expected {want:.6g}"
        if math.isnan(got):
            _fail(f"rel_error on {name} returned nan",
                  "0/0 where both entries are 0: divide by max(|a| + |b|, 1e-8), not by |a| + |b|")
        ratios = np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8)
        if math.isclose(got, float(ratios.mean()), rel_tol=1e-9):
            _fail(shown, "take the max over entries, not the mean: the worst entry is the one to see")
        one_sided = [float(np.max(np.abs(a - b) / np.maximum(np.abs(v), 1e-8))) for v in (a, b)]
        if any(math.isclose(got, o, rel_tol=1e-9) for o in one_sided):
            _fail(shown, "use the symmetric denominator |a| + |b|, not |a| or |b| alone")
        if name == "entries of opposite sign":
            _fail(shown, "take absolute values: |a - b| and |a| + |b|, or errors of opposite sign cancel")
        if name.startswith("a small entry") and got < want / 2:
            _fail(shown, "take the max over entries, not the mean or a norm ratio: the worst entry is the one to see")
        _fail(shown)
    _ok("rel_error")


def check_numerical_vjp(numerical_vjp):
    """numerical_vjp(f, x, dout, h) -> d<dout, f(x)>/dx for an array-valued f."""
    numerical_vjp = guarded(numerical_vjp, "numerical_vjp", IMPLEMENTATIONS)
    rng = _rng("numerical_vjp")
    a = rng.standard_normal((4, 3))
    f = lambda x: np.tanh(x @ a)                      # (2, 4) -> (2, 3)
    exact = lambda x, g: (g * (1 - np.tanh(x @ a) ** 2)) @ a.T
    x = rng.standard_normal((2, 4))
    dout = rng.standard_normal((2, 3))
    before = x.copy()
    got = numerical_vjp(f, x, dout, 1e-5)
    _unchanged(before, x, "x", "restore each entry after perturbing it")
    got = _expect_shape(got, x.shape, "the gradient", "the gradient has the shape of x, not of f(x)")
    want = exact(x, dout)
    if _worst(got, want) < 1e-6:
        _ok("numerical_vjp", "the scalar <dout, f(x)>, differentiated by central differences")
        return
    if _worst(got, exact(x, np.ones_like(dout))) < 1e-6:
        _fail("your result is the gradient of sum(f(x)), not of <dout, f(x)>",
              "weight the outputs by dout: phi(x) = np.sum(dout * f(x))")
    _fail(f"relative error {_worst(got, want):.1e} against the exact vector-Jacobian product")


def check_softmax_backward(softmax, softmax_backward):
    """softmax_backward(dout, x) -> dL/dx for y = softmax(x) row by row, checked against central
    differences of ``softmax`` (the forward in the tutorial)."""
    softmax_backward = guarded(softmax_backward, "softmax_backward", IMPLEMENTATIONS)
    x = _rng("softmax").standard_normal((3, 5))

    def reference(x):
        z = np.exp(x - x.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def y(x):
        return reference(x)

    _check_derived("softmax_backward", softmax, softmax_backward, [x], reference, {0: "dx"}, [
        (lambda g, x: g * y(x) * (1 - y(x)),
         "that is only the Jacobian's diagonal: y_j depends on every x_i of its row, "
         "dy_j/dx_i = y_j ([i = j] - y_i)"),
        (lambda g, x: y(x) * (g - (g * y(x)).sum()),
         "wrong axis: the sum <g, y> is one number per row (axis=1, keepdims=True), not one for the batch"),
        (lambda g, x: y(x) * ((g * y(x)).sum(axis=1, keepdims=True) - g), "the sign is flipped"),
        (lambda g, x: g * y(x) - y(x) * g.sum(axis=1, keepdims=True),
         "the row sum weighs g by y: J^T g = y * (g - sum_j g_j y_j)"),
    ])
