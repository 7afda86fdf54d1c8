"""All-pairs verification against brute force, the identity bootstrap against a known
distribution, Student-t intervals and the paired verdicts of amnp.statistics."""
import json

import numpy as np
import pytest

from amnp import cli, statistics
from amnp.data import make_gallery_probes, make_open_set_protocol
from amnp.evaluation import (ScoreSet, all_pairs_scores, all_pairs_verification, dir_at_far, equal_error_rate,
                             evaluate_verification, pair_code, pair_scores, tar_at_far, weighted_rate_above_tail)
from amnp.statistics import (held_out_intervals, identity_resamples, mean_interval, paired_difference,
                             percentile_interval, student_t_quantile)

from .test_inference_cli import trained, write_tree  # noqa: F401 (a fixture)

FARS = (0.5, 1e-1, 3e-2, 1e-2, 1e-3, 0.0, 1.0)


def labelled_pairs(rng, identities):
    """Every pair of a few images per identity: (identity of each image, i, j, same)."""
    identity = np.repeat(np.arange(identities), rng.integers(2, 6, identities))
    i, j = np.triu_indices(identity.size, 1)
    return identity, i, j, identity[i] == identity[j]


@pytest.mark.parametrize("trial", range(30))
def test_score_set_equals_the_reference_metrics_on_the_pairs_an_identity_resample_gives(trial):
    """ScoreSet.metrics with identity weights w = the reference tar_at_far and
    equal_error_rate on the pairs written out: each genuine pair w[c] times, each
    impostor pair w[c1] * w[c2] times (ties included: scores rounded to 0-2 decimals)."""
    rng = np.random.default_rng(trial)
    identities = int(rng.integers(3, 9))
    identity, i, j, same = labelled_pairs(rng, identities)
    scores = np.round(rng.normal(same * 1.0, 1.0), trial % 3).astype(np.float32)
    score_set = ScoreSet(scores[same], identity[i][same], scores[~same], identity[i][~same], identity[j][~same],
                         identities)
    for weights in (None, rng.multinomial(identities, np.full(identities, 1 / identities))):
        copies = (np.ones(scores.size, int) if weights is None else
                  np.where(same, weights[identity[i]], weights[identity[i]] * weights[identity[j]]))
        written_out, written_same = np.repeat(scores, copies).astype(np.float64), np.repeat(same, copies)
        tars, eer = score_set.metrics(FARS, weights)
        if written_same.all() or not written_same.any():
            assert np.isnan(eer)
            continue
        expected = tar_at_far(written_out, written_same, FARS)
        assert tars == pytest.approx(expected, abs=1e-12)
        assert eer == pytest.approx(equal_error_rate(written_out, written_same), abs=1e-12)


@pytest.mark.parametrize("block_elements", [1, 7, 40, 1 << 20])
def test_all_pairs_are_every_pair_once_whatever_the_block(block_elements):
    rng = np.random.default_rng(block_elements)
    labels = np.repeat(np.array([5, 9, 2, 7, 11]), [3, 1, 4, 2, 5])
    emb = rng.normal(size=(labels.size, 6))
    found = all_pairs_scores(emb, labels, block_elements=block_elements)
    i, j = np.triu_indices(labels.size, 1)
    same = labels[i] == labels[j]
    brute = pair_scores(emb, np.stack([i, j], 1))
    np.testing.assert_allclose(np.sort(found.genuine), np.sort(brute[same]), atol=1e-6)
    identity = np.unique(labels, return_inverse=True)[1]
    # each impostor score with its own identity pair: sorted by (pair, score) on both sides
    expected = sorted(zip(pair_code(identity[i][~same], identity[j][~same], 5).tolist(), brute[~same].tolist()))
    got = sorted(zip(found.impostor_pair.tolist(), found.impostor.tolist()))
    assert [code for code, _ in got] == [code for code, _ in expected]
    np.testing.assert_allclose([score for _, score in got], [score for _, score in expected], atol=1e-6)
    assert (found.num_genuine, found.num_impostor) == (int(same.sum()), int((~same).sum()))


def test_all_pairs_verification_agrees_with_brute_force_metrics():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(40), 6)
    emb = rng.normal(size=(40, 16))[labels] + rng.normal(0, 1.2, (labels.size, 16))
    metrics, _ = all_pairs_verification(emb, labels, fars=(1e-1, 1e-2, 1e-3, 1e-4))
    i, j = np.triu_indices(labels.size, 1)
    scores = pair_scores(emb, np.stack([i, j], 1)).astype(np.float32).astype(np.float64)
    same = labels[i] == labels[j]
    expected = tar_at_far(scores, same, (1e-1, 1e-2, 1e-3, 1e-4))
    assert list(metrics["tar_at_far"].values()) == pytest.approx(list(expected.values()), abs=1e-12)
    assert metrics["eer"] == pytest.approx(equal_error_rate(scores, same), abs=1e-12)
    assert metrics["num_genuine_pairs"] == 40 * 15 and metrics["num_impostor_pairs"] == 240 * 239 // 2 - 600
    assert metrics["impostors_allowed"] == {"1e-1": 2808, "1e-2": 280, "1e-3": 28, "1e-4": 2}


def test_the_identity_bootstrap_of_a_mean_has_the_known_spread_and_coverage():
    """Resampling C identities with replacement, the mean of per-identity values has
    standard deviation sigma_pop / sqrt(C) (sigma_pop: the values' population standard
    deviation), and its 95% percentile interval covers the true mean about 95% of the time."""
    rng = np.random.default_rng(0)
    values = rng.normal(0.7, 0.1, 60)
    weights = identity_resamples(60, 4000, np.random.default_rng(1))
    assert weights.shape == (4000, 60) and np.all(weights.sum(axis=1) == 60)
    replicates = weights @ values / 60
    assert replicates.std() == pytest.approx(values.std() / np.sqrt(60), rel=0.05)

    covered, experiments = 0, 400
    for experiment in range(experiments):
        sample = rng.normal(0.7, 0.1, 60)
        weights = identity_resamples(60, 500, np.random.default_rng(experiment))
        low, high = percentile_interval(weights @ sample / 60)
        covered += low <= 0.7 <= high
    assert 0.91 <= covered / experiments <= 0.98  # 95% with its binomial spread (sd 1.1%)


def test_percentile_interval_ignores_undefined_resamples():
    assert percentile_interval([np.nan, np.nan]) is None
    assert percentile_interval([1.0, np.nan, 1.0]) == [1.0, 1.0]
    assert percentile_interval(np.arange(101.0), confidence=0.9) == pytest.approx([5.0, 95.0])


@pytest.mark.parametrize("dof, quantile", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764),
                                           (10, 2.2281), (30, 2.0423)])
def test_student_t_quantiles_match_the_tables(dof, quantile):
    assert student_t_quantile(0.95, dof) == pytest.approx(quantile, abs=1e-4)


def test_mean_interval_is_the_t_interval_and_covers_as_promised():
    mean, (low, high) = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and high - 3.0 == pytest.approx(2.7764 * np.sqrt(2.5) / np.sqrt(5), abs=1e-4)
    assert mean_interval([0.4]) == (0.4, None)
    rng = np.random.default_rng(2)
    covered = sum(low <= 0 <= high for low, high in (mean_interval(rng.normal(0, 1, 5))[1] for _ in range(2000)))
    assert 0.93 <= covered / 2000 <= 0.97


def test_paired_verdicts_on_constructed_differences():
    reference = np.array([0.90, 0.92, 0.88, 0.91, 0.89])
    ahead = paired_difference(reference + [0.010, 0.012, 0.008, 0.011, 0.009], reference)
    assert ahead["verdict"] == "ahead" and ahead["difference"] == pytest.approx(0.01)
    assert ahead["interval"][0] > 0 and ahead["seeds"] == 5
    assert paired_difference(reference - 0.01, reference)["verdict"] == "behind"
    # Differences of both signs: the interval holds 0, though the mean is positive.
    mixed = paired_difference(reference + [0.02, -0.01, 0.015, -0.005, 0.0], reference)
    assert mixed["verdict"] == "no difference resolved" and mixed["difference"] > 0
    # For an error rate, lower is better: a lower EER on every seed is ahead.
    assert paired_difference(reference - 0.01, reference, higher_is_better=False)["verdict"] == "ahead"
    # Pairing matters: the same values, unpaired, would overlap; paired, every seed gains.
    shifted = reference + 0.005
    assert paired_difference(shifted, reference)["verdict"] == "ahead"
    assert mean_interval(shifted)[1][0] < mean_interval(reference)[1][1]
    assert paired_difference([0.9], [0.8])["verdict"] == "one seed: no interval"
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([0.9, 0.8], [0.8])


def test_eval_all_pairs_on_an_unseen_tree_agrees_with_embed_features(trained, tmp_path, capsys):
    """`amnp eval --all-pairs` on identities the run never saw = the same metrics computed
    here, independently, from `amnp embed`'s saved features over every pair."""
    tree = write_tree(tmp_path / "unseen", [f"stranger{k}" for k in range(12)], 5, seed=7)
    out = tmp_path / "all-pairs.json"
    assert cli.main(["eval", str(trained["run"]), "--images", str(tree), "--all-pairs", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert cli.main(["embed", str(trained["run"]), "--images", str(tree), "--out", str(tmp_path / "f.npz")]) == 0
    with np.load(tmp_path / "f.npz", allow_pickle=False) as saved:
        features, labels = saved["features"].astype(np.float64), saved["labels"]
    i, j = np.triu_indices(labels.size, 1)
    scores = np.einsum("pd,pd->p", features[i], features[j]).astype(np.float32).astype(np.float64)
    same = labels[i] == labels[j]
    fars = (1e-3, 1e-4, 1e-5, 1e-6)
    metrics = json.loads(out.read_text())
    assert list(metrics["tar_at_far"].values()) == pytest.approx(list(tar_at_far(scores, same, fars).values()),
                                                                 abs=1e-9)
    assert metrics["eer"] == pytest.approx(equal_error_rate(scores, same), abs=1e-9)
    assert (metrics["num_genuine_pairs"], metrics["num_impostor_pairs"]) == (120, 1770 - 120)
    assert metrics["impostors_allowed"] == {"1e-3": 1, "1e-4": 0, "1e-5": 0, "1e-6": 0}
    low, high = metrics["intervals"]["eer"]
    assert low <= metrics["eer"] <= high and metrics["bootstrap"]["unit"] == "identity"
    assert "all 120 genuine and 1650 impostor pairs of 60 images: TAR@FAR=1e-3 " in printed
    assert "(FAR=1e-4, 1e-5, 1e-6 not resolved: 1650 impostor pairs)" in printed


@pytest.mark.parametrize("arguments, message", [
    (["--all-pairs"], "--all-pairs takes --images ROOT"),
    (["--all-pairs", "--images", "IMAGES", "--pairs", "PAIRS"], "and no --pairs"),
])
def test_eval_all_pairs_refuses_what_it_cannot_use(trained, capsys, arguments, message):
    arguments = [str(trained["lfw"]) if a == "IMAGES" else str(trained["pairs"]) if a == "PAIRS" else a
                 for a in arguments]
    assert cli.main(["eval", str(trained["run"])] + arguments) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("amnp: error: ") and message in err


@pytest.mark.parametrize("trial", range(10))
def test_weighted_dir_equals_dir_at_far_on_the_probes_written_out(trial):
    """DIR@FAR under identity weights (the bootstrap's) = dir_at_far with each probe row
    repeated as often as its identity was drawn (ties included)."""
    rng = np.random.default_rng(trial)
    gallery_labels = np.arange(5)
    probe_labels = rng.integers(0, 12, 60)  # identities 5..11 are not enrolled: impostors
    similarity = np.round(rng.normal(size=(60, 5)), 1)
    weights = rng.multinomial(12, np.full(12, 1 / 12))
    copies = weights[probe_labels]
    fars = (0.5, 0.1, 1e-2)
    if not np.any(copies[probe_labels < 5]) or not np.any(copies[probe_labels >= 5]):
        return
    expected = dir_at_far(np.repeat(similarity, copies, axis=0), gallery_labels,
                          np.repeat(probe_labels, copies), fars)
    best = similarity.argmax(axis=1)
    score = similarity[np.arange(60), best]
    genuine = probe_labels < 5
    positive = np.where(best[genuine] == probe_labels[genuine], score[genuine], -np.inf)
    p_order, n_order = np.argsort(-positive, kind="stable"), np.argsort(-score[~genuine], kind="stable")
    found = weighted_rate_above_tail(positive[p_order], copies[genuine][p_order].astype(float),
                                     score[~genuine][n_order], copies[~genuine][n_order], fars)
    assert found == pytest.approx(expected, abs=1e-12)


def test_held_out_intervals_under_the_identity_resample_are_the_point_metrics(monkeypatch):
    """Each identity drawn exactly once weighs every pair and probe 1: every replicate, of
    every metric, must then be the metric evaluate_verification computes on the images."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 5)
    emb = rng.normal(size=(12, 8))[labels] + rng.normal(scale=0.8, size=(60, 8))
    same = [tuple(rng.choice(np.flatnonzero(labels == c), 2, replace=False)) for c in rng.integers(0, 12, 60)]
    different = [(rng.choice(np.flatnonzero(labels == a)), rng.choice(np.flatnonzero(labels == b)))
                 for a, b in (rng.choice(12, 2, replace=False) for _ in range(60))]
    pairs, pair_same = np.array(same + different), np.repeat([True, False], 60)
    pair_fold = rng.permutation(np.minimum(np.arange(120) // 10, 9))  # uneven: fold 9 holds 30 pairs
    gallery, probes = make_gallery_probes(labels, np.random.default_rng(1))
    open_gallery, genuine, impostors = make_open_set_protocol(labels, np.random.default_rng(2))
    open_set = (open_gallery, np.concatenate([genuine, impostors]))
    metrics, _ = evaluate_verification(emb, labels, pairs, pair_same, pair_fold, gallery, probes, fars=(0.1, 0.05),
                                       open_set=open_set, dir_fars=(0.5, 0.2))
    monkeypatch.setattr(statistics, "identity_resamples", lambda n, resamples, rng: np.ones((2, n), dtype=np.int64))
    intervals = held_out_intervals(emb, labels, pairs, pair_same, pair_fold, metrics["fold_thresholds"], gallery,
                                   probes, open_set=open_set, fars=(0.1, 0.05), dir_fars=(0.5, 0.2))
    assert intervals["verification_accuracy"] == pytest.approx([metrics["verification_accuracy"]] * 2, abs=1e-12)
    assert intervals["eer"] == pytest.approx([metrics["eer"]] * 2, abs=1e-12)
    assert intervals["identification_top1"] == pytest.approx([metrics["identification_top1"]] * 2, abs=1e-12)
    for key, tar in metrics["tar_at_far"].items():
        assert intervals["tar_at_far"][key] == pytest.approx([tar] * 2, abs=1e-12), key
    for key, rate in metrics["dir_at_far"].items():
        assert intervals["dir_at_far"][key] == pytest.approx([rate] * 2, abs=1e-12), key


@pytest.mark.parametrize("call, message", [
    (lambda: identity_resamples(0, 10, np.random.default_rng(0)), "need at least one identity and one resample"),
    (lambda: identity_resamples(5, 0, np.random.default_rng(0)), "need at least one identity and one resample"),
    (lambda: student_t_quantile(0.95, 0), "degrees of freedom must be a positive integer, got 0"),
    (lambda: student_t_quantile(0.95, 2.5), "degrees of freedom must be a positive integer, got 2.5"),
    (lambda: student_t_quantile(1.0, 4), r"confidence must lie in \(0, 1\), got 1.0"),
    (lambda: mean_interval([]), r"need a 1-D array of at least one value, got shape \(0,\)"),
    (lambda: mean_interval([[1.0, 2.0]]), r"need a 1-D array of at least one value, got shape \(1, 2\)"),
    (lambda: pair_code([0], [1], (1 << 16) + 1), "all-pairs statistics handle at most 65536 identities, got 65537"),
    (lambda: ScoreSet([], [], [0.1], [0], [1], 2), "need at least one same-identity pair, got none"),
    (lambda: ScoreSet([0.9], [0], [], [], [], 2), "need at least one different-identity pair, got none"),
    (lambda: ScoreSet([np.nan], [0], [0.1], [0], [1], 2), "scores contain NaN or inf"),
    (lambda: ScoreSet([0.9], [0], [np.inf], [0], [1], 2), "scores contain NaN or inf"),
    (lambda: all_pairs_scores(np.ones((3, 2)), [0, 1]),
     r"labels must be a 1-D array with one entry per embedding \(3\), got shape \(2,\)"),
])
def test_bad_statistics_inputs_are_refused_with_their_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()
