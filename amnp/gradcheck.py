"""Numerical gradient checks by central differences, with kink detection.

Everything here works on the vector-Jacobian product, which is what backward
computes: for a function f and a random upstream gradient g (the ``dout`` a
later layer would send), the gradient of the scalar ⟨g, f(x)⟩ with respect to x
is exactly backward(g).  The numerical version perturbs one entry at a time:

    ∂⟨g, f⟩/∂x_i ≈ (⟨g, f(x + h e_i)⟩ − ⟨g, f(x − h e_i)⟩) / 2h

restoring x_i afterwards.  That costs 2 forward calls per entry, so for layers
too big for it, :func:`directional_check` compares one random direction d:
(⟨g, f(x + h d)⟩ − ⟨g, f(x − h d)⟩) / 2h against ⟨backward(g), d⟩ (2 calls).

What can be checked: a layer (:func:`check_layer`, input and every parameter),
a loss object (:func:`check_loss`), or a pure ``*_forward``/``*_backward`` pair
of :mod:`amnp.functional` (:func:`check_function`).

Precision.  Checks run in float64: in float32 the rounding error of f, divided
by 2h, swamps the truncation error for any h, and checks fail without a bug.
So the checkers promote: a float32 layer is checked through a float64 deep copy
(the layer itself is left untouched), float32 inputs through float64 copies,
and each report says so in ``promoted_from``.  The code checked is the same
dtype-generic code the float32 model runs.  The finite differences always run
on host copies; a layer on CuPy is evaluated on the device and its outputs
copied back.

Kinks (``detect_kinks=True``, after Chainer's ``detect_nondifferentiable``).
At a non-differentiable point (ReLU at 0, a max-pool tie, a jump in a loss) the
central difference straddles the kink and agrees with no subgradient, so a
plain check fails although backward may be right.  With detect_kinks each entry
is also evaluated at ±2h: write φ(t) = ⟨g, f(x + t e_i)⟩ and take the four
one-sided slopes of its five samples,

    s_k = (φ(k h) − φ((k−1) h)) / h,   k = −1, 0, 1, 2.

For a smooth φ the s_k sample φ' at −1.5h … 1.5h, so they lie on a straight
line: both bends s_{k+1} − 2 s_k + s_{k−1} are h²·φ''' (up to rounding).  A kink
within the stencil breaks the line: a slope jump J anywhere in (−h, h) bends it
by at least |J|/3 (|J| when the kink sits at the point), while it moves the
central difference by at most half the bend.  The rule: an entry is a kink when

    max |bend| > atol + rtol·|numeric| + 32·u·M / h,

u the float64 unit roundoff and M the largest Σ|g·f| over the stencil (so the
rounding of φ is not mistaken for a kink).  A kink that moves the central
difference by more than half the check's tolerance (plus that allowance) is
therefore always flagged, and an unflagged one cannot fail the check by itself.
A jump in value (a discontinuity) bends the slopes by ~jump/h and is always
flagged.  Kinks are left out of the comparison and listed in the report, which
then does not pass: such a point says nothing about the gradient.  Check at
points away from kinks (tests/test_gradients.py generates them) and pin the
subgradient chosen at a kink with an exact test (tests/test_kinks.py).  An
entry within 2h of a kink may be flagged although its central difference was
fine.  The cost: 4 forward calls per entry instead of 2.
"""
from __future__ import annotations

import copy
import inspect
from typing import Callable, NamedTuple

import numpy as np

from .backend import get_array_module, to_numpy


def rel_error(a, b, floor: float = 1e-8) -> float:
    """max |a − b| / max(|a| + |b|, floor), elementwise, as in cs231n."""
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), floor)))


def numerical_gradient(f: Callable[[], object], x: np.ndarray, dout, h: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of ⟨dout, f()⟩ with respect to the NumPy array ``x``,
    which ``f`` reads; each entry of x is perturbed in place and always restored.
    Works in x's dtype (the checkers below hand it float64 copies)."""
    return _scan(f, x, dout, h, detect_kinks=False).numeric


# Tighter than torch.autograd.gradcheck's float64 defaults (atol 1e-5, rtol 1e-3).
ATOL, RTOL = 1e-6, 1e-5

# Coefficient of the rounding allowance 32·u·M/h in the kink rule (see the module docstring).
_ROUNDING = 32 * np.finfo(np.float64).eps / 2


class GradientReport(NamedTuple):
    """Worst errors of one analytic gradient against its numerical estimate.

    An entry agrees when |analytic − numeric| <= atol + rtol·|numeric| (numpy.allclose's
    rule).  ``passed``: every entry agrees and none is a kink.  The errors and
    ``mismatches`` (entries that disagree) leave kinks out; ``kinks`` holds the
    indices, in the gradient's shape, of entries found at a non-differentiable point
    (only with ``detect_kinks``; ``()`` is the index of a scalar).  ``promoted_from``
    names the dtype that was checked through a float64 copy ("" when none was).
    """
    name: str
    max_abs_error: float
    max_rel_error: float
    passed: bool
    mismatches: int = 0
    kinks: tuple = ()
    promoted_from: str = ""

    @property
    def verdict(self) -> str:
        """"ok", "FAILED" (a real disagreement), or "not differentiable" (kinks only)."""
        if self.passed:
            return "ok"
        return "not differentiable" if self.kinks and not self.mismatches else "FAILED"


class _Scan(NamedTuple):
    numeric: np.ndarray  # central differences, x's shape
    kink: np.ndarray     # bool, x's shape: the entry's stencil crossed a kink (always False without detect_kinks)


def _scan(f, x, dout, h, detect_kinks, atol=ATOL, rtol=RTOL) -> _Scan:
    """φ_i(t) = ⟨dout, f()⟩ with x_i moved by t, for every entry i of x (in place, always
    restored): at t = ±h, and with detect_kinks also at 0 and ±2h (module docstring)."""
    dout = to_numpy(dout).astype(np.float64)
    flat_x = x.reshape(-1)
    if not np.shares_memory(flat_x, x):
        raise ValueError("numerical_gradient: x must be contiguous so it can be perturbed in place")
    steps = (-2, -1, 1, 2) if detect_kinks else (-1, 1)
    values = np.zeros((len(steps), flat_x.size))
    magnitude = np.zeros(flat_x.size)  # max over the stencil of Σ|dout·f|, for the rounding allowance
    for i in range(flat_x.size):
        original = flat_x[i]
        try:
            for row, k in enumerate(steps):
                flat_x[i] = original + k * h
                weighted = dout * to_numpy(f())
                values[row, i] = np.sum(weighted)
                if detect_kinks:
                    magnitude[i] = max(magnitude[i], float(np.sum(np.abs(weighted))))
        finally:
            flat_x[i] = original
    numeric = (values[steps.index(1)] - values[steps.index(-1)]) / (2 * h)
    kink = np.zeros(flat_x.size, dtype=bool)
    if detect_kinks:
        weighted = dout * to_numpy(f())
        magnitude = np.maximum(magnitude, float(np.sum(np.abs(weighted))))
        phi = np.stack([values[0], values[1], np.full(flat_x.size, np.sum(weighted)), values[2], values[3]])
        slopes = np.diff(phi, axis=0) / h                       # s_-1, s_0, s_1, s_2
        bend = np.max(np.abs(np.diff(slopes, n=2, axis=0)), axis=0)
        kink = bend > atol + rtol * np.abs(numeric) + _ROUNDING * magnitude / h
    return _Scan(numeric.reshape(x.shape), kink.reshape(x.shape))


def _report(name, analytic, scan: _Scan, atol, rtol, promoted_from="") -> GradientReport:
    analytic = to_numpy(analytic).astype(np.float64)
    numeric = scan.numeric
    if analytic.shape != numeric.shape:
        raise ValueError(f"gradient {name!r} has shape {analytic.shape}, expected {numeric.shape}")
    smooth = ~scan.kink
    error = np.abs(analytic - numeric)
    disagree = smooth & (error > atol + rtol * np.abs(numeric))
    kinks = tuple(tuple(int(i) for i in index) for index in np.argwhere(scan.kink))
    rel = (rel_error(analytic[smooth], numeric[smooth]) if smooth.any() else 0.0)
    mismatches = int(np.count_nonzero(disagree))
    return GradientReport(name, float(np.max(error[smooth], initial=0.0)), rel,
                          mismatches == 0 and not kinks, mismatches, kinks, promoted_from)


def _host_copy(a) -> np.ndarray:
    return np.array(to_numpy(a), dtype=np.float64, order="C", copy=True)


def _promoted(*arrays) -> str:
    """The floating dtypes other than float64 among the arrays, e.g. "float32"."""
    return "/".join(sorted({str(a.dtype) for a in arrays
                            if a is not None and a.dtype.kind == "f" and a.dtype != np.float64}))


def _float64_layer(layer):
    """The layer itself when its parameters are all float64, else a float64 deep copy."""
    if not _promoted(*(owner.params[key] for _, owner, key in layer.named_parameters())):
        return layer
    layer = copy.deepcopy(layer)
    for _, owner, key in layer.named_parameters():
        owner.params[key] = owner.params[key].astype(np.float64)
    return layer


def check_layer(layer, x, dout=None, h: float = 1e-6, seed: int = 0,
                atol: float = ATOL, rtol: float = RTOL,
                detect_kinks: bool = False) -> list[GradientReport]:
    """Compare a layer's backward with central differences, for the input and every parameter.

    ``layer`` and ``x`` may live on either backend.  A layer with float32 parameters
    (the default) is checked through a float64 deep copy and left untouched, and x is
    always checked as a float64 copy: each report's ``promoted_from`` says which dtype
    was promoted.  Returns one report per gradient, the input first (name "input"),
    then parameters by dotted name.  The layer's parameters are left as they were.
    ``detect_kinks`` flags non-differentiable entries (module docstring).
    """
    promoted_from = _promoted(x, *(owner.params[key] for _, owner, key in layer.named_parameters()))
    layer = _float64_layer(layer)
    rng = np.random.default_rng(seed)
    xp = get_array_module(x)
    x_host = _host_copy(x)
    out = layer.forward(xp.asarray(x_host))
    dout = rng.standard_normal(out.shape) if dout is None else to_numpy(dout)
    dx = layer.backward(xp.asarray(dout))
    analytic = {name: owner.grads[key] for name, owner, key in layer.named_parameters()}

    def compare(name, gradient, f, point):
        return _report(name, gradient, _scan(f, point, dout, h, detect_kinks, atol, rtol),
                       atol, rtol, promoted_from)

    reports = [compare("input", dx, lambda: layer.forward(xp.asarray(x_host)), x_host)]
    for name, owner, key in layer.named_parameters():
        original = owner.params[key]
        p_host = _host_copy(original)

        def f():
            owner.params[key] = xp.asarray(p_host)
            return layer.forward(xp.asarray(x_host))

        try:
            reports.append(compare(name, analytic[name], f, p_host))
        finally:
            owner.params[key] = original
    return reports


def check_loss(loss, scores, labels, h: float = 1e-6, atol: float = ATOL, rtol: float = RTOL,
               detect_kinks: bool = False) -> GradientReport:
    """Compare a loss's backward (dLoss/dscores) with central differences of its forward.

    ``loss.forward(scores, labels)`` returns the scalar loss and ``loss.backward()`` its
    gradient with respect to the scores; the scores are checked as a float64 copy.
    With ``detect_kinks`` the report lists the score entries at a non-differentiable
    point (a margin's switch or a jump of the loss) instead of failing on them.
    """
    xp = get_array_module(scores)
    s_host = _host_copy(scores)
    loss.forward(xp.asarray(s_host), labels)
    analytic = loss.backward()
    scan = _scan(lambda: np.float64(loss.forward(xp.asarray(s_host), labels)),
                 s_host, np.float64(1.0), h, detect_kinks, atol, rtol)
    return _report("scores", analytic, scan, atol, rtol, _promoted(scores))


def _is_floating_array(a) -> bool:
    return hasattr(a, "dtype") and hasattr(a, "shape") and a.dtype.kind == "f"


def _input_names(forward, count):
    """forward's positional parameter names, "inputs[i]" where it has none to give."""
    try:
        parameters = [p.name for p in inspect.signature(forward).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # a builtin or C function without a signature
        parameters = []
    return [parameters[i] if i < len(parameters) else f"inputs[{i}]" for i in range(count)]


def check_function(forward, backward, inputs, kwargs=None, dout=None, h: float = 1e-6,
                   seed: int = 0, atol: float = ATOL, rtol: float = RTOL,
                   detect_kinks: bool = False) -> list[GradientReport]:
    """Check a pure forward/backward pair, e.g.
    ``check_function(F.conv2d_forward, F.conv2d_backward, (x, w, b), {"stride": 2})``.

    ``forward(*inputs, **kwargs)`` returns ``(out, cache)`` and ``backward(dout, cache)``
    returns one gradient, or a tuple with one entry per input in order (None for an input
    without one, such as an absent bias; entries for trailing inputs without a gradient,
    such as labels, may be left out).  Every floating-point array among ``inputs`` is
    checked, as a float64 copy (``promoted_from`` says when that promoted float32);
    integer arrays (labels), None and numbers go to forward unchanged.  ``dout`` is the
    upstream gradient, drawn from N(0, 1) with ``seed`` by default (a scalar for a loss).
    Returns one report per checked input, named after forward's parameters ("x", "w").
    ``detect_kinks`` flags non-differentiable entries (module docstring).
    """
    inputs, kwargs = list(inputs), dict(kwargs or {})
    xp = get_array_module(*inputs)
    checked = [i for i, a in enumerate(inputs) if _is_floating_array(a)]
    promoted_from = _promoted(*(inputs[i] for i in checked))
    hosts = {i: _host_copy(inputs[i]) for i in checked}

    def f():
        arguments = [xp.asarray(hosts[i]) if i in hosts else a for i, a in enumerate(inputs)]
        return forward(*arguments, **kwargs)[0]

    out, cache = forward(*[xp.asarray(hosts[i]) if i in hosts else a for i, a in enumerate(inputs)],
                         **kwargs)
    rng = np.random.default_rng(seed)
    dout = rng.standard_normal(np.shape(out)) if dout is None else to_numpy(dout)
    gradients = backward(xp.asarray(dout), cache)
    gradients = list(gradients) if isinstance(gradients, (tuple, list)) else [gradients]
    names = _input_names(forward, len(inputs))
    if len(gradients) > len(inputs):
        raise ValueError(f"check_function: backward returned {len(gradients)} gradients "
                         f"for {len(inputs)} inputs")
    gradients += [None] * (len(inputs) - len(gradients))
    reports = []
    for i, (name, gradient) in enumerate(zip(names, gradients)):
        if i not in hosts:
            if gradient is not None:
                raise ValueError(f"check_function: backward returned a gradient for {name} "
                                 f"(input {i}), which is not a floating-point array")
            continue
        if gradient is None:
            raise ValueError(f"check_function: backward returned no gradient for {name} (input {i})")
        scan = _scan(f, hosts[i], dout, h, detect_kinks, atol, rtol)
        reports.append(_report(name, gradient, scan, atol, rtol, promoted_from))
    return reports


def directional_check(layer, x, h: float = 1e-6, seed: int = 0,
                      atol: float = ATOL, rtol: float = RTOL,
                      detect_kinks: bool = False) -> GradientReport:
    """Check a layer along one random direction of (input, all parameters) jointly.

    Compares (⟨g, f(θ + h d)⟩ − ⟨g, f(θ − h d)⟩) / 2h with ⟨∇, d⟩ from backward:
    two forward calls whatever the layer's size (four with ``detect_kinks``, whose
    report then has ``kinks == ((),)`` when the line θ + t d crosses a kink near t = 0).
    A float32 layer is checked through a float64 copy, as in :func:`check_layer`.
    Parameters are restored.
    """
    promoted_from = _promoted(x, *(owner.params[key] for _, owner, key in layer.named_parameters()))
    layer = _float64_layer(layer)
    rng = np.random.default_rng(seed)
    xp = get_array_module(x)
    entries = [("input", None, None)] + list(layer.named_parameters())
    originals = [x] + [owner.params[key] for _, owner, key in entries[1:]]
    hosts = [_host_copy(a) for a in originals]
    directions = [rng.standard_normal(a.shape) for a in hosts]
    step = np.zeros(1)  # the position t along the direction, perturbed by _scan

    def f():
        t = step[0]
        for (_, owner, key), base, d in zip(entries[1:], hosts[1:], directions[1:]):
            owner.params[key] = xp.asarray(base + t * d)
        return layer.forward(xp.asarray(hosts[0] + t * directions[0]))

    try:
        out = f()
        dout = rng.standard_normal(out.shape)
        dx = layer.backward(xp.asarray(dout))
        grads = [dx] + [owner.grads[key] for _, owner, key in entries[1:]]
        analytic = sum(float(np.sum(to_numpy(g).astype(np.float64) * d)) for g, d in zip(grads, directions))
        scan = _scan(f, step, dout, h, detect_kinks, atol, rtol)
    finally:
        for (_, owner, key), original in zip(entries[1:], originals[1:]):
            owner.params[key] = original
    scalar = _Scan(*(np.asarray(a).reshape(()) for a in scan))
    return _report("direction", np.float64(analytic), scalar, atol, rtol, promoted_from)


def _where_not_differentiable(kinks, shown=4) -> str:
    if kinks == ((),):
        return "not differentiable at the point"
    listed = ", ".join(str(k) for k in kinks[:shown])
    return f"not differentiable at {listed}" + (f", … ({len(kinks)} in all)" if len(kinks) > shown else "")


def format_reports(reports) -> str:
    """A small table of reports, one line each: the worst errors and the verdict, with the
    number of disagreeing entries, the entries at kinks, and any float64 promotion."""
    lines = []
    for r in reports:
        notes = []
        if r.mismatches or (not r.passed and not r.kinks):
            notes.append("FAILED" + (f" at {r.mismatches} entr{'y' if r.mismatches == 1 else 'ies'}"
                                     if r.mismatches else ""))
        if r.kinks:
            notes.append(_where_not_differentiable(r.kinks))
        line = f"{r.name:<24} abs {r.max_abs_error:9.2e}  rel {r.max_rel_error:9.2e}  " + ("; ".join(notes) or "ok")
        if r.promoted_from:
            line += f"  ({r.promoted_from} checked as a float64 copy)"
        lines.append(line)
    return "\n".join(lines)
