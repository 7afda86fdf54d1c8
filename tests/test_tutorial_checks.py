"""The tutorials' self-checks (tutorials/checks.py) are themselves checked: each accepts a
right answer and rejects planted wrong answers of the kinds its hints describe, with
that hint."""
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tutorials"))
import checks  # noqa: E402
from checks import CheckFailed  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # planted answers divide by 0

from amnp import evaluation  # noqa: E402
from amnp import functional as F  # noqa: E402


def rejects(check, answer, hint):
    with pytest.raises(CheckFailed, match=hint):
        check(answer)


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


def good_rel_error(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8)))


def test_rel_error():
    checks.check_rel_error(good_rel_error)
    rejects(checks.check_rel_error, lambda a, b: float(np.max(np.abs(a - b) / (np.abs(a) + np.abs(b)))), "0/0")
    rejects(checks.check_rel_error, lambda a, b: float(np.max((a - b) / np.maximum(a + b, 1e-8))), "absolute values")
    rejects(checks.check_rel_error,
            lambda a, b: float(np.mean(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8))), "max over entries")
    rejects(checks.check_rel_error,
            lambda a, b: float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-8))), "symmetric")


def test_numerical_vjp():
    def vjp(f, x, dout, h, use_dout=True):
        weights = dout if use_dout else np.ones_like(dout)
        return central(lambda z: float(np.sum(weights * f(z))), x, h)

    checks.check_numerical_vjp(vjp)
    rejects(checks.check_numerical_vjp, lambda f, x, dout, h: vjp(f, x, dout, h, use_dout=False), "weight the outputs")


# ---------------------------------------------------------------------------- tutorial 2
def test_fit_slope():
    checks.check_fit_slope(lambda h, e: np.polyfit(np.log10(h), np.log10(e), 1)[0])
    rejects(checks.check_fit_slope, lambda h, e: np.polyfit(h, e, 1)[0], "log-log")
    rejects(checks.check_fit_slope, lambda h, e: np.polyfit(np.log10(e), np.log10(h), 1)[0], "other way round")
    rejects(checks.check_fit_slope, lambda h, e: np.polyfit(-np.log10(h), np.log10(e), 1)[0], "sign is flipped")


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
    checks.check_crossed_kink(kink_detector)
    rejects(checks.check_crossed_kink, lambda f, x, i, h: False, "forward difference")
    rejects(checks.check_crossed_kink, lambda f, x, i, h: kink_detector(f, x, i, h, tolerance=0.0), "relative tolerance")


def test_directional_derivative():
    checks.check_directional_derivative(lambda f, x, d, h: (f(x + h * d) - f(x - h * d)) / (2 * h))
    rejects(checks.check_directional_derivative, lambda f, x, d, h: (f(x + h * d) - f(x - h * d)) / h, "divide by 2h")
    rejects(checks.check_directional_derivative,
            lambda f, x, d, h: (f(x + h * d / np.linalg.norm(d)) - f(x - h * d / np.linalg.norm(d))) / (2 * h),
            "do not rescale")


# ---------------------------------------------------------------------------- tutorial 3
def test_linear_backward():
    checks.check_linear_backward(lambda g, x, w: (g @ w, g.T @ x, g.sum(axis=0)))
    rejects(checks.check_linear_backward, lambda g, x, w: (g @ w, x.T @ g, g.sum(axis=0)), "transpose")
    rejects(checks.check_linear_backward, lambda g, x, w: (g @ w, g.T @ x, g.sum(axis=1)), "wrong axis")
    rejects(checks.check_linear_backward, lambda g, x, w: (g @ w, g.T @ x, g.mean(axis=0)), "do not average")


def test_prelu_backward():
    def prelu(g, x, a, da_axes=(0, 2, 3), da_input="negative", dx_slope_everywhere=False):
        slope = a.reshape(1, -1, 1, 1)
        dx = g * slope if dx_slope_everywhere else np.where(x > 0, g, slope * g)
        part = np.minimum(x, 0) if da_input == "negative" else x
        return dx, (g * part).sum(axis=da_axes)

    checks.check_prelu_backward(prelu)
    rejects(checks.check_prelu_backward, lambda g, x, a: prelu(g, x, a, da_axes=(0,)), "every axis but axis 1")
    rejects(checks.check_prelu_backward, lambda g, x, a: prelu(g, x, a, da_input="all"), r"min\(x, 0\)")
    rejects(checks.check_prelu_backward, lambda g, x, a: prelu(g, x, a, dx_slope_everywhere=True), "identity")


def amnp_im2col(x_padded, kh, kw, s):
    ho, wo = (x_padded.shape[2] - kh) // s + 1, (x_padded.shape[3] - kw) // s + 1
    return F.im2col(x_padded, (kh, kw), (s, s), (ho, wo))


def test_im2col():
    checks.check_im2col(amnp_im2col)
    rejects(checks.check_im2col, lambda x, kh, kw, s: amnp_im2col(x, kh, kw, s).T, "transpose")
    rejects(checks.check_im2col, lambda x, kh, kw, s: amnp_im2col(x, kh, kw, s)[::-1], "layout")


def col2im_with(cols, shape, kh, kw, s, accumulate=True):
    n, c, hp, wp = shape
    ho, wo = (hp - kh) // s + 1, (wp - kw) // s + 1
    cols = cols.reshape(c, kh, kw, n, ho, wo)
    dx = np.zeros(shape)
    for i in range(kh):
        for j in range(kw):
            window = (slice(None), slice(None), slice(i, i + s * (ho - 1) + 1, s), slice(j, j + s * (wo - 1) + 1, s))
            if accumulate:
                dx[window] += cols[:, i, j].transpose(1, 0, 2, 3)
            else:
                dx[window] = cols[:, i, j].transpose(1, 0, 2, 3)
    return dx


def test_col2im_rejects_the_assigning_version():
    checks.check_col2im(col2im_with)
    rejects(checks.check_col2im, lambda *a: col2im_with(*a, accumulate=False), r"use \+= , not =")


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
                dx[window] = part + dx[window] * (part == 0)   # overwrites where the new window routes a value
    return dx


def test_max_pool_backward():
    checks.check_max_pool_backward(pool_backward)
    rejects(checks.check_max_pool_backward, lambda *a: pool_backward(*a, mode="all"), "argmax alone")

    def assigning(dout, x, k, s):
        # '=' instead of '+=': a later window's (possibly zero) share replaces an earlier one's
        n, c, hh, ww = x.shape
        ho, wo = (hh - k) // s + 1, (ww - k) // s + 1
        windows = np.stack([x[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]
                            for i in range(k) for j in range(k)])
        winner = windows.argmax(axis=0)
        dx = np.zeros_like(x)
        for i in range(k):
            for j in range(k):
                dx[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] = dout * (winner == i * k + j)
        return dx

    rejects(checks.check_max_pool_backward, assigning, "one pixel can be the maximum of several")


# ---------------------------------------------------------------------------- tutorial 4
def normalize_backward(dy, v, radial=True, divide=True, axis=1):
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    y = v / norm
    projection = (y * dy).sum(axis=axis, keepdims=True) if axis is not None else (y * dy).sum()
    out = dy - y * projection if radial else dy
    return out / norm if divide else out


def test_l2_normalize_backward():
    checks.check_l2_normalize_backward(normalize_backward)
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

    checks.check_cosine_backward(cosine)
    rejects(checks.check_cosine_backward, lambda g, x, w: cosine(g, x, w, through_w=False), "NORMALISED weights")
    rejects(checks.check_cosine_backward, lambda g, x, w: cosine(g, x, w, through_x=False), "feature normalisation")


# ---------------------------------------------------------------------------- tutorial 5
def test_additive_margin():
    checks.check_additive_margin(checks.reference_additive)
    rejects(checks.check_additive_margin, lambda c, m, conditional=False: (c, np.ones_like(c)), "subtract the margin")
    rejects(checks.check_additive_margin,
            lambda c, m, conditional=False: (c - m * ((c < m) if conditional else 1), np.ones_like(c)), "wrong side")


def test_arcface_margin():
    checks.check_arcface_margin(checks.reference_arcface)

    def no_fallback(c, m):
        theta = np.arccos(c)
        return np.cos(theta + m), m * 0 + np.sin(theta + m) / np.sin(theta)

    rejects(checks.check_arcface_margin, no_fallback, "fallback")


def test_sphereface_margin():
    checks.check_sphereface_margin(checks.reference_sphereface)
    rejects(checks.check_sphereface_margin, lambda c, m: checks.chebyshev(c, m), "sector index")

    def k_off_by_one(c, m):
        t, dt = checks.chebyshev(c, m)
        k = sum((c < math.cos(j * math.pi / m)).astype(int) for j in range(1, m)) + (c < 0.2)
        sign = np.where(k % 2 == 0, 1.0, -1.0)
        return sign * t - 2 * k, sign * dt

    rejects(checks.check_sphereface_margin, k_off_by_one, "count the boundaries")


def test_combined_margin():
    checks.check_combined_margin(checks.reference_combined)

    def outer(c, m1, m2, m3):
        theta = np.arccos(c)
        return np.cos(m1 * (theta + m2)) - m3, m1 * np.sin(m1 * (theta + m2)) / np.sin(theta)

    rejects(checks.check_combined_margin, outer, "scales theta only")

    def slope_in_theta(c, m1, m2, m3):
        psi, slope = checks.reference_combined(c, m1, m2, m3)
        return psi, -slope * np.sqrt(1 - c * c)

    rejects(checks.check_combined_margin, slope_in_theta, "d psi / d c")


def test_psi_checks_use_amnp_when_it_has_the_margins():
    from amnp.functional import margins
    assert checks.psi_reference("arcface_margin") is margins.arcface_margin
    c = np.linspace(-0.95, 0.95, 50)
    for name, args in (("additive_margin", (0.35,)), ("arcface_margin", (0.5,)),
                       ("sphereface_margin", (4,)), ("combined_margin", (1.2, 0.2, 0.1))):
        ours = globals_reference(name)(c, *args)
        theirs = getattr(margins, name)(c, *args)
        assert np.allclose(ours[0], theirs[0]) and np.allclose(ours[1], theirs[1]), name


def globals_reference(name):
    return getattr(checks, "reference_" + name.replace("_margin", ""))


# ---------------------------------------------------------------------------- tutorial 6
def am_loss(cos, labels, m, s, conditional=False, every_column=False, total=False, naive=False):
    rows = np.arange(len(labels))
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
        z -= z.max(axis=1, keepdims=True)
        losses = -(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))[rows, labels]
    return float(losses.sum() if total else losses.mean())


def test_am_softmax_forward():
    checks.check_am_softmax_forward(am_loss)
    rejects(checks.check_am_softmax_forward, lambda *a: am_loss(*a, every_column=True), "margin on every column")
    rejects(checks.check_am_softmax_forward, lambda *a: am_loss(*a, total=True), "mean over the batch")
    rejects(checks.check_am_softmax_forward, lambda *a: am_loss(*a, naive=True), "row maximum")
    rejects(checks.check_am_softmax_forward,
            lambda cos, labels, m, s, conditional=False: am_loss(cos, labels, m, s), "only in rows")


def am_grad(cos, labels, m, s, conditional=False, every_column=False, scale=True, mean=True):
    if every_column:
        m_used, conditional = 0.0, False
    else:
        m_used = m
    _, cache = F.am_softmax_forward(cos, labels, m=m_used, s=s, conditional=conditional)
    g = F.am_softmax_backward(1.0, cache)
    return (g if scale else g / s) * (1 if mean else len(labels))


def test_am_softmax_backward():
    checks.check_am_softmax_backward(am_grad)
    rejects(checks.check_am_softmax_backward, lambda *a: am_grad(*a, every_column=True), "margin on every column")
    rejects(checks.check_am_softmax_backward, lambda *a: am_grad(*a, scale=False), "factor s")
    rejects(checks.check_am_softmax_backward, lambda *a: am_grad(*a, mean=False), "divide by N")


def test_the_value_test_catches_what_the_gradient_check_cannot():
    got, expected = checks.margin_only_on_target_test(am_loss)
    assert math.isclose(got, expected, rel_tol=1e-9)
    got, expected = checks.margin_only_on_target_test(lambda *a: am_loss(*a, every_column=True))
    assert math.isclose(got, math.log(10), rel_tol=1e-9) and not math.isclose(got, expected, rel_tol=1e-3)


# ---------------------------------------------------------------------------- tutorials 7 and 8
def test_margin_arc():
    def arc(c, m):
        gap = math.radians(360 / c)
        return 0.0 if 1 - m <= math.cos(gap) else math.degrees(gap / 2 - math.asin(m / (2 * math.sin(gap / 2))))

    checks.check_margin_arc(arc)
    rejects(checks.check_margin_arc, lambda c, m: math.degrees(math.acos(1 - m)), "NEIGHBOUR")


def test_smallest_scale():
    checks.check_smallest_scale(lambda c, m, p: math.log((c - 1) * p / (1 - p)) / (1 - m + 1 / (c - 1)))
    rejects(checks.check_smallest_scale, lambda c, m, p: math.log((c - 1) * p / (1 - p)) / (1 - m), "simplex")
    rejects(checks.check_smallest_scale, lambda c, m, p: math.log(p / (1 - p)) / (1 - m + 1 / (c - 1)), "C - 1 other")
    rejects(checks.check_smallest_scale, lambda c, m, p: math.log((c - 1) * p / (1 - p)) / (1 + 1 / (c - 1)),
            "include the margin")


def test_margin_ramp():
    checks.check_margin_ramp(lambda t, m, g: min(m, g * t))
    rejects(checks.check_margin_ramp, lambda t, m, g: g * t, "cap the ramp")


# ---------------------------------------------------------------------------- tutorial 9
def test_best_threshold():
    checks.check_best_threshold(evaluation.best_threshold)

    def strict(scores, same):
        # picks the score value that is best for the rule 'score > t', then is used with '>='
        candidates = np.unique(scores)
        accuracy = [np.mean((scores > t) == same) for t in candidates]
        return float(candidates[int(np.argmax(accuracy))])

    rejects(checks.check_best_threshold, strict, "> and >= differ")


def test_kfold_accuracy():
    checks.check_kfold_accuracy(lambda s, y, f: evaluation.kfold_verification(s, y, f)["mean"])

    def leaky(scores, same, folds):
        return float(np.mean([np.mean((scores[folds == k] >= evaluation.best_threshold(scores[folds == k], same[folds == k]))
                                      == same[folds == k]) for k in np.unique(folds)]))

    rejects(checks.check_kfold_accuracy, leaky, "OTHER folds")


def test_roc_tar_eer():
    checks.check_roc(lambda s, y: evaluation.roc_curve(s, y)[:2])
    rejects(checks.check_roc, lambda s, y: evaluation.roc_curve(s, y)[1::-1], "swapped")
    checks.check_tar_at_far(lambda s, y, far: evaluation.tar_at_far(s, y, [far])[far])

    def one_point_too_far(scores, same, far):
        fa, ta, _ = evaluation.roc_curve(scores, same)
        return float(ta[min(np.searchsorted(fa, far, side="right"), len(ta) - 1)])

    rejects(checks.check_tar_at_far, one_point_too_far, "more impostors")
    checks.check_eer(evaluation.equal_error_rate)
    rejects(checks.check_eer, lambda s, y: 1 - evaluation.equal_error_rate(s, y), "error rate")


def test_dir_at_far():
    checks.check_dir_at_far(checks.amnp_dir_at_far)

    def closed_set(gallery, gallery_labels, probes, probe_labels, far):
        s = probes @ gallery.T / np.linalg.norm(probes, axis=1, keepdims=True) / np.linalg.norm(gallery, axis=1)
        genuine = np.isin(probe_labels, gallery_labels)
        return float(np.mean((gallery_labels[s.argmax(axis=1)] == probe_labels)[genuine]))

    rejects(checks.check_dir_at_far, closed_set, "closed-set")
    rejects(checks.check_dir_at_far, lambda g, gl, p, pl, far: checks.amnp_dir_at_far(g, gl, p, pl, 3 * far + 0.05),
            "IMPOSTOR probes")


# ---------------------------------------------------------------------------- tutorial 10
def test_measure():
    def honest(step, sync, repeats):
        step()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    def no_final_sync(step, sync, repeats):
        sync()
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    def no_initial_sync(step, sync, repeats):
        start = time.perf_counter()
        step()
        sync()
        return time.perf_counter() - start

    checks.check_measure(honest)
    rejects(checks.check_measure, no_final_sync, "timed the launch")
    rejects(checks.check_measure, no_initial_sync, "BEFORE starting the clock")


# ---------------------------------------------------------------------------- inline questions
def test_answers():
    checks.check_answer("01.forward_calls", 24)
    checks.check_answer("02.rel_at_s30", " B ")
    rejects(lambda v: checks.check_answer("01.forward_calls", v), 12, "twice per entry")
    rejects(lambda v: checks.check_answer("06.margin_every_column", v), "a", "constant added")
    rejects(lambda v: checks.check_answer("04.radial", v), "zero", "should be a number")
    with pytest.raises(KeyError, match="no question"):
        checks.check_answer("99.nothing", 1)


def test_every_check_is_fed_a_wrong_answer():
    source = Path(__file__).read_text(encoding="utf-8")
    names = [name for name in dir(checks) if name.startswith("check_") and callable(getattr(checks, name))]
    untested = [name for name in names if f"rejects(checks.{name}," not in source
                and not (name == "check_answer" and "checks.check_answer(" in source)]
    assert len(names) >= 30 and not untested, untested
