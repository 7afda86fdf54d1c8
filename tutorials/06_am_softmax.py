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
# # Tutorial 6: AM-Softmax forward and backward
#
# **Learning goals.** After this tutorial you can
# - write the AM-Softmax loss on cosines, numerically stable, with the optional conditional margin;
# - derive and write its gradient $\partial L/\partial c = s(p - \text{onehot}(y))/N$;
# - explain why a gradient check cannot catch a margin subtracted from **every** column, and write the test that does.
#
# Derivations: `docs/derivations.md`, [Softmax cross-entropy](../docs/derivations.md#softmax-ce) and
# [AM-Softmax](../docs/derivations.md#am-softmax).

# %%
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
QUICK = os.environ.get("AMNP_TUTORIAL_QUICK", "0") == "1"
OUT = os.environ.get("AMNP_TUTORIAL_OUT", "out")
os.makedirs(OUT, exist_ok=True)

import math

import numpy as np

import checks
from amnp.gradcheck import numerical_gradient

rng = np.random.default_rng(6)

# %% [markdown]
# ## 1. The loss
# $z_{nj} = s\,(c_{nj} - m[j = y_n])$ and $L = -\frac1N\sum_n \log\mathrm{softmax}(z_n)_{y_n}$.
# Only the target column moves. Compute log-softmax as $z - \max z - \log\sum e^{z - \max z}$: with
# $s = 30$ probabilities underflow, and $\log$ of an underflowed 0 is $-\infty$.
# With `conditional=True` (the authors' Caffe rule) subtract $m$ only in rows where $c_{ny} > m$.
# Leave `cos` as it is: the caller (a gradient check, say) still needs it.
#
# ### Exercise 1

# %%
def am_softmax_forward(cos, labels, m, s, conditional=False):
    """cos: (N, C), labels: (N,) -> the mean loss, a float."""
    ### BEGIN SOLUTION
    rows = np.arange(cos.shape[0])
    z = s * cos.astype(np.float64)
    target = cos[rows, labels]
    z[rows, labels] -= s * m * (target > m) if conditional else s * m
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[rows, labels].mean())
    ### END SOLUTION


checks.check_am_softmax_forward(am_softmax_forward)

# %% [markdown]
# ## 2. The gradient
# For softmax cross-entropy $\partial L/\partial z_{nj} = (p_{nj} - [j = y_n])/N$. Since
# $z = s(c - m\,\text{onehot})$ and $\psi'(c) = 1$: $\partial L/\partial c = s\,(p - \text{onehot}(y))/N$,
# with $p$ the softmax **of the margin logits**. The conditional margin has the same formula (its
# $\psi$ has slope 1 on both sides of the jump).
#
# ### Exercise 2

# %%
def am_softmax_backward(cos, labels, m, s, conditional=False):
    """-> dL/dcos, (N, C)."""
    ### BEGIN SOLUTION
    n = cos.shape[0]
    rows = np.arange(n)
    z = s * cos.astype(np.float64)
    target = cos[rows, labels]
    z[rows, labels] -= s * m * (target > m) if conditional else s * m
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[rows, labels] -= 1
    return s * p / n
    ### END SOLUTION


checks.check_am_softmax_backward(am_softmax_backward)

# %%
cos = rng.uniform(-0.8, 0.8, (5, 7))
labels = rng.integers(0, 7, 5)
numeric = numerical_gradient(lambda: np.float64(am_softmax_forward(cos, labels, 0.35, 30.0)), cos, np.float64(1.0))
analytic = am_softmax_backward(cos, labels, 0.35, 30.0)
print(f"your backward against central differences of your forward: max abs error "
      f"{np.abs(analytic - numeric).max():.1e}")

# %% [markdown]
# ## 3. The bug a gradient check cannot see
# A common re-implementation subtracts the margin from **every** column: `z = s * (cos - m)`.
#
# **Predict first.** Will its backward (written consistently with that forward) pass a gradient check?

# %%
def every_column_forward(cos, labels, m, s, conditional=False):
    z = s * (cos - m)                                   # the bug
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def every_column_backward(cos, labels, m, s, conditional=False):
    z = s * (cos - m)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return s * p / len(labels)


numeric = numerical_gradient(lambda: np.float64(every_column_forward(cos, labels, 0.35, 30.0)), cos, np.float64(1.0))
print(f"buggy loss: its backward against central differences of its forward: max abs error "
      f"{np.abs(every_column_backward(cos, labels, 0.35, 30.0) - numeric).max():.1e}")
print(f"buggy loss {every_column_forward(cos, labels, 0.35, 30.0):.4f}, margin-free loss "
      f"{am_softmax_forward(cos, labels, 0.0, 30.0):.4f}, AM-Softmax {am_softmax_forward(cos, labels, 0.35, 30.0):.4f}")

# %% [markdown]
# **Inline question 1.** Why does the gradient check pass?
# (a) h is too large to see the margin (b) the margin is too small at s = 30
# (c) softmax is shift invariant: the buggy forward is exactly the margin-free loss, and its
# backward is that loss's exact gradient (d) central differences cannot see constants
#
# Answer with the letter as a string, e.g. `'b'`.

# %%
### BEGIN SOLUTION
answer_margin_every_column = "c"
### END SOLUTION
checks.check_answer("06.margin_every_column", answer_margin_every_column)

# %% [markdown]
# A gradient check tests that backward is the derivative of forward, not that forward is the right
# function. The test that catches this bug checks the **value**: at cosines exactly 0, AM-Softmax
# is $\ln(C - 1 + e^{-sm}) + sm$, while the every-column version gives $\ln C$.

# %%
for name, fn in (("yours", am_softmax_forward), ("every column", every_column_forward)):
    got, expected = checks.margin_only_on_target_test(fn)
    print(f"{name:>13}: loss at cos = 0 is {got:.4f}; expected {expected:.4f} -> "
          + ("PASS" if math.isclose(got, expected, rel_tol=1e-9) else "FAIL (margin not on the target only)"))

# %% [markdown]
# ## 4. The conditional margin's jump
# With `conditional=True` the loss jumps where $c_y$ crosses $m$: a gradient check straddling
# $c_y = m$ fails by design (tutorial 2), so checks stay away from it.

# %%
row = np.zeros((1, 4))
for target in (0.35 - 1e-6, 0.35 + 1e-6):
    row[0, 0] = target
    print(f"c_y = {target:.6f}: conditional loss {am_softmax_forward(row, np.array([0]), 0.35, 30.0, True):.4f}")

# %% [markdown]
# ## 5. A backward to derive: without feature normalisation
# The paper's "w/o FN" variant does not normalise the features: the feature norm takes the place
# of the scale, $z_{nj} = r_n\,(c_{nj} - m[j = y_n])$ with $r_n = \lVert f_n\rVert$, and $L$ is the
# mean cross-entropy as before (`am_softmax_wofn` below). Derive $\partial L/\partial c$ and
# $\partial L/\partial r$ (one number per row).
#
# ### Exercise 3: the gradient without feature normalisation

# %%
def am_softmax_wofn(cos, norms, labels, m):
    """cos: (N, C), norms: (N,) -> the mean loss of the logits norms * (cos - m onehot)."""
    rows = np.arange(len(labels))
    t = cos.astype(np.float64).copy()
    t[rows, labels] -= m
    z = norms[:, None] * t
    z -= z.max(axis=1, keepdims=True)
    return float(-(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))[rows, labels].mean())


def am_softmax_wofn_backward(cos, norms, labels, m):
    """-> (dL/dcos (N, C), dL/dnorms (N,))."""
    ### BEGIN SOLUTION
    n, rows = len(labels), np.arange(len(labels))
    t = cos.astype(np.float64).copy()
    t[rows, labels] -= m
    z = norms[:, None] * t
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[rows, labels] -= 1
    p /= n
    return norms[:, None] * p, (p * t).sum(axis=1)
    ### END SOLUTION


checks.check_am_softmax_wofn_backward(am_softmax_wofn, am_softmax_wofn_backward)

# %% [markdown]
# ## Summary
# - AM-Softmax is softmax cross-entropy on $s(c - m\,\text{onehot}(y))$; its gradient is $s(p - \text{onehot})/N$, no arccos.
# - Stable: subtract the row max, compute log-softmax.
# - Gradient checks verify consistency, not correctness of the forward: pin the forward's value with a known case (the loss at cos = 0).
#
# ## Open exercises
# 1. Exercise 3 stops at $\partial L/\partial c$ and $\partial L/\partial r$. Combine them with the cosine layer of tutorial 4 into $\partial L/\partial f$, and check it with `numerical_gradient`.
# 2. With $m = 0.35$, $s = 30$ and $C = 10516$, what is the loss at initialisation? What does a loss stuck at 87.34 mean?
# 3. Write a test that catches "margin added to every column except the target" (a sign bug). Does the cos = 0 test catch it?
