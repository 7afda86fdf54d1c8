"""2-D convolution (cross-correlation, as in every deep-learning library) by im2col + one GEMM.

im2col copies, for each of the kh·kw kernel offsets, the strided slice of the
padded input that this offset sees into a column matrix; the convolution is then
a single matrix product with the flattened kernels.  The copy loops over kernel
offsets only (kh·kw iterations), never over samples or pixels.  col2im mirrors
it with ``+=``: where windows overlap (stride < kernel) a pixel receives the
gradient of every window that saw it.

Memory: the column matrix holds C·kh·kw · N·Ho·Wo elements and is kept for the
backward pass.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import get_array_module
from ..validation import floating_array, same_dtype, window


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Number of window positions along one axis: ⌊(size + 2·padding − kernel) / stride⌋ + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def output_shape(x_hw, kernel, stride, padding, where):
    """The output size (Ho, Wo) of a window geometry, after checking that the window fits."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    height, width = x_hw
    if kh > height + 2 * ph or kw > width + 2 * pw:
        raise ValueError(
            f"{where}: the {kh}x{kw} window is larger than the padded input "
            f"{height + 2 * ph}x{width + 2 * pw} (input {height}x{width}, padding {padding})"
        )
    return output_size(height, kh, sh, ph), output_size(width, kw, sw, pw)


def pad_spatial(x, padding, value=0.0):
    """Pad the last two axes of (N, C, H, W) by (ph, pw) on each side with ``value``."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = get_array_module(x)
    n, c, height, width = x.shape
    # a filled array and one copy: several times faster than the general-purpose xp.pad
    padded = xp.full((n, c, height + 2 * ph, width + 2 * pw), value, dtype=x.dtype)
    padded[:, :, ph:ph + height, pw:pw + width] = x
    return padded


def window_slice(i, j, out_hw, stride):
    """The strided (rows, cols) slice of the padded input seen by kernel offset (i, j)."""
    (ho, wo), (sh, sw) = out_hw, stride
    return slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw)


def im2col(x_padded, kernel, stride, out_hw):
    """(N, C, Hp, Wp) -> columns (C·kh·kw, N·Ho·Wo).

    Row (c, i, j) holds, for every sample and output position, the input value
    that kernel tap (c, i, j) multiplies.  Laid out channel-major so that the
    flattened weights (F, C·kh·kw) multiply it directly.
    """
    xp = get_array_module(x_padded)
    n, c = x_padded.shape[:2]
    (kh, kw), (ho, wo) = kernel, out_hw
    cols = xp.empty((c, kh, kw, n, ho, wo), dtype=x_padded.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = window_slice(i, j, out_hw, stride)
            cols[:, i, j] = x_padded[:, :, rows, columns].transpose(1, 0, 2, 3)
    return cols.reshape(c * kh * kw, n * ho * wo)


def col2im(cols, x_padded_shape, kernel, stride, out_hw):
    """Adjoint of :func:`im2col`: (C·kh·kw, N·Ho·Wo) -> (N, C, Hp, Wp), summing overlaps."""
    xp = get_array_module(cols)
    n, c = x_padded_shape[:2]
    (kh, kw), (ho, wo) = kernel, out_hw
    cols = cols.reshape(c, kh, kw, n, ho, wo)
    dx_padded = xp.zeros(x_padded_shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = window_slice(i, j, out_hw, stride)
            dx_padded[:, :, rows, columns] += cols[:, i, j].transpose(1, 0, 2, 3)
    return dx_padded


def crop_padding(x_padded, padding):
    """Remove (ph, pw) from each side of the last two axes."""
    ph, pw = padding
    height, width = x_padded.shape[2:]
    return x_padded[:, :, ph:height - ph, pw:width - pw]


class Conv2dCache(NamedTuple):
    cols: object        # (C·kh·kw, N·Ho·Wo) im2col of the padded input: needed for dw
    w: object           # (F, C, kh, kw): needed for dx
    x_padded_shape: tuple
    stride: tuple
    padding: tuple
    has_bias: bool


def conv2d_forward(x, w, b=None, stride=1, padding=0):
    """Convolution of a batch of images with F filters.

    x: (N, C, H, W); w: (F, C, kh, kw); b: (F,) or None;
    stride, padding: int or (h, w) pair; zero padding.
    out: (N, F, Ho, Wo), Ho = ⌊(H + 2ph − kh)/sh⌋ + 1 (likewise Wo), with
    out[n, f, y, x] = b[f] + Σ_{c,i,j} w[f, c, i, j] · x_pad[n, c, y·sh + i, x·sw + j].
    """
    floating_array(x, 4, "(N, C, H, W)", "conv2d")
    floating_array(w, 4, "(F, C, kh, kw)", "conv2d", "weight")
    same_dtype("conv2d", input=x, weight=w, bias=b)
    get_array_module(x, w, b)
    kernel, stride, padding = window(tuple(w.shape[2:]), stride, padding, "conv2d")
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"conv2d: input has {x.shape[1]} channels but the weight expects {w.shape[1]}"
        )
    out_hw = output_shape(x.shape[2:], kernel, stride, padding, "conv2d")
    x_padded = pad_spatial(x, padding)
    cols = im2col(x_padded, kernel, stride, out_hw)
    n, f = x.shape[0], w.shape[0]
    out = w.reshape(f, -1) @ cols  # the one GEMM: (F, C·kh·kw) @ (C·kh·kw, N·Ho·Wo)
    if b is not None:
        out += b[:, None]
    out = out.reshape(f, n, *out_hw).transpose(1, 0, 2, 3)
    xp = get_array_module(out)
    cache = Conv2dCache(cols, w, x_padded.shape, stride, padding, b is not None)
    return xp.ascontiguousarray(out), cache


def conv2d_backward(dout, cache: Conv2dCache, input_grad=True):
    """dout: (N, F, Ho, Wo) -> (dx (N, C, H, W), dw (F, C, kh, kw), db (F,) or None).

    dw = dout_mat colsᵀ, dcols = wᵀ dout_mat, dx = col2im(dcols) with the padding cropped,
    db = Σ_{n,y,x} dout.  With ``input_grad=False`` dx is not computed (None): a network's
    first layer, whose input is the data.
    """
    w = cache.w
    f = w.shape[0]
    dout_mat = dout.transpose(1, 0, 2, 3).reshape(f, -1)
    # cols @ dout_matᵀ, transposed, rather than dout_mat @ colsᵀ: the same product, but BLAS
    # is several times faster with the long N·Ho·Wo axis as the inner dimension this way round.
    dw = (cache.cols @ dout_mat.T).T.reshape(w.shape)
    db = dout.sum(axis=(0, 2, 3)) if cache.has_bias else None
    if not input_grad:
        return None, dw, db
    dcols = w.reshape(f, -1).T @ dout_mat
    dx_padded = col2im(dcols, cache.x_padded_shape, w.shape[2:], cache.stride, dout.shape[2:])
    return crop_padding(dx_padded, cache.padding), dw, db
