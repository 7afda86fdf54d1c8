"""Checks of Tutorial 7: geometry."""
from __future__ import annotations

import math

from .common import _as_number, _fail, _ok, guarded


def check_margin_arc(margin_arc):
    """margin_arc(num_classes, m) -> degrees: with C evenly spaced class centres on a circle,
    the half-width of the arc around a centre where cos(t) - m > cos(360/C - t)."""
    margin_arc = guarded(margin_arc, "margin_arc", ())
    for c, m in ((6, 0.35), (4, 0.2), (6, 0.0), (8, 0.35)):
        gap = math.radians(360 / c)
        if 1 - m <= math.cos(gap):
            want = 0.0
        else:  # cos t - m - cos(gap - t) = 0  <=>  2 sin(gap/2) sin(gap/2 - t) = m
            want = math.degrees(gap / 2 - math.asin(m / (2 * math.sin(gap / 2))))
        got = _as_number(margin_arc(c, m), "margin_arc's result", "return the half-width in degrees, one number")
        if math.isclose(got, want, abs_tol=1e-3):
            continue
        if want and math.isclose(got, math.degrees(gap / 2 + math.asin(m / (2 * math.sin(gap / 2)))), abs_tol=1e-3):
            _fail(f"C = {c}, m = {m}: got {got:.3f} degrees, expected {want:.3f}: that is the other root",
                  "cos t - cos(g - t) = 2 sin(g/2) sin(g/2 - t): solve 2 sin(g/2) sin(g/2 - t) = m, "
                  "so t = g/2 - asin(m / (2 sin(g/2)))")
        if math.isclose(got, math.radians(want), abs_tol=1e-5):
            _fail(f"C = {c}, m = {m}: got {got:.4f}, expected {want:.3f} degrees", "convert radians to degrees")
        if math.isclose(got, math.degrees(math.acos(1 - m)), abs_tol=1e-3):
            _fail(f"C = {c}, m = {m}: {got:.2f} degrees is where cos t = 1 - m",
                  "the margin is against the NEIGHBOUR: solve cos(t) - m = cos(360/C - t)")
        if want == 0.0:
            _fail(f"C = {c}, m = {m}: expected 0 (the margin cannot be met: 1 - m <= cos(360/C))")
        _fail(f"C = {c}, m = {m}: got {got:.3f} degrees, expected {want:.3f}")
    _ok("margin_arc")


