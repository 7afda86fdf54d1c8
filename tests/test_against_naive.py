"""The vectorised kernels equal naive loop references (tests/reference.py), forward and
backward, in float64, including stride < kernel (overlapping windows) and padding."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from amnp import functional as F
from amnp import layers as L
from amnp import losses

from .reference import (
    am_softmax_naive,
    conv2d_backward_naive,
    conv2d_naive,
    cosine_naive,
    pool2d_backward_naive,
    pool2d_naive,
)
from .test_gradients import distinct_values, window_geometry

RTOL = 1e-10


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3), c=st.integers(1, 3), f=st.integers(1, 4),
       geometry=window_geometry(max_kernel=4))
def test_conv2d_matches_naive(seed, n, c, f, geometry):
    kernel, stride, padding, (h, w) = geometry
    rng = np.random.default_rng(seed)
    x, weight, b = rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c) + kernel), rng.standard_normal(f)
    out, cache = F.conv2d_forward(x, weight, b, stride, padding)
    np.testing.assert_allclose(out, conv2d_naive(x, weight, b, stride, padding), rtol=RTOL, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    for fast, naive in zip(F.conv2d_backward(dout, cache), conv2d_backward_naive(dout, x, weight, stride, padding)):
        np.testing.assert_allclose(fast, naive, rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("mode", ["max", "avg"])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 2), c=st.integers(1, 3),
       geometry=window_geometry(max_kernel=4, pool=True))
def test_pooling_matches_naive(mode, seed, n, c, geometry):
    kernel, stride, padding, (h, w) = geometry
    rng = np.random.default_rng(seed)
    x = distinct_values(rng, (n, c, h, w)) if mode == "max" else rng.standard_normal((n, c, h, w))
    forward, backward = {
        "max": (F.max_pool2d_forward, F.max_pool2d_backward),
        "avg": (F.avg_pool2d_forward, F.avg_pool2d_backward),
    }[mode]
    out, cache = forward(x, kernel, stride, padding)
    np.testing.assert_allclose(out, pool2d_naive(x, kernel, stride, padding, mode), rtol=RTOL)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(backward(dout, cache),
                               pool2d_backward_naive(dout, x, kernel, stride, padding, mode), rtol=RTOL, atol=1e-12)


def test_max_pool_with_ties_matches_naive_first_argmax():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(2, 2, 5, 5)).astype(np.float64)  # many ties
    out, cache = F.max_pool2d_forward(x, 3, 1, 1)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(F.max_pool2d_backward(dout, cache),
                               pool2d_backward_naive(dout, x, (3, 3), (1, 1), (1, 1), "max"), rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("normalize_features", [True, False])
def test_cosine_matches_its_definition(normalize_features):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((5, 7)), rng.standard_normal((4, 7))
    out, _ = F.cosine_forward(x, w, normalize_features=normalize_features)
    np.testing.assert_allclose(out, cosine_naive(x, w, normalize_features), rtol=1e-10)


@pytest.mark.parametrize("m, s", [(0.35, 30.0), (0.0, 1.0), (0.5, 64.0)])
def test_am_softmax_matches_the_per_sample_formula(m, s):
    rng = np.random.default_rng(1)
    cos, labels = rng.uniform(-1, 1, (6, 5)), rng.integers(0, 5, 6)
    criterion = losses.AMSoftmaxLoss(m=m, s=s)
    expected_loss, expected_grad = am_softmax_naive(cos, labels, m, s)
    assert criterion.forward(cos, labels) == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(criterion.backward(), expected_grad, rtol=1e-10, atol=1e-14)


def test_layers_call_the_functional_pairs_with_their_parameters():
    rng = np.random.default_rng(2)
    conv = L.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 2, 5, 4))
    np.testing.assert_allclose(conv(x), conv2d_naive(x, conv.params["weight"], conv.params["bias"], (2, 1), (1, 0)))
