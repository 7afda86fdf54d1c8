"""The layer protocol: params/grads, dotted names, weight loading, initialisation, no
mutation, inference mode."""
import threading
import tracemalloc

import numpy as np
import pytest

from amnp import functional as F
from amnp import layers as L
from amnp import losses, models


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


def _small_net():
    return models.build("small", (1, 32, 32), rng=np.random.default_rng(0))


def test_inference_mode_computes_the_same_forward_and_keeps_no_cache():
    net = _small_net()
    x = np.random.default_rng(1).standard_normal((4, 1, 32, 32)).astype(np.float32)
    recorded = net.forward(x)
    with L.inference_mode():
        assert not L.recording()
        inferred = net.forward(x)
    assert L.recording()
    np.testing.assert_array_equal(inferred, recorded)
    # the caches of the earlier, recording forward are gone too: no backward may use them
    with pytest.raises(RuntimeError, match="inference mode, which keeps nothing for backward"):
        net.backward(np.ones_like(recorded))
    for layer in (net[0], net[1], net[4][0], net[-1]):
        with pytest.raises(RuntimeError, match=f"{type(layer).__name__}: its last forward ran in inference mode"):
            layer.backward(np.ones((4, 16, 16, 16), np.float32))
    net.forward(x)
    net.backward(np.ones_like(recorded))  # recording again after the block


def test_inference_mode_is_per_thread_and_restored_when_nested():
    seen = {}
    with L.inference_mode():
        with L.inference_mode():
            pass
        assert not L.recording()
        worker = threading.Thread(target=lambda: seen.setdefault("other thread", L.recording()))
        worker.start()
        worker.join()
    assert seen == {"other thread": True}
    assert L.recording()


def test_inference_mode_holds_one_layer_of_activations_not_all_of_them():
    """The peak of NumPy's allocations during a forward pass (tracemalloc sees them):
    recording, every layer's cache lives until the end of the pass."""
    net = _small_net()
    x = np.random.default_rng(1).standard_normal((64, 1, 32, 32)).astype(np.float32)

    def peak(run):
        tracemalloc.start()
        try:
            run()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def inferred():
        with L.inference_mode():
            net.forward(x)

    recording_peak, inference_peak = peak(lambda: net.forward(x)), peak(inferred)
    assert inference_peak < 0.5 * recording_peak, (inference_peak, recording_peak)


@pytest.mark.parametrize("make", [
    lambda rng: L.Conv2d(3, 4, 3, stride=2, padding=1, dtype=np.float64, rng=rng),      # plain im2col
    lambda rng: L.Conv2d(8, 4, 3, stride=1, padding=1, dtype=np.float64, rng=rng),      # channels last, flipped kernel
    lambda rng: L.Conv2d(8, 4, 3, stride=2, padding=1, dtype=np.float64, rng=rng),      # channels last, scatter-add
    lambda rng: L.PReLU(8, dtype=np.float64),
    lambda rng: L.ReLU(),
    lambda rng: L.MaxPool2d(2),
    lambda rng: L.AvgPool2d(2),
    lambda rng: L.Flatten(),
    lambda rng: L.Sequential(L.Conv2d(8, 8, 3, padding=1, dtype=np.float64, rng=rng), L.PReLU(8, dtype=np.float64),
                             L.Residual(L.Conv2d(8, 8, 3, padding=1, dtype=np.float64, rng=rng))),
    lambda rng: L.Sequential(L.Residual(L.Conv2d(8, 8, 3, padding=1, dtype=np.float64, rng=rng)), L.Flatten(),
                             L.Linear(8 * 6 * 6, 3, dtype=np.float64, rng=rng)),
    lambda rng: L.Sequential(L.Flatten(), L.Linear(8 * 6 * 6, 4, dtype=np.float64, rng=rng)),
    lambda rng: L.Sequential(L.Flatten(), L.L2Normalize()),
    lambda rng: L.Sequential(L.Flatten(), L.CosineLinear(8 * 6 * 6, 5, dtype=np.float64, rng=rng)),
    lambda rng: L.Sequential(L.Flatten(), L.CosineLinear(8 * 6 * 6, 5, normalize_features=False,
                                                         dtype=np.float64, rng=rng)),
], ids=["conv-plain", "conv-channels-last", "conv-channels-last-stride-2", "prelu", "relu", "max-pool",
        "avg-pool", "flatten", "sequential", "residual-first", "linear", "l2-normalize", "cosine",
        "cosine-unnormalised"])
def test_backward_without_the_input_gradient_fills_the_same_parameter_gradients(make):
    rng = np.random.default_rng(5)
    layer = make(rng)
    x = rng.standard_normal((3, 8 if "in_channels" not in vars(layer) else layer.in_channels, 6, 6))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    assert dx.shape == x.shape
    full = {name: owner.grads[key].copy() for name, owner, key in layer.named_parameters()}
    for name, owner, key in layer.named_parameters():
        owner.grads[key] = None
    layer.forward(x)
    assert layer.backward(dout, input_grad=False) is None
    for name, owner, key in layer.named_parameters():
        np.testing.assert_array_equal(owner.grads[key], full[name], err_msg=name)
    if isinstance(layer, L.Sequential) and isinstance(layer[0], L.Residual):
        residual = layer[0]  # the same, asked of a residual unit directly
        residual.forward(x)
        assert residual.backward(np.ones(x.shape), input_grad=False) is None


def test_the_cosine_layer_takes_the_feature_norm_gradient_only_with_normalised_features_either_way():
    layer = L.CosineLinear(4, 3, normalize_features=False, dtype=np.float64, rng=0)
    layer.forward(np.ones((2, 4)))
    for input_grad in (True, False):
        with pytest.raises(ValueError, match="needs normalize_features=True"):
            layer.backward(np.ones((2, 3)), np.ones((2, 1)), input_grad=input_grad)


def test_a_first_layer_written_without_input_grad_still_trains():
    """Layers written before the keyword (a user's own) keep working first in a network:
    their dx is computed and dropped."""
    class Doubling(L.Layer):
        def forward(self, x):
            return self._remember(2 * x, None)

        def backward(self, dout):
            return 2 * dout

    rng = np.random.default_rng(0)
    linear = L.Linear(3, 2, dtype=np.float64, rng=rng)
    net = L.Sequential(Doubling(), linear)
    x = rng.standard_normal((4, 3))
    net.forward(x)
    assert L.backward_without_input_grad(net, np.ones((4, 2))) is None
    np.testing.assert_allclose(linear.grads["weight"], np.ones((2, 4)) @ (2 * x))
    alone = Doubling()
    alone.forward(x)
    assert L.backward_without_input_grad(alone, np.ones((4, 3))) is None


def test_a_network_passes_input_grad_false_to_its_first_layer_alone():
    net = models.sphereface(4, widths=(8, 8, 8, 8), in_channels=1, input_size=(8, 8), embedding_size=3,
                            dtype=np.float64, rng=0)
    asked = []
    for layer in net.layers:
        layer.backward = (lambda original: lambda dout, input_grad=True: (asked.append(input_grad),
                                                                          original(dout, input_grad=input_grad))[1]
                          )(layer.backward)
    out = net.forward(np.ones((2, 1, 8, 8)))
    assert net.backward(np.ones_like(out), input_grad=False) is None
    assert asked == [True] * (len(net.layers) - 1) + [False]


def test_a_head_scaled_by_the_feature_norm_runs_its_forward_in_inference_mode():
    from amnp.config import build_head

    head = build_head("am-softmax", 4, 3, normalize_features=False, dtype=np.float64, rng=0)
    embeddings, labels = np.random.default_rng(1).standard_normal((5, 4)), np.array([0, 1, 2, 0, 1])
    recorded = head.forward(embeddings, labels)
    with L.inference_mode():
        inferred = head.forward(embeddings, labels)
    np.testing.assert_array_equal(inferred, recorded)


def test_the_feature_norm_is_asked_after_a_forward_with_normalised_features():
    with pytest.raises(RuntimeError, match="CosineLinear: feature_norm asked before forward"):
        L.CosineLinear(4, 3, rng=0).feature_norm
    layer = L.CosineLinear(4, 3, normalize_features=False, rng=0)
    layer.forward(np.ones((2, 4), np.float32))
    with pytest.raises(RuntimeError, match="feature_norm needs normalize_features=True"):
        layer.feature_norm
