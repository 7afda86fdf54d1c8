"""SGD with momentum and weight decay, and the learning-rate schedules."""
import numpy as np
import pytest

from amnp import layers as L
from amnp.optim import PAPER_ITERATIONS, SGD, MultiStepLR, WarmupLR, scaled_paper_schedule


def test_sgd_matches_the_formula_and_skips_decay_on_biases_and_slopes():
    net = L.Sequential(L.Linear(2, 2, dtype=np.float64, rng=0), L.PReLU(2, dtype=np.float64))
    grads = {"0.weight": np.full((2, 2), 0.5), "0.bias": np.full(2, 0.25), "1.weight": np.full(2, 1.0)}
    for name, owner, key in net.named_parameters():
        owner.grads[key] = grads[name]
    start = net.state_dict()
    opt = SGD(net, momentum=0.9, weight_decay=0.1)
    opt.step(lr=0.5)
    opt.step(lr=0.5)
    after = net.state_dict()
    # bias: v1 = g, v2 = 0.9 g + g; p = p0 − 0.5 (v1 + v2)
    np.testing.assert_allclose(after["0.bias"], start["0.bias"] - 0.5 * (0.25 + 1.9 * 0.25))
    np.testing.assert_allclose(after["1.weight"], start["1.weight"] - 0.5 * (1.0 + 1.9 * 1.0))
    w0 = start["0.weight"]
    v1 = 0.5 + 0.1 * w0
    w1 = w0 - 0.5 * v1
    v2 = 0.9 * v1 + 0.5 + 0.1 * w1
    np.testing.assert_allclose(after["0.weight"], w1 - 0.5 * v2)


def test_sgd_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="momentum"):
        SGD(L.Linear(1, 1), momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        SGD(L.Linear(1, 1), weight_decay=-1)


def test_the_scaled_schedule_at_the_papers_length_is_the_papers():
    schedule = scaled_paper_schedule(PAPER_ITERATIONS)
    assert [schedule(t) for t in (0, 15_999, 16_000, 24_000, 28_000, 29_999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001, 0.0001, 0.0001])


def test_scaled_schedule_and_warmup():
    schedule = scaled_paper_schedule(300, base_lr=0.2, warmup_steps=10)
    assert schedule(0) == pytest.approx(0.02)
    assert schedule(5) == pytest.approx(0.2 * (0.1 + 0.9 * 0.5))
    assert schedule(10) == pytest.approx(0.2)
    assert schedule(160) == pytest.approx(0.02)
    assert schedule(299) == pytest.approx(0.2e-3)
    assert WarmupLR(MultiStepLR(1.0, []), 4, 0.0)(2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="learning rate must be > 0"):
        MultiStepLR(0.0, [])


def test_sgd_load_state_dict_checks_every_buffer_before_taking_any():
    net = L.Sequential(L.Linear(2, 2, rng=0), L.PReLU(2))
    opt = SGD(net)
    kept = {"0.weight": np.ones((2, 2), np.float32)}
    opt.load_state_dict(kept)
    with pytest.raises(TypeError, match="0.bias has dtype float64"):
        opt.load_state_dict({"0.weight": np.zeros((2, 2), np.float32), "0.bias": np.zeros(2)})
    with pytest.raises(ValueError, match=r"1.weight has shape \(3,\), the model needs \(2,\)"):
        opt.load_state_dict({"0.weight": np.zeros((2, 2), np.float32), "1.weight": np.zeros(3, np.float32)})
    np.testing.assert_array_equal(opt.velocity["0.weight"], kept["0.weight"])
    assert set(opt.velocity) == {"0.weight"}
