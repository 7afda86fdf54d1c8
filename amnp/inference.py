"""A trained network applied: preprocessing, embedding (with mirror fusion), and the
held-out metrics of a run.

Training's final evaluation, ``amnp eval``, ``embed``, ``verify`` and ``compare`` all
go through these functions, so an image is turned into a feature one way only:

    x = preprocess(images_uint8)                  # float32 (x − 127.5) / 128, as the paper
    e = embed(net, images_uint8, mirror)          # (N, D) on the host; mirror: f(x) + f(flip x)
    f = features(net, images_uint8, mirror)       # the same, L2-normalised, refused if not finite
    metrics, scores = held_out_metrics(net, ...)  # every protocol of amnp.evaluation

The network comes from ``amnp.load_run`` (amnp.run) or from a trainer; nothing here
trains or depends on the trainer.
"""
from __future__ import annotations

import os

import numpy as np

from . import figures, rundir
from .backend import asarray, get_array_module, to_numpy
from .data import make_gallery_probes, make_open_set_protocol
from .evaluation import roc_curve
from .functional import l2_normalize_forward
from .init import stream_seed
from .layers import inference_mode
from .parallel import BatchThreads
from .statistics import evaluate_with_intervals
from .validation import NonFiniteError


def preprocess(images_uint8, mirror_mask=None):
    """uint8 (N, C, H, W) -> float32 (x − 127.5) / 128, as the paper; rows of mirror_mask
    (bool (N,)) are flipped left-right.  Works on either backend."""
    xp = get_array_module(images_uint8)
    x = (images_uint8.astype(xp.float32) - 127.5) / 128.0
    if mirror_mask is not None:
        x = xp.where(mirror_mask[:, None, None, None], x[..., ::-1], x)
    return x


EMBED_BATCH = 256


def embed(net, images_uint8, mirror: bool, batch_size: int = EMBED_BATCH, threads: int = 1) -> np.ndarray:
    """Embeddings (N, D) on the host for uint8 images; with ``mirror`` the embedding of each
    image is summed with that of its mirror image (the AM-Softmax deploy net).  The forward
    passes run in inference mode: no layer keeps its activations for a backward, so one
    network can run the parts of a batch on ``threads`` threads at once (amnp.parallel;
    NumPy only)."""
    split = BatchThreads(threads)

    def forward(_, x):
        with inference_mode():  # in each part's own thread: the mode is per thread
            return net.forward(x)

    def embeddings(x):
        parts = split.map(forward, x)
        return parts[0] if len(parts) == 1 else get_array_module(parts[0]).concatenate(parts)

    chunks = []
    for start in range(0, len(images_uint8), batch_size):
        x = preprocess(asarray(images_uint8[start:start + batch_size]))
        e = embeddings(x)
        if mirror:
            e = e + embeddings(x[..., ::-1])
        chunks.append(to_numpy(e))
    return np.concatenate(chunks).astype(np.float64)


def features(net, images_uint8, mirror: bool, threads: int = 1) -> np.ndarray:
    """L2-normalised embeddings (N, D), float64, with the ε-norm of amnp.functional (the
    cosine layer's); NonFiniteError when some are NaN or Inf (finite weights whose
    activations overflow float32).  ``threads``: as ``embed``'s."""
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, in one line
        found = l2_normalize_forward(embed(net, images_uint8, mirror, threads=threads))[0]
    broken = int(np.sum(~np.isfinite(found).all(axis=1)))
    if broken:
        raise NonFiniteError(f"gives NaN or Inf features for {broken} of the {len(found)} images "
                             "(its activations overflow float32)")
    return found


def held_out_metrics(net, images_uint8, labels, pairs, pair_same, pair_fold, mirror: bool, seed: int,
                     gallery=None, probes=None, threads: int = 1):
    """Every protocol of amnp.evaluation on held-out images: verification on the given
    pairs and folds and on all pairs of images, closed-set identification on
    ``gallery``/``probes`` (drawn from the labels with the seed when not given) and open-set
    DIR@FAR on a protocol drawn from the labels with the seed, each with a bootstrap
    interval over identities (amnp.statistics).  Returns (metrics dict, pair scores).
    ``threads``: as ``embed``'s."""
    embeddings = embed(net, images_uint8, mirror, threads=threads)
    if gallery is None:
        gallery, probes = make_gallery_probes(labels, np.random.default_rng(stream_seed(seed, "gallery")))
    gallery_open, genuine, impostors = make_open_set_protocol(
        labels, np.random.default_rng(stream_seed(seed, "open set")))
    metrics, scores = evaluate_with_intervals(
        embeddings, labels, pairs, pair_same, pair_fold, gallery, probes,
        open_set=(gallery_open, np.concatenate([genuine, impostors])), seed=seed)
    metrics["mirror_fused"] = bool(mirror)
    return metrics, scores


def evaluate(net, dataset, out_dir: str, seed: int = 0, threads: int = 1) -> tuple[dict, np.ndarray]:
    """Held-out verification (10-fold), TAR@FAR, EER, closed-set identification and open-set
    DIR@FAR; writes eval.json and the ROC and pair-score figures.  Returns the metrics and
    the cosine score of each pair.  ``threads``: as ``embed``'s."""
    metrics, scores = held_out_metrics(
        net, dataset.test_images, dataset.test_labels, dataset.pairs, dataset.pair_same,
        dataset.pair_fold, dataset.mirror, seed, dataset.gallery, dataset.probes, threads)
    rundir.write_json(os.path.join(out_dir, "eval.json"), metrics)
    far, tar, _ = roc_curve(scores, dataset.pair_same)
    figure_dir = os.path.join(out_dir, "figures")
    figures.plot_roc(far, tar, os.path.join(figure_dir, "roc.png"), tar_at_far=metrics["tar_at_far"])
    figures.plot_pair_histograms(scores, dataset.pair_same, os.path.join(figure_dir, "pair_cosines.png"),
                                 threshold=float(np.mean(metrics["fold_thresholds"])))
    return metrics, scores
