"""Checks of tutorial 5: the margin functions psi(c) and dpsi/dc, compared with
amnp.functional.margins."""
from __future__ import annotations

import math

import numpy as np

from amnp.functional import margins

from .common import _close, _expect_shape, _expect_tuple, _fail, _ok, guarded

# amnp's own versions of this tutorial's exercises: an answer that calls one scores 0
IMPLEMENTATIONS = (margins.additive_margin, margins.arcface_margin, margins.sphereface_margin,
                   margins.combined_margin, margins.chebyshev, margins.margin_softmax_forward)


def _psi_grid():
    return np.linspace(-0.98, 0.98, 397)


def _check_psi(name, student, reference, args, kinks, extra_hints=()):
    """Compare student(c, *args) -> (psi, dpsi) with amnp's reference away from its kinks;
    ``extra_hints`` are (test, hint) pairs tried first, test(c, psi, dpsi, want_psi,
    want_dpsi) returning a message for a recognised mistake."""
    c = _psi_grid()
    away = np.all([np.abs(c - k) > 2e-3 for k in kinks], axis=0) if kinks else np.ones_like(c, bool)
    psi, dpsi = _expect_tuple(student(c.copy(), *args), ("psi", "dpsi"), name)
    psi = _expect_shape(psi, c.shape, "psi")
    dpsi = _expect_shape(dpsi, c.shape, "dpsi")
    want_psi, want_dpsi = reference(c, *args)
    for test, hint in extra_hints:
        message = test(c, psi, dpsi, want_psi, want_dpsi)
        if message:
            _fail(f"{name}: {message}", hint)
    if not _close(psi[away], want_psi[away], rtol=1e-9, atol=1e-9):
        bad = c[away][np.argmax(np.abs(psi[away] - want_psi[away]))]
        _fail(f"{name}: psi differs from amnp's, worst at c = {bad:.3f}")
    wrong = away & ~np.isclose(dpsi, want_dpsi, rtol=1e-7, atol=1e-9)
    if not wrong.any():
        _ok(name)
        return
    bad = c[wrong][np.argmax(np.abs(dpsi[wrong] - want_dpsi[wrong]))]
    where = f"{name}: dpsi/dc is wrong at {wrong.sum()} of {away.sum()} grid points, worst at c = {bad:.3f}"
    sin_theta = np.sqrt(1 - c[wrong] ** 2)
    if _close(dpsi[wrong], -want_dpsi[wrong], rtol=1e-6):
        _fail(f"{where}: it has the wrong sign there", "differentiate with respect to c = cos(theta), and mind "
              "d sin(theta)/dc = -c / sin(theta)")
    if _close(dpsi[wrong], -want_dpsi[wrong] * sin_theta, rtol=1e-6) or _close(
            dpsi[wrong], want_dpsi[wrong] * sin_theta, rtol=1e-6):
        _fail(f"{where}: your dpsi there is d psi / d theta",
              "the loss needs d psi / d c: divide by d c / d theta = -sin(theta)")
    _fail(where, "check it against central differences of your own psi")


def _monotone(c, psi, *_):
    """psi must fall as theta grows, i.e. grow with c."""
    if np.any(np.diff(psi) < -1e-9):
        return f"psi is not monotone: it falls as c grows near c = {c[1:][np.diff(psi) < -1e-9][0]:.3f}"
    return None


def check_additive_margin(additive_margin):
    """additive_margin(c, m, conditional=False) -> (psi, dpsi): psi = c - m (only where c > m
    when conditional)."""
    additive_margin = guarded(additive_margin, "additive_margin", IMPLEMENTATIONS)
    m = 0.35

    def every_c_ignored(c, psi, dpsi, want, *_):
        return "psi is c everywhere: the margin is missing" if _close(psi, c) else None

    _check_psi("additive_margin", additive_margin, margins.additive_margin, (m,), [],
               [(every_c_ignored, "psi(c) = c - m: subtract the margin")])
    c = _psi_grid()
    got = _expect_tuple(additive_margin(c.copy(), m, True), ("psi", "dpsi"), "additive_margin")
    got = _expect_shape(got[0], c.shape, "psi")
    want = margins.additive_margin(c, m, True)[0]
    away = np.abs(c - m) > 2e-3
    if not _close(got[away], want[away]):
        if _close(got[away], c[away] - m * (c[away] < m)):
            _fail("conditional margin applied on the wrong side",
                  "the Caffe rule subtracts m only where c > m (the target already beats the margin)")
        _fail("conditional=True: psi differs from amnp's (margin only where c > m)")
    _ok("additive_margin (conditional)")


def check_arcface_margin(arcface_margin):
    """arcface_margin(c, m) -> (psi, dpsi): cos(theta + m), falling back to c - m sin m where
    theta + m would pass pi (c <= cos(pi - m))."""
    arcface_margin = guarded(arcface_margin, "arcface_margin", IMPLEMENTATIONS)
    m = 0.5

    def no_fallback(c, psi, *_):
        if _close(psi, np.cos(np.arccos(c) + m)):
            return "psi = cos(theta + m) everywhere: it turns back up once theta + m passes pi"
        return None

    def second_term_sign(c, psi, dpsi, *_):
        angular = c > math.cos(math.pi - m)
        sin_theta = np.sqrt(1 - c[angular] ** 2)
        if _close(dpsi[angular], math.cos(m) - c[angular] * math.sin(m) / sin_theta, rtol=1e-6):
            return "dpsi/dc = cos m - c sin m / sin(theta) has the wrong sign in its second term"
        return None

    _check_psi("arcface_margin", arcface_margin, margins.arcface_margin, (m,), [math.cos(math.pi - m)],
               [(no_fallback, "where c <= cos(pi - m) use the fallback c - m sin(m), which keeps psi monotone"),
                (_monotone, "use the fallback c - m sin(m) where c <= cos(pi - m)"),
                (second_term_sign, "psi = c cos m - sin(theta) sin m and d sin(theta)/dc = -c / sin(theta): "
                                   "the minus signs cancel, dpsi/dc = cos m + c sin m / sin(theta)")])


def check_sphereface_margin(sphereface_margin):
    """sphereface_margin(c, m) -> (psi, dpsi) with psi = (-1)^k cos(m theta) - 2k."""
    sphereface_margin = guarded(sphereface_margin, "sphereface_margin", IMPLEMENTATIONS)
    m = 4
    kinks = [math.cos(j * math.pi / m) for j in range(1, m)]

    def no_k(c, psi, *_):
        if _close(psi, np.cos(m * np.arccos(c))):
            return "psi = cos(m theta) alone: it oscillates instead of decreasing"
        return None

    _check_psi("sphereface_margin", sphereface_margin, margins.sphereface_margin, (m,), kinks,
               [(no_k, "apply (-1)^k and subtract 2k, with k = floor(m theta / pi) the sector index"),
                (_monotone, "k = floor(m theta / pi): count the boundaries cos(j pi / m) that c lies below")])


def check_combined_margin(combined_margin):
    """combined_margin(c, m1, m2, m3) -> (psi, dpsi) with psi = cos(m1 theta + m2) - m3."""
    combined_margin = guarded(combined_margin, "combined_margin", IMPLEMENTATIONS)
    for args in ((1.0, 0.3, 0.2), (1.0, 0.0, 0.35), (1.2, 0.2, 0.1)):
        def order(c, psi, *_, args=args):
            m1, m2, m3 = args
            if not _close(psi, np.cos(m1 * np.arccos(c) + m2) - m3) and _close(
                    psi, np.cos(m1 * (np.arccos(c) + m2)) - m3):
                return "psi = cos(m1 (theta + m2)) - m3"
            return None
        _check_psi(f"combined_margin{args}", combined_margin, margins.combined_margin, args, [],
                   [(order, "the multiplicative margin scales theta only: cos(m1 theta + m2) - m3")])
