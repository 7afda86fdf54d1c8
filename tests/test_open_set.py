"""Open-set identification (DIR@FAR): hand-made scores, a brute-force reference, the protocol."""
import numpy as np
import pytest

from amnp.data import make_open_set_protocol
from amnp.evaluation import dir_at_far, evaluate_verification, folds_share_identities, open_set_identification

# Gallery: identity 0 once, identity 1 twice. Probes 0-3 are genuine, 4-13 impostors.
GALLERY_LABELS = np.array([0, 1, 1])
GENUINE = np.array([
    [0.9, 0.1, 0.2],    # identity 0, best 0.9, right
    [0.1, 0.3, 0.75],   # identity 1, best 0.75 on its second image, right
    [0.5, 0.95, 0.0],   # identity 0, best 0.95 on identity 1: wrong at every threshold
    [0.0, 0.55, 0.1],   # identity 1, best 0.55, right
])
IMPOSTOR_BEST = np.array([0.8, 0.6, 0.5, 0.4, 0.3, 0.3, 0.2, 0.1, 0.0, -0.1])


def hand_made():
    impostors = np.stack([IMPOSTOR_BEST, IMPOSTOR_BEST - 1, IMPOSTOR_BEST - 2], axis=1)
    probe_labels = np.concatenate([[0, 1, 0, 1], np.arange(7, 17)])
    return np.concatenate([GENUINE, impostors]), probe_labels


def test_dir_at_far_hand_made():
    similarity, probe_labels = hand_made()
    rates = dir_at_far(similarity, GALLERY_LABELS, probe_labels, fars=(1e-2, 1e-1, 0.3, 1.0))
    # 10 impostors: FAR 1e-2 lets none pass (threshold 0.8: only probe 0);
    # 1e-1 lets one (threshold 0.6: probes 0, 1); 0.3 three (0.4: probes 0, 1, 3); 1 all.
    assert rates == {1e-2: 0.25, 1e-1: 0.5, 0.3: 0.75, 1.0: 0.75}


def test_ties_at_the_threshold_are_refused_together():
    similarity, probe_labels = hand_made()
    similarity[4:6, 0] = 0.6       # two impostors tied at 0.6, then 0.5 ...
    similarity[1, 2] = 0.6         # a right genuine probe exactly at 0.6
    rates = dir_at_far(similarity, GALLERY_LABELS, probe_labels, fars=(0.1, 0.2))
    # FAR 0.1 allows one impostor, but the two tied ones pass or fail together: both
    # fail, and so does the genuine probe at 0.6 (only probe 0 passes). FAR 0.2: both
    # pass, threshold 0.5, probes 0, 1 and 3 pass.
    assert rates == {0.1: 0.25, 0.2: 0.75}


def naive_dir(similarity, gallery_labels, probe_labels, far):
    """Try every threshold; keep the best DIR among those with few enough impostors."""
    genuine = np.isin(probe_labels, gallery_labels)
    best = [(row.max(), gallery_labels[row.argmax()]) for row in similarity]
    allowed = np.floor(far * (~genuine).sum() * (1 + 1e-9))
    result = 0.0
    for t in [-np.inf] + [b for b, _ in best]:
        passed = [b > t for b, _ in best]
        if sum(p for p, g in zip(passed, genuine) if not g) <= allowed:
            right = [p and m == y for p, (_, m), y, g in zip(passed, best, probe_labels, genuine) if g]
            result = max(result, float(np.mean(right)))
    return result


@pytest.mark.parametrize("seed", range(6))
def test_dir_at_far_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    gallery_labels = rng.integers(0, 4, 6)
    probe_labels = rng.integers(0, 8, 40)
    probe_labels[:2] = gallery_labels[0], 7 if 7 not in gallery_labels else 6
    if np.isin(probe_labels, gallery_labels).all():
        probe_labels[1] = 99
    similarity = np.round(rng.uniform(-1, 1, (40, 6)) * 4) / 4  # a coarse grid: many ties
    fars = (0.0, 1e-2, 0.05, 0.1, 0.5, 1.0)
    rates = dir_at_far(similarity, gallery_labels, probe_labels, fars)
    for far in fars:
        assert rates[far] == pytest.approx(naive_dir(similarity, gallery_labels, probe_labels, far)), far


def test_open_set_identification_on_embeddings_equals_the_score_matrix_version():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(30, 5))
    labels = np.repeat(np.arange(10), 3)
    gallery, genuine, impostors = make_open_set_protocol(labels, np.random.default_rng(0))
    probes = np.concatenate([genuine, impostors])
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    expected = dir_at_far(unit[probes] @ unit[gallery].T, labels[gallery], labels[probes])
    found = open_set_identification(emb, labels, gallery, probes, chunk_size=4)  # several chunks
    assert found["dir_at_far"] == {"1e-2": expected[1e-2], "1e-1": expected[1e-1]}
    assert found["impostor_probes"] == len(impostors) == 21
    assert found["impostors_allowed"] == {"1e-2": 0, "1e-1": 2}
    assert (found["gallery_identities"], found["gallery_images"], found["genuine_probes"]) == (3, 3, 6)


@pytest.mark.parametrize("gallery_labels, probe_labels, message", [
    ([0, 1], [0, 1], "needs an impostor probe"),
    ([0, 1], [5, 6], "needs a genuine probe"),
    ([], [5, 6], "non-empty gallery"),
])
def test_dir_at_far_refuses_a_protocol_without_both_kinds_of_probe(gallery_labels, probe_labels, message):
    similarity = np.zeros((len(probe_labels), len(gallery_labels)))
    with pytest.raises(ValueError, match=message):
        dir_at_far(similarity, np.array(gallery_labels), np.array(probe_labels))


def test_dir_at_far_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        dir_at_far(np.zeros((3, 2)), np.array([0, 1]), np.array([0, 5]))
    with pytest.raises(ValueError, match="NaN"):
        dir_at_far(np.array([[np.nan], [0.0]]), np.array([0]), np.array([0, 5]))
    with pytest.raises(ValueError, match="target FAR"):
        dir_at_far(np.zeros((2, 1)), np.array([0]), np.array([0, 5]), fars=(2.0,))


def test_open_set_protocol():
    labels = np.repeat(np.arange(12), [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 6, 2])
    gallery, genuine, impostors = make_open_set_protocol(labels, np.random.default_rng(7))
    everything = np.concatenate([gallery, genuine, impostors])
    assert np.array_equal(np.sort(everything), np.arange(len(labels))), "a partition of the images"
    enrolled = np.unique(labels[gallery])
    assert len(enrolled) == len(gallery) == 4, "a third of 12 identities, one image each"
    assert np.array_equal(np.unique(labels[genuine]), enrolled), "every enrolled identity is probed"
    assert not np.isin(labels[impostors], enrolled).any()
    again = make_open_set_protocol(labels, np.random.default_rng(7))
    assert all(np.array_equal(a, b) for a, b in zip(again, (gallery, genuine, impostors)))
    gallery, genuine, _ = make_open_set_protocol(labels, np.random.default_rng(7), enrolled_per_identity=3)
    counts = np.unique(labels[gallery], return_counts=True)[1]
    assert np.all(counts <= 3) and np.isin(np.unique(labels[genuine]), labels[gallery]).all()


@pytest.mark.parametrize("labels", [[0, 0, 0], [0, 1, 2, 3]])
def test_open_set_protocol_needs_an_enrollable_and_an_unseen_identity(labels):
    with pytest.raises(ValueError, match="open-set identification needs"):
        make_open_set_protocol(labels, np.random.default_rng(0))


def test_folds_share_identities():
    labels = np.array([0, 0, 1, 1, 2, 2])
    pairs = np.array([[0, 1], [0, 2], [4, 5], [3, 5]])
    assert folds_share_identities(labels, pairs, np.array([0, 0, 1, 1]))  # identity 1 in both
    assert not folds_share_identities(labels, pairs[[0, 2]], np.array([0, 1]))


def test_evaluate_verification_reports_the_open_set_and_the_threshold():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(9), 3)
    emb = rng.normal(size=(9, 8))[labels] + 0.05 * rng.normal(size=(27, 8))
    pairs = np.array([[0, 1], [3, 4], [0, 3], [6, 9], [12, 13], [15, 16], [12, 15], [18, 21]])
    same = labels[pairs[:, 0]] == labels[pairs[:, 1]]
    gallery, genuine, impostors = make_open_set_protocol(labels, np.random.default_rng(0))
    metrics, scores = evaluate_verification(
        emb, labels, pairs, same, np.repeat([0, 1], 4), gallery, genuine,
        open_set=(gallery, np.concatenate([genuine, impostors])))
    assert metrics["num_folds"] == 2 and metrics["folds_share_identities"] is False
    assert np.all((scores >= metrics["threshold"]) == same), "separable pairs: the threshold splits them"
    assert metrics["dir_at_far"] == {"1e-2": 1.0, "1e-1": 1.0}
    assert metrics["open_set_impostor_probes"] == 18 and metrics["dir_impostors_allowed"]["1e-1"] == 1
