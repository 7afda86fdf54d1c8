"""A trained run's network, loaded for inference: ``amnp.load_run(DIR)``.

    run = amnp.load_run("runs/glyphs-am-softmax-20261130-101500")
    with amnp.layers.inference_mode():  # forward only: no layer keeps its activations
        features = run.net.forward(x)   # x: float32 (N, C, H, W), preprocessed as in training

Only the embedding network is built and loaded: no trainer, no classifier head,
no optimizer, no training data.  The checkpoint records the input the network
was trained on (``image_shape``) and whether its dataset is mirrored; runs saved
before it did so fall back on the fixed inputs of the glyph and MNIST datasets.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from . import checkpoint, models
from .layers import Sequential
from .validation import NonFiniteError, finite
from .config import TrainConfig, read_config

# The input and mirroring of the datasets whose images have one fixed size.
FIXED_INPUTS = {"glyphs": ((1, 32, 32), False), "mnist": ((1, 28, 28), False)}


class Run(NamedTuple):
    """What ``load_run`` returns.

    net : the embedding network, (N, C, H, W) -> (N, D), with the trained weights
    config : the run's TrainConfig
    step : the step of the checkpoint
    image_shape : (C, H, W), the input the network was trained on
    mirror : whether training mirrored images (then evaluation fuses each image
        with its mirror)
    """

    net: Sequential
    config: TrainConfig
    step: int
    image_shape: tuple[int, int, int]
    mirror: bool


def load_run(run_dir) -> Run:
    """The trained network of ``run_dir`` (on the current backend), for inference.

    Raises ValueError (no run there, invalid config) or CheckpointError (missing, corrupt,
    not this network's checkpoint, or a NaN or Inf parameter: a damaged file, whose
    features would be meaningless).
    """
    config = read_config(run_dir)
    path = os.path.join(run_dir, "checkpoint.npz")
    if not os.path.exists(path):
        raise checkpoint.CheckpointError(
            f"{run_dir} has no checkpoint yet: its training stopped before the first one was "
            f"written; `amnp train --resume {run_dir}` trains it")
    _, _, meta = checkpoint.read(path)
    kind = config.dataset_spec.kind
    if "image_shape" in meta:
        image_shape, mirror = tuple(meta["image_shape"]), meta["mirror"]
    elif kind in FIXED_INPUTS:
        image_shape, mirror = FIXED_INPUTS[kind]
    else:
        raise checkpoint.CheckpointError(
            f"checkpoint {path} does not record the image size its network takes (it was saved "
            f"by an older amnp); `amnp train --resume {run_dir} --no-eval` rewrites it with that record")
    net = models.build(config.model, image_shape, rng=np.random.default_rng(config.seed))
    meta = checkpoint.load_network(path, net)
    for name, owner, key in net.named_parameters():
        try:
            finite(owner.params[key], path, f"parameter net.{name}")
        except NonFiniteError as exc:
            raise checkpoint.CheckpointError(f"{exc}; the network cannot be used (the file is damaged: "
                                             "restore it from a copy or retrain the run)") from None
    return Run(net, config, meta["step"], image_shape, mirror)
