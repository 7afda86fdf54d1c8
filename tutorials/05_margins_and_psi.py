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
# # Tutorial 5: margin losses and ψ curves
#
# **Learning goals.** After this tutorial you can
# - write each member of the margin family as one function $\psi(c)$ of the target cosine $c = \cos\theta_y$, with its derivative $d\psi/dc$;
# - compute A-Softmax's $\cos(m\theta)$ with a Chebyshev polynomial and its sector index $k$ from sign tests, without arccos;
# - explain ArcFace's fallback, and where its derivative blows up;
# - draw the paper's target-logit figure from your own functions.
#
# The loss is the same for every member (tutorial 6): the target column's cosine is replaced by
# $\psi(c)$ and everything is scaled. So the backward pass only needs $d\psi/dc$.
# Derivations: `docs/derivations.md`, [The margin family](../docs/derivations.md#margins).
# amnp's versions live in `amnp.functional.margins`; the checks compare yours with them.

# %%
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
QUICK = os.environ.get("AMNP_TUTORIAL_QUICK", "0") == "1"  # unused here: the full run takes seconds,
# and its printed numbers are the ones tutorials/README.md quotes
OUT = os.environ.get("AMNP_TUTORIAL_OUT", "out")
os.makedirs(OUT, exist_ok=True)

import math

import numpy as np
from matplotlib.figure import Figure

import checks

# %% [markdown]
# ## 1. AM-Softmax (CosFace): $\psi(c) = c - m$
# $d\psi/dc = 1$: no arccos, no annealing. The authors' Caffe layer subtracts $m$ only where
# $c > m$ (`conditional=True`), an implicit warm-up that makes $\psi$ jump at $c = m$.
#
# ### Exercise 1

# %%
def additive_margin(c, m, conditional=False):
    """-> (psi, dpsi) for an array c of target cosines."""
    ### BEGIN SOLUTION
    shift = m * (c > m) if conditional else m
    return c - shift, np.ones_like(c)
    ### END SOLUTION


checks.check_additive_margin(additive_margin)

# %% [markdown]
# ## 2. ArcFace: $\psi = \cos(\theta + m)$
# With $\sin\theta = \sqrt{1 - c^2}$: $\psi = c\cos m - \sin\theta\sin m$ and
# $d\psi/dc = \cos m + c\sin m/\sin\theta$, which diverges as $|c| \to 1$.
# Once $\theta + m > \pi$, $\cos(\theta + m)$ turns back **up**: moving away from the class would
# raise the target logit. insightface falls back to $c - m\sin m$ there ($d\psi/dc = 1$).
#
# **Inline question 1.** Below which target cosine does the fallback apply, for $m = 0.5$?
# (a number, to 3 decimals)

# %%
### BEGIN SOLUTION
answer_arcface_fallback_c = math.cos(math.pi - 0.5)
### END SOLUTION
checks.check_answer("05.arcface_fallback_c", answer_arcface_fallback_c)

# %% [markdown]
# ### Exercise 2

# %%
def arcface_margin(c, m):
    """-> (psi, dpsi); the fallback c - m sin m where c <= cos(pi - m)."""
    ### BEGIN SOLUTION
    sin_theta = np.sqrt(np.maximum(1 - c * c, 0))
    angular = c > math.cos(math.pi - m)
    psi = np.where(angular, c * math.cos(m) - sin_theta * math.sin(m), c - m * math.sin(m))
    slope = np.where(angular, math.cos(m) + c * math.sin(m) / np.maximum(sin_theta, 1e-4), 1.0)
    return psi, slope
    ### END SOLUTION


checks.check_arcface_margin(arcface_margin)

# %% [markdown]
# ## 3. A-Softmax (SphereFace): $\psi(\theta) = (-1)^k\cos(m\theta) - 2k$ on $\theta \in [k\pi/m, (k+1)\pi/m]$
# $\cos(m\theta) = T_m(c)$, the Chebyshev polynomial: $T_0 = 1$, $T_1 = c$,
# $T_{j+1} = 2cT_j - T_{j-1}$, and for the derivative $T'_{j+1} = 2T_j + 2cT'_j - T'_{j-1}$.
# The sector index $k = \lfloor m\theta/\pi\rfloor$ counts the boundaries $\cos(j\pi/m)$,
# $j = 1..m-1$, that $c$ lies below: sign tests, no arccos. Then $d\psi/dc = (-1)^k T_m'(c)$.
# The $-2k$ makes $\psi$ continuous and monotone across sectors.
#
# ### Exercise 3 (integer m ≥ 1)

# %%
def sphereface_margin(c, m):
    """-> (psi, dpsi)."""
    ### BEGIN SOLUTION
    t_prev, t = np.ones_like(c), c
    d_prev, d = np.zeros_like(c), np.ones_like(c)
    for _ in range(m - 1):
        t_prev, t, d_prev, d = t, 2 * c * t - t_prev, d, 2 * t + 2 * c * d - d_prev
    k = sum((c < math.cos(j * math.pi / m)).astype(int) for j in range(1, m))
    sign = np.where(k % 2 == 0, 1.0, -1.0)
    return sign * t - 2 * k, sign * d
    ### END SOLUTION


checks.check_sphereface_margin(sphereface_margin)

# %% [markdown]
# ## 4. The combined margin (insightface): $\psi = \cos(m_1\theta + m_2) - m_3$
# $d\psi/dc = m_1\sin(m_1\theta + m_2)/\sin\theta$. $(1, 0, 0)$ is NormFace, $(1, 0.5, 0)$ ArcFace
# (without its fallback), $(1, 0, 0.35)$ AM-Softmax.
#
# ### Exercise 4

# %%
def combined_margin(c, m1, m2, m3):
    """-> (psi, dpsi)."""
    ### BEGIN SOLUTION
    theta = np.arccos(np.clip(c, -1, 1))
    angle = m1 * theta + m2
    return np.cos(angle) - m3, m1 * np.sin(angle) / np.maximum(np.sin(theta), 1e-4)
    ### END SOLUTION


checks.check_combined_margin(combined_margin)

# %% [markdown]
# ## 5. The target-logit figure
# **Predict first.** At $\theta = 90°$, order the target logits of AM-Softmax ($m = 0.35$), ArcFace
# ($m = 0.5$) and A-Softmax ($m = 4$) from largest to smallest.

# %%
theta = np.linspace(0, math.pi, 721)
c = np.cos(theta)
curves = {
    "softmax: cos θ": c,
    "A-Softmax m=4": sphereface_margin(c, 4)[0],
    "AM-Softmax m=0.35": additive_margin(c, 0.35)[0],
    "ArcFace m=0.5": arcface_margin(c, 0.5)[0],
    "combined (1, 0.3, 0.2)": combined_margin(c, 1.0, 0.3, 0.2)[0],
}
print(f"{'theta (deg)':<24}" + "".join(f"{d:>8d}" for d in range(0, 181, 30)))
for name, psi in curves.items():
    print(f"{name:<24}" + "".join(f"{psi[4 * d]:8.3f}" for d in range(0, 181, 30)))

fig = Figure(figsize=(6.5, 4.5))
ax = fig.subplots()
for name, psi in curves.items():
    ax.plot(np.degrees(theta), psi, label=name)
ax.axhline(0, color="lightgray", linewidth=0.8)
ax.set_xlabel("angle θ between feature and target weight (degrees)")
ax.set_ylabel("target logit ψ (before the scale)")
ax.set_title("target logits of the margin family")
ax.set_ylim(-7.2, 1.1)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "05_target_logits.png"), dpi=120)
checks.show(os.path.join(OUT, "05_target_logits.png"))
try:
    from amnp.figures import plot_target_logits
except ImportError:
    print("amnp.figures.plot_target_logits is not in this version of amnp: only our figure is drawn")
else:
    plot_target_logits(os.path.join(OUT, "05_target_logits_amnp.png"))
    print("amnp's own figure: 05_target_logits_amnp.png")

# %% [markdown]
# A-Softmax's curve is far below the others for most angles (that is why it needs annealing with
# $\lambda$); AM-Softmax shifts the whole curve down by $m$; ArcFace's penalty is largest near 90°
# and vanishes near 0°, and with the fallback it stays monotone up to 180°; the combined margin has no fallback and turns back up near 180° (see the table).
#
# ArcFace's curve jumps down near 151°: that is $\theta = \pi - m$ with $m = 0.5$ (151.4°), where the
# fallback takes over. Just before it $\psi = \cos(\theta + m) \to \cos\pi = -1$; from there on
# $\psi = c - m\sin m = -\cos m - m\sin m = -1.117$. insightface accepts the jump: the fallback only
# has to keep $\psi$ falling, and a jump down still rewards moving the feature towards its class.
#
# ## Summary
# - Every margin loss is one ψ(c) and its derivative; the rest of the loss is shared.
# - A-Softmax: Chebyshev polynomial and sign tests, no arccos; the −2k keeps ψ monotone.
# - ArcFace: exact derivative diverges as |c| → 1; the fallback keeps ψ monotone past θ = π − m.
#
# ## Open exercises
# 1. Plot $d\psi/dc$ for each member. Which ones are bounded?
# 2. Add SphereFace's annealing: $(\psi + \lambda c)/(1 + \lambda)$. Draw it for $\lambda \in \{1000, 5, 0\}$.
# 3. ArcFace's "easy margin" applies the margin only where $c > 0$. Write it and draw it. Is it monotone?
