"""Naive loop implementations, written independently of amnp for comparison.

They follow the textbook definitions one output element at a time: slow, but
hard to get wrong, and sharing no code with the vectorised versions.
"""
import numpy as np


def conv2d_naive(x, w, b, stride, padding):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, f, ho, wo))
    for i in range(n):
        for k in range(f):
            for y in range(ho):
                for z in range(wo):
                    window = xp[i, :, y * sh:y * sh + kh, z * sw:z * sw + kw]
                    out[i, k, y, z] = np.sum(window * w[k]) + (0.0 if b is None else b[k])
    return out


def conv2d_backward_naive(dout, x, w, stride, padding):
    """Gradients by scattering each output's upstream gradient over its window."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(n):
        for k in range(f):
            for y in range(dout.shape[2]):
                for z in range(dout.shape[3]):
                    g = dout[i, k, y, z]
                    dxp[i, :, y * sh:y * sh + kh, z * sw:z * sw + kw] += g * w[k]
                    dw[k] += g * xp[i, :, y * sh:y * sh + kh, z * sw:z * sw + kw]
    dx = dxp[:, :, ph:ph + h, pw:pw + wd]
    return dx, dw, dout.sum(axis=(0, 2, 3))


def pool2d_naive(x, kernel, stride, padding, mode):
    """Max pooling over −inf padding or average pooling counting zero padding; also returns
    dx for dout = ones-like weights given as the second output's function."""
    n, c, h, wd = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    fill = -np.inf if mode == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, c, ho, wo))
    for i in range(n):
        for k in range(c):
            for y in range(ho):
                for z in range(wo):
                    window = xp[i, k, y * sh:y * sh + kh, z * sw:z * sw + kw]
                    out[i, k, y, z] = window.max() if mode == "max" else window.mean()
    return out


def pool2d_backward_naive(dout, x, kernel, stride, padding, mode):
    n, c, h, wd = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    fill = -np.inf if mode == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    dxp = np.zeros_like(xp)
    for i in range(n):
        for k in range(c):
            for y in range(dout.shape[2]):
                for z in range(dout.shape[3]):
                    window = xp[i, k, y * sh:y * sh + kh, z * sw:z * sw + kw]
                    if mode == "max":
                        a, b = np.unravel_index(np.argmax(window), window.shape)  # first maximum
                        dxp[i, k, y * sh + a, z * sw + b] += dout[i, k, y, z]
                    else:
                        dxp[i, k, y * sh:y * sh + kh, z * sw:z * sw + kw] += dout[i, k, y, z] / (kh * kw)
    return dxp[:, :, ph:ph + h, pw:pw + wd]


def cosine_naive(x, w, normalize_features=True):
    """cos θ from its definition, one pair at a time."""
    out = np.zeros((x.shape[0], w.shape[0]))
    for i in range(x.shape[0]):
        for j in range(w.shape[0]):
            dot = float(np.dot(x[i], w[j]))
            scale = np.linalg.norm(w[j]) * (np.linalg.norm(x[i]) if normalize_features else 1.0)
            out[i, j] = dot / scale
    return out


def am_softmax_naive(cos, labels, m, s):
    """Loss and dL/dcos, sample by sample, from the paper's formula."""
    n, c = cos.shape
    loss, grad = 0.0, np.zeros_like(cos)
    for i in range(n):
        z = s * cos[i].copy()
        z[labels[i]] = s * (cos[i, labels[i]] - m)
        z_max = z.max()
        log_denominator = z_max + np.log(np.sum(np.exp(z - z_max)))
        loss -= z[labels[i]] - log_denominator
        p = np.exp(z - log_denominator)
        p[labels[i]] -= 1.0
        grad[i] = s * p / n
    return loss / n, grad
