"""No device-to-host transfer inside a training step, proven on the CPU.

tests/host_guard.py wraps NumPy arrays in a type that refuses every implicit conversion
to host values (float, int, bool, __array__, .item(), .tolist()) and counts the explicit
ones, the way CuPy arrays behave on a GPU.  The network's forward and backward and the
SGD update run on it here; a stray ``float(x)`` or ``if (x > 0).any():`` would raise.
The trainer is checked the same way: its steps, for every head, download nothing, and
its loop reads values back once per log window and at checkpoints only.
"""
import threading

import numpy as np
import pytest

import amnp
from amnp import layers as L
from amnp import models
from amnp.optim import SGD

from .host_guard import GuardedArray, HostTransfer, guard, guard_parameters, transfers


def network():
    """Every layer the presets use, both convolution paths (stride 1 and 2), at toy size."""
    return models.sphereface(10, widths=(2, 3, 4, 5), in_channels=1, input_size=(12, 10),
                             embedding_size=6, rng=0)


def test_network_step_and_sgd_never_download():
    net = network()
    guard_parameters(net)
    optimizer = SGD(net, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = guard(rng.standard_normal((3, 1, 12, 10)).astype(np.float32))
    dout = guard(rng.standard_normal((3, 6)).astype(np.float32))
    with transfers() as count:
        for _ in range(2):  # the second step also runs the momentum buffers' update path
            embeddings = net.forward(x)
            dx = net.backward(dout)
            optimizer.step(0.01)
    assert count.downloads == 0
    assert isinstance(embeddings, GuardedArray) and isinstance(dx, GuardedArray)
    for _, owner, key in net.named_parameters():
        assert isinstance(owner.params[key], GuardedArray) and isinstance(owner.grads[key], GuardedArray)


def test_guarded_step_computes_what_numpy_computes():
    """The guard changes where values may be read, never the values."""
    plain, guarded = network(), network()
    guard_parameters(guarded)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1, 12, 10)).astype(np.float32)
    dout = rng.standard_normal((2, 6)).astype(np.float32)
    for net, inputs in ((plain, (x, dout)), (guarded, (guard(x), guard(dout)))):
        net.forward(inputs[0])
        net.backward(inputs[1])
        SGD(net).step(0.1)
    for (name, owner, key), (_, g_owner, g_key) in zip(plain.named_parameters(), guarded.named_parameters()):
        np.testing.assert_array_equal(amnp.to_numpy(g_owner.params[g_key]), owner.params[key], err_msg=name)


@pytest.mark.parametrize("implicit", [
    float, int, bool, np.asarray,
    lambda a: a.item(), lambda a: a.tolist(),
    lambda a: 1 if a.sum() > 0 else 0,     # a branch on a device value
    lambda a: [0, 1, 2][a[0]],             # a device value used as an index
], ids=["float", "int", "bool", "asarray", "item", "tolist", "if", "index"])
def test_every_implicit_download_raises(implicit):
    a = guard(np.ones(1, np.int64))
    with pytest.raises(HostTransfer, match="implicitly"):
        implicit(a)


def test_explicit_downloads_are_counted_and_mixing_is_refused():
    a = guard(np.arange(3.0))
    with transfers() as count:
        host = amnp.to_numpy(a)
        amnp.to_numpy(a + 1)
    assert count.downloads == 2 and isinstance(host, np.ndarray)
    with pytest.raises(TypeError, match="mixed"):
        a + np.ones(3)
    with pytest.raises(TypeError, match="argument 0 is a NumPy array and argument 1 is a GuardedArray"):
        amnp.get_array_module(np.ones(3), a)


def test_a_layer_that_reads_a_value_back_is_caught():
    """The harness can fail: a layer that branches on a device value is detected."""
    class Careless(L.ReLU):
        def forward(self, x):
            if (x > 100).any():  # a host round-trip hidden in an if
                raise ValueError("too large")
            return super().forward(x)

    with pytest.raises(HostTransfer):
        L.Sequential(Careless()).forward(guard(np.ones((2, 2), np.float32)))


def test_value_checks_are_the_only_downloads_of_a_loss_and_one_switch_turns_them_off():
    from amnp import functional as F
    from amnp.validation import value_checks, values_checked

    cos = guard(np.random.default_rng(2).uniform(-1, 1, (4, 3)).astype(np.float32))
    labels = guard(np.array([0, 2, 1, 0]))
    with transfers() as count:
        F.am_softmax_forward(cos, labels, m=0.35, s=10.0)
    assert count.downloads == 3  # the scores finite, the smallest and the largest label
    with transfers() as count, value_checks(False):
        loss, cache = F.am_softmax_forward(cos, labels, m=0.35, s=10.0)
        F.am_softmax_backward(1.0, cache)
    assert count.downloads == 0 and isinstance(loss, GuardedArray)
    assert values_checked()  # the block restores the switch
    with value_checks(False):
        seen_elsewhere = []
        worker = threading.Thread(target=lambda: seen_elsewhere.append(values_checked()))
        worker.start()
        worker.join()
    assert seen_elsewhere == [True]  # one thread's switch is its own


# ----------------------------------------------------------------------------- the trainer

from amnp.config import TrainConfig  # noqa: E402
from amnp.training import Trainer  # noqa: E402

from .test_training import tiny_dataset  # noqa: E402

MEMBERS = [("softmax", {}), ("normface", {"learn_scale": True}), ("am-softmax", {}),
           ("am-softmax", {"normalize_features": False}), ("sphereface", {}), ("arcface", {}),
           ("combined", {})]


def guarded_trainer(tmp_path, loss, options, **settings):
    config = TrainConfig(loss=loss, loss_options=dict(options), iters=6, batch_size=8, warmup=2,
                         **settings)
    trainer = Trainer(config, tiny_dataset(mirror=True), str(tmp_path), progress=False)
    guard_parameters(trainer.model)
    trainer.images.images, trainer.train_labels = guard(trainer.images.images), guard(trainer.train_labels)
    return trainer


@pytest.mark.parametrize("loss, options", MEMBERS, ids=[f"{l}{o}" for l, o in MEMBERS])
def test_training_steps_of_every_head_never_download(tmp_path, loss, options):
    trainer = guarded_trainer(tmp_path, loss, options)
    with transfers() as count:
        for step in range(3):
            values = trainer.train_step(step)
    assert count.downloads == 0
    assert all(isinstance(v, GuardedArray) for v in values)


def test_the_training_loop_downloads_once_per_log_window_and_at_checkpoints(tmp_path):
    """6 steps logged every 2: three window reads, one each, and the final checkpoint
    (one finiteness read per parameter, and the copies it saves); nothing per step."""
    trainer = guarded_trainer(tmp_path, "normface", {"learn_scale": True}, log_every=2,
                              checkpoint_every=1000)
    trainer.start()
    with transfers() as count:
        assert trainer.train() == "finished"
    with transfers() as checkpoint_count:  # what the final checkpoint costs, momentum included
        trainer.save_checkpoint()
    learned_scale_reads = 3  # the logged s, one per window
    assert count.downloads == 3 + learned_scale_reads + checkpoint_count.downloads
