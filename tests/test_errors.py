"""Every bad input gets a clear error that names the layer or loss, never a wrong answer."""
import os
import traceback

import numpy as np
import pytest

from amnp import functional as F
from amnp import layers as L
from amnp import losses

X4 = np.zeros((2, 3, 8, 8), np.float32)


@pytest.mark.parametrize("layer, x, message", [
    (L.Conv2d(3, 4, 3), np.zeros((3, 8, 8), np.float32), r"conv2d: input must have 4 dimensions \(N, C, H, W\)"),
    (L.Conv2d(3, 4, 3), np.zeros((2, 5, 8, 8), np.float32), "input has 5 channels but the weight expects 3"),
    (L.Conv2d(3, 4, 5), np.zeros((2, 3, 4, 4), np.float32), "window is larger than the padded input"),
    (L.Linear(6, 2), np.zeros((2, 5), np.float32), "input has 5 features but the weight expects 6"),
    (L.Linear(6, 2), np.zeros((2, 6, 1), np.float32), r"must have 2 dimensions"),
    (L.CosineLinear(6, 2), np.zeros((2, 5), np.float32), "input has 5 features"),
    (L.PReLU(4), X4, "3 channels but there are 4 slopes"),
    (L.PReLU(3), np.zeros(3, np.float32), "at least 2 dimensions"),
    (L.MaxPool2d(3, padding=2), X4, "padding .* must be at most half the window"),
    (L.MaxPool2d(9), X4, "window is larger than the padded input"),
    (L.AvgPool2d(2), np.zeros((2, 8, 8), np.float32), "must have 4 dimensions"),
    (L.L2Normalize(), np.zeros((2, 3, 1), np.float32), "must have 2 dimensions"),
])
def test_wrong_shapes(layer, x, message):
    with pytest.raises(ValueError, match=message):
        layer.forward(x)


@pytest.mark.parametrize("layer, x", [
    (L.Conv2d(3, 4, 3), np.zeros((2, 3, 8, 8), np.int64)),
    (L.Linear(2, 2), np.zeros((2, 2), np.float64)),  # float32 layer, float64 input
    (L.ReLU(), np.zeros((2, 2), np.int32)),
    (L.Linear(2, 2), [[0.0, 1.0]]),
])
def test_wrong_dtypes_or_types(layer, x):
    with pytest.raises(TypeError, match=r"(floating-point|dtype|array)"):
        layer.forward(x)


def test_sequential_says_which_layer_failed():
    net = L.Sequential(L.Conv2d(3, 4, 3), L.Flatten(), L.Linear(10, 2))
    with pytest.raises(ValueError, match=r"Sequential\[2\] Linear: linear: input has 144 features"):
        net.forward(X4)


def test_a_layer_error_keeps_its_cause_and_the_failing_frame():
    """Nested containers name every level, and the chain of causes ends in the frame that
    raised (a traceback printed by Python shows it; ``from None`` used to hide it)."""
    net = L.Sequential(L.Flatten(), L.Residual(L.Linear(4, 4, rng=0)))
    with pytest.raises(TypeError) as info:
        net.forward(np.zeros((2, 4)))  # float64 input, float32 weights
    assert str(info.value).startswith("Sequential[1] Residual: Residual[0] Linear: linear: operands must share")
    causes = [info.value]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    assert [type(c) for c in causes] == [TypeError] * 3
    assert str(causes[-1]).startswith("linear: operands must share one dtype")
    frames = traceback.extract_tb(causes[-1].__traceback__)
    assert (os.path.basename(frames[-1].filename), frames[-1].name) == ("validation.py", "same_dtype")
    assert "linear_forward" in [f.name for f in frames]


@pytest.mark.parametrize("make", [
    lambda: L.Linear(0, 2), lambda: L.Linear(2, -1), lambda: L.Conv2d(3, 0, 3),
    lambda: L.Conv2d(3, 4, 0), lambda: L.Conv2d(3, 4, 3, stride=0), lambda: L.Conv2d(3, 4, 3, padding=-1),
    lambda: L.MaxPool2d(0), lambda: L.AvgPool2d(2, stride=0), lambda: L.PReLU(0),
    lambda: L.CosineLinear(4, 0), lambda: L.L2Normalize(eps=0.0),
])
def test_non_positive_sizes(make):
    with pytest.raises(ValueError, match="must be"):
        make()


@pytest.mark.parametrize("make", [lambda: L.Conv2d(3, 4, 2.5), lambda: L.MaxPool2d((2, 2, 2)),
                                  lambda: L.Linear(2, 2, dtype=np.int32), lambda: L.Linear(2, 2, weight_init="he")])
def test_malformed_hyperparameters(make):
    with pytest.raises((TypeError, ValueError)):
        make()


@pytest.mark.parametrize("criterion", [losses.AMSoftmaxLoss(), losses.SoftmaxCrossEntropyLoss()])
@pytest.mark.parametrize("labels, error, message", [
    (np.array([0, 3]), ValueError, r"labels must lie in \[0, 2\] for 3 classes, got values from 0 to 3"),
    (np.array([-1, 0]), ValueError, r"got values from -1 to 0"),
    (np.array([0.0, 1.0]), TypeError, "labels must be integers"),
    (np.array([0, 1, 2]), ValueError, r"one label per sample, shape \(2,\)"),
    (np.array([[0], [1]]), ValueError, "one label per sample"),
    ([0, 1], TypeError, "labels must be an integer array"),
])
def test_bad_labels(criterion, labels, error, message):
    with pytest.raises(error, match=message):
        criterion.forward(np.zeros((2, 3), np.float32), labels)


@pytest.mark.parametrize("criterion", [losses.AMSoftmaxLoss(), losses.SoftmaxCrossEntropyLoss()])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores(criterion, bad):
    scores = np.zeros((2, 3), np.float32)
    scores[1, 2] = bad
    with pytest.raises(ValueError, match="scores contains NaN or Inf"):
        criterion.forward(scores, np.array([0, 1]))


@pytest.mark.parametrize("criterion", [losses.AMSoftmaxLoss(), losses.SoftmaxCrossEntropyLoss()])
@pytest.mark.parametrize("shape", [(0, 3), (2, 0)])
def test_empty_scores(criterion, shape):
    with pytest.raises(ValueError, match="at least one sample and one class"):
        criterion.forward(np.zeros(shape, np.float32), np.zeros(shape[0], np.int64))


@pytest.mark.parametrize("m, s, message", [
    (-0.1, 30.0, "margin m must be a finite number >= 0"), (np.nan, 30.0, "margin m"),
    (0.35, 0.0, "scale s must be a finite number > 0"), (0.35, -1.0, "scale s"), (0.35, np.inf, "scale s"),
])
def test_impossible_margin_hyperparameters(m, s, message):
    with pytest.raises(ValueError, match=message):
        losses.AMSoftmaxLoss(m=m, s=s)
    with pytest.raises(ValueError, match=message):
        F.am_softmax_forward(np.zeros((1, 2)), np.array([0]), m=m, s=s)


@pytest.mark.parametrize("thing", [
    L.Linear(2, 2), L.Conv2d(1, 1, 1), L.ReLU(), L.PReLU(), L.MaxPool2d(2), L.AvgPool2d(2), L.Flatten(),
    L.L2Normalize(), L.CosineLinear(2, 2), L.Sequential(L.ReLU()), L.Residual(L.ReLU()),
])
def test_backward_before_forward(thing):
    with pytest.raises(RuntimeError, match="backward called before forward"):
        thing.backward(np.zeros((1, 2), np.float32))


@pytest.mark.parametrize("criterion", [losses.AMSoftmaxLoss(), losses.SoftmaxCrossEntropyLoss()])
def test_loss_backward_before_forward(criterion):
    with pytest.raises(RuntimeError, match="backward called before forward"):
        criterion.backward()


def test_zero_feature_vector_gives_finite_cosines_and_gradients():
    layer = L.CosineLinear(4, 3, dtype=np.float32, rng=0)
    x = np.zeros((2, 4), np.float32)
    x[1] = 1.0
    cos = layer.forward(x)
    assert np.all(np.isfinite(cos)) and np.all(cos[0] == 0)
    assert np.all(np.isfinite(layer.backward(np.ones_like(cos))))
    assert np.all(np.isfinite(layer.grads["weight"]))


def test_residual_branch_must_keep_the_shape():
    with pytest.raises(ValueError, match="x \\+ F\\(x\\) needs the same shape"):
        L.Residual(L.Conv2d(3, 4, 1)).forward(X4)


def test_load_state_dict_refuses_mismatches_and_changes_nothing():
    net = L.Sequential(L.Linear(3, 2, rng=0), L.PReLU())
    before = net.state_dict()
    bad_shape = dict(before, **{"0.weight": np.zeros((2, 4), np.float32)})
    with pytest.raises(ValueError, match=r"0.weight has shape \(2, 4\), the model needs \(2, 3\)"):
        net.load_state_dict(bad_shape)
    with pytest.raises(ValueError, match=r"missing 1.weight"):
        net.load_state_dict({k: v for k, v in before.items() if k != "1.weight"})
    with pytest.raises(TypeError, match="has dtype float64, the model needs float32"):
        net.load_state_dict({k: v.astype(np.float64) for k, v in before.items()})
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
