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
# # Tutorial 8: choosing s and m
#
# **Learning goals.** After this tutorial you can
# - derive the smallest scale $s$ at which a normalised softmax can reach a target probability, and check it numerically;
# - predict the loss at initialisation for any $C$, $s$, $m$ (a free bug detector);
# - explain margin warm-up (a ramp $m(t) = \min(m, \gamma t)$, or the conditional margin);
# - recognise what goes wrong with s = 30 on a small problem.
#
# Derivations: `docs/derivations.md`, [Choosing the scale](../docs/derivations.md#choosing-s) and
# [Softmax cross-entropy](../docs/derivations.md#softmax-ce).

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
from amnp import functional as F
from amnp.config import build_head
from amnp.heads import TrainingModel
from amnp.layers import Linear, PReLU, Sequential
from amnp.optim import SGD

# %% [markdown]
# ## 1. The smallest s for a target probability
# With normalised features and weights, every logit lies in $[-s, s]$, so the softmax cannot become
# confident unless $s$ is large enough (NormFace's bound). The best case that serves every class
# at once: the feature lies on its class weight (cosine 1) and the class weights form a regular
# simplex, so every other class is at cosine $-1/(C-1)$ (the lowest average possible for $C$ unit
# vectors; see the derivation). With the margin, the target logit is $s(1-m)$, so
#
# $$p_y = \frac{e^{s(1-m)}}{e^{s(1-m)} + (C-1)e^{-s/(C-1)}} .$$
#
# Setting $p_y = p$ and solving for $s$:
#
# $$s_{\min} = \frac{\ln\!\big((C-1)\,p/(1-p)\big)}{1 - m + 1/(C-1)} .$$
#
# ### Exercise 1

# %%
def smallest_scale(num_classes, m, p):
    """The smallest s at which p_y can reach p (target at cos 1, others on a simplex)."""
    ### BEGIN SOLUTION
    c = num_classes
    return math.log((c - 1) * p / (1 - p)) / (1 - m + 1 / (c - 1))
    ### END SOLUTION


checks.check_smallest_scale(smallest_scale)

# %% [markdown]
# Check the formula against the softmax itself: at $s_{\min}$ the probability is exactly $p$.

# %%
print(f"{'C':>6} {'m':>5} {'p':>6} {'s_min':>7}   p_y at s_min (softmax of the simplex logits)")
for c in (10, 100, 10516):
    for m in (0.0, 0.35):
        for p in (0.9, 0.99):
            s = smallest_scale(c, m, p)
            print(f"{c:>6} {m:>5.2f} {p:>6.2f} {s:7.2f}   {checks.target_probability(s, m, c):.6f}")

# %% [markdown]
# The paper's $s = 30$ with $m = 0.35$ leaves room for $p = 0.99$ on 10516 identities; $s = 10$
# would not. On 10 classes, $s \approx 9$ suffices for $p = 0.99$ with the margin, which is why the AM-Softmax author
# recommends $s = 10$ for MNIST-scale problems.
#
# ## 2. The loss at initialisation
# At initialisation the cosines are about 0. Then every logit is 0 except the target's, $-sm$, and
# $L = \ln(C - 1 + e^{-sm}) + sm$.
#
# **Inline question 1.** What is it for $C = 10$, $s = 30$, $m = 0.35$? (a number, 3 decimals)

# %%
### BEGIN SOLUTION
answer_loss_at_zero = math.log(9 + math.exp(-30 * 0.35)) + 30 * 0.35
### END SOLUTION
checks.check_answer("08.loss_at_zero", answer_loss_at_zero)
loss, _ = F.am_softmax_forward(np.zeros((4, 10)), np.arange(4), m=0.35, s=30.0)
print(f"amnp's AM-Softmax at cosines 0: {float(loss):.4f}")

# %% [markdown]
# ## 3. Margin warm-up
# A margin of $sm = 10.5$ logits against a network that separates nothing yet gives gradients that
# all point the same way and are as large as they can be. Two remedies:
# a linear ramp $m(t) = \min(m, \gamma t)$ (the authors' w/o-FN run uses $\gamma = 5\cdot10^{-5}$),
# or the conditional margin of the authors' Caffe layer (subtract $m$ only where $c_y > m$).
#
# ### Exercise 2

# %%
def margin_at(step, m, gamma):
    """The ramped margin at a training step."""
    ### BEGIN SOLUTION
    return min(m, gamma * step)
    ### END SOLUTION


checks.check_margin_ramp(margin_at)

# %% [markdown]
# ## 4. s = 30 on a small problem
# A tiny network (Linear → PReLU → Linear to a $d$-dimensional embedding, then the cosine layer) on
# 10 noisy Gaussian classes, trained with the same data, initialisation, batches and learning rate,
# with $m = 0.35$ and $s \in \{10, 30\}$, for $d = 8$ and $d = 2$. In 2-D the margin cannot be met
# at all: 10 classes on a circle are at best 36° apart and $1 - m = 0.65 < \cos 36° = 0.81$.
#
# **Predict first.** In which runs will the final loss stay far from 0? Where will the gradient
# $\partial L/\partial c$ still be large at the end?

# %%
C, DIM = 10, 20
STEPS = 150 if QUICK else 600
data_rng = np.random.default_rng(8)
centres = data_rng.standard_normal((C, DIM))


def draw(per_class):
    y = np.repeat(np.arange(C), per_class)
    return centres[y] + 1.2 * data_rng.standard_normal((y.size, DIM)), y


x_train, y_train = draw(40)
x_test, y_test = draw(40)


def run(s, dim, ramp=None):
    r = np.random.default_rng(80)
    net = Sequential(Linear(DIM, 32, dtype=np.float64, rng=r), PReLU(32, dtype=np.float64),
                     Linear(32, dim, dtype=np.float64, rng=r))
    head = build_head("am-softmax", dim, C, m=0.35, s=s, margin_ramp=ramp, dtype=np.float64, rng=r)
    opt = SGD(TrainingModel(net, head), momentum=0.9, weight_decay=5e-4)
    order = np.random.default_rng(81)
    for step in range(STEPS):
        idx = order.integers(0, len(y_train), 64)
        head.set_step(step)
        loss = head.forward(net.forward(x_train[idx]), y_train[idx])
        net.backward(head.backward())
        opt.step(0.05)
    # per-sample |dL/dc| on the last batch (the loss is a batch mean, so undo the 1/N)
    _, cache = F.am_softmax_forward(head.scores, y_train[idx], m=head.schedule()["m"], s=s)
    gradient = float(np.abs(F.am_softmax_backward(1.0, cache)).sum(axis=1).mean() * len(idx))
    scores = head.classifier.forward(net.forward(x_test))
    return float(np.mean(scores.argmax(axis=1) == y_test)), float(loss), gradient


print(f"{'run':<34} {'last loss':>10} {'per-sample |dL/dc|':>19} {'held-out acc':>13}")
for dim in (8, 2):
    for s, ramp in ((10.0, None), (30.0, None), (30.0, 0.35 / (STEPS / 3))):
        name = f"d = {dim}, s = {s:g}" + (", margin ramp" if ramp else "")
        acc, last, gradient = run(s, dim, ramp)
        print(f"{name:<34} {last:10.3f} {gradient:19.3f} {acc:13.3f}")

# %% [markdown]
# What to read from it: where the margin can be met (d = 8) both scales train; where it cannot
# (d = 2) the loss stays high and, at s = 30, so does the gradient, three times larger per unit
# of $p - y$ ($\partial L/\partial c = s(p - y)/N$) at the same learning rate: the features keep
# being pushed at the end of training. The quick run (150 steps) only shows that the code runs;
# tutorials/README.md quotes the full run.
#
# ## Summary
# - $s$ bounds the confidence a normalised softmax can express; $s_{\min}$ grows like $\ln C$.
# - The loss at initialisation is $\ln(C-1+e^{-sm}) + sm$: check it on the first batch.
# - The gradient scales with $s$: retune the learning rate when you change $s$; ramp the margin on hard starts.
#
# ## Open exercises
# 1. Repeat the table of section 1 for ArcFace's target $\cos(\theta + m)$: what replaces $1 - m$?
# 2. Plot held-out accuracy against $s$ for $s \in \{4, 7, 10, 20, 30, 64\}$ at a fixed learning rate, then with lr ∝ 1/s.
# 3. Replace the ramp by `conditional=True`. Where is the loss discontinuous, and does it matter here?
