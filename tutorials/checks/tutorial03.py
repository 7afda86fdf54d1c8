"""Checks of Tutorial 3: layers by hand."""
from __future__ import annotations

import numpy as np

from amnp import functional as F
from amnp.functional import conv_channels_last

from .common import (_as_float_array, _check_derived, _close, _expect_shape, _expect_tuple, _fail, _ok, _rng,
                     _worst, guarded)

# amnp's own versions of this tutorial's exercises: an answer that calls one scores 0
IMPLEMENTATIONS = (F.linear_backward, F.prelu_backward, F.im2col, F.col2im, F.conv2d_backward,
                   F.max_pool2d_backward, F.avg_pool2d_backward, conv_channels_last.channels_last_im2col,
                   conv_channels_last.channels_last_col2im_add)


def check_linear_backward(linear_backward):
    """linear_backward(dout, x, w) -> (dx, dw, db) for out = x w^T + b."""
    linear_backward = guarded(linear_backward, "linear_backward", IMPLEMENTATIONS)
    rng = _rng("linear")
    x, w, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    out, cache = F.linear_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    want = F.linear_backward(dout, cache)
    got = _expect_tuple(linear_backward(dout, x, w), ("dx", "dw", "db"), "linear_backward")
    dx, dw, db = (_as_float_array(g, name) for g, name in zip(got, ("dx", "dw", "db")))
    if dw.shape == w.shape[::-1]:
        _fail(f"dw has shape {dw.shape}, the weight is {w.shape}",
              "dw = dout^T x has the weight's shape (D_out, D_in); x^T dout is its transpose")
    if db.shape == (x.shape[0],):
        _fail(f"db has shape {db.shape}, the bias is {b.shape}",
              "wrong axis: sum dout over the batch axis 0 (one bias per output), not over axis 1")
    for name, g, ref in (("dx", dx, want[0]), ("dw", dw, want[1]), ("db", db, want[2])):
        _expect_shape(g, ref.shape, name)
        if not _close(g, ref):
            if _close(g * x.shape[0], ref):
                _fail(f"{name} is 1/N of the right value", "sum over the batch, do not average: "
                      "the loss's backward already divided by N")
            _fail(f"{name}: relative error {_worst(g, ref):.1e}")
    _ok("linear_backward")


def check_prelu_backward(prelu_backward):
    """prelu_backward(dout, x, a) -> (dx, da), one slope a[c] per channel (axis 1)."""
    prelu_backward = guarded(prelu_backward, "prelu_backward", IMPLEMENTATIONS)
    rng = _rng("prelu")
    x = rng.standard_normal((3, 4, 2, 2))
    x[np.abs(x) < 0.05] += 0.2            # keep away from the kink
    a = rng.uniform(0.1, 0.4, 4)
    out, cache = F.prelu_forward(x, a)
    dout = rng.standard_normal(out.shape)
    want_dx, want_da = F.prelu_backward(dout, cache)
    got = _expect_tuple(prelu_backward(dout, x, a), ("dx", "da"), "prelu_backward")
    dx, da = _as_float_array(got[0], "dx"), _as_float_array(got[1], "da")
    _expect_shape(dx, x.shape, "dx")
    if da.shape != a.shape:
        _fail(f"da has shape {da.shape}, expected {a.shape}",
              "one slope per channel: sum dout * min(x, 0) over every axis but axis 1")
    if not _close(dx, want_dx):
        if _close(dx, dout * a.reshape(1, -1, 1, 1)):
            _fail("dx uses the slope everywhere", "where x > 0 the layer is the identity: dx = dout there")
        _fail(f"dx: relative error {_worst(dx, want_dx):.1e}")
    if not _close(da, want_da):
        if _close(da, (dout * x).sum(axis=(0, 2, 3))):
            _fail("da includes the positive inputs", "the slope only multiplies the negative part: use min(x, 0)")
        _fail(f"da: relative error {_worst(da, want_da):.1e}")
    _ok("prelu_backward")


def _conv_geometries():
    # (N, C, H, W, kernel, stride, padding): overlapping windows first, then disjoint ones.  Every
    # case has N, C >= 2: with a batch or channel count of 1, reshape and transpose agree.
    return [(2, 3, 5, 5, 3, 1, 1), (2, 2, 7, 6, 3, 2, 1), (3, 2, 4, 4, 2, 2, 0), (2, 3, 6, 6, 3, 3, 0)]


def _reshaped_im2col(x_padded, k, s):
    """im2col with each window's (n, c) axes regrouped by reshape instead of moved by transpose."""
    n, c, hp, wp = x_padded.shape
    ho, wo = (hp - k) // s + 1, (wp - k) // s + 1
    cols = np.empty((c, k, k, n, ho, wo))
    for i in range(k):
        for j in range(k):
            cols[:, i, j] = x_padded[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s].reshape(c, n, ho, wo)
    return cols.reshape(c * k * k, n * ho * wo)


def _reshaped_col2im(cols, shape, k, s):
    """col2im with the (c, n) axes regrouped by reshape instead of moved by transpose."""
    n, c, hp, wp = shape
    ho, wo = (hp - k) // s + 1, (wp - k) // s + 1
    blocks = cols.reshape(c, k, k, n, ho, wo)
    dx = np.zeros(shape)
    for i in range(k):
        for j in range(k):
            dx[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] += blocks[:, i, j].reshape(n, c, ho, wo)
    return dx


def check_im2col(im2col):
    """im2col(x_padded, kh, kw, stride) -> cols (C*kh*kw, N*Ho*Wo), rows (c, i, j), columns (n, y, x)."""
    im2col = guarded(im2col, "im2col", IMPLEMENTATIONS)
    rng = _rng("im2col")
    for n, c, hh, ww, k, s, p in _conv_geometries():
        xp_ = rng.standard_normal((n, c, hh + 2 * p, ww + 2 * p))
        out_hw = ((hh + 2 * p - k) // s + 1, (ww + 2 * p - k) // s + 1)
        want = F.im2col(xp_, (k, k), (s, s), out_hw)
        got = _as_float_array(im2col(xp_, k, k, s), "cols")
        if got.shape != want.shape:
            if got.shape == want.shape[::-1]:
                _fail(f"cols has shape {got.shape}, expected {want.shape}",
                      "rows are the C*kh*kw kernel taps, columns the N*Ho*Wo window positions: transpose")
            _fail(f"cols has shape {got.shape}, expected {want.shape} (kernel {k}, stride {s})",
                  "Ho = (Hp - kh) // stride + 1 on the padded input")
        if not np.array_equal(got, want):
            if np.array_equal(got, _reshaped_im2col(xp_, k, s)):
                _fail("the right numbers in the wrong places: the samples and channels are mixed up",
                      "each window is (N, C, Ho, Wo); bring C to the front with transpose(1, 0, 2, 3), "
                      "not reshape (which only regroups the numbers in memory order)")
            if np.array_equal(np.sort(got, axis=None), np.sort(want, axis=None)):
                _fail("the right numbers in the wrong places",
                      "layout: row index c*kh*kw + i*kw + j (channel-major), column index n*Ho*Wo + y*Wo + x")
            _fail(f"cols differ from amnp.functional.im2col for kernel {k}, stride {s}")
    _ok("im2col")


def check_col2im(col2im):
    """col2im(cols, x_padded_shape, kh, kw, stride) -> (N, C, Hp, Wp), the adjoint of im2col."""
    col2im = guarded(col2im, "col2im", IMPLEMENTATIONS)
    rng = _rng("col2im")
    wrong_where, reshaped = [], []
    for n, c, hh, ww, k, s, p in _conv_geometries():
        shape = (n, c, hh + 2 * p, ww + 2 * p)
        out_hw = ((shape[2] - k) // s + 1, (shape[3] - k) // s + 1)
        cols = rng.standard_normal((c * k * k, n * out_hw[0] * out_hw[1]))
        want = F.col2im(cols, shape, (k, k), (s, s), out_hw)
        got = _expect_shape(col2im(cols, shape, k, k, s), shape, "the result",
                            "col2im returns an array of the padded input's shape")
        if not _close(got, want, rtol=1e-12, atol=1e-12):
            wrong_where.append(s < k)
            reshaped.append(_close(got, _reshaped_col2im(cols, shape, k, s), rtol=1e-12, atol=1e-12))
    if wrong_where and all(reshaped):
        _fail("the samples and channels are mixed up",
              "each block cols[c, i, j] is (C, N, Ho, Wo); bring N to the front with transpose(1, 0, 2, 3), "
              "not reshape (which only regroups the numbers in memory order)")
    if wrong_where:
        if all(wrong_where) and len(wrong_where) == sum(s < k for *_, k, s, _ in _conv_geometries()):
            _fail("right where windows are disjoint (stride >= kernel), wrong where they overlap",
                  "use += , not = : a pixel seen by several windows sums the gradient of every one")
        _fail("col2im differs from amnp.functional.col2im",
              "col2im must satisfy <im2col(x), cols> = <x, col2im(cols)> for all x and cols")
    _ok("col2im", "adjoint of im2col, overlaps summed")


def check_max_pool_backward(max_pool_backward):
    """max_pool_backward(dout, x, k, stride) -> dx: each window's dout goes to its maximum."""
    max_pool_backward = guarded(max_pool_backward, "max_pool_backward", IMPLEMENTATIONS)
    rng = _rng("maxpool")
    for k, s in ((2, 2), (3, 2), (2, 1)):
        x = rng.permutation(2 * 2 * 6 * 6).reshape(2, 2, 6, 6) / 7.0   # distinct values: no ties
        out, cache = F.max_pool2d_forward(x, k, s)
        dout = rng.standard_normal(out.shape)
        want = F.max_pool2d_backward(dout, cache)
        got = _expect_shape(max_pool_backward(dout, x, k, s), x.shape, "dx")
        if _close(got, want, rtol=1e-12, atol=1e-12):
            continue
        spread = F.avg_pool2d_backward(dout, F.avg_pool2d_forward(x, k, s)[1]) * k * k
        if _close(got, spread) or _close(got, spread / (k * k)):
            _fail("the gradient went to every pixel of each window",
                  "only the maximum of a window influenced the output: route dout to the argmax alone")
        if s < k:
            _fail(f"wrong with overlapping windows (kernel {k}, stride {s})",
                  "use += : one pixel can be the maximum of several overlapping windows")
        _fail(f"dx differs from amnp's max-pool backward (kernel {k}, stride {s})")
    _ok("max_pool_backward")


def check_avg_pool_backward(avg_pool, avg_pool_backward):
    """avg_pool_backward(dout, x, k, stride) -> dx, checked against central differences of
    ``avg_pool`` (the forward in the tutorial), with overlapping and with disjoint windows."""
    avg_pool_backward = guarded(avg_pool_backward, "avg_pool_backward", IMPLEMENTATIONS)
    rng = _rng("avgpool")
    for k, s in ((3, 2), (2, 2)):
        x = rng.standard_normal((2, 2, 6, 6))

        def spread(g, x, k=k, s=s, share=1.0, accumulate=True):
            ho, wo = g.shape[2], g.shape[3]
            dx = np.zeros_like(x)
            for i in range(k):
                for j in range(k):
                    window = (slice(None), slice(None), slice(i, i + s * (ho - 1) + 1, s),
                              slice(j, j + s * (wo - 1) + 1, s))
                    if accumulate:
                        dx[window] += g * share
                    else:
                        dx[window] = g * share
            return dx

        _check_derived(f"avg_pool_backward (kernel {k}, stride {s})", lambda x, k=k, s=s: avg_pool(x, k, s),
                       lambda g, x, k=k, s=s: avg_pool_backward(g, x, k, s), [x],
                       lambda x, k=k, s=s: F.avg_pool2d_forward(x, k, s)[0], {0: "dx"}, [
            (lambda g, x: spread(g, x), "each output is the MEAN of k*k inputs: each input gets 1/(k*k) of its dout"),
            (lambda g, x: spread(g, x, share=1 / (k * k), accumulate=False),
             "use += : a pixel in several overlapping windows gets a share from each"),
        ], rng=rng)
