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
# # Tutorial 4: the cosine layer
#
# **Learning goals.** After this tutorial you can
# - derive the backward pass of L2 normalisation $y = v/\lVert v\rVert$;
# - explain why its gradient has no radial part, and what that means for training;
# - write the exact gradient of the cosine layer for the features **and** the class weights;
# - say what the authors' Caffe layer does instead, and why amnp does not.
#
# Derivation: `docs/derivations.md`, [The cosine layer](../docs/derivations.md#cosine-layer).

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

rng = np.random.default_rng(4)

# %% [markdown]
# ## 1. L2 normalisation
# For one row, $y = v/\lVert v\rVert$ has Jacobian
# $\partial y/\partial v = (I - y y^\top)/\lVert v\rVert$, which is symmetric, so
#
# $$\frac{\partial L}{\partial v} = \frac{g - y\,(y\cdot g)}{\lVert v\rVert}, \qquad g = \frac{\partial L}{\partial y}.$$
#
# $I - yy^\top$ projects onto the plane orthogonal to $y$: the **radial** component of $g$ is
# removed. The reason: $y$ does not change when $v$ is scaled, so no loss computed from $y$ can
# care about the length of $v$.
#
# ### Exercise 1
# Row-wise, for v: (N, D). (amnp adds a tiny ε inside the square root; you may ignore it.)

# %%
def l2_normalize_backward(dy, v):
    """dy, v: (N, D) -> dv: (N, D)."""
    ### BEGIN SOLUTION
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    y = v / norm
    return (dy - y * (y * dy).sum(axis=1, keepdims=True)) / norm
    ### END SOLUTION


checks.check_l2_normalize_backward(l2_normalize_backward)

# %% [markdown]
# **Predict first.** What is $\langle v, \partial L/\partial v\rangle$ for each row?

# %%
v = rng.standard_normal((3, 4))
dv = l2_normalize_backward(rng.standard_normal((3, 4)), v)
print("row-wise <v, dL/dv>:", np.round((v * dv).sum(axis=1), 14))

# %% [markdown]
# **Inline question 1.** So, in words: a gradient step on $v$ moves it along the sphere of its
# current radius (to first order). What is the number you just saw, exactly? (a number, within 1e-9)

# %%
### BEGIN SOLUTION
answer_radial = 0.0
### END SOLUTION
checks.check_answer("04.radial", answer_radial)

# %% [markdown]
# A consequence worth knowing: since the gradient is orthogonal to $v$, a plain gradient step
# $v - \eta\,\nabla$ makes $\lVert v\rVert$ **grow** (Pythagoras), and a longer $v$ gets a smaller
# gradient ($1/\lVert v\rVert$): normalised layers slow themselves down. Weight decay counteracts it.

# %%
v = rng.standard_normal(8)
norms = [np.linalg.norm(v)]
for _ in range(5):
    g = rng.standard_normal(8)
    v = v - 0.5 * l2_normalize_backward(g[None], v[None])[0]
    norms.append(np.linalg.norm(v))
print("norm of v over 5 gradient steps:", np.round(norms, 3))

# %% [markdown]
# ## 2. The cosine layer
# $c_{nj} = \hat x_n \cdot \hat w_j$ with $\hat x = x/\lVert x\rVert$, $\hat w_j = w_j/\lVert w_j\rVert$.
# With $G = \partial L/\partial c$ (N×C): $\partial L/\partial\hat X = G\hat W$ and
# $\partial L/\partial\hat W = G^\top\hat X$, then each goes back through its own normalisation,
# features row by row and **each weight row** by its own norm.
#
# ### Exercise 2

# %%
def cosine_backward(dout, x, w):
    """dout: (N, C), x: (N, D), w: (C, D) -> (dx, dw)."""
    ### BEGIN SOLUTION
    x_hat = x / np.linalg.norm(x, axis=1, keepdims=True)
    w_hat = w / np.linalg.norm(w, axis=1, keepdims=True)
    return l2_normalize_backward(dout @ w_hat, x), l2_normalize_backward(dout.T @ x_hat, w)
    ### END SOLUTION


checks.check_cosine_backward(cosine_backward)

# %%
x, w = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
dout = rng.standard_normal((4, 5))
dx, dw = cosine_backward(dout, x, w)
forward = lambda: F.cosine_forward(x, w)[0]
print(f"dx vs central differences: {rel_error(dx, numerical_gradient(forward, x, dout)):.1e}")
print(f"dw vs central differences: {rel_error(dw, numerical_gradient(forward, w, dout)):.1e}")

# %% [markdown]
# ## 3. What the Caffe reference does instead
# The authors' layer renormalises $W$ in place at every forward and hands the optimiser
# $\partial L/\partial\hat W$, the gradient with respect to the *normalised* weights. That is not
# the gradient of anything the optimiser updates: it has a radial part and ignores $1/\lVert w_j\rVert$.

# %%
x_hat = x / np.linalg.norm(x, axis=1, keepdims=True)
w_hat = w / np.linalg.norm(w, axis=1, keepdims=True)
caffe = dout.T @ x_hat
radial = np.abs((caffe * w_hat).sum(axis=1)) / np.linalg.norm(caffe, axis=1)
print("share of each row's Caffe gradient that is radial (|cos| with w_j):", np.round(radial, 3))
print(f"relative error of the Caffe gradient against the true dL/dW: {rel_error(caffe, dw):.2f}")

# %% [markdown]
# ## 4. A backward to derive: the ε-norm
# amnp normalises with $y = v/\sqrt{\lVert v\rVert^2 + \varepsilon}$, which stays finite at $v = 0$. Then $y$
# is no longer a unit vector. Derive $\partial L/\partial v$ for one row, with
# $r = \sqrt{\lVert v\rVert^2 + \varepsilon}$, and write it for all rows; then see whether exercise 1's
# formula survives, and with which length. The check uses a large ε, where the difference shows.
#
# ### Exercise 3: the backward of the ε-norm

# %%
def eps_normalize(v, eps):
    """Rows of v divided by sqrt(||v||^2 + eps)."""
    return v / np.sqrt((v * v).sum(axis=1, keepdims=True) + eps)


def eps_normalize_backward(dy, v, eps):
    """dy, v: (N, D) -> dv: (N, D)."""
    ### BEGIN SOLUTION
    r = np.sqrt((v * v).sum(axis=1, keepdims=True) + eps)
    return dy / r - v * (v * dy).sum(axis=1, keepdims=True) / r ** 3
    ### END SOLUTION


checks.check_eps_normalize_backward(eps_normalize, eps_normalize_backward)

# %% [markdown]
# ## Summary
# - $\partial(v/\lVert v\rVert)/\partial v$ projects out the radial part and divides by $\lVert v\rVert$.
# - The cosine layer's gradient for $W$ goes through each row's normalisation; returning $\partial L/\partial\hat W$ is a different (Caffe) update rule.
# - Normalised parameters grow under plain gradient steps, and their effective learning rate shrinks as $1/\lVert w\rVert^2$.
#
# ## Open exercises
# 1. Exercise 1's formula with $\lVert v\rVert$ where exercise 3 has $r$: for ε = 1e-12, below which $\lVert v\rVert$ is it off by more than 1e-5 (relative)?
# 2. Without feature normalisation (the paper's "w/o FN"), $z = \lVert x\rVert\cos\theta$. Derive $\partial L/\partial x$ and check it with `numerical_gradient`.
# 3. Show that with weight decay λ and learning rate η, $\lVert w\rVert$ settles where growth and decay balance. Estimate it.
