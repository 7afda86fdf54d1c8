"""The same convolution as :mod:`amnp.functional.conv`, computed on channels-last memory.

Why it is faster.  The arrays keep their (N, C, H, W) shape, but this module stores its
outputs with the channels innermost, as (N, H, W, C) memory seen through a transposed
view, and reads its inputs that way (a view when they come from this module or from an
elementwise op on its output, one transposing copy otherwise).  Then:

- a window row (kw pixels of C channels) is kw·C contiguous values, so gathering the
  windows copies runs of kw·C values, kh per output pixel, instead of runs of Wo values
  per image row, channel and kernel offset as :func:`~amnp.functional.conv.im2col` does;
  on the small maps of the deep layers (4×4 to 8×8) those are far fewer, longer copies,
  and NumPy's cost is per copy;
- the column matrix has one row per output pixel, (N·Ho·Wo, kh·kw·C), so the GEMM
  ``cols @ w_rowsᵀ`` writes the output directly in channels-last order: no transpose
  after the GEMM, and stride 2 is no more expensive to gather than stride 1;
- backward needs no transpose of dout when dout is channels-last too (what elementwise
  ops on this module's outputs give), and at stride 1 computes dx as a convolution of
  dout with the flipped kernels, a gather and one GEMM, instead of a scatter-add (``+=``
  reads and writes dx once per kernel offset):
  dx[n, c, y, x] = Σ_{f,i,j} dout_pad[n, f, y + i, x + j] · w[f, c, kh−1−i, kw−1−j],
  dout padded by (kh−1−ph, kw−1−pw); this needs padding ≤ kernel − 1, otherwise (and at
  stride > 1) dx is the scatter-add of the plain version.

Chunks of samples.  The column matrix of a whole batch (N·Ho·Wo · kh·kw·C values, 400 MB
for one 64-channel 56×48 layer at batch 64) would be written once and read back by the
GEMM from main memory.  On the CPU the batch is therefore cut into chunks of samples whose
columns fit in about 2 MiB of cache (:func:`samples_per_chunk`); each chunk's windows are
gathered and multiplied while they are still in cache, into one buffer reused from chunk to
chunk, and backward gathers them again instead of keeping them, which lowers peak memory.
On a GPU, where one big kernel beats many small ones, the chunk is the whole batch.  The
chunk size changes the order of the sums in dw, not the result beyond rounding.

Inputs with few channels (the first layer: 1 or 3) copy runs of only kw·C = 3 to 9 values
and scatter dx in runs of C; there the plain version measured faster (the small preset's
first layer: forward 1.4 to 2×, backward 2×, one thread), so :class:`amnp.layers.Conv2d`
keeps it below 8 channels, and on CuPy runs it not at all
(:func:`amnp.layers.core.runs_channels_last` says why).

This replaced a formulation on flattened NCHW rows (windows as one long slice per sample
and channel, on an extended grid with junk columns): measured alone, op by op, the
channels-last one was 1.04 to 1.3× as fast on every stride-1 layer of SphereFace-20 and
1.4 to 2× on the small preset's 4×4 and 8×8 layers (one thread, forward and backward),
and it serves stride 2 as well.

Memory: the cache keeps the padded input (N, Hp, Wp, C); at most one chunk's columns (and
in backward its columns of dout) exist at a time.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_array_module
from ..validation import floating_array, positive_int, same_dtype, window
from .conv import output_shape, window_slice

CPU_CHUNK_BYTES = 2 * 2**20  # columns per chunk on the CPU: about what stays in L2/L3 cache
MIN_GEMM_ROWS = 512          # below this a GEMM is too narrow for BLAS to run at full speed
ROWS_PER_FILTER = 8          # chunk rows per filter: keeps the per-chunk dw sum (F·K) small


class ChannelsLastConv2dCache(NamedTuple):
    x_padded: object      # (N, Hp, Wp, C) zero-padded input, channels last: backward gathers it again
    w: object             # (F, C, kh, kw)
    w_rows: object        # (F, kh·kw·C): w with its taps in the columns' (i, j, c) order
    x_hw: tuple           # (H, W)
    out_hw: tuple         # (Ho, Wo)
    stride: tuple
    padding: tuple
    has_bias: bool
    chunk: int            # samples per chunk, the same in backward as in forward


def samples_per_chunk(xp, n, column_bytes_per_sample, rows_per_sample, filters,
                      chunk_bytes=CPU_CHUNK_BYTES):
    """The whole batch on a GPU.  On the CPU, as many samples as fit in ``chunk_bytes``, but
    at least enough for max(512, 8·F) GEMM rows: deep layers (small maps, many filters)
    lose more to narrow GEMMs and to summing dw (F·K values) over many chunks than they
    gain from cache."""
    if xp is not np:
        return n
    fitting = chunk_bytes // column_bytes_per_sample
    min_rows = max(MIN_GEMM_ROWS, ROWS_PER_FILTER * filters)
    wide_enough = -(-min_rows // rows_per_sample)  # ceiling division
    return max(1, min(n, max(fitting, wide_enough)))


def channels_last(x):
    """(N, C, H, W) -> the same values as (N, H, W, C): a view, contiguous when x is a
    channels-last array (as this module returns)."""
    return x.transpose(0, 2, 3, 1)


def padded_channels_last(x, padding):
    """(N, C, H, W) -> zero-padded (N, H + 2ph, W + 2pw, C), contiguous."""
    xp = get_array_module(x)
    n, c, height, width = x.shape
    ph, pw = padding
    padded = xp.zeros((n, height + 2 * ph, width + 2 * pw, c), dtype=x.dtype)
    padded[:, ph:ph + height, pw:pw + width] = channels_last(x)
    return padded


def column_buffer(xp, samples, kernel, channels, out_hw, dtype):
    """Room for the columns of ``samples`` samples, to be filled chunk after chunk: one
    allocation per call instead of one per chunk.  A fresh array of a few MiB costs a page
    fault per 4 KiB page when it is first written; reusing one buffer measured the
    stride-1 backward of the small preset about 1.4× as fast."""
    return xp.empty(samples * out_hw[0] * out_hw[1] * kernel[0] * kernel[1] * channels, dtype=dtype)


def channels_last_im2col(x_padded, kernel, stride, out_hw, buffer=None):
    """(m, Hp, Wp, C) -> columns (m·Ho·Wo, kh·kw·C): row (n, y, x) holds window (y, x),
    taps in (i, j, c) order.  x_padded must be contiguous (as :func:`padded_channels_last`
    makes it): then row i of window (y, x) is the kw·C values from x_padded[n, y·sh + i,
    x·sw], and a strided view (m, Ho, Wo, kh, kw·C) of x_padded shows all the windows
    without copying; one copy of it, in runs of kw·C values, fills the columns (measured:
    the small preset's step 5% faster than copying runs of C values per kernel offset).
    buffer: a 1-D array of at least that many elements to write them into (a view of it
    is returned), or None for a new array."""
    xp = get_array_module(x_padded)
    m, c = x_padded.shape[0], x_padded.shape[3]
    (kh, kw), (ho, wo) = kernel, out_hw
    shape = (m, ho, wo, kh, kw * c)
    if buffer is None:
        cols = xp.empty(shape, dtype=x_padded.dtype)
    else:
        cols = buffer[:m * ho * wo * kh * kw * c].reshape(shape)
    sample, row, pixel, channel = x_padded.strides
    # windows overlap, so the view reads some values several times; it is only ever read
    cols[...] = xp.lib.stride_tricks.as_strided(
        x_padded, shape, (sample, stride[0] * row, stride[1] * pixel, row, channel))
    return cols.reshape(m * ho * wo, kh * kw * c)


def channels_last_col2im_add(dcols, dx_padded, kernel, stride, out_hw):
    """Adjoint of :func:`channels_last_im2col`: add columns (m·Ho·Wo, kh·kw·C) into
    dx_padded (m, Hp, Wp, C), summing where windows overlap."""
    m, c = dx_padded.shape[0], dx_padded.shape[3]
    (kh, kw), (ho, wo) = kernel, out_hw
    dcols = dcols.reshape(m, ho, wo, kh, kw, c)
    for i in range(kh):
        for j in range(kw):
            rows, columns = window_slice(i, j, out_hw, stride)
            dx_padded[:, rows, columns] += dcols[:, :, :, i, j]


def kernel_rows(w):
    """(F, C, kh, kw) -> (F, kh·kw·C), taps in the columns' (i, j, c) order."""
    return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)


def channels_last_conv2d_forward(x, w, b=None, stride=1, padding=0, chunk=None):
    """Same arguments, result and formula as :func:`amnp.functional.conv.conv2d_forward`.

    x: (N, C, H, W), any memory layout; w: (F, C, kh, kw); b: (F,) or None
    -> out: (N, F, Ho, Wo), a channels-last view.
    chunk: samples per chunk (default: :func:`samples_per_chunk`).
    """
    floating_array(x, 4, "(N, C, H, W)", "conv2d")
    floating_array(w, 4, "(F, C, kh, kw)", "conv2d", "weight")
    same_dtype("conv2d", input=x, weight=w, bias=b)
    xp = get_array_module(x, w, b)
    kernel, stride, padding = window(tuple(w.shape[2:]), stride, padding, "conv2d")
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"conv2d: input has {x.shape[1]} channels but the weight expects {w.shape[1]}"
        )
    ho, wo = output_shape(x.shape[2:], kernel, stride, padding, "conv2d")
    n, f = x.shape[0], w.shape[0]
    w_rows = kernel_rows(w)
    if chunk is None:
        chunk = samples_per_chunk(xp, n, w_rows.size // f * ho * wo * x.dtype.itemsize, ho * wo, f)
    else:
        chunk = positive_int(chunk, "chunk", "conv2d")
    x_padded = padded_channels_last(x, padding)
    out = xp.empty((n, ho, wo, f), dtype=x.dtype)
    buffer = column_buffer(xp, min(chunk, n), kernel, x.shape[1], (ho, wo), x.dtype)
    for start in range(0, n, chunk):
        cols = channels_last_im2col(x_padded[start:start + chunk], kernel, stride, (ho, wo), buffer)
        out_rows = out[start:start + chunk].reshape(-1, f)
        xp.matmul(cols, w_rows.T, out=out_rows)  # the one GEMM (per chunk), channels last
        if b is not None:
            out_rows += b
    cache = ChannelsLastConv2dCache(x_padded, w, w_rows, tuple(x.shape[2:]), (ho, wo), stride, padding,
                                    b is not None, chunk)
    return out.transpose(0, 3, 1, 2), cache


def flipped_kernel_rows(w):
    """(F, C, kh, kw) -> (C, kh·kw·F): the kernels of dx = dout ⋆ flipped w, taps in the
    (i, j, f) order of dout's columns, row c holding w[:, c, kh−1−i, kw−1−j]."""
    return w[:, :, ::-1, ::-1].transpose(1, 2, 3, 0).reshape(w.shape[1], -1)


def channels_last_conv2d_backward(dout, cache: ChannelsLastConv2dCache, input_grad=True):
    """dout: (N, F, Ho, Wo), any memory layout -> (dx (N, C, H, W) channels-last view,
    dw (F, C, kh, kw), db (F,) or None), as :func:`amnp.functional.conv.conv2d_backward`,
    chunk by chunk: dw = Σ_chunks dout_rowsᵀ cols; dx as a convolution of dout with the
    flipped kernels at stride 1 (module docstring), else the scatter-add of wᵀ dout;
    dx is None with ``input_grad=False``."""
    xp = get_array_module(dout)
    w, w_rows, (ho, wo) = cache.w, cache.w_rows, cache.out_hw
    (height, width), (ph, pw), stride = cache.x_hw, cache.padding, cache.stride
    f, c, kh, kw = w.shape
    n = dout.shape[0]
    dout_last = channels_last(dout)
    dw_rows = xp.zeros(w_rows.shape, dtype=dout.dtype)
    by_flipped_kernel = stride == (1, 1) and ph <= kh - 1 and pw <= kw - 1
    samples = min(cache.chunk, n)
    buffer = column_buffer(xp, samples, (kh, kw), c, (ho, wo), dout.dtype)
    if input_grad and by_flipped_kernel:
        dout_padded = padded_channels_last(dout, (kh - 1 - ph, kw - 1 - pw))
        flipped_rows = flipped_kernel_rows(w)
        dout_buffer = column_buffer(xp, samples, (kh, kw), f, (height, width), dout.dtype)
        dx = xp.empty((n, height, width, c), dtype=dout.dtype)
    elif input_grad:
        dcols_buffer = column_buffer(xp, samples, (kh, kw), c, (ho, wo), dout.dtype)
        dx_padded = xp.zeros(cache.x_padded.shape, dtype=dout.dtype)
    for start in range(0, n, cache.chunk):
        stop = min(start + cache.chunk, n)
        cols = channels_last_im2col(cache.x_padded[start:stop], (kh, kw), stride, (ho, wo), buffer)
        dout_rows = dout_last[start:stop].reshape(-1, f)  # a copy only if dout is not channels-last
        # dout_rowsᵀ cols: the long N·Ho·Wo axis is the inner dimension, as BLAS prefers (conv.py)
        dw_rows += dout_rows.T @ cols
        if not input_grad:
            continue
        if by_flipped_kernel:
            dout_cols = channels_last_im2col(dout_padded[start:stop], (kh, kw), (1, 1), (height, width),
                                             dout_buffer)
            xp.matmul(dout_cols, flipped_rows.T, out=dx[start:stop].reshape(-1, c))
        else:
            dcols = xp.matmul(dout_rows, w_rows, out=dcols_buffer[:cols.size].reshape(cols.shape))
            channels_last_col2im_add(dcols, dx_padded[start:stop], (kh, kw), stride, (ho, wo))
    dw = xp.ascontiguousarray(dw_rows.reshape(f, kh, kw, c).transpose(0, 3, 1, 2))
    db = dout_last.sum(axis=(0, 1, 2)) if cache.has_bias else None
    if not input_grad:
        return None, dw, db
    if not by_flipped_kernel:
        dx = dx_padded[:, ph:ph + height, pw:pw + width]
    return dx.transpose(0, 3, 1, 2), dw, db
