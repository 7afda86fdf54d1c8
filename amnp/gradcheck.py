"""Numerical gradient checks by central differences.

Everything here works on the vector-Jacobian product, which is what backward
computes: for a function f and a random upstream gradient g (the ``dout`` a
later layer would send), the gradient of the scalar ⟨g, f(x)⟩ with respect to x
is exactly backward(g).  The numerical version perturbs one entry at a time:

    ∂⟨g, f⟩/∂x_i ≈ (⟨g, f(x + h e_i)⟩ − ⟨g, f(x − h e_i)⟩) / 2h

restoring x_i afterwards.  That costs 2 forward calls per entry, so for layers
too big for it, :func:`directional_check` compares one random direction d:
(⟨g, f(x + h d)⟩ − ⟨g, f(x − h d)⟩) / 2h against ⟨backward(g), d⟩ (2 calls).

Run checks in float64: in float32 the rounding error of f, divided by 2h,
swamps the truncation error for any h, and checks fail without a bug.
The finite differences always run on host copies in float64; a layer on CuPy is
evaluated on the device and its outputs copied back.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from .backend import get_array_module, to_numpy


def rel_error(a, b, floor: float = 1e-8) -> float:
    """max |a − b| / max(|a| + |b|, floor), elementwise, as in cs231n."""
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), floor)))


def numerical_gradient(f: Callable[[], object], x: np.ndarray, dout, h: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of ⟨dout, f()⟩ with respect to the NumPy array ``x``,
    which ``f`` reads; each entry of x is perturbed in place and always restored."""
    dout = to_numpy(dout).astype(np.float64)
    grad = np.zeros(x.shape, dtype=np.float64)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat_x, x):
        raise ValueError("numerical_gradient: x must be contiguous so it can be perturbed in place")
    for i in range(flat_x.size):
        original = flat_x[i]
        try:
            flat_x[i] = original + h
            plus = np.sum(dout * to_numpy(f()))
            flat_x[i] = original - h
            minus = np.sum(dout * to_numpy(f()))
        finally:
            flat_x[i] = original
        flat_grad[i] = (plus - minus) / (2 * h)
    return grad


# Tighter than torch.autograd.gradcheck's float64 defaults (atol 1e-5, rtol 1e-3).
ATOL, RTOL = 1e-6, 1e-5


class GradientReport(NamedTuple):
    """Worst errors of one analytic gradient against its numerical estimate.

    ``passed`` is the elementwise test |analytic − numeric| <= atol + rtol·|numeric|
    (numpy.allclose's rule) over every entry.
    """
    name: str
    max_abs_error: float
    max_rel_error: float
    passed: bool


def _report(name, analytic, numeric, atol, rtol) -> GradientReport:
    analytic = to_numpy(analytic).astype(np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    if analytic.shape != numeric.shape:
        raise ValueError(f"gradient {name!r} has shape {analytic.shape}, expected {numeric.shape}")
    error = np.abs(analytic - numeric)
    return GradientReport(name, float(np.max(error, initial=0.0)), rel_error(analytic, numeric),
                          bool(np.all(error <= atol + rtol * np.abs(numeric))))


def _host_copy(a) -> np.ndarray:
    return np.array(to_numpy(a), dtype=np.float64, order="C", copy=True)


def check_layer(layer, x, dout=None, h: float = 1e-6, seed: int = 0,
                atol: float = ATOL, rtol: float = RTOL) -> list[GradientReport]:
    """Compare a layer's backward with central differences, for the input and every parameter.

    ``layer`` and ``x`` should be float64 (any backend).  Returns one report per
    gradient, the input first (name "input"), then parameters by dotted name.
    The layer's parameters are left as they were.
    """
    rng = np.random.default_rng(seed)
    xp = get_array_module(x)
    x_host = _host_copy(x)
    out = layer.forward(xp.asarray(x_host))
    dout = rng.standard_normal(out.shape) if dout is None else to_numpy(dout)
    dx = layer.backward(xp.asarray(dout))
    analytic = {name: owner.grads[key] for name, owner, key in layer.named_parameters()}

    numeric_dx = numerical_gradient(lambda: layer.forward(xp.asarray(x_host)), x_host, dout, h)
    reports = [_report("input", dx, numeric_dx, atol, rtol)]
    for name, owner, key in layer.named_parameters():
        original = owner.params[key]
        p_host = _host_copy(original)

        def f():
            owner.params[key] = xp.asarray(p_host)
            return layer.forward(xp.asarray(x_host))

        try:
            numeric = numerical_gradient(f, p_host, dout, h)
        finally:
            owner.params[key] = original
        reports.append(_report(name, analytic[name], numeric, atol, rtol))
    return reports


def check_loss(loss, scores, labels, h: float = 1e-6,
               atol: float = ATOL, rtol: float = RTOL) -> GradientReport:
    """Compare a loss's backward (dLoss/dscores) with central differences of its forward."""
    xp = get_array_module(scores)
    s_host = _host_copy(scores)
    loss.forward(xp.asarray(s_host), labels)
    analytic = loss.backward()
    numeric = numerical_gradient(lambda: np.float64(loss.forward(xp.asarray(s_host), labels)),
                                 s_host, np.float64(1.0), h)
    return _report("scores", analytic, numeric, atol, rtol)


def directional_check(layer, x, h: float = 1e-6, seed: int = 0,
                      atol: float = ATOL, rtol: float = RTOL) -> GradientReport:
    """Check a layer along one random direction of (input, all parameters) jointly.

    Compares (⟨g, f(θ + h d)⟩ − ⟨g, f(θ − h d)⟩) / 2h with ⟨∇, d⟩ from backward:
    two forward calls whatever the layer's size.  Parameters are restored.
    """
    rng = np.random.default_rng(seed)
    xp = get_array_module(x)
    entries = [("input", None, None)] + list(layer.named_parameters())
    originals = [x] + [owner.params[key] for _, owner, key in entries[1:]]
    hosts = [_host_copy(a) for a in originals]
    directions = [rng.standard_normal(a.shape) for a in hosts]

    def set_point(step):
        for (_, owner, key), base, d in zip(entries[1:], hosts[1:], directions[1:]):
            owner.params[key] = xp.asarray(base + step * d)
        return xp.asarray(hosts[0] + step * directions[0])

    try:
        out = layer.forward(set_point(0.0))
        dout = rng.standard_normal(out.shape)
        dx = layer.backward(xp.asarray(dout))
        grads = [dx] + [owner.grads[key] for _, owner, key in entries[1:]]
        analytic = sum(float(np.sum(to_numpy(g).astype(np.float64) * d)) for g, d in zip(grads, directions))
        plus = float(np.sum(dout * to_numpy(layer.forward(set_point(h)))))
        minus = float(np.sum(dout * to_numpy(layer.forward(set_point(-h)))))
    finally:
        for (_, owner, key), original in zip(entries[1:], originals[1:]):
            owner.params[key] = original
    numeric = (plus - minus) / (2 * h)
    return _report("direction", np.float64(analytic), np.float64(numeric), atol, rtol)


def format_reports(reports) -> str:
    """A small table of reports, one line each."""
    return "\n".join(
        f"{r.name:<24} abs {r.max_abs_error:9.2e}  rel {r.max_rel_error:9.2e}  "
        f"{'ok' if r.passed else 'FAILED'}" for r in reports)

