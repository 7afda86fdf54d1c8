"""Classifier heads: a classifier layer and a loss, for training.

A head sits on top of the embedding network during training only.  It owns its
classifier layer (and a learned scale, where its loss has one) and takes the
labels in its forward pass, because margin losses need them to place the margin:

    loss = head.forward(embeddings, labels)    # 0-d array on the device, batch mean
    d_embeddings = head.backward()             # dout = dL_total/dloss, 1.0 by default
    head.scores                                # margin-free scores of the last forward
    head.target_cosines()                      # cos θ between each feature and its class weight
    head.set_step(step)                        # per-iteration schedules (margin ramp, λ)
    head.schedule()                            # their current values, for the logs

``scores`` are the logits without any margin (cosines for the cosine heads), so
their argmax is the classification accuracy to log: the loss itself is inflated
by the margin and is a poor progress signal.

The registry of losses that builds them from a name and options is
``amnp.config.LOSSES`` (``amnp.config.build_head``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import functional as F
from .backend import asarray, get_array_module
from .layers import CosineLinear, Layer, Linear, backward_without_input_grad
from .losses import Loss


class Head(Loss):
    """A classifier layer followed by a loss, a Loss with parameters: ``forward(embeddings,
    labels)``, ``backward(dout=1.0)``; subclasses set ``self.classifier``."""

    classifier: Layer

    def children(self):
        return [("classifier", self.classifier)]

    def set_step(self, step: int) -> None:
        """Called by the trainer before each step; fixed heads have nothing to schedule."""

    def schedule(self) -> dict:
        """The current values of the head's schedules and learned hyperparameters."""
        return {}


class SoftmaxHead(Head):
    """Plain linear layer with bias + softmax cross-entropy (the baseline)."""

    def __init__(self, embedding_size, num_classes, dtype=np.float32, rng=None):
        super().__init__()
        self.classifier = Linear(embedding_size, num_classes, dtype=dtype, rng=rng)

    def forward(self, embeddings, labels):
        self.embeddings, self.labels = embeddings, labels
        self.scores = self.classifier.forward(embeddings)
        return self._remember(*F.softmax_cross_entropy_forward(self.scores, labels))

    def backward(self, dout=1.0):
        """dout · dLoss/d(embeddings) for the last forward; fills the classifier's grads."""
        return self.classifier.backward(F.softmax_cross_entropy_backward(dout, self._last_cache()))

    def target_cosines(self):
        """cos θ between each feature and its class's weight row (the logits are not cosines)."""
        self._last_cache()
        f_hat, _ = F.l2_normalize_forward(self.embeddings)
        w_hat, _ = F.l2_normalize_forward(self.classifier.params["weight"][self.labels])
        return (f_hat * w_hat).sum(axis=1)


class Margin:
    """One member's ψ with its options bound, and the schedules of those that change per step.

    ``psi(c, **fixed, **scheduled)`` returns (ψ(c), dψ/dc); ``schedules`` maps an option
    name to a function of the step.
    """

    def __init__(self, psi: Callable, fixed: dict, schedules: dict | None = None):
        self.psi, self.fixed, self.schedules = psi, fixed, schedules or {}
        self.set_step(0)

    def set_step(self, step: int) -> None:
        self.current = {name: schedule(step) for name, schedule in self.schedules.items()}

    def __call__(self, c):
        return self.psi(c, **self.fixed, **self.current)


# A learned scale below this would leave the softmax nearly uniform over cosines in [−1, 1].
SCALE_FLOOR = 1.0


class MarginSchedule:
    """What a head with a margin (``self.margin``) and perhaps a learned ``scale`` parameter
    does besides its forward and backward: set the margin's schedules, report them, and use
    the scale above its floor.  Shared by MarginHead and its class-sharded form
    (amnp.distributed.ShardedMarginHead)."""

    def set_step(self, step: int) -> None:
        self.margin.set_step(step)

    def schedule(self) -> dict:
        values = dict(self.margin.current)
        if "scale" in self.params:
            values["s"] = self._learned_scale()[0]  # the s the forward pass uses
        return values

    def _learned_scale(self):
        """max(scale, SCALE_FLOOR), (1,)."""
        return get_array_module(self.params["scale"]).maximum(self.params["scale"], SCALE_FLOOR)

    def _learned_scale_grad(self, dscale):
        """dL/d(scale) from dL/ds: 0 below the floor, where the forward used the floor."""
        return dscale * (self.params["scale"] >= SCALE_FLOOR)


class MarginHead(MarginSchedule, Head):
    """Cosine layer + a member of the margin family (amnp.functional.margins).

    z_nj = scale_n · t_nj, t = the cosines with the target column replaced by ψ(cos θ_y).
    The scale is one of:
    - a fixed ``s``;
    - the parameter ``scale`` (``learn_scale=True``, starting at ``s``): s itself, so its
      gradient is ∂L/∂s; exempt from weight decay.  It must start at SCALE_FLOOR or above;
      the forward pass uses max(scale, SCALE_FLOOR), whose gradient is 0 below the floor
      (at the floor, 1), so a scale that an update pushes below the floor stays there,
      training with s = SCALE_FLOOR (it grew in every measured run: 16 to 22);
    - the feature norm ‖f_n‖ (``s=None``): the features are not normalised, and the
      gradient reaches them through ‖f‖ as well as through the cosines.
    """

    def __init__(self, margin: Margin, embedding_size, num_classes, s=None, learn_scale=False,
                 dtype=np.float32, rng=None, name="margin_softmax"):
        super().__init__()
        self.name = name  # the loss's name, for error messages
        self.classifier = CosineLinear(embedding_size, num_classes, dtype=dtype, rng=rng)
        self.margin, self.s = margin, s
        if learn_scale:
            self.add_parameter("scale", asarray(np.full(1, s), dtype=dtype), weight_decay=False)

    def _scale(self):
        if "scale" in self.params:
            return self._learned_scale()
        return self.classifier.feature_norm if self.s is None else self.s

    def forward(self, embeddings, labels):
        self.labels = labels
        self.scores = self.classifier.forward(embeddings)
        return self._remember(*F.margin_softmax_forward(self.scores, labels, self.margin, self._scale(),
                                                         self.name))

    def backward(self, dout=1.0):
        """dout · dLoss/d(embeddings) for the last forward; fills the classifier's and scale's grads."""
        dcos, dscale = F.margin_softmax_backward(dout, self._last_cache())
        if "scale" in self.params:
            self.grads["scale"] = self._learned_scale_grad(dscale)
        return self.classifier.backward(dcos, dscale if self.s is None else None)

    def target_cosines(self):
        xp = get_array_module(self.scores)
        return self.scores[xp.arange(self.scores.shape[0]), self.labels]


class TrainingModel(Layer):
    """The embedding network and its classifier head, for walking all parameters by name
    ("net.0.weight", "head.classifier.weight", "head.scale") in the optimizer and checkpoint."""

    def __init__(self, net, head):
        super().__init__()
        self.net, self.head = net, head

    def children(self):
        return [("net", self.net), ("head", self.head)]

    def forward_backward(self, x, labels, step: int, share: float = 1.0):
        """The head's schedules set to ``step``, the network and head forward (the loss),
        backward through both, filling every parameter's gradient (the images get none).
        Returns the loss, a 0-d array on the device.  ``share`` is dL/dloss: the part of the
        loss being minimised that this batch's loss is (n / N for the mean over n images of a
        batch of N)."""
        self.head.set_step(step)
        loss = self.head.forward(self.net.forward(x), labels)
        backward_without_input_grad(self.net, self.head.backward(share))  # the images need no gradient
        return loss
