"""amnp.inference, the one way a trained network is applied, and the layering that keeps
loading a run free of the trainer."""
import subprocess
import sys

import numpy as np
import pytest

from amnp import models
from amnp.inference import embed, features, preprocess

from .checkout import checkout_env


def test_mirror_fusion_sums_the_features_of_each_image_and_its_mirror():
    rng = np.random.default_rng(0)
    net = models.build("small", (1, 32, 32), rng=rng)
    images = rng.integers(0, 256, (5, 1, 32, 32), dtype=np.uint8)
    x = preprocess(images)
    expected = net.forward(x) + net.forward(x[..., ::-1])
    np.testing.assert_allclose(embed(net, images, mirror=True, batch_size=2), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(embed(net, images, mirror=False), net.forward(x), rtol=1e-6, atol=1e-6)
    unit = features(net, images, mirror=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)


def test_embedding_runs_in_inference_mode_and_gives_the_training_forward_exactly():
    rng = np.random.default_rng(0)
    net = models.build("small", (1, 32, 32), rng=rng)
    images = rng.integers(0, 256, (5, 1, 32, 32), dtype=np.uint8)
    recorded = net.forward(preprocess(images))
    np.testing.assert_array_equal(embed(net, images, mirror=False), recorded)
    with pytest.raises(RuntimeError, match="inference mode"):  # it kept nothing, nor left the older caches
        net.backward(np.ones_like(recorded))


def test_preprocess_scales_as_the_paper_and_mirrors_the_rows_asked():
    images = np.array([[[[0, 255]]], [[[128, 0]]]], dtype=np.uint8)
    x = preprocess(images, np.array([False, True]))
    np.testing.assert_array_equal(x, np.array([[[[-127.5, 127.5]]], [[[-127.5, 0.5]]]], np.float32) / 128)


def test_loading_a_run_imports_neither_the_trainer_nor_tqdm_nor_matplotlib():
    code = ("import sys, amnp.run\n"
            "print(sorted(m for m in ('amnp.training', 'amnp.inference', 'amnp.data', 'tqdm', 'matplotlib') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=checkout_env())
    assert result.stdout.strip() == "[]"
