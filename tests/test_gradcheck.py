"""The gradient checker itself: float32 layers, functional pairs, and kink detection.

A checker that cannot fail proves nothing, so each feature is tested on a broken
backward as well as on a correct one.
"""
import numpy as np
import pytest

from amnp import functional as F
from amnp import layers as L
from amnp.gradcheck import check_function, check_layer, check_loss, directional_check, format_reports

H = 1e-6


class HalfGradientReLU(L.ReLU):
    def backward(self, dout):
        return 0.5 * super().backward(dout)


class DoubledBiasLinear(L.Linear):
    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["bias"] = 2 * self.grads["bias"]
        return dx


# ---------------------------------------------------------------- float32 layers

def test_a_default_float32_layer_is_checked_through_a_float64_copy():
    layer = L.Linear(3, 2, rng=0)
    weight = layer.params["weight"].copy()
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    reports = check_layer(layer, x)
    assert [r.name for r in reports] == ["input", "weight", "bias"]
    assert all(r.passed and r.promoted_from == "float32" for r in reports), format_reports(reports)
    assert "float32 checked as a float64 copy" in format_reports(reports)
    assert layer.params["weight"].dtype == np.float32 and layer.grads == {}
    np.testing.assert_array_equal(layer.params["weight"], weight)
    assert directional_check(layer, x).passed


def test_the_float64_copy_still_catches_a_wrong_gradient():
    reports = check_layer(DoubledBiasLinear(3, 2, rng=0), np.ones((2, 3), np.float32))
    assert [r.passed for r in reports] == [True, True, False]


def test_float64_layers_and_inputs_are_not_promoted():
    reports = check_layer(L.Linear(3, 2, dtype=np.float64, rng=0), np.ones((2, 3)))
    assert all(r.passed and r.promoted_from == "" for r in reports)


# ---------------------------------------------------------------- functional pairs

def test_check_function_on_conv2d_with_keyword_arguments():
    rng = np.random.default_rng(1)
    inputs = (rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((3, 2, 3, 2)), rng.standard_normal(3))
    reports = check_function(F.conv2d_forward, F.conv2d_backward, inputs, {"stride": 2, "padding": 1})
    assert [r.name for r in reports] == ["x", "w", "b"]
    assert all(r.passed for r in reports), format_reports(reports)


def test_check_function_skips_an_absent_bias_and_promotes_float32():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    reports = check_function(F.linear_forward, F.linear_backward, (x, w, None))
    assert [(r.name, r.passed, r.promoted_from) for r in reports] == [("x", True, "float32"), ("w", True, "float32")]


def test_check_function_on_a_loss_with_labels_and_a_scalar_upstream_gradient():
    rng = np.random.default_rng(3)
    cos, labels = rng.uniform(-0.9, 0.9, (4, 5)), rng.integers(0, 5, 4)
    reports = check_function(F.am_softmax_forward, F.am_softmax_backward, (cos, labels),
                             {"m": 0.35, "s": 16.0}, dout=np.float64(-0.7))
    assert [r.name for r in reports] == ["cos"] and reports[0].passed, format_reports(reports)


def test_check_function_catches_a_wrong_backward():
    x = np.array([[1.0, -2.0, 3.0]])
    reports = check_function(F.relu_forward, lambda dout, cache: 2 * F.relu_backward(dout, cache), (x,))
    assert not reports[0].passed and reports[0].mismatches == 2


@pytest.mark.parametrize("backward, message", [
    (lambda dout, cache: (F.linear_backward(dout, cache)[0], None), r"no gradient for w \(input 1\)"),
    (lambda dout, cache: F.linear_backward(dout, cache) + (None,), "returned 4 gradients for 3 inputs"),
])
def test_check_function_refuses_gradients_that_do_not_match_the_inputs(backward, message):
    x, w = np.ones((2, 3)), np.ones((4, 3))
    with pytest.raises(ValueError, match=message):
        check_function(F.linear_forward, backward, (x, w, None))


# ---------------------------------------------------------------- kinks

def test_relu_at_exactly_zero_is_a_kink_not_a_failure():
    x = np.array([[-1.0, 0.0, 2.0, 0.0, 0.5]])
    plain = check_layer(L.ReLU(), x)[0]
    assert not plain.passed and plain.kinks == () and plain.verdict == "FAILED"
    report = check_layer(L.ReLU(), x, detect_kinks=True)[0]
    assert report.kinks == ((0, 1), (0, 3))
    assert not report.passed and report.mismatches == 0 and report.verdict == "not differentiable"
    assert "not differentiable at (0, 1), (0, 3)" in format_reports([report])


def test_max_pool_tie_is_a_kink():
    x = np.array([[[[1.0, 5.0], [5.0, 5.0]]]])
    report = check_layer(L.MaxPool2d(2), x, detect_kinks=True)[0]
    assert report.kinks == ((0, 0, 0, 1), (0, 0, 1, 0), (0, 0, 1, 1))
    assert report.verdict == "not differentiable"


@pytest.mark.parametrize("offset, flagged", [(0.5 * H, True), (-0.9 * H, True), (3 * H, False), (-3 * H, False)])
def test_a_kink_inside_the_stencil_is_flagged_and_one_outside_is_not(offset, flagged):
    x = np.array([[offset, 1.0]])
    report = check_layer(L.ReLU(), x, h=H, detect_kinks=True)[0]
    assert report.kinks == (((0, 0),) if flagged else ())
    assert report.passed is not flagged


@pytest.mark.parametrize("seed", range(2))
def test_smooth_points_are_not_flagged(seed):
    from .test_gradients import away_from_zero, distinct_values, small_network

    rng = np.random.default_rng(seed)
    cases = [
        (L.ReLU(), away_from_zero(rng.standard_normal((3, 4)))),
        (L.MaxPool2d(3, stride=2, padding=1), distinct_values(rng, (1, 2, 5, 5))),
        (L.CosineLinear(4, 3, dtype=np.float64, rng=rng), rng.standard_normal((3, 4))),
        (small_network(rng), rng.standard_normal((2, 2, 6, 6))),
    ]
    for layer, x in cases:
        reports = check_layer(layer, x, seed=seed, detect_kinks=True)
        assert all(r.passed and r.kinks == () for r in reports), format_reports(reports)


def test_a_wrong_gradient_at_a_smooth_point_is_a_plain_failure():
    x = np.array([[1.0, -2.0, 0.5]])
    report = check_layer(HalfGradientReLU(), x, detect_kinks=True)[0]
    assert report.kinks == () and report.mismatches == 2 and report.verdict == "FAILED"
    both = check_layer(HalfGradientReLU(), np.array([[1.0, 0.0]]), detect_kinks=True)[0]
    assert both.kinks == ((0, 1),) and both.mismatches == 1 and both.verdict == "FAILED"


class JumpLoss:
    """mean(s²/2 + c·[s > t]) over all scores: the gradient s/size is the same on both
    sides of s = t, but the loss jumps there (as a conditional margin does)."""

    def __init__(self, threshold=0.35, jump=0.5):
        self.threshold, self.jump = threshold, jump

    def forward(self, scores, labels):
        self.scores = scores
        return float(np.mean(scores ** 2 / 2 + self.jump * (scores > self.threshold)))

    def backward(self):
        return self.scores / self.scores.size


def test_check_loss_flags_a_jump_of_the_loss():
    scores = np.array([[0.35, -0.2], [0.35 + 0.3 * H, 0.9]])
    report = check_loss(JumpLoss(), scores, labels=None, detect_kinks=True)
    assert report.kinks == ((0, 0), (1, 0)) and report.mismatches == 0
    scores[:, 0] = [0.1, 0.6]
    assert check_loss(JumpLoss(), scores, labels=None, detect_kinks=True).passed


def test_directional_check_flags_a_line_through_a_kink():
    x = np.array([[0.0, 1.0, -1.0]])
    report = directional_check(L.ReLU(), x, detect_kinks=True)
    assert report.kinks == ((),) and report.verdict == "not differentiable"
    assert "not differentiable at the point" in format_reports([report])
    assert directional_check(L.ReLU(), x + 0.5, detect_kinks=True).passed


def test_check_function_detects_kinks_too():
    x = np.array([[0.0, 2.0]])
    report, = check_function(F.relu_forward, F.relu_backward, (x,), detect_kinks=True)
    assert report.kinks == ((0, 0),)
