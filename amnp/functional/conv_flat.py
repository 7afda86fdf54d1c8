"""The same convolution as :mod:`amnp.functional.conv`, with windows gathered from flattened rows.

Why it is faster.  In :func:`~amnp.functional.conv.im2col` each kernel offset copies an
(N, C, Ho, Wo) slice whose rows are only Wo elements long, and NumPy pays a fixed cost
per row: on small maps (Wo = 4 to 16) that cost, not the copying, dominates, and it is
worse in ``col2im``, whose ``+=`` reads and writes every row.  Here each padded image is
flattened to one row of Hp·Wp values.  Output position (y, x) with stride s reads
the flat index  s·(y·Wp + x) + (i·Wp + j)  for kernel offset (i, j), so if the output
is computed on an *extended* grid of Ho rows of Wp columns (q = y·Wp + x, the columns
x >= Wo being junk), every kernel offset is one long strided slice
``flat[off : off + s·L : s]`` with off = i·Wp + j, L = Ho·Wp: one copy per (sample,
channel) instead of one per image row.  The price is the junk columns: the GEMM is
Wp/Wo times wider (1.04× at 56×48, 1.25× at 8×8, 2× for stride 2), so this pays
off only for stride 1; :mod:`amnp.layers` uses it for stride-1 convolutions.

Backward: dout is put on the extended grid with zeros in the junk columns, so they add
nothing to dw (dw = dout_ext colsᵀ) and scatter zeros in col2im, whose ``+=`` again runs
over one long slice per (sample, channel, offset).  Everything else — the single GEMM
with the flattened kernels, dx as the adjoint of the gather — is as in the plain version,
which the tests compare this one with.

Memory: the column matrix holds C·kh·kw · N·Ho·Wp elements (Wp/Wo times the plain one)
and is the only copy kept for backward.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import get_array_module
from ..validation import floating_array, same_dtype, window
from .conv import output_shape


class FlatConv2dCache(NamedTuple):
    cols: object          # (C·kh·kw, N·Ho·Wp) windows on the extended grid: needed for dw
    w: object             # (F, C, kh, kw): needed for dx
    x_shape: tuple        # (N, C, H, W)
    out_hw: tuple         # (Ho, Wo)
    stride: tuple
    padding: tuple
    has_bias: bool


def flat_padded(x, padding, stride):
    """(N, C, H, W) -> zero-padded images flattened to (N, C, (Hp + sh)·Wp).

    The sh extra zero rows at the bottom are read only by junk columns of the last
    output row, whose windows would otherwise run past the end of the image.
    """
    xp = get_array_module(x)
    n, c, height, width = x.shape
    (ph, pw), sh = padding, stride[0]
    padded = xp.zeros((n, c, height + 2 * ph + sh, width + 2 * pw), dtype=x.dtype)
    padded[:, :, ph:ph + height, pw:pw + width] = x
    return padded.reshape(n, c, -1), width + 2 * pw


def flat_offsets(kernel, padded_width):
    """The flat shift i·Wp + j of every kernel offset (i, j), in (i, j) row-major order."""
    kh, kw = kernel
    return [i * padded_width + j for i in range(kh) for j in range(kw)]


def flat_conv2d_forward(x, w, b=None, stride=1, padding=0):
    """Same arguments, result and formula as :func:`amnp.functional.conv.conv2d_forward`.

    x: (N, C, H, W); w: (F, C, kh, kw); b: (F,) or None -> out: (N, F, Ho, Wo).
    Correct for any stride equal on both axes; faster than the plain version at stride 1 only.
    """
    floating_array(x, 4, "(N, C, H, W)", "conv2d")
    floating_array(w, 4, "(F, C, kh, kw)", "conv2d", "weight")
    same_dtype("conv2d", input=x, weight=w, bias=b)
    xp = get_array_module(x, w, b)
    kernel, stride, padding = window(tuple(w.shape[2:]), stride, padding, "conv2d")
    if stride[0] != stride[1]:  # the flat shift s·(y·Wp + x) needs one stride for both axes
        raise ValueError(f"flat conv2d: needs equal strides, got {stride}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"conv2d: input has {x.shape[1]} channels but the weight expects {w.shape[1]}"
        )
    ho, wo = output_shape(x.shape[2:], kernel, stride, padding, "conv2d")
    n, c = x.shape[:2]
    f = w.shape[0]
    flat, wp = flat_padded(x, padding, stride)
    length, step = ho * wp, stride[1]
    cols = xp.empty((c, kernel[0] * kernel[1], n, length), dtype=x.dtype)
    for k, offset in enumerate(flat_offsets(kernel, wp)):
        cols[:, k] = flat[:, :, offset:offset + step * (length - 1) + 1:step].transpose(1, 0, 2)
    cols = cols.reshape(c * kernel[0] * kernel[1], n * length)
    out_ext = w.reshape(f, -1) @ cols  # the one GEMM: (F, C·kh·kw) @ (C·kh·kw, N·Ho·Wp)
    out_valid = out_ext.reshape(f, n, ho, wp)[:, :, :, :wo].transpose(1, 0, 2, 3)
    out = xp.empty((n, f, ho, wo), dtype=x.dtype)
    if b is None:
        out[...] = out_valid
    else:  # the bias goes in with the same pass that drops the junk columns
        xp.add(out_valid, b[:, None, None], out=out)
    cache = FlatConv2dCache(cols, w, tuple(x.shape), (ho, wo), stride, padding, b is not None)
    return out, cache


def flat_conv2d_backward(dout, cache: FlatConv2dCache):
    """dout: (N, F, Ho, Wo) -> (dx (N, C, H, W), dw (F, C, kh, kw), db (F,) or None), as
    :func:`amnp.functional.conv.conv2d_backward`, on the extended grid."""
    xp = get_array_module(dout)
    w, (ho, wo) = cache.w, cache.out_hw
    n, c, height, width = cache.x_shape
    (ph, pw), step = cache.padding, cache.stride[1]
    f, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    wp = width + 2 * pw
    length = ho * wp
    dout_ext = xp.empty((f, n, ho, wp), dtype=dout.dtype)
    dout_ext[:, :, :, :wo] = dout.transpose(1, 0, 2, 3)
    dout_ext[:, :, :, wo:] = 0  # junk columns get zero gradient
    dout_ext = dout_ext.reshape(f, n * length)
    # cols @ doutᵀ, transposed: BLAS is faster with the long N·Ho·Wp axis inner (see conv.py)
    dw = (cache.cols @ dout_ext.T).T.reshape(w.shape)
    dcols = (w.reshape(f, -1).T @ dout_ext).reshape(c, kh * kw, n, length)
    dx_flat = xp.zeros((n, c, (height + 2 * ph + cache.stride[0]) * wp), dtype=dout.dtype)
    for k, offset in enumerate(flat_offsets((kh, kw), wp)):
        dx_flat[:, :, offset:offset + step * (length - 1) + 1:step] += dcols[:, k].transpose(1, 0, 2)
    dx_padded = dx_flat.reshape(n, c, -1, wp)
    dx = xp.ascontiguousarray(dx_padded[:, :, ph:ph + height, pw:pw + width])
    db = dout.sum(axis=(0, 2, 3)) if cache.has_bias else None
    return dx, dw, db
