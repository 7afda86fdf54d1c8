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
# # Tutorial 1: backward is a vector-Jacobian product
#
# **Learning goals.** After this tutorial you can
# - say what a layer's `backward(dout)` computes, and why it never forms a Jacobian;
# - estimate a gradient by central differences from the forward pass alone, restoring the input;
# - measure the disagreement of two gradients with the relative error, and know when it misleads;
# - check any backward function against its forward function.
#
# The derivation behind this tutorial is in `docs/derivations.md`, section
# [Vector-Jacobian products](../docs/derivations.md#vjp).
#
# Each exercise sits between `### BEGIN SOLUTION` and `### END SOLUTION` in the teacher's copy;
# your copy has `raise NotImplementedError(...)` there. The cell after each exercise checks it.

# %%
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # tiny matrices: one BLAS thread is the fastest
QUICK = os.environ.get("AMNP_TUTORIAL_QUICK", "0") == "1"  # the tests set it: smaller sizes
OUT = os.environ.get("AMNP_TUTORIAL_OUT", "out")            # where figures go
os.makedirs(OUT, exist_ok=True)

import numpy as np

import checks
from amnp import functional as F

rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. What backward computes
#
# A layer maps $x \in \mathbb{R}^n$ to $y = f(x) \in \mathbb{R}^k$. The loss $L$ comes later,
# and the layer receives $g = \partial L/\partial y$ (called `dout`). By the chain rule
#
# $$\frac{\partial L}{\partial x} = J^\top g, \qquad J = \frac{\partial y}{\partial x} \in \mathbb{R}^{k\times n}.$$
#
# That is a **vector-Jacobian product**. It is also the gradient of one scalar,
# $\varphi(x) = \langle g, f(x)\rangle$, with $g$ held fixed. So a backward pass can be checked
# by differentiating that scalar numerically:
#
# $$\frac{\partial \varphi}{\partial x_i} \approx \frac{\varphi(x + h e_i) - \varphi(x - h e_i)}{2h}.$$
#
# The central difference has error $O(h^2)$; the one-sided $(\varphi(x+he_i) - \varphi(x))/h$ only $O(h)$.
#
# ### Exercise 1: central differences
# Write `numerical_gradient(f, x, h)` for a scalar function `f(x)`. Perturb **one entry at a
# time, in place**, and put every entry back exactly as it was, even if `f` raises.

# %%
def numerical_gradient(f, x, h=1e-5):
    """Central-difference gradient of the scalar f(x) with respect to the float64 array x."""
    ### BEGIN SOLUTION
    grad = np.zeros_like(x, dtype=np.float64)
    for i in range(x.size):
        original = x.flat[i]
        try:
            x.flat[i] = original + h
            plus = f(x)
            x.flat[i] = original - h
            minus = f(x)
        finally:
            x.flat[i] = original
        grad.flat[i] = (plus - minus) / (2 * h)
    return grad
    ### END SOLUTION


checks.check_numerical_gradient(numerical_gradient)

# %% [markdown]
# ### Exercise 2: the relative error
# Gradients have no natural scale, so compare them by
# $\max_i |a_i - b_i| / \max(|a_i| + |b_i|, 10^{-8})$ (cs231n's rule). The floor keeps
# entries that are both 0 from giving 0/0.

# %%
def rel_error(a, b):
    """Worst elementwise relative error between two arrays."""
    ### BEGIN SOLUTION
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8)))
    ### END SOLUTION


checks.check_rel_error(rel_error)

# %% [markdown]
# ### Exercise 3: the numerical vector-Jacobian product
# Now `f` returns an array. Write `numerical_vjp(f, x, dout, h)`: the gradient of
# $\langle$`dout`$, f(x)\rangle$, using your `numerical_gradient`.

# %%
def numerical_vjp(f, x, dout, h=1e-5):
    """d<dout, f(x)>/dx by central differences; x is restored."""
    ### BEGIN SOLUTION
    return numerical_gradient(lambda z: float(np.sum(dout * f(z))), x, h)
    ### END SOLUTION


checks.check_numerical_vjp(numerical_vjp)

# %% [markdown]
# ## 2. Checking a real backward pass
#
# amnp's `linear_forward(x, w, b)` computes $x w^\top + b$ and `linear_backward(dout, cache)`
# returns `(dx, dw, db)`. Check all three with your `numerical_vjp`.

# %%
n, d_in, d_out = (3, 4, 2) if QUICK else (8, 16, 5)
x = rng.standard_normal((n, d_in))
w = rng.standard_normal((d_out, d_in))
b = rng.standard_normal(d_out)
out, cache = F.linear_forward(x, w, b)
dout = rng.standard_normal(out.shape)
dx, dw, db = F.linear_backward(dout, cache)
for name, analytic, wrt in (("dx", dx, x), ("dw", dw, w), ("db", db, b)):
    numeric = numerical_vjp(lambda _: F.linear_forward(x, w, b)[0], wrt, dout)
    print(f"{name}: relative error {rel_error(analytic, numeric):.1e}")

# %% [markdown]
# **Predict first.** Before running the next cell: if `dout` is doubled, what happens to `dx`?
# Write down your prediction, then run it.

# %%
dx2, _, _ = F.linear_backward(2 * dout, cache)
print("dx(2 dout) / dx(dout) =", np.round(dx2 / dx, 12).ravel()[:4], "...")

# %% [markdown]
# **Inline question 1.** By what factor did `dx` change? (a number, within 1e-9)

# %%
### BEGIN SOLUTION
answer_double_dout = 2
### END SOLUTION
checks.check_answer("01.double_dout", answer_double_dout)

# %% [markdown]
# **Inline question 2.** How many calls of `f` does `numerical_vjp` make for an `x` with 12 entries?
# (a whole number)

# %%
### BEGIN SOLUTION
answer_forward_calls = 24
### END SOLUTION
checks.check_answer("01.forward_calls", answer_forward_calls)

# %% [markdown]
# ## 3. A backward of your own: tanh
# $y = \tanh(x)$ elementwise has $J = \mathrm{diag}(1 - y^2)$, so $J^\top g = g\,(1 - y^2)$: the
# Jacobian is never built, only its product with $g$.

# %%
x = rng.standard_normal((2, 5))
g = rng.standard_normal((2, 5))
analytic = g * (1 - np.tanh(x) ** 2)
numeric = numerical_vjp(np.tanh, x, g)
print(f"tanh backward vs central differences: relative error {rel_error(analytic, numeric):.1e}")
assert rel_error(analytic, numeric) < 1e-7

# %% [markdown]
# ## 4. A backward to derive: softmax
# $y = \mathrm{softmax}(x)$ row by row, $y_j = e^{x_j}/\sum_k e^{x_k}$. Unlike tanh, every output of a
# row depends on every input of that row, so $J$ is not diagonal. Derive $J^\top g$ for one row
# (write $\partial y_j/\partial x_i$ first, in terms of $y$), then write it for all rows at once,
# without forming $J$. The check compares your backward with central differences of `softmax`.
#
# ### Exercise 4: softmax's backward

# %%
def softmax(x):
    """Row-wise softmax of an (N, K) array."""
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def softmax_backward(dout, x):
    """dout, x: (N, K) -> dL/dx for y = softmax(x)."""
    ### BEGIN SOLUTION
    y = softmax(x)
    return y * (dout - (dout * y).sum(axis=1, keepdims=True))
    ### END SOLUTION


checks.check_softmax_backward(softmax, softmax_backward)

# %% [markdown]
# ## Summary
# - `backward(dout)` returns $J^\top$ `dout`, the gradient of $\langle$`dout`$, f(x)\rangle$; the Jacobian is never formed.
# - Central differences of that scalar give an independent estimate, at two forward calls per entry.
# - Perturb in place, restore always (`try/finally`): a check that changes its input corrupts the next one.
# - The relative error needs a floor and absolute values; its worst entry is the one to look at.
#
# ## Open exercises
# 1. Replace the central difference with the one-sided one and plot the error against $h$. Which slope do you see?
# 2. Write the fourth-order stencil $(-\varphi(x+2h) + 8\varphi(x+h) - 8\varphi(x-h) + \varphi(x-2h))/12h$. What does it cost, and what does it buy?
# 3. `numerical_vjp` costs $2n$ forward calls. How would you check a layer with $10^6$ weights? (Tutorial 2 answers this.)
