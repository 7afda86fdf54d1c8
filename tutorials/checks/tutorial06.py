"""Checks of Tutorial 6: AM-Softmax forward and backward."""
from __future__ import annotations

import math

import numpy as np

from amnp import functional as F
from amnp import losses

from .common import (_as_number, _check_derived, _close, _expect_shape, _expect_tuple, _fail, _ok, _rng,
                     _unchanged, _worst, guarded)

# amnp's own versions of this tutorial's exercises: an answer that calls one scores 0
IMPLEMENTATIONS = (F.am_softmax_forward, F.am_softmax_backward, F.margin_softmax_forward, F.margin_softmax_backward,
                   F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward, F.log_softmax,
                   losses.AMSoftmaxLoss.forward, losses.AMSoftmaxLoss.backward)

MODIFIES_COS = "work on a copy: z = s * cos makes a new array, but cos[rows, labels] -= m changes the caller's cosines"


def _amnp_am_softmax(cos, labels, m, s, conditional=False):
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
    am_softmax_forward = guarded(am_softmax_forward, "am_softmax_forward", IMPLEMENTATIONS)
    cos, labels = _am_inputs("amfwd")
    before = cos.copy()
    for m, s, conditional in ((0.35, 30.0, False), (0.2, 10.0, False), (0.35, 30.0, True)):
        got = _as_number(am_softmax_forward(cos, labels, m, s, conditional), "the loss",
                         "return the batch mean as one float")
        _unchanged(before, cos, "cos", MODIFIES_COS)
        want, _ = _amnp_am_softmax(cos, labels, m, s, conditional)
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        plain, _ = _amnp_am_softmax(cos, labels, 0.0, s)
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
    if not math.isfinite(_as_number(am_softmax_forward(big, np.array([0, 1]), 0.35, 1000.0), "the loss")):
        _fail("the loss overflows for s = 1000", "subtract the row maximum before exp, and use log-softmax")
    _ok("am_softmax_forward")


def check_am_softmax_backward(am_softmax_backward):
    """am_softmax_backward(cos, labels, m, s, conditional=False) -> dloss/dcos, (N, C)."""
    am_softmax_backward = guarded(am_softmax_backward, "am_softmax_backward", IMPLEMENTATIONS)
    cos, labels = _am_inputs("ambwd")
    before = cos.copy()
    for m, s, conditional in ((0.35, 30.0, False), (0.2, 10.0, False), (0.35, 30.0, True)):
        got = _expect_shape(am_softmax_backward(cos, labels, m, s, conditional), cos.shape, "dcos")
        _unchanged(before, cos, "cos", MODIFIES_COS)
        _, want = _amnp_am_softmax(cos, labels, m, s, conditional)
        if _close(got, want, rtol=1e-7, atol=1e-12):
            continue
        _, plain = _amnp_am_softmax(cos, labels, 0.0, s)
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


def check_am_softmax_wofn_backward(am_softmax_wofn, am_softmax_wofn_backward):
    """am_softmax_wofn_backward(cos, norms, labels, m) -> (dL/dcos, dL/dnorms), checked against
    central differences of ``am_softmax_wofn`` (the forward in the tutorial)."""
    am_softmax_wofn_backward = guarded(am_softmax_wofn_backward, "am_softmax_wofn_backward", IMPLEMENTATIONS)
    cos, labels = _am_inputs("wofn")
    norms = _rng("wofn norms").uniform(2.0, 6.0, len(labels))
    m, rows, n = 0.35, np.arange(len(labels)), len(labels)

    def margin_logits(cos, norms):
        t = cos.copy()
        t[rows, labels] -= m
        return norms[:, None] * t, t

    def reference(cos, norms):
        return F.softmax_cross_entropy_forward(margin_logits(cos, norms)[0], labels)[0]

    def dz(cos, norms):
        """dL/dz = (softmax(z) - onehot) / N."""
        z = margin_logits(cos, norms)[0]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[rows, labels] -= 1
        return p / n

    def scaled(g, pair):
        return tuple(g * part for part in pair)

    _check_derived("am_softmax_wofn_backward", lambda cos, norms: am_softmax_wofn(cos, norms, labels, m),
                   lambda g, cos, norms: scaled(g, _expect_tuple(am_softmax_wofn_backward(cos, norms, labels, m),
                                                                 ("dcos", "dnorms"), "am_softmax_wofn_backward")),
                   [cos, norms], reference, {0: "dcos", 1: "dnorms"}, [
        (lambda g, cos, norms: scaled(g, (norms[:, None] * dz(cos, norms), (dz(cos, norms) * cos).sum(axis=1))),
         "z = r (c - m onehot): the target column's factor in dL/dr is c - m, not c"),
        (lambda g, cos, norms: scaled(g, (dz(cos, norms), (dz(cos, norms) * margin_logits(cos, norms)[1]).sum(axis=1))),
         "the chain rule brings each row's factor r_n into dL/dc"),
    ])
