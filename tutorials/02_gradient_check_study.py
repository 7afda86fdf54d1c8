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
# # Tutorial 2: the gradient-check study
#
# **Learning goals.** After this tutorial you can
# - explain why a correct float32 layer fails a gradient check, and show it with a step-size sweep;
# - read the "V" of the error against $h$, and measure its two slopes (truncation $h^2$, rounding $\varepsilon/h$);
# - recognise a check that straddles a kink, and detect it with one-sided differences;
# - read a relative error that is huge although the gradient is right (s = 30);
# - check a whole network along one random direction, at two forward calls.
#
# Background: `docs/derivations.md`, [Vector-Jacobian products](../docs/derivations.md#vjp)
# and [Finite differences](../docs/derivations.md#finite-differences).
# amnp's checker is `amnp.gradcheck` (`numerical_gradient`, `check_layer`, `check_loss`,
# `directional_check`); this tutorial uses it and looks inside it.

# %%
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # tiny matrices: one BLAS thread is the fastest
QUICK = os.environ.get("AMNP_TUTORIAL_QUICK", "0") == "1"
OUT = os.environ.get("AMNP_TUTORIAL_OUT", "out")
os.makedirs(OUT, exist_ok=True)

import time

import numpy as np
from matplotlib.figure import Figure

import checks
from amnp.gradcheck import RTOL, check_layer, check_loss, directional_check, format_reports, numerical_gradient
from amnp.layers import Conv2d, CosineLinear, Flatten, Linear, MaxPool2d, PReLU, ReLU, Sequential
from amnp.losses import AMSoftmaxLoss

# The sizes are the same in quick mode: this tutorial takes about a second, and its printed
# numbers are the ones tutorials/README.md quotes.
rng = np.random.default_rng(2018)
N, C, SIZE = 1, 2, 5


def verdict(reports):
    return "PASSED" if all(r.passed for r in reports) else "FAILED"


# %% [markdown]
# ## 1. float64 passes, float32 fails, and nothing is wrong
#
# A convolution with kernel 3, stride 2 (overlapping windows) and padding 1, checked entry by
# entry with `check_layer` in float64 and then, with the same weights, in float32.
#
# **Predict first.** The float32 layer computes the same function to 7 digits. Will its check
# pass at amnp's tolerance (rtol $10^{-5}$)?
#
# (amnp's `check_layer` never lets this happen to you: it checks a float32 layer through a float64
# copy and says so in the report's `promoted_from`. Below we keep everything in float32 on purpose.)

# %%
conv = Conv2d(C, 3, kernel_size=3, stride=2, padding=1, dtype=np.float64, rng=rng)
conv.params["bias"] = rng.standard_normal(3)  # a zero bias would hide a missing bias gradient
x64 = rng.standard_normal((N, C, SIZE, SIZE))
g64 = rng.standard_normal(conv.forward(x64).shape)
reports = check_layer(conv, x64, dout=g64)
print(format_reports(reports))
print(f"float64 check: {verdict(reports)}")


def check_in_float32(layer64, x, g, h):
    """check_layer's loop with the layer, input and perturbations kept in float32."""
    layer = Conv2d(layer64.in_channels, layer64.out_channels, layer64.kernel_size, layer64.stride,
                   layer64.padding, dtype=np.float32)
    layer.load_state_dict({k: v.astype(np.float32) for k, v in layer64.state_dict().items()})
    x, g = x.astype(np.float32), g.astype(np.float32)
    layer.forward(x)
    dx = layer.backward(g)
    rows = [("input", dx, numerical_gradient(lambda: layer.forward(x), x, g, h))]
    for name, owner, key in layer.named_parameters():
        analytic = owner.grads[key].copy()
        rows.append((name, analytic, numerical_gradient(lambda: layer.forward(x), owner.params[key], g, h)))
    for name, analytic, numeric in rows:
        error = np.abs(analytic - numeric)
        print(f"{name:<8} max abs error {error.max():.2e}  "
              f"{'ok' if np.all(error <= 1e-6 + RTOL * np.abs(numeric)) else 'FAILED'}")


check_in_float32(conv, x64, g64, h=1e-6)

# %% [markdown]
# ## 2. The V curve and its slopes
#
# For a smooth nonlinear $\varphi$ the central difference errs by
# truncation $\approx h^2|\varphi'''|/6$ plus rounding $\approx \varepsilon|\varphi|/h$.
# On a log-log plot these are lines of slope $+2$ and $-1$, crossing near $h \approx \varepsilon^{1/3}$.
#
# ### Exercise 1: fit a slope
# Write `fit_slope(h, err)`: the least-squares slope of $\log_{10}$ err against $\log_{10} h$.

# %%
def fit_slope(h, err):
    """Slope of the straight line through (log10 h, log10 err), by least squares."""
    ### BEGIN SOLUTION
    return float(np.polyfit(np.log10(h), np.log10(err), 1)[0])
    ### END SOLUTION


checks.check_fit_slope(fit_slope)

# %% [markdown]
# The sweep runs on Conv2d → Flatten → CosineLinear (smooth, and nonlinear through the
# normalisation). The input is scaled by 0.3: shorter features curve the normalisation more, so
# that the truncation arm of the V is visible inside the sweep.

# %%
def smooth_network(dtype, seed):
    r = np.random.default_rng(seed)
    features = 3 * ((SIZE + 2 - 3) // 2 + 1) ** 2
    return Sequential(Conv2d(C, 3, 3, stride=2, padding=1, dtype=dtype, rng=r), Flatten(),
                      CosineLinear(features, 4, dtype=dtype, rng=r))


net64, net32 = smooth_network(np.float64, 7), smooth_network(np.float32, 7)
net32.load_state_dict({k: v.astype(np.float32) for k, v in net64.state_dict().items()})
x = 0.3 * rng.standard_normal((N, C, SIZE, SIZE))
g = rng.standard_normal(net64.forward(x).shape)
exact = net64.backward(g)
steps = 10.0 ** -np.arange(1, 10)
errors = {"float64": [], "float32": []}
for h in steps:
    for name, net, dtype in (("float64", net64, np.float64), ("float32", net32, np.float32)):
        xd = x.astype(dtype)
        numeric = numerical_gradient(lambda: net.forward(xd), xd, g.astype(dtype), h)
        errors[name].append(np.linalg.norm(numeric - exact) / np.linalg.norm(exact))
print(f"{'h':>8}  {'float64':>10}  {'float32':>10}")
for i, h in enumerate(steps):
    print(f"{h:8.0e}  {errors['float64'][i]:10.2e}  {errors['float32'][i]:10.2e}")
best = {name: steps[int(np.argmin(e))] for name, e in errors.items()}
print(f"best h: float64 {best['float64']:.0e}, float32 {best['float32']:.0e}")
# the two arms of the float64 V: large h (truncation) and small h (rounding)
truncation = fit_slope(steps[:4], errors["float64"][:4])
rounding = fit_slope(steps[5:], errors["float64"][5:])
print(f"fitted slopes (float64): truncation arm {truncation:+.2f}, rounding arm {rounding:+.2f}")

fig = Figure(figsize=(6, 4.2))
ax = fig.subplots()
for name, marker in (("float64", "o"), ("float32", "s")):
    ax.loglog(steps, errors[name], marker=marker, label=name)
# each fitted line drawn with its fitted slope, through the last point of its arm
ax.loglog(steps[:4], errors["float64"][3] * (steps[:4] / steps[3]) ** truncation, "k:",
          label=f"fit {truncation:+.2f} (truncation)")
ax.loglog(steps[5:], errors["float64"][-1] * (steps[5:] / steps[-1]) ** rounding, "k--",
          label=f"fit {rounding:+.2f} (rounding)")
ax.axhline(RTOL, color="gray", linewidth=0.8)
ax.invert_xaxis()
ax.set_xlabel("step h (smaller to the right)")
ax.set_ylabel("relative error of the central difference")
ax.set_title("central differences: truncation vs rounding")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "02_h_sweep.png"), dpi=120)
checks.show(os.path.join(OUT, "02_h_sweep.png"))

# %% [markdown]
# **Inline question 1.** Which $h$ minimises the float32 error in theory?
# (a) 1e-8  (b) 1e-6  (c) 5e-3  (d) 0.1
#
# Answer with the letter as a string, e.g. `'b'`.

# %%
### BEGIN SOLUTION
answer_float32_best_h = "c"
### END SOLUTION
checks.check_answer("02.float32_best_h", answer_float32_best_h)

# %% [markdown]
# ## 3. Kinks: when the stencil straddles a point where $f$ is not differentiable
#
# ReLU at exactly 0: the central difference gives $(h - 0)/2h = 1/2$, the subgradient amnp uses
# is 0. They disagree by design. Chainer's checker detects this: on either side of a kink the
# **one-sided** differences $(f(x+h)-f(x))/h$ and $(f(x)-f(x-h))/h$ disagree by $O(1)$, while at a
# smooth point they differ by about $h|f''|$.
#
# ### Exercise 2: detect a crossed kink
# Write `crossed_kink(f, x, i, h)`: True when the two one-sided differences of the scalar `f`
# in entry `i` disagree by more than `1e-3 * max(1, |forward|, |backward|)`. Restore `x`.

# %%
def crossed_kink(f, x, i, h):
    """Do the one-sided differences of f at x, along entry i, disagree?"""
    ### BEGIN SOLUTION
    original = x.flat[i]
    try:
        centre = f(x)
        x.flat[i] = original + h
        forward = (f(x) - centre) / h
        x.flat[i] = original - h
        backward = (centre - f(x)) / h
    finally:
        x.flat[i] = original
    return abs(forward - backward) > 1e-3 * max(1.0, abs(forward), abs(backward))
    ### END SOLUTION


checks.check_crossed_kink(crossed_kink)

# %%
x = rng.standard_normal((1, 6))
x[0, [1, 4]] = 0.0
relu = ReLU()
ones = np.ones_like(x)
print(f"ReLU check with two inputs at exactly 0: {verdict(check_layer(relu, x, dout=ones))}")
phi = lambda z: float(np.sum(relu.forward(z)))
flagged = [i for i in range(x.size) if crossed_kink(phi, x, i, 1e-6)]
print(f"entries whose stencil crosses a kink: {flagged}")
x[0, [1, 4]] = [1e-3, -1e-3]
print(f"same check with those inputs moved to +-1e-3 (> h): {verdict(check_layer(relu, x, dout=ones))}")

# %% [markdown]
# amnp's checker has the same idea built in: `check_layer(..., detect_kinks=True)` evaluates each
# entry at $\pm h$ and $\pm 2h$, flags the entries whose one-sided slopes do not lie on a line
# (see `amnp.gradcheck`'s docstring for the exact rule), leaves them out of the comparison and
# reports them, instead of failing blindly.

# %%
x[0, [1, 4]] = 0.0
report = check_layer(relu, x, dout=ones, detect_kinks=True)[0]
print(f"check_layer with detect_kinks: {report.verdict}; kinks at {list(report.kinks)}")

# %% [markdown]
# ## 4. A relative error that lies: AM-Softmax at s = 30

# %%
cos = rng.uniform(-0.9, 0.9, (8, 10))
labels = rng.integers(0, 10, 8)
loss = AMSoftmaxLoss(m=0.35, s=30.0)
report = check_loss(loss, cos, labels)
print(format_reports([report]))
loss.forward(cos, labels)
grad = np.abs(loss.backward())
print(f"gradient entries from {grad.min():.1e} to {grad.max():.1e}; "
      f"{np.mean(grad < 1e-8):.0%} of them below 1e-8")

# %% [markdown]
# **Inline question 2.** The check says `ok` next to a large relative error. Why?
# (a) the gradient is wrong in a few entries (b) many entries are ~1e-10, so the relative error
# compares rounding noise with almost nothing (c) h is too large for s = 30
#
# Answer with the letter as a string, e.g. `'b'`.

# %%
### BEGIN SOLUTION
answer_rel_at_s30 = "b"
### END SOLUTION
checks.check_answer("02.rel_at_s30", answer_rel_at_s30)

# %% [markdown]
# The pass rule $|a - n| \le \text{atol} + \text{rtol}\,|n|$ has an absolute floor for exactly this reason.
#
# ## 5. A whole network along one direction
#
# Checking every entry costs 2 forward calls per entry. Moving the input **and every
# parameter** together along one random direction $d$ costs 2 in all:
# $(\varphi(\theta + hd) - \varphi(\theta - hd))/2h \approx \langle\nabla\varphi, d\rangle$.
# A wrong entry shows up unless $d$ happens to be orthogonal to the error (probability 0).
#
# ### Exercise 3: the directional derivative
# Write `directional_derivative(f, x, d, h)` for a scalar `f`, without changing `x`.

# %%
def directional_derivative(f, x, d, h=1e-6):
    """(f(x + h d) - f(x - h d)) / 2h."""
    ### BEGIN SOLUTION
    return (f(x + h * d) - f(x - h * d)) / (2 * h)
    ### END SOLUTION


checks.check_directional_derivative(directional_derivative)

# %%
size = 4
net = Sequential(Conv2d(2, 4, 3, stride=1, padding=1, dtype=np.float64, rng=rng), PReLU(4, dtype=np.float64),
                 MaxPool2d(2), Flatten(), Linear(4 * (size // 2) ** 2, 8, dtype=np.float64, rng=rng),
                 CosineLinear(8, 5, dtype=np.float64, rng=rng))
x = rng.standard_normal((2, 2, size, size))
g = rng.standard_normal(net.forward(x).shape)
dx = net.backward(g)
d = rng.standard_normal(x.shape)
mine = directional_derivative(lambda z: float(np.sum(g * net.forward(z))), x, d)
print(f"your directional derivative along d (input only): {mine:.8f}; <dx, d> = {np.sum(dx * d):.8f}")
start = time.perf_counter()
reports = [directional_check(net, x, seed=seed) for seed in range(3)]
directional_ms = (time.perf_counter() - start) * 1e3
print(f"network directional check (input and all {net.num_parameters()} parameters): {verdict(reports)}, "
      f"3 directions in {directional_ms:.0f} ms")
full = check_layer(net, x)
print(f"entry by entry: {verdict(full)}, {2 * (net.num_parameters() + x.size)} forward calls")

# %% [markdown]
# ## Summary
# - Check gradients in float64: in float32 rounding dominates for every $h$, and the best error is still above rtol.
# - The error against $h$ is a V with slopes $+2$ and $-1$; its bottom sits near $\varepsilon^{1/3}$.
# - A stencil that straddles a kink disagrees by design; one-sided differences detect it. Check away from kinks, and test the convention separately.
# - Relative errors on tiny entries are noise; trust the allclose rule with an absolute floor.
# - One random direction checks a whole network at the cost of two forward calls.
#
# ## Open exercises
# 1. Repeat the sweep with the one-sided difference: which slopes do you fit now?
# 2. Make `crossed_kink` report *which side* the kink lies on. Where is it, relative to x, if only the forward difference differs from the central one?
# 3. How many random directions do you need before a wrong sign in one bias entry (out of 10⁶ parameters) is caught with probability 0.999?
