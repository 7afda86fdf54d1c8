"""Face-verification and identification protocols on host (NumPy) arrays.

A face-recognition network maps an image to an embedding vector. After
training with AM-Softmax the *direction* of that vector carries the identity,
so every protocol here compares L2-normalised embeddings with the cosine
similarity

    s(a, b) = <a, b> / (||a|| * ||b||)        (a value in [-1, 1]).

Verification ("are these two images the same person?") thresholds a pair
score: a pair is predicted "same" when ``score >= threshold``. From that rule
come the usual metrics:

* accuracy with the LFW 10-fold protocol (threshold fitted on 9 folds,
  accuracy measured on the held-out one),
* the ROC curve: TAR (true accept rate, fraction of same-identity pairs
  accepted) against FAR (false accept rate, fraction of different-identity
  pairs accepted) over all thresholds,
* TAR at a fixed FAR, and the equal error rate (EER) where FAR = 1 - TAR.

Identification ("who is this?") is measured two ways:

* closed-set rank-1 accuracy: each probe takes the label of its most similar
  gallery image, and every probe's identity is enrolled;
* open-set identification (BLUFR's DIR@FAR): some probes are impostors whose
  identity is not enrolled; a probe is accepted when its best gallery score
  passes a threshold set by the impostors (FAR), and the detection-and-
  identification rate (DIR) is the fraction of genuine probes accepted *and*
  matched to their own identity.

Every function accepts anything ``np.asarray`` understands, so CuPy
embeddings must be moved to the host first (``cupy.asnumpy``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from .functional.normalize import DEFAULT_EPS, l2_normalize_forward
from .validation import row_indices

__all__ = [
    "normalize_embeddings",
    "pair_scores",
    "best_threshold",
    "kfold_verification",
    "roc_curve",
    "tar_at_far",
    "equal_error_rate",
    "identification_top1",
    "best_gallery_match",
    "dir_at_far",
    "open_set_identification",
    "folds_share_identities",
    "evaluate_verification",
    "far_key",
    "ScoreSet",
    "pair_code",
    "all_pairs_scores",
    "all_pairs_verification",
    "weighted_rate_above_tail",
]


# --------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------


def _check_embeddings(emb: np.ndarray, name: str = "emb") -> np.ndarray:
    """Return ``emb`` as a 2-D float array, or raise ValueError."""
    emb = np.asarray(emb)
    if emb.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {emb.shape}")
    if not np.issubdtype(emb.dtype, np.floating):
        emb = emb.astype(np.float64)
    if not np.all(np.isfinite(emb)):
        raise ValueError(f"{name} contains NaN or inf")
    return emb


def _check_labels(emb: np.ndarray, labels) -> np.ndarray:
    """``labels`` as an array of one entry per row of ``emb``, or ValueError."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != emb.shape[0]:
        raise ValueError(f"labels must be a 1-D array with one entry per embedding ({emb.shape[0]}), "
                         f"got shape {labels.shape}")
    return labels


def _check_gallery_probes(emb: np.ndarray, labels, gallery, probes):
    """``labels`` (one per row of ``emb``) and the ``gallery`` and ``probe`` row indices
    (a non-empty gallery, disjoint from the probes) as arrays, or ValueError."""
    labels = _check_labels(emb, labels)
    gallery = row_indices(np.ravel(gallery), emb.shape[0], "gallery", "the embeddings")
    probes = row_indices(np.ravel(probes), emb.shape[0], "probes", "the embeddings")
    if gallery.size == 0:
        raise ValueError("the gallery must not be empty")
    if np.intersect1d(gallery, probes).size:
        raise ValueError("gallery and probes must be disjoint (a probe would match itself)")
    return labels, gallery, probes


def _check_same(same: np.ndarray, n: int) -> np.ndarray:
    """Return the same/different labels as a boolean array of length ``n``."""
    same = np.asarray(same)
    if same.ndim != 1:
        raise ValueError(f"same must be a 1-D array, got shape {same.shape}")
    if same.shape[0] != n:
        raise ValueError(f"scores and same have mismatched lengths: {n} vs {same.shape[0]}")
    if same.dtype != np.bool_:
        if not np.all(np.isin(same, (0, 1))):
            raise ValueError("same must be boolean or contain only 0 and 1")
        same = same.astype(bool)
    return same


def _check_scores_same(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate pair scores and same/different labels for a verification metric.

    Returns ``scores`` as float64 (P,) and ``same`` as bool (P,). Raises
    ValueError for a wrong shape, mismatched lengths, NaN/inf scores, or a set
    with no same-identity or no different-identity pair (TAR and FAR would
    then divide by zero, and a threshold could not be fitted meaningfully).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D array, got shape {scores.shape}")
    same = _check_same(same, scores.shape[0])
    if np.any(np.isnan(scores)):
        raise ValueError("scores contain NaN")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain inf")
    if not np.any(same):
        raise ValueError("need at least one same-identity pair, got none")
    if np.all(same):
        raise ValueError("need at least one different-identity pair, got none")
    return scores, same


# --------------------------------------------------------------------------
# Embeddings and pair scores
# --------------------------------------------------------------------------


def normalize_embeddings(emb: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """L2-normalise each row exactly as the cosine layer does: ``x / sqrt(||x||² + eps)``.

    This is :func:`amnp.functional.l2_normalize_forward`, so the embedding scored
    here is the one the cosine layer saw in training (rows much shorter than
    sqrt(eps) shrink instead of growing to unit length).

    Parameters
    ----------
    emb : array_like, shape (N, D)
        Embeddings, one per row.
    eps : float
        Added under the square root, so that an all-zero row stays zero instead
        of becoming NaN (0 / 0).

    Returns
    -------
    ndarray, shape (N, D)
        Rows of unit length where ||x|| >> sqrt(eps); zero rows stay zero.
    """
    emb = _check_embeddings(emb)
    return l2_normalize_forward(emb, eps)[0]


def pair_scores(emb: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of the two images of each pair.

    ``score[p] = <e[i_p], e[j_p]>`` with ``e`` the L2-normalised embeddings
    and ``(i_p, j_p) = pairs[p]``.

    Parameters
    ----------
    emb : array_like, shape (N, D)
        Embeddings of all images.
    pairs : array_like of int, shape (P, 2)
        Row indices into ``emb`` of the two images of each pair.

    Returns
    -------
    ndarray, shape (P,)
        Cosine similarity of each pair, in [-1, 1].
    """
    emb = normalize_embeddings(emb)
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape (P, 2), got {pairs.shape}")
    pairs = row_indices(pairs, emb.shape[0], "pairs", "the embeddings")
    # Row-wise dot product of the two (P, D) blocks, without forming a P x P matrix.
    return np.einsum("pd,pd->p", emb[pairs[:, 0]], emb[pairs[:, 1]])


# --------------------------------------------------------------------------
# Thresholds and verification accuracy
# --------------------------------------------------------------------------


def _threshold_accuracy(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of ``score >= t`` for every candidate threshold ``t``.

    With ``u_0 < u_1 < ... < u_{m-1}`` the distinct scores, the candidates are
    ``u_0 - 1`` (accept everything), the midpoints ``(u_{i-1} + u_i) / 2``,
    and ``u_{m-1} + 1`` (reject everything): one threshold per way of cutting
    the sorted scores, so no other threshold can reach a different accuracy.

    Candidate ``i`` accepts exactly the scores ``>= u_i``, hence

        correct_i = #{same pairs with score >= u_i} + #{different pairs with score < u_i},

    both read off cumulative sums of per-distinct-score counts: O(P log P)
    for the sort instead of O(P^2) for re-thresholding every candidate.

    Returns
    -------
    thresholds : ndarray, shape (m + 1,)
        Candidate thresholds, ascending.
    accuracy : ndarray, shape (m + 1,)
        Fraction of correctly classified pairs for each candidate.
    """
    uniq, inverse = np.unique(scores, return_inverse=True)
    n_same_at = np.bincount(inverse, weights=same, minlength=uniq.size)
    n_diff_at = np.bincount(inverse, weights=~same, minlength=uniq.size)

    # Prepend 0 so that entry i counts the scores strictly below u_i.
    same_below = np.concatenate(([0.0], np.cumsum(n_same_at)))
    diff_below = np.concatenate(([0.0], np.cumsum(n_diff_at)))
    correct = (same_below[-1] - same_below) + diff_below

    thresholds = np.concatenate(([uniq[0] - 1.0], (uniq[:-1] + uniq[1:]) / 2, [uniq[-1] + 1.0]))
    return thresholds, correct / scores.size


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold that maximises the accuracy of predicting "same" when ``score >= t``.

    The candidates are the midpoints between consecutive distinct scores plus
    ``min(scores) - 1`` (accept all) and ``max(scores) + 1`` (reject all);
    see ``_threshold_accuracy``. Runs in O(P log P).

    Ties: when several thresholds reach the best accuracy, the **smallest**
    one wins (the most permissive rule among the best).

    Parameters
    ----------
    scores : array_like of float, shape (P,)
        Pair similarity scores.
    same : array_like of bool, shape (P,)
        True for same-identity pairs.

    Returns
    -------
    float
        The chosen threshold.
    """
    scores, same = _check_scores_same(scores, same)
    thresholds, accuracy = _threshold_accuracy(scores, same)
    # np.argmax returns the first maximum, i.e. the smallest threshold.
    return float(thresholds[np.argmax(accuracy)])


def kfold_verification(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """K-fold verification accuracy (the LFW "unrestricted" protocol).

    For each fold ``k`` the threshold is fitted with ``best_threshold`` on the
    pairs of all *other* folds, and the accuracy of ``score >= t`` is measured
    on fold ``k``: the test pairs never influence their own threshold.

    Parameters
    ----------
    scores : array_like of float, shape (P,)
        Pair similarity scores.
    same : array_like of bool, shape (P,)
        True for same-identity pairs.
    folds : array_like of int, shape (P,)
        Fold number of each pair (LFW: 10 folds of 600 pairs). At least two
        distinct values are needed.

    Returns
    -------
    dict
        ``accuracies`` : ndarray (K,), test accuracy of each fold, in the
        order of the sorted fold numbers;
        ``thresholds`` : ndarray (K,), threshold fitted for each fold;
        ``mean`` : float, mean of ``accuracies``;
        ``std`` : float, population standard deviation of ``accuracies``
        (``np.std`` with ``ddof=0``, as in the common LFW evaluation code).
    """
    scores, same = _check_scores_same(scores, same)
    folds = np.asarray(folds)
    if folds.ndim != 1 or folds.shape[0] != scores.shape[0]:
        raise ValueError(
            f"folds must be a 1-D array with one entry per pair ({scores.shape[0]}), "
            f"got shape {folds.shape}"
        )
    if not np.issubdtype(folds.dtype, np.integer):
        raise TypeError(f"folds must contain integer fold numbers, got dtype {folds.dtype}")
    fold_ids = np.unique(folds)
    if fold_ids.size < 2:
        raise ValueError(f"need at least 2 folds, got {fold_ids.size}")

    accuracies = np.empty(fold_ids.size)
    thresholds = np.empty(fold_ids.size)
    for k, fold in enumerate(fold_ids):
        test = folds == fold
        thresholds[k] = best_threshold(scores[~test], same[~test])
        accuracies[k] = np.mean((scores[test] >= thresholds[k]) == same[test])
    return {
        "accuracies": accuracies,
        "thresholds": thresholds,
        "mean": float(accuracies.mean()),
        "std": float(accuracies.std(ddof=0)),
    }


# --------------------------------------------------------------------------
# ROC, TAR@FAR, EER
# --------------------------------------------------------------------------


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic of the rule ``score >= t``.

    For a threshold ``t``

        TAR(t) = #{same pairs with score >= t} / #same        (true accept rate)
        FAR(t) = #{different pairs with score >= t} / #different  (false accept rate)

    The thresholds are ``+inf`` (accept nothing: the point (0, 0)) followed by
    every distinct score in descending order; the last one, the smallest
    score, accepts every pair: the point (1, 1). Pairs with tied scores are
    accepted together, so a tie between a same and a different pair gives a
    diagonal step, and there is exactly one ROC point per distinct score.

    Parameters
    ----------
    scores : array_like of float, shape (P,)
        Pair similarity scores.
    same : array_like of bool, shape (P,)
        True for same-identity pairs.

    Returns
    -------
    far : ndarray, shape (m + 1,)
        False accept rate, non-decreasing from 0 to 1.
    tar : ndarray, shape (m + 1,)
        True accept rate, non-decreasing from 0 to 1.
    thresholds : ndarray, shape (m + 1,)
        ``[inf, u_{m-1}, ..., u_0]`` with ``u`` the distinct scores.
    """
    scores, same = _check_scores_same(scores, same)
    uniq, inverse = np.unique(scores, return_inverse=True)
    # Counts per distinct score, reversed so that index 0 is the highest score.
    n_same_at = np.bincount(inverse, weights=same, minlength=uniq.size)[::-1]
    n_diff_at = np.bincount(inverse, weights=~same, minlength=uniq.size)[::-1]
    # Lowering the threshold to a score accepts every pair with that score.
    tp = np.concatenate(([0.0], np.cumsum(n_same_at)))
    fp = np.concatenate(([0.0], np.cumsum(n_diff_at)))
    thresholds = np.concatenate(([np.inf], uniq[::-1]))
    return fp / fp[-1], tp / tp[-1], thresholds


def tar_at_far(
    scores: np.ndarray, same: np.ndarray, fars: Sequence[float] = (1e-2, 1e-3)
) -> dict[float, float]:
    """True accept rate at a fixed false accept rate.

    For each target FAR, the result is the largest TAR among the thresholds
    whose FAR does not exceed the target, i.e. the threshold is chosen so that
    at most ``floor(target * D)`` of the ``D`` different-identity pairs are
    accepted (a relative tolerance of 1e-9 absorbs rounding in
    ``target * D``, so 1e-3 with 1000 impostors allows exactly one).

    Resolution: with ``D`` different pairs, FAR only takes the values
    ``0, 1/D, 2/D, ...``, so the smallest non-zero FAR that can be measured
    is ``1/D`` (3000 different pairs -> 3.3e-4). A target below ``1/D``
    allows no impostor at all: the result is the TAR at FAR = 0, i.e. with
    the threshold above every impostor score (0 when the best impostor
    scores at least as high as every genuine pair).

    Parameters
    ----------
    scores : array_like of float, shape (P,)
        Pair similarity scores.
    same : array_like of bool, shape (P,)
        True for same-identity pairs.
    fars : sequence of float
        Target false accept rates, each in [0, 1].

    Returns
    -------
    dict
        ``{target_far: tar}`` with float keys and float values in [0, 1].
    """
    far, tar, _ = roc_curve(scores, same)
    n_diff = int(np.count_nonzero(~np.asarray(same, dtype=bool)))
    false_accepts = np.rint(far * n_diff)  # exact integer counts of accepted impostors
    result = {}
    for target in fars:
        allowed = impostors_allowed(target, n_diff)
        # FAR (and TAR) only grow along the ROC, so the last admissible
        # point has the largest TAR; point 0, (0, 0), is always admissible.
        last = np.searchsorted(false_accepts, allowed, side="right") - 1
        result[float(target)] = float(tar[last])
    return result


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> float:
    """Equal error rate: the error where FAR equals FRR = 1 - TAR.

    Along the ROC (thresholds descending) ``FAR - FRR`` rises from -1 to +1.
    The EER is found on the first ROC segment where it becomes >= 0, by
    linear interpolation between the segment's two end points ``a`` and ``b``:

        d = FAR - FRR,   alpha = -d_a / (d_b - d_a),
        EER = FAR_a + alpha * (FAR_b - FAR_a)

    (the same value as FRR interpolated at that point).

    Parameters
    ----------
    scores : array_like of float, shape (P,)
        Pair similarity scores.
    same : array_like of bool, shape (P,)
        True for same-identity pairs.

    Returns
    -------
    float
        EER in [0, 1]; 0 for perfectly separated scores.
    """
    far, tar, _ = roc_curve(scores, same)
    d = far - (1.0 - tar)
    b = int(np.argmax(d >= 0))  # exists: the last point (1, 1) has d = 1
    if d[b] == 0:
        return float(far[b])
    a = b - 1  # b >= 1 because the first point (0, 0) has d = -1
    alpha = -d[a] / (d[b] - d[a])
    return float(far[a] + alpha * (far[b] - far[a]))


# --------------------------------------------------------------------------
# Identification
# --------------------------------------------------------------------------


def identification_top1(
    emb: np.ndarray,
    labels: np.ndarray,
    gallery: np.ndarray,
    probes: np.ndarray,
    chunk_size: int = 4096,
) -> float:
    """Closed-set rank-1 identification accuracy.

    Each probe is assigned the label of its most similar gallery image,

        pred(q) = labels[g*],   g* = argmax_g <e_q, e_g>,

    with ``e`` the L2-normalised embeddings, and the accuracy is the fraction
    of probes whose prediction equals their own label. The similarities are
    one matrix product per chunk of ``chunk_size`` probes, which bounds the
    memory at ``chunk_size * len(gallery)`` floats. When several gallery
    images tie, the first one in ``gallery`` order wins (``np.argmax``).

    Parameters
    ----------
    emb : array_like, shape (N, D)
        Embeddings of all images.
    labels : array_like of int, shape (N,)
        Identity of each image.
    gallery : array_like of int, shape (G,)
        Indices into ``emb`` of the enrolled images.
    probes : array_like of int, shape (Q,)
        Indices into ``emb`` of the query images. Must be disjoint from
        ``gallery`` (a probe would trivially find itself), and every probe
        identity must be enrolled in the gallery (closed set).
    chunk_size : int
        Number of probes per matrix product.

    Returns
    -------
    float
        Rank-1 accuracy in [0, 1].
    """
    emb = normalize_embeddings(emb)
    if np.size(probes) == 0:
        raise ValueError("gallery and probes must both be non-empty")
    labels, gallery, probes = _check_gallery_probes(emb, labels, gallery, probes)
    if not np.all(np.isin(labels[probes], labels[gallery])):
        raise ValueError("closed-set identification: every probe identity must appear in the gallery")
    _, matched = _best_matches(emb, labels, gallery, probes, chunk_size)
    return float(np.mean(matched == labels[probes]))


def best_gallery_match(
    emb: np.ndarray,
    labels: np.ndarray,
    gallery: np.ndarray,
    probes: np.ndarray,
    chunk_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Each probe's most similar gallery image: its cosine and its identity.

    ``score[q] = max_g <e_q, e_g>`` and ``matched[q] = labels[argmax_g <e_q, e_g>]``
    with ``e`` the L2-normalised embeddings. An identity enrolled with several
    images is thus scored by its best image (the maximum over its images).
    One matrix product per chunk of ``chunk_size`` probes bounds the memory at
    ``chunk_size * len(gallery)`` floats; ties go to the first gallery image.

    Parameters
    ----------
    emb : array_like, shape (N, D)
    labels : array_like of int, shape (N,)
    gallery, probes : array_like of int, shapes (G,) and (Q,)
        Row indices into ``emb``, disjoint; the gallery must not be empty.

    Returns
    -------
    score : ndarray, shape (Q,)
        Best cosine of each probe.
    matched : ndarray, shape (Q,)
        Identity of that best gallery image.
    """
    emb = normalize_embeddings(emb)
    return _best_matches(emb, *_check_gallery_probes(emb, labels, gallery, probes), chunk_size)


def _best_matches(emb, labels, gallery, probes, chunk_size):
    """``best_gallery_match`` on arguments already checked (``_check_gallery_probes``)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    gallery_emb_t = emb[gallery].T  # (D, G)
    score, best = np.empty(len(probes)), np.empty(len(probes), dtype=np.int64)
    for start in range(0, len(probes), chunk_size):  # a loop over chunks, not over probes
        sims = emb[probes[start : start + chunk_size]] @ gallery_emb_t  # (chunk, G)
        best[start : start + chunk_size] = np.argmax(sims, axis=1)
        score[start : start + chunk_size] = np.take_along_axis(
            sims, best[start : start + chunk_size, None], axis=1)[:, 0]
    return score, labels[gallery][best]


def _check_far(target: float) -> float:
    target = float(target)
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target FAR must lie in [0, 1], got {target}")
    return target


def impostors_allowed(far: float, num_impostors: float) -> int:
    """How many of ``num_impostors`` may pass at a target FAR: ``floor(far * n)``
    (a relative tolerance of 1e-9 absorbs rounding, so 1e-2 of 300 allows 3).
    The FAR resolution is ``1 / num_impostors``: below it, no impostor may pass.
    (``num_impostors`` may be a total weight of reweighted impostors.)"""
    return int(np.floor(_check_far(far) * num_impostors * (1 + 1e-9)))


def _dir_from_best(score, matched, probe_labels, genuine, fars) -> dict[float, float]:
    """DIR at each target FAR from each probe's best gallery match (see ``dir_at_far``)."""
    impostor_scores = np.sort(score[~genuine])[::-1]  # descending
    genuine_score = score[genuine]
    identified = matched[genuine] == probe_labels[genuine]
    result = {}
    for target in fars:
        k = impostors_allowed(target, impostor_scores.size)
        # At most k impostors pass "score > t" when t is the (k+1)-th best impostor
        # score; ties with it are refused together, never counted past k.
        threshold = impostor_scores[k] if k < impostor_scores.size else -np.inf
        result[float(target)] = float(np.mean(identified & (genuine_score > threshold)))
    return result


def dir_at_far(
    similarity: np.ndarray,
    gallery_labels: np.ndarray,
    probe_labels: np.ndarray,
    fars: Sequence[float] = (1e-2, 1e-1),
) -> dict[float, float]:
    """Open-set identification: detection-and-identification rate at rank 1 (BLUFR).

    A probe whose identity is enrolled in the gallery is *genuine*, any other
    probe is an *impostor*. Each probe's best gallery score is
    ``b_q = max_g similarity[q, g]``. For a target FAR the threshold ``t`` is
    the lowest that lets at most ``floor(FAR * n_impostors)`` impostors pass
    ``b_q > t``; then

        DIR(FAR) = #{genuine q : b_q > t and label(argmax_g) = label(q)} / #genuine.

    Resolution: FAR only takes the values ``0, 1/n, 2/n, ...`` for ``n``
    impostor probes, so a target below ``1/n`` means FAR = 0 (``t`` is the
    best impostor score). Ties: impostors tied at the threshold are all
    refused, and so are genuine probes with exactly that score.

    Parameters
    ----------
    similarity : array_like of float, shape (Q, G)
        Score of each probe against each gallery image.
    gallery_labels : array_like of int, shape (G,)
        Identity of each gallery image (an identity may have several).
    probe_labels : array_like of int, shape (Q,)
        Identity of each probe.
    fars : sequence of float
        Target false accept rates, each in [0, 1].

    Returns
    -------
    dict
        ``{target_far: dir}`` with values in [0, 1].
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    gallery_labels, probe_labels = np.asarray(gallery_labels), np.asarray(probe_labels)
    if similarity.ndim != 2 or similarity.shape != (probe_labels.size, gallery_labels.size):
        raise ValueError(
            f"similarity must have shape (probes, gallery) = ({probe_labels.size}, "
            f"{gallery_labels.size}), got {similarity.shape}")
    if not np.all(np.isfinite(similarity)):
        raise ValueError("similarity contains NaN or inf")
    genuine = _check_open_set(gallery_labels, probe_labels)
    best = np.argmax(similarity, axis=1)
    score = similarity[np.arange(probe_labels.size), best]
    return _dir_from_best(score, gallery_labels[best], probe_labels, genuine, fars)


def _check_open_set(gallery_labels: np.ndarray, probe_labels: np.ndarray) -> np.ndarray:
    """The genuine-probe mask; an open set needs at least one probe of each kind."""
    if gallery_labels.size == 0:
        raise ValueError("open-set identification needs a non-empty gallery")
    genuine = np.isin(probe_labels, gallery_labels)
    if not np.any(genuine):
        raise ValueError("open-set identification needs a genuine probe (an enrolled identity), got none")
    if np.all(genuine):
        raise ValueError("open-set identification needs an impostor probe (an identity not enrolled), "
                         "got none")
    return genuine


def open_set_identification(
    emb: np.ndarray,
    labels: np.ndarray,
    gallery: np.ndarray,
    probes: np.ndarray,
    fars: Sequence[float] = (1e-2, 1e-1),
    chunk_size: int = 4096,
) -> dict:
    """``dir_at_far`` on embeddings, without forming the (Q, G) matrix at once.

    Parameters
    ----------
    emb : array_like, shape (N, D)
    labels : array_like of int, shape (N,)
    gallery : array_like of int, shape (G,)
        Indices of the enrolled images (one or more per enrolled identity).
    probes : array_like of int, shape (Q,)
        Genuine and impostor probes, disjoint from ``gallery``.
    fars : sequence of float

    Returns
    -------
    dict
        ``dir_at_far`` (``{far_key: dir}``), ``impostors_allowed``
        (``{far_key: floor(far * n)}``: 0 means the FAR is below the
        protocol's resolution), ``gallery_identities``, ``gallery_images``,
        ``genuine_probes``, ``impostor_probes``.
    """
    emb = normalize_embeddings(emb)
    labels, gallery, probes = _check_gallery_probes(emb, labels, gallery, probes)
    genuine = _check_open_set(labels[gallery], labels[probes])
    score, matched = _best_matches(emb, labels, gallery, probes, chunk_size)
    rates = _dir_from_best(score, matched, labels[probes], genuine, fars)
    n_impostors = int(np.count_nonzero(~genuine))
    return {
        "dir_at_far": {far_key(far): rate for far, rate in rates.items()},
        "impostors_allowed": {far_key(far): impostors_allowed(far, n_impostors) for far in fars},
        "gallery_identities": int(np.unique(labels[gallery]).size),
        "gallery_images": int(gallery.size),
        "genuine_probes": int(np.count_nonzero(genuine)),
        "impostor_probes": n_impostors,
    }


# --------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------


def folds_share_identities(labels: np.ndarray, pairs: np.ndarray, folds: np.ndarray) -> bool:
    """True when some identity has images in the pairs of two different folds.

    LFW's folds hold disjoint people, so a threshold fitted on nine folds is
    tested on people it has never seen; when folds share identities, the
    k-fold accuracy no longer measures that.
    """
    labels, pairs, folds = np.asarray(labels), np.asarray(pairs), np.asarray(folds)
    label_fold = np.stack([labels[pairs].ravel(), np.repeat(folds, 2)], axis=1)
    identities_by_fold = np.unique(label_fold, axis=0)[:, 0]  # one row per (identity, fold)
    return bool(identities_by_fold.size != np.unique(identities_by_fold).size)


def far_key(far: float) -> str:
    """JSON-friendly key for a target FAR: ``1e-2 -> "1e-2"``, ``1.5e-3 -> "1.5e-3"``."""
    return np.format_float_scientific(float(far), trim="-", exp_digits=1)


def evaluate_verification(
    emb: np.ndarray,
    labels: np.ndarray,
    pairs: np.ndarray,
    pair_same: np.ndarray,
    pair_fold: np.ndarray,
    gallery: np.ndarray,
    probes: np.ndarray,
    fars: Sequence[float] = (1e-2, 1e-3),
    open_set: tuple[np.ndarray, np.ndarray] | None = None,
    dir_fars: Sequence[float] = (1e-2, 1e-1),
) -> tuple[dict, np.ndarray]:
    """Run every protocol of this module on one set of embeddings.

    Parameters
    ----------
    emb : array_like, shape (N, D)
        Embeddings of all images (e.g. from ``amnp.inference.embed``).
    labels : array_like of int, shape (N,)
        Identity of each image.
    pairs : array_like of int, shape (P, 2)
        Verification pairs, as row indices into ``emb``.
    pair_same : array_like of bool, shape (P,)
        True for same-identity pairs.
    pair_fold : array_like of int, shape (P,)
        Fold number of each pair for ``kfold_verification``.
    gallery, probes : array_like of int, shapes (G,) and (Q,)
        Disjoint index sets for ``identification_top1``.
    fars : sequence of float
        Target FARs for ``tar_at_far``.
    open_set : (gallery, probes), optional
        Index sets for ``open_set_identification`` (probes of enrolled and of
        unseen identities), e.g. from ``amnp.data.make_open_set_protocol``.
    dir_fars : sequence of float
        Target FARs for DIR@FAR.

    Returns
    -------
    metrics : dict
        Plain Python floats, ints and lists, ready for ``json.dump``:
        ``verification_accuracy`` (mean k-fold accuracy),
        ``verification_accuracy_std`` (ddof=0), ``fold_accuracies``,
        ``fold_thresholds``, ``tar_at_far`` (string keys made by ``far_key``,
        e.g. ``{"1e-2": ..., "1e-3": ...}``, because JSON object keys must be
        strings), ``eer``, ``identification_top1``, ``num_pairs``,
        ``num_same_pairs``, ``num_different_pairs``, ``num_folds``,
        ``folds_share_identities``, ``threshold`` (``best_threshold`` on all
        pairs: the decision rule to use on new pairs); with ``open_set`` also
        ``dir_at_far``, ``dir_impostors_allowed`` and ``open_set_gallery_identities``,
        ``open_set_gallery_images``, ``open_set_genuine_probes``, ``open_set_impostor_probes``.
    scores : ndarray, shape (P,)
        Pair cosine similarities, for plotting the ROC curve or histograms
        (the curve itself is too large to belong in the metrics).
    """
    scores = pair_scores(emb, pairs)
    same = _check_same(pair_same, scores.shape[0])
    kfold = kfold_verification(scores, same, pair_fold)
    tars = tar_at_far(scores, same, fars)
    metrics = {
        "verification_accuracy": kfold["mean"],
        "verification_accuracy_std": kfold["std"],
        "fold_accuracies": kfold["accuracies"].tolist(),
        "fold_thresholds": kfold["thresholds"].tolist(),
        "tar_at_far": {far_key(far): tar for far, tar in tars.items()},
        "eer": equal_error_rate(scores, same),
        "identification_top1": identification_top1(emb, labels, gallery, probes),
        "num_pairs": int(scores.shape[0]),
        "num_same_pairs": int(np.count_nonzero(same)),
        "num_different_pairs": int(np.count_nonzero(~same)),
        "num_folds": int(np.unique(pair_fold).size),
        "folds_share_identities": folds_share_identities(labels, pairs, pair_fold),
        "threshold": best_threshold(scores, same),
    }
    if open_set is not None:
        found = open_set_identification(emb, labels, *open_set, fars=dir_fars)
        metrics["dir_at_far"] = found.pop("dir_at_far")
        metrics["dir_impostors_allowed"] = found.pop("impostors_allowed")
        metrics.update({f"open_set_{name}": value for name, value in found.items()})
    return metrics, scores


# --------------------------------------------------------------------------
# Scores that remember whose they are: all pairs, and reweighted identities
# --------------------------------------------------------------------------


def _code_type(num_identities: int) -> np.dtype:
    """The smallest unsigned type that holds every pair code, ``num_identities ** 2 - 1``."""
    return np.min_scalar_type(max(num_identities ** 2 - 1, 0))


def pair_code(first, second, num_identities: int) -> np.ndarray:
    """One number for an unordered pair of identities: ``min * num_identities + max``,
    in the smallest unsigned type that holds ``num_identities ** 2``."""
    if num_identities > 1 << 16:
        raise ValueError(f"all-pairs statistics handle at most {1 << 16} identities, got {num_identities}")
    code_type = _code_type(num_identities)
    first, second = np.asarray(first).astype(code_type), np.asarray(second).astype(code_type)
    return np.minimum(first, second) * code_type.type(num_identities) + np.maximum(first, second)


def _pack(scores: np.ndarray, codes: np.ndarray, out: np.ndarray) -> None:
    """Write uint64 keys that sort like the float32 ``scores`` (ascending), with each
    pair code in the low 32 bits.  (A float's bits sort like the float once the sign
    bit is set on positives and every bit is flipped on negatives; -0.0 becomes 0.0.)"""
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    negative = bits >> np.uint32(31) == 1
    bits = np.where(negative, ~bits, bits | np.uint32(1 << 31))
    np.left_shift(bits.astype(np.uint64), np.uint64(32), out=out)
    out |= np.asarray(codes).astype(np.uint64)


def _unpack(keys: np.ndarray, num_identities: int, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """The float32 scores and pair codes of :func:`_pack`'s keys (a chunk at a time, so
    that no temporary is as large as the keys)."""
    scores = np.empty(keys.size, dtype=np.float32)
    codes = np.empty(keys.size, dtype=_code_type(num_identities))
    for start in range(0, keys.size, chunk):
        part = keys[start:start + chunk]
        codes[start:start + chunk] = part & np.uint64(0xFFFFFFFF)
        bits = (part >> np.uint64(32)).astype(np.uint32)
        positive = bits >> np.uint32(31) == 1
        scores[start:start + chunk] = np.where(positive, bits & np.uint32(0x7FFFFFFF), ~bits).view(np.float32)
    return scores, codes


class ScoreSet:
    """Genuine and impostor scores, each with the identities it came from.

    A genuine score belongs to one identity, an impostor score to two (identities
    are numbered ``0 .. num_identities - 1``).  :meth:`metrics` takes optional
    identity *weights*: an identity of weight ``w`` counts ``w`` times, so a genuine
    score counts ``w[c]`` times and an impostor score ``w[c1] * w[c2]`` times, which
    is what resampling identities with replacement does to the pairs
    (amnp.statistics).  Without weights the metrics are :func:`tar_at_far` and
    :func:`equal_error_rate` of the same scores.

    Scores are kept float32, sorted descending, each impostor with one code for its
    identity pair: 4 bytes per pair plus 1-4 for the code (5.5 million impostor
    pairs: about 33 MB).
    """

    def __init__(self, genuine, genuine_identity, impostor, impostor_first, impostor_second,
                 num_identities: int):
        impostor = np.asarray(impostor, dtype=np.float32)
        keys = np.empty(impostor.size, dtype=np.uint64)
        _pack(impostor, pair_code(impostor_first, impostor_second, num_identities), keys)
        self._build(genuine, genuine_identity, keys, num_identities)

    @classmethod
    def from_keys(cls, genuine, genuine_identity, keys: np.ndarray, num_identities: int) -> "ScoreSet":
        """From impostor keys written by :func:`_pack` (sorted here, in place)."""
        scores = cls.__new__(cls)
        scores._build(genuine, genuine_identity, keys, num_identities)
        return scores

    def _build(self, genuine, genuine_identity, keys, num_identities):
        genuine = np.asarray(genuine, dtype=np.float32)
        if genuine.size == 0:
            raise ValueError("need at least one same-identity pair, got none")
        if keys.size == 0:
            raise ValueError("need at least one different-identity pair, got none")
        if not np.all(np.isfinite(genuine)):
            raise ValueError("scores contain NaN or inf")
        self.num_identities = int(num_identities)
        order = np.argsort(genuine, kind="stable")[::-1]
        self.genuine = genuine[order]
        self.genuine_identity = np.asarray(genuine_identity, dtype=np.int64)[order]
        # One in-place sort of score-and-pair keys: no index array as large as the pairs.
        keys.sort()
        ascending, codes = _unpack(keys, num_identities)
        if not np.all(np.isfinite(ascending[[0, -1]])):
            raise ValueError("scores contain NaN or inf")
        n = ascending.size
        levels, level_starts = np.unique(-self.genuine, return_index=True)
        levels = -levels  # descending
        # Each distinct genuine score is a place where the ROC may cross FAR = FRR; the
        # impostors strictly above it and at or above it are counted there.
        self._genuine_above = level_starts
        self._genuine_at_or_above = np.append(level_starts[1:], self.genuine.size)
        positions = np.concatenate((n - np.searchsorted(ascending, levels, side="right"),
                                    n - np.searchsorted(ascending, levels, side="left")))
        self._eer_cuts = np.unique(positions[(positions > 0) & (positions < n)])
        self._eer_index = np.searchsorted(np.concatenate(([0], self._eer_cuts, [n])), positions)
        self.impostor = np.ascontiguousarray(ascending[::-1])
        del ascending
        self.impostor_pair = np.ascontiguousarray(codes[::-1])

    @property
    def num_genuine(self) -> int:
        return int(self.genuine.size)

    @property
    def num_impostor(self) -> int:
        return int(self.impostor.size)

    def metrics(self, fars: Sequence[float], identity_weights=None) -> tuple[dict[float, float], float]:
        """``({far: TAR}, EER)`` on the scores, each identity counted ``identity_weights[c]``
        times (default once).

        TAR follows :func:`tar_at_far`: at most ``floor(far * impostors)`` impostors may
        score at or above the threshold.  EER follows :func:`equal_error_rate`: along the
        ROC, FAR - FRR first becomes >= 0 at some genuine score level ``g`` (at the lowest
        one FRR = 0).  Between the level above it and ``g`` only impostors pass and TAR
        stays constant, so the crossing is either on that stretch (the EER is then its
        FRR, whatever the impostors' scores) or on the segment that ends at ``g``,
        interpolated.  So only the impostor weight above each genuine level is needed,
        not the whole ROC.  NaN where the weights leave no genuine or no impostor pair.
        """
        if identity_weights is None:
            genuine_w = np.ones(self.genuine.size)
            impostor_w = None
            impostor_total = float(self.impostor.size)
        else:
            w = np.asarray(identity_weights, dtype=np.int64)
            genuine_w = w[self.genuine_identity].astype(np.float64)
            # int32 products where they fit: half the memory traffic of the gather
            pair_type = np.int32 if int(w.max(initial=0)) ** 2 < 2 ** 31 else np.int64
            impostor_w = np.outer(w, w).astype(pair_type).ravel()[self.impostor_pair]
            impostor_total = float(impostor_w.sum(dtype=np.int64))
        genuine_total = genuine_w.sum()
        if genuine_total == 0 or impostor_total == 0:
            return {float(far): float("nan") for far in fars}, float("nan")
        tars = weighted_rate_above_tail(self.genuine, genuine_w, self.impostor, impostor_w, fars)

        genuine_cum = np.concatenate(([0.0], np.cumsum(genuine_w)))
        far_a, far_b = np.split(self._impostor_weight_above_levels(impostor_w) / impostor_total, 2)
        tar_a = genuine_cum[self._genuine_above] / genuine_total
        tar_b = genuine_cum[self._genuine_at_or_above] / genuine_total
        d_b = far_b - (1.0 - tar_b)
        level = int(np.argmax(d_b >= 0))
        d_a = far_a[level] - (1.0 - tar_a[level])
        if d_a >= 0:  # crossed while only impostors passed: FAR = FRR = 1 - TAR there
            eer = 1.0 - tar_a[level]
        elif d_b[level] == 0:
            eer = far_b[level]
        else:
            alpha = -d_a / (d_b[level] - d_a)
            eer = far_a[level] + alpha * (far_b[level] - far_a[level])
        return tars, float(eer)

    def _impostor_weight_above_levels(self, impostor_w) -> np.ndarray:
        """The impostor weight strictly above each genuine level, then at or above each:
        one pass over the impostors (sums between the cut points), not a full cumulative sum."""
        if impostor_w is None:
            at_cuts = np.concatenate(([0], self._eer_cuts, [self.impostor.size]))
        else:
            segments = np.add.reduceat(impostor_w, np.concatenate(([0], self._eer_cuts)), dtype=np.int64)
            at_cuts = np.concatenate(([0], np.cumsum(segments)))
        return at_cuts[self._eer_index].astype(np.float64)


def weighted_rate_above_tail(positive, positive_w, negative, negative_w,
                             fars: Sequence[float]) -> dict[float, float]:
    """The fraction of positives (by weight) above the threshold that lets at most
    ``floor(far * total negative weight)`` negatives pass: TAR@FAR for pair scores,
    DIR@FAR for probes (a genuine probe matched to the wrong identity has score -inf).

    ``positive`` and ``negative`` are sorted descending; ``negative_w`` None means one
    each.  The threshold is the highest negative score ``s*`` whose negatives at or above
    it weigh more than allowed; every negative tied with ``s*`` is refused with it, and a
    positive passes when ``> s*`` (no ``s*``: everything passes).  Weights are counts
    (identities drawn with replacement), so the arithmetic is exact.  Only as many
    negatives are summed as the largest allowance needs.  NaN without positive weight.
    """
    positive_total = float(np.sum(positive_w))
    negative_total = float(negative.size if negative_w is None else np.sum(negative_w, dtype=np.int64))
    if positive_total == 0:
        return {float(far): float("nan") for far in fars}
    allowed = {float(far): impostors_allowed(far, negative_total) for far in fars}
    if negative_w is None:
        first_over = allowed  # the (k + 1)-th negative is the first one too many
    else:
        length = min(negative.size, max(4096, 4 * max(allowed.values(), default=0)))
        negative_cum = np.cumsum(negative_w[:length], dtype=np.int64)
        if length < negative.size and negative_cum[-1] <= max(allowed.values()):
            negative_cum = np.cumsum(negative_w, dtype=np.int64)
        first_over = {far: int(np.searchsorted(negative_cum, k, side="right")) for far, k in allowed.items()}
    positive_ascending = positive[::-1]
    positive_cum_ascending = np.concatenate(([0.0], np.cumsum(positive_w[::-1])))
    result = {}
    for far, index in first_over.items():
        if index >= negative.size:  # the negatives never weigh more than allowed
            result[far] = 1.0
            continue
        at_or_below = np.searchsorted(positive_ascending, negative[index], side="right")
        result[far] = float((positive_total - positive_cum_ascending[at_or_below]) / positive_total)
    return result


ALL_PAIRS_FARS = (1e-3, 1e-4, 1e-5, 1e-6)


def all_pairs_scores(emb: np.ndarray, labels: np.ndarray, block_elements: int = 1 << 20) -> ScoreSet:
    """Every pair of distinct images scored (the IJB-B/C 1:1 protocol), in bounded memory.

    The cosine matrix is never formed: rows are taken in blocks of about
    ``block_elements / N`` images, each block's float64 product with the images after
    it (``block_elements`` floats, 8 MB by default) is split into same-identity and
    different-identity pairs, and only those scores are kept, each impostor as one
    8-byte key (float32 score and identity pair, :class:`ScoreSet`).

    Parameters
    ----------
    emb : array_like, shape (N, D)
    labels : array_like, shape (N,)
        Identity of each image; any values that compare equal for the same identity.

    Returns
    -------
    ScoreSet
        N(N-1)/2 scores; identities numbered in ``np.unique(labels)`` order.
    """
    emb = normalize_embeddings(emb)
    labels = _check_labels(emb, labels)
    identities, identity, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n = emb.shape[0]
    num_genuine = int(np.sum(counts * (counts - 1) // 2))
    keys = np.empty(n * (n - 1) // 2 - num_genuine, dtype=np.uint64)
    genuine, genuine_identity = [], []
    rows, filled = max(1, block_elements // max(n, 1)), 0
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sims = emb[start:stop] @ emb[start:].T  # (block, N - start): only pairs (i, j > i) are kept
        later = np.arange(start, n)[None, :] > np.arange(start, stop)[:, None]
        same = identity[start:stop, None] == identity[None, start:]
        genuine.append(sims[later & same])
        genuine_identity.append(np.broadcast_to(identity[start:stop, None], same.shape)[later & same])
        different = later & ~same
        count = int(np.count_nonzero(different))
        codes = pair_code(identity[start:stop, None], identity[None, start:], len(identities))
        _pack(sims[different].astype(np.float32), codes[different], keys[filled:filled + count])
        filled += count
    return ScoreSet.from_keys(np.concatenate(genuine), np.concatenate(genuine_identity), keys,
                              len(identities))


def all_pairs_verification(emb: np.ndarray, labels: np.ndarray,
                           fars: Sequence[float] = ALL_PAIRS_FARS) -> tuple[dict, ScoreSet]:
    """TAR at each FAR and the EER over every pair of images (:func:`all_pairs_scores`).

    Returns
    -------
    metrics : dict
        ``tar_at_far`` ({far_key: tar}), ``impostors_allowed`` ({far_key: floor(far * n)}:
        0 means the FAR is below what the protocol resolves, and the TAR is that at
        FAR = 0), ``eer``, ``num_images``, ``num_identities``, ``num_genuine_pairs``,
        ``num_impostor_pairs``, ``seconds`` (wall time of scoring and metrics).
    scores : ScoreSet
        For intervals (amnp.statistics.all_pairs_intervals).
    """
    started = time.perf_counter()
    scores = all_pairs_scores(emb, labels)
    tars, eer = scores.metrics(fars)
    metrics = {
        "tar_at_far": {far_key(far): tar for far, tar in tars.items()},
        "impostors_allowed": {far_key(far): impostors_allowed(far, scores.num_impostor) for far in fars},
        "eer": eer,
        "num_images": int(np.asarray(labels).size),
        "num_identities": scores.num_identities,
        "num_genuine_pairs": scores.num_genuine,
        "num_impostor_pairs": scores.num_impostor,
    }
    metrics["seconds"] = time.perf_counter() - started
    return metrics, scores
