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
# # Tutorial 7: geometry, on the circle and on the sphere
#
# **Learning goals.** After this tutorial you can
# - see what each loss does to normalised features, with a 2-D and a 3-D embedding;
# - compute the arc around a class centre inside which AM-Softmax's margin is met;
# - draw decision boundaries and margin arcs, and read intra-class spread and inter-class gaps off them;
# - explain why a margin that fits in 512 dimensions may not fit on a circle.
#
# We train the same small network (SphereFace-4 at a tiny width) from the same start, with the same
# batches and schedule, once per loss, on 6 classes of noisy, shifted 16×16 "prototype" images, and
# look at the held-out features. Derivations: `docs/derivations.md`,
# [The margin family](../docs/derivations.md#margins).

# %%
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # tiny matrices: one BLAS thread is fastest (12x on a busy machine)
QUICK = os.environ.get("AMNP_TUTORIAL_QUICK", "0") == "1"
OUT = os.environ.get("AMNP_TUTORIAL_OUT", "out")
os.makedirs(OUT, exist_ok=True)
SEED = int(os.environ.get("AMNP_TUTORIAL_SEED", "1"))

import math
import time

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

import checks
from amnp import figures, models, optim
from amnp import functional as F
from amnp.config import build_head
from amnp.heads import SoftmaxHead, TrainingModel
from amnp.inference import preprocess

NUM_CLASSES, IMAGE_SIZE, S, MARGIN = 6, 16, 10.0, 0.35
CFG = (dict(train_per_class=30, test_per_class=10, steps=40, batch_size=32) if QUICK else
       dict(train_per_class=300, test_per_class=50, steps=1500, batch_size=64))
PALETTE = colormaps["tab10"]
# quick mode trains too little for the classes to separate: the figures say so
CAVEAT = f"quick mode, {CFG['steps']} steps: not trained enough to separate the classes" if QUICK else ""
started = time.perf_counter()

# %% [markdown]
# ## 1. Why 6 classes: the margin arc
# With $C$ class centres evenly spaced on a circle, neighbours are $360°/C$ apart. A feature at
# angle $t$ from its own centre meets the AM-Softmax margin against the neighbour when
# $\cos t - m > \cos(360°/C - t)$. At the centre ($t = 0$) this needs $1 - m > \cos(360°/C)$:
# true for $C = 6$ ($0.65 > 0.5$), false for $C = 8$ ($0.65 < 0.71$).
#
# ### Exercise 1
# `margin_arc(C, m)`: the half-width in degrees of the arc around a centre where the margin is
# met (0 if nowhere). Hint: $\cos t - \cos(g - t) = 2\sin(g/2)\sin(g/2 - t)$... or bisect.

# %%
def margin_arc(num_classes, m):
    ### BEGIN SOLUTION
    gap = math.radians(360 / num_classes)
    if 1 - m <= math.cos(gap):
        return 0.0
    return math.degrees(gap / 2 - math.asin(m / (2 * math.sin(gap / 2))))
    ### END SOLUTION


checks.check_margin_arc(margin_arc)
print(f"C = 6, m = {MARGIN}: the margin is met within {margin_arc(6, MARGIN):.1f}° of a centre "
      f"(without a margin: {180 / 6:.0f}°)")

# %% [markdown]
# **Inline question 1.** Within how many degrees of its centre does a feature meet the margin for
# $C = 6$, $m = 0.35$? (degrees, to one decimal)

# %%
### BEGIN SOLUTION
answer_arc_c6 = 9.5
### END SOLUTION
checks.check_answer("07.arc_c6", answer_arc_c6)

# %% [markdown]
# ## 2. Data and network

# %%
def make_dataset(train_per_class, test_per_class, seed, noise=80.0, size=IMAGE_SIZE):
    """Each class: a smooth random prototype image plus Gaussian pixel noise (std `noise` on
    0..255) and a random shift of up to 2 px. uint8 (N, 1, size, size) and labels."""
    rng = np.random.default_rng(seed)
    field = rng.standard_normal((NUM_CLASSES, size + 4, size + 4))
    for _ in range(2):  # blur twice with a 3x3 box: blobs rather than static
        field = sum(np.roll(field, (di, dj), axis=(1, 2)) for di in (-1, 0, 1) for dj in (-1, 0, 1)) / 9
    field = field[:, 2:-2, 2:-2]
    prototypes = np.clip(127.5 + 60.0 * (field - field.mean()) / field.std(), 0, 255)

    def draw(per_class):
        labels = np.repeat(np.arange(NUM_CLASSES), per_class)
        images = prototypes[labels] + rng.normal(0.0, noise, (labels.size, size, size))
        for k, (di, dj) in enumerate(rng.integers(-2, 3, (labels.size, 2))):
            images[k] = np.roll(images[k], (di, dj), axis=(0, 1))
        return np.clip(images, 0, 255).astype(np.uint8)[:, None], labels.astype(np.int64)

    return draw(train_per_class), draw(test_per_class)


(train_u8, y_train), (test_u8, y_test) = make_dataset(CFG["train_per_class"], CFG["test_per_class"], SEED)
x_train, x_test = preprocess(train_u8), preprocess(test_u8)   # (pixel - 127.5) / 128, float32
show = np.concatenate([np.flatnonzero(y_train == c)[:7] for c in range(NUM_CLASSES)])
figures.plot_sample_grid(train_u8[show], y_train[show], os.path.join(OUT, "07_samples.png"))
print(f"{len(y_train)} training and {len(y_test)} held-out images of {NUM_CLASSES} classes")


def make_net(dim, seed):
    return models.sphereface(4, widths=(8, 16, 32, 32), in_channels=1, input_size=(IMAGE_SIZE, IMAGE_SIZE),
                             embedding_size=dim, rng=np.random.default_rng(seed))


def batches(num_images, batch_size, steps, seed):
    """The same batches for every run: a fresh seeded permutation every epoch."""
    per_epoch = num_images // batch_size
    for step in range(steps):
        epoch, position = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(num_images)
        yield step, order[position * batch_size:(position + 1) * batch_size]


def train(net, head, steps, base_lr=0.01):
    """SGD, momentum 0.9, weight decay 5e-4, the paper's schedule stretched to `steps`."""
    opt = optim.SGD(TrainingModel(net, head), momentum=0.9, weight_decay=5e-4)
    schedule = optim.scaled_paper_schedule(steps, base_lr, warmup_steps=max(1, steps // 10))
    for step, index in batches(len(y_train), CFG["batch_size"], steps, SEED):
        head.set_step(step)
        loss = head.forward(net.forward(x_train[index]), y_train[index])
        if not math.isfinite(float(loss)):
            raise RuntimeError(f"the loss became {float(loss)} at step {step}")
        net.backward(head.backward())
        opt.step(schedule(step))


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def angular_stats(features, labels):
    """Per-class spread (mean angle to the class centre) and the smallest angle between centres, degrees."""
    u = unit(np.asarray(features, dtype=np.float64))
    centres = np.stack([unit(u[labels == c].mean(axis=0)) for c in range(NUM_CLASSES)])
    spread = np.array([np.degrees(np.arccos(np.clip(u[labels == c] @ centres[c], -1, 1))).mean()
                       for c in range(NUM_CLASSES)])
    between = np.degrees(np.arccos(np.clip(centres @ centres.T, -1, 1)))
    between[np.diag_indices(NUM_CLASSES)] = np.inf
    return spread, float(between.min())


# %% [markdown]
# ## 3. On the circle: softmax, normalised softmax, AM-Softmax
#
# **Predict first.** Which loss will give the tightest classes? Which the widest gaps?

# %%
def circle_heads(rng_seed):
    r = lambda: np.random.default_rng(rng_seed)
    return [
        ("softmax", "softmax (linear + bias)", lambda: SoftmaxHead(2, NUM_CLASSES, rng=r()), None),
        ("normface", f"normalised softmax (s = {S:g})", lambda: build_head("normface", 2, NUM_CLASSES, s=S, rng=r()),
         lambda c: F.no_margin(c)[0]),
        ("am_softmax", f"AM-Softmax (s = {S:g}, m = {MARGIN:g})",
         lambda: build_head("am-softmax", 2, NUM_CLASSES, m=MARGIN, s=S, rng=r()),
         lambda c: F.additive_margin(c, MARGIN)[0]),
    ]


def draw_circle(ax, emb, head, psi, title):
    """Held-out features on the unit circle; outer ring: the decision regions of the head's
    margin-free scores; outermost ring: where the margin (psi) is met for the predicted class."""
    u = unit(emb)
    angles = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    radius = float(np.median(np.linalg.norm(emb, axis=1)))
    scores = np.asarray(head.classifier.forward((radius * ring).astype(np.float32)), dtype=np.float64)
    predicted = scores.argmax(axis=1)
    ax.plot(np.cos(angles), np.sin(angles), color="lightgray", linewidth=1)
    ax.scatter(1.12 * ring[:, 0], 1.12 * ring[:, 1], c=PALETTE(predicted % 10), s=3, marker="s")
    boundary = np.flatnonzero(predicted != np.roll(predicted, 1))
    for b in boundary:
        ax.plot([0, 1.2 * ring[b, 0]], [0, 1.2 * ring[b, 1]], color="gray", linewidth=0.6, linestyle="--")
    if psi is not None:
        target = scores[np.arange(len(ring)), predicted]
        others = np.where(np.eye(NUM_CLASSES, dtype=bool)[predicted], -np.inf, scores).max(axis=1)
        met = psi(target) > others
        ax.scatter(1.22 * ring[met, 0], 1.22 * ring[met, 1], c=PALETTE(predicted[met] % 10), s=6, marker="s")
        w = unit(np.asarray(head.classifier.params["weight"], dtype=np.float64))
        for cls, d in enumerate(w):
            ax.plot([0, d[0]], [0, d[1]], color=PALETTE(cls % 10), linewidth=1.2)
    ax.scatter(u[:, 0], u[:, 1], c=PALETTE(y_test % 10), s=8, alpha=0.7)
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


results = {}
fig_all = Figure(figsize=(12, 4.3))
axes = fig_all.subplots(1, 3)
for ax, (key, title, make_head, psi) in zip(axes, circle_heads(SEED + 7)):
    net, head = make_net(2, SEED), make_head()
    train(net, head, CFG["steps"])
    emb = np.asarray(net.forward(x_test), dtype=np.float64)
    accuracy = float(np.mean(np.asarray(head.classifier.forward(net.forward(x_test))).argmax(axis=1) == y_test))
    spread, gap = angular_stats(emb, y_test)
    results[("circle", key)] = (title, accuracy, spread.mean(), gap)
    full_title = f"{title}\nspread {spread.mean():.1f}°, gap {gap:.1f}°, acc {accuracy:.3f}"
    draw_circle(ax, emb, head, psi, full_title)
    single = Figure(figsize=(4.5, 4.8))
    draw_circle(single.subplots(), emb, head, psi, full_title)
    if CAVEAT:
        single.suptitle(CAVEAT, fontsize=8, color="firebrick")
    single.tight_layout()
    single.savefig(os.path.join(OUT, f"07_circle_{key}.png"), dpi=110)
fig_all.suptitle("held-out features on the circle; ring: decision regions; outer ring: margin met"
                 + (f"\n({CAVEAT})" if CAVEAT else ""), fontsize=10)
fig_all.tight_layout(rect=(0, 0, 1, 0.93))
fig_all.savefig(os.path.join(OUT, "07_circle_all.png"), dpi=110)
checks.show(os.path.join(OUT, "07_circle_all.png"))

# %% [markdown]
# ## 4. On the sphere: five losses with a 3-D embedding
# Softmax, NormFace, A-Softmax ($m = 4$, scaled by $\lVert f\rVert$, annealed with λ), AM-Softmax
# and ArcFace ($m = 0.5$), all from `amnp.config.build_head`.

# %%
sphere_runs = [
    ("softmax", "softmax", lambda r: SoftmaxHead(3, NUM_CLASSES, rng=r)),
    ("normface", f"NormFace (s = {S:g})", lambda r: build_head("normface", 3, NUM_CLASSES, s=S, rng=r)),
    ("sphereface", "A-Softmax (m = 4)", lambda r: build_head("sphereface", 3, NUM_CLASSES, m=4, rng=r)),
    ("am_softmax", f"AM-Softmax (s = {S:g}, m = {MARGIN:g})",
     lambda r: build_head("am-softmax", 3, NUM_CLASSES, m=MARGIN, s=S, rng=r)),
    ("arcface", f"ArcFace (s = {S:g}, m = 0.5)", lambda r: build_head("arcface", 3, NUM_CLASSES, m=0.5, s=S, rng=r)),
]
fig3d = Figure(figsize=(3.6 * len(sphere_runs), 4.4))
for i, (key, title, make_head) in enumerate(sphere_runs):
    net, head = make_net(3, SEED), make_head(np.random.default_rng(SEED + 7))
    train(net, head, CFG["steps"])
    emb = np.asarray(net.forward(x_test), dtype=np.float64)
    accuracy = float(np.mean(np.asarray(head.classifier.forward(net.forward(x_test))).argmax(axis=1) == y_test))
    spread, gap = angular_stats(emb, y_test)
    results[("sphere", key)] = (title, accuracy, spread.mean(), gap)
    ax = fig3d.add_subplot(1, len(sphere_runs), i + 1, projection="3d")
    u = unit(emb)
    ax.scatter(u[:, 0], u[:, 1], u[:, 2], c=PALETTE(y_test % 10), s=6, alpha=0.8)
    ax.set_title(f"{title}\nspread {spread.mean():.1f}°, gap {gap:.1f}°", fontsize=8)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xticks([]); ax.set_yticks([]); ax.set_zticks([])
if CAVEAT:
    fig3d.suptitle(CAVEAT, fontsize=10, color="firebrick")
fig3d.tight_layout(rect=(0, 0, 1, 0.95))
fig3d.savefig(os.path.join(OUT, "07_sphere_all.png"), dpi=110)
checks.show(os.path.join(OUT, "07_sphere_all.png"))

# %% [markdown]
# ## 5. Results

# %%
print(f"{'':8} {'loss':<32} {'held-out acc':>12} {'spread':>8} {'gap':>8} {'gap/spread':>11}")
for (where, key), (title, accuracy, spread, gap) in results.items():
    print(f"{where:8} {title:<32} {accuracy:12.3f} {spread:8.1f} {gap:8.1f} {gap / spread:11.1f}")
print("(spread: mean angle between held-out features and their class centre; gap: smallest angle "
      "between class centres; degrees)")
if QUICK:
    print("(quick mode trains for a few dozen steps: these numbers only show that the code runs)")
print(f"done in {time.perf_counter() - started:.1f} s")

# %% [markdown]
# ## Summary
# - Normalising features puts them on a circle (sphere); the margin then shrinks each class to an arc (cap) around its weight.
# - On a circle the margin must fit between neighbours: $1 - m > \cos(360°/C)$. In 512 dimensions there is room for thousands of classes.
# - The decision boundary of a cosine classifier is the bisector between weights; the margin moves the *training* boundary of each class towards its own centre.
#
# ## Open exercises
# 1. Train with 8 classes on the circle and m = 0.35. What happens to the AM-Softmax run, and why?
# 2. Start every run from a short softmax pre-training (a cure for margin losses that fail to start). Does it change the gaps?
# 3. Replace ArcFace's margin by the combined margin (1, 0.3, 0.2). Where on the sphere does it differ?
