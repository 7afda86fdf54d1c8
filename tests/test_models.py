"""The SphereFace networks and the classifier heads."""
import numpy as np
import pytest

from amnp import layers as L
from amnp import models
from amnp.config import build_head
from amnp.heads import TrainingModel
from amnp.optim import SGD


def test_sphereface20_is_the_papers_network():
    net = models.sphereface20()
    assert net.num_parameters() == 22_670_656  # about 22.7M before the classifier
    convs = [l for l in net.layers if isinstance(l, L.Conv2d)]
    units = [l for l in net.layers if isinstance(l, L.Residual)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512]
    assert all(c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    assert len(units) == 1 + 2 + 4 + 1
    assert net.layers[-1].in_features == 512 * 7 * 6  # 112×96 → 56×48 → 28×24 → 14×12 → 7×6
    assert not any(isinstance(l, (L.ReLU, L.MaxPool2d)) for l in net.layers)


@pytest.mark.parametrize("depth, units", sorted(models.UNITS_PER_DEPTH.items()))
def test_units_per_depth(depth, units):
    net = models.sphereface(depth, widths=(2, 2, 2, 2), in_channels=1, input_size=(16, 16), embedding_size=3)
    assert sum(isinstance(l, L.Residual) for l in net.layers) == sum(units)
    # the depth is the number of convolutions: 4 stage openings + 2 per residual unit
    conv_count = sum(isinstance(l, L.Conv2d) for name, l, _ in net.named_parameters() if name.endswith("weight"))
    assert conv_count == 4 + 2 * sum(units) == depth


def test_one_training_step_of_sphereface20_at_batch_2():
    rng = np.random.default_rng(0)
    net = models.sphereface20(rng=0)
    head = build_head("am-softmax", 512, 10, rng=0)
    model = TrainingModel(net, head)
    before = net.layers[0].params["weight"].copy()
    x = rng.standard_normal((2, 3, 112, 96)).astype(np.float32)
    loss = head.forward(net.forward(x), np.array([1, 7]))
    assert np.isfinite(loss)
    net.backward(head.backward())
    SGD(model).step(0.1)
    assert not np.array_equal(net.layers[0].params["weight"], before)


def test_presets_take_the_datasets_image_shape():
    net = models.build("small", image_shape=(1, 28, 28))
    assert net.forward(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 128)
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        models.build("resnet50")
    with pytest.raises(ValueError, match="depth must be one of"):
        models.sphereface(18)
    with pytest.raises(ValueError, match="widths must be four positive channel counts"):
        models.sphereface(4, widths=(8, 16, 32))
    with pytest.raises(ValueError, match="must be positive"):
        models.sphereface(4, input_size=(0, 32))


def test_heads():
    head = build_head("am-softmax", 4, 3, m=0.2, s=8.0, margin_ramp=0.01)
    head.set_step(5)
    assert head.schedule()["m"] == pytest.approx(0.05)
    head.set_step(1000)
    assert head.schedule()["m"] == pytest.approx(0.2)
    emb = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1])
    head.forward(emb, labels)
    np.testing.assert_allclose(head.target_cosines(), head.scores[np.arange(5), labels])
    assert np.abs(head.scores).max() <= 1 + 1e-6  # margin-free cosines
    assert head.backward().shape == emb.shape
    softmax = build_head("softmax", 4, 3)
    assert [n for n, _, _ in softmax.named_parameters()] == ["classifier.weight", "classifier.bias"]
    with pytest.raises(ValueError, match="margin_ramp .* must be >= 0"):
        build_head("am-softmax", 4, 3, margin_ramp=-1.0)
    with pytest.raises(ValueError, match="unknown loss 'cosface'"):
        build_head("cosface", 4, 3)
