"""Kernels that run differently per backend compute the same thing on each.

Conv2d picks its convolution by array module (amnp.layers.core.runs_channels_last), and
PReLU its slope gradient (activations._sum_of_products_per_channel).  On the CPU, the
arrays of tests/host_guard.py stand in for CuPy's: a module other than NumPy.  The `gpu`
tests run both convolutions and PReLU on CuPy against NumPy and skip where there is no GPU.
"""
import types

import numpy as np
import pytest

import amnp
from amnp import functional as F
from amnp import layers as L
from amnp.functional.conv import Conv2dCache
from amnp.functional.conv_channels_last import ChannelsLastConv2dCache
from amnp.layers.core import CHANNELS_LAST_MIN_CHANNELS, runs_channels_last

from . import host_guard
from .host_guard import guard


def test_channels_last_runs_on_numpy_only_and_from_eight_channels():
    assert runs_channels_last(np, CHANNELS_LAST_MIN_CHANNELS)
    assert not runs_channels_last(np, CHANNELS_LAST_MIN_CHANNELS - 1)
    assert not runs_channels_last(host_guard.namespace, 512)
    assert not runs_channels_last(types.ModuleType("cupy"), 512)


def conv_step(layer, x, dout):
    out = layer.forward(x)
    cache = layer._cache
    dx = layer.backward(dout)
    return cache, [amnp.to_numpy(a) for a in (out, dx, layer.grads["weight"], layer.grads["bias"])]


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_picks_its_layout_per_backend_and_both_agree(stride):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 7, 6))
    numpy_layer = L.Conv2d(16, 8, 3, stride=stride, padding=1, dtype=np.float64, rng=0)
    out = numpy_layer.forward(x)
    dout = rng.standard_normal(out.shape)
    numpy_cache, numpy_results = conv_step(numpy_layer, x, dout)
    device_layer = L.Conv2d(16, 8, 3, stride=stride, padding=1, dtype=np.float64, rng=0)
    host_guard.guard_parameters(device_layer)
    device_cache, device_results = conv_step(device_layer, guard(x), guard(dout))
    assert isinstance(numpy_cache, ChannelsLastConv2dCache)
    assert isinstance(device_cache, Conv2dCache)
    for name, a, b in zip(("out", "dx", "dw", "db"), device_results, numpy_results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("slopes", [4, 1])
def test_prelu_slope_gradient_off_numpy_is_a_reduction_not_an_einsum(monkeypatch, slopes):
    """CuPy's einsum would run transposing copies and a batched GEMM here."""
    def einsum(*args, **kwargs):
        raise AssertionError("einsum called for the slope gradient off NumPy")

    monkeypatch.setattr(host_guard.namespace, "einsum", einsum, raising=False)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5, 6))
    weight = rng.uniform(0.1, 0.3, slopes)
    dout = rng.standard_normal(x.shape)
    _, cache = F.prelu_forward(x, weight)
    dx, dweight = F.prelu_backward(dout, cache)
    _, device_cache = F.prelu_forward(guard(x), guard(weight))
    device_dx, device_dweight = F.prelu_backward(guard(dout), device_cache)
    assert dweight.shape == (slopes,)
    np.testing.assert_allclose(amnp.to_numpy(device_dweight), dweight, rtol=1e-12)
    np.testing.assert_allclose(amnp.to_numpy(device_dx), dx, rtol=1e-12)
    expected = (dout * np.minimum(x, 0)).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(dweight, expected if slopes > 1 else expected.sum(keepdims=True), rtol=1e-12)


def channels_last(a):
    """The same (N, C, H, W) values stored channels-last, as the channels-last outputs are."""
    xp = amnp.get_array_module(a)
    return xp.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


CONVOLUTIONS = {
    "plain": (F.conv2d_forward, F.conv2d_backward),
    "channels-last": (F.channels_last_conv2d_forward, F.channels_last_conv2d_backward),
}


@pytest.mark.gpu
@pytest.mark.parametrize("layout", CONVOLUTIONS)
@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (1, 0)])
@pytest.mark.parametrize("memory", [np.ascontiguousarray, channels_last], ids=["nchw", "channels-last-input"])
def test_both_convolutions_on_cupy_match_numpy(cupy_module, layout, stride, padding, memory):
    forward, backward = CONVOLUTIONS[layout]
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((3, 16, 9, 8)), rng.standard_normal((12, 16, 3, 3)), rng.standard_normal(12)
    out, cache = F.conv2d_forward(x, w, b, stride, padding)
    dout = rng.standard_normal(out.shape)
    expected = (out, *F.conv2d_backward(dout, cache))
    device = [cupy_module.asarray(a) for a in (x, w, b, dout)]
    device_out, device_cache = forward(memory(device[0]), device[1], device[2], stride, padding)
    results = (device_out, *backward(memory(device[3]), device_cache))
    for name, a, e in zip(("out", "dx", "dw", "db"), results, expected):
        assert isinstance(a, cupy_module.ndarray), name
        np.testing.assert_allclose(amnp.to_numpy(a), e, rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.gpu
def test_conv2d_on_cupy_runs_the_plain_im2col(cupy_module):
    with amnp.use_backend("cupy"):
        layer = L.Conv2d(64, 64, 3, padding=1, rng=0)
    layer.forward(cupy_module.zeros((1, 64, 5, 4), np.float32))
    assert isinstance(layer._cache, Conv2dCache)


@pytest.mark.gpu
@pytest.mark.parametrize("slopes", [5, 1])
@pytest.mark.parametrize("memory", [np.ascontiguousarray, channels_last], ids=["nchw", "channels-last-input"])
def test_prelu_on_cupy_matches_numpy(cupy_module, slopes, memory):
    rng = np.random.default_rng(3)
    x, dout = rng.standard_normal((4, 5, 6, 7)), rng.standard_normal((4, 5, 6, 7))
    weight = rng.uniform(0.1, 0.3, slopes)
    out, cache = F.prelu_forward(x, weight)
    dx, dweight = F.prelu_backward(dout, cache)
    device_out, device_cache = F.prelu_forward(memory(cupy_module.asarray(x)), cupy_module.asarray(weight))
    device_dx, device_dweight = F.prelu_backward(memory(cupy_module.asarray(dout)), device_cache)
    for name, a, e in (("out", device_out, out), ("dx", device_dx, dx), ("dweight", device_dweight, dweight)):
        np.testing.assert_allclose(amnp.to_numpy(a), e, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("slopes", [
    np.array([0.25, -0.5, 1.0, 0.0]),   # every slope <= 1: max(x, a·x) on NumPy
    np.array([0.25, 1.5, -2.0, 0.0]),   # one above 1: max(x, 0) + a·min(x, 0)
], ids=["slopes-at-most-1", "a-slope-above-1"])
@pytest.mark.parametrize("memory", [np.ascontiguousarray, lambda a: a.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)],
                         ids=["nchw", "channels-last"])
def test_prelu_value_is_x_or_the_one_product_on_every_path(slopes, memory):
    """Both formulations, and the one off NumPy, give exactly x or the rounded a·x, keep the
    input's memory layout on NumPy, and let NaN through."""
    rng = np.random.default_rng(4)
    x = memory(rng.standard_normal((3, 4, 5, 6)).astype(np.float32))
    x[0, :, 0, 0] = 0.0
    x[1, :, 1, 1] = np.nan
    weight = slopes.astype(np.float32)
    a = weight.reshape(1, 4, 1, 1)
    expected = np.where(x > 0, x, a * x)
    out = F.prelu(x, weight)
    np.testing.assert_array_equal(out, expected)
    assert out.strides == x.strides
    np.testing.assert_array_equal(F.prelu_forward(x, weight)[0], expected)
    np.testing.assert_array_equal(amnp.to_numpy(F.prelu(guard(x), guard(weight))), expected)
