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

Chunks of samples.  The column matrix of a whole batch (C·kh·kw · N·Ho·Wp values, 400 MB
for one 64-channel 56×48 layer at batch 64) is written once and read back by the GEMM
from main memory.  On the CPU the batch is therefore cut into chunks of samples whose
columns fit in about 2 MiB of cache; each chunk's windows are gathered and multiplied
while they are still in cache, and backward gathers them again instead of keeping them
(measured on one core: the 64-channel 56×48 layer's forward 1.4× and backward 1.2× faster
than unchunked, the small preset's 8×8 layers ~15%; no column matrix is held between
forward and backward, which lowers peak memory).  Deep layers with small
maps take bigger chunks (see :func:`samples_per_chunk`).  On a GPU, where one big
kernel beats many small ones, the chunk is the whole batch.  The chunk size changes the
order of the sums in dw, not the result beyond rounding.

Memory: the cache keeps the padded input (N, C, (Hp + s)·Wp), not the columns; at most
one chunk's columns and their gradient exist at a time.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_array_module
from ..validation import floating_array, positive_int, same_dtype, window
from .conv import output_shape

CPU_CHUNK_BYTES = 2 * 2**20  # columns per chunk on the CPU: about what stays in L2/L3 cache
MIN_GEMM_COLUMNS = 512       # below this a GEMM is too narrow for BLAS to run at full speed
COLUMNS_PER_FILTER = 8       # chunk columns per filter: keeps the per-chunk dw sum (F·K) small


class FlatConv2dCache(NamedTuple):
    x_flat: object        # (N, C, (Hp + sh)·Wp) padded, flattened input: backward gathers it again
    w: object             # (F, C, kh, kw): needed for dx
    x_shape: tuple        # (N, C, H, W)
    out_hw: tuple         # (Ho, Wo)
    stride: tuple
    padding: tuple
    has_bias: bool
    chunk: int            # samples per chunk, the same in backward as in forward


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


def samples_per_chunk(xp, n, column_bytes_per_sample, columns_per_sample, filters,
                      chunk_bytes=CPU_CHUNK_BYTES):
    """The whole batch on a GPU.  On the CPU, as many samples as fit in ``chunk_bytes``, but
    at least enough for max(512, 8·F) GEMM columns: deep layers (small maps, many filters)
    lose more to narrow GEMMs and to summing dw (F·K values) over many chunks than they
    gain from cache."""
    if xp is not np:
        return n
    fitting = chunk_bytes // column_bytes_per_sample
    min_columns = max(MIN_GEMM_COLUMNS, COLUMNS_PER_FILTER * filters)
    wide_enough = -(-min_columns // columns_per_sample)  # ceiling division
    return max(1, min(n, max(fitting, wide_enough)))


def flat_im2col(x_flat, kernel, padded_width, step, length):
    """(m, C, (Hp + s)·Wp) flat images -> columns (C·kh·kw, m·L) on the extended grid."""
    xp = get_array_module(x_flat)
    m, c = x_flat.shape[:2]
    offsets = flat_offsets(kernel, padded_width)
    cols = xp.empty((c, len(offsets), m, length), dtype=x_flat.dtype)
    for k, offset in enumerate(offsets):
        cols[:, k] = x_flat[:, :, offset:offset + step * (length - 1) + 1:step].transpose(1, 0, 2)
    return cols.reshape(c * len(offsets), m * length)


def flat_col2im_add(dcols, dx_flat, kernel, padded_width, step, length):
    """Adjoint of :func:`flat_im2col`: add columns (C·kh·kw, m·L) into dx_flat (m, C, ...)."""
    m, c = dx_flat.shape[:2]
    offsets = flat_offsets(kernel, padded_width)
    dcols = dcols.reshape(c, len(offsets), m, length)
    for k, offset in enumerate(offsets):
        dx_flat[:, :, offset:offset + step * (length - 1) + 1:step] += dcols[:, k].transpose(1, 0, 2)


def flat_conv2d_forward(x, w, b=None, stride=1, padding=0, chunk=None):
    """Same arguments, result and formula as :func:`amnp.functional.conv.conv2d_forward`.

    x: (N, C, H, W); w: (F, C, kh, kw); b: (F,) or None -> out: (N, F, Ho, Wo).
    chunk: samples per chunk (default: :func:`samples_per_chunk`).
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
    x_flat, wp = flat_padded(x, padding, stride)
    length, step = ho * wp, stride[1]
    if chunk is None:
        chunk = samples_per_chunk(xp, n, w[0].size * length * x.dtype.itemsize, length, f)
    else:
        chunk = positive_int(chunk, "chunk", "conv2d")
    w_mat = w.reshape(f, -1)
    out = xp.empty((n, f, ho, wo), dtype=x.dtype)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        cols = flat_im2col(x_flat[start:stop], kernel, wp, step, length)
        out_ext = w_mat @ cols  # the one GEMM (per chunk): (F, C·kh·kw) @ (C·kh·kw, m·Ho·Wp)
        out_valid = out_ext.reshape(f, stop - start, ho, wp)[:, :, :, :wo].transpose(1, 0, 2, 3)
        if b is None:
            out[start:stop] = out_valid
        else:  # the bias goes in with the same pass that drops the junk columns
            xp.add(out_valid, b[:, None, None], out=out[start:stop])
    cache = FlatConv2dCache(x_flat, w, tuple(x.shape), (ho, wo), stride, padding, b is not None, chunk)
    return out, cache


def flat_conv2d_backward(dout, cache: FlatConv2dCache):
    """dout: (N, F, Ho, Wo) -> (dx (N, C, H, W), dw (F, C, kh, kw), db (F,) or None), as
    :func:`amnp.functional.conv.conv2d_backward`, on the extended grid, chunk by chunk:
    dw = Σ_chunks dout_ext colsᵀ, dx = col2im(wᵀ dout_ext) of each chunk."""
    xp = get_array_module(dout)
    w, (ho, wo) = cache.w, cache.out_hw
    n, c, height, width = cache.x_shape
    (ph, pw), step = cache.padding, cache.stride[1]
    f, kernel = w.shape[0], tuple(w.shape[2:])
    wp = width + 2 * pw
    length = ho * wp
    w_mat = w.reshape(f, -1)
    dw_t = xp.zeros((w_mat.shape[1], f), dtype=dout.dtype)  # dwᵀ, summed over the chunks
    dx_flat = xp.zeros(cache.x_flat.shape, dtype=dout.dtype)
    for start in range(0, n, cache.chunk):
        stop = min(start + cache.chunk, n)
        dout_ext = xp.empty((f, stop - start, ho, wp), dtype=dout.dtype)
        dout_ext[:, :, :, :wo] = dout[start:stop].transpose(1, 0, 2, 3)
        dout_ext[:, :, :, wo:] = 0  # junk columns get zero gradient
        dout_ext = dout_ext.reshape(f, -1)
        cols = flat_im2col(cache.x_flat[start:stop], kernel, wp, step, length)
        # cols @ doutᵀ rather than dout @ colsᵀ: BLAS is faster with the long axis inner (conv.py)
        dw_t += cols @ dout_ext.T
        flat_col2im_add(w_mat.T @ dout_ext, dx_flat[start:stop], kernel, wp, step, length)
    dx_padded = dx_flat.reshape(n, c, -1, wp)
    dx = xp.ascontiguousarray(dx_padded[:, :, ph:ph + height, pw:pw + width])
    db = dout.sum(axis=(0, 2, 3)) if cache.has_bias else None
    return dx, dw_t.T.reshape(w.shape), db
