"""Max and average pooling over sliding windows, with padding.

Both loop over the kh·kw window offsets only, like im2col, never over pixels.
As in PyTorch, padding may be at most half the window, so that every window
holds at least one real input pixel.

- Max pooling pads with −inf, so padding never wins.  Ties: the gradient goes
  to the first maximal element in row-major window order (the top-most, then
  left-most), the same element ``argmax`` picks.
- Average pooling counts the padded zeros in the average (PyTorch's default
  ``count_include_pad=True``): every window divides by kh·kw.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import get_array_module
from ..validation import floating_array, window
from .conv import output_shape, crop_padding, pad_spatial, window_slice


def _pool_geometry(x, kernel_size, stride, padding, where):
    floating_array(x, 4, "(N, C, H, W)", where)
    kernel, stride, padding = window(kernel_size, stride, padding, where)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(
            f"{where}: padding {padding} must be at most half the window {kernel}, "
            "so that every window sees at least one input pixel"
        )
    out_hw = output_shape(x.shape[2:], kernel, stride, padding, where)
    return kernel, stride, padding, out_hw


class MaxPoolCache(NamedTuple):
    argmax: object  # (N, C, Ho, Wo) int: index i·kw + j of the winning offset in each window
    x_padded_shape: tuple
    kernel: tuple
    stride: tuple
    padding: tuple


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """x: (N, C, H, W) -> out: (N, C, Ho, Wo), out = max over each window of the −inf-padded input.

    stride defaults to kernel_size.
    """
    kernel, stride, padding, out_hw = _pool_geometry(x, kernel_size, stride, padding, "max_pool2d")
    xp = get_array_module(x)
    x_padded = pad_spatial(x, padding, value=-xp.inf)
    kh, kw = kernel
    windows = xp.empty((kh * kw,) + x.shape[:2] + out_hw, dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = window_slice(i, j, out_hw, stride)
            windows[i * kw + j] = x_padded[:, :, rows, columns]
    argmax = windows.argmax(axis=0)  # first maximum wins ties
    out = xp.take_along_axis(windows, argmax[None], axis=0)[0]
    return out, MaxPoolCache(argmax, x_padded.shape, kernel, stride, padding)


def max_pool2d_backward(dout, cache: MaxPoolCache):
    """dout: (N, C, Ho, Wo) -> dx: (N, C, H, W); each window's gradient goes to its argmax."""
    xp = get_array_module(dout)
    kh, kw = cache.kernel
    out_hw = dout.shape[2:]
    dx_padded = xp.zeros(cache.x_padded_shape, dtype=dout.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = window_slice(i, j, out_hw, cache.stride)
            dx_padded[:, :, rows, columns] += dout * (cache.argmax == i * kw + j)
    return crop_padding(dx_padded, cache.padding)


class AvgPoolCache(NamedTuple):
    x_padded_shape: tuple
    kernel: tuple
    stride: tuple
    padding: tuple


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """x: (N, C, H, W) -> out: (N, C, Ho, Wo), out = (1/(kh·kw)) Σ over each zero-padded window.

    stride defaults to kernel_size.
    """
    kernel, stride, padding, out_hw = _pool_geometry(x, kernel_size, stride, padding, "avg_pool2d")
    xp = get_array_module(x)
    x_padded = pad_spatial(x, padding)
    kh, kw = kernel
    out = xp.zeros(x.shape[:2] + out_hw, dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = window_slice(i, j, out_hw, stride)
            out += x_padded[:, :, rows, columns]
    out /= kh * kw
    return out, AvgPoolCache(x_padded.shape, kernel, stride, padding)


def avg_pool2d_backward(dout, cache: AvgPoolCache):
    """dout: (N, C, Ho, Wo) -> dx: (N, C, H, W); each window spreads dout/(kh·kw) over its pixels."""
    xp = get_array_module(dout)
    kh, kw = cache.kernel
    share = dout / (kh * kw)
    dx_padded = xp.zeros(cache.x_padded_shape, dtype=dout.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = window_slice(i, j, dout.shape[2:], cache.stride)
            dx_padded[:, :, rows, columns] += share
    return crop_padding(dx_padded, cache.padding)
