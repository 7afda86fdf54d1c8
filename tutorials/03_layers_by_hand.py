# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 3: layers by hand
#
# **Learning goals.** After this tutorial you can
# - write the backward passes of a linear layer and of PReLU, summing over the right axes;
# - build a convolution from `im2col` and one matrix product, and its backward from `col2im`;
# - explain why `col2im` must *accumulate*, and why a check only sees that when windows overlap;
# - write max-pooling's backward, and say which input gets the gradient.
#
# Derivations: `docs/derivations.md`, [Linear and PReLU](../docs/derivations.md#linear-prelu) and
# [im2col and its adjoint col2im](../docs/derivations.md#im2col).

# %%
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
QUICK = os.environ.get("AMNP_TUTORIAL_QUICK", "0") == "1"
OUT = os.environ.get("AMNP_TUTORIAL_OUT", "out")
os.makedirs(OUT, exist_ok=True)

import numpy as np

import checks
from amnp import functional as F
from amnp.gradcheck import numerical_gradient, rel_error

rng = np.random.default_rng(3)

# %% [markdown]
# ## 1. Linear: $out = x w^\top + b$
# With $x$: (N, D_in), $w$: (D_out, D_in), $b$: (D_out,) and `dout` = $G$: (N, D_out):
# $dx = G w$, $dw = G^\top x$, $db = \sum_n G_n$. Every gradient has the shape of what it is the gradient of.
#
# ### Exercise 1

# %%
def linear_backward(dout, x, w):
    """-> (dx (N, D_in), dw (D_out, D_in), db (D_out,))."""
    ### BEGIN SOLUTION
    return dout @ w, dout.T @ x, dout.sum(axis=0)
    ### END SOLUTION


checks.check_linear_backward(linear_backward)

# %% [markdown]
# ## 2. PReLU: one learned slope per channel
# $out = \max(x, 0) + a_c \min(x, 0)$ with channels on axis 1. So $dx = G$ where $x > 0$ and
# $a_c G$ elsewhere, and $da_c = \sum_{n, h, w} G \min(x, 0)$: the slope is shared by every sample
# and pixel of its channel, so its gradient sums over all of them.
#
# ### Exercise 2

# %%
def prelu_backward(dout, x, a):
    """x, dout: (N, C, H, W); a: (C,) -> (dx, da)."""
    ### BEGIN SOLUTION
    slope = a.reshape(1, -1, 1, 1)
    dx = np.where(x > 0, dout, slope * dout)
    da = (dout * np.minimum(x, 0)).sum(axis=(0, 2, 3))
    return dx, da
    ### END SOLUTION


checks.check_prelu_backward(prelu_backward)

# %% [markdown]
# ## 3. Convolution as one matrix product
# `im2col` copies, for each of the $k_h k_w$ kernel offsets $(i, j)$, the strided slice of the
# padded input that this offset sees. Row $(c, i, j)$ of the result holds the input value that
# kernel tap $(c, i, j)$ multiplies, for every sample and output position $(n, y, x)$:
#
# $$\text{cols}[(c,i,j), (n,y,x)] = x_p[n, c, y s + i, x s + j].$$
#
# The loop runs over the $k_h k_w$ offsets only, never over pixels (Deep Learning from Scratch).
#
# ### Exercise 3: im2col
# Return cols of shape $(C k_h k_w, N H_o W_o)$, channel-major rows, columns ordered $(n, y, x)$.

# %%
def im2col(x_padded, kh, kw, stride):
    """(N, C, Hp, Wp) -> (C*kh*kw, N*Ho*Wo)."""
    ### BEGIN SOLUTION
    n, c, hp, wp = x_padded.shape
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    cols = np.empty((c, kh, kw, n, ho, wo), dtype=x_padded.dtype)
    for i in range(kh):
        for j in range(kw):
            window = x_padded[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            cols[:, i, j] = window.transpose(1, 0, 2, 3)
    return cols.reshape(c * kh * kw, n * ho * wo)
    ### END SOLUTION


checks.check_im2col(im2col)

# %% [markdown]
# The forward pass is then `w.reshape(F, -1) @ cols`. The backward of a matrix product gives
# $d\text{cols} = w^\top G$, and $dx$ must undo the copy: **col2im is the adjoint of im2col**,
# $\langle \text{im2col}(x), \text{cols}\rangle = \langle x, \text{col2im}(\text{cols})\rangle$.
# A pixel copied into several columns (overlapping windows) receives the sum of their gradients.
#
# ### Exercise 4: col2im

# %%
def col2im(cols, x_padded_shape, kh, kw, stride):
    """(C*kh*kw, N*Ho*Wo) -> (N, C, Hp, Wp), summing where windows overlap."""
    ### BEGIN SOLUTION
    n, c, hp, wp = x_padded_shape
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    cols = cols.reshape(c, kh, kw, n, ho, wo)
    dx = np.zeros(x_padded_shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] += \
                cols[:, i, j].transpose(1, 0, 2, 3)
    return dx
    ### END SOLUTION


checks.check_col2im(col2im)

# %% [markdown]
# ## 4. Your convolution, checked by central differences

# %%
def conv_forward(x, w, b, stride, pad):
    x_padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    f, _, kh, kw = w.shape
    cols = im2col(x_padded, kh, kw, stride)
    ho, wo = (x_padded.shape[2] - kh) // stride + 1, (x_padded.shape[3] - kw) // stride + 1
    out = (w.reshape(f, -1) @ cols + b[:, None]).reshape(f, x.shape[0], ho, wo).transpose(1, 0, 2, 3)
    return out, (cols, x_padded.shape)


def conv_backward(dout, w, cache, stride, pad, col2im=col2im):
    cols, padded_shape = cache
    f, _, kh, kw = w.shape
    g = dout.transpose(1, 0, 2, 3).reshape(f, -1)
    dx_padded = col2im(w.reshape(f, -1).T @ g, padded_shape, kh, kw, stride)
    dx = dx_padded[:, :, pad:padded_shape[2] - pad, pad:padded_shape[3] - pad]
    return dx, (g @ cols.T).reshape(w.shape), g.sum(axis=1)


x = rng.standard_normal((2, 2, 5, 5))
w = rng.standard_normal((3, 2, 3, 3))
b = rng.standard_normal(3)
out, cache = conv_forward(x, w, b, stride=2, pad=1)
dout = rng.standard_normal(out.shape)
dx, dw, db = conv_backward(dout, w, cache, 2, 1)
for name, analytic, wrt in (("dx", dx, x), ("dw", dw, w), ("db", db, b)):
    numeric = numerical_gradient(lambda: conv_forward(x, w, b, 2, 1)[0], wrt, dout)
    print(f"{name}: relative error {rel_error(analytic, numeric):.1e}")
reference, _ = F.conv2d_forward(x, w, b, stride=2, padding=1)
print(f"same output as amnp.functional.conv2d_forward: {np.allclose(out, reference)}")

# %% [markdown]
# ## 5. The col2im that assigns
# Replace `+=` by `=` and the backward is wrong wherever two windows share a pixel.
#
# **Predict first.** For which of the geometries below will a gradient check catch it?

# %%
def col2im_assigning(cols, x_padded_shape, kh, kw, stride):
    n, c, hp, wp = x_padded_shape
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    cols = cols.reshape(c, kh, kw, n, ho, wo)
    dx = np.zeros(x_padded_shape)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] = \
                cols[:, i, j].transpose(1, 0, 2, 3)   # the bug: '=' where '+=' belongs
    return dx


print(f"{'kernel':>6} {'stride':>6} {'pad':>4} {'overlap':>8} {'dx rel err':>11}  verdict")
for k, s, p in ((3, 1, 1), (3, 2, 1), (2, 2, 0), (3, 3, 1)):
    w = rng.standard_normal((3, 2, k, k))
    out, cache = conv_forward(x, w, b, s, p)
    dout = rng.standard_normal(out.shape)
    dx_bad, _, _ = conv_backward(dout, w, cache, s, p, col2im=col2im_assigning)
    numeric = numerical_gradient(lambda: conv_forward(x, w, b, s, p)[0], x, dout)
    err = rel_error(dx_bad, numeric)
    print(f"{k:>6} {s:>6} {p:>4} {'yes' if s < k else 'no':>8} {err:11.1e}  "
          + ("CAUGHT" if err > 1e-6 else "not caught ('=' and '+=' agree)"))

# %% [markdown]
# **Inline question 1.** Why does no check catch the bug with stride ≥ kernel?
# (a) the check's h is too large (b) every pixel belongs to at most one window, so '=' and '+='
# do the same (c) padding hides it
#
# Answer with the letter as a string, e.g. `'b'` (in quotes: a bare `b` is the bias array above).

# %%
### BEGIN SOLUTION
answer_col2im_overlap = "b"
### END SOLUTION
checks.check_answer("03.col2im_overlap", answer_col2im_overlap)

# %% [markdown]
# ## 6. Max pooling
# Each window's output is its maximum, so only that input influenced it: the window's `dout` goes
# to its argmax (the first one on ties, as `argmax` picks), accumulated with `+=` because
# overlapping windows can share a maximum.
#
# ### Exercise 5

# %%
def max_pool_backward(dout, x, k, stride):
    """x: (N, C, H, W), no padding; dout: (N, C, Ho, Wo) -> dx: (N, C, H, W)."""
    ### BEGIN SOLUTION
    n, c, hh, ww = x.shape
    ho, wo = (hh - k) // stride + 1, (ww - k) // stride + 1
    windows = np.stack([x[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
                        for i in range(k) for j in range(k)])
    winner = windows.argmax(axis=0)
    dx = np.zeros_like(x)
    for i in range(k):
        for j in range(k):
            dx[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] += \
                dout * (winner == i * k + j)
    return dx
    ### END SOLUTION


checks.check_max_pool_backward(max_pool_backward)

# %% [markdown]
# ## 7. A backward to derive: average pooling
# Average pooling outputs the mean of each $k \times k$ window (stride `stride`, no padding), as
# `avg_pool` below computes. Work out which inputs each output depends on, and how strongly, then
# write the backward. Mind windows that overlap.
#
# ### Exercise 6: average pooling's backward

# %%
def avg_pool(x, k, stride):
    """x: (N, C, H, W) -> the mean of each k x k window."""
    ho, wo = (x.shape[2] - k) // stride + 1, (x.shape[3] - k) // stride + 1
    return sum(x[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
               for i in range(k) for j in range(k)) / (k * k)


def avg_pool_backward(dout, x, k, stride):
    """dout: (N, C, Ho, Wo) -> dx: (N, C, H, W)."""
    ### BEGIN SOLUTION
    ho, wo = dout.shape[2], dout.shape[3]
    dx = np.zeros_like(x)
    for i in range(k):
        for j in range(k):
            dx[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] += dout / (k * k)
    return dx
    ### END SOLUTION


checks.check_avg_pool_backward(avg_pool, avg_pool_backward)

# %% [markdown]
# ## Summary
# - A parameter shared across samples or pixels (bias, PReLU slope, conv kernel) sums its gradient over them.
# - Convolution = im2col + one GEMM; its input gradient is col2im, the adjoint, which accumulates.
# - `=` for `+=` in col2im or pooling is invisible when stride ≥ kernel: test overlapping windows and padding.
#
# ## Open exercises
# 1. Implement average pooling on top of your im2col (Deep Learning from Scratch's trick) and its backward with col2im.
# 2. `cols` has $C k_h k_w N H_o W_o$ entries. How large is it for SphereFace-20's first stage at batch 256 (3×112×96 input, 3×3, stride 2)?
# 3. Verify the adjoint identity $\langle \text{im2col}(x), c\rangle = \langle x, \text{col2im}(c)\rangle$ numerically for random $x$, $c$.
