"""Properties of AM-Softmax and softmax cross-entropy from the paper and reference §2."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from amnp import functional as F
from amnp import losses


def margin_logits(cos, labels, m, s):
    """The logits AM-Softmax feeds to cross-entropy, recovered from its cache for inspection."""
    _, cache = F.am_softmax_forward(cos, labels, m, s)
    return np.log(cache.ce_cache.probs)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), c=st.integers(2, 7), m=st.floats(0.01, 0.6))
def test_only_the_target_column_changes(seed, n, c, m):
    rng = np.random.default_rng(seed)
    cos, labels = rng.uniform(-1, 1, (n, c)), rng.integers(0, c, n)
    s = 10.0
    with_margin = margin_logits(cos, labels, m, s)
    without = margin_logits(cos, labels, 0.0, s)
    # log p differs by a per-row constant off the target; compare logits up to that shift
    shift = with_margin - without
    off_target = np.ones((n, c), bool)
    off_target[np.arange(n), labels] = False
    row_shift = np.where(off_target, shift, np.nan)
    np.testing.assert_allclose(np.nanmax(row_shift, 1), np.nanmin(row_shift, 1), atol=1e-12)
    target_drop = shift[np.arange(n), labels] - np.nanmax(row_shift, 1)
    np.testing.assert_allclose(target_drop, -s * m, rtol=1e-10)


def test_zero_margin_is_normalised_softmax():
    rng = np.random.default_rng(0)
    cos, labels = rng.uniform(-1, 1, (5, 4)), rng.integers(0, 4, 5)
    am, ce = losses.AMSoftmaxLoss(m=0.0, s=16.0), losses.SoftmaxCrossEntropyLoss()
    assert am.forward(cos, labels) == pytest.approx(ce.forward(16.0 * cos, labels), rel=1e-12)
    np.testing.assert_allclose(am.backward(), 16.0 * ce.backward(), rtol=1e-12)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), c=st.integers(2, 7))
def test_each_gradient_row_sums_to_zero(seed, n, c):
    rng = np.random.default_rng(seed)
    cos, labels = rng.uniform(-1, 1, (n, c)), rng.integers(0, c, n)
    crit = losses.AMSoftmaxLoss()
    crit.forward(cos, labels)
    np.testing.assert_allclose(crit.backward().sum(axis=1), 0.0, atol=1e-12)


def test_hand_computed_case():
    # Two classes, cos = [0.5, 0.2], label 0, m = 0.25, s = 2:
    # z = [2(0.5 − 0.25), 2·0.2] = [0.5, 0.4]; L = −log(e^0.5 / (e^0.5 + e^0.4)) = log(1 + e^−0.1).
    cos, labels = np.array([[0.5, 0.2]]), np.array([0])
    crit = losses.AMSoftmaxLoss(m=0.25, s=2.0)
    assert crit.forward(cos, labels) == pytest.approx(np.log1p(np.exp(-0.1)), rel=1e-14)
    p0 = 1 / (1 + np.exp(-0.1))
    np.testing.assert_allclose(crit.backward(), [[2 * (p0 - 1), 2 * (1 - p0)]], rtol=1e-13)


def test_batch_mean_of_hand_computed_rows():
    cos = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    labels = np.array([1, 0])
    m, s = 0.35, 30.0
    row0 = np.log(2 + np.exp(-s * m)) + s * m  # reference §2: ln(C − 1 + e^{−sm}) + sm at c = 0
    row1 = np.log1p(2 * np.exp(-s * (1 - m)))
    assert losses.AMSoftmaxLoss(m, s).forward(cos, labels) == pytest.approx((row0 + row1) / 2, rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_scale_near_plus_minus_one_stays_finite(dtype):
    cos = np.array([[1.0, -1.0, -1.0], [-1.0, 1.0, 1.0], [0.999999, 1.0, -1.0]], dtype=dtype)
    labels = np.array([1, 0, 2])  # worst case: the target at −1, another class at +1
    crit = losses.AMSoftmaxLoss(m=0.5, s=64.0)
    loss = crit.forward(cos, labels)
    grad = crit.backward()
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    # row 0: 64·1 − 64·(−1.5) = 160; rows 1 and 2: two logits tie at 64, so 160 + ln 2
    assert loss == pytest.approx((160 + 2 * (160 + np.log(2))) / 3, rel=1e-5)
    assert grad.dtype == dtype


def test_initial_loss_of_the_unconditional_margin():
    c, m, s = 10, 0.35, 30.0
    cos = np.zeros((4, c))
    expected = np.log(c - 1 + np.exp(-s * m)) + s * m
    assert losses.AMSoftmaxLoss(m, s).forward(cos, np.arange(4)) == pytest.approx(expected, rel=1e-12)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0], [-1000.0, 1000.0]])
    crit = losses.SoftmaxCrossEntropyLoss()
    assert crit.forward(logits, np.array([1, 0])) == pytest.approx(1500.0)
    np.testing.assert_allclose(crit.backward(), [[0.5, -0.5], [-0.5, 0.5]])


def test_the_margin_can_change_between_steps():
    cos, labels = np.zeros((2, 3)), np.array([0, 1])
    crit = losses.AMSoftmaxLoss(m=0.0, s=10.0)
    start = crit.forward(cos, labels)
    crit.m = 0.2
    assert crit.forward(cos, labels) > start


def test_conditional_margin_starts_as_normalised_softmax():
    c, m, s = 10, 0.35, 30.0
    cos = np.zeros((4, c))
    loss = losses.AMSoftmaxLoss(m, s, conditional=True).forward(cos, np.arange(4))
    assert loss == pytest.approx(np.log(c), rel=1e-12)  # reference §2: ≈ ln C at c ≈ 0


def test_conditional_margin_applies_only_where_the_target_cosine_exceeds_m():
    rng = np.random.default_rng(4)
    cos, labels = rng.uniform(-0.5, 0.5, (6, 5)), np.array([0, 1, 2, 3, 4, 0])
    rows = np.arange(6)
    cos[rows[:3], labels[:3]] = 0.9   # above m: margin applied
    cos[rows[3:], labels[3:]] = 0.1   # below m: no margin
    m, s = 0.35, 10.0
    conditional = losses.AMSoftmaxLoss(m, s, conditional=True)
    loss = conditional.forward(cos, labels)
    grad = conditional.backward()
    margins = np.where(cos[rows, labels] > m, m, 0.0)
    per_row = [am_softmax_row(cos[i], labels[i], margins[i], s) for i in rows]
    assert loss == pytest.approx(np.mean([r[0] for r in per_row]), rel=1e-12)
    np.testing.assert_allclose(grad, np.stack([r[1] for r in per_row]) / 6, rtol=1e-10)


def am_softmax_row(cos_row, label, margin, s):
    """Loss and dL/dcos of one row with a given margin, from the formula."""
    z = s * cos_row.copy()
    z[label] -= s * margin
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    onehot = np.eye(len(cos_row))[label]
    return -np.log(p[label]), s * (p - onehot)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5), c=st.integers(2, 6))
def test_conditional_margin_gradient_away_from_the_jump(seed, n, c):
    from amnp.gradcheck import check_loss

    rng = np.random.default_rng(seed)
    cos, labels = rng.uniform(-0.99, 0.99, (n, c)), rng.integers(0, c, n)
    target = cos[np.arange(n), labels]
    cos[np.arange(n), labels] = np.where(np.abs(target - 0.35) < 0.05, target + 0.1, target)
    assert check_loss(losses.AMSoftmaxLoss(0.35, 16.0, conditional=True), cos, labels).passed


def test_am_softmax_defaults_to_the_paper_margin_and_amnps_scale():
    loss = losses.AMSoftmaxLoss()
    assert (loss.m, loss.s) == (0.35, F.DEFAULT_SCALE) and F.DEFAULT_SCALE == 16
