"""Self-checks for the amnp tutorials.

Each ``check_*`` function takes the function a student wrote, runs it on hidden inputs,
and compares it with an independent answer: amnp's own implementation, a reference
written here, or central differences.  On success it prints one ``[ok]`` line; on failure
it raises :class:`CheckFailed`, whose message says what went wrong and, where the wrong
answer looks like a known mistake (wrong axis, ``=`` where ``+=`` belongs, margin on every
column, ...), a hint naming that mistake.

``check_answer(question_id, value)`` checks the answers to the inline questions.

The checks are themselves tested (tests/test_tutorial_checks.py): each is fed planted
wrong answers of the kinds its hints describe and must fail with that hint.

Every tutorial imports this module before amnp; where it sits in a checkout
(tutorials/checks.py beside amnp/), it puts that checkout first on the import path,
so the tutorials run from a checkout without installing amnp.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

_CHECKOUT = Path(__file__).resolve().parents[1]
if (_CHECKOUT / "amnp" / "__init__.py").is_file():
    sys.path.insert(0, str(_CHECKOUT))

from amnp import evaluation  # noqa: E402
from amnp import functional as F  # noqa: E402


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


def _as_float_array(value, what):
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        _fail(f"{what} should be an array of numbers, got {type(value).__name__}")


def _expect_shape(value, shape, what, hint=None):
    value = _as_float_array(value, what)
    if value.shape != tuple(shape):
        _fail(f"{what} has shape {value.shape}, expected {tuple(shape)}", hint)
    return value


def _close(a, b, rtol=1e-6, atol=1e-9):
    return bool(np.allclose(a, b, rtol=rtol, atol=atol))


def _worst(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-12), initial=0.0))


# ==============================================================================================
# Inline questions
# ==============================================================================================
# question id -> (kind, answer, tolerance or None, hint shown on a wrong answer, why shown when right)
ANSWERS = {
    "01.forward_calls": ("number", 24, 0, "central differences evaluate f twice per entry of x",
                         "two forward calls per entry: 2 x 12"),
    "01.double_dout": ("number", 2.0, 1e-9, "backward is linear in dout: J^T (2g) = 2 J^T g",
                       "the vector-Jacobian product is linear in the upstream gradient"),
    "02.float32_best_h": ("choice", "c", None,
                          "balance truncation h^2 against rounding eps/h: h ~ eps^(1/3), eps(float32) ~ 1.2e-7",
                          "eps^(1/3) ~ 5e-3 for float32"),
    "02.rel_at_s30": ("choice", "b", None,
                      "look at the size of the gradient entries behind the largest relative error",
                      "with s = 30 many entries are ~1e-10; relative error compares rounding noise with ~0"),
    "03.col2im_overlap": ("choice", "b", None,
                          "with stride >= kernel every padded pixel belongs to at most one window",
                          "'=' and '+=' differ only where a pixel gets two contributions"),
    "04.radial": ("number", 0.0, 1e-9, "scaling v does not change v/||v||: what does that say about dL/dv along v?",
                  "the normalisation is scale invariant, so its gradient is orthogonal to v"),
    "05.arcface_fallback_c": ("number", math.cos(math.pi - 0.5), 1e-3,
                              "theta + m reaches pi when theta = pi - m",
                              "cos(pi - m) = -cos(m) = -0.8776 for m = 0.5"),
    "06.margin_every_column": ("choice", "c", None,
                               "what does softmax do with a constant added to every logit of a row?",
                               "softmax is shift invariant, so the buggy loss IS a (margin-free) loss and its "
                               "backward is its exact gradient: the gradient check passes"),
    "07.arc_c6": ("number", 9.5, 0.1, "solve cos(t) - m = cos(60 deg - t) for t",
                  "about 9.5 degrees either side of the centre"),
    "08.loss_at_zero": ("number", math.log(9 + math.exp(-30 * 0.35)) + 30 * 0.35, 1e-3,
                        "every logit is 0 except the target's, -s m",
                        "ln(C-1+e^(-sm)) + sm: the margin adds almost exactly s m at initialisation"),
    "09.far_resolution": ("number", 1 / 3000, 1e-9, "FAR only takes the values k / (number of impostor pairs)",
                          "1/3000 = 3.3e-4: a target of 1e-4 on LFW means zero false accepts"),
    "10.sync": ("choice", "b", None, "kernel launches return before the work is done",
                "without synchronising you time the launches, not the work"),
}


def check_answer(question, value):
    """Check the answer to inline question ``question`` (e.g. "01.forward_calls")."""
    if question not in ANSWERS:
        raise KeyError(f"no question {question!r}; known: {', '.join(sorted(ANSWERS))}")
    kind, answer, tolerance, hint, why = ANSWERS[question]
    if kind == "choice":
        right = isinstance(value, str) and value.strip().lower() == answer
    else:
        try:
            right = abs(float(value) - answer) <= tolerance + 1e-12 * abs(answer)
        except (TypeError, ValueError):
            _fail(f"question {question}: the answer should be a number, got {value!r}")
    if not right:
        _fail(f"question {question}: {value!r} is not the answer", hint)
    _ok(f"question {question}", why)


# ==============================================================================================
# Tutorial 1: backward is a vector-Jacobian product
# ==============================================================================================
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
    rng = _rng("numerical_gradient")
    h = 1e-4
    for k, (f, exact) in enumerate(_hidden_scalar_functions()):
        x = rng.standard_normal((3, 4))
        before = x.copy()
        grad = numerical_gradient(f, x, h)
        if not np.array_equal(x, before):
            _fail(f"hidden function {k}: x was changed by your function "
                  f"(largest change {np.max(np.abs(x - before)):.1e})",
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
    """rel_error(a, b) -> max over entries of |a - b| / max(|a| + |b|, 1e-8)."""
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
        got = rel_error(a, b)
        try:
            got = float(got)
        except (TypeError, ValueError):
            _fail(f"rel_error should return one number, got {got!r}")
        want = reference(a, b)
        ratios = np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8)
        if not math.isclose(got, want, rel_tol=1e-9) and math.isclose(got, float(ratios.mean()), rel_tol=1e-9):
            _fail(f"rel_error on {name}: got the mean {got:.3g}, expected {want:.3g}",
                  "take the max over entries, not the mean: the worst entry is the one to see")
        one_sided = [float(np.max(np.abs(a - b) / np.maximum(np.abs(v), 1e-8))) for v in (a, b)]
        if not math.isclose(got, want, rel_tol=1e-9) and any(math.isclose(got, o, rel_tol=1e-9) for o in one_sided):
            _fail(f"rel_error on {name}: got {got:.3g}, expected {want:.3g}",
                  "use the symmetric denominator |a| + |b|, not |a| or |b| alone")
        if math.isnan(got):
            _fail(f"rel_error on {name} returned nan",
                  "0/0 where both entries are 0: divide by max(|a| + |b|, 1e-8), not by |a| + |b|")
        if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-15):
            if name == "entries of opposite sign":
                _fail(f"rel_error on {name}: got {got:.3g}, expected {want:.3g}",
                      "take absolute values: |a - b| and |a| + |b|, or errors of opposite sign cancel")
            if name.startswith("a small entry") and got < want / 2:
                _fail(f"rel_error on {name}: got {got:.3g}, expected {want:.3g}",
                      "take the max over entries, not the mean or a norm ratio: the worst entry is the one to see")
            _fail(f"rel_error on {name}: got {got:.6g}, expected {want:.6g}")
    _ok("rel_error")


def check_numerical_vjp(numerical_vjp):
    """numerical_vjp(f, x, dout, h) -> d<dout, f(x)>/dx for an array-valued f."""
    rng = _rng("numerical_vjp")
    a = rng.standard_normal((4, 3))
    f = lambda x: np.tanh(x @ a)                      # (2, 4) -> (2, 3)
    exact = lambda x, g: (g * (1 - np.tanh(x @ a) ** 2)) @ a.T
    x = rng.standard_normal((2, 4))
    dout = rng.standard_normal((2, 3))
    before = x.copy()
    got = numerical_vjp(f, x, dout, 1e-5)
    if not np.array_equal(x, before):
        _fail("x was changed by your function", "restore each entry after perturbing it")
    got = _expect_shape(got, x.shape, "the gradient", "the gradient has the shape of x, not of f(x)")
    want = exact(x, dout)
    if _worst(got, want) < 1e-6:
        _ok("numerical_vjp", "the scalar <dout, f(x)>, differentiated by central differences")
        return
    if _worst(got, exact(x, np.ones_like(dout))) < 1e-6:
        _fail("your result is the gradient of sum(f(x)), not of <dout, f(x)>",
              "weight the outputs by dout: phi(x) = np.sum(dout * f(x))")
    _fail(f"relative error {_worst(got, want):.1e} against the exact vector-Jacobian product")


# ==============================================================================================
# Tutorial 2: the gradient-check study
# ==============================================================================================
def check_fit_slope(fit_slope):
    """fit_slope(h, err) -> the least-squares slope of log10(err) against log10(h)."""
    rng = _rng("fit_slope")
    h = 10.0 ** -np.arange(1, 6)
    for slope, scale in ((2.0, 3.0), (-1.0, 1e-16)):
        err = scale * h ** slope * np.exp(0.01 * rng.standard_normal(h.size))
        want = np.polyfit(np.log10(h), np.log10(err), 1)[0]
        got = float(fit_slope(h, err))
        if math.isclose(got, -want, rel_tol=1e-6):
            _fail(f"slope {got:.3f}, expected {want:.3f}",
                  "the sign is flipped: regress log(err) on log(h), not on -log(h) or the other way round")
        if not math.isclose(got, want, rel_tol=1e-6):
            if abs(got - want) > 0.5 and not math.isclose(got, 1 / want, rel_tol=1e-3):
                _fail(f"slope {got:.3g}, expected {want:.3f} for err ~ h^{slope:g}",
                      "fit a straight line on the log-log scale: np.polyfit(np.log10(h), np.log10(err), 1)")
            _fail(f"slope {got:.3g}, expected {want:.3f}",
                  "regress log(err) (y) on log(h) (x); the other way round gives about 1/slope")
    _ok("fit_slope", "slopes +2 (truncation) and -1 (rounding) recovered")


def check_crossed_kink(crossed_kink):
    """crossed_kink(f, x, i, h) -> True when the stencil x_i +- h straddles a kink of f,
    detected by the two one-sided differences disagreeing."""
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
        if not np.array_equal(x, before):
            _fail("x was changed by your function", "restore x[i] after perturbing it")
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
    rng = _rng("directional")
    f, exact = _hidden_scalar_functions()[0]
    x = rng.standard_normal((3, 4))
    d = rng.standard_normal((3, 4))
    before = x.copy()
    got = float(directional_derivative(f, x, d, 1e-5))
    if not np.array_equal(x, before):
        _fail("x was changed by your function", "build x + h d as a new array instead of updating x in place")
    want = float(np.sum(exact(x) * d))
    if math.isclose(got, want, rel_tol=1e-7):
        _ok("directional_derivative", "two forward calls for the whole gradient")
        return
    if math.isclose(got, 2 * want, rel_tol=1e-6):
        _fail("twice the directional derivative", "divide by 2h")
    if math.isclose(got, want / np.linalg.norm(d), rel_tol=1e-6):
        _fail("you normalised d", "the analytic side is <grad, d> with the same d: do not rescale it")
    _fail(f"got {got:.6g}, expected {want:.6g}")


# ==============================================================================================
# Tutorial 3: layers by hand
# ==============================================================================================
def check_linear_backward(linear_backward):
    """linear_backward(dout, x, w) -> (dx, dw, db) for out = x w^T + b."""
    rng = _rng("linear")
    x, w, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    out, cache = F.linear_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    want = F.linear_backward(dout, cache)
    got = linear_backward(dout, x, w)
    if not isinstance(got, tuple) or len(got) != 3:
        _fail("linear_backward should return a tuple (dx, dw, db)")
    dx, dw, db = (_as_float_array(g, name) for g, name in zip(got, ("dx", "dw", "db")))
    if dw.shape == w.shape[::-1]:
        _fail(f"dw has shape {dw.shape}, the weight is {w.shape}",
              "dw = dout^T x has the weight's shape (D_out, D_in); x^T dout is its transpose")
    if db.shape == (x.shape[0],):
        _fail(f"db has shape {db.shape}, the bias is {b.shape}",
              "wrong axis: sum dout over the batch axis 0 (one bias per output), not over axis 1")
    for name, g, ref in (("dx", dx, want[0]), ("dw", dw, want[1]), ("db", db, want[2])):
        _expect_shape(g, ref.shape, name)
        if not _close(g, ref):
            if _close(g * x.shape[0], ref):
                _fail(f"{name} is 1/N of the right value", "sum over the batch, do not average: "
                      "the loss's backward already divided by N")
            _fail(f"{name}: relative error {_worst(g, ref):.1e}")
    _ok("linear_backward")


def check_prelu_backward(prelu_backward):
    """prelu_backward(dout, x, a) -> (dx, da), one slope a[c] per channel (axis 1)."""
    rng = _rng("prelu")
    x = rng.standard_normal((3, 4, 2, 2))
    x[np.abs(x) < 0.05] += 0.2            # keep away from the kink
    a = rng.uniform(0.1, 0.4, 4)
    out, cache = F.prelu_forward(x, a)
    dout = rng.standard_normal(out.shape)
    want_dx, want_da = F.prelu_backward(dout, cache)
    got = prelu_backward(dout, x, a)
    if not isinstance(got, tuple) or len(got) != 2:
        _fail("prelu_backward should return a tuple (dx, da)")
    dx, da = _as_float_array(got[0], "dx"), _as_float_array(got[1], "da")
    _expect_shape(dx, x.shape, "dx")
    if da.shape != a.shape:
        _fail(f"da has shape {da.shape}, expected {a.shape}",
              "one slope per channel: sum dout * min(x, 0) over every axis but axis 1")
    if not _close(dx, want_dx):
        if _close(dx, dout * a.reshape(1, -1, 1, 1)):
            _fail("dx uses the slope everywhere", "where x > 0 the layer is the identity: dx = dout there")
        _fail(f"dx: relative error {_worst(dx, want_dx):.1e}")
    if not _close(da, want_da):
        if _close(da, (dout * x).sum(axis=(0, 2, 3))):
            _fail("da includes the positive inputs", "the slope only multiplies the negative part: use min(x, 0)")
        _fail(f"da: relative error {_worst(da, want_da):.1e}")
    _ok("prelu_backward")


def _conv_geometries():
    # (N, C, H, W, kernel, stride, padding): overlapping windows first, then disjoint ones
    return [(2, 3, 5, 5, 3, 1, 1), (2, 2, 7, 6, 3, 2, 1), (1, 2, 4, 4, 2, 2, 0), (2, 1, 6, 6, 3, 3, 0)]


def check_im2col(im2col):
    """im2col(x_padded, kh, kw, stride) -> cols (C*kh*kw, N*Ho*Wo), rows (c, i, j), columns (n, y, x)."""
    rng = _rng("im2col")
    for n, c, hh, ww, k, s, p in _conv_geometries():
        xp_ = rng.standard_normal((n, c, hh + 2 * p, ww + 2 * p))
        out_hw = ((hh + 2 * p - k) // s + 1, (ww + 2 * p - k) // s + 1)
        want = F.im2col(xp_, (k, k), (s, s), out_hw)
        got = _as_float_array(im2col(xp_, k, k, s), "cols")
        if got.shape != want.shape:
            if got.shape == want.shape[::-1]:
                _fail(f"cols has shape {got.shape}, expected {want.shape}",
                      "rows are the C*kh*kw kernel taps, columns the N*Ho*Wo window positions: transpose")
            _fail(f"cols has shape {got.shape}, expected {want.shape} (kernel {k}, stride {s})",
                  "Ho = (Hp - kh) // stride + 1 on the padded input")
        if not np.array_equal(got, want):
            if np.array_equal(np.sort(got, axis=None), np.sort(want, axis=None)):
                _fail("the right numbers in the wrong places",
                      "layout: row index c*kh*kw + i*kw + j (channel-major), column index n*Ho*Wo + y*Wo + x")
            _fail(f"cols differ from amnp.functional.im2col for kernel {k}, stride {s}")
    _ok("im2col")


def check_col2im(col2im):
    """col2im(cols, x_padded_shape, kh, kw, stride) -> (N, C, Hp, Wp), the adjoint of im2col."""
    rng = _rng("col2im")
    wrong_where = []
    for n, c, hh, ww, k, s, p in _conv_geometries():
        shape = (n, c, hh + 2 * p, ww + 2 * p)
        out_hw = ((shape[2] - k) // s + 1, (shape[3] - k) // s + 1)
        cols = rng.standard_normal((c * k * k, n * out_hw[0] * out_hw[1]))
        want = F.col2im(cols, shape, (k, k), (s, s), out_hw)
        got = _expect_shape(col2im(cols, shape, k, k, s), shape, "the result",
                            "col2im returns an array of the padded input's shape")
        if not _close(got, want, rtol=1e-12, atol=1e-12):
            wrong_where.append(s < k)
    if wrong_where:
        if all(wrong_where) and len(wrong_where) == sum(s < k for *_, k, s, _ in _conv_geometries()):
            _fail("right where windows are disjoint (stride >= kernel), wrong where they overlap",
                  "use += , not = : a pixel seen by several windows sums the gradient of every one")
        _fail("col2im differs from amnp.functional.col2im",
              "col2im must satisfy <im2col(x), cols> = <x, col2im(cols)> for all x and cols")
    _ok("col2im", "adjoint of im2col, overlaps summed")


def check_max_pool_backward(max_pool_backward):
    """max_pool_backward(dout, x, k, stride) -> dx: each window's dout goes to its maximum."""
    rng = _rng("maxpool")
    for k, s in ((2, 2), (3, 2), (2, 1)):
        x = rng.permutation(2 * 2 * 6 * 6).reshape(2, 2, 6, 6) / 7.0   # distinct values: no ties
        out, cache = F.max_pool2d_forward(x, k, s)
        dout = rng.standard_normal(out.shape)
        want = F.max_pool2d_backward(dout, cache)
        got = _expect_shape(max_pool_backward(dout, x, k, s), x.shape, "dx")
        if _close(got, want, rtol=1e-12, atol=1e-12):
            continue
        spread = F.avg_pool2d_backward(dout, F.avg_pool2d_forward(x, k, s)[1]) * k * k
        if _close(got, spread) or _close(got, spread / (k * k)):
            _fail("the gradient went to every pixel of each window",
                  "only the maximum of a window influenced the output: route dout to the argmax alone")
        if s < k:
            _fail(f"wrong with overlapping windows (kernel {k}, stride {s})",
                  "use += : one pixel can be the maximum of several overlapping windows")
        _fail(f"dx differs from amnp's max-pool backward (kernel {k}, stride {s})")
    _ok("max_pool_backward")


# ==============================================================================================
# Tutorial 4: the cosine layer
# ==============================================================================================
def check_l2_normalize_backward(l2_normalize_backward):
    """l2_normalize_backward(dy, v) -> dv for y = v / ||v|| (rows)."""
    rng = _rng("l2norm")
    v = rng.standard_normal((4, 5)) * rng.uniform(0.5, 3, (4, 1))
    y, cache = F.l2_normalize_forward(v)
    dy = rng.standard_normal(v.shape)
    want = F.l2_normalize_backward(dy, cache)
    got = _expect_shape(l2_normalize_backward(dy, v), v.shape, "dv")
    if _close(got, want, rtol=1e-6):
        _ok("l2_normalize_backward", "no radial part")
        return
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    if _close(got, dy / norm):
        _fail("dv = dy / ||v||: your dv has a component along v",
              "subtract the radial part: dv = (dy - y (y . dy)) / ||v||; scaling v does not change y")
    if _close(got, want * norm):
        _fail("right direction, wrong size", "divide by ||v|| (row by row)")
    mixed_rows = (dy - y * (y * dy).sum()) / norm   # one projection for the whole batch
    if _close(got, mixed_rows) or _close(got, mixed_rows * norm):
        _fail("the projection mixes rows", "wrong axis: y . dy is one number per row, sum over axis 1 with keepdims")
    _fail(f"dv: relative error {_worst(got, want):.1e}")


def check_cosine_backward(cosine_backward):
    """cosine_backward(dout, x, w) -> (dx, dw) for cos = (x/||x||)(w/||w||)^T."""
    rng = _rng("cosine")
    x, w = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)) * 2
    out, cache = F.cosine_forward(x, w)
    dout = rng.standard_normal(out.shape)
    want_dx, want_dw = F.cosine_backward(dout, cache)
    got = cosine_backward(dout, x, w)
    if not isinstance(got, tuple) or len(got) != 2:
        _fail("cosine_backward should return (dx, dw)")
    dx = _expect_shape(got[0], x.shape, "dx")
    dw = _expect_shape(got[1], w.shape, "dw", "dw has the weight's shape (C, D): dout^T x_hat")
    x_hat = x / np.linalg.norm(x, axis=1, keepdims=True)
    w_hat = w / np.linalg.norm(w, axis=1, keepdims=True)
    if not _close(dw, want_dw):
        if _close(dw, dout.T @ x_hat):
            _fail("dw is dL/dW_hat, the gradient with respect to the NORMALISED weights",
                  "pass it back through each row's normalisation: (g - w_hat (w_hat . g)) / ||w_j||")
        if _close(dw, dout.T @ x):
            _fail("dw uses the raw features", "the cosine layer multiplies normalised features x_hat")
        _fail(f"dw: relative error {_worst(dw, want_dw):.1e}")
    if not _close(dx, want_dx):
        if _close(dx, dout @ w_hat):
            _fail("dx is dL/dx_hat", "pass it back through the feature normalisation too")
        _fail(f"dx: relative error {_worst(dx, want_dx):.1e}")
    _ok("cosine_backward", "exact gradients for x and W")


# ==============================================================================================
# Tutorial 5: margin functions psi(c) and dpsi/dc
# ==============================================================================================
def _margins():
    """amnp's margin module when it exists (the checks then compare with amnp), else None."""
    try:
        from amnp.functional import margins
    except ImportError:
        return None
    return margins


def psi_reference(name):
    """The function a student's psi is compared with: amnp's when amnp has it, else the
    reference written below (``reference_<name>``)."""
    margins = _margins()
    if margins is not None and hasattr(margins, name):
        return getattr(margins, name)
    return globals()["reference_" + name.replace("_margin", "")]


def reference_additive(c, m, conditional=False):
    c = np.asarray(c, dtype=np.float64)
    if conditional:
        apply = c > m
        return c - m * apply, np.ones_like(c)
    return c - m, np.ones_like(c)


def reference_arcface(c, m):
    """cos(theta + m) where theta + m <= pi, else the fallback c - m sin m (insightface)."""
    c = np.clip(np.asarray(c, dtype=np.float64), -1.0, 1.0)
    sin = np.sqrt(np.maximum(1.0 - c * c, 0.0))
    inside = c > math.cos(math.pi - m)
    psi = np.where(inside, c * math.cos(m) - sin * math.sin(m), c - m * math.sin(m))
    slope = math.cos(m) + c * math.sin(m) / np.maximum(sin, 1e-4)  # finite as |c| -> 1, as amnp's
    return psi, np.where(inside, slope, 1.0)


def chebyshev(c, m):
    """cos(m theta) as a polynomial of c = cos theta, and its derivative in c."""
    T_prev, T = np.ones_like(c), c
    dT_prev, dT = np.zeros_like(c), np.ones_like(c)
    if m == 0:
        return T_prev, dT_prev
    for _ in range(m - 1):
        T_prev, T = T, 2 * c * T - T_prev
        dT_prev, dT = dT, 2 * T_prev + 2 * c * dT - dT_prev
    return T, dT


def reference_sphereface(c, m):
    """psi = (-1)^k cos(m theta) - 2k, k = floor(m theta / pi), for integer m."""
    c = np.clip(np.asarray(c, dtype=np.float64), -1.0, 1.0)
    k = np.zeros(c.shape, dtype=np.int64)
    for j in range(1, m + 1):          # k counts the sector boundaries cos(j pi / m) above c
        k += c <= math.cos(j * math.pi / m)
    k = np.minimum(k, m - 1)
    T, dT = chebyshev(c, m)
    sign = np.where(k % 2 == 0, 1.0, -1.0)
    return sign * T - 2 * k, sign * dT


def reference_combined(c, m1, m2, m3):
    """cos(m1 theta + m2) - m3, without fallback (insightface's combined margin)."""
    c = np.clip(np.asarray(c, dtype=np.float64), -1.0, 1.0)
    theta = np.arccos(c)
    slope = m1 * np.sin(m1 * theta + m2) / np.maximum(np.sin(theta), 1e-4)
    return np.cos(m1 * theta + m2) - m3, slope


def _psi_grid():
    c = np.linspace(-0.98, 0.98, 397)
    return c


def _check_psi(name, student, reference, args, kinks, extra_hints=()):
    c = _psi_grid()
    away = np.all([np.abs(c - k) > 2e-3 for k in kinks], axis=0) if kinks else np.ones_like(c, bool)
    got = student(c, *args)
    if not isinstance(got, tuple) or len(got) != 2:
        _fail(f"{name} should return (psi, dpsi)")
    psi = _expect_shape(got[0], c.shape, "psi")
    dpsi = _expect_shape(got[1], c.shape, "dpsi")
    want_psi, want_dpsi = reference(c, *args)
    for test, hint in extra_hints:
        message = test(c, psi, dpsi, want_psi, want_dpsi)
        if message:
            _fail(f"{name}: {message}", hint)
    if not _close(psi[away], want_psi[away], rtol=1e-9, atol=1e-9):
        bad = c[away][np.argmax(np.abs(psi[away] - want_psi[away]))]
        _fail(f"{name}: psi differs from the reference, worst at c = {bad:.3f}")
    if np.allclose(dpsi[away], -want_dpsi[away], rtol=1e-6, atol=1e-9) and not np.allclose(want_dpsi[away], 0):
        _fail(f"{name}: dpsi/dc has the wrong sign", "differentiate with respect to c = cos(theta), not theta")
    if not _close(dpsi[away], want_dpsi[away], rtol=1e-7, atol=1e-9):
        h = 1e-6
        numeric = (student(c + h, *args)[0] - student(c - h, *args)[0]) / (2 * h)
        bad = c[away][np.argmax(np.abs(dpsi[away] - want_dpsi[away]))]
        if _close(dpsi[away], np.asarray(numeric)[away] * -np.sqrt(1 - c[away] ** 2), rtol=1e-4, atol=1e-6):
            _fail(f"{name}: your dpsi is d psi / d theta", "the loss needs d psi / d c; d theta / d c = -1/sin(theta)")
        _fail(f"{name}: dpsi/dc differs from the reference, worst at c = {bad:.3f}",
              "check it against central differences of your own psi")
    _ok(name)


def _monotone(c, psi, *_):
    """psi must fall as theta grows, i.e. grow with c."""
    if np.any(np.diff(psi) < -1e-9):
        return f"psi is not monotone: it falls as c grows near c = {c[1:][np.diff(psi) < -1e-9][0]:.3f}"
    return None


def check_additive_margin(additive_margin):
    """additive_margin(c, m, conditional=False) -> (psi, dpsi): psi = c - m (only where c > m
    when conditional)."""
    m = 0.35

    def every_c_ignored(c, psi, dpsi, want, *_):
        return "psi is c everywhere: the margin is missing" if _close(psi, c) else None

    _check_psi("additive_margin", additive_margin, psi_reference("additive_margin"), (m,), [],
               [(every_c_ignored, "psi(c) = c - m: subtract the margin")])
    got = additive_margin(_psi_grid(), m, True)
    want = psi_reference("additive_margin")(_psi_grid(), m, True)
    c = _psi_grid()
    away = np.abs(c - m) > 2e-3
    if not _close(np.asarray(got[0])[away], want[0][away]):
        if _close(np.asarray(got[0])[away], c[away] - m * (c[away] < m)):
            _fail("conditional margin applied on the wrong side",
                  "the Caffe rule subtracts m only where c > m (the target already beats the margin)")
        _fail("conditional=True: psi differs from the reference (margin only where c > m)")
    _ok("additive_margin (conditional)")


def check_arcface_margin(arcface_margin):
    """arcface_margin(c, m) -> (psi, dpsi): cos(theta + m), falling back to c - m sin m where
    theta + m would pass pi (c <= cos(pi - m))."""
    m = 0.5

    def no_fallback(c, psi, *_):
        if _close(psi, np.cos(np.arccos(c) + m)):
            return "psi = cos(theta + m) everywhere: it turns back up once theta + m passes pi"
        return None

    _check_psi("arcface_margin", arcface_margin, psi_reference("arcface_margin"), (m,), [math.cos(math.pi - m)],
               [(no_fallback, "where c <= cos(pi - m) use the fallback c - m sin(m), which keeps psi monotone"),
                (_monotone, "use the fallback c - m sin(m) where c <= cos(pi - m)")])


def check_sphereface_margin(sphereface_margin):
    """sphereface_margin(c, m) -> (psi, dpsi) with psi = (-1)^k cos(m theta) - 2k."""
    m = 4
    kinks = [math.cos(j * math.pi / m) for j in range(1, m)]

    def no_k(c, psi, *_):
        if _close(psi, chebyshev(c, m)[0]):
            return "psi = cos(m theta) alone: it oscillates instead of decreasing"
        return None

    _check_psi("sphereface_margin", sphereface_margin, psi_reference("sphereface_margin"), (m,), kinks,
               [(no_k, "apply (-1)^k and subtract 2k, with k = floor(m theta / pi) the sector index"),
                (_monotone, "k = floor(m theta / pi): count the boundaries cos(j pi / m) that c lies below")])


def check_combined_margin(combined_margin):
    """combined_margin(c, m1, m2, m3) -> (psi, dpsi) with psi = cos(m1 theta + m2) - m3."""
    for args in ((1.0, 0.3, 0.2), (1.0, 0.0, 0.35), (1.2, 0.2, 0.1)):
        def order(c, psi, *_, args=args):
            m1, m2, m3 = args
            if not _close(psi, np.cos(m1 * np.arccos(c) + m2) - m3) and _close(
                    psi, np.cos(m1 * (np.arccos(c) + m2)) - m3):
                return "psi = cos(m1 (theta + m2)) - m3"
            return None
        _check_psi(f"combined_margin{args}", combined_margin, psi_reference("combined_margin"), args, [],
                   [(order, "the multiplicative margin scales theta only: cos(m1 theta + m2) - m3")])


# ==============================================================================================
# Tutorial 6: AM-Softmax forward and backward
# ==============================================================================================
def reference_am_softmax(cos, labels, m, s, conditional=False):
    loss, cache = F.am_softmax_forward(cos, labels, m=m, s=s, conditional=conditional)
    return float(loss), F.am_softmax_backward(1.0, cache)


def _am_inputs(name):
    rng = _rng(name)
    cos = rng.uniform(-0.8, 0.9, (6, 5))
    labels = rng.integers(0, 5, 6)
    # keep the target cosines away from the conditional margin's jump at c = m
    rows = np.arange(6)
    target = cos[rows, labels]
    target[np.abs(target - 0.35) < 0.05] += 0.1
    cos[rows, labels] = target
    return cos, labels


def check_am_softmax_forward(am_softmax_forward):
    """am_softmax_forward(cos, labels, m, s, conditional=False) -> loss (a float, batch mean)."""
    cos, labels = _am_inputs("amfwd")
    for m, s, conditional in ((0.35, 30.0, False), (0.2, 10.0, False), (0.35, 30.0, True)):
        got = float(am_softmax_forward(cos.copy(), labels, m, s, conditional))
        want, _ = reference_am_softmax(cos, labels, m, s, conditional)
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        plain, _ = reference_am_softmax(cos, labels, 0.0, s)
        if math.isclose(got, plain, rel_tol=1e-9):
            _fail(f"m = {m}: your loss equals the margin-free loss",
                  "margin on every column? softmax ignores a shift of the whole row: subtract m "
                  "from the target column only")
        if math.isfinite(got) is False:
            _fail(f"the loss is {got}", "subtract the row maximum before exp, and use log-softmax")
        if math.isclose(got, want * len(labels), rel_tol=1e-9):
            _fail("the loss is N times too large", "take the mean over the batch, not the sum")
        if conditional:
            _fail("conditional=True: wrong loss", "subtract m only in rows whose target cosine exceeds m")
        _fail(f"m = {m}, s = {s}: loss {got:.6f}, expected {want:.6f}")
    big = np.full((2, 3), 0.9)
    if not math.isfinite(float(am_softmax_forward(big, np.array([0, 1]), 0.35, 1000.0))):
        _fail("the loss overflows for s = 1000", "subtract the row maximum before exp, and use log-softmax")
    _ok("am_softmax_forward")


def check_am_softmax_backward(am_softmax_backward):
    """am_softmax_backward(cos, labels, m, s, conditional=False) -> dloss/dcos, (N, C)."""
    cos, labels = _am_inputs("ambwd")
    for m, s, conditional in ((0.35, 30.0, False), (0.2, 10.0, False), (0.35, 30.0, True)):
        got = _expect_shape(am_softmax_backward(cos.copy(), labels, m, s, conditional), cos.shape, "dcos")
        _, want = reference_am_softmax(cos, labels, m, s, conditional)
        if _close(got, want, rtol=1e-7, atol=1e-12):
            continue
        _, plain = reference_am_softmax(cos, labels, 0.0, s)
        if _close(got, plain, rtol=1e-7, atol=1e-12):
            _fail(f"m = {m}: your gradient equals the margin-free gradient",
                  "margin on every column? (shifting a whole row changes nothing) - only the target column moves")
        if _close(got, want / s, rtol=1e-7, atol=1e-12):
            _fail("the gradient is 1/s of the right one", "z = s (c - m [j = y]): the chain rule brings a factor s")
        if _close(got, want * len(labels), rtol=1e-7, atol=1e-12):
            _fail("the gradient is N times too large", "the loss is a mean: divide by N")
        _fail(f"m = {m}, s = {s}: relative error {_worst(got, want):.1e}")
    _ok("am_softmax_backward")


def margin_only_on_target_test(loss_fn, s=30.0, m=0.35, num_classes=10):
    """The test gradient checks cannot replace: at cosines exactly 0 the loss must be
    ln(C-1+e^(-sm)) + sm (a margin on every column gives ln C).  Returns (got, expected)."""
    cos = np.zeros((4, num_classes))
    labels = np.arange(4) % num_classes
    return float(loss_fn(cos, labels, m, s, False)), math.log(num_classes - 1 + math.exp(-s * m)) + s * m


# ==============================================================================================
# Tutorial 7: geometry
# ==============================================================================================
def check_margin_arc(margin_arc):
    """margin_arc(num_classes, m) -> degrees: with C evenly spaced class centres on a circle,
    the half-width of the arc around a centre where cos(t) - m > cos(360/C - t)."""
    for c, m in ((6, 0.35), (4, 0.2), (6, 0.0), (8, 0.35)):
        gap = math.radians(360 / c)
        if 1 - m <= math.cos(gap):
            want = 0.0
        else:  # cos t - m - cos(gap - t) = 0  <=>  2 sin(gap/2) sin(gap/2 - t) = m
            want = math.degrees(gap / 2 - math.asin(m / (2 * math.sin(gap / 2))))
        got = float(margin_arc(c, m))
        if math.isclose(got, want, abs_tol=1e-3):
            continue
        if math.isclose(got, math.degrees(math.acos(1 - m)), abs_tol=1e-3):
            _fail(f"C = {c}, m = {m}: {got:.2f} degrees is where cos t = 1 - m",
                  "the margin is against the NEIGHBOUR: solve cos(t) - m = cos(360/C - t)")
        if want == 0.0:
            _fail(f"C = {c}, m = {m}: expected 0 (the margin cannot be met: 1 - m <= cos(360/C))")
        _fail(f"C = {c}, m = {m}: got {got:.3f} degrees, expected {want:.3f}")
    _ok("margin_arc")


# ==============================================================================================
# Tutorial 8: choosing s and m
# ==============================================================================================
def target_probability(s, m, num_classes):
    """p_y when the target cosine is 1 and the other C-1 are -1/(C-1) (a regular simplex)."""
    target = s * (1 - m)
    other = -s / (num_classes - 1)
    return 1.0 / (1.0 + (num_classes - 1) * math.exp(other - target))


def check_smallest_scale(smallest_scale):
    """smallest_scale(num_classes, m, p) -> the smallest s with target_probability(s, m, C) >= p."""
    for c, m, p in ((10, 0.0, 0.99), (10516, 0.35, 0.9), (2, 0.2, 0.999), (1000, 0.0, 0.5)):
        got = float(smallest_scale(c, m, p))
        lo, hi = 0.0, 1e4        # bisection on the monotone target_probability
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if target_probability(mid, m, c) >= p else (mid, hi)
        want = hi
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        other_zero = math.log((c - 1) * p / (1 - p)) / (1 - m)
        if math.isclose(got, other_zero, rel_tol=1e-6):
            _fail(f"C = {c}, m = {m}, p = {p}: got {got:.4f}, expected {want:.4f}",
                  "the other classes sit at cos = -1/(C-1) at best (a regular simplex), not at 0")
        if math.isclose(got, math.log(p / (1 - p)) / (1 - m + 1 / (c - 1)), rel_tol=1e-6):
            _fail(f"C = {c}: got {got:.4f}, expected {want:.4f}",
                  "there are C - 1 other classes: their exponentials add up, ln((C-1) p / (1-p))")
        if m and math.isclose(got, math.log((c - 1) * p / (1 - p)) / (1 + 1 / (c - 1)), rel_tol=1e-6):
            _fail(f"m = {m}: got {got:.4f}, expected {want:.4f}", "the target logit is s (1 - m): include the margin")
        _fail(f"C = {c}, m = {m}, p = {p}: got {got:.4f}, expected {want:.4f}")
    _ok("smallest_scale", "matches bisection on the softmax itself")


def check_margin_ramp(margin_at):
    """margin_at(step, m, gamma) -> min(m, gamma * step)."""
    for step, m, gamma in ((0, 0.35, 1e-3), (100, 0.35, 1e-3), (1000, 0.35, 1e-3), (10**6, 0.4, 5e-5)):
        want = min(m, gamma * step)
        got = float(margin_at(step, m, gamma))
        if not math.isclose(got, want, abs_tol=1e-12):
            if math.isclose(got, gamma * step):
                _fail(f"step {step}: {got:g} exceeds the final margin {m}", "cap the ramp: min(m, gamma t)")
            _fail(f"step {step}: margin {got:g}, expected {want:g}")
    _ok("margin_at")


# ==============================================================================================
# Tutorial 9: the verification protocol
# ==============================================================================================
def _pairs(name, n=600, separation=1.5):
    rng = _rng(name)
    same = np.arange(n) % 2 == 0
    scores = np.round(np.where(same, rng.normal(separation, 1, n), rng.normal(0, 1, n)), 2)  # ties on purpose
    folds = (np.arange(n) // 2) % 10   # every fold holds same and different pairs
    return scores, same, folds


def check_best_threshold(best_threshold):
    """best_threshold(scores, same) -> t maximising the accuracy of 'same when score >= t'."""
    scores, same, _ = _pairs("threshold")
    t = float(best_threshold(scores, same))
    best = np.mean((scores >= evaluation.best_threshold(scores, same)) == same)
    got = np.mean((scores >= t) == same)
    if got < best:
        flipped = np.mean((scores > t) == same)
        if flipped >= best:
            _fail(f"accuracy {got:.4f} at your threshold, best is {best:.4f}",
                  "the rule is score >= t; with tied scores, > and >= differ: use midpoints between distinct scores")
        _fail(f"accuracy {got:.4f} at your threshold {t:.4f}, the best threshold reaches {best:.4f}")
    _ok("best_threshold")


def check_kfold_accuracy(kfold_accuracy):
    """kfold_accuracy(scores, same, folds) -> mean test accuracy over the folds."""
    scores, same, folds = _pairs("kfold", separation=1.0)
    want = evaluation.kfold_verification(scores, same, folds)["mean"]
    got = float(kfold_accuracy(scores, same, folds))
    if math.isclose(got, want, abs_tol=1e-12):
        _ok("kfold_accuracy", "threshold fitted on the other folds")
        return
    leaky = np.mean([np.mean((scores[folds == k] >= evaluation.best_threshold(scores[folds == k], same[folds == k]))
                             == same[folds == k]) for k in range(10)])
    everything = np.mean((scores >= evaluation.best_threshold(scores, same)) == same)
    if math.isclose(got, leaky, abs_tol=1e-12) or math.isclose(got, everything, abs_tol=1e-12):
        _fail(f"accuracy {got:.4f}, expected {want:.4f}: your threshold saw the test fold",
              "fit the threshold on the OTHER folds (folds != k), measure on fold k")
    _fail(f"accuracy {got:.4f}, expected {want:.4f}")


def check_roc(roc):
    """roc(scores, same) -> (far, tar), both starting at 0 and ending at 1."""
    scores, same, _ = _pairs("roc")
    far, tar = (np.asarray(a, dtype=np.float64) for a in roc(scores, same))
    want_far, want_tar, _ = evaluation.roc_curve(scores, same)
    if far.shape == want_far.shape and _close(far, want_tar) and _close(tar, want_far):
        _fail("far and tar are swapped", "FAR counts DIFFERENT pairs accepted, TAR counts SAME pairs accepted")
    if far.shape != want_far.shape or not (_close(far, want_far) and _close(tar, want_tar)):
        if far.size and (far[0] != 0 or tar[0] != 0 or far[-1] != 1 or tar[-1] != 1):
            _fail("the curve must run from (0, 0) (accept nothing) to (1, 1) (accept everything)")
        _fail("your ROC differs from amnp.evaluation.roc_curve",
              "one point per distinct score, thresholds descending; tied scores are accepted together")
    _ok("roc")


def check_tar_at_far(tar_at_far):
    """tar_at_far(scores, same, far) -> largest TAR whose FAR does not exceed far."""
    scores, same, _ = _pairs("tar")
    for target in (1e-1, 1e-2, 1 / 300, 1e-4):
        want = evaluation.tar_at_far(scores, same, [target])[target]
        got = float(tar_at_far(scores, same, target))
        if math.isclose(got, want, abs_tol=1e-12):
            continue
        if got > want:
            _fail(f"FAR {target:g}: TAR {got:.4f}, expected {want:.4f}",
                  "your threshold accepts more impostors than the target allows: at most "
                  "floor(target * #different) false accepts")
        _fail(f"FAR {target:g}: TAR {got:.4f}, expected {want:.4f}")
    _ok("tar_at_far")


def check_eer(eer):
    """eer(scores, same) -> equal error rate (FAR = 1 - TAR, interpolated on the ROC)."""
    scores, same, _ = _pairs("eer")
    want = evaluation.equal_error_rate(scores, same)
    got = float(eer(scores, same))
    if abs(got - want) <= 2 / len(scores):
        _ok("eer", f"{got:.4f} (amnp: {want:.4f})")
        return
    if abs((1 - got) - want) <= 2 / len(scores):
        _fail(f"EER {got:.4f}, expected {want:.4f}", "the EER is an error rate: FAR (or FRR = 1 - TAR), not TAR")
    _fail(f"EER {got:.4f}, expected {want:.4f}")


def amnp_dir_at_far(gallery, gallery_labels, probes, probe_labels, far):
    """amnp.evaluation.dir_at_far with the tutorial's arguments: cosine similarity of the
    probe and gallery embeddings, one target FAR."""
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    p = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    return evaluation.dir_at_far(p @ g.T, gallery_labels, probe_labels, [far])[float(far)]


def _open_set(name):
    rng = _rng(name)
    ids = 40
    centres = rng.standard_normal((ids, 16))
    gallery_labels = np.arange(20)                       # identities 0..19 enrolled
    gallery = centres[:20] + 0.6 * rng.standard_normal((20, 16))
    probe_labels = rng.integers(0, ids, 400)             # half of them unseen identities
    probes = centres[probe_labels] + 0.6 * rng.standard_normal((400, 16))
    return gallery, gallery_labels, probes, probe_labels


def check_dir_at_far(dir_at_far):
    """dir_at_far(gallery, gallery_labels, probes, probe_labels, far) -> DIR at that FAR."""
    gallery, gallery_labels, probes, probe_labels = _open_set("dir")
    for far in (0.1, 0.01, 0.0):
        want = amnp_dir_at_far(gallery, gallery_labels, probes, probe_labels, far)
        got = float(dir_at_far(gallery, gallery_labels, probes, probe_labels, far))
        if math.isclose(got, want, abs_tol=1e-12):
            continue
        g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        p = probes / np.linalg.norm(probes, axis=1, keepdims=True)
        s = p @ g.T
        genuine = np.isin(probe_labels, gallery_labels)
        rank1 = float(np.mean((gallery_labels[s.argmax(axis=1)] == probe_labels)[genuine]))
        if math.isclose(got, rank1, abs_tol=1e-12):
            _fail(f"FAR {far}: {got:.4f} is the closed-set rank-1 rate",
                  "also require the best score to pass the threshold set on the impostor probes")
        if got > want:
            _fail(f"FAR {far}: DIR {got:.4f}, expected {want:.4f}",
                  "set the threshold from the IMPOSTOR probes' best scores (probes whose identity is not "
                  "enrolled), letting at most floor(far * #impostors) through")
        _fail(f"FAR {far}: DIR {got:.4f}, expected {want:.4f}")
    _ok("dir_at_far")


# ==============================================================================================
# Tutorial 10: timing a training step honestly
# ==============================================================================================
class FakeDevice:
    """Simulates an asynchronous device: ``launch()`` queues work and returns at once,
    ``synchronize()`` waits for the queued work (``work_s`` seconds per launch)."""

    def __init__(self, work_s=0.02):
        self.work_s, self.pending = work_s, 0

    def launch(self):
        self.pending += 1

    def synchronize(self):
        time.sleep(self.pending * self.work_s)
        self.pending = 0


def check_measure(measure):
    """measure(step, synchronize, repeats) -> median seconds per step, measured honestly:
    warm up, synchronise before starting the clock and before stopping it."""
    device = FakeDevice(0.02)
    device.launch(); device.launch(); device.launch()      # work queued before the measurement
    got = float(measure(device.launch, device.synchronize, 5))
    if got < 0.01:
        _fail(f"{got * 1e3:.2f} ms per step for 20 ms of work: you timed the launch, not the work",
              "call synchronize() before reading the clock at the end of each step")
    if got > 0.05:
        _fail(f"{got * 1e3:.1f} ms per step for 20 ms of work: earlier work leaked into your measurement",
              "synchronise (and warm up) BEFORE starting the clock, so queued work is not counted")
    _ok("measure", f"{got * 1e3:.1f} ms for a 20 ms step")
