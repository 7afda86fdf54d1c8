"""Tests for amnp.evaluation: hand-computed cases, naive references, properties."""

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from amnp import functional as F
from amnp.evaluation import (
    best_threshold,
    equal_error_rate,
    evaluate_verification,
    far_key,
    identification_top1,
    kfold_verification,
    normalize_embeddings,
    pair_scores,
    roc_curve,
    tar_at_far,
)

# Scores on a grid of multiples of 1/8: ties are frequent, and midpoints
# between grid values are exact in floating point, so re-applying a
# threshold reproduces exactly the cut it was computed for.
grid_scores = st.lists(st.integers(-8, 8).map(lambda k: k / 8), min_size=1, max_size=12)


@st.composite
def scored_pairs(draw):
    """(scores, same) with at least one same and one different pair."""
    genuine = draw(grid_scores)
    impostor = draw(grid_scores)
    scores = np.array(genuine + impostor)
    same = np.array([True] * len(genuine) + [False] * len(impostor))
    order = draw(st.permutations(range(scores.size)))
    return scores[list(order)], same[list(order)]


def accuracy_at(scores, same, t):
    return np.mean((scores >= t) == same)


def naive_roc(scores, same):
    """One point per threshold in [inf, distinct scores descending], by counting."""
    thresholds = np.concatenate(([np.inf], np.unique(scores)[::-1]))
    far = np.array([np.mean(scores[~same] >= t) for t in thresholds])
    tar = np.array([np.mean(scores[same] >= t) for t in thresholds])
    return far, tar, thresholds


# --------------------------------------------------------------------------
# Embeddings and pair scores
# --------------------------------------------------------------------------


def test_normalize_embeddings_unit_rows_and_zero_row():
    emb = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    out = normalize_embeddings(emb)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    assert not np.any(np.isnan(out))


def test_embeddings_are_normalised_as_the_cosine_layer_normalises_them():
    """The embedding scored here is the one the cosine layer saw: sqrt(||x||² + eps), not
    max(||x||, eps), which differ visibly for short rows."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((4, 3)) * np.array([[1.0], [1e-3], [1e-7], [0.0]])
    _, cache = F.cosine_forward(emb, rng.standard_normal((5, 3)))
    np.testing.assert_array_equal(normalize_embeddings(emb), cache.x_hat)
    np.testing.assert_allclose(pair_scores(emb, np.array([[0, 2], [1, 2]])),
                               [cache.x_hat[0] @ cache.x_hat[2], cache.x_hat[1] @ cache.x_hat[2]], rtol=1e-12)


def test_pair_scores_are_cosines():
    emb = np.array([[1.0, 0.0], [2.0, 2.0], [0.0, -3.0]])
    pairs = np.array([[0, 1], [0, 2], [1, 1], [2, 1]])
    s = np.sqrt(0.5)
    np.testing.assert_allclose(pair_scores(emb, pairs), [s, 0.0, 1.0, -s])


# --------------------------------------------------------------------------
# best_threshold and k-fold
# --------------------------------------------------------------------------


def test_best_threshold_separable_picks_midpoint():
    scores = np.array([0.1, 0.4, 0.6, 0.9])
    same = np.array([False, False, True, True])
    assert best_threshold(scores, same) == pytest.approx(0.5)


def test_best_threshold_ties_choose_smallest():
    # Accuracy 2/4 is reached by accepting everything, by t = 0.5 and by
    # rejecting everything; the smallest, "accept all" = min score - 1, wins.
    scores = np.array([0.2, 0.4, 0.6, 0.8])
    same = np.array([True, False, True, False])
    assert best_threshold(scores, same) == pytest.approx(0.2 - 1.0)


def test_best_threshold_accepts_integer_labels():
    assert best_threshold([0.1, 0.9], [0, 1]) == pytest.approx(0.5)


@settings(deadline=None, max_examples=150)
@given(scored_pairs())
def test_best_threshold_matches_brute_force(data):
    scores, same = data
    t = best_threshold(scores, same)
    # Every achievable cut is "accept scores >= u" for a score u, or reject all.
    candidates = np.concatenate((np.unique(scores), [np.inf]))
    accuracies = np.array([accuracy_at(scores, same, c) for c in candidates])
    best = accuracy_at(scores, same, t)
    assert best == pytest.approx(accuracies.max())
    # Tie rule: no cut at a smaller score reaches the same accuracy.
    smaller = candidates < t
    assert np.all(accuracies[smaller] < best - 1e-12)


def test_kfold_perfectly_separable():
    rng = np.random.default_rng(0)
    scores = np.concatenate((rng.uniform(0.5, 1.0, 100), rng.uniform(-1.0, 0.4, 100)))
    same = np.arange(200) < 100
    folds = np.arange(200) % 10
    result = kfold_verification(scores, same, folds)
    np.testing.assert_array_equal(result["accuracies"], np.ones(10))
    assert result["mean"] == 1.0 and result["std"] == 0.0
    assert result["thresholds"].shape == (10,)


def test_kfold_hand_made_example():
    # Fold 0 is separable, fold 1 is not.
    scores = np.array([0.1, 0.5, 0.25, 0.9, 0.2, 0.4, 0.6, 0.8])
    same = np.array([False, True, False, True, False, True, False, True])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = kfold_verification(scores, same, folds)
    # Fold 0 test: fitted on fold 1, where 0.3 (between 0.2 and 0.4) and 0.7
    # both reach 3/4; the smaller wins and classifies fold 0 perfectly.
    # Fold 1 test: fitted on fold 0 -> 0.375 (between 0.25 and 0.5), which
    # wrongly accepts the different pair at 0.6 -> 3/4.
    np.testing.assert_allclose(result["thresholds"], [0.3, 0.375])
    np.testing.assert_allclose(result["accuracies"], [1.0, 0.75])
    assert result["mean"] == pytest.approx(0.875)
    assert result["std"] == pytest.approx(0.125)  # ddof=0


@settings(deadline=None, max_examples=100)
@given(scored_pairs(), st.integers(2, 4))
def test_kfold_invariant_to_shifting_scores(data, k):
    # Only the positions of scores relative to each other matter: shifting
    # every score by 0.5 shifts the thresholds, not the fold accuracies
    # (exact on the 1/8 grid).
    scores, same = data
    folds = np.arange(scores.size) % k
    # Each training split needs both kinds of pair to fit a threshold.
    assume(all(0 < same[folds != f].sum() < (folds != f).sum() for f in range(k)))
    result = kfold_verification(scores, same, folds)
    shifted = kfold_verification(scores + 0.5, same, folds)
    np.testing.assert_array_equal(result["accuracies"], shifted["accuracies"])
    np.testing.assert_array_equal(shifted["thresholds"], result["thresholds"] + 0.5)
    assert 0.0 <= result["mean"] <= 1.0
    assert result["mean"] == pytest.approx(np.mean(result["accuracies"]))


# --------------------------------------------------------------------------
# ROC, TAR@FAR, EER
# --------------------------------------------------------------------------


def test_roc_small_case_with_ties():
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    same = np.array([True, True, False, False])
    far, tar, thresholds = roc_curve(scores, same)
    np.testing.assert_allclose(far, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(tar, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.5, 0.1])


@settings(deadline=None, max_examples=150)
@given(scored_pairs())
def test_roc_matches_naive_reference(data):
    scores, same = data
    far, tar, thresholds = roc_curve(scores, same)
    ref_far, ref_tar, ref_thresholds = naive_roc(scores, same)
    np.testing.assert_allclose(far, ref_far)
    np.testing.assert_allclose(tar, ref_tar)
    np.testing.assert_array_equal(thresholds, ref_thresholds)
    # Shape of a ROC: from (0, 0) to (1, 1), monotone, thresholds descending.
    assert (far[0], tar[0], far[-1], tar[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    assert np.all(np.diff(thresholds) < 0)


def test_tar_at_far_exact_with_1000_impostors():
    impostor = np.arange(1000) / 1000  # top two: 0.999, 0.998
    genuine = np.array([1.5] * 5 + [0.9985] * 3 + [0.5] * 2)
    scores = np.concatenate((genuine, impostor))
    same = np.arange(scores.size) < genuine.size
    result = tar_at_far(scores, same, fars=(0.0, 1e-4, 1e-3, 1e-2, 0.6, 1.0))
    # FAR 1e-3 -> at most 1 impostor (0.999) accepted -> threshold 0.9985.
    assert result[1e-3] == pytest.approx(0.8)
    # FAR 1e-2 -> at most 10 impostors (>= 0.990): the genuine 0.5 stay out.
    assert result[1e-2] == pytest.approx(0.8)
    # Below the resolution 1/1000 no impostor may pass: TAR at FAR = 0.
    assert result[1e-4] == pytest.approx(0.5)
    assert result[0.0] == pytest.approx(0.5)
    # FAR 0.6 -> 600 impostors (>= 0.4) accepted, so the genuine 0.5 are too.
    assert result[0.6] == pytest.approx(1.0)
    assert result[1.0] == pytest.approx(1.0)


def test_tar_at_far_zero_when_best_impostor_beats_all_genuine():
    scores = np.array([0.3, 0.4, 0.9, 0.1])
    same = np.array([True, True, False, False])
    assert tar_at_far(scores, same, fars=(0.1,)) == {0.1: 0.0}


@settings(deadline=None, max_examples=100)
@given(scored_pairs())
def test_tar_at_far_properties(data):
    scores, same = data
    targets = (0.0, 0.1, 0.25, 0.5, 1.0)
    result = tar_at_far(scores, same, fars=targets)
    values = [result[t] for t in targets]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert np.all(np.diff(values) >= 0)  # a looser FAR never lowers the TAR
    assert values[-1] == 1.0
    # Reference: the best TAR among ROC points within the FAR budget.
    far, tar, _ = naive_roc(scores, same)
    for t, v in zip(targets, values):
        assert v == pytest.approx(tar[far <= t + 1e-12].max())


def test_eer_perfect_separation_is_zero():
    scores = np.array([0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4])
    same = np.arange(8) < 4
    assert equal_error_rate(scores, same) == 0.0


def test_eer_symmetric_case():
    # One genuine pair (0.3) below and one impostor (0.7) above the rest:
    # at t = 0.7 both FAR and FRR are 1/3.
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1])
    same = np.array([True, True, True, False, False, False])
    assert equal_error_rate(scores, same) == pytest.approx(1 / 3)


def test_eer_interpolates_a_tied_segment():
    # The tie at 0.5 makes the ROC step diagonally from (0, 0.5) to (0.5, 1);
    # that segment crosses FAR = 1 - TAR at FAR = 0.25.
    scores = np.array([1.0, 0.5, 0.5, 0.0])
    same = np.array([True, True, False, False])
    assert equal_error_rate(scores, same) == pytest.approx(0.25)


def test_eer_fully_reversed_is_one():
    scores = np.array([0.0, 0.1, 0.8, 0.9])
    same = np.array([True, True, False, False])
    assert equal_error_rate(scores, same) == pytest.approx(1.0)


@settings(deadline=None, max_examples=100)
@given(scored_pairs())
def test_eer_in_unit_interval(data):
    assert 0.0 <= equal_error_rate(*data) <= 1.0


# --------------------------------------------------------------------------
# Identification
# --------------------------------------------------------------------------


def _identification_set():
    emb = np.array(
        [
            [2.0, 0.0, 0.0],  # 0: gallery, class 0 (norm 2: normalisation matters)
            [0.0, 1.0, 0.0],  # 1: gallery, class 1
            [0.0, 0.0, 5.0],  # 2: gallery, class 2
            [1.0, 0.1, 0.0],  # 3: probe, class 0 -> correct
            [0.1, 3.0, 0.2],  # 4: probe, class 1 -> correct
            [0.0, 0.2, 1.0],  # 5: probe, class 2 -> correct
            [0.9, 0.0, 0.1],  # 6: probe, class 2 -> nearest is class 0, wrong
        ]
    )
    labels = np.array([0, 1, 2, 0, 1, 2, 2])
    return emb, labels, np.array([0, 1, 2]), np.array([3, 4, 5, 6])


def test_identification_top1_constructed():
    emb, labels, gallery, probes = _identification_set()
    assert identification_top1(emb, labels, gallery, probes) == pytest.approx(0.75)
    # Chunking the probes changes nothing.
    assert identification_top1(emb, labels, gallery, probes, chunk_size=1) == pytest.approx(0.75)


# --------------------------------------------------------------------------
# evaluate_verification
# --------------------------------------------------------------------------


def test_evaluate_verification_keys_and_json():
    rng = np.random.default_rng(1)
    n_ids, per_id, dim = 12, 4, 16
    centres = rng.normal(size=(n_ids, dim))
    labels = np.repeat(np.arange(n_ids), per_id)
    emb = centres[labels] + 0.3 * rng.normal(size=(labels.size, dim))
    same_pairs = np.array([[i * per_id, i * per_id + 1] for i in range(n_ids)])
    diff_pairs = np.array([[i * per_id, ((i + 1) % n_ids) * per_id + 2] for i in range(n_ids)])
    pairs = np.concatenate((same_pairs, diff_pairs))
    pair_same = np.arange(pairs.shape[0]) < n_ids
    pair_fold = np.arange(pairs.shape[0]) % 4
    gallery = np.arange(n_ids) * per_id
    probes = np.setdiff1d(np.arange(labels.size), gallery)

    metrics, scores = evaluate_verification(emb, labels, pairs, pair_same, pair_fold, gallery, probes)
    expected = {
        "verification_accuracy", "verification_accuracy_std", "fold_accuracies",
        "fold_thresholds", "tar_at_far", "eer", "identification_top1", "num_pairs",
        "num_same_pairs", "num_different_pairs",
    }
    assert expected <= set(metrics)
    assert set(metrics["tar_at_far"]) == {"1e-2", "1e-3"}
    assert len(metrics["fold_accuracies"]) == 4
    assert metrics["num_pairs"] == 2 * n_ids
    assert scores.shape == (2 * n_ids,)
    assert 0.0 <= metrics["verification_accuracy"] <= 1.0
    # Clustered embeddings: identification is easy.
    assert metrics["identification_top1"] > 0.9
    # Everything round-trips through JSON as plain Python values.
    assert json.loads(json.dumps(metrics)) == metrics


def test_far_key():
    assert far_key(1e-2) == "1e-2"
    assert far_key(1e-3) == "1e-3"
    assert far_key(1.5e-4) == "1.5e-4"


# --------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------

S = np.array([0.1, 0.2, 0.8, 0.9])
Y = np.array([False, False, True, True])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: best_threshold(S, Y[:3]), "mismatched lengths"),
        (lambda: roc_curve(np.array([0.1, np.nan, 0.8, 0.9]), Y), "NaN"),
        (lambda: roc_curve(np.array([0.1, np.inf, 0.8, 0.9]), Y), "inf"),
        (lambda: equal_error_rate(S, np.zeros(4, bool)), "at least one same-identity"),
        (lambda: tar_at_far(S, np.ones(4, bool)), "at least one different-identity"),
        (lambda: best_threshold(S, np.array([0, 1, 2, 1])), "only 0 and 1"),
        (lambda: best_threshold(S.reshape(2, 2), Y), "1-D"),
        (lambda: tar_at_far(S, Y, fars=(1.5,)), r"target FAR must lie in \[0, 1\]"),
        (lambda: kfold_verification(S, Y, np.array([0, 1, 0])), "one entry per pair"),
        (lambda: kfold_verification(S, Y, np.zeros(4, int)), "at least 2 folds"),
        (lambda: pair_scores(np.eye(3), np.array([[0, 3]])), "out of range"),
        (lambda: pair_scores(np.eye(3), np.array([[0, -1]])), "out of range"),
        (lambda: pair_scores(np.eye(3), np.array([0, 1])), r"shape \(P, 2\)"),
        (lambda: normalize_embeddings(np.ones(3)), "2-D"),
        (lambda: normalize_embeddings(np.array([[np.nan, 1.0]])), "NaN"),
    ],
)
def test_bad_verification_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: kfold_verification(S, Y, np.array([0.0, 1.0, 0.0, 1.0])), "integer fold"),
        (lambda: pair_scores(np.eye(3), np.array([[0.0, 1.0]])), "pairs must hold integers, got dtype float64"),
    ],
)
def test_a_wrong_dtype_is_a_type_error(call, message):
    with pytest.raises(TypeError, match=message):
        call()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e, l, g, p: (e, l[:-1], g, p), "one entry per embedding"),
        (lambda e, l, g, p: (e, l, g, np.append(p, 0)), "disjoint"),
        (lambda e, l, g, p: (e, l, g[:2], p), "closed-set"),
        (lambda e, l, g, p: (e, l, g, np.append(p, 7)), "out of range"),
        (lambda e, l, g, p: (e, l, g, p[:0]), "non-empty"),
    ],
)
def test_bad_identification_inputs(change, message):
    args = change(*_identification_set())
    with pytest.raises(ValueError, match=message):
        identification_top1(*args)
