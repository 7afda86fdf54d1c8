"""Analytic gradients against float64 central differences, on hypothesis-drawn shapes.

Data come from a seeded NumPy generator (hypothesis draws the seed), shaped to
stay away from kinks: activations keep |x| >= 0.1, max-pool inputs are distinct
with gaps of at least 0.01.  The kink conventions have their own deterministic
tests in test_kinks.py.
"""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from amnp import layers as L
from amnp import losses
from amnp.gradcheck import check_layer, check_loss, directional_check, format_reports

F64 = np.float64
seeds = st.integers(0, 2**32 - 1)


def assert_all_pass(reports):
    assert all(r.passed for r in reports), "\n" + format_reports(reports)


def away_from_zero(x, gap=0.1):
    """Move entries with |x| < gap out to ±gap so no finite difference crosses 0."""
    return np.where(np.abs(x) < gap, np.where(x < 0, -gap, gap), x)


def distinct_values(rng, shape, gap=0.01):
    """A random arrangement of evenly spaced values: no ties, no near-ties."""
    size = int(np.prod(shape))
    return (rng.permutation(size) * gap - size * gap / 2).reshape(shape)


@st.composite
def window_geometry(draw, max_kernel=3, pool=False):
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if pool:
        ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    else:
        ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    assume(h + 2 * ph >= kh and w + 2 * pw >= kw)
    return (kh, kw), (sh, sw), (ph, pw), (h, w)


@given(seed=seeds, n=st.integers(1, 3), d_in=st.integers(1, 5), d_out=st.integers(1, 4),
       bias=st.booleans())
def test_linear(seed, n, d_in, d_out, bias):
    rng = np.random.default_rng(seed)
    layer = L.Linear(d_in, d_out, bias=bias, dtype=F64, rng=rng)
    assert_all_pass(check_layer(layer, rng.standard_normal((n, d_in)), seed=seed))


@given(seed=seeds, n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3),
       geometry=window_geometry(), bias=st.booleans())
def test_conv2d(seed, n, c, f, geometry, bias):
    kernel, stride, padding, (h, w) = geometry
    rng = np.random.default_rng(seed)
    layer = L.Conv2d(c, f, kernel, stride, padding, bias=bias, dtype=F64, rng=rng)
    if bias:  # a zero bias would hide a wrong bias gradient's scale
        layer.params["bias"] = rng.standard_normal(f)
    assert_all_pass(check_layer(layer, rng.standard_normal((n, c, h, w)), seed=seed))


@given(seed=seeds, shape=st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_relu(seed, shape):
    rng = np.random.default_rng(seed)
    x = away_from_zero(rng.standard_normal(shape))
    assert_all_pass(check_layer(L.ReLU(), x, seed=seed))


@given(seed=seeds, n=st.integers(1, 3), c=st.integers(1, 4), spatial=st.integers(0, 2),
       shared=st.booleans())
def test_prelu(seed, n, c, spatial, shared):
    rng = np.random.default_rng(seed)
    x = away_from_zero(rng.standard_normal((n, c) + (3,) * spatial))
    layer = L.PReLU(1 if shared else c, dtype=F64)
    layer.params["weight"] = rng.uniform(0.05, 0.5, size=layer.params["weight"].shape)
    assert_all_pass(check_layer(layer, x, seed=seed))


@given(seed=seeds, n=st.integers(1, 2), c=st.integers(1, 3), geometry=window_geometry(pool=True))
def test_max_pool2d(seed, n, c, geometry):
    kernel, stride, padding, (h, w) = geometry
    rng = np.random.default_rng(seed)
    x = distinct_values(rng, (n, c, h, w))
    assert_all_pass(check_layer(L.MaxPool2d(kernel, stride, padding), x, seed=seed))


@given(seed=seeds, n=st.integers(1, 2), c=st.integers(1, 3), geometry=window_geometry(pool=True))
def test_avg_pool2d(seed, n, c, geometry):
    kernel, stride, padding, (h, w) = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    assert_all_pass(check_layer(L.AvgPool2d(kernel, stride, padding), x, seed=seed))


@given(seed=seeds, shape=st.lists(st.integers(1, 3), min_size=1, max_size=4))
def test_flatten(seed, shape):
    rng = np.random.default_rng(seed)
    assert_all_pass(check_layer(L.Flatten(), rng.standard_normal(shape), seed=seed))


@given(seed=seeds, n=st.integers(1, 4), d=st.integers(1, 6), scale=st.sampled_from([1e-2, 1.0, 1e2]))
def test_l2_normalize(seed, n, d, scale):
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal((n, d))
    assume(np.linalg.norm(x, axis=1).min() > 1e-2 * scale)
    # Relative tolerance only: the gradient scales as 1/‖x‖.
    reports = check_layer(L.L2Normalize(), x, seed=seed, h=1e-6 * scale, atol=1e-6 / scale)
    assert_all_pass(reports)


@given(seed=seeds, n=st.integers(1, 4), d=st.integers(1, 5), c=st.integers(1, 5),
       normalize_features=st.booleans())
def test_cosine_linear(seed, n, d, c, normalize_features):
    rng = np.random.default_rng(seed)
    layer = L.CosineLinear(d, c, normalize_features=normalize_features, dtype=F64, rng=rng)
    x = rng.standard_normal((n, d))
    assume(np.linalg.norm(x, axis=1).min() > 0.1)
    assert_all_pass(check_layer(layer, x, seed=seed))


@given(seed=seeds, n=st.integers(1, 5), c=st.integers(2, 6), spread=st.sampled_from([0.1, 3.0, 30.0]))
def test_softmax_cross_entropy(seed, n, c, spread):
    rng = np.random.default_rng(seed)
    logits = spread * rng.standard_normal((n, c))
    labels = rng.integers(0, c, n)
    assert check_loss(losses.SoftmaxCrossEntropyLoss(), logits, labels).passed


@given(seed=seeds, n=st.integers(1, 5), c=st.integers(2, 6), m=st.floats(0.0, 0.6),
       s=st.sampled_from([1.0, 10.0, 30.0, 64.0]))
def test_am_softmax(seed, n, c, m, s):
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-0.99, 0.99, size=(n, c))
    labels = rng.integers(0, c, n)
    report = check_loss(losses.AMSoftmaxLoss(m=m, s=s), cos, labels, h=1e-7)
    assert report.passed, report


def small_network(rng, num_classes=4):
    """conv (overlapping, padded) -> PReLU -> max-pool -> residual unit -> flatten -> linear -> cosine."""
    return L.Sequential(
        L.Conv2d(2, 3, 3, stride=1, padding=1, dtype=F64, rng=rng),
        L.PReLU(3, dtype=F64),
        L.MaxPool2d(2, stride=2),
        L.Residual(L.Conv2d(3, 3, 3, padding=1, dtype=F64, rng=rng), L.PReLU(3, dtype=F64)),
        L.Flatten(),
        L.Linear(3 * 3 * 3, 5, dtype=F64, rng=rng),
        L.CosineLinear(5, num_classes, dtype=F64, rng=rng),
    )


class LossAsLayer(L.Layer):
    """network + AM-Softmax as one layer with a scalar output, so check_layer can walk
    every parameter of the chain end to end."""

    def __init__(self, network, criterion, labels):
        super().__init__()
        self.network, self.criterion, self.labels = network, criterion, labels

    def children(self):
        return [("net", self.network)]

    def forward(self, x):
        return np.array([self.criterion.forward(self.network.forward(x), self.labels)])

    def backward(self, dout):
        return self.network.backward(dout[0] * self.criterion.backward())


def test_small_network_end_to_end_with_am_softmax():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 2, 6, 6))
    chain = LossAsLayer(small_network(rng), losses.AMSoftmaxLoss(m=0.35, s=10.0), np.array([0, 3, 1]))
    assert_all_pass(check_layer(chain, x, dout=np.ones(1)))


@pytest.mark.parametrize("seed", range(3))
def test_directional_check_on_a_network(seed):
    rng = np.random.default_rng(seed)
    report = directional_check(small_network(rng), rng.standard_normal((2, 2, 6, 6)), seed=seed)
    assert report.passed, report


def test_checker_catches_a_wrong_gradient():
    """The checker itself must fail on a broken backward, or every test above proves nothing."""

    class HalfGradientReLU(L.ReLU):
        def backward(self, dout):
            return 0.5 * super().backward(dout)

    x = away_from_zero(np.random.default_rng(0).standard_normal((3, 4)))
    reports = check_layer(HalfGradientReLU(), x)
    assert not reports[0].passed
    assert not directional_check(HalfGradientReLU(), x).passed
