"""Confidence intervals for the evaluation metrics, and paired comparisons over seeds.

Two sources of chance move a result: which identities were held out (the test set),
and the training run itself (initialisation, batches, the data drawn for the seed).

* Within one run, :func:`held_out_intervals` and :func:`all_pairs_intervals` give a 95%
  interval for each metric by a seeded bootstrap over *identities*: identities are drawn
  with replacement, and an identity drawn ``w`` times counts ``w`` times, so its
  same-identity pairs and its probes count ``w`` times and a pair of two identities
  ``w1 * w2`` times.  Resampling pairs instead would treat the 20 pairs of one person
  as independent evidence, which they are not.  Percentile intervals.
* Over seeds, :func:`mean_interval` gives a Student-t interval of the mean, and
  :func:`paired_difference` the t interval of the per-seed differences between two
  losses trained on the same data, initialisation and batches, with a verdict.  Each
  seed also draws its own held-out identities, so the spread over seeds holds both
  sources of chance.

How each metric is resampled (identity weights ``w``):

* 10-fold verification accuracy: each pair keeps the threshold of its fold, fitted on
  the other nine folds of the full protocol; a resample reweights the pairs and takes
  the mean of the weighted fold accuracies (folds that lose all their pairs are left
  out).  The interval thus covers which identities were tested, not the fitting of
  the thresholds (fitted on 5,400 pairs, they move far less).
* TAR@FAR and EER: recomputed on the reweighted pairs, thresholds included
  (:meth:`amnp.evaluation.ScoreSet.metrics`).
* Identification top-1 and DIR@FAR: the gallery stays whole; probes are reweighted by
  their identity, and DIR's threshold is recomputed from the reweighted impostors.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from .evaluation import (ALL_PAIRS_FARS, ScoreSet, all_pairs_verification, best_gallery_match,
                         evaluate_verification, far_key, pair_scores, weighted_rate_above_tail)
from .init import stream_seed

__all__ = [
    "CONFIDENCE",
    "RESAMPLES",
    "ALL_PAIRS_RESAMPLES",
    "evaluate_with_intervals",
    "all_pairs_with_intervals",
    "identity_resamples",
    "percentile_interval",
    "held_out_intervals",
    "all_pairs_intervals",
    "student_t_quantile",
    "mean_interval",
    "paired_difference",
    "percent_with_interval",
]

CONFIDENCE = 0.95
RESAMPLES = 1000  # for the metrics of the 10-fold pairs and the probes: milliseconds each
ALL_PAIRS_RESAMPLES = 200  # each recomputes thresholds over 5.5 million impostor pairs: ~40 ms


def evaluate_with_intervals(emb, labels, pairs, pair_same, pair_fold, gallery, probes, open_set=None,
                            seed=0, fars: Sequence[float] = (1e-2, 1e-3),
                            all_pairs_fars: Sequence[float] = ALL_PAIRS_FARS,
                            dir_fars: Sequence[float] = (1e-2, 1e-1)) -> tuple[dict, np.ndarray]:
    """:func:`amnp.evaluation.evaluate_verification`, plus all-pairs verification and a
    bootstrap interval for every headline metric.

    Adds to its metrics ``intervals`` (:func:`held_out_intervals`), ``bootstrap`` (unit,
    confidence, resamples, seed, seconds) and ``all_pairs`` (:func:`all_pairs_with_intervals`).
    The resamples are drawn from the streams "held-out bootstrap" and "all-pairs bootstrap"
    of ``seed`` (amnp.init.stream_seed), so every network evaluated on the same images is
    resampled the same way.
    """
    metrics, scores = evaluate_verification(emb, labels, pairs, pair_same, pair_fold, gallery, probes,
                                            fars=fars, open_set=open_set, dir_fars=dir_fars)
    started = time.perf_counter()
    metrics["intervals"] = held_out_intervals(
        emb, labels, pairs, pair_same, pair_fold, metrics["fold_thresholds"], gallery, probes,
        open_set=open_set, fars=fars, dir_fars=dir_fars, seed=stream_seed(seed, "held-out bootstrap"))
    metrics["bootstrap"] = {"unit": "identity", "confidence": CONFIDENCE, "resamples": RESAMPLES,
                            "seed": stream_seed(seed, "held-out bootstrap"),
                            "seconds": time.perf_counter() - started}
    metrics["all_pairs"] = all_pairs_with_intervals(emb, labels, seed, all_pairs_fars)
    return metrics, scores


def all_pairs_with_intervals(emb, labels, seed=0, fars: Sequence[float] = ALL_PAIRS_FARS) -> dict:
    """:func:`amnp.evaluation.all_pairs_verification`'s metrics, with ``intervals``
    (:func:`all_pairs_intervals`, resamples drawn from the stream "all-pairs bootstrap" of
    ``seed``) and
    ``bootstrap`` (unit, confidence, resamples, seed, seconds) added."""
    metrics, score_set = all_pairs_verification(emb, labels, fars)
    started = time.perf_counter()
    metrics["intervals"] = all_pairs_intervals(score_set, fars, seed=stream_seed(seed, "all-pairs bootstrap"))
    metrics["bootstrap"] = {"unit": "identity", "confidence": CONFIDENCE, "resamples": ALL_PAIRS_RESAMPLES,
                            "seed": stream_seed(seed, "all-pairs bootstrap"), "seconds": time.perf_counter() - started}
    return metrics


def identity_resamples(num_identities: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, num_identities) counts: how often each identity is drawn when
    ``num_identities`` identities are drawn with replacement."""
    if num_identities < 1 or resamples < 1:
        raise ValueError(f"need at least one identity and one resample, got {num_identities} and {resamples}")
    return rng.multinomial(num_identities, np.full(num_identities, 1.0 / num_identities), size=resamples)


def percentile_interval(replicates, confidence: float = CONFIDENCE) -> list[float] | None:
    """The central ``confidence`` interval of bootstrap replicates ``[low, high]``
    (resamples that left a metric undefined, NaN, are ignored); None if all are."""
    replicates = np.asarray(replicates, dtype=np.float64)
    replicates = replicates[~np.isnan(replicates)]
    if replicates.size == 0:
        return None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return [float(low), float(high)]


def _pair_weights(weights: np.ndarray, first: np.ndarray, second: np.ndarray, same: np.ndarray) -> np.ndarray:
    """(B, P) float64 weight of each pair: ``w[c]`` for a same-identity pair, ``w[c1] * w[c2]``
    otherwise; built in place, so that no other (B, P) array is held beside it."""
    weights = weights.astype(np.float64)  # (B, identities): cast before the (B, P) gathers
    pair_w = weights[:, first]
    pair_w[:, ~same] *= weights[:, second[~same]]
    return pair_w


def held_out_intervals(emb, labels, pairs, pair_same, pair_fold, fold_thresholds, gallery, probes,
                       open_set=None, fars: Sequence[float] = (1e-2, 1e-3),
                       dir_fars: Sequence[float] = (1e-2, 1e-1), seed=0,
                       resamples: int = RESAMPLES, confidence: float = CONFIDENCE) -> dict:
    """Bootstrap intervals (over identities) of the metrics of
    :func:`amnp.evaluation.evaluate_verification`, with its arguments and the fold
    thresholds it fitted; the resamples are drawn from ``np.random.default_rng(seed)``,
    so two networks evaluated on the same images get the same resamples.

    Returns ``{"verification_accuracy": [lo, hi], "tar_at_far": {far_key: [lo, hi]},
    "eer": [lo, hi], "identification_top1": [lo, hi]}`` and, with ``open_set``,
    ``"dir_at_far": {far_key: [lo, hi]}``.
    """
    labels = np.asarray(labels)
    _, identity = np.unique(labels, return_inverse=True)
    num_identities = int(identity.max()) + 1
    weights = identity_resamples(num_identities, resamples, np.random.default_rng(seed))
    pairs, same, folds = np.asarray(pairs), np.asarray(pair_same, dtype=bool), np.asarray(pair_fold)
    scores = pair_scores(emb, pairs)
    first, second = identity[pairs[:, 0]], identity[pairs[:, 1]]

    fold_ids, fold_index = np.unique(folds, return_inverse=True)
    correct = (scores >= np.asarray(fold_thresholds)[fold_index]) == same
    pair_w = _pair_weights(weights, first, second, same)
    in_fold = np.eye(fold_ids.size)[fold_index]  # (P, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        # a fold that a resample left without pairs has no accuracy (NaN): the mean is over the others
        fold_accuracy = pair_w @ (in_fold * correct[:, None]) / (pair_w @ in_fold)
        defined = ~np.isnan(fold_accuracy)
        accuracy = np.where(defined, fold_accuracy, 0.0).sum(axis=1) / defined.sum(axis=1)

    score_set = ScoreSet(scores[same], first[same], scores[~same], first[~same], second[~same],
                         num_identities)
    tars, eers = _score_set_replicates(score_set, fars, weights)

    emb = np.asarray(emb)
    _, matched = best_gallery_match(emb, labels, gallery, probes)
    probes = np.ravel(probes)
    probe_correct = matched == labels[probes]
    probe_w = weights[:, identity[probes]].astype(np.float64)
    top1 = (probe_w @ probe_correct) / probe_w.sum(axis=1)
    intervals = {
        "verification_accuracy": percentile_interval(accuracy, confidence),
        "tar_at_far": {far_key(far): percentile_interval(tars[:, k], confidence) for k, far in enumerate(fars)},
        "eer": percentile_interval(eers, confidence),
        "identification_top1": percentile_interval(top1, confidence),
    }
    if open_set is not None:
        rates = _dir_replicates(emb, labels, identity, *open_set, dir_fars, weights)
        intervals["dir_at_far"] = {far_key(far): percentile_interval(rates[:, k], confidence)
                                   for k, far in enumerate(dir_fars)}
    return intervals


def _score_set_replicates(score_set: ScoreSet, fars, weights) -> tuple[np.ndarray, np.ndarray]:
    """(B, len(fars)) TARs and (B,) EERs, one row per resample."""
    tars, eers = np.empty((len(weights), len(fars))), np.empty(len(weights))
    for b, w in enumerate(weights):
        found, eers[b] = score_set.metrics(fars, w)
        tars[b] = list(found.values())
    return tars, eers


def _dir_replicates(emb, labels, identity, gallery, probes, dir_fars, weights) -> np.ndarray:
    """(B, len(dir_fars)) DIR@FAR of the open-set protocol under each resample."""
    probes = np.ravel(probes)
    score, matched = best_gallery_match(emb, labels, gallery, probes)
    genuine = np.isin(labels[probes], labels[np.ravel(gallery)])
    # A genuine probe matched to another identity is never "detected and identified".
    positive = np.where(matched[genuine] == labels[probes][genuine], score[genuine], -np.inf)
    positive_order, negative_order = np.argsort(-positive, kind="stable"), np.argsort(-score[~genuine])
    positive_id = identity[probes][genuine][positive_order]
    negative_id = identity[probes][~genuine][negative_order]
    positive, negative = positive[positive_order], score[~genuine][negative_order]
    rates = np.empty((len(weights), len(dir_fars)))
    for b, w in enumerate(weights):
        found = weighted_rate_above_tail(positive, w[positive_id], negative, w[negative_id], dir_fars)
        rates[b] = list(found.values())
    return rates


def all_pairs_intervals(score_set: ScoreSet, fars: Sequence[float], seed=0,
                        resamples: int = ALL_PAIRS_RESAMPLES, confidence: float = CONFIDENCE) -> dict:
    """Bootstrap intervals (over identities) of all-pairs TAR@FAR and EER:
    ``{"tar_at_far": {far_key: [lo, hi]}, "eer": [lo, hi]}``."""
    weights = identity_resamples(score_set.num_identities, resamples, np.random.default_rng(seed))
    tars, eers = _score_set_replicates(score_set, fars, weights)
    return {"tar_at_far": {far_key(far): percentile_interval(tars[:, k], confidence)
                           for k, far in enumerate(fars)},
            "eer": percentile_interval(eers, confidence)}


# ---------------------------------------------------------------------- over seeds

def _two_sided_t_probability(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with an integer ``dof`` (Abramowitz and Stegun
    26.7.3-4: a finite series in cos(theta), theta = atan(t / sqrt(dof)))."""
    theta = math.atan(t / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    if dof % 2:  # odd
        term, series = math.cos(theta), 0.0
        for k in range(1, (dof - 1) // 2 + 1):
            series += term
            term *= cos2 * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + math.sin(theta) * series)
    term, series = 1.0, 0.0
    for k in range(1, dof // 2 + 1):
        series += term
        term *= cos2 * (2 * k - 1) / (2 * k)
    return math.sin(theta) * series


def student_t_quantile(confidence: float, dof: int) -> float:
    """The ``t`` with P(|T| <= t) = ``confidence`` for Student's t with ``dof`` (>= 1,
    integer) degrees of freedom, e.g. 2.776 for 95% and 4 (five seeds)."""
    if int(dof) != dof or dof < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {dof}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    low, high = 0.0, math.pi / 2  # bisection on theta: the probability grows with it
    for _ in range(100):
        middle = (low + high) / 2
        if _two_sided_t_probability(math.sqrt(dof) * math.tan(middle), int(dof)) < confidence:
            low = middle
        else:
            high = middle
    return math.sqrt(dof) * math.tan((low + high) / 2)


def mean_interval(values, confidence: float = CONFIDENCE) -> tuple[float, list[float] | None]:
    """Mean of per-seed values and its Student-t interval ``[low, high]`` (None for one value)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a 1-D array of at least one value, got shape {values.shape}")
    mean = float(values.mean())
    if values.size < 2:
        return mean, None
    half = student_t_quantile(confidence, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    return mean, [mean - half, mean + half]


def paired_difference(values, reference, higher_is_better: bool = True,
                      confidence: float = CONFIDENCE) -> dict:
    """The per-seed differences ``values - reference`` (same seeds, same order), their
    mean and t interval, and a verdict on ``values`` against ``reference``: "ahead" or
    "behind" when the interval excludes 0 (for a metric where lower is better, such as
    the EER, a negative difference is ahead), else "no difference resolved".  With one
    seed there is no interval, and the verdict says so."""
    values, reference = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if values.shape != reference.shape:
        raise ValueError(f"paired values need the same seeds: shapes {values.shape} and {reference.shape}")
    mean, interval = mean_interval(values - reference, confidence)
    if interval is None:
        verdict = "one seed: no interval"
    elif interval[0] > 0 or interval[1] < 0:
        verdict = "ahead" if (interval[0] > 0) == higher_is_better else "behind"
    else:
        verdict = "no difference resolved"
    return {"difference": mean, "interval": interval, "verdict": verdict, "seeds": int(values.size)}


def percent_with_interval(value: float, interval) -> str:
    """A rate as the summaries and tables print it, "95.90% [95.12, 96.58]" (the interval in
    brackets when there is one)."""
    if interval is None:
        return f"{100 * value:.2f}%"
    return f"{100 * value:.2f}% [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]"
