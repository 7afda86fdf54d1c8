"""Checkpoints are atomic, pickle-free, and refuse files that do not fit."""
import json
import os

import numpy as np
import pytest

from amnp import checkpoint
from amnp import layers as L
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
