"""Tutorial 2: why the additive margin makes features discriminative, seen on a circle.

AM-Softmax (Wang et al. 2018) scores a feature f against class weights W_j by the
cosine c_j = cos(theta_j) between f/||f|| and W_j/||W_j||, subtracts a margin m from the
TARGET class's cosine only, scales everything by s, and applies softmax cross-entropy:

    z_j = s (c_j - m [j = y]),      L = -log softmax(z)_y.

With a 2-D embedding every normalised feature is a point on the unit circle, so we can
simply look at what each loss does to the features.  We train the same small network,
from the same starting point, with the same batches and schedule, three times:

    1. plain softmax         (amnp.heads.SoftmaxHead: linear layer + bias, no normalisation)
    2. normalised softmax    (build_head("normface", s=10))
    3. AM-Softmax            (build_head("am-softmax", m=0.35, s=10))

and measure, on held-out images, how tightly each class gathers (intra-class angular
spread) and how far apart the classes are (the smallest angle between class centres).

Run it from the repository root:

    python tutorials/02_am_softmax_on_the_circle.py             # ~30 s on 2 cores
    python tutorials/02_am_softmax_on_the_circle.py --quick     # a few seconds (used by the tests)
    python tutorials/02_am_softmax_on_the_circle.py --seed 3    # another dataset and initialisation
    python tutorials/02_am_softmax_on_the_circle.py --noise 110 --steps 600   # harder, shorter
    python tutorials/02_am_softmax_on_the_circle.py --softmax-warmup          # see the comments

Figures written to --out (default tutorials/out):
    02_samples.png                                7 training images per class, one class per row
    02_circle_softmax.png, 02_circle_normface.png, 02_circle_am_softmax.png
                                                  held-out features on the unit circle, one per loss
    02_circle_all.png                             all runs side by side, raw and normalised
"""
from __future__ import annotations

import argparse
import math
import os
import time

# The matrices in this tutorial are tiny.  A multi-threaded BLAS gains nothing on them and,
# on a busy machine, loses a lot (we measured a 12x slowdown of training with OpenBLAS's
# default threads while other processes ran).  One thread, unless you asked for more:
# this must happen before NumPy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from amnp import figures, heads, models, optim
from amnp.losses import AMSoftmaxLoss
from amnp.heads import TrainingModel
from amnp.training import preprocess

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")

# Six classes, because on a circle the margin must fit between neighbours.  With C classes
# evenly spaced, neighbouring centres are 360/C degrees apart, and a feature AT its centre
# satisfies the margin only if cos(0) - m > cos(360/C), i.e. 1 - 0.35 = 0.65 > cos(360/C):
# true for C = 6 (cos 60° = 0.5), false for C = 8 (cos 45° = 0.71).  With 8 classes the
# margin could never be met in 2-D; in the paper's 512 dimensions there is plenty of room.
NUM_CLASSES = 6
IMAGE_SIZE = 16
S = 10.0        # the scale the AM-Softmax author recommends for small, MNIST-like problems
MARGIN = 0.35   # the paper's default margin

FULL = dict(train_per_class=300, test_per_class=50, noise=80.0, warmup_steps=300, steps=1500,
            batch_size=64, log_every=250)
QUICK = dict(train_per_class=30, test_per_class=10, noise=80.0, warmup_steps=30, steps=40,
             batch_size=32, log_every=20)


# ----------------------------------------------------------------------------------------------
# The data: noisy, shifted copies of a few random prototype images
# ----------------------------------------------------------------------------------------------
def make_dataset(num_classes, train_per_class, test_per_class, noise, seed, size=IMAGE_SIZE):
    """Each class is one smooth random 'prototype' image; its samples are the prototype with
    Gaussian pixel noise (std ``noise`` on the 0..255 scale) and a random shift of up to 2
    pixels.  Returns uint8 images (N, 1, size, size) and int64 labels, for train and test."""
    rng = np.random.default_rng(seed)
    # Smooth prototypes (white noise blurred twice with a 3x3 box) look like blobs rather
    # than static, so that small shifts change them gradually, as with real images.
    field = rng.standard_normal((num_classes, size + 4, size + 4))
    for _ in range(2):
        field = sum(np.roll(field, (di, dj), axis=(1, 2)) for di in (-1, 0, 1) for dj in (-1, 0, 1)) / 9
    field = field[:, 2:-2, 2:-2]
    field = (field - field.mean()) / field.std()
    prototypes = np.clip(127.5 + 60.0 * field, 0, 255)

    def draw(per_class):
        labels = np.repeat(np.arange(num_classes), per_class)
        images = prototypes[labels] + rng.normal(0.0, noise, (labels.size, size, size))
        for k, (di, dj) in enumerate(rng.integers(-2, 3, (labels.size, 2))):
            images[k] = np.roll(images[k], (di, dj), axis=(0, 1))
        return np.clip(images, 0, 255).astype(np.uint8)[:, None], labels.astype(np.int64)

    return draw(train_per_class), draw(test_per_class)


# ----------------------------------------------------------------------------------------------
# Angles on the circle
# ----------------------------------------------------------------------------------------------
def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def angular_stats(features, labels, num_classes):
    """Per-class angular spread and the smallest angle between class centres, in degrees.

    The centre of a class is the direction of the mean of its unit features; its spread is
    the mean angle between its samples and that centre."""
    u = unit(np.asarray(features, dtype=np.float64))
    centres = np.stack([unit(u[labels == c].mean(axis=0)) for c in range(num_classes)])
    spread = np.array([
        np.degrees(np.arccos(np.clip(u[labels == c] @ centres[c], -1, 1))).mean()
        for c in range(num_classes)])
    between = np.degrees(np.arccos(np.clip(centres @ centres.T, -1, 1)))
    between[np.diag_indices(num_classes)] = np.inf
    return spread, float(between.min()), centres


def margin_arc(num_classes, m):
    """With class centres evenly spaced (360/C apart), the half-width of the arc around a
    centre inside which a feature satisfies the margin against its nearest neighbour class:
    cos(theta) - m > cos(360/C - theta).  Without margin (m = 0) it is half the spacing."""
    gap = math.radians(360 / num_classes)
    lo, hi = 0.0, gap / 2  # cos(t) - m - cos(gap - t) decreases on [0, gap/2]: bisect
    if math.cos(0) - m <= math.cos(gap):
        return 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.cos(mid) - m > math.cos(gap - mid) else (lo, mid)
    return math.degrees(lo)


# ----------------------------------------------------------------------------------------------
# Training: the hand-written loop
# ----------------------------------------------------------------------------------------------
def batches(num_images, batch_size, steps, seed):
    """Minibatch indices for each step: a fresh permutation every epoch, seeded, so that all
    three runs see exactly the same batches in the same order."""
    per_epoch = num_images // batch_size
    for step in range(steps):
        epoch, position = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(num_images)
        yield step, order[position * batch_size:(position + 1) * batch_size]


def train(net, head, x, y, steps, base_lr, batch_size, seed, log_every, name):
    """SGD with momentum 0.9 and weight decay 5e-4 (the paper's solver), on the paper's
    step schedule stretched to ``steps`` (lr / 10 at 16/30, 24/30 and 28/30 of the run),
    after a linear warm-up over the first 10% of the steps."""
    # TrainingModel just groups the network and the head so that the optimizer walks the
    # parameters of both ("net.0.weight", ..., "head.classifier.weight").
    model = TrainingModel(net, head)
    opt = optim.SGD(model, momentum=0.9, weight_decay=5e-4)
    schedule = optim.scaled_paper_schedule(steps, base_lr, warmup_steps=max(1, steps // 10))
    window = []
    for step, index in batches(len(y), batch_size, steps, seed):
        xb, yb = x[index], y[index]
        head.set_step(step)                  # a no-op here (no margin ramp), kept for the habit
        embeddings = net.forward(xb)         # (B, 2): the features we will look at
        loss = head.forward(embeddings, yb)  # the head needs the labels: the margin goes on y
        if not math.isfinite(loss):
            raise SystemExit(f"[{name}] the loss became {loss} at step {step}; try a smaller lr")
        net.backward(head.backward())        # d loss / d embeddings, then through the network
        opt.step(schedule(step))             # the only place where weights change
        # The loss includes the margin, so it is a poor progress signal (it cannot reach 0 for
        # AM-Softmax); the accuracy of the MARGIN-FREE scores is what to watch.
        window.append((loss, float((head.scores.argmax(axis=1) == yb).mean())))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            losses, accs = zip(*window)
            print(f"  [{name}] step {step + 1:5d}  lr {schedule(step):.4f}  loss {np.mean(losses):6.3f}"
                  f"  train acc {np.mean(accs):.3f}")
            window = []


def evaluate(net, head, x, y):
    """Held-out embeddings and the accuracy of the head's margin-free scores."""
    embeddings = net.forward(x)                   # no dropout or BatchNorm: no "eval mode" needed
    scores = head.classifier.forward(embeddings)  # the classifier alone: no labels, no margin
    return np.asarray(embeddings, dtype=np.float64), float((scores.argmax(axis=1) == y).mean())


def class_directions(head):
    """The class directions the head compares features with: the cosine layer's weights, or
    for the softmax head the rows of its linear layer (which also has a bias)."""
    return unit(np.asarray(head.classifier.params["weight"], dtype=np.float64))


# ----------------------------------------------------------------------------------------------
# The initial-loss sanity check (reference, section 2)
# ----------------------------------------------------------------------------------------------
def initial_loss_check(net, x, y, num_classes, rng):
    print("\ninitial-loss sanity check")
    print("-" * 78)
    # If every cosine is 0, every logit is 0 except the target's, which is -s m.  Then
    #     L = -log( e^(-sm) / (C - 1 + e^(-sm)) ) = ln(C-1+e^(-sm)) + sm,
    # and without a margin (m = 0) L = ln C.  A first loss far from this means a bug (for
    # instance the margin subtracted from every class, or s applied twice).
    c, s, m = num_classes, S, MARGIN
    predicted = math.log(c - 1 + math.exp(-s * m)) + s * m
    print(f"C = {c}, s = {s:g}, m = {m}:  ln(C-1+e^(-sm)) + sm = {predicted:.4f}"
          f"   (m = 0: ln C = {math.log(c):.4f})")
    labels = rng.integers(0, c, 256)
    exact = AMSoftmaxLoss(m=m, s=s).forward(np.zeros((256, c)), labels)
    print(f"  AMSoftmaxLoss on cosines exactly 0:                       {exact:.4f}")
    # In a high-dimensional embedding (the paper's 512-d) the cosines between random features
    # and freshly initialised class weights are ~N(0, 1/d), i.e. about 0, as assumed.
    high_d = heads.build_head("am-softmax", 512, c, m=m, s=s, dtype=np.float64, rng=rng)
    loss512 = high_d.forward(rng.standard_normal((256, 512)), labels)
    print(f"  fresh am-softmax head, random 512-d features (cos ~ 0 +- {1 / math.sqrt(512):.3f}): {loss512:.4f}")
    # (A little above the formula: log-sum-exp is convex, so logits that scatter by
    # s/sqrt(d) around 0 raise the mean loss, by roughly (s/sqrt(d))^2 / 2 = 0.1 here.)
    # In 2-D the assumption fails: two random directions in the plane have a cosine anywhere
    # in [-1, 1] (mean |cos| = 2/pi), and s = 10 turns that into logits of +-10, so the first
    # loss of our 2-D network is not this number, and that is not a bug.
    head2 = heads.build_head("am-softmax", 2, c, m=m, s=s, rng=rng)
    some = rng.choice(len(y), min(256, len(y)), replace=False)  # the data is sorted by class
    loss2 = head2.forward(net.forward(x[some]), y[some])
    print(f"  our untrained network, 2-D features (|cos| ~ 2/pi, not 0):  {loss2:.4f}"
          "  <- not comparable, see the comment")


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def combined_figure(runs, labels, num_classes, path):
    """Top row: the raw 2-D features; bottom row: the same features on the unit circle, with
    each class's direction in the head drawn as a line."""
    fig = Figure(figsize=(4 * len(runs), 8))
    axes = fig.subplots(2, len(runs), squeeze=False)
    palette = colormaps["tab10"]
    circle = np.linspace(0, 2 * np.pi, 361)
    for col, run in enumerate(runs):
        emb = run["embeddings"]
        colors = palette(labels % 10)
        top, bottom = axes[0, col], axes[1, col]
        top.scatter(emb[:, 0], emb[:, 1], c=colors, s=6, alpha=0.7)
        top.axhline(0, color="lightgray", linewidth=0.8)
        top.axvline(0, color="lightgray", linewidth=0.8)
        top.set_title(f"{run['title']}\nraw 2-D features", fontsize=10)
        top.set_aspect("equal", adjustable="datalim")
        u = unit(emb)
        bottom.plot(np.cos(circle), np.sin(circle), color="lightgray", linewidth=1)
        bottom.scatter(u[:, 0], u[:, 1], c=colors, s=8, alpha=0.7)
        if run.get("directions") is not None:
            for cls, d in enumerate(run["directions"]):
                bottom.plot([0, 1.1 * d[0]], [0, 1.1 * d[1]], color=palette(cls % 10), linewidth=1.2)
        bottom.set_xlim(-1.25, 1.25)
        bottom.set_ylim(-1.25, 1.25)
        bottom.set_aspect("equal")
        bottom.set_title(f"normalised; spread {run['spread'].mean():.1f}°, "
                         f"min gap {run['min_between']:.1f}°", fontsize=10)
        for ax in (top, bottom):
            ax.tick_params(labelsize=7)
    fig.suptitle(f"held-out features of {num_classes} classes (lines: class weight directions)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# ----------------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory for the figures (default: tutorials/out)")
    parser.add_argument("--quick", action="store_true", help="a tiny, fast version (for the tests)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the data, the initialisation and the batches")
    parser.add_argument("--noise", type=float, default=None,
                        help="pixel noise std on the 0..255 scale (default 80): larger is harder")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of each of the three runs (default 1500, 40 with --quick)")
    parser.add_argument("--softmax-warmup", action="store_true",
                        help="first train the network briefly with a softmax head, shared by the three runs")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.steps is not None:
        cfg["steps"] = args.steps
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)

    noise = cfg["noise"] if args.noise is None else args.noise
    (train_u8, y_train), (test_u8, y_test) = make_dataset(
        NUM_CLASSES, cfg["train_per_class"], cfg["test_per_class"], noise, args.seed)
    # The paper's preprocessing: (pixel - 127.5) / 128, as float32.
    x_train, x_test = preprocess(train_u8), preprocess(test_u8)
    print(f"{NUM_CLASSES} classes of noisy {IMAGE_SIZE}x{IMAGE_SIZE} prototypes: "
          f"{len(y_train)} training and {len(y_test)} held-out images (pixel noise std {noise:g})")
    # 7 images per class: plot_sample_grid lays 42 images out 7 to a row, one class per row.
    show = np.concatenate([np.flatnonzero(y_train == c)[:7] for c in range(NUM_CLASSES)])
    print("figure:", figures.plot_sample_grid(train_u8[show], y_train[show],
                                               os.path.join(args.out, "02_samples.png")))

    # A SphereFace-4 at a tiny width, for 16x16 single-channel images, with a 2-D embedding:
    # four [3x3 stride-2 conv + PReLU] stages (16 -> 8 -> 4 -> 2 -> 1) and a Linear(32, 2).
    net = models.sphereface(4, widths=(8, 16, 32, 32), in_channels=1, input_size=(IMAGE_SIZE, IMAGE_SIZE),
                            embedding_size=2, rng=rng)
    print(f"network: SphereFace-4, widths (8, 16, 32, 32), 2-D embedding, {net.num_parameters()} parameters")

    initial_loss_check(net, x_train, y_train, NUM_CLASSES, rng)

    # --- Optional: a short softmax warm-up, shared by the three runs ------------------------
    # A 2-D embedding has a start-up hazard.  The untrained network mixes all classes up (see
    # the "start" panel of 02_circle_all.png), so at first the class weights of a cosine head
    # are pulled towards wherever the mixed features happen to lie, and two weights that meet
    # can stay together, their classes merged: on a circle one cluster cannot pass through
    # another.  With this script's defaults we did not see it in 10 seeds, but we did in
    # earlier, shorter prototypes of this experiment (see tutorials/README.md).  The
    # reference (section 7) lists softmax pre-training among the cures for margin losses that
    # fail to start; --softmax-warmup does that here.  Either way, the three runs start from
    # the SAME network, each with a fresh head, so the comparison stays fair.
    warm_head = heads.SoftmaxHead(2, NUM_CLASSES, rng=rng)
    if args.softmax_warmup:
        print("\nsoftmax warm-up, shared by all three runs")
        print("-" * 78)
        train(net, warm_head, x_train, y_train, cfg["warmup_steps"], 0.05, cfg["batch_size"],
              seed=args.seed + 1000, log_every=cfg["warmup_steps"], name="warm-up")
    warm_state = net.state_dict()
    emb, _ = evaluate(net, warm_head, x_test, y_test)
    spread, between, _ = angular_stats(emb, y_test, NUM_CLASSES)
    start_name = "start, after warm-up" if args.softmax_warmup else "start, untrained"
    runs = [dict(key="start", title=start_name, embeddings=emb, spread=spread,
                 min_between=between, directions=None)]

    # --- The three runs --------------------------------------------------------------------
    configs = [
        ("softmax", "softmax", "linear layer with bias, softmax cross-entropy",
         lambda r: heads.SoftmaxHead(2, NUM_CLASSES, rng=r)),
        ("normface", "normalised softmax", f"cosine layer, s = {S:g}, m = 0",
         lambda r: heads.build_head("normface", 2, NUM_CLASSES, s=S, rng=r)),
        ("am_softmax", "AM-Softmax", f"cosine layer, s = {S:g}, m = {MARGIN:g}",
         lambda r: heads.build_head("am-softmax", 2, NUM_CLASSES, m=MARGIN, s=S, rng=r)),
    ]
    for key, name, description, make_head in configs:
        print(f"\n{name}: {description}")
        print("-" * 78)
        net.load_state_dict(warm_state)              # the same start for every run
        head = make_head(np.random.default_rng(args.seed + 7))  # and the same draw of head weights
        t0 = time.perf_counter()
        train(net, head, x_train, y_train, cfg["steps"], 0.01, cfg["batch_size"],
              seed=args.seed, log_every=cfg["log_every"], name=name)
        emb, acc = evaluate(net, head, x_test, y_test)
        spread, between, _ = angular_stats(emb, y_test, NUM_CLASSES)
        runs.append(dict(key=key, name=name, title=name, embeddings=emb, spread=spread, min_between=between,
                         accuracy=acc, directions=class_directions(head), seconds=time.perf_counter() - t0))
        path = figures.plot_features_on_circle(emb, y_test, os.path.join(args.out, f"02_circle_{key}.png"))
        print(f"  figure: {path}")

    # --- Results -----------------------------------------------------------------------------
    print("\nresults on the held-out images (angles in degrees)")
    print("=" * 78)
    print(f"evenly spaced classes would be {360 / NUM_CLASSES:.0f}° apart; without a margin the decision"
          f" boundary lies {180 / NUM_CLASSES:.0f}° from a centre,")
    print(f"with m = {MARGIN} a feature satisfies the margin only within {margin_arc(NUM_CLASSES, MARGIN):.1f}°"
          " of its centre (cos t - m > cos(60° - t)).")
    print("\nper-class spread (mean angle between a class's samples and its centre):")
    print(" " * 24 + "".join(f"{'class ' + str(c):>9s}" for c in range(NUM_CLASSES)))
    for run in runs[1:]:
        print(f"[{run['name']}]".ljust(24) + "".join(f"{s:9.1f}" for s in run["spread"]))
    print("\nspread = mean intra-class spread (the mean of the row above); "
          "gap = smallest angle between class centres")
    print(f"{'':24s}{'held-out acc':>12s}{'spread':>9s}{'gap':>9s}{'gap/spread':>12s}")
    for run in runs:
        label = f"[{run['name']}]" if "name" in run else f"[{start_name}]"
        accuracy = f"{run['accuracy']:12.3f}" if "accuracy" in run else f"{'-':>12s}"
        print(f"{label:24s}{accuracy}{run['spread'].mean():9.1f}{run['min_between']:9.1f}"
              f"{run['min_between'] / run['spread'].mean():12.1f}")
    print("\nThe margin should shrink the intra-class spread: compare the AM-Softmax row with the"
          " other two.")
    for run in runs[1:]:
        if run["min_between"] < 15 and not args.quick:
            print(f"note: in [{run['name']}] two class centres are only {run['min_between']:.1f}° apart:"
                  " classes merged (the 2-D start-up hazard; try --softmax-warmup).")
    if args.quick:
        print("(--quick trains for a few dozen steps only: its numbers show that the code runs, "
              "not what the losses do.)")
    print("figure:", combined_figure(runs, y_test, NUM_CLASSES, os.path.join(args.out, "02_circle_all.png")))
    print(f"\ndone in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
