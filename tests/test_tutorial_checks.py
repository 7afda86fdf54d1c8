"""The tutorials' self-checks (tutorials/checks/) are themselves checked: each accepts the
teacher's solution and rejects planted wrong answers of the kinds its hints describe, with
that hint; an answer that calls amnp's own implementation of the exercise is refused."""
import ast
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
sys.path.insert(0, str(TUTORIALS))
import build  # noqa: E402
import checks  # noqa: E402
from checks import CheckFailed  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # planted answers divide by 0

from amnp import evaluation  # noqa: E402
from amnp import functional as F  # noqa: E402


def rejects(check, answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        check(answer)


def teacher(number):
    """The exercise functions of the teacher's tutorial ``number`` (its solutions) and the
    functions their checks take, defined together so that those calling each other
    (numerical_vjp -> numerical_gradient) work."""
    path = next(TUTORIALS.glob(f"{number:02d}_*.py"))
    source = path.read_text(encoding="utf-8")
    names = {name for e in build.exercises(source) if e.kind == "exercise"     # and the forwards they are checked with
             for name in [e.name, *(node.id for node in ast.walk(ast.parse(e.check)) if isinstance(node, ast.Name))]}
    tree = ast.parse(build.solution_source(source))
    functions = ast.Module([node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names],
                           type_ignores=[])
    namespace = {"np": np, "math": math, "time": time}
    exec(compile(functions, str(path), "exec"), namespace)
    return types.SimpleNamespace(**namespace)


T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11 = (teacher(n) for n in range(1, 12))


# ---------------------------------------------------------------------------- tutorial 1
def central(f, x, h, restore=True, denominator=2.0, one_sided=False, all_at_once=False, minus_from_plus=False):
    """A numerical gradient with one switchable mistake."""
    if all_at_once:
        return np.full(x.shape, (f(x + h) - f(x - h)) / (2 * h))
    grad = np.zeros_like(x)
    for i in range(x.size):
        original = x.flat[i]
        x.flat[i] = original + h
        plus = f(x)
        if one_sided:
            x.flat[i] = original
        elif minus_from_plus:
            x.flat[i] -= h          # back to the original, not to x - h
        else:
            x.flat[i] = original - h
        minus = f(x)
        if restore:
            x.flat[i] = original
        grad.flat[i] = (plus - minus) / (denominator * h if not one_sided else h)
    return grad


def test_numerical_gradient_accepts_central_differences(capsys):
    checks.check_numerical_gradient(T1.numerical_gradient)
    checks.check_numerical_gradient(central)
    assert "[ok] numerical_gradient" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, hint", [
    (dict(restore=False), "restore each entry"),
    (dict(denominator=1.0), "divides by 2h"),
    (dict(one_sided=True), "one-sided"),
    (dict(all_at_once=True), "one entry"),
    (dict(minus_from_plus=True), "your second point is x"),
])
def test_numerical_gradient_rejects(mistake, hint):
    rejects(checks.check_numerical_gradient, lambda f, x, h: central(f, x, h, **mistake), hint)


def test_rel_error():
    checks.check_rel_error(T1.rel_error)
    # the floor added to the denominator instead of taken as a maximum is an accepted variant
    checks.check_rel_error(lambda a, b: float(np.max(np.abs(a - b) / (np.abs(a) + np.abs(b) + 1e-8))))
    rejects(checks.check_rel_error, lambda a, b: float(np.max(np.abs(a - b) / (np.abs(a) + np.abs(b)))), "0/0")
    rejects(checks.check_rel_error, lambda a, b: float(np.max((a - b) / np.maximum(a + b, 1e-8))), "absolute values")
    rejects(checks.check_rel_error,
            lambda a, b: float(np.mean(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8))), "max over entries")
    rejects(checks.check_rel_error,
            lambda a, b: float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-8))), "symmetric")
    rejects(checks.check_rel_error, lambda a, b: np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8),
            "one number, got an array")
    rejects(checks.check_rel_error, lambda a, b: np.float32(T1.rel_error(a, b)), "float32")


def test_numerical_vjp():
    def vjp(f, x, dout, h, use_dout=True):
        weights = dout if use_dout else np.ones_like(dout)
        return central(lambda z: float(np.sum(weights * f(z))), x, h)

    checks.check_numerical_vjp(T1.numerical_vjp)
    checks.check_numerical_vjp(vjp)
    rejects(checks.check_numerical_vjp, lambda f, x, dout, h: vjp(f, x, dout, h, use_dout=False), "weight the outputs")


def test_answers_that_call_amnp_are_refused():
    from amnp import gradcheck

    def borrowed_vjp(f, x, dout, h):
        return gradcheck.numerical_gradient(lambda: f(x), x, dout, h)

    rejects(checks.check_numerical_vjp, borrowed_vjp, "calls amnp.gradcheck.numerical_gradient.*scores 0")
    rejects(checks.check_col2im,
            lambda cols, shape, kh, kw, s: F.col2im(cols, shape, (kh, kw), (s, s),
                                                    ((shape[2] - kh) // s + 1, (shape[3] - kw) // s + 1)),
            "calls amnp.functional.conv.col2im")
    rejects(checks.check_linear_backward,
            lambda g, x, w: F.linear_backward(g, F.linear_forward(x, w, np.zeros(len(w)))[1]), "linear_backward")
    rejects(checks.check_arcface_margin, F.arcface_margin, "calls amnp.functional.margins.arcface_margin")

    def am_backward_through_amnp(cos, labels, m, s, conditional=False):
        return F.am_softmax_backward(1.0, F.am_softmax_forward(cos, labels, m=m, s=s, conditional=conditional)[1])

    rejects(checks.check_am_softmax_backward, am_backward_through_amnp, "am_softmax")
    rejects(checks.check_kfold_accuracy, lambda s, y, f: evaluation.kfold_verification(s, y, f)["mean"],
            "calls amnp.evaluation.kfold_verification")

    def dir_through_amnp(gallery, gallery_labels, probes, probe_labels, far):
        unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
        return evaluation.dir_at_far(unit(probes) @ unit(gallery).T, gallery_labels, probe_labels, [far])[far]

    rejects(checks.check_dir_at_far, dir_through_amnp, "calls amnp.evaluation.dir_at_far")
    # ... and one that calls the checks' own code: the helper behind check_dir_at_far
    rejects(checks.check_dir_at_far, checks.tutorial09._amnp_dir_at_far, "calls checks._amnp_dir_at_far")


def test_the_student_build_ships_no_reference_to_call():
    public = [name for name in dir(checks) if not name.startswith("_") and callable(getattr(checks, name))]
    assert not [name for name in public if not name.startswith("check_")
                and name not in ("CheckFailed", "show", "target_probability", "margin_only_on_target_test")], public


# ---------------------------------------------------------------------------- tutorial 2
def test_fit_slope():
    checks.check_fit_slope(T2.fit_slope)
    rejects(checks.check_fit_slope, lambda h, e: np.polyfit(h, e, 1)[0], "log-log")
    rejects(checks.check_fit_slope, lambda h, e: np.polyfit(np.log10(e), np.log10(h), 1)[0], "other way round")
    rejects(checks.check_fit_slope, lambda h, e: np.polyfit(-np.log10(h), np.log10(e), 1)[0], "sign is flipped")
    rejects(checks.check_fit_slope, lambda h, e: np.log10(e[-1] / e[0]) / np.log10(h[-1] / h[0]), "first and last")
    rejects(checks.check_fit_slope, lambda h, e: np.polyfit(np.log10(h), np.log10(e), 1), r"polyfit returns")


def kink_detector(f, x, i, h, tolerance=1e-3):
    original = x.flat[i]
    centre = f(x)
    x.flat[i] = original + h
    forward = (f(x) - centre) / h
    x.flat[i] = original - h
    backward = (centre - f(x)) / h
    x.flat[i] = original
    return abs(forward - backward) > tolerance * max(1.0, abs(forward), abs(backward))


def test_crossed_kink():
    checks.check_crossed_kink(T2.crossed_kink)
    rejects(checks.check_crossed_kink, lambda f, x, i, h: False, "forward difference")
    rejects(checks.check_crossed_kink, lambda f, x, i, h: kink_detector(f, x, i, h, tolerance=0.0), "relative tolerance")


def test_directional_derivative():
    checks.check_directional_derivative(T2.directional_derivative)
    rejects(checks.check_directional_derivative, lambda f, x, d, h: (f(x + h * d) - f(x - h * d)) / h, "divide by 2h")
    rejects(checks.check_directional_derivative,
            lambda f, x, d, h: (f(x + h * d / np.linalg.norm(d)) - f(x - h * d / np.linalg.norm(d))) / (2 * h),
            "do not rescale")
    rejects(checks.check_directional_derivative, lambda f, x, d, h: (f(x - h * d) - f(x + h * d)) / (2 * h),
            "sign is flipped")


# ---------------------------------------------------------------------------- tutorial 3
def test_linear_backward():
    checks.check_linear_backward(T3.linear_backward)
    rejects(checks.check_linear_backward, lambda g, x, w: (g @ w, x.T @ g, g.sum(axis=0)), "transpose")
    rejects(checks.check_linear_backward, lambda g, x, w: (g @ w, g.T @ x, g.sum(axis=1)), "wrong axis")
    rejects(checks.check_linear_backward, lambda g, x, w: (g @ w, g.T @ x, g.mean(axis=0)), "do not average")
    rejects(checks.check_linear_backward,
            lambda g, x, w: tuple(a.astype(np.float32) for a in T3.linear_backward(g, x, w)), "float32")
    rejects(checks.check_linear_backward, lambda g, x, w: [g @ w, g.T @ x, g.sum(axis=0)], r"tuple \(dx, dw, db\)")


def test_prelu_backward():
    def prelu(g, x, a, da_axes=(0, 2, 3), da_input="negative", dx_slope_everywhere=False):
        slope = a.reshape(1, -1, 1, 1)
        dx = g * slope if dx_slope_everywhere else np.where(x > 0, g, slope * g)
        part = np.minimum(x, 0) if da_input == "negative" else x
        return dx, (g * part).sum(axis=da_axes)

    checks.check_prelu_backward(T3.prelu_backward)
    rejects(checks.check_prelu_backward, lambda g, x, a: prelu(g, x, a, da_axes=(0,)), "every axis but axis 1")
    rejects(checks.check_prelu_backward, lambda g, x, a: prelu(g, x, a, da_input="all"), r"min\(x, 0\)")
    rejects(checks.check_prelu_backward, lambda g, x, a: prelu(g, x, a, dx_slope_everywhere=True), "identity")


def test_im2col():
    checks.check_im2col(T3.im2col)
    rejects(checks.check_im2col, lambda x, kh, kw, s: T3.im2col(x, kh, kw, s).T, "transpose")
    rejects(checks.check_im2col, lambda x, kh, kw, s: T3.im2col(x, kh, kw, s)[::-1], "layout")
    rejects(checks.check_im2col, lambda x, kh, kw, s: checks.tutorial03._reshaped_im2col(x, kh, s), "calls checks")

    def reshaped(x_padded, kh, kw, stride):
        n, c, hp, wp = x_padded.shape
        ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
        cols = np.empty((c, kh, kw, n, ho, wo))
        for i in range(kh):
            for j in range(kw):
                window = x_padded[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
                cols[:, i, j] = window.reshape(c, n, ho, wo)       # the bug: reshape for transpose
        return cols.reshape(c * kh * kw, n * ho * wo)

    rejects(checks.check_im2col, reshaped, r"transpose\(1, 0, 2, 3\), not reshape")


def col2im_with(cols, shape, kh, kw, s, accumulate=True, regroup="transpose"):
    n, c, hp, wp = shape
    ho, wo = (hp - kh) // s + 1, (wp - kw) // s + 1
    cols = cols.reshape(c, kh, kw, n, ho, wo)
    dx = np.zeros(shape)
    for i in range(kh):
        for j in range(kw):
            window = (slice(None), slice(None), slice(i, i + s * (ho - 1) + 1, s), slice(j, j + s * (wo - 1) + 1, s))
            block = cols[:, i, j].transpose(1, 0, 2, 3) if regroup == "transpose" else cols[:, i, j].reshape(n, c, ho, wo)
            if accumulate:
                dx[window] += block
            else:
                dx[window] = block
    return dx


def test_col2im():
    checks.check_col2im(T3.col2im)
    checks.check_col2im(col2im_with)
    rejects(checks.check_col2im, lambda *a: col2im_with(*a, accumulate=False), r"use \+= , not =")
    rejects(checks.check_col2im, lambda *a: col2im_with(*a, regroup="reshape"), r"transpose\(1, 0, 2, 3\), not reshape")


def pool_backward(dout, x, k, s, mode="argmax", accumulate=True):
    n, c, hh, ww = x.shape
    ho, wo = (hh - k) // s + 1, (ww - k) // s + 1
    windows = np.stack([x[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] for i in range(k) for j in range(k)])
    winner = windows.argmax(axis=0)
    dx = np.zeros_like(x)
    for i in range(k):
        for j in range(k):
            part = dout * (winner == i * k + j) if mode == "argmax" else dout
            window = (slice(None), slice(None), slice(i, i + s * (ho - 1) + 1, s), slice(j, j + s * (wo - 1) + 1, s))
            if accumulate:
                dx[window] += part
            else:
                dx[window] = part
    return dx


def test_max_pool_backward():
    checks.check_max_pool_backward(T3.max_pool_backward)
    rejects(checks.check_max_pool_backward, lambda *a: pool_backward(*a, mode="all"), "argmax alone")
    rejects(checks.check_max_pool_backward, lambda *a: pool_backward(*a, accumulate=False),
            "one pixel can be the maximum of several")


# ---------------------------------------------------------------------------- tutorial 4
def normalize_backward(dy, v, radial=True, divide=True, axis=1):
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    y = v / norm
    projection = (y * dy).sum(axis=axis, keepdims=True) if axis is not None else (y * dy).sum()
    out = dy - y * projection if radial else dy
    return out / norm if divide else out


def test_l2_normalize_backward():
    checks.check_l2_normalize_backward(T4.l2_normalize_backward)
    rejects(checks.check_l2_normalize_backward, lambda dy, v: normalize_backward(dy, v, radial=False), "radial part")
    rejects(checks.check_l2_normalize_backward, lambda dy, v: normalize_backward(dy, v, divide=False), "divide by")
    rejects(checks.check_l2_normalize_backward, lambda dy, v: normalize_backward(dy, v, axis=None), "wrong axis")


def test_cosine_backward():
    def cosine(g, x, w, through_w=True, through_x=True):
        x_hat = x / np.linalg.norm(x, axis=1, keepdims=True)
        w_hat = w / np.linalg.norm(w, axis=1, keepdims=True)
        dx = normalize_backward(g @ w_hat, x) if through_x else g @ w_hat
        dw = normalize_backward(g.T @ x_hat, w) if through_w else g.T @ x_hat
        return dx, dw

    checks.check_cosine_backward(T4.cosine_backward)
    rejects(checks.check_cosine_backward, lambda g, x, w: cosine(g, x, w, through_w=False), "NORMALISED weights")
    rejects(checks.check_cosine_backward, lambda g, x, w: cosine(g, x, w, through_x=False), "feature normalisation")


# ---------------------------------------------------------------------------- tutorial 5
def test_additive_margin():
    checks.check_additive_margin(T5.additive_margin)
    rejects(checks.check_additive_margin, lambda c, m, conditional=False: (c, np.ones_like(c)), "subtract the margin")
    rejects(checks.check_additive_margin,
            lambda c, m, conditional=False: (c - m * ((c < m) if conditional else 1), np.ones_like(c)), "wrong side")


def test_arcface_margin():
    checks.check_arcface_margin(T5.arcface_margin)

    def no_fallback(c, m):
        theta = np.arccos(c)
        return np.cos(theta + m), m * 0 + np.sin(theta + m) / np.sin(theta)

    def with_slope(slope):
        def arcface(c, m):
            psi, right = T5.arcface_margin(c, m)
            angular = c > math.cos(math.pi - m)
            return psi, np.where(angular, slope(c, m), right)
        return arcface

    rejects(checks.check_arcface_margin, no_fallback, "fallback")
    rejects(checks.check_arcface_margin, with_slope(lambda c, m: -np.sin(np.arccos(c) + m)), "d psi / d theta")
    rejects(checks.check_arcface_margin,
            with_slope(lambda c, m: math.cos(m) - c * math.sin(m) / np.sqrt(1 - c * c)), "second term")
    rejects(checks.check_arcface_margin,
            with_slope(lambda c, m: -(math.cos(m) + c * math.sin(m) / np.sqrt(1 - c * c))), "wrong sign")


def test_sphereface_margin():
    checks.check_sphereface_margin(T5.sphereface_margin)

    def chebyshev(c, m):
        t_prev, t, d_prev, d = np.ones_like(c), c, np.zeros_like(c), np.ones_like(c)
        for _ in range(m - 1):
            t_prev, t, d_prev, d = t, 2 * c * t - t_prev, d, 2 * t + 2 * c * d - d_prev
        return t, d

    rejects(checks.check_sphereface_margin, chebyshev, "sector index")

    def k_off_by_one(c, m):
        t, dt = chebyshev(c, m)
        k = sum((c < math.cos(j * math.pi / m)).astype(int) for j in range(1, m)) + (c < 0.2)
        sign = np.where(k % 2 == 0, 1.0, -1.0)
        return sign * t - 2 * k, sign * dt

    rejects(checks.check_sphereface_margin, k_off_by_one, "count the boundaries")


def test_combined_margin():
    checks.check_combined_margin(T5.combined_margin)

    def outer(c, m1, m2, m3):
        theta = np.arccos(c)
        return np.cos(m1 * (theta + m2)) - m3, m1 * np.sin(m1 * (theta + m2)) / np.sin(theta)

    rejects(checks.check_combined_margin, outer, "scales theta only")

    def slope_in_theta(c, m1, m2, m3):
        psi, slope = T5.combined_margin(c, m1, m2, m3)
        return psi, -slope * np.sqrt(1 - c * c)

    rejects(checks.check_combined_margin, slope_in_theta, "d psi / d c")


# ---------------------------------------------------------------------------- tutorial 6
def am_loss(cos, labels, m, s, conditional=False, every_column=False, total=False, naive=False, in_place=False):
    rows = np.arange(len(labels))
    if in_place:                     # the margin subtracted from the caller's cosines
        cos[rows, labels] -= m
        z = s * cos
    else:
        z = s * cos.astype(np.float64)
        if every_column:
            z -= s * m
        else:
            z[rows, labels] -= s * m * (cos[rows, labels] > m) if conditional else s * m
    if naive:
        with np.errstate(over="ignore", invalid="ignore"):
            p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            losses = -np.log(p[rows, labels])
    else:
        z = z - z.max(axis=1, keepdims=True)
        losses = -(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))[rows, labels]
    return float(losses.sum() if total else losses.mean())


def test_am_softmax_forward():
    checks.check_am_softmax_forward(T6.am_softmax_forward)
    checks.check_am_softmax_forward(am_loss)
    rejects(checks.check_am_softmax_forward, lambda *a: am_loss(*a, every_column=True), "margin on every column")
    rejects(checks.check_am_softmax_forward, lambda *a: am_loss(*a, total=True), "mean over the batch")
    rejects(checks.check_am_softmax_forward, lambda *a: am_loss(*a, naive=True), "row maximum")
    rejects(checks.check_am_softmax_forward,
            lambda cos, labels, m, s, conditional=False: am_loss(cos, labels, m, s), "only in rows")
    rejects(checks.check_am_softmax_forward,
            lambda cos, labels, m, s, conditional=False: am_loss(cos, labels, m, s, in_place=True),
            "changes the caller's cosines")


def am_grad(cos, labels, m, s, conditional=False, every_column=False, scale=True, mean=True, in_place=False):
    rows = np.arange(len(labels))
    if in_place:
        cos[rows, labels] -= m
        z = s * cos
    else:
        z = s * cos.astype(np.float64)
        if not every_column:
            z[rows, labels] -= s * m * (cos[rows, labels] > m) if conditional else s * m
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[rows, labels] -= 1
    return (s * p if scale else p) / (len(labels) if mean else 1)


def test_am_softmax_backward():
    checks.check_am_softmax_backward(T6.am_softmax_backward)
    checks.check_am_softmax_backward(am_grad)
    rejects(checks.check_am_softmax_backward, lambda *a: am_grad(*a, every_column=True), "margin on every column")
    rejects(checks.check_am_softmax_backward, lambda *a: am_grad(*a, scale=False), "factor s")
    rejects(checks.check_am_softmax_backward, lambda *a: am_grad(*a, mean=False), "divide by N")
    rejects(checks.check_am_softmax_backward,
            lambda cos, labels, m, s, conditional=False: am_grad(cos, labels, m, s, in_place=True), "work on a copy")


def test_the_value_test_catches_what_the_gradient_check_cannot():
    got, expected = checks.margin_only_on_target_test(am_loss)
    assert math.isclose(got, expected, rel_tol=1e-9)
    got, expected = checks.margin_only_on_target_test(lambda *a: am_loss(*a, every_column=True))
    assert math.isclose(got, math.log(10), rel_tol=1e-9) and not math.isclose(got, expected, rel_tol=1e-3)


# ---------------------------------------------------------------------------- tutorials 7 and 8
def test_margin_arc():
    checks.check_margin_arc(T7.margin_arc)
    rejects(checks.check_margin_arc, lambda c, m: math.degrees(math.acos(1 - m)), "NEIGHBOUR")

    def following_the_old_hint(c, m):
        # cos t - cos(g - t) = 2 sin(g/2) sin(t - g/2), the sign error tutorial 7's hint had
        gap = math.radians(360 / c)
        return 0.0 if 1 - m <= math.cos(gap) else math.degrees(gap / 2 + math.asin(m / (2 * math.sin(gap / 2))))

    assert round(following_the_old_hint(6, 0.35), 3) == 50.487 and round(T7.margin_arc(6, 0.35), 3) == 9.513
    rejects(checks.check_margin_arc, following_the_old_hint, r"2 sin\(g/2\) sin\(g/2 - t\)")


def test_smallest_scale():
    checks.check_smallest_scale(T8.smallest_scale)
    rejects(checks.check_smallest_scale, lambda c, m, p: math.log((c - 1) * p / (1 - p)) / (1 - m), "simplex")
    rejects(checks.check_smallest_scale, lambda c, m, p: math.log(p / (1 - p)) / (1 - m + 1 / (c - 1)), "C - 1 other")
    rejects(checks.check_smallest_scale, lambda c, m, p: math.log((c - 1) * p / (1 - p)) / (1 + 1 / (c - 1)),
            "include the margin")


def test_margin_ramp():
    checks.check_margin_ramp(T8.margin_at)
    rejects(checks.check_margin_ramp, lambda t, m, g: g * t, "cap the ramp")


# ---------------------------------------------------------------------------- tutorial 9
def test_best_threshold():
    checks.check_best_threshold(T9.best_threshold)

    def strict(scores, same):
        # picks the score value that is best for the rule 'score > t', then is used with '>='
        candidates = np.unique(scores)
        accuracy = [np.mean((scores > t) == same) for t in candidates]
        return float(candidates[int(np.argmax(accuracy))])

    rejects(checks.check_best_threshold, strict, "> and >= differ")


def test_kfold_accuracy():
    checks.check_kfold_accuracy(T9.kfold_accuracy)

    def leaky(scores, same, folds):
        return float(np.mean([np.mean((scores[folds == k] >= T9.best_threshold(scores[folds == k], same[folds == k]))
                                      == same[folds == k]) for k in np.unique(folds)]))

    def folds_from_one(scores, same, folds):
        accuracies = []
        for k in range(1, 10):                  # the off-by-one: fold 0 is never tested
            t = T9.best_threshold(scores[folds != k], same[folds != k])
            accuracies.append(np.mean((scores[folds == k] >= t) == same[folds == k]))
        return float(np.mean(accuracies))

    rejects(checks.check_kfold_accuracy, leaky, "OTHER folds")
    rejects(checks.check_kfold_accuracy, folds_from_one, "9 folds, not 10")


def test_roc_tar_eer():
    checks.check_roc(T9.roc)
    rejects(checks.check_roc, lambda s, y: T9.roc(s, y)[::-1], "swapped")
    checks.check_tar_at_far(T9.tar_at_far)

    def one_point_too_far(scores, same, far):
        fa, ta = T9.roc(scores, same)
        return float(ta[min(np.searchsorted(fa, far, side="right"), len(ta) - 1)])

    rejects(checks.check_tar_at_far, one_point_too_far, "more impostors")
    checks.check_eer(T9.eer)
    rejects(checks.check_eer, lambda s, y: 1 - T9.eer(s, y), "error rate")

    def first_point_past_the_crossing(scores, same):
        far, tar = T9.roc(scores, same)
        return float(far[np.argmax(far >= 1 - tar)])        # no interpolation

    rejects(checks.check_eer, first_point_past_the_crossing, "interpolate linearly")


def test_dir_at_far():
    checks.check_dir_at_far(T9.dir_at_far)

    def closed_set(gallery, gallery_labels, probes, probe_labels, far):
        s = probes @ gallery.T / np.linalg.norm(probes, axis=1, keepdims=True) / np.linalg.norm(gallery, axis=1)
        genuine = np.isin(probe_labels, gallery_labels)
        return float(np.mean((gallery_labels[s.argmax(axis=1)] == probe_labels)[genuine]))

    def unnormalised(gallery, gallery_labels, probes, probe_labels, far):
        s = probes @ gallery.T                  # dot products, not cosines
        best = s.argmax(axis=1)
        best_score = s[np.arange(len(probes)), best]
        genuine = np.isin(probe_labels, gallery_labels)
        impostor = np.sort(best_score[~genuine])[::-1]
        allowed = int(np.floor(far * impostor.size * (1 + 1e-9)))
        threshold = impostor[allowed] if allowed < impostor.size else -np.inf
        return float(((best_score > threshold) & (gallery_labels[best] == probe_labels))[genuine].mean())

    rejects(checks.check_dir_at_far, closed_set, "closed-set")
    rejects(checks.check_dir_at_far, lambda g, gl, p, pl, far: T9.dir_at_far(g, gl, p, pl, 3 * far + 0.05),
            "IMPOSTOR probes")
    rejects(checks.check_dir_at_far, unnormalised, "L2-normalise")


# ---------------------------------------------------------------------------- tutorial 10
_real_clock = time.perf_counter


def test_measure():
    def timed(step, sync, repeats, warm_up=True, sync_before=True, sync_after=True, reduce=np.median):
        if warm_up:
            step()
        times = []
        for _ in range(repeats):
            if sync_before:
                sync()
            start = time.perf_counter()
            step()
            if sync_after:
                sync()
            times.append(time.perf_counter() - start)
        return float(reduce(times))

    def total_over_repeats(step, sync, repeats):
        # the planted answer: no warm-up, no synchronise before the clock, the mean
        start = time.perf_counter()
        for _ in range(repeats):
            step()
            sync()
        return (time.perf_counter() - start) / repeats

    checks.check_measure(T10.measure)
    rejects(checks.check_measure, lambda *a: timed(*a, sync_after=False), "timed the launch")
    rejects(checks.check_measure, lambda *a: timed(*a, warm_up=False), "no warm-up")
    rejects(checks.check_measure, total_over_repeats, "no warm-up")
    rejects(checks.check_measure, lambda *a: timed(*a, reduce=np.mean), "return the median")
    rejects(checks.check_measure, lambda *a: timed(*a, sync_before=False, reduce=np.mean), "BEFORE starting the clock")

    def clock_imported_by_name(step, sync, repeats):
        perf_counter = _real_clock  # `from time import perf_counter` at import: bound before the check

        step()
        times = []
        for _ in range(repeats):
            sync()
            start = perf_counter()
            step()
            sync()
            times.append(perf_counter() - start)
        return float(np.median(times))

    rejects(checks.check_measure, clock_imported_by_name, "not a name imported from time")


def test_measure_is_judged_on_a_simulated_clock_so_a_busy_machine_changes_nothing(capsys):
    """The simulated device sleeps for nothing: an honest answer measures exactly 20 ms, however
    slowly the host runs (it failed at 27.9 ms under load when the device slept for real)."""
    def honest_on_a_slow_host(step, sync, repeats):
        step()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            step()
            busy_until = _real_clock() + 0.005  # 5 ms of host work that the device does not see
            while _real_clock() < busy_until:
                pass
            sync()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    checks.check_measure(honest_on_a_slow_host)
    assert "20.0 ms for a 20 ms step" in capsys.readouterr().out
    assert time.perf_counter is _real_clock, "the check left its simulated clock in place"


# ---------------------------------------------------------------------------- backward passes to derive
def test_softmax_backward():
    checks.check_softmax_backward(T1.softmax, T1.softmax_backward)
    y = T1.softmax
    rejects(lambda b: checks.check_softmax_backward(y, b), lambda g, x: g * y(x) * (1 - y(x)), "diagonal")
    rejects(lambda b: checks.check_softmax_backward(y, b), lambda g, x: y(x) * (g - (g * y(x)).sum()), "wrong axis")
    rejects(lambda b: checks.check_softmax_backward(y, b),
            lambda g, x: y(x) * ((g * y(x)).sum(axis=1, keepdims=True) - g), "sign is flipped")
    rejects(lambda b: checks.check_softmax_backward(lambda x: np.exp(x) / np.exp(x).sum(), b), T1.softmax_backward,
            "forward function given in the tutorial")
    rejects(lambda b: checks.check_softmax_backward(y, b), lambda g, x: g, "differs from central differences")


def test_avg_pool_backward():
    checks.check_avg_pool_backward(T3.avg_pool, T3.avg_pool_backward)
    check = lambda b: checks.check_avg_pool_backward(T3.avg_pool, b)
    rejects(check, lambda g, x, k, s: T3.avg_pool_backward(g, x, k, s) * k * k, "MEAN of k[*]k inputs")

    def assigning(dout, x, k, stride):
        ho, wo = dout.shape[2], dout.shape[3]
        dx = np.zeros_like(x)
        for i in range(k):
            for j in range(k):
                dx[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] = dout / (k * k)
        return dx

    rejects(check, assigning, r"use \+= ")
    rejects(check, lambda g, x, k, s: F.avg_pool2d_backward(g, F.avg_pool2d_forward(x, k, s)[1]), "avg_pool2d_backward")


def test_eps_normalize_backward():
    checks.check_eps_normalize_backward(T4.eps_normalize, T4.eps_normalize_backward)
    check = lambda b: checks.check_eps_normalize_backward(T4.eps_normalize, b)
    rejects(check, lambda dy, v, eps: T4.l2_normalize_backward(dy, v), "exercise 1's formula")
    rejects(check, lambda dy, v, eps: dy / np.sqrt((v * v).sum(axis=1, keepdims=True) + eps), "differentiate r")

    def unit_projection(dy, v, eps):
        r = np.sqrt((v * v).sum(axis=1, keepdims=True) + eps)
        y = v / r
        return (dy - y * (y * dy).sum(axis=1, keepdims=True)) / r

    checks.check_eps_normalize_backward(T4.eps_normalize, unit_projection)   # the same formula, with r


def test_am_softmax_wofn_backward():
    checks.check_am_softmax_wofn_backward(T6.am_softmax_wofn, T6.am_softmax_wofn_backward)
    check = lambda b: checks.check_am_softmax_wofn_backward(T6.am_softmax_wofn, b)

    def without_margin_in_dnorm(cos, norms, labels, m):
        dcos, _ = T6.am_softmax_wofn_backward(cos, norms, labels, m)
        return dcos, (dcos / norms[:, None] * cos).sum(axis=1)

    def without_norm_in_dcos(cos, norms, labels, m):
        dcos, dnorms = T6.am_softmax_wofn_backward(cos, norms, labels, m)
        return dcos / norms[:, None], dnorms

    rejects(check, without_margin_in_dnorm, "c - m, not c")
    rejects(check, without_norm_in_dcos, "factor r_n")
    rejects(check, lambda cos, norms, labels, m: T6.am_softmax_wofn_backward(cos, norms, labels, m)[0], "tuple")


# ---------------------------------------------------------------------------- tutorial 11
def data_parallel(comm, weight, x, labels, mistake=None):
    """A data-parallel gradient with one named mistake."""
    grad = T11.sum_of_losses_gradient(weight, x, labels)
    if mistake in ("sum of local means", "average of local means"):
        grad = comm.all_reduce(grad / len(labels))
        return grad / comm.size if mistake == "average of local means" else grad
    count = np.array([float(len(labels))])
    if mistake != "local count":
        comm.all_reduce(count)
    if mistake != "no reduction":
        comm.all_reduce(grad)
    return grad / count[0] / (comm.size if mistake == "average" else 1)


def test_data_parallel_gradient(capsys, monkeypatch):
    check = lambda b: checks.check_data_parallel_gradient(b, T11.sum_of_losses_gradient)
    check(T11.data_parallel_gradient)
    check(data_parallel)
    assert "[ok] data_parallel_gradient" in capsys.readouterr().out
    rejects(check, lambda *a: data_parallel(*a, "average"), "SUM the shares")
    rejects(check, lambda *a: data_parallel(*a, "average of local means"), "uneven ones a row of the smaller batch")
    rejects(check, lambda *a: data_parallel(*a, "sum of local means"), "(?s)sum of the local means.*global N")
    rejects(check, lambda *a: data_parallel(*a, "no reduction"), "all-reduce the local gradients")
    rejects(check, lambda *a: data_parallel(*a, "local count"), "divide by the global N, not the local")
    rejects(check, lambda comm, w, x, y: data_parallel(comm, w, x, y)[:2], "shape")
    rejects(check, lambda comm, *a: all_reduce_by_amnp(comm, *a), "calls amnp.distributed.gradients.all_reduce_grad")
    rejects(check, lambda *a: 1.5 * data_parallel(*a),
            r"with \(5, 3\) rows: relative error .* against the one-process gradient")
    # a rank that skips a collective ends the check instead of hanging it
    monkeypatch.setattr(checks.tutorial11, "COLLECTIVE_TIMEOUT_S", 0.5)
    rejects(check, lambda comm, *a: data_parallel(comm, *a, "no reduction" if comm.rank else None), "never joined")


def all_reduce_by_amnp(comm, weight, x, labels):
    from amnp.distributed import all_reduce_gradients
    grad = T11.sum_of_losses_gradient(weight, x, labels)
    count = comm.all_reduce(np.array([float(len(labels))]))
    all_reduce_gradients(comm, [grad])
    return grad / count[0]


def test_data_parallel_gradient_is_judged_on_uneven_and_even_batches():
    """Uneven local batches catch the average of local means, which equal ones cannot."""
    sizes_seen = []

    def recorded(comm, weight, x, labels):
        sizes_seen.append(len(labels))
        return T11.data_parallel_gradient(comm, weight, x, labels)

    checks.check_data_parallel_gradient(recorded, T11.sum_of_losses_gradient)
    assert sorted(sizes_seen) == [3, 4, 4, 4, 5]


def logsumexp(comm, z, use_max=True, max_op="max", add_back=True, reduce=True, gather=False):
    """A distributed log-sum-exp with one switchable mistake."""
    if gather:      # every rank's logits, N x C, on every rank
        z = comm.all_gather(np.ascontiguousarray(z.T), comm.all_gather_sizes(z.shape[1])).T
        reduce = False
    top = z.max(axis=1) if use_max else np.zeros(z.shape[0])
    if use_max and reduce:
        comm.all_reduce(top, op=max_op)
    total = np.exp(z - top[:, None]).sum(axis=1)
    if reduce:
        comm.all_reduce(total)
    return (top if add_back else 0) + np.log(total)


def test_global_logsumexp(capsys):
    check = checks.check_global_logsumexp
    check(T11.global_logsumexp)
    check(logsumexp)
    assert "[ok] global_logsumexp" in capsys.readouterr().out
    rejects(check, lambda comm, z: logsumexp(comm, z, use_max=False), "op='max'")
    rejects(check, lambda comm, z: logsumexp(comm, z, max_op="sum"), "a sum of maxima is no maximum")
    rejects(check, lambda comm, z: logsumexp(comm, z, add_back=False), "add the maximum back")
    rejects(check, lambda comm, z: logsumexp(comm, z, reduce=False), "rank 0's classes only")
    rejects(check, lambda comm, z: logsumexp(comm, z, gather=True), "not to gather the logits")
    rejects(check, lambda comm, z: logsumexp(comm, z)[:, None], "one number per row")

    def local_maximum(comm, z):    # each rank subtracts its own maximum: the sums do not add up
        top = z.max(axis=1)
        return top + np.log(comm.all_reduce(np.exp(z - top[:, None]).sum(axis=1)))

    rejects(check, local_maximum, "the same maximum")
    rejects(check, lambda comm, z: logsumexp(comm, z) + comm.rank, "every rank must end with the same M")
    rejects(check, lambda comm, z: 1.01 * logsumexp(comm, z),
            "relative error .* against the log-sum-exp of the full rows")


def embedding(comm, dlogits, weight, sizes, how="reduce_scatter", average=False):
    """An embedding gradient with one switchable mistake."""
    partial = np.ascontiguousarray(dlogits @ weight)
    start = sum(sizes[:comm.rank])
    mine = slice(start, start + sizes[comm.rank])
    if how == "reduce_scatter":
        grad = comm.reduce_scatter(partial, sizes)
    elif how == "all_reduce, all rows":
        return comm.all_reduce(partial)
    elif how == "all_reduce":
        grad = comm.all_reduce(partial)[mine]
    elif how == "all_gather":
        everyone = comm.all_gather(partial, [len(partial)] * comm.size)
        grad = everyone.reshape(comm.size, len(partial), -1).sum(axis=0)[mine]
    else:
        grad = partial[mine]
    return grad / comm.size if average else grad


def test_embedding_gradient(capsys):
    checks.check_embedding_gradient(T11.embedding_gradient)
    checks.check_embedding_gradient(embedding)
    assert "[ok] embedding_gradient" in capsys.readouterr().out
    for how, hint in (("all_reduce, all rows", "own embeddings only"),
                      ("all_reduce", "(?s)right numbers, but through all_reduce.*reduce_scatter"),
                      ("all_gather", "right numbers, but through all_gather"),
                      ("none", "sum them over the ranks")):
        rejects(checks.check_embedding_gradient, lambda *a: embedding(*a, how=how), hint)
    rejects(checks.check_embedding_gradient, lambda *a: embedding(*a, average=True), "do not average")
    rejects(checks.check_embedding_gradient, lambda *a: embedding(*a)[:, :2],
            r"rank 0's gradient has shape \(4, 2\), expected \(4, 3\)")
    rejects(checks.check_embedding_gradient, lambda *a: 1.5 * embedding(*a), "rank 0: relative error")


def test_answers_that_call_the_sharded_head_are_refused():
    from amnp.distributed import ShardedMarginHead, build_sharded_head

    def through_the_head(comm, z):
        head = build_sharded_head("am-softmax", 2, 2 * comm.size, comm, dtype=np.float64, rng=0)
        head.forward(np.ones((z.shape[0], 2)), np.zeros(z.shape[0], dtype=np.int64))
        return T11.global_logsumexp(comm, z)

    assert ShardedMarginHead.forward in checks.tutorial11.IMPLEMENTATIONS
    rejects(checks.check_global_logsumexp, through_the_head, "calls amnp.distributed.sharded_head.ShardedMarginHead.forward")


# ---------------------------------------------------------------------------- inline questions
def test_answers():
    checks.check_answer("01.forward_calls", 24)
    checks.check_answer("01.forward_calls", 24.0)
    checks.check_answer("02.rel_at_s30", " B ")
    rejects(lambda v: checks.check_answer("01.forward_calls", v), 12, "twice per entry")
    rejects(lambda v: checks.check_answer("06.margin_every_column", v), "a", "constant added")
    rejects(lambda v: checks.check_answer("04.radial", v), "zero", "the answer is a number")
    checks.check_answer("11.softmax_numbers", 512)
    rejects(lambda v: checks.check_answer("11.softmax_numbers", v), 256 * 10**5 // 8, "C does not appear")
    with pytest.raises(KeyError, match="no question"):
        checks.check_answer("99.nothing", 1)


@pytest.mark.parametrize("question, answer", [
    ("09.far_resolution", 3.3e-4),        # the form the success message itself writes
    ("09.far_resolution", "3.3e-4"),
    ("02.float32_best_h", 5e-3),          # the value of the right option
    ("03.col2im_overlap", "(b)"),
    ("03.col2im_overlap", "b)"),
    ("07.arc_c6", 9.5),
    ("05.arcface_fallback_c", -0.878),
])
def test_equivalent_answers_within_the_stated_tolerance_pass(question, answer):
    checks.check_answer(question, answer)


@pytest.mark.parametrize("question, answer, message", [
    ("09.far_resolution", 3e-4, "two significant digits"),
    ("02.float32_best_h", 1e-6, "not the answer"),
    ("03.col2im_overlap", np.zeros(3), "(?s)letter as a string.*got an array.*in quotes"),
    ("03.col2im_overlap", "(b) or (c)", "letter as a string"),
    ("01.forward_calls", True, "whole number; got bool"),
    ("07.arc_c6", 50.5, "one decimal"),
])
def test_wrong_answers_are_told_the_form(question, answer, message):
    rejects(lambda v: checks.check_answer(question, v), answer, message)


def test_every_check_is_fed_a_wrong_answer():
    source = Path(__file__).read_text(encoding="utf-8")
    names = [name for name in dir(checks) if name.startswith("check_") and callable(getattr(checks, name))]
    untested = [name for name in names if f"rejects(checks.{name}," not in source
                and f"rejects(lambda b: checks.{name}(" not in source
                and f"check = lambda b: checks.{name}(" not in source
                and not (name == "check_answer" and "checks.check_answer(" in source)]
    assert len(names) >= 30 and not untested, untested


def test_each_tutorial_has_its_own_checks_module():
    for path in sorted(TUTORIALS.glob("[0-9][0-9]_*.py")):
        module = getattr(checks, f"tutorial{path.name[:2]}")
        own = {e.check.split("(")[0].removeprefix("checks.") for e in build.exercises(path.read_text(encoding="utf-8"))
               if e.kind == "exercise"}
        assert own and own <= set(vars(module)), (path.name, own - set(vars(module)))
