"""Tests for amnp.figures: every function writes a PNG and leaves pyplot alone."""

import os

import matplotlib
import numpy as np
import pytest

from amnp import figures
from amnp.evaluation import roc_curve, tar_at_far

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def pyplot_untouched():
    """Each test must leave no pyplot figure open and the backend unchanged."""
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    yield
    assert plt.get_fignums() == []
    assert matplotlib.get_backend() == backend


def assert_png(path, expected):
    assert str(path) == str(expected)
    data = expected.read_bytes()
    assert len(data) > len(PNG_MAGIC)
    assert data[:8] == PNG_MAGIC


def test_plot_training_curves_with_missing_keys(tmp_path):
    records = [
        {"step": 0, "loss": 5.0, "accuracy": 0.1, "mean_target_cosine": 0.05, "lr": 0.1},
        {"step": 10, "loss": 4.0, "lr": 0.1},  # accuracy and cosine not logged here
        {"step": 20, "loss": 3.0, "accuracy": 0.4, "mean_target_cosine": 0.3, "lr": 0.01},
        {"step": 30, "loss": None, "accuracy": 0.5},
    ]
    out = tmp_path / "sub" / "dir" / "curves.png"  # parent directories are created
    assert_png(figures.plot_training_curves(records, out), out)


def test_plot_training_curves_empty_panel(tmp_path):
    out = tmp_path / "curves.png"
    assert_png(figures.plot_training_curves([{"step": 1, "loss": 2.0}], out), out)


def test_plot_roc_with_markers(tmp_path):
    rng = np.random.default_rng(0)
    scores = np.concatenate((rng.normal(0.6, 0.1, 300), rng.normal(0.1, 0.1, 300)))
    same = np.arange(600) < 300
    far, tar, _ = roc_curve(scores, same)
    out = tmp_path / "roc.png"
    assert_png(figures.plot_roc(far, tar, out, tar_at_far(scores, same), label="model"), out)
    # String keys, as in evaluate_verification's metrics, work as well.
    out2 = tmp_path / "roc2.png"
    assert_png(figures.plot_roc(far, tar, str(out2), {"1e-2": 0.9, "1e-3": 0.8}), out2)


def test_plot_roc_perfect_separation(tmp_path):
    # FAR is 0 until TAR reaches 1, then jumps: the log axis must still work.
    out = tmp_path / "roc.png"
    assert_png(figures.plot_roc([0.0, 0.0, 1.0], [0.0, 1.0, 1.0], out), out)


def test_plot_pair_histograms(tmp_path):
    rng = np.random.default_rng(1)
    scores = rng.uniform(-1, 1, 200)
    same = scores + rng.normal(0, 0.3, 200) > 0
    out = tmp_path / "hist.png"
    assert_png(figures.plot_pair_histograms(scores, same, out, threshold=0.1), out)
    out2 = tmp_path / "hist_no_threshold.png"
    assert_png(figures.plot_pair_histograms(scores, same, out2), out2)


@pytest.mark.parametrize(
    "images",
    [
        np.random.default_rng(2).integers(0, 256, size=(10, 1, 12, 10), dtype=np.uint8),
        np.random.default_rng(3).integers(0, 256, size=(5, 3, 8, 8), dtype=np.uint8),
        np.random.default_rng(4).normal(size=(7, 3, 8, 8)).astype(np.float32),
        np.zeros((3, 1, 8, 8)),  # constant float images: no division by zero
    ],
    ids=["uint8-gray", "uint8-rgb", "float-rgb", "float-constant"],
)
def test_plot_sample_grid(tmp_path, images):
    labels = np.arange(images.shape[0]) % 3
    out = tmp_path / "grid.png"
    assert_png(figures.plot_sample_grid(images, labels, out, class_names=["a", "b", "c"]), out)


def test_plot_sample_grid_names_that_are_not_utf8(tmp_path):
    """An identity folder named with bytes that are not UTF-8 (os.fsdecode gives surrogate escapes)."""
    images = np.zeros((3, 1, 8, 8), dtype=np.uint8)
    labels = np.arange(3)
    out = tmp_path / "grid.png"
    names = ["a", os.fsdecode(b"caf\xe9"), "c"]
    assert_png(figures.plot_sample_grid(images, labels, out, class_names=names), out)


def test_plot_sample_grid_max_images(tmp_path):
    images = np.zeros((100, 1, 4, 4), dtype=np.uint8)
    out = tmp_path / "grid.png"
    assert_png(figures.plot_sample_grid(images, np.zeros(100, int), out, max_images=9), out)


def test_plot_sample_grid_bad_shape(tmp_path):
    with pytest.raises(ValueError, match="C = 1 or 3"):
        figures.plot_sample_grid(np.zeros((2, 2, 4, 4)), [0, 1], tmp_path / "x.png")


def test_target_logit_figure(tmp_path):
    theta = np.radians([0.0, 60.0, 120.0, 179.0])
    curves = figures.target_logit_curves(theta)
    np.testing.assert_allclose(curves["softmax / NormFace: cos θ"], np.cos(theta))
    np.testing.assert_allclose(curves["AM-Softmax m=0.35: cos θ − m"], np.cos(theta) - 0.35)
    # θ = 60° lies in the sector k = 1 of m = 4: ψ = −cos(4θ) − 2
    np.testing.assert_allclose(curves["A-Softmax m=4, λ=0"][1], -np.cos(4 * np.radians(60)) - 2, atol=1e-12)
    np.testing.assert_allclose(curves["ArcFace m=0.5: cos(θ + m)"][1], np.cos(np.radians(60) + 0.5), atol=1e-12)
    assert_png(figures.plot_target_logits(tmp_path / "psi.png"), tmp_path / "psi.png")


def test_cli_lists_the_margin_family_and_draws_it(tmp_path, capsys):
    from amnp import cli
    from amnp.config import LOSSES

    assert cli.main(["margins", "--out", str(tmp_path / "t.png")]) == 0
    printed = capsys.readouterr().out
    for name in LOSSES:
        assert name in printed
    assert_png(tmp_path / "t.png", tmp_path / "t.png")
