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


def _check_gallery_probes(emb: np.ndarray, labels, gallery, probes):
    """``labels`` (one per row of ``emb``) and the ``gallery`` and ``probe`` row indices
    (a non-empty gallery, disjoint from the probes) as arrays, or ValueError."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != emb.shape[0]:
        raise ValueError(
            f"labels must be a 1-D array with one entry per embedding ({emb.shape[0]}), "
            f"got shape {labels.shape}"
        )
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


def impostors_allowed(far: float, num_impostors: int) -> int:
    """How many of ``num_impostors`` may pass at a target FAR: ``floor(far * n)``
    (a relative tolerance of 1e-9 absorbs rounding, so 1e-2 of 300 allows 3).
    The FAR resolution is ``1 / num_impostors``: below it, no impostor may pass."""
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
