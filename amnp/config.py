"""What a user sets: ``TrainConfig``, the dataset-spec grammar and the loss registry.

Everything here is checked once, in ``TrainConfig.validate`` (and ``resolve_loss_options``
for a loss's options), before any data is loaded or any file written; the trainer, the
comparison and ``load_run`` all take a validated config.  Errors name the option as
this module spells it (``s of loss 'arcface' must be > 0``): only the command line
knows its flags, and rewrites the name (``OptionError.naming``).

The registry ``LOSSES`` is read by the config, the CLI, ``amnp margins`` and
``build_head``.  Adding a member of the margin family is one ψ function in
amnp.functional.margins plus one entry in ``LOSSES``, with its options, defaults and
checks.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from . import functional as F
from . import models
from .backend import BACKENDS
from .heads import SCALE_FLOOR, Head, Margin, MarginHead, SoftmaxHead


@dataclass
class TrainConfig:
    """Everything that defines a run.  Defaults: the small preset on the glyph dataset.

    ``loss_options`` are the options of the loss (``LOSSES``); ``validate``
    fills in the defaults of those not given, so config.json records every value.
    """
    dataset: str = "glyphs"
    image_size: list[int] | None = None  # (H, W) to resize a folder dataset's images to
    grayscale: bool = False              # read a folder dataset as 1 channel
    model: str = "small"
    loss: str = "am-softmax"
    loss_options: dict = dataclasses.field(default_factory=dict)
    iters: int | None = None
    epochs: float | None = 10.0
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: int = 100
    backend: str | None = None  # None: the current backend (AMNP_BACKEND, else numpy)
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 500
    # Partial FC's class sampling of a sharded head (amnp.distributed.ShardedMarginHead):
    # the share of each rank's classes in each step's softmax; 1 keeps every class
    sample_rate: float = 1.0

    def validate(self) -> None:
        """Refuse impossible settings before any data is loaded or any file written."""
        kind = self.dataset_spec.kind
        if self.image_size is not None and not (
                len(self.image_size) == 2 and all(int(d) == d and d >= 1 for d in self.image_size)):
            raise ValueError(f"image-size must be two positive integers H,W, got {self.image_size}")
        if kind != "folder" and (self.image_size is not None or self.grayscale):
            raise ValueError(f"image-size and grayscale apply to folder datasets only; "
                             f"{self.dataset} images have a fixed size and channels")
        if self.model not in models.PRESETS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {', '.join(models.PRESETS)}")
        self.loss_options = resolve_loss_options(self.loss, self.loss_options)
        for name in ("batch_size", "log_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.iters is not None and self.iters < 1:
            raise ValueError(f"iters must be a positive integer, got {self.iters}")
        if self.iters is None and not (self.epochs is not None and 0 < self.epochs < math.inf):
            raise ValueError(f"epochs must be a finite number > 0, got {self.epochs}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"the learning rate must be a finite number > 0, got {self.lr}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, numbers.Real) \
                or not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample-rate must lie in (0, 1] (1: every class, no sampling), got {self.sample_rate!r}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from config.json, including those written before losses had their own
        options (m, s, margin_ramp and conditional_margin at the top level)."""
        values = dict(values)
        legacy = {key: values.pop(key) for key in LEGACY_LOSS_KEYS if key in values}
        if legacy and values.get("loss", cls.loss) == "am-softmax":
            values["loss_options"] = {**legacy, **values.get("loss_options", {})}
        return cls(**values)

    def build_head(self, embedding_size: int, num_classes: int, rng=None, dtype=np.float32) -> Head:
        """The head of the run's loss, from the options ``validate`` resolved (not again)."""
        return LOSSES[self.loss].build(embedding_size, num_classes, self.loss_options, dtype, rng)

    @property
    def dataset_spec(self) -> "DatasetSpec":
        """``dataset`` parsed (parse_dataset_spec)."""
        return parse_dataset_spec(self.dataset)

    def total_steps(self, num_train_images: int) -> int:
        if self.iters is not None:
            return int(self.iters)
        return max(1, math.ceil(self.epochs * steps_per_epoch(num_train_images, self.batch_size)))


LEGACY_LOSS_KEYS = ("m", "s", "margin_ramp", "conditional_margin")
DATASET_KINDS = ("glyphs", "folder:PATH", "mnist:PATH")


class DatasetSpec(NamedTuple):
    kind: str  # glyphs, folder or mnist
    path: str  # "" for glyphs


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """"glyphs" -> ("glyphs", ""), "folder:PATH" -> ("folder", PATH), "mnist:PATH" -> ("mnist", PATH)."""
    kind, _, path = spec.partition(":")
    if (kind == "glyphs" and not path) or (kind in ("folder", "mnist") and path):
        return DatasetSpec(kind, path)
    raise ValueError(f"unknown dataset {spec!r}; expected one of {', '.join(DATASET_KINDS)}")


def read_config(run_dir) -> TrainConfig:
    """The TrainConfig of a run directory, checked; ValueError when there is none."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{run_dir} is not a run directory (no config.json)")
    try:
        with open(path) as file:
            config = TrainConfig.from_dict(json.load(file))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a valid run configuration ({exc})") from None
    config.validate()
    return config


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full batches per pass over the data (the last partial batch is dropped)."""
    return max(1, num_images // batch_size)


# ---------------------------------------------------------------------- the registry

class OptionError(ValueError):
    """A loss option that cannot be used.  ``message(name_of)`` is the message with every
    option it mentions written as ``name_of(option name)``: the library's message names the
    option (``str(error)``), the command line's names its flag too (``naming``)."""

    def __init__(self, message: Callable[[Callable[[str], str]], str]):
        super().__init__(message(str))
        self.message = message

    def naming(self, name_of: Callable[[str], str]) -> str:
        return self.message(name_of)


# The option checks: each returns the value, normalised, or raises ValueError saying what
# the value must be; resolve_loss_options puts the option's name in front.

def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return float(value)


def positive(value):
    value = _number(value)
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def non_negative(value):
    value = _number(value)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def angle(value):
    value = _number(value)
    if not 0 <= value < math.pi:
        raise ValueError(f"must lie in [0, π), got {value}")
    return value


def integer_margin(value):
    """A-Softmax's m: an integer from 1 (NormFace scaled by ‖f‖) to 10; the papers use 2 to 4,
    and ψ has 2m − 1 sectors to tell apart."""
    value = _number(value)
    if value != int(value) or not 1 <= value <= 10:
        raise ValueError(f"must be an integer from 1 to 10, got {value}")
    return int(value)


def boolean(value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"must be true or false, got {value!r}")
    return bool(value)


def optional_non_negative(value):
    return None if value is None else non_negative(value)


@dataclass(frozen=True)
class Option:
    name: str
    default: object
    check: Callable   # value -> the value, normalised, or ValueError saying what it must be
    help: str


@dataclass(frozen=True)
class LossSpec:
    """A member of the registry: its target logit (for the docs), options, and how to build it.
    ``build(embedding_size, num_classes, options, dtype, rng)`` gets every option resolved;
    ``rules(options, given)`` refuses combinations (OptionError) and may drop options that
    do not apply."""
    name: str
    target_logit: str
    options: tuple
    build: Callable
    rules: Callable = lambda options, given: options


def _scale_option(default):
    return Option("s", default, positive, "scale of the cosines")


def _margin_ramp(options):
    """m(t) = min(m, γ·t) with margin_ramp γ > 0, else m throughout (γ = 0 or None)."""
    m, ramp = options["m"], options["margin_ramp"]
    return (lambda step: min(m, ramp * step)) if ramp else (lambda step: m)


def _sphereface_lambda(options):
    """λ(t) = max(λ_min, base·(1 + γ·(t + 1))^(−power)); the reference's counter is 1 at t = 0."""
    return lambda step: max(options["lambda_min"],
                            options["lambda_base"] * (1 + options["lambda_gamma"] * (step + 1))
                            ** -options["lambda_power"])


def _build_softmax(embedding_size, num_classes, options, dtype, rng):
    return SoftmaxHead(embedding_size, num_classes, dtype=dtype, rng=rng)


def _build_normface(embedding_size, num_classes, options, dtype, rng):
    return MarginHead(Margin(F.no_margin, {}), embedding_size, num_classes, s=options["s"],
                      learn_scale=options["learn_scale"], dtype=dtype, rng=rng, name="normface")


def _normface_rules(options, given):
    if options["learn_scale"] and options["s"] < SCALE_FLOOR:
        raise OptionError(lambda name: f"{name('s')} of loss 'normface' is where a learned scale starts, "
                                       f"and it is kept at {SCALE_FLOOR:g} or above; got {options['s']}")
    return options


def _build_am_softmax(embedding_size, num_classes, options, dtype, rng):
    margin = Margin(F.additive_margin, {"conditional": options["conditional_margin"]},
                    {"m": _margin_ramp(options)})
    return MarginHead(margin, embedding_size, num_classes, s=options.get("s"), dtype=dtype, rng=rng,
                      name="am-softmax")  # no s: ‖f‖


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
        raise OptionError(lambda name: f"{name('s')} does not apply to am-softmax without feature "
                                       "normalisation: the feature norm ‖f‖ is the scale")
    if "margin_ramp" not in given:
        options = {**options, "margin_ramp": NO_FN_MARGIN_RAMP}
    return {k: v for k, v in options.items() if k != "s"}


def _build_sphereface(embedding_size, num_classes, options, dtype, rng):
    margin = Margin(F.sphereface_margin, {"m": options["m"]}, {"lam": _sphereface_lambda(options)})
    return MarginHead(margin, embedding_size, num_classes, s=None, dtype=dtype, rng=rng, name="sphereface")


def _build_arcface(embedding_size, num_classes, options, dtype, rng):
    return MarginHead(Margin(F.arcface_margin, {"m": options["m"]}), embedding_size, num_classes,
                      s=options["s"], dtype=dtype, rng=rng, name="arcface")


def _build_combined(embedding_size, num_classes, options, dtype, rng):
    margin = Margin(F.combined_margin, {"m1": options["m1"], "m2": options["m2"], "m3": options["m3"]})
    return MarginHead(margin, embedding_size, num_classes, s=options["s"], dtype=dtype, rng=rng,
                      name="combined")


LOSSES = {spec.name: spec for spec in (
    LossSpec("softmax", "w_y·f + b_y (linear layer with bias)", (), _build_softmax),
    LossSpec("normface", "s·cos θ_y", (
        _scale_option(F.DEFAULT_SCALE),
        Option("learn_scale", False, boolean, f"learn s (parameter 'scale', starting at s >= {SCALE_FLOOR:g}; forward uses max(scale, {SCALE_FLOOR:g}))"),
    ), _build_normface, _normface_rules),
    LossSpec("am-softmax", "s·(cos θ_y − m), or ‖f‖·(cos θ_y − m) without feature normalisation", (
        Option("m", 0.35, non_negative, "additive margin"),
        _scale_option(F.DEFAULT_SCALE),
        Option("margin_ramp", None, optional_non_negative,
               "grow the margin as min(m, RAMP·step); 0: full m from the first step (the default, "
               f"except without feature normalisation, where it is {NO_FN_MARGIN_RAMP:g})"),
        Option("conditional_margin", False, boolean,
               "subtract m only where the target cosine exceeds m (the authors' Caffe rule)"),
        Option("normalize_features", True, boolean,
               "normalise the features; without: the paper's 'w/o FN' model, "
               "logits ‖f‖·(cos θ − m·[j = y]) and no s"),
    ), _build_am_softmax, _am_softmax_rules),
    LossSpec("sphereface", "‖f‖·(ψ(θ_y) + λ cos θ_y)/(1 + λ), ψ(θ) = (−1)^k cos(mθ) − 2k", (
        Option("m", 4, integer_margin, "angular margin (an integer from 1 to 10)"),
        Option("lambda_base", 1000.0, non_negative, "λ at the start"),
        Option("lambda_gamma", 0.12, non_negative, "λ decay rate γ"),
        Option("lambda_power", 1.0, non_negative, "λ decay power"),
        Option("lambda_min", 5.0, non_negative, "floor of λ"),
    ), _build_sphereface),
    LossSpec("arcface", "s·cos(θ_y + m), s·(cos θ_y − m·sin m) where θ_y + m > π", (
        Option("m", 0.5, angle, "additive angular margin (radians)"),
        _scale_option(F.DEFAULT_SCALE),
    ), _build_arcface),
    LossSpec("combined", "s·(cos(m1·θ_y + m2) − m3)", (
        Option("m1", 1.0, positive, "multiplicative angular margin"),
        Option("m2", 0.3, angle, "additive angular margin (radians)"),
        Option("m3", 0.2, non_negative, "additive cosine margin"),
        _scale_option(F.DEFAULT_SCALE),
    ), _build_combined),
)}


def resolve_loss_options(loss: str, given: dict) -> dict:
    """Every option of ``loss``: the given ones checked, the others at their defaults.

    Raises ValueError for an unknown loss, and OptionError (a ValueError) for an option
    the loss does not take or an impossible value or combination, each message naming the
    option and the loss.  Resolving a resolved dict gives it back unchanged.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    spec = LOSSES[loss]
    known = {option.name: option for option in spec.options}
    foreign = [name for name in given if name not in known]
    if foreign:
        raise OptionError(lambda name: f"loss {loss!r} does not take {', '.join(repr(n) for n in foreign)}; "
                                       f"it takes {', '.join(name(o) for o in known) or 'no options'}")
    options = {}
    for name, option in known.items():
        try:
            options[name] = option.check(given.get(name, option.default))
        except ValueError as exc:
            raise OptionError(lambda describe, name=name, exc=exc:
                              f"{describe(name)} of loss {loss!r} {exc}") from None
    return spec.rules(options, given)


def build_head(loss: str, embedding_size: int, num_classes: int, *, dtype=np.float32, rng=None,
               **options) -> Head:
    """The head for a loss of ``LOSSES``, with its options checked (see resolve_loss_options)."""
    resolved = resolve_loss_options(loss, options)
    return LOSSES[loss].build(embedding_size, num_classes, resolved, dtype, rng)
