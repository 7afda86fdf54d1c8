"""Checks of Tutorial 8: choosing s and m."""
from __future__ import annotations

import math

from .common import _as_number, _fail, _ok, guarded


def target_probability(s, m, num_classes):
    """p_y when the target cosine is 1 and the other C-1 are -1/(C-1) (a regular simplex)."""
    target = s * (1 - m)
    other = -s / (num_classes - 1)
    return 1.0 / (1.0 + (num_classes - 1) * math.exp(other - target))


def check_smallest_scale(smallest_scale):
    """smallest_scale(num_classes, m, p) -> the smallest s with target_probability(s, m, C) >= p."""
    smallest_scale = guarded(smallest_scale, "smallest_scale", ())
    for c, m, p in ((10, 0.0, 0.99), (10516, 0.35, 0.9), (2, 0.2, 0.999), (1000, 0.0, 0.5)):
        got = _as_number(smallest_scale(c, m, p), "smallest_scale's result")
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
    margin_at = guarded(margin_at, "margin_at", ())
    for step, m, gamma in ((0, 0.35, 1e-3), (100, 0.35, 1e-3), (1000, 0.35, 1e-3), (10**6, 0.4, 5e-5)):
        want = min(m, gamma * step)
        got = _as_number(margin_at(step, m, gamma), "the margin")
        if not math.isclose(got, want, abs_tol=1e-12):
            if math.isclose(got, gamma * step):
                _fail(f"step {step}: {got:g} exceeds the final margin {m}", "cap the ramp: min(m, gamma t)")
            _fail(f"step {step}: margin {got:g}, expected {want:g}")
    _ok("margin_at")


