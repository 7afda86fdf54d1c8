"""Checkpoints are atomic, pickle-free, and refuse files that do not fit."""
import json
import os
import re

import numpy as np
import pytest

from amnp import checkpoint
from amnp import layers as L
from amnp.heads import TrainingModel
from amnp.optim import SGD


def make_model(width=3):
    return L.Sequential(L.Linear(2, width, rng=0), L.PReLU(), L.Linear(width, 2, rng=1))


def trained(model):
    x = np.ones((4, 2), np.float32)
    model.backward(model.forward(x))
    opt = SGD(model)
    opt.step(0.1)
    return opt


def test_round_trip(tmp_path):
    model = make_model()
    opt = trained(model)
    path = tmp_path / "checkpoint.npz"
    checkpoint.save(path, model, opt, {"step": 7, "config": {"seed": 3}})
    other, other_opt = make_model(), SGD(make_model())
    other_opt.model = other
    meta = checkpoint.load(path, other, other_opt)
    assert meta["step"] == 7 and meta["config"] == {"seed": 3}
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[name], value)
    for name, value in opt.velocity.items():
        np.testing.assert_array_equal(other_opt.velocity[name], value)
    assert os.listdir(tmp_path) == ["checkpoint.npz"]  # no temporary file left behind


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = make_model()
    opt = trained(model)
    path = tmp_path / "checkpoint.npz"
    checkpoint.save(path, model, opt, {"step": 1})
    original = path.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, model, opt, {"step": 2})
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_truncated_and_corrupt_files(tmp_path):
    model = make_model()
    path = tmp_path / "checkpoint.npz"
    checkpoint.save(path, model, trained(model), {"step": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        checkpoint.load(path, model)
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        checkpoint.load(path, model)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "missing.npz", model)


def test_pickled_content_is_refused(tmp_path):
    path = tmp_path / "checkpoint.npz"
    np.savez(path, meta=np.array(json.dumps({"format_version": 1})), **{"param/x": np.array([object()])})
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        checkpoint.read(path)


def test_a_checkpoint_from_another_model_is_refused_and_nothing_changes(tmp_path):
    path = tmp_path / "checkpoint.npz"
    small = make_model(width=3)
    checkpoint.save(path, small, trained(small), {"step": 1})
    bigger = make_model(width=5)
    before = bigger.state_dict()
    with pytest.raises(checkpoint.CheckpointError, match=r"does not fit this model"):
        checkpoint.load(path, bigger, SGD(bigger))
    for name, value in bigger.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def rewrite(path, **changes):
    """The checkpoint at ``path`` with some arrays replaced (None removes one)."""
    with np.load(path, allow_pickle=False) as archive:
        contents = {key: archive[key] for key in archive.files}
    contents.update(changes)
    np.savez(path, **{k: v for k, v in contents.items() if v is not None})


@pytest.mark.parametrize("change, message", [
    ({"param/0.weight": np.zeros((3, 2), np.float64)}, "parameters: 0.weight has dtype float64"),
    ({"param/2.bias": None}, "parameters: missing 2.bias"),
    ({"velocity/0.weight": np.zeros((3, 2), np.float64)}, "momentum: 0.weight has dtype float64"),
    ({"velocity/0.weight": np.zeros((2, 3), np.float32)}, "momentum: 0.weight has shape (2, 3)"),
    ({"velocity/9.weight": np.zeros(1, np.float32)}, "momentum: unexpected 9.weight"),
])
def test_loading_is_all_or_nothing(tmp_path, change, message):
    """Every array is checked before any is assigned: a bad momentum leaves the weights alone
    and bad weights leave the momentum alone."""
    path = tmp_path / "checkpoint.npz"
    source = make_model()
    checkpoint.save(path, source, trained(source), {"step": 1})
    rewrite(path, **change)
    model = make_model(width=3)
    optimizer = trained(model)
    weights, momentum = model.state_dict(), optimizer.state_dict()
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(message)):
        checkpoint.load(path, model, optimizer)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, weights[name])
    for name, value in optimizer.state_dict().items():
        np.testing.assert_array_equal(value, momentum[name])


def test_load_network_reads_only_the_embedding_network(tmp_path):
    path = tmp_path / "checkpoint.npz"
    model = TrainingModel(make_model(), L.Linear(2, 4, rng=5))
    checkpoint.save(path, model, SGD(model), {"step": 3})
    net = make_model(width=3)
    net.load_state_dict({name: np.zeros_like(v) for name, v in net.state_dict().items()})
    assert checkpoint.load_network(path, net)["step"] == 3
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, model.state_dict()[f"net.{name}"])
    with pytest.raises(checkpoint.CheckpointError, match="does not fit this network: missing"):
        checkpoint.load_network(path, make_model(width=3), prefix="head.")
