"""Classifier heads, and the one registry of losses that the config, the CLI and
``build_head`` all read.

A head sits on top of the embedding network during training only.  It owns its
classifier layer (and a learned scale, where its loss has one) and takes the
labels in its forward pass, because margin losses need them to place the margin:

    loss = head.forward(embeddings, labels)    # 0-d array on the device, batch mean
                                               # (check_values=False: labels already checked)
    d_embeddings = head.backward()
    head.scores                                # margin-free scores of the last forward
    head.target_cosines()                      # cos θ between each feature and its class weight
    head.set_step(step)                        # per-iteration schedules (margin ramp, λ)
    head.schedule()                            # their current values, for the logs

``scores`` are the logits without any margin (cosines for the cosine heads), so
their argmax is the classification accuracy to log: the loss itself is inflated
by the margin and is a poor progress signal.

Adding a member of the margin family is one ψ function in amnp.functional.margins
plus one entry in ``LOSSES`` below, with its options, defaults and checks.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import functional as F
from .backend import asarray, get_array_module
from .layers import CosineLinear, Layer, Linear


class Head(Layer):
    """A classifier layer followed by a loss; subclasses set ``self.classifier``."""

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

    def forward(self, embeddings, labels, check_values=True):
        self.embeddings, self.labels = embeddings, labels
        self.scores = self.classifier.forward(embeddings)
        loss, self._cache = F.softmax_cross_entropy_forward(self.scores, labels, check_values)
        return loss

    def backward(self):
        """dLoss/d(embeddings) for the last forward; fills the classifier's grads."""
        return self.classifier.backward(F.softmax_cross_entropy_backward(1.0, self._last_cache()))

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


class MarginHead(Head):
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

    def set_step(self, step: int) -> None:
        self.margin.set_step(step)

    def schedule(self) -> dict:
        values = dict(self.margin.current)
        if "scale" in self.params:
            values["s"] = self._scale()[0]  # the s the forward pass uses
        return values

    def _scale(self):
        if "scale" in self.params:
            return get_array_module(self.params["scale"]).maximum(self.params["scale"], SCALE_FLOOR)
        return self.classifier.feature_norm if self.s is None else self.s

    def forward(self, embeddings, labels, check_values=True):
        self.labels = labels
        self.scores = self.classifier.forward(embeddings)
        loss, self._cache = F.margin_softmax_forward(self.scores, labels, self.margin, self._scale(),
                                                     self.name, check_values)
        return loss

    def backward(self):
        """dLoss/d(embeddings) for the last forward; fills the classifier's and scale's grads."""
        dcos, dscale = F.margin_softmax_backward(1.0, self._last_cache())
        if "scale" in self.params:
            self.grads["scale"] = dscale * (self.params["scale"] >= SCALE_FLOOR)
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


# ---------------------------------------------------------------------- the registry

def _number(value, option) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{option} must be a finite number, got {value!r}")
    return float(value)


def positive(value, option):
    value = _number(value, option)
    if value <= 0:
        raise ValueError(f"{option} must be > 0, got {value}")
    return value


def non_negative(value, option):
    value = _number(value, option)
    if value < 0:
        raise ValueError(f"{option} must be >= 0, got {value}")
    return value


def angle(value, option):
    value = _number(value, option)
    if not 0 <= value < math.pi:
        raise ValueError(f"{option} must lie in [0, π), got {value}")
    return value


def sphereface_margin(value, option):
    """A-Softmax's m: an integer from 1 (NormFace scaled by ‖f‖) to 10; the papers use 2 to 4,
    and ψ has 2m − 1 sectors to tell apart."""
    value = _number(value, option)
    if value != int(value) or not 1 <= value <= 10:
        raise ValueError(f"{option} must be an integer from 1 to 10, got {value}")
    return int(value)


def flag(value, option):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{option} must be true or false, got {value!r}")
    return bool(value)


def optional_non_negative(value, option):
    return None if value is None else non_negative(value, option)


@dataclass(frozen=True)
class Option:
    name: str
    default: object
    check: Callable   # (value, option description) -> the value, normalised, or ValueError
    help: str
    flag: str = ""    # the CLI flag; "" means "--" + name with dashes

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class LossSpec:
    """A member of the registry: its target logit (for the docs), options, and how to build it.
    ``build(embedding_size, num_classes, options, dtype, rng)`` gets every option resolved;
    ``rules(options, given)`` refuses combinations and may drop options that do not apply."""
    name: str
    target_logit: str
    options: tuple
    build: Callable
    rules: Callable = lambda options, given: options


def _scale_option(default):
    return Option("s", default, positive, "scale of the cosines")


def _margin_ramp(o):
    """m(t) = min(m, γ·t) with margin_ramp γ > 0, else m throughout (γ = 0 or None)."""
    m, ramp = o["m"], o["margin_ramp"]
    return (lambda step: min(m, ramp * step)) if ramp else (lambda step: m)


def _sphereface_lambda(o):
    """λ(t) = max(λ_min, base·(1 + γ·(t + 1))^(−power)); the reference's counter is 1 at t = 0."""
    return lambda step: max(o["lambda_min"],
                            o["lambda_base"] * (1 + o["lambda_gamma"] * (step + 1)) ** -o["lambda_power"])


def _build_normface(e, c, o, dtype, rng):
    return MarginHead(Margin(F.no_margin, {}), e, c, s=o["s"], learn_scale=o["learn_scale"],
                      dtype=dtype, rng=rng, name="normface")


def _normface_rules(options, given):
    if options["learn_scale"] and options["s"] < SCALE_FLOOR:
        raise ValueError(f"s (--s) of loss 'normface' is where a learned scale starts, and it is kept at "
                         f"{SCALE_FLOOR:g} or above; got {options['s']}")
    return options


def _build_am_softmax(e, c, o, dtype, rng):
    margin = Margin(F.additive_margin, {"conditional": o["conditional_margin"]}, {"m": _margin_ramp(o)})
    return MarginHead(margin, e, c, s=o.get("s"), dtype=dtype, rng=rng, name="am-softmax")  # no s: ‖f‖


# Without feature normalisation the logits are ‖f‖(cos θ − m·[j = y]); at the start ‖f‖ is
# small (about 1.5 for the small preset), and a full margin makes shrinking ‖f‖ towards 0
# the quickest way down the loss, so nothing is learned (measured: accuracy 0.2% after 480
# steps).  The reference ramps m(t) = min(0.4, 5e-5·t) over 30k iterations; this ramp
# reaches m = 0.35 after 1,400 steps, about the length of the default glyph run.
NO_FN_MARGIN_RAMP = 2.5e-4


def _am_softmax_rules(options, given):
    if options["normalize_features"]:
        return options
    if "s" in given:
        raise ValueError("s (--s) does not apply to am-softmax without feature normalisation "
                         "(--no-feature-normalization): the feature norm ‖f‖ is the scale")
    if "margin_ramp" not in given:
        options = {**options, "margin_ramp": NO_FN_MARGIN_RAMP}
    return {k: v for k, v in options.items() if k != "s"}


def _build_sphereface(e, c, o, dtype, rng):
    margin = Margin(F.sphereface_margin, {"m": o["m"]}, {"lam": _sphereface_lambda(o)})
    return MarginHead(margin, e, c, s=None, dtype=dtype, rng=rng, name="sphereface")


def _build_arcface(e, c, o, dtype, rng):
    return MarginHead(Margin(F.arcface_margin, {"m": o["m"]}), e, c, s=o["s"], dtype=dtype, rng=rng,
                      name="arcface")


def _build_combined(e, c, o, dtype, rng):
    margin = Margin(F.combined_margin, {"m1": o["m1"], "m2": o["m2"], "m3": o["m3"]})
    return MarginHead(margin, e, c, s=o["s"], dtype=dtype, rng=rng, name="combined")


LOSSES = {spec.name: spec for spec in (
    LossSpec("softmax", "w_y·f + b_y (linear layer with bias)", (),
             lambda e, c, o, dtype, rng: SoftmaxHead(e, c, dtype=dtype, rng=rng)),
    LossSpec("normface", "s·cos θ_y", (
        _scale_option(16.0),
        Option("learn_scale", False, flag, f"learn s (parameter 'scale', starting at s >= {SCALE_FLOOR:g}; forward uses max(scale, {SCALE_FLOOR:g}))"),
    ), _build_normface, _normface_rules),
    LossSpec("am-softmax", "s·(cos θ_y − m), or ‖f‖·(cos θ_y − m) without feature normalisation", (
        Option("m", 0.35, non_negative, "additive margin"),
        _scale_option(16.0),
        Option("margin_ramp", None, optional_non_negative,
               "grow the margin as min(m, RAMP·step); 0: full m from the first step (the default, "
               f"except without feature normalisation, where it is {NO_FN_MARGIN_RAMP:g})"),
        Option("conditional_margin", False, flag,
               "subtract m only where the target cosine exceeds m (the authors' Caffe rule)"),
        Option("normalize_features", True, flag,
               "normalise the features; without: the paper's 'w/o FN' model, "
               "logits ‖f‖·(cos θ − m·[j = y]) and no s",
               flag="--no-feature-normalization"),
    ), _build_am_softmax, _am_softmax_rules),
    LossSpec("sphereface", "‖f‖·(ψ(θ_y) + λ cos θ_y)/(1 + λ), ψ(θ) = (−1)^k cos(mθ) − 2k", (
        Option("m", 4, sphereface_margin, "angular margin (an integer from 1 to 10)"),
        Option("lambda_base", 1000.0, non_negative, "λ at the start"),
        Option("lambda_gamma", 0.12, non_negative, "λ decay rate γ"),
        Option("lambda_power", 1.0, non_negative, "λ decay power"),
        Option("lambda_min", 5.0, non_negative, "floor of λ"),
    ), _build_sphereface),
    LossSpec("arcface", "s·cos(θ_y + m), s·(cos θ_y − m·sin m) where θ_y + m > π", (
        Option("m", 0.5, angle, "additive angular margin (radians)"),
        _scale_option(16.0),
    ), _build_arcface),
    LossSpec("combined", "s·(cos(m1·θ_y + m2) − m3)", (
        Option("m1", 1.0, positive, "multiplicative angular margin", flag="--margins"),
        Option("m2", 0.3, angle, "additive angular margin (radians)", flag="--margins"),
        Option("m3", 0.2, non_negative, "additive cosine margin", flag="--margins"),
        _scale_option(16.0),
    ), _build_combined),
)}


def resolve_loss_options(loss: str, given: dict) -> dict:
    """Every option of ``loss``: the given ones checked, the others at their defaults.

    Raises ValueError for an unknown loss, an option the loss does not take, an
    impossible value or combination, each message naming the option and the loss.
    Resolving a resolved dict gives it back unchanged.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    spec = LOSSES[loss]
    known = {option.name: option for option in spec.options}
    foreign = [name for name in given if name not in known]
    if foreign:
        takes = ", ".join(f"{o.name} ({o.cli_flag})" for o in spec.options) or "no options"
        raise ValueError(f"loss {loss!r} does not take {', '.join(repr(n) for n in foreign)}; "
                         f"it takes {takes}")
    options = {}
    for name, option in known.items():
        options[name] = option.check(given.get(name, option.default),
                                     f"{name} ({option.cli_flag}) of loss {loss!r}")
    return spec.rules(options, given)


def build_head(loss: str, embedding_size: int, num_classes: int, *, dtype=np.float32, rng=None,
               **options) -> Head:
    """The head for a loss of ``LOSSES``, with its options checked (see resolve_loss_options)."""
    resolved = resolve_loss_options(loss, options)
    return LOSSES[loss].build(embedding_size, num_classes, resolved, dtype, rng)
