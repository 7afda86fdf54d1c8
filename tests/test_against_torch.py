"""Every layer and loss against PyTorch, an independent implementation of the same maths.

Forward outputs and backward gradients are compared in float64: amnp's hand-written
backward passes against torch autograd, with the same random upstream gradient.
PyTorch is only a test oracle, never a dependency: without it this module is skipped
(with the reason shown), as in CI.

Inputs keep away from kinks as in test_gradients.py (|x| >= 0.1 for ReLU/PReLU,
distinct values for max pooling), since at a kink two correct implementations may
choose different subgradients; the kink conventions are tested in test_kinks.py.
"""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed; it is only an optional test oracle for amnp"
)
TF = torch.nn.functional

from amnp import layers as L  # noqa: E402
from amnp import losses  # noqa: E402
from amnp.functional import am_softmax_backward, am_softmax_forward  # noqa: E402

from amnp.config import build_head  # noqa: E402

from .test_gradients import away_from_zero, distinct_values, small_network, window_geometry  # noqa: E402
from .test_margins import embeddings_with_target_cosines, kinks  # noqa: E402

F64 = np.float64
RTOL, ATOL = 1e-6, 1e-9
seeds = st.integers(0, 2**32 - 1)


def tensor(a, grad=True):
    """A float64 torch leaf holding a copy of the NumPy array."""
    return torch.tensor(np.asarray(a, dtype=F64), dtype=torch.float64, requires_grad=grad)


def assert_close(ours, theirs, what="", atol=ATOL):
    if isinstance(theirs, torch.Tensor):
        theirs = theirs.detach().numpy()
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != torch {theirs.shape}"
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=max(atol, ATOL), err_msg=what)


def backward_with(out_t, dout):
    """Backpropagate the upstream gradient ``dout`` through a torch output."""
    out_t.backward(torch.from_numpy(np.ascontiguousarray(dout)))


def check_layer_against(layer, x, torch_fn, rng, dout=None, grad_atol=None):
    """Run ``layer`` and ``torch_fn(x_t, **params_t)`` on the same data and compare the
    output, dL/dx and dL/dparam for every parameter, with one random upstream gradient.

    ``grad_atol`` ({"x" or parameter name: atol}) widens the absolute tolerance of a
    gradient, for comparisons whose expected difference is small relative to the
    gradient's natural scale but not relative to each entry (entries can cancel to 0).
    """
    grad_atol = grad_atol or {}
    params_t = {name: tensor(value) for name, value in layer.params.items()}
    x_t = tensor(x)
    out = layer.forward(x)
    out_t = torch_fn(x_t, **params_t)
    assert_close(out, out_t, f"{layer!r} forward")
    if dout is None:
        dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    backward_with(out_t, dout)
    assert_close(dx, x_t.grad, f"{layer!r} d/dx", grad_atol.get("x", ATOL))
    for name in params_t:
        assert_close(layer.grads[name], params_t[name].grad, f"{layer!r} d/d{name}",
                     grad_atol.get(name, ATOL))


# ----------------------------------------------------------------------------- Linear

@given(seed=seeds, n=st.integers(1, 4), d_in=st.integers(1, 6), d_out=st.integers(1, 5),
       bias=st.booleans())
def test_linear(seed, n, d_in, d_out, bias):
    rng = np.random.default_rng(seed)
    layer = L.Linear(d_in, d_out, bias=bias, dtype=F64, rng=rng)
    if bias:  # a zero bias would not show a bias added twice, or not at all
        layer.params["bias"] = rng.standard_normal(d_out)
    check_layer_against(layer, rng.standard_normal((n, d_in)),
                        lambda x, weight, bias=None: TF.linear(x, weight, bias), rng)


# ----------------------------------------------------------------------------- Conv2d

def check_conv2d(seed, n, c, f, kernel, stride, padding, hw, bias):
    rng = np.random.default_rng(seed)
    layer = L.Conv2d(c, f, kernel, stride, padding, bias=bias, dtype=F64, rng=rng)
    if bias:
        layer.params["bias"] = rng.standard_normal(f)
    x = rng.standard_normal((n, c) + tuple(hw))

    def conv(x_t, weight, bias=None):
        return TF.conv2d(x_t, weight, bias, stride=stride, padding=padding)

    check_layer_against(layer, x, conv, rng)


@given(seed=seeds, n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3),
       geometry=window_geometry(max_kernel=4), bias=st.booleans())
def test_conv2d(seed, n, c, f, geometry, bias):
    kernel, stride, padding, hw = geometry
    check_conv2d(seed, n, c, f, kernel, stride, padding, hw, bias)


@pytest.mark.parametrize("kernel, stride, padding, hw, bias", [
    ((3, 3), (1, 1), (1, 1), (5, 5), True),    # "same" convolution, overlapping windows
    ((3, 2), (1, 1), (0, 0), (4, 5), True),    # non-square kernel, overlapping
    ((2, 3), (1, 2), (2, 1), (3, 4), False),   # padding > kernel // 2, mixed strides
    ((4, 4), (2, 2), (1, 1), (7, 6), True),    # stride < kernel, last rows/cols dropped
    ((1, 3), (2, 1), (0, 2), (5, 3), False),   # 1-wide kernel, padding only on one axis
    ((5, 5), (3, 3), (2, 2), (6, 6), True),    # big kernel, stride > 1, padding 2
    ((1, 1), (1, 1), (0, 0), (3, 3), True),    # pointwise
    ((2, 2), (3, 3), (0, 0), (7, 7), True),    # stride > kernel: skipped pixels get 0
])
def test_conv2d_explicit_geometries(kernel, stride, padding, hw, bias):
    check_conv2d(11, 2, 3, 4, kernel, stride, padding, hw, bias)


# ----------------------------------------------------------------------------- activations

@given(seed=seeds, shape=st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_relu(seed, shape):
    rng = np.random.default_rng(seed)
    check_layer_against(L.ReLU(), away_from_zero(rng.standard_normal(shape)), TF.relu, rng)


@given(seed=seeds, n=st.integers(1, 3), c=st.integers(1, 4), spatial=st.integers(0, 2),
       shared=st.booleans())
def test_prelu(seed, n, c, spatial, shared):
    rng = np.random.default_rng(seed)
    x = away_from_zero(rng.standard_normal((n, c) + (3,) * spatial))
    layer = L.PReLU(1 if shared else c, dtype=F64)
    layer.params["weight"] = rng.uniform(-0.5, 0.5, size=layer.params["weight"].shape)
    check_layer_against(layer, x, TF.prelu, rng)


# ----------------------------------------------------------------------------- pooling

@given(seed=seeds, n=st.integers(1, 2), c=st.integers(1, 3),
       geometry=window_geometry(max_kernel=4, pool=True))
def test_max_pool2d(seed, n, c, geometry):
    kernel, stride, padding, hw = geometry
    rng = np.random.default_rng(seed)
    x = distinct_values(rng, (n, c) + hw)

    def pool(x_t):
        return TF.max_pool2d(x_t, kernel, stride, padding, ceil_mode=False)

    check_layer_against(L.MaxPool2d(kernel, stride, padding), x, pool, rng)


@given(seed=seeds, n=st.integers(1, 2), c=st.integers(1, 3),
       geometry=window_geometry(max_kernel=4, pool=True))
def test_avg_pool2d(seed, n, c, geometry):
    kernel, stride, padding, hw = geometry
    rng = np.random.default_rng(seed)

    def pool(x_t):
        return TF.avg_pool2d(x_t, kernel, stride, padding, ceil_mode=False, count_include_pad=True)

    check_layer_against(L.AvgPool2d(kernel, stride, padding), rng.standard_normal((n, c) + hw), pool, rng)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("kernel, stride, padding, hw", [
    ((2, 2), (2, 2), (0, 0), (6, 6)),  # the usual 2x2/2
    ((3, 3), (1, 1), (1, 1), (4, 5)),  # overlapping, padded
    ((3, 2), (2, 1), (1, 1), (5, 4)),  # non-square, mixed strides
    ((4, 3), (3, 2), (2, 1), (7, 5)),  # padding = kernel // 2, odd leftovers
])
def test_pooling_explicit_geometries(mode, kernel, stride, padding, hw):
    rng = np.random.default_rng(5)
    x = distinct_values(rng, (2, 3) + hw)
    if mode == "max":
        layer = L.MaxPool2d(kernel, stride, padding)
        fn = lambda x_t: TF.max_pool2d(x_t, kernel, stride, padding)  # noqa: E731
    else:
        layer = L.AvgPool2d(kernel, stride, padding)
        fn = lambda x_t: TF.avg_pool2d(x_t, kernel, stride, padding, count_include_pad=True)  # noqa: E731
    check_layer_against(layer, x, fn, rng)


# ----------------------------------------------------------------------------- flatten

@given(seed=seeds, shape=st.lists(st.integers(1, 3), min_size=2, max_size=5))
def test_flatten(seed, shape):
    rng = np.random.default_rng(seed)
    check_layer_against(L.Flatten(), rng.standard_normal(shape), lambda x_t: torch.flatten(x_t, 1), rng)


# ----------------------------------------------------------------------------- normalisation

def normalize_exact(v, eps):
    """amnp's ε-norm written in torch: v / sqrt(Σ v² + ε), ε inside the square root."""
    return v / torch.sqrt((v * v).sum(dim=1, keepdim=True) + eps)


@given(seed=seeds, n=st.integers(1, 4), d=st.integers(1, 6),
       scale=st.sampled_from([1e-3, 1e-2, 1.0, 1e2]), eps=st.sampled_from([1e-12, 1e-6, 1e-2]))
def test_l2_normalize_exact_formula(seed, n, d, scale, eps):
    """Exact agreement with the ε-inside-the-root formula for any vector, eps included."""
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal((n, d))
    check_layer_against(L.L2Normalize(eps=eps), x, lambda x_t: normalize_exact(x_t, eps), rng)


def test_l2_normalize_zero_row():
    """A zero row maps to 0 and gets the gradient dy / sqrt(ε), as torch's autograd of the
    same formula says (F.normalize, which clamps the norm, gives dy / ε there instead)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    x[1] = 0.0
    for eps in (1e-12, 1e-4):
        check_layer_against(L.L2Normalize(eps=eps), x, lambda x_t: normalize_exact(x_t, eps), rng)


# F.normalize divides by max(‖v‖, ε) instead of sqrt(‖v‖² + ε).  For ‖v‖ >= 1e-2 the two
# differ by at most ε/(2‖v‖²) <= 5e-9 relative in the output, and in the gradient by
# about ε/‖v‖² relative to its natural scale ‖g‖/‖v‖; an entry of the gradient can
# cancel to ~0 (always, when D = 1: torch's exact tangent projection gives 0 where the
# ε-norm leaves ε/‖v‖³), so the gradient's absolute tolerance is set from that scale.
CONVENTION_GAP = 1e-7  # >> ε/‖v‖² = 1e-8, << 1e-6


@given(seed=seeds, n=st.integers(1, 4), d=st.integers(1, 6), scale=st.sampled_from([1e-1, 1.0, 1e2]))
def test_l2_normalize_matches_torch_normalize(seed, n, d, scale):
    """For ordinary vectors (‖v‖ >> sqrt(ε)) amnp also matches F.normalize."""
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal((n, d))
    min_norm = np.linalg.norm(x, axis=1).min()
    assume(min_norm > 0.1 * scale)
    dout = rng.standard_normal((n, d))
    grad_scale = np.abs(dout).max() / min_norm
    check_layer_against(L.L2Normalize(), x, lambda x_t: TF.normalize(x_t, dim=1), rng, dout,
                        grad_atol={"x": CONVENTION_GAP * grad_scale})


def cosine_layer_and_input(seed, n, d, c, normalize_features, scale):
    rng = np.random.default_rng(seed)
    layer = L.CosineLinear(d, c, normalize_features=normalize_features, dtype=F64, rng=rng)
    layer.params["weight"] = scale * rng.standard_normal((c, d))  # not unit rows: the norm matters
    x = scale * rng.standard_normal((n, d))
    assume(np.linalg.norm(x, axis=1).min() > 0.1 * scale)
    assume(np.linalg.norm(layer.params["weight"], axis=1).min() > 0.1 * scale)
    return rng, layer, x


cosine_cases = dict(seed=seeds, n=st.integers(1, 4), d=st.integers(1, 6), c=st.integers(1, 5),
                    normalize_features=st.booleans(), scale=st.sampled_from([0.1, 1.0, 10.0]))


@given(**cosine_cases)
def test_cosine_linear_exact_formula(seed, n, d, c, normalize_features, scale):
    """Against the same ε-norm written in torch: agreement to rounding, gradients included."""
    rng, layer, x = cosine_layer_and_input(seed, n, d, c, normalize_features, scale)

    def cosine(x_t, weight):
        features = normalize_exact(x_t, layer.eps) if normalize_features else x_t
        return TF.linear(features, normalize_exact(weight, layer.eps))

    check_layer_against(layer, x, cosine, rng)


@given(**cosine_cases)
def test_cosine_linear_matches_torch_normalize(seed, n, d, c, normalize_features, scale):
    """Against F.linear(F.normalize(x), F.normalize(W)) (or F.linear(x, F.normalize(W)) without
    feature normalisation), gradient tolerances set from their natural scale as above."""
    rng, layer, x = cosine_layer_and_input(seed, n, d, c, normalize_features, scale)
    dout = rng.standard_normal((n, c))
    x_norms = np.linalg.norm(x, axis=1)
    w_norms = np.linalg.norm(layer.params["weight"], axis=1)
    features_norm = 1.0 if normalize_features else x_norms.max()
    scale_x = c * np.abs(dout).max() / (x_norms.min() if normalize_features else 1.0)
    scale_w = n * np.abs(dout).max() * features_norm / w_norms.min()

    def cosine(x_t, weight):
        features = TF.normalize(x_t, dim=1) if normalize_features else x_t
        return TF.linear(features, TF.normalize(weight, dim=1))

    check_layer_against(layer, x, cosine, rng, dout,
                        grad_atol={"x": CONVENTION_GAP * scale_x, "weight": CONVENTION_GAP * scale_w})


# ----------------------------------------------------------------------------- losses

def check_loss_against(criterion, scores, labels, torch_loss):
    scores_t = tensor(scores)
    loss = criterion.forward(scores, labels)
    loss_t = torch_loss(scores_t, torch.from_numpy(labels).long())
    name = repr(criterion) if hasattr(criterion, "m") else type(criterion).__name__
    assert loss.shape == ()
    assert_close(np.array(loss), loss_t, f"{name} loss")
    loss_t.backward()
    assert_close(criterion.backward(), scores_t.grad, f"{name} d/dscores")


@given(seed=seeds, n=st.integers(1, 5), c=st.integers(2, 6), spread=st.sampled_from([0.1, 3.0, 30.0]))
def test_softmax_cross_entropy(seed, n, c, spread):
    rng = np.random.default_rng(seed)
    logits = spread * rng.standard_normal((n, c))
    labels = rng.integers(0, c, n)
    check_loss_against(losses.SoftmaxCrossEntropyLoss(), logits, labels,
                       lambda z, y: TF.cross_entropy(z, y, reduction="mean"))


def am_softmax_torch(cos, labels, m, s):
    """AM-Softmax written in torch: logits = s (cos − m·onehot(y)), then mean cross-entropy."""
    onehot = TF.one_hot(labels, cos.shape[1]).to(cos.dtype)
    return TF.cross_entropy(s * (cos - m * onehot), labels)


MARGINS_AND_SCALES = [(0.0, 1.0), (0.0, 30.0), (0.1, 10.0), (0.35, 30.0), (0.35, 64.0), (0.6, 64.0)]


@pytest.mark.parametrize("m, s", MARGINS_AND_SCALES)
@given(seed=seeds, n=st.integers(1, 5), c=st.integers(2, 6))
def test_am_softmax(m, s, seed, n, c):
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-1.0, 1.0, size=(n, c))
    labels = rng.integers(0, c, n)
    check_loss_against(losses.AMSoftmaxLoss(m=m, s=s), cos, labels,
                       lambda z, y: am_softmax_torch(z, y, m, s))


@given(seed=seeds, m=st.floats(0.0, 0.8), s=st.floats(0.5, 64.0), dout=st.floats(-3.0, 3.0))
def test_am_softmax_functional_with_upstream_gradient(seed, m, s, dout):
    """The functional pair with a scalar upstream gradient other than 1, and m, s drawn freely."""
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-1.0, 1.0, size=(4, 5))
    labels = rng.integers(0, 5, 4)
    loss, cache = am_softmax_forward(cos, labels, m, s)
    cos_t = tensor(cos)
    loss_t = am_softmax_torch(cos_t, torch.from_numpy(labels).long(), m, s)
    assert_close(loss, loss_t, "am_softmax loss")
    loss_t.backward(torch.tensor(dout, dtype=torch.float64))
    assert_close(am_softmax_backward(dout, cache), cos_t.grad, "am_softmax d/dcos")


# ----------------------------------------------------------------------------- networks

def torch_forward(layer, x, params, prefix=""):
    """The same computation as the amnp ``layer`` written in torch, reading every parameter
    from ``params`` by its state_dict name (and geometry from the layer's attributes)."""
    def p(key):
        return params[prefix + key]

    if isinstance(layer, L.Residual):
        out = x
        for name, child in layer.children():
            out = torch_forward(child, out, params, f"{prefix}{name}.")
        return x + out
    if isinstance(layer, L.Sequential):
        for name, child in layer.children():
            x = torch_forward(child, x, params, f"{prefix}{name}.")
        return x
    if isinstance(layer, L.Linear):
        return TF.linear(x, p("weight"), params.get(prefix + "bias"))
    if isinstance(layer, L.Conv2d):
        return TF.conv2d(x, p("weight"), params.get(prefix + "bias"), layer.stride, layer.padding)
    if isinstance(layer, L.PReLU):
        return TF.prelu(x, p("weight"))
    if isinstance(layer, L.ReLU):
        return TF.relu(x)
    if isinstance(layer, L.MaxPool2d):
        return TF.max_pool2d(x, layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, L.AvgPool2d):
        return TF.avg_pool2d(x, layer.kernel_size, layer.stride, layer.padding, count_include_pad=True)
    if isinstance(layer, L.Flatten):
        return torch.flatten(x, 1)
    if isinstance(layer, L.L2Normalize):
        return normalize_exact(x, layer.eps)
    if isinstance(layer, L.CosineLinear):
        features = normalize_exact(x, layer.eps) if layer.normalize_features else x
        return features @ normalize_exact(p("weight"), layer.eps).T
    raise NotImplementedError(type(layer).__name__)


def randomize_parameters(network, rng):
    """Random biases and slopes (they start at 0 and 0.25), through load_state_dict."""
    state = network.state_dict()
    for name, value in state.items():
        if name.endswith("bias"):
            state[name] = 0.1 * rng.standard_normal(value.shape)
        elif value.ndim == 1:  # PReLU slopes
            state[name] = rng.uniform(0.05, 0.5, value.shape)
    network.load_state_dict(state)


def check_network_against_torch(network, x, labels, m, s):
    criterion = losses.AMSoftmaxLoss(m=m, s=s)
    state = network.state_dict()
    params_t = {name: tensor(value) for name, value in state.items()}
    x_t = tensor(x)

    loss = criterion.forward(network.forward(x), labels)
    dx = network.backward(criterion.backward())
    loss_t = am_softmax_torch(torch_forward(network, x_t, params_t), torch.from_numpy(labels).long(), m, s)
    loss_t.backward()

    assert_close(np.array(loss), loss_t, "network loss")
    assert_close(dx, x_t.grad, "network d/dinput")
    grads = {name: layer.grads[key] for name, layer, key in network.named_parameters()}
    assert sorted(grads) == sorted(params_t)
    for name, grad in grads.items():
        assert params_t[name].grad is not None, f"torch never used {name}"
        assert_close(grad, params_t[name].grad, f"network d/d{name}")


@pytest.mark.parametrize("seed", range(3))
def test_small_network_end_to_end(seed):
    """conv -> PReLU -> max-pool -> residual (conv, PReLU) -> flatten -> linear -> cosine -> AM-Softmax."""
    rng = np.random.default_rng(seed)
    network = small_network(rng, num_classes=4)
    randomize_parameters(network, rng)
    x = rng.standard_normal((3, 2, 6, 6))
    labels = rng.integers(0, 4, 3)
    for m, s in [(0.35, 10.0), (0.35, 30.0)]:
        check_network_against_torch(network, x, labels, m, s)


def test_second_network_end_to_end():
    """The other layers chained: non-square strided conv, ReLU, avg-pool, linear without
    bias, explicit L2Normalize and an un-normalised cosine layer, AM-Softmax at s = 64."""
    rng = np.random.default_rng(3)
    network = L.Sequential(
        L.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 1), dtype=F64, rng=rng),
        L.ReLU(),
        L.AvgPool2d(2, stride=1, padding=1),
        L.Conv2d(4, 2, 2, bias=False, dtype=F64, rng=rng),
        L.PReLU(1, dtype=F64),
        L.Flatten(),
        L.Linear(2 * 3 * 7, 6, bias=False, dtype=F64, rng=rng),
        L.L2Normalize(),
        L.CosineLinear(6, 5, normalize_features=False, dtype=F64, rng=rng),
    )
    randomize_parameters(network, rng)
    x = rng.standard_normal((4, 3, 5, 6))
    labels = np.array([0, 4, 2, 2])
    check_network_against_torch(network, x, labels, m=0.35, s=64.0)


# ----------------------------------------------------------------------------- the margin family

def margin_family_torch(loss, options, x, w, labels, scale):
    """Every member's loss from its angular definition, with arccos, as a reader of the
    papers would write it in torch: an independent check of amnp's arccos-free ψ."""
    eps = 1e-12
    norm = torch.sqrt((x * x).sum(1, keepdim=True) + eps)
    cos = (x / norm) @ (w / torch.sqrt((w * w).sum(1, keepdim=True) + eps)).T
    rows = torch.arange(len(labels))
    c = cos[rows, labels]
    theta = torch.arccos(c)
    if loss == "normface":
        psi = c
    elif loss == "am-softmax":
        psi = c - options.get("m", 0.35)
    elif loss == "sphereface":
        m, lam = options["m"], options["lambda_min"]
        k = torch.floor(theta * m / np.pi).clamp(max=m - 1)
        psi = ((-1.0) ** k * torch.cos(m * theta) - 2 * k + lam * c) / (1 + lam)
    elif loss == "arcface":
        m = options["m"]
        psi = torch.where(c > np.cos(np.pi - m), torch.cos(theta + m), c - m * np.sin(m))
    else:
        psi = torch.cos(options["m1"] * theta + options["m2"]) - options["m3"]
    onehot = TF.one_hot(labels, cos.shape[1]).bool()
    modified = torch.where(onehot, psi[:, None], cos)
    if scale is None:
        scale = norm
    return TF.cross_entropy(scale * modified, labels)


@given(seed=seeds, n=st.integers(1, 4), d=st.integers(2, 5), classes=st.integers(2, 5),
       member=st.sampled_from([
           ("normface", {"s": 9.0, "learn_scale": True}),
           ("am-softmax", {"m": 0.3, "s": 12.0}),
           ("am-softmax", {"m": 0.3, "normalize_features": False, "margin_ramp": 0.0}),
           ("sphereface", {"m": 4, "lambda_base": 3.0, "lambda_min": 3.0}),
           ("sphereface", {"m": 3, "lambda_base": 0.0, "lambda_min": 0.0}),
           ("arcface", {"m": 0.5, "s": 16.0}),
           ("combined", {"m1": 1.0, "m2": 0.3, "m3": 0.2, "s": 16.0}),
           ("combined", {"m1": 1.5, "m2": 0.1, "m3": 0.1, "s": 8.0}),
       ]))
def test_margin_family_against_torch(seed, n, d, classes, member):
    """Loss, embedding gradient, weight gradient and the gradient of a learned s."""
    loss, options = member
    rng = np.random.default_rng(seed)
    head = build_head(loss, d, classes, dtype=F64, rng=rng, **options)
    x, labels = embeddings_with_target_cosines(head, rng, n, d, kinks(loss, options))
    ours = head.forward(x, labels)
    dx = head.backward()
    x_t, w_t = tensor(x), tensor(head.classifier.params["weight"])
    if options.get("learn_scale"):
        scale_t = tensor(head.params["scale"])
    elif loss == "sphereface" or options.get("normalize_features") is False:
        scale_t = None
    else:
        scale_t = options["s"]
    theirs = margin_family_torch(loss, options, x_t, w_t, torch.from_numpy(labels).long(), scale_t)
    theirs.backward()
    assert_close(ours, theirs, f"{loss} loss")
    assert_close(dx, x_t.grad, f"{loss} d/dx")
    assert_close(head.classifier.grads["weight"], w_t.grad, f"{loss} d/dW")
    if options.get("learn_scale"):
        assert_close(head.grads["scale"], scale_t.grad, f"{loss} d/ds")
