"""PNG figures for training and evaluation, drawn without a display.

Every function builds a ``matplotlib.figure.Figure`` directly instead of
going through ``matplotlib.pyplot``: such a figure is rendered by the Agg
(PNG) canvas when saved, never registers with pyplot, and so neither needs a
display nor changes the backend or the open figures of a user who works with
pyplot at the same time (e.g. in a notebook). Each function creates the
parent directory of ``path``, writes the PNG, and returns the path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

__all__ = [
    "plot_training_curves",
    "plot_roc",
    "plot_pair_histograms",
    "plot_sample_grid",
    "plot_target_logits",
    "plot_features_on_sphere",
    "plot_roc_curves",
]

_DPI = 120


def _save(fig: Figure, path: str | os.PathLike) -> str:
    """Write ``fig`` to ``path`` as PNG (creating the directory) and return the path."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI, bbox_inches="tight")
    # Not registered with pyplot, so there is nothing to close: dropping the
    # last reference frees the figure. Clearing it releases the memory now.
    fig.clear()
    return path


def plot_training_curves(records: Sequence[Mapping], path: str | os.PathLike) -> str:
    """Training curves: loss, margin-free accuracy and mean target cosine vs step.

    Parameters
    ----------
    records : sequence of dict
        One dict per logged step with (some of) the keys ``step``, ``loss``,
        ``accuracy`` (accuracy of the argmax of the margin-free logits),
        ``mean_target_cosine`` (mean cos(theta_y) between features and their
        class weight) and ``lr``. A key may be missing or None in some
        records: each curve uses the records that have it. A record without
        ``step`` is placed at its position in the list.
    path : str or PathLike
        Output PNG file.

    Returns
    -------
    str
        ``path``.
    """

    def series(key):
        pairs = [
            (rec.get("step", i), rec[key])
            for i, rec in enumerate(records)
            if rec.get(key) is not None
        ]
        if not pairs:
            return None, None
        steps, values = zip(*pairs)
        return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)

    panels = [
        ("loss", "loss", "AM-Softmax loss"),
        ("accuracy", "accuracy", "margin-free accuracy"),
        ("mean_target_cosine", "mean cos(theta_y)", "mean target cosine"),
    ]
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    for ax, (key, ylabel, title) in zip(axes, panels):
        steps, values = series(key)
        if steps is None:
            ax.text(0.5, 0.5, f"no '{key}' logged", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.plot(steps, values, color="tab:blue", marker="." if len(steps) < 50 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)

    # The learning rate explains bends in the loss, so it shares the loss panel
    # on a second y-axis instead of taking a panel of its own.
    steps, lr = series("lr")
    if steps is not None:
        ax_lr = axes[0].twinx()
        ax_lr.plot(steps, lr, color="tab:orange", linestyle="--", linewidth=1)
        ax_lr.set_ylabel("learning rate", color="tab:orange")
        ax_lr.tick_params(axis="y", colors="tab:orange")
    fig.tight_layout()
    return _save(fig, path)


def plot_roc(
    far: np.ndarray,
    tar: np.ndarray,
    path: str | os.PathLike,
    tar_at_far: Mapping | None = None,
    label: str | None = None,
) -> str:
    """ROC curve (TAR against FAR) with a logarithmic FAR axis.

    A log axis cannot show FAR = 0, yet the first ROC points usually sit
    there. They are drawn at half the smallest non-zero FAR, which is the
    left edge of the plot, so the curve still starts where it should.

    Parameters
    ----------
    far, tar : array_like, shape (M,)
        False and true accept rates, e.g. from ``amnp.evaluation.roc_curve``.
    path : str or PathLike
        Output PNG file.
    tar_at_far : dict, optional
        ``{far: tar}`` points to mark, with float keys or the string keys of
        ``evaluate_verification`` (``"1e-3"``).
    label : str, optional
        Legend label of the curve.

    Returns
    -------
    str
        ``path``.
    """
    far = np.asarray(far, dtype=float)
    tar = np.asarray(tar, dtype=float)
    if far.shape != tar.shape or far.ndim != 1:
        raise ValueError(f"far and tar must be 1-D arrays of equal length, got {far.shape} and {tar.shape}")
    positive = far[far > 0]
    floor = positive.min() / 2 if positive.size else 1e-6
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    ax.plot(np.maximum(far, floor), tar, label=label, color="tab:blue")
    for target, value in (tar_at_far or {}).items():
        target = float(target)
        ax.plot(max(target, floor), value, "o", color="tab:red")
        ax.annotate(
            f"TAR={value:.3f}\n@FAR={target:g}",
            (max(target, floor), value),
            textcoords="offset points",
            xytext=(6, -24),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title("ROC")
    ax.grid(True, which="both", alpha=0.3)
    if label is not None:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def plot_pair_histograms(
    scores: np.ndarray,
    same: np.ndarray,
    path: str | os.PathLike,
    threshold: float | None = None,
) -> str:
    """Overlaid histograms of same-identity and different-identity pair cosines.

    Both histograms share the bin edges and are normalised to unit area
    (``density=True``), so the two shapes compare even when the classes have
    different sizes; the overlap is where verification errs.

    Parameters
    ----------
    scores : array_like of float, shape (P,)
        Pair cosine similarities.
    same : array_like of bool, shape (P,)
        True for same-identity pairs.
    path : str or PathLike
        Output PNG file.
    threshold : float, optional
        Decision threshold, drawn as a vertical line.

    Returns
    -------
    str
        ``path``.
    """
    scores = np.asarray(scores, dtype=float)
    same = np.asarray(same, dtype=bool)
    if scores.shape != same.shape or scores.ndim != 1:
        raise ValueError(f"scores and same must be 1-D arrays of equal length, got {scores.shape} and {same.shape}")
    bins = np.histogram_bin_edges(scores, bins=50)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for mask, name, color in ((same, "same identity", "tab:green"), (~same, "different identity", "tab:red")):
        if np.any(mask):
            ax.hist(scores[mask], bins=bins, density=True, alpha=0.5, color=color, label=f"{name} ({mask.sum()})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold = {threshold:.3f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title("pair similarity")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_sample_grid(
    images: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    class_names: Sequence[str] | Mapping | None = None,
    max_images: int = 64,
) -> str:
    """A grid of images, each titled with its label or class name.

    Parameters
    ----------
    images : array_like, shape (N, C, H, W) with C = 1 or 3
        uint8 images are shown as they are (0..255). Float images are
        min-max scaled per image to [0, 1], because network inputs are often
        mean-subtracted or standardised and would otherwise be clipped.
        C = 1 uses a grayscale colormap.
    labels : array_like of int, shape (N,)
        Label of each image.
    path : str or PathLike
        Output PNG file.
    class_names : sequence or dict, optional
        ``class_names[label]`` is used as the title instead of the number.
    max_images : int
        Only the first ``max_images`` images are drawn.

    Returns
    -------
    str
        ``path``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C = 1 or 3, got {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    images, labels = images[:max_images], labels[:max_images]
    n = max(images.shape[0], 1)
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)

    if np.issubdtype(images.dtype, np.floating):
        lo = images.min(axis=(1, 2, 3), keepdims=True)
        hi = images.max(axis=(1, 2, 3), keepdims=True)
        # A constant image would divide by zero; it is shown as black instead.
        images = (images - lo) / np.where(hi > lo, hi - lo, 1.0)
        vmax = 1.0
    else:
        vmax = 255
    images = images.transpose(0, 2, 3, 1)  # imshow wants (H, W, C)

    fig = Figure(figsize=(1.4 * ncols, 1.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, label in zip(axes, images, labels):
        if image.shape[2] == 1:
            ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=vmax)
        else:
            # RGB imshow takes no vmin/vmax: floats must be in [0, 1], ints in [0, 255].
            ax.imshow(image if vmax == 1.0 else image.astype(np.uint8))
        title = str(class_names[int(label)]) if class_names is not None else str(label)
        # an identity folder whose name is not valid UTF-8 holds surrogate escapes, which no
        # font can draw: show their bytes as \x escapes instead
        ax.set_title(os.fsencode(title).decode("utf-8", "backslashreplace"), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def target_logit_curves(theta: np.ndarray) -> dict:
    """ψ(θ), the target logit before scaling, of each member of the margin family, computed
    by amnp's own ψ functions at the angles ``theta`` (radians): the curves of the
    AM-Softmax paper's target-logit figure, with ArcFace and the combined margin added."""
    from .functional import margins  # figures is imported on demand; functional is light

    c = np.cos(theta)
    return {
        "softmax / NormFace: cos θ": c,
        "A-Softmax m=4, λ=0": margins.sphereface_margin(c, 4)[0],
        "A-Softmax m=4, λ=5 (trained floor)": margins.sphereface_margin(c, 4, 5.0)[0],
        "AM-Softmax m=0.35: cos θ − m": margins.additive_margin(c, 0.35)[0],
        "ArcFace m=0.5: cos(θ + m)": margins.arcface_margin(c, 0.5)[0],
        "combined (1, 0.3, 0.2)": margins.combined_margin(c, 1.0, 0.3, 0.2)[0],
    }


def plot_target_logits(path: str | os.PathLike) -> str:
    """The target logit ψ(θ) of every margin loss against the angle θ ∈ [0°, 180°] to the
    class weight, on one axis.  Below the cos θ curve, a loss asks for a smaller angle
    than softmax does before the sample counts as classified.

    Returns
    -------
    str
        ``path``.
    """
    theta = np.linspace(0.0, np.pi, 721)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for label, psi in target_logit_curves(theta).items():
        style = "--" if label.startswith("softmax") else "-"
        ax.plot(np.degrees(theta), psi, style, label=label, linewidth=1.6)
    ax.axhline(0.0, color="lightgray", linewidth=0.8)
    ax.set_xlim(0, 180)
    ax.set_xticks(range(0, 181, 30))
    ax.set_xlabel("angle θ between the feature and its class weight (degrees)")
    ax.set_ylabel("target logit ψ(θ) (before the scale)")
    ax.set_title("Target logit of each margin loss")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_features_on_sphere(panels: Mapping, path: str | os.PathLike, columns: int = 3) -> str:
    """Unit-length 3-D features, one panel per loss: ``panels`` maps a title to
    (features (N, 3), labels (N,)).  Each panel is a 3-D scatter on a wire sphere, seen from
    the same direction, coloured by class.

    Returns
    -------
    str
        ``path``.
    """
    if not panels:
        raise ValueError("plot_features_on_sphere: no panels to draw")
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(3.4 * columns, 3.4 * rows))
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 25), np.linspace(0, np.pi, 13))
    for position, (title, (features, labels)) in enumerate(panels.items()):
        features = np.asarray(features, dtype=float)
        if features.ndim != 2 or features.shape[1] != 3:
            raise ValueError(f"plot_features_on_sphere: {title}: features must have shape (N, 3), "
                             f"got {features.shape}")
        points = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        ax = fig.add_subplot(rows, columns, position + 1, projection="3d")
        ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="lightgray",
                          linewidth=0.3)
        _, class_index = np.unique(labels, return_inverse=True)
        colors = colormaps["tab10"](class_index % 10)
        ax.scatter(points[:, 0], points[:, 1], points[:, 2], c=colors, s=5, depthshade=False)
        ax.set_box_aspect((1, 1, 1))
        ax.set_axis_off()
        ax.view_init(elev=20, azim=35)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_roc_curves(curves: Mapping, path: str | os.PathLike) -> str:
    """Verification ROC curves of several runs on one plot, FAR on a log scale: ``curves``
    maps a label to (far, tar) arrays (from amnp.evaluation.roc_curve).

    Returns
    -------
    str
        ``path``.
    """
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for label, (far, tar) in curves.items():
        far, tar = np.asarray(far, dtype=float), np.asarray(tar, dtype=float)
        shown = far > 0  # log scale: FAR = 0 has no place
        ax.plot(far[shown], tar[shown], label=label, linewidth=1.3)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title("Verification ROC of each loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
