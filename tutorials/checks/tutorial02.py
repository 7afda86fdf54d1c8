"""Checks of Tutorial 2: the gradient-check study."""
from __future__ import annotations

import math

import numpy as np

from amnp import gradcheck

from .common import _as_number, _fail, _ok, _rng, _unchanged, guarded
from .tutorial01 import _hidden_scalar_functions

# amnp's own versions of this tutorial's exercises: an answer that calls one scores 0
IMPLEMENTATIONS = (gradcheck.numerical_gradient, gradcheck.directional_check, gradcheck.check_layer,
                   gradcheck.check_function)


def check_fit_slope(fit_slope):
    """fit_slope(h, err) -> the least-squares slope of log10(err) against log10(h), over every point."""
    fit_slope = guarded(fit_slope, "fit_slope", IMPLEMENTATIONS)
    rng = _rng("fit_slope")
    h = 10.0 ** -np.arange(1, 6)
    for slope, scale in ((2.0, 3.0), (-1.0, 1e-16)):
        err = scale * h ** slope * np.exp(0.05 * rng.standard_normal(h.size))
        x, y = np.log10(h), np.log10(err)
        want = np.polyfit(x, y, 1)[0]
        got = _as_number(fit_slope(h, err), "fit_slope's result",
                         "return the slope alone: np.polyfit returns [slope, intercept], so take [0]")
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        shown = f"slope {got:.4g}, expected {want:.4f} for err ~ h^{slope:g}"
        if math.isclose(got, -want, rel_tol=1e-6):
            _fail(shown, "the sign is flipped: regress log(err) on log(h), not on -log(h)")
        if math.isclose(got, (y[-1] - y[0]) / (x[-1] - x[0]), rel_tol=1e-6):
            _fail(shown, "that is the line through the first and last points: fit all of them by least squares "
                         "(np.polyfit(np.log10(h), np.log10(err), 1))")
        if math.isclose(got, np.polyfit(y, x, 1)[0], rel_tol=1e-6):
            _fail(shown, "regress log(err) (y) on log(h) (x); the other way round gives about 1/slope")
        if math.isclose(got, np.polyfit(h, err, 1)[0], rel_tol=1e-6) or math.isclose(
                got, np.polyfit(np.log(h), err, 1)[0], rel_tol=1e-6):
            _fail(shown, "fit a straight line on the log-log scale: take the log of both h and err")
        _fail(shown, "fit a straight line on the log-log scale: np.polyfit(np.log10(h), np.log10(err), 1)")
    _ok("fit_slope", "slopes +2 (truncation) and -1 (rounding) recovered")


def check_crossed_kink(crossed_kink):
    """crossed_kink(f, x, i, h) -> True when the stencil x_i +- h straddles a kink of f,
    detected by the two one-sided differences disagreeing."""
    crossed_kink = guarded(crossed_kink, "crossed_kink", IMPLEMENTATIONS)
    relu_sum = lambda x: float(np.sum(np.maximum(x, 0)))
    smooth = lambda x: float(np.sum(np.exp(2 * x)))      # curved, but kink free
    abs_sum = lambda x: float(np.sum(np.abs(x - 0.3)))
    h = 1e-5
    x = np.array([0.5, -2e-6, 3e-6, -0.7, 0.3 + 4e-6])
    expected = {  # (function, index) -> crossed?
        ("relu", 0): False, ("relu", 1): True, ("relu", 2): True, ("relu", 3): False,
        ("smooth", 0): False, ("smooth", 3): False, ("abs", 4): True, ("abs", 0): False,
    }
    functions = {"relu": relu_sum, "smooth": smooth, "abs": abs_sum}
    for (name, i), want in expected.items():
        before = x.copy()
        got = crossed_kink(functions[name], x, i, h)
        _unchanged(before, x, "x", "restore x[i] after perturbing it")
        if not isinstance(got, (bool, np.bool_)):
            _fail(f"crossed_kink should return True or False, got {type(got).__name__} {got!r:.60}",
                  "return the comparison itself: abs(forward - backward) > tolerance")
        if bool(got) != want:
            if want:
                _fail(f"{name} at x[{i}] = {x[i]:.1e} (h = {h:g}): the stencil crosses the kink at "
                      f"{0.3 if name == 'abs' else 0}, but you said it does not",
                      "compare the forward difference (f(x+h)-f(x))/h with the backward one "
                      "(f(x)-f(x-h))/h: across a kink they differ by O(1), not O(h)")
            _fail(f"{name} at x[{i}] = {x[i]:.1e}: no kink within h, but you said there is one",
                  "on a smooth function the one-sided differences differ by about h |f''|: "
                  "use a relative tolerance well above that (e.g. 1e-3), not an exact comparison")
    _ok("crossed_kink", "one-sided differences disagree exactly where the stencil straddles a kink")


def check_directional_derivative(directional_derivative):
    """directional_derivative(f, x, d, h) -> (f(x + h d) - f(x - h d)) / 2h."""
    directional_derivative = guarded(directional_derivative, "directional_derivative", IMPLEMENTATIONS)
    rng = _rng("directional")
    f, exact = _hidden_scalar_functions()[0]
    x = rng.standard_normal((3, 4))
    d = rng.standard_normal((3, 4))
    before, direction = x.copy(), d.copy()
    got = _as_number(directional_derivative(f, x, d, 1e-5), "the directional derivative",
                     "return one number: the change of f along d, not a gradient")
    _unchanged(before, x, "x", "build x + h d as a new array instead of updating x in place")
    _unchanged(direction, d, "d", "build h d as a new array instead of scaling d in place")
    want = float(np.sum(exact(x) * d))
    if math.isclose(got, want, rel_tol=1e-7):
        _ok("directional_derivative", "two forward calls for the whole gradient")
        return
    shown = f"got {got:.6g}, expected {want:.6g}"
    if math.isclose(got, -want, rel_tol=1e-6):
        _fail(f"{shown}: the sign is flipped", "f(x + h d) comes first: (f(x + h d) - f(x - h d)) / 2h")
    if math.isclose(got, 2 * want, rel_tol=1e-6):
        _fail(f"{shown}: twice the directional derivative", "divide by 2h")
    if math.isclose(got, want / np.linalg.norm(d), rel_tol=1e-6):
        _fail(f"{shown}: you normalised d", "the analytic side is <grad, d> with the same d: do not rescale it")
    _fail(shown)
