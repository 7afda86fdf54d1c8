"""Checks of Tutorial 9: the verification protocol."""
from __future__ import annotations

import math

import numpy as np

from amnp import evaluation

from .common import _as_float_array, _as_number, _close, _expect_tuple, _fail, _ok, _rng, guarded

# amnp's own versions of this tutorial's exercises: an answer that calls one scores 0
IMPLEMENTATIONS = (evaluation.best_threshold, evaluation.kfold_verification, evaluation.roc_curve,
                   evaluation.tar_at_far, evaluation.equal_error_rate, evaluation.dir_at_far,
                   evaluation.open_set_identification, evaluation.best_gallery_match, evaluation._dir_from_best,
                   evaluation._threshold_accuracy)


def _pairs(name, n=600, separation=1.5):
    rng = _rng(name)
    same = np.arange(n) % 2 == 0
    scores = np.round(np.where(same, rng.normal(separation, 1, n), rng.normal(0, 1, n)), 2)  # ties on purpose
    folds = (np.arange(n) // 2) % 10   # every fold holds same and different pairs
    return scores, same, folds


def check_best_threshold(best_threshold):
    """best_threshold(scores, same) -> t maximising the accuracy of 'same when score >= t'."""
    best_threshold = guarded(best_threshold, "best_threshold", IMPLEMENTATIONS)
    scores, same, _ = _pairs("threshold")
    t = _as_number(best_threshold(scores, same), "the threshold")
    best = np.mean((scores >= evaluation.best_threshold(scores, same)) == same)
    got = np.mean((scores >= t) == same)
    if got < best:
        flipped = np.mean((scores > t) == same)
        if flipped >= best:
            _fail(f"accuracy {got:.4f} at your threshold, best is {best:.4f}",
                  "the rule is score >= t; with tied scores, > and >= differ: use midpoints between distinct scores")
        _fail(f"accuracy {got:.4f} at your threshold {t:.4f}, the best threshold reaches {best:.4f}")
    _ok("best_threshold")


def check_kfold_accuracy(kfold_accuracy):
    """kfold_accuracy(scores, same, folds) -> mean test accuracy over the folds."""
    kfold_accuracy = guarded(kfold_accuracy, "kfold_accuracy", IMPLEMENTATIONS)
    scores, same, folds = _pairs("kfold", separation=1.0)
    want = evaluation.kfold_verification(scores, same, folds)["mean"]
    got = _as_number(kfold_accuracy(scores, same, folds), "the accuracy",
                     "return the mean over the folds, one number")
    if math.isclose(got, want, abs_tol=1e-12):
        _ok("kfold_accuracy", "threshold fitted on the other folds")
        return
    shown = f"accuracy {got:.4f}, expected {want:.4f}"

    def fold_accuracy(k, fitted_on):
        t = evaluation.best_threshold(scores[fitted_on], same[fitted_on])
        return np.mean((scores[folds == k] >= t) == same[folds == k])

    leaky = np.mean([fold_accuracy(k, folds == k) for k in range(10)])
    everything = np.mean((scores >= evaluation.best_threshold(scores, same)) == same)
    if math.isclose(got, leaky, abs_tol=1e-12) or math.isclose(got, everything, abs_tol=1e-12):
        _fail(f"{shown}: your threshold saw the test fold",
              "fit the threshold on the OTHER folds (folds != k), measure on fold k")
    honest = [fold_accuracy(k, folds != k) for k in range(10)]
    if any(math.isclose(got, np.mean(honest[:skip] + honest[skip + 1:]), abs_tol=1e-12) for skip in range(10)):
        _fail(f"{shown}: the mean of 9 folds, not 10",
              "loop over every fold: for k in np.unique(folds) (here 0..9), not range(1, 10) or range(9)")
    _fail(shown)


def check_roc(roc):
    """roc(scores, same) -> (far, tar), both starting at 0 and ending at 1."""
    roc = guarded(roc, "roc", IMPLEMENTATIONS)
    scores, same, _ = _pairs("roc")
    far, tar = (_as_float_array(a, name) for a, name in zip(_expect_tuple(roc(scores, same), ("far", "tar"), "roc"),
                                                            ("far", "tar")))
    want_far, want_tar, _ = evaluation.roc_curve(scores, same)
    if far.shape == want_far.shape and _close(far, want_tar) and _close(tar, want_far):
        _fail("far and tar are swapped", "FAR counts DIFFERENT pairs accepted, TAR counts SAME pairs accepted")
    if far.shape != want_far.shape or not (_close(far, want_far) and _close(tar, want_tar)):
        if far.size and (far[0] != 0 or tar[0] != 0 or far[-1] != 1 or tar[-1] != 1):
            _fail("the curve must run from (0, 0) (accept nothing) to (1, 1) (accept everything)")
        _fail("your ROC differs from amnp.evaluation.roc_curve",
              "one point per distinct score, thresholds descending; tied scores are accepted together")
    _ok("roc")


def check_tar_at_far(tar_at_far):
    """tar_at_far(scores, same, far) -> largest TAR whose FAR does not exceed far."""
    tar_at_far = guarded(tar_at_far, "tar_at_far", IMPLEMENTATIONS)
    scores, same, _ = _pairs("tar")
    for target in (1e-1, 1e-2, 1 / 300, 1e-4):
        want = evaluation.tar_at_far(scores, same, [target])[target]
        got = _as_number(tar_at_far(scores, same, target), "the TAR")
        if math.isclose(got, want, abs_tol=1e-12):
            continue
        if got > want:
            _fail(f"FAR {target:g}: TAR {got:.4f}, expected {want:.4f}",
                  "your threshold accepts more impostors than the target allows: at most "
                  "floor(target * #different) false accepts")
        _fail(f"FAR {target:g}: TAR {got:.4f}, expected {want:.4f}")
    _ok("tar_at_far")


def check_eer(eer):
    """eer(scores, same) -> equal error rate: FAR = 1 - TAR, interpolated linearly on the ROC
    segment where FAR - (1 - TAR) changes sign."""
    eer = guarded(eer, "eer", IMPLEMENTATIONS)
    scores, same, _ = _pairs("eer")
    want = evaluation.equal_error_rate(scores, same)
    got = _as_number(eer(scores, same), "the EER")
    if math.isclose(got, want, abs_tol=1e-9):
        _ok("eer", f"{got:.4f}")
        return
    shown = f"EER {got:.6f}, expected {want:.6f}"
    if math.isclose(1 - got, want, abs_tol=1e-9):
        _fail(shown, "the EER is an error rate: FAR (or FRR = 1 - TAR), not TAR")
    far, tar, _ = evaluation.roc_curve(scores, same)
    b = int(np.argmax(far - (1 - tar) >= 0))
    ends = (far[b], 1 - tar[b], far[b - 1], 1 - tar[b - 1], (far[b] + 1 - tar[b]) / 2,
            (far[b - 1] + 1 - tar[b - 1]) / 2)
    if any(math.isclose(got, end, abs_tol=1e-9) for end in ends):
        _fail(f"{shown}: a point of the ROC, not the crossing",
              "FAR and 1 - TAR are equal between two ROC points: interpolate linearly on the segment where "
              "FAR - (1 - TAR) changes sign")
    _fail(shown)


def _amnp_dir_at_far(gallery, gallery_labels, probes, probe_labels, far, normalise=True):
    """amnp.evaluation.dir_at_far on the cosine similarity (or, normalise=False, the plain dot
    product) of the probe and gallery embeddings, one target FAR."""
    if normalise:
        gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        probes = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    return evaluation.dir_at_far(probes @ gallery.T, gallery_labels, probe_labels, [far])[float(far)]


def _open_set(name):
    rng = _rng(name)
    ids = 40
    centres = rng.standard_normal((ids, 16))
    gallery_labels = np.arange(20)                       # identities 0..19 enrolled
    gallery = centres[:20] + 0.6 * rng.standard_normal((20, 16))
    probe_labels = rng.integers(0, ids, 400)             # half of them unseen identities
    probes = centres[probe_labels] + 0.6 * rng.standard_normal((400, 16))
    return gallery, gallery_labels, probes, probe_labels


def check_dir_at_far(dir_at_far):
    """dir_at_far(gallery, gallery_labels, probes, probe_labels, far) -> DIR at that FAR."""
    dir_at_far = guarded(dir_at_far, "dir_at_far", IMPLEMENTATIONS)
    gallery, gallery_labels, probes, probe_labels = _open_set("dir")
    for far in (0.1, 0.01, 0.0):
        want = _amnp_dir_at_far(gallery, gallery_labels, probes, probe_labels, far)
        got = _as_number(dir_at_far(gallery.copy(), gallery_labels, probes.copy(), probe_labels, far), "the DIR")
        if math.isclose(got, want, abs_tol=1e-12):
            continue
        if math.isclose(got, _amnp_dir_at_far(gallery, gallery_labels, probes, probe_labels, far, False),
                        abs_tol=1e-12):
            _fail(f"FAR {far}: DIR {got:.4f}, expected {want:.4f}: your scores are dot products",
                  "the scores are cosine similarities: L2-normalise the rows of the gallery and of the probes first")
        g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        p = probes / np.linalg.norm(probes, axis=1, keepdims=True)
        s = p @ g.T
        genuine = np.isin(probe_labels, gallery_labels)
        rank1 = float(np.mean((gallery_labels[s.argmax(axis=1)] == probe_labels)[genuine]))
        if math.isclose(got, rank1, abs_tol=1e-12):
            _fail(f"FAR {far}: {got:.4f} is the closed-set rank-1 rate",
                  "also require the best score to pass the threshold set on the impostor probes")
        if got > want:
            _fail(f"FAR {far}: DIR {got:.4f}, expected {want:.4f}",
                  "set the threshold from the IMPOSTOR probes' best scores (probes whose identity is not "
                  "enrolled), letting at most floor(far * #impostors) through")
        _fail(f"FAR {far}: DIR {got:.4f}, expected {want:.4f}")
    _ok("dir_at_far")


