"""The flattened-row convolution (amnp.functional.conv_flat) equals the plain im2col one,
forward and backward, in float64: overlapping windows (stride < kernel), padding, and
the junk columns of the extended grid, which must add nothing anywhere."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from amnp import functional as F
from amnp.functional.conv_flat import samples_per_chunk

RTOL, ATOL = 1e-12, 1e-12


@st.composite
def flat_geometry(draw):
    """Equal strides on both axes (the flat shift needs one stride), everything else free."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    assume(h + 2 * ph >= kh and w + 2 * pw >= kw)
    return (kh, kw), stride, (ph, pw), (h, w)


def assert_same_convolution(x, w, b, stride, padding, rng, chunk=None):
    out, cache = F.conv2d_forward(x, w, b, stride, padding)
    flat_out, flat_cache = F.flat_conv2d_forward(x, w, b, stride, padding, chunk)
    np.testing.assert_allclose(flat_out, out, rtol=RTOL, atol=ATOL)
    dout = rng.standard_normal(out.shape)
    for name, flat, plain in zip(("dx", "dw", "db"), F.flat_conv2d_backward(dout, flat_cache),
                                 F.conv2d_backward(dout, cache)):
        if plain is None:
            assert flat is None, name
        else:
            assert flat.shape == plain.shape, name
            np.testing.assert_allclose(flat, plain, rtol=RTOL, atol=ATOL, err_msg=name)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 4), c=st.integers(1, 3), f=st.integers(1, 3),
       geometry=flat_geometry(), bias=st.booleans(), chunk=st.one_of(st.none(), st.integers(1, 5)))
def test_flat_conv2d_matches_plain(seed, n, c, f, geometry, bias, chunk):
    """chunk None is the whole batch here (tiny arrays); 1..5 cuts it, with a last partial chunk."""
    kernel, stride, padding, hw = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c) + hw)
    w = rng.standard_normal((f, c) + kernel)
    assert_same_convolution(x, w, rng.standard_normal(f) if bias else None, stride, padding, rng, chunk)


@pytest.mark.parametrize("kernel, stride, padding, hw", [
    ((3, 3), 1, (1, 1), (8, 8)),   # the residual units' geometry
    ((3, 3), 1, (1, 1), (7, 6)),   # odd sizes, as at the last stage of a 112×96 network
    ((3, 3), 2, (1, 1), (9, 8)),   # a stage opening, stride < kernel
    ((4, 2), 1, (2, 0), (3, 5)),   # padding > kernel // 2 on one axis only
    ((1, 1), 1, (0, 0), (4, 3)),   # pointwise: no junk columns at all
])
@pytest.mark.parametrize("chunk", [None, 2])
def test_flat_conv2d_explicit_geometries(kernel, stride, padding, hw, chunk):
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((3, 2) + hw), rng.standard_normal((4, 2) + kernel), rng.standard_normal(4)
    assert_same_convolution(x, w, b, stride, padding, rng, chunk)


def test_cpu_chunks_follow_the_byte_budget():
    assert samples_per_chunk(np, 128, 1000, 100, 1, chunk_bytes=10_000) == 10
    assert samples_per_chunk(np, 128, 1000, 100, 256, chunk_bytes=10_000) == 21  # 8·F columns
    assert samples_per_chunk(np, 128, 10**9, 10**5, 1) == 1   # never less than one sample
    assert samples_per_chunk(np, 4, 10, 10, 1) == 4           # never more than the batch


def test_flat_conv2d_junk_columns_do_not_leak_huge_inputs():
    """Junk columns read real pixels; they must be dropped, not merely small, so a huge
    value next to the border cannot reach the output or the gradients."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 5, 5))
    x[:, :, :, -1] = 1e30
    w, b = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    out, cache = F.flat_conv2d_forward(x, w, b, 1, 0)
    expected, _ = F.conv2d_forward(x, w, b, 1, 0)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    dx, dw, _ = F.flat_conv2d_backward(np.ones_like(out), cache)
    assert np.isfinite(dx).all() and np.isfinite(dw).all()


def test_flat_conv2d_refuses_unequal_strides_and_empty_chunks():
    x, w = np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3))
    with pytest.raises(ValueError, match="equal strides"):
        F.flat_conv2d_forward(x, w, None, (1, 2), 0)
    with pytest.raises(ValueError, match="chunk"):
        F.flat_conv2d_forward(x, w, None, 1, 0, chunk=0)


def test_flat_conv2d_keeps_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    out, cache = F.flat_conv2d_forward(x, w, np.zeros(4, np.float32), 1, 1)
    grads = F.flat_conv2d_backward(np.ones_like(out), cache)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
