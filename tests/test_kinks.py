"""The subgradient conventions at non-differentiable points, pinned deterministically."""
import numpy as np

from amnp import functional as F


def test_relu_at_zero_has_gradient_zero():
    x = np.array([[-1.0, 0.0, 2.0]])
    out, cache = F.relu_forward(x)
    np.testing.assert_array_equal(out, [[0.0, 0.0, 2.0]])
    np.testing.assert_array_equal(F.relu_backward(np.ones_like(x), cache), [[0.0, 0.0, 1.0]])


def test_prelu_at_zero_uses_the_slope_side():
    x = np.array([[-2.0, 0.0, 3.0]])[:, :, None]  # (N=1, C=3, 1)
    slope = np.array([0.25, 0.5, 0.75])
    out, cache = F.prelu_forward(x, slope)
    np.testing.assert_array_equal(out[..., 0], [[-0.5, 0.0, 3.0]])
    dx, dslope = F.prelu_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(dx[..., 0], [[0.25, 0.5, 1.0]])
    np.testing.assert_array_equal(dslope, [-2.0, 0.0, 0.0])


def test_max_pool_tie_sends_the_gradient_to_the_first_maximum_in_row_major_order():
    x = np.array([[[[1.0, 5.0], [5.0, 5.0]]]])
    out, cache = F.max_pool2d_forward(x, 2)
    assert out[0, 0, 0, 0] == 5.0
    dx = F.max_pool2d_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 1.0], [0.0, 0.0]])


def test_max_pool_overlapping_windows_accumulate_on_a_shared_maximum():
    x = np.array([[[[0.0, 9.0, 0.0]]]])
    out, cache = F.max_pool2d_forward(x, (1, 2), stride=1)
    np.testing.assert_array_equal(out[0, 0], [[9.0, 9.0]])
    dx = F.max_pool2d_backward(np.array([[[[1.0, 2.0]]]]), cache)
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 3.0, 0.0]])


def test_max_pool_padding_never_wins():
    x = -np.ones((1, 1, 2, 2))
    out, _ = F.max_pool2d_forward(x, 2, stride=1, padding=1)
    np.testing.assert_array_equal(out, -np.ones((1, 1, 3, 3)))


def test_avg_pool_counts_padding_in_the_average():
    x = np.ones((1, 1, 2, 2))
    out, _ = F.avg_pool2d_forward(x, 2, stride=2, padding=1)
    np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), 0.25))
