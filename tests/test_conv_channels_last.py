"""The channels-last convolution (amnp.functional.conv_channels_last) equals the plain
im2col one, forward and backward, in float64: overlapping windows (stride < kernel), padding
(dx by the flipped kernels where padding <= kernel - 1, by the scatter-add elsewhere), unequal
strides, inputs and output gradients in either memory layout, and chunks of samples."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from amnp import functional as F
from amnp.functional.conv_channels_last import samples_per_chunk

RTOL, ATOL = 1e-12, 1e-12


@st.composite
def geometry(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    assume(h + 2 * ph >= kh and w + 2 * pw >= kw)
    return (kh, kw), (sh, sw), (ph, pw), (h, w)


def as_channels_last(a):
    """The same (N, C, H, W) values stored channels-last, as the module's outputs are."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def assert_same_convolution(x, w, b, stride, padding, rng, chunk=None, layout=np.ascontiguousarray):
    out, cache = F.conv2d_forward(x, w, b, stride, padding)
    fast_out, fast_cache = F.channels_last_conv2d_forward(layout(x), w, b, stride, padding, chunk)
    assert fast_out.shape == out.shape
    np.testing.assert_allclose(fast_out, out, rtol=RTOL, atol=ATOL)
    dout = rng.standard_normal(out.shape)
    dout_copy = dout.copy()
    gradients = F.channels_last_conv2d_backward(layout(dout), fast_cache)
    np.testing.assert_array_equal(dout, dout_copy)  # backward leaves dout alone
    for name, fast, plain in zip(("dx", "dw", "db"), gradients, F.conv2d_backward(dout, cache)):
        if plain is None:
            assert fast is None, name
        else:
            assert fast.shape == plain.shape, name
            np.testing.assert_allclose(fast, plain, rtol=RTOL, atol=ATOL, err_msg=name)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 4), c=st.integers(1, 3), f=st.integers(1, 3),
       geometry=geometry(), bias=st.booleans(), chunk=st.one_of(st.none(), st.integers(1, 5)),
       channels_last=st.booleans())
def test_channels_last_conv2d_matches_plain(seed, n, c, f, geometry, bias, chunk, channels_last):
    kernel, stride, padding, hw = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c) + hw)
    w = rng.standard_normal((f, c) + kernel)
    assert_same_convolution(x, w, rng.standard_normal(f) if bias else None, stride, padding, rng, chunk,
                            as_channels_last if channels_last else np.ascontiguousarray)


@pytest.mark.parametrize("kernel, stride, padding, hw", [
    ((3, 3), 1, (1, 1), (4, 4)),   # the residual units' geometry: dx by the flipped kernels
    ((3, 3), 2, (1, 1), (9, 8)),   # a stage opening, stride < kernel: dx by the scatter-add
    ((3, 3), 1, (3, 0), (3, 5)),   # padding > kernel - 1 on one axis: the scatter-add
    ((1, 1), 1, (0, 0), (4, 3)),   # pointwise
])
@pytest.mark.parametrize("chunk", [None, 2])
def test_channels_last_conv2d_explicit_geometries(kernel, stride, padding, hw, chunk):
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((3, 2) + hw), rng.standard_normal((4, 2) + kernel), rng.standard_normal(4)
    assert_same_convolution(x, w, b, stride, padding, rng, chunk, as_channels_last)


def test_channels_last_output_is_a_channels_last_view():
    """What makes the next layer's gather cheap: the output's channels are innermost in memory."""
    rng = np.random.default_rng(0)
    out, _ = F.channels_last_conv2d_forward(rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3)))
    assert out.transpose(0, 2, 3, 1).flags.c_contiguous


def test_channels_last_conv2d_errors_match_plain():
    x, w = np.zeros((1, 2, 3, 3)), np.zeros((1, 3, 3, 3))
    with pytest.raises(ValueError, match="input has 2 channels but the weight expects 3"):
        F.channels_last_conv2d_forward(x, w)
    with pytest.raises(ValueError, match="window is larger"):
        F.channels_last_conv2d_forward(np.zeros((1, 3, 2, 2)), w)
    with pytest.raises(ValueError, match="chunk"):
        F.channels_last_conv2d_forward(np.zeros((1, 3, 3, 3)), w, chunk=0)


@pytest.mark.parametrize("channels, stride, cache_type", [
    (8, 1, "ChannelsLastConv2dCache"), (8, 2, "ChannelsLastConv2dCache"), (3, 2, "Conv2dCache")])
def test_conv2d_layer_takes_the_channels_last_path_from_8_channels(channels, stride, cache_type):
    """The layer's choice changes the cache it keeps, never the numbers."""
    from amnp import layers as L

    rng = np.random.default_rng(2)
    layer = L.Conv2d(channels, 3, 3, stride=stride, padding=1, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, channels, 6, 5))
    out = layer.forward(x)
    assert type(layer._cache).__name__ == cache_type
    expected, _ = F.conv2d_forward(x, layer.params["weight"], layer.params["bias"], stride, 1)
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


def test_cpu_chunks_follow_the_byte_budget():
    assert samples_per_chunk(np, 128, 1000, 100, 1, chunk_bytes=10_000) == 10
    assert samples_per_chunk(np, 128, 1000, 100, 256, chunk_bytes=10_000) == 21  # 8·F rows
    assert samples_per_chunk(np, 128, 10**9, 10**5, 1) == 1   # never less than one sample
    assert samples_per_chunk(np, 4, 10, 10, 1) == 4           # never more than the batch


def test_channels_last_conv2d_keeps_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    for stride in (1, 2):  # dx by the flipped kernels, and by the scatter-add
        out, cache = F.channels_last_conv2d_forward(x, w, np.zeros(4, np.float32), stride, 1)
        grads = F.channels_last_conv2d_backward(np.ones_like(out), cache)
        assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
