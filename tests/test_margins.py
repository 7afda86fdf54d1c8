"""The margin family: every member's ψ, the shared core, the heads and the registry.

Gradient checks run in float64 on hypothesis-drawn shapes and options, with the
target cosines drawn away from each member's kinks (A-Softmax sector boundaries,
the ArcFace fallback switch, |c| = 1, the conditional margin's jump); the kinks
themselves have deterministic tests below.
"""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from amnp import checkpoint
from amnp import functional as F
from amnp import layers as L
from amnp.gradcheck import check_function, check_layer, format_reports, numerical_gradient
from amnp.config import LOSSES, build_head, resolve_loss_options
from amnp.heads import SCALE_FLOOR, MarginHead, TrainingModel
from amnp.optim import SGD

F64 = np.float64
seeds = st.integers(0, 2**32 - 1)


def kinks(loss, options):
    """The target cosines where ``loss`` with ``options`` is not differentiable (or
    where its slope is clamped), which gradient checks must keep away from."""
    if loss == "sphereface":
        return [math.cos(j * math.pi / options["m"]) for j in range(1, options["m"])] + [-1.0, 1.0]
    if loss == "arcface":
        return [math.cos(math.pi - options["m"]), -1.0, 1.0]
    if loss == "combined":
        return [-1.0, 1.0]
    if loss == "am-softmax" and options.get("conditional_margin"):
        return [options["m"]]
    return []


def cosines_away_from(rng, n, c, points, gap=0.02):
    """(N, C) cosines in (−0.95, 0.95) with every entry at least ``gap`` from each point."""
    cos = rng.uniform(-0.95, 0.95, (n, c))
    for point in points:
        near = np.abs(cos - point) < gap
        cos[near] = point + np.where(cos[near] < point, -gap, gap)
    return np.clip(cos, -0.95, 0.95)


member_options = st.one_of(
    st.just(("normface", {})),
    st.builds(lambda s: ("normface", {"s": s, "learn_scale": True}), st.floats(1.5, 30.0)),
    st.builds(lambda m, s, cond: ("am-softmax", {"m": m, "s": s, "conditional_margin": cond}),
              st.floats(0.0, 0.6), st.floats(1.0, 40.0), st.booleans()),
    st.builds(lambda m: ("am-softmax", {"m": m, "normalize_features": False}), st.floats(0.0, 0.6)),
    st.builds(lambda m, lam: ("sphereface", {"m": m, "lambda_min": lam, "lambda_base": lam}),
              st.integers(1, 5), st.sampled_from([0.0, 0.5, 5.0])),
    st.builds(lambda m, s: ("arcface", {"m": m, "s": s}), st.floats(0.0, 1.2), st.floats(1.0, 64.0)),
    st.builds(lambda m1, m2, m3, s: ("combined", {"m1": m1, "m2": m2, "m3": m3, "s": s}),
              st.sampled_from([1.0, 1.35, 2.0]), st.floats(0.0, 0.6), st.floats(0.0, 0.4),
              st.floats(1.0, 40.0)),
)


class HeadLoss(L.Layer):
    """A head with fixed labels as a layer from embeddings to its (1,)-shaped loss, so the
    generic layer checker covers the embeddings, the class weights and a learned scale."""

    def __init__(self, head, labels):
        super().__init__()
        self.head, self.labels = head, labels

    def children(self):
        return [("head", self.head)]

    def forward(self, x):
        return self.head.forward(x, self.labels).reshape(1)

    def backward(self, dout):
        dx = self.head.backward()  # the gradient of the loss itself; scale all by the upstream dout
        for _, owner, key in self.head.named_parameters():
            owner.grads[key] = owner.grads[key] * dout[0]
        return dx * dout[0]


def embeddings_with_target_cosines(head, rng, n, d, points):
    """Embeddings whose target cosines keep away from ``points``: redraw the rows that fall near one."""
    labels = rng.integers(0, head.classifier.num_classes, n)
    w_hat = head.classifier.params["weight"] / np.linalg.norm(head.classifier.params["weight"], axis=1, keepdims=True)
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 3.0, (n, 1))
    for _ in range(200):
        c = (x / np.linalg.norm(x, axis=1, keepdims=True) * w_hat[labels]).sum(1)
        bad = np.zeros(n, bool)
        for point in points:
            bad |= np.abs(c - point) < 0.03
        bad |= np.abs(c) > 0.97
        if not bad.any():
            return x, labels
        x[bad] = rng.standard_normal((int(bad.sum()), d)) * 2
    raise AssertionError("could not draw embeddings away from the kinks")


@given(seed=seeds, n=st.integers(1, 4), d=st.integers(2, 5), classes=st.integers(2, 5), member=member_options)
def test_every_member_head_gradient(seed, n, d, classes, member):
    """dL/d(embeddings), dL/d(class weights) and dL/ds of every head, against central differences."""
    loss, options = member
    rng = np.random.default_rng(seed)
    head = build_head(loss, d, classes, dtype=F64, rng=rng, **options)
    x, labels = embeddings_with_target_cosines(head, rng, n, d, kinks(loss, resolve_loss_options(loss, options)))
    reports = check_layer(HeadLoss(head, labels), x, seed=seed, detect_kinks=True)
    assert all(r.passed for r in reports), f"{loss} {options}\n" + format_reports(reports)
    names = [r.name for r in reports]
    assert ("head.scale" in names) == bool(options.get("learn_scale"))


@given(seed=seeds, n=st.integers(1, 5), c=st.integers(1, 6), m=st.integers(1, 5),
       lam=st.floats(0.0, 10.0), scaled_by_norm=st.booleans())
def test_core_gradient_for_cosines_and_feature_norms(seed, n, c, m, lam, scaled_by_norm):
    """The core alone, with A-Softmax's ψ (the member with the most structure): dcos and the
    gradient for a per-sample scale (the feature norms)."""
    rng = np.random.default_rng(seed)
    cos = cosines_away_from(rng, n, c, kinks("sphereface", {"m": m}))
    labels = rng.integers(0, c, n)
    scale = rng.uniform(0.5, 5.0, (n, 1)) if scaled_by_norm else 7.0

    def margin(t):
        return F.sphereface_margin(t, m, lam)

    _, cache = F.margin_softmax_forward(cos, labels, margin, scale)
    dcos, dscale = F.margin_softmax_backward(1.0, cache)
    numeric = numerical_gradient(lambda: F.margin_softmax_forward(cos, labels, margin, scale)[0], cos, 1.0)
    np.testing.assert_allclose(dcos, numeric, rtol=1e-5, atol=1e-7)
    if scaled_by_norm:
        numeric_scale = numerical_gradient(lambda: F.margin_softmax_forward(cos, labels, margin, scale)[0],
                                           scale, 1.0)
        np.testing.assert_allclose(dscale, numeric_scale, rtol=1e-5, atol=1e-7)
    else:
        assert dscale is None


# ----------------------------------------------------------------------------- ψ itself

@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_sphereface_psi_matches_its_angular_definition(m):
    theta = np.linspace(0, np.pi, 2001)
    k = np.minimum(np.floor(theta * m / np.pi), m - 1)
    expected = (-1) ** k * np.cos(m * theta) - 2 * k
    psi, slope = F.sphereface_margin(np.cos(theta), m)
    np.testing.assert_allclose(psi, expected, atol=1e-9)
    interior = (theta > 1e-3) & (theta < np.pi - 1e-3)
    t = theta[interior]
    expected_slope = (-1) ** k[interior] * m * np.sin(m * t) / np.sin(t)  # dψ/dθ / (dc/dθ)
    np.testing.assert_allclose(slope[interior], expected_slope, rtol=1e-7, atol=1e-7)
    assert np.all(np.diff(psi) <= 1e-12), "ψ must fall monotonically as θ grows"


@pytest.mark.parametrize("m", [2, 3, 4])
def test_sphereface_is_continuous_with_a_continuous_slope_at_sector_boundaries(m):
    for j in range(1, m):
        boundary = math.cos(j * math.pi / m)
        below, above = np.array([boundary - 1e-9]), np.array([boundary + 1e-9])
        (psi_below, slope_below), (psi_above, slope_above) = F.sphereface_margin(below, m), F.sphereface_margin(above, m)
        assert psi_below[0] == pytest.approx(1 - 2 * j, abs=1e-7)
        assert psi_above[0] == pytest.approx(1 - 2 * j, abs=1e-7)
        assert slope_below[0] == pytest.approx(0, abs=1e-6) and slope_above[0] == pytest.approx(0, abs=1e-6)
        # and the loss's gradient at a boundary matches central differences; ψ'' jumps there,
        # so the central difference is only first-order accurate (error O(h)): a small h
        cos = np.array([[boundary, 0.1]])
        _, cache = F.margin_softmax_forward(cos, np.array([0]), lambda c: F.sphereface_margin(c, m), 3.0)
        numeric = numerical_gradient(
            lambda: F.margin_softmax_forward(cos, np.array([0]), lambda c: F.sphereface_margin(c, m), 3.0)[0],
            cos, 1.0, h=1e-8)
        np.testing.assert_allclose(F.margin_softmax_backward(1.0, cache)[0], numeric, atol=1e-6)


def test_arcface_psi_and_its_fallback_switch():
    m = 0.5
    theta = np.linspace(0, np.pi - m - 1e-6, 500)
    psi, slope = F.arcface_margin(np.cos(theta), m)
    np.testing.assert_allclose(psi, np.cos(theta + m), atol=1e-12)
    interior = theta > 1e-3
    expected = np.sin(theta[interior] + m) / np.sin(theta[interior])
    np.testing.assert_allclose(slope[interior], expected, rtol=1e-9)
    switch = math.cos(math.pi - m)
    left, right = F.arcface_margin(np.array([switch - 1e-12, switch + 1e-12]), m)[0]
    assert right == pytest.approx(-1.0, abs=1e-6)
    assert left == pytest.approx(switch - m * math.sin(m), abs=1e-9)  # the fallback c − m·sin m
    assert right - left == pytest.approx(-1 + math.cos(m) + m * math.sin(m), abs=1e-6)  # the jump
    fallback_slope = F.arcface_margin(np.array([-0.99]), m)[1]
    assert fallback_slope[0] == 1.0


@pytest.mark.parametrize("psi", [
    lambda c: F.arcface_margin(c, 0.5),
    lambda c: F.combined_margin(c, 1.0, 0.3, 0.2),
    lambda c: F.combined_margin(c, 1.7, 0.2, 0.1),
    lambda c: F.sphereface_margin(c, 4, 5.0),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cosines_at_and_beyond_plus_minus_one_give_finite_values_and_gradients(psi, dtype):
    """|c| → 1, including the float32 rounding that puts a cosine just past 1."""
    c = np.array([1.0, np.nextafter(dtype(1), dtype(2)), 1 - 1e-12, -1.0, np.nextafter(dtype(-1), dtype(-2))],
                 dtype=dtype)
    value, slope = psi(c)
    assert value.dtype == dtype and slope.dtype == dtype
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(slope))
    cos = np.stack([c, np.zeros_like(c)], axis=1)
    loss, cache = F.margin_softmax_forward(cos, np.zeros(len(c), np.int64), psi, 64.0)
    dcos, _ = F.margin_softmax_backward(1.0, cache)
    assert np.isfinite(loss) and np.all(np.isfinite(dcos))


def test_the_slope_clamp_is_documented_size():
    """Near c = 1 the ArcFace slope is that at sin θ = SIN_FLOOR, never larger."""
    from amnp.functional.margins import SIN_FLOOR
    slope = F.arcface_margin(np.array([1.0]), 0.5)[1][0]
    assert slope == pytest.approx(math.cos(0.5) + math.sin(0.5) / SIN_FLOOR)


def test_conditional_margin_jumps_at_c_equal_m():
    m, s = 0.3, 10.0
    labels = np.array([0])
    below = F.am_softmax_forward(np.array([[m - 1e-9, 0.0]]), labels, m, s, conditional=True)[0]
    above = F.am_softmax_forward(np.array([[m + 1e-9, 0.0]]), labels, m, s, conditional=True)[0]
    # the target logit falls by s·m when c crosses m: log(1 + e^(−s(c − m))) vs log(1 + e^(−s c))
    assert float(above - below) == pytest.approx(math.log1p(math.exp(-s * (m - m))) - math.log1p(math.exp(-s * m)),
                                                 abs=1e-6)
    assert float(above - below) > 0.5


# ----------------------------------------------------------------------------- identities

def run_head(loss, x, labels, **options):
    head = build_head(loss, x.shape[1], 4, dtype=F64, rng=3, **options)
    value = head.forward(x, labels)
    dx = head.backward()
    return float(value), dx, head.classifier.grads["weight"]


@given(seed=seeds, m3=st.floats(0.0, 0.6), s=st.floats(1.0, 40.0))
def test_combined_margin_reduces_to_am_softmax_and_normface(seed, m3, s):
    rng = np.random.default_rng(seed)
    x, labels = rng.standard_normal((5, 3)), rng.integers(0, 4, 5)
    combined = run_head("combined", x, labels, m1=1, m2=0, m3=m3, s=s)
    additive = run_head("am-softmax", x, labels, m=m3, s=s)
    normface = run_head("normface", x, labels, s=s)
    plain = run_head("combined", x, labels, m1=1, m2=0, m3=0, s=s)
    for ours, theirs in [(combined, additive), (plain, normface)]:
        assert ours[0] == pytest.approx(theirs[0], rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ours[2], theirs[2], rtol=1e-12, atol=1e-14)


@given(seed=seeds)
def test_sphereface_with_m_1_and_lambda_0_is_feature_norm_scaled_normface(seed):
    rng = np.random.default_rng(seed)
    x, labels = rng.standard_normal((5, 3)) * 2, rng.integers(0, 4, 5)
    sphere = run_head("sphereface", x, labels, m=1, lambda_base=1e-9, lambda_min=0)
    no_fn = run_head("am-softmax", x, labels, m=0, normalize_features=False)
    assert sphere[0] == pytest.approx(no_fn[0], rel=1e-7)
    np.testing.assert_allclose(sphere[1], no_fn[1], rtol=1e-7, atol=1e-12)
    # and ‖f‖-scaled NormFace written out directly
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ \
        (lambda w: (w / np.linalg.norm(w, axis=1, keepdims=True)).T)(build_head("normface", 3, 4, dtype=F64, rng=3)
                                                                       .classifier.params["weight"])
    z = np.linalg.norm(x, axis=1, keepdims=True) * cos
    z -= z.max(1, keepdims=True)
    expected = -np.mean(z[np.arange(5), labels] - np.log(np.exp(z).sum(1)))
    assert sphere[0] == pytest.approx(expected, rel=1e-7)


def test_arcface_with_zero_margin_is_normface():
    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal((6, 3)), rng.integers(0, 4, 6)
    arc, norm = run_head("arcface", x, labels, m=0.0, s=12.0), run_head("normface", x, labels, s=12.0)
    assert arc[0] == pytest.approx(norm[0], rel=1e-12)
    np.testing.assert_allclose(arc[1], norm[1], rtol=1e-9, atol=1e-12)


def old_am_softmax(cos, labels, m, s):
    """AM-Softmax as amnp computed it before the margin family had one core (the reference
    for 'AM-Softmax's results do not change'): logits s·cos, s·m off the target, CE."""
    n = len(labels)
    z = s * cos
    z[np.arange(n), labels] -= s * m
    z = z - z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    grad = np.exp(log_p)
    grad[np.arange(n), labels] -= 1
    return -log_p[np.arange(n), labels].mean(), s * grad / n


@given(seed=seeds, n=st.integers(1, 6), c=st.integers(2, 7), m=st.floats(0.0, 0.6), s=st.floats(1.0, 64.0))
def test_am_softmax_is_unchanged_by_the_shared_core(seed, n, c, m, s):
    rng = np.random.default_rng(seed)
    cos, labels = rng.uniform(-1, 1, (n, c)), rng.integers(0, c, n)
    loss, cache = F.am_softmax_forward(cos, labels, m, s)
    old_loss, old_grad = old_am_softmax(cos.copy(), labels, m, s)
    assert float(loss) == pytest.approx(old_loss, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(F.am_softmax_backward(1.0, cache), old_grad, rtol=1e-12, atol=1e-12)


@given(seed=seeds, member=member_options)
def test_only_the_target_column_changes_and_logit_gradients_sum_to_zero(seed, member):
    loss, options = member
    rng = np.random.default_rng(seed)
    head = build_head(loss, 3, 5, dtype=F64, rng=rng, **options)
    x, labels = rng.standard_normal((4, 3)), rng.integers(0, 5, 4)
    head.forward(x, labels)
    cache = head._cache
    off_target = np.ones_like(head.scores, bool)
    off_target[np.arange(4), labels] = False
    np.testing.assert_array_equal(cache.modified[off_target], head.scores[off_target])
    dz = F.softmax_cross_entropy_backward(1.0, cache.ce_cache)
    np.testing.assert_allclose(dz.sum(axis=1), 0, atol=1e-15)


# ----------------------------------------------------------------------------- heads and schedules

def test_sphereface_lambda_schedule_follows_the_reference():
    head = build_head("sphereface", 4, 3)
    assert head.schedule() == {"lam": pytest.approx(1000 / 1.12)}  # the reference's counter is 1 at t = 0
    head.set_step(99)
    assert head.schedule()["lam"] == pytest.approx(1000 / (1 + 0.12 * 100))
    head.set_step(100_000)
    assert head.schedule()["lam"] == 5.0


def test_learned_scale_is_a_named_parameter_without_weight_decay_and_is_checkpointed(tmp_path):
    head = build_head("normface", 3, 4, s=10.0, learn_scale=True, rng=0)
    model = TrainingModel(L.Sequential(L.Linear(2, 3, rng=0)), head)
    assert "head.scale" in [name for name, _, _ in model.named_parameters()]
    assert float(head.schedule()["s"]) == 10.0
    head.forward(np.ones((2, 3), np.float32), np.array([0, 1]))
    head.backward()
    for _, owner, key in model.named_parameters():
        owner.grads[key] = np.zeros_like(owner.params[key])
    optimizer = SGD(model, momentum=0.0, weight_decay=0.5)
    optimizer.step(lr=1.0)
    assert float(head.params["scale"][0]) == 10.0, "weight decay must not reach the scale"
    assert float(model.net[0].params["weight"][0, 0]) != 0  # while it does reach the weights
    checkpoint.save(tmp_path / "c.npz", model, optimizer, {"step": 1})
    head.params["scale"][0] = 3.0
    checkpoint.load(tmp_path / "c.npz", model)
    assert float(head.params["scale"][0]) == 10.0


def test_learned_scale_gradient_and_floor():
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((4, 3)), np.array([0, 1, 2, 0])
    head = build_head("normface", 3, 3, s=5.0, learn_scale=True, dtype=F64, rng=0)
    head.forward(x, labels)
    head.backward()
    cos = head.scores
    z = 5.0 * cos
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    # dL/ds = mean over samples of (Σ_j p_j cos_j − cos_y)
    expected = np.mean((p * cos).sum(1) - cos[np.arange(4), labels])
    assert head.grads["scale"][0] == pytest.approx(expected, rel=1e-10)
    head.params["scale"][0] = SCALE_FLOOR / 2  # below the floor the forward uses the floor...
    low = float(head.forward(x, labels))
    head.backward()
    assert head.grads["scale"][0] == 0.0  # ...and the parameter gets no gradient
    head.params["scale"][0] = SCALE_FLOOR
    assert float(head.forward(x, labels)) == low


def test_the_registry_refuses_what_does_not_apply():
    with pytest.raises(ValueError, match="loss 'softmax' does not take 'm'"):
        build_head("softmax", 3, 4, m=0.3)
    with pytest.raises(ValueError, match=r"loss 'arcface' does not take 'learn_scale'; it takes m, s$"):
        build_head("arcface", 3, 4, learn_scale=True)
    with pytest.raises(ValueError, match="does not apply to am-softmax without feature normalisation"):
        build_head("am-softmax", 3, 4, normalize_features=False, s=30)
    with pytest.raises(ValueError, match=r"^m of loss 'sphereface' must be an integer from 1 to 10, got 2.5"):
        build_head("sphereface", 3, 4, m=2.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, π\)"):
        build_head("arcface", 3, 4, m=math.pi)
    with pytest.raises(ValueError, match="learn_scale .* must be true or false"):
        build_head("normface", 3, 4, learn_scale="yes")
    with pytest.raises(ValueError, match="s .* must be a finite number"):
        build_head("normface", 3, 4, s=float("inf"))


def test_resolving_fills_defaults_and_is_idempotent():
    for name in LOSSES:
        resolved = resolve_loss_options(name, {})
        assert resolve_loss_options(name, resolved) == resolved
        assert set(resolved) <= {o.name for o in LOSSES[name].options}
    without_fn = resolve_loss_options("am-softmax", {"normalize_features": False})
    assert "s" not in without_fn and without_fn["margin_ramp"] == 2.5e-4  # ‖f‖ must grow first
    assert resolve_loss_options("am-softmax", {"normalize_features": False, "margin_ramp": 0.01})["margin_ramp"] == 0.01
    assert resolve_loss_options("am-softmax", {})["margin_ramp"] is None
    no_ramp = build_head("am-softmax", 3, 4, normalize_features=False, margin_ramp=0)
    assert no_ramp.schedule()["m"] == 0.35  # 0 asks for the full margin from the first step


def test_heads_are_margin_heads_except_softmax():
    for name in LOSSES:
        assert isinstance(build_head(name, 3, 4), MarginHead) == (name != "softmax")


def test_softmax_head_logs_a_real_cosine():
    rng = np.random.default_rng(0)
    head = build_head("softmax", 3, 4, dtype=F64, rng=0)
    x, labels = rng.standard_normal((5, 3)) * 10, rng.integers(0, 4, 5)
    head.forward(x, labels)
    w = head.classifier.params["weight"][labels]
    expected = (x * w).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(w, axis=1)
    np.testing.assert_allclose(head.target_cosines(), expected, rtol=1e-10)
    assert np.all(np.abs(head.target_cosines()) <= 1)


# ----------------------------------------------------------------------------- the kink detector at each kink

def target_cosine_check(cos, labels, margin, scale=10.0, h=1e-6):
    """check_function on the core with respect to the cosines alone, with kink detection."""
    return check_function(lambda c: F.margin_softmax_forward(c, labels, margin, scale),
                          lambda dout, cache: F.margin_softmax_backward(dout, cache)[0],
                          (cos,), dout=np.float64(1.0), h=h, detect_kinks=True)[0]


def test_the_checker_flags_the_arcface_switch_and_passes_beside_it():
    m = 0.5
    switch = math.cos(math.pi - m)
    labels = np.array([0, 1])
    at = target_cosine_check(np.array([[switch, 0.2], [0.1, 0.3]]), labels, lambda c: F.arcface_margin(c, m))
    assert at.verdict == "not differentiable" and at.kinks == ((0, 0),)
    beside = target_cosine_check(np.array([[switch + 0.01, 0.2], [0.1, 0.3]]), labels,
                                 lambda c: F.arcface_margin(c, m))
    assert beside.passed and beside.kinks == ()


def test_the_checker_flags_the_conditional_margin_jump():
    m = 0.35
    labels = np.array([0])
    at = target_cosine_check(np.array([[m, 0.1]]), labels, lambda c: F.additive_margin(c, m, conditional=True))
    assert at.verdict == "not differentiable" and (0, 0) in at.kinks
    away = target_cosine_check(np.array([[m + 0.05, 0.1]]), labels,
                               lambda c: F.additive_margin(c, m, conditional=True))
    assert away.passed


def test_the_unconditional_margin_and_sphereface_boundaries_are_smooth_enough_not_to_be_flagged():
    labels = np.array([0])
    additive = target_cosine_check(np.array([[0.35, 0.1]]), labels, lambda c: F.additive_margin(c, 0.35))
    assert additive.passed and additive.kinks == ()
    # At a sector boundary ψ and dψ/dc are continuous but ψ'' jumps, which bends the
    # one-sided slopes by about h·Δψ'': a step of 1e-8 makes that bend too small to matter,
    # while a true kink (above) bends them by its slope jump whatever h is.
    boundary = math.cos(math.pi / 4)
    sphere = target_cosine_check(np.array([[boundary, 0.1]]), labels, lambda c: F.sphereface_margin(c, 4), 1.0,
                                 h=1e-8)
    assert sphere.passed and sphere.kinks == ()
