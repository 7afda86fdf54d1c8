"""The layer protocol: params/grads, dotted names, weight loading, initialisation, no mutation."""
import numpy as np
import pytest

from amnp import functional as F
from amnp import layers as L
from amnp import losses


def test_params_and_grads_share_keys_and_shapes():
    rng = np.random.default_rng(0)
    for layer, x in [(L.Linear(3, 2, rng=0), rng.standard_normal((4, 3))),
                     (L.Conv2d(2, 3, 3, padding=1, rng=0), rng.standard_normal((2, 2, 5, 5))),
                     (L.PReLU(2), rng.standard_normal((2, 2, 3))),
                     (L.CosineLinear(3, 5, rng=0), rng.standard_normal((4, 3)))]:
        out = layer.forward(x.astype(np.float32))
        layer.backward(np.ones_like(out))
        assert layer.params.keys() == layer.grads.keys()
        for key in layer.params:
            assert layer.grads[key].shape == layer.params[key].shape
            assert layer.grads[key].dtype == layer.params[key].dtype


def test_forward_reads_params_at_call_time():
    layer = L.Linear(2, 2, rng=0)
    layer.params["weight"] = np.eye(2, dtype=np.float32)
    layer.params["bias"] = np.array([1.0, -1.0], np.float32)
    np.testing.assert_array_equal(layer.forward(np.array([[2.0, 3.0]], np.float32)), [[3.0, 2.0]])


def test_dotted_names_and_state_dict_round_trip():
    def make(seed):
        return L.Sequential(L.Conv2d(1, 2, 3, rng=seed), L.PReLU(2),
                            L.Residual(L.Conv2d(2, 2, 3, padding=1, rng=seed), L.PReLU(2)),
                            L.Flatten(), L.Linear(2, 3, rng=seed))

    net = make(0)
    names = [name for name, _, _ in net.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "2.0.weight", "2.0.bias", "2.1.weight",
                     "4.weight", "4.bias"]
    assert net.num_parameters() == 2 * 9 + 2 + 2 + 4 * 9 + 2 + 2 + 6 + 3
    other = make(1)
    other.load_state_dict(net.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(other.forward(x), net.forward(x))


def test_initialisation_is_seeded_and_documented():
    a, b = L.Conv2d(3, 8, 3, rng=5), L.Conv2d(3, 8, 3, rng=5)
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    bound = np.sqrt(3.0 / 27)  # xavier: uniform on ±sqrt(3 / fan_in)
    assert np.abs(a.params["weight"]).max() <= bound
    assert np.all(a.params["bias"] == 0)
    assert a.params["weight"].dtype == np.float32
    gaussian = L.Linear(100, 100, weight_init=0.01, dtype=np.float64, rng=0)
    assert gaussian.params["weight"].std() == pytest.approx(0.01, rel=0.05)
    np.testing.assert_array_equal(L.PReLU(4).params["weight"], np.full(4, 0.25, np.float32))


def test_backward_does_not_mutate_its_inputs_or_the_weights():
    rng = np.random.default_rng(0)
    net = L.Sequential(L.Conv2d(2, 3, 3, stride=1, padding=1, rng=0), L.PReLU(3), L.MaxPool2d(2, 1),
                       L.AvgPool2d(2, 1, 1), L.Flatten(), L.Linear(75, 4, rng=0), L.ReLU(),
                       L.CosineLinear(4, 3, rng=0))
    crit = losses.AMSoftmaxLoss()
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    x_copy, weights = x.copy(), net.state_dict()
    crit.forward(net.forward(x), np.array([0, 2]))
    dscores = crit.backward()
    dscores_copy = dscores.copy()
    net.backward(dscores)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(dscores, dscores_copy)
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, weights[name])


def test_functional_backward_leaves_dout_untouched():
    rng = np.random.default_rng(1)
    cos = rng.uniform(-1, 1, (3, 4))
    _, cache = F.am_softmax_forward(cos, np.array([0, 1, 2]))
    dout = np.float64(1.0)
    F.am_softmax_backward(dout, cache)
    for forward, backward, x in [(F.relu_forward, F.relu_backward, rng.standard_normal((2, 3))),
                                 (F.flatten_forward, F.flatten_backward, rng.standard_normal((2, 3, 2)))]:
        out, cache = forward(x)
        g = rng.standard_normal(out.shape)
        g_copy = g.copy()
        backward(g, cache)
        np.testing.assert_array_equal(g, g_copy)


def test_residual_adds_identity_gradient():
    layer = L.Residual(L.Linear(2, 2, bias=False, rng=0))
    layer.layers[0].params["weight"] = np.array([[2.0, 0.0], [0.0, 3.0]], np.float32)
    x = np.ones((1, 2), np.float32)
    np.testing.assert_array_equal(layer.forward(x), [[3.0, 4.0]])
    np.testing.assert_array_equal(layer.backward(np.ones((1, 2), np.float32)), [[3.0, 4.0]])


def test_float32_end_to_end_keeps_float32():
    net = L.Sequential(L.Conv2d(1, 2, 3, rng=0), L.PReLU(2), L.Flatten(), L.CosineLinear(2, 3, rng=0))
    x = np.ones((2, 1, 3, 3), np.float32)
    crit = losses.AMSoftmaxLoss()
    loss = crit.forward(net.forward(x), np.array([0, 1]))
    assert loss.shape == () and loss.dtype == np.float32
    assert net.backward(crit.backward()).dtype == np.float32


def test_loaded_weights_and_optimizer_state_are_copies():
    from amnp.optim import SGD

    net = L.Sequential(L.Linear(2, 2, rng=0))
    state = net.state_dict()
    net.load_state_dict(state)
    net.layers[0].params["weight"] += 1.0
    assert not np.array_equal(state["0.weight"], net.layers[0].params["weight"])
    net.backward(net.forward(np.ones((1, 2), np.float32)))
    optimizer = SGD(net)
    optimizer.step(0.1)
    saved = optimizer.state_dict()
    optimizer.step(0.1)
    assert not np.array_equal(saved["0.weight"], optimizer.velocity["0.weight"])
