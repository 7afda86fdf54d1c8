"""The layer protocol and the two containers.

One protocol for every piece with a forward and a backward pass: a layer, a loss
(amnp.losses) and a classifier head (amnp.heads) are all ``Layer``s.
``out = layer.forward(*inputs)`` keeps what backward needs; ``layer.backward(dout)``
returns the gradient with respect to the (first) input, dout being dL/d(out).  The layers
a network is made of (amnp.layers) take ``backward(dout, input_grad=False)`` when nobody
needs that gradient, as for a network's first layer, whose input is the data: they fill
their parameters' gradients and return None, skipping dx (for the first convolution, a
GEMM and a scatter-add).  A
loss's output is the batch's mean loss, a 0-d array on the inputs' device, so its
``backward(dout=1.0)`` defaults dout to 1.

A layer owns two dicts with the same keys: ``params`` (the arrays forward reads,
at call time, so assigning a new array of the same shape loads weights) and
``grads`` (filled by backward for the last forward).  Parameters are created with
``add_parameter``, which also records whether weight decay applies to them: the
layer that creates a parameter knows what it is, the optimizer does not.  A layer
instance is used once per forward pass: calling it twice before backward would
overwrite its cache.

Inference mode: within ``with inference_mode():`` a forward keeps nothing for backward,
so a network's activations are freed layer by layer as the pass goes on instead of all
being held until a backward that never comes; a layer whose cache costs work to build
(PReLU's mask and negative part) skips building it.  Evaluation, ``embed``, ``verify`` and
``compare`` run their forward passes this way (amnp.inference).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import threading

from ..backend import asarray, to_numpy
from ..validation import matching_state

_mode = threading.local()
_NOTHING_KEPT = object()  # the cache of a forward run in inference mode


def recording() -> bool:
    """Whether forward passes in this thread keep what backward needs (see ``inference_mode``)."""
    return not getattr(_mode, "inference", False)


@contextlib.contextmanager
def inference_mode():
    """Within the block, in this thread, layers keep no backward cache: forward only.
    A backward after such a forward raises RuntimeError instead of using an older cache."""
    previous = getattr(_mode, "inference", False)
    _mode.inference = True
    try:
        yield
    finally:
        _mode.inference = previous


@functools.lru_cache(maxsize=None)
def _takes_input_grad(layer_class) -> bool:
    return "input_grad" in inspect.signature(layer_class.backward).parameters


def backward_without_input_grad(layer, dout) -> None:
    """``layer.backward(dout, input_grad=False)``, or, for a layer whose backward was written
    without that keyword (a user's own), ``layer.backward(dout)`` with its dx thrown away."""
    if _takes_input_grad(type(layer)):
        layer.backward(dout, input_grad=False)
    else:
        layer.backward(dout)


class Layer:
    """Base class: parameter bookkeeping, dotted names, state dicts."""

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.no_weight_decay: set = set()
        self._cache = None

    def add_parameter(self, key: str, value, weight_decay: bool = True):
        """Register ``value`` as ``params[key]``; ``weight_decay=False`` exempts it from decay
        (biases, PReLU slopes, a learned scale)."""
        self.params[key] = value
        if not weight_decay:
            self.no_weight_decay.add(key)
        return value

    def forward(self, *inputs):
        raise NotImplementedError

    def backward(self, dout, input_grad=True):
        raise NotImplementedError

    def __call__(self, *inputs):
        return self.forward(*inputs)

    def _remember(self, out, cache):
        """Keep ``cache`` for backward (nothing in inference mode) and return ``out``."""
        self._cache = cache if recording() else _NOTHING_KEPT
        return out

    def _last_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}: backward called before forward")
        if self._cache is _NOTHING_KEPT:
            raise RuntimeError(f"{type(self).__name__}: its last forward ran in inference mode, "
                               "which keeps nothing for backward")
        return self._cache

    def children(self):
        """Sub-layers as (name, layer) pairs; empty for a leaf layer."""
        return ()

    def named_parameters(self, prefix: str = ""):
        """Yield (dotted name, owning layer, key) for every parameter, e.g. ("0.weight", conv, "weight")."""
        for key in self.params:
            yield prefix + key, self, key
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def num_parameters(self) -> int:
        return sum(int(layer.params[key].size) for _, layer, key in self.named_parameters())

    def state_dict(self) -> dict:
        """{dotted name: NumPy copy of the parameter}."""
        return {name: to_numpy(layer.params[key]).copy() for name, layer, key in self.named_parameters()}

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays into the parameters, on the current backend, after checking that the
        names, shapes and dtypes all match; nothing is changed when anything differs."""
        own = {name: (layer, key) for name, layer, key in self.named_parameters()}
        matching_state(state, {name: layer.params[key] for name, (layer, key) in own.items()},
                       f"{type(self).__name__}: the state does not fit")
        for name, (layer, key) in own.items():
            # a copy: the optimizer updates parameters in place, which must not reach the caller
            layer.params[key] = asarray(state[name], dtype=layer.params[key].dtype).copy()

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def _in_context(exc: Exception, where: str) -> Exception:
    """The same kind of error with the position of the failing layer in front of its message;
    raised ``from`` the original, whose traceback still ends in the failing frame."""
    if type(exc) in (ValueError, TypeError):
        return type(exc)(f"{where}: {exc}")
    return exc


class Sequential(Layer):
    """Layers applied one after the other; their parameters are named "0.weight", "1.weight", ..."""

    def __init__(self, *layers: Layer):
        super().__init__()
        for position, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {position} is a {type(layer).__name__}, not a Layer")
        self.layers = list(layers)

    def children(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, index):
        return self.layers[index]

    def forward(self, x):
        for position, layer in enumerate(self.layers):
            try:
                x = layer.forward(x)
            except (ValueError, TypeError) as exc:
                in_context = _in_context(exc, f"{type(self).__name__}[{position}] {type(layer).__name__}")
                if in_context is exc:  # a subclass whose constructor may differ: re-raised unchanged
                    raise
                raise in_context from exc
        return self._remember(x, True)

    def backward(self, dout, input_grad=True):
        self._last_cache()
        if not self.layers:
            return dout if input_grad else None
        for layer in reversed(self.layers[1:]):
            dout = layer.backward(dout)
        if input_grad:
            return self.layers[0].backward(dout)
        return backward_without_input_grad(self.layers[0], dout)

    def __repr__(self) -> str:
        lines = [f"  ({name}): " + repr(layer).replace("\n", "\n  ") for name, layer in self.children()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


class Residual(Sequential):
    """x + F(x), with F the given layers in sequence (no activation after the sum).

    Backward: dx = dout + dF/dx(dout): the identity path and the residual path add.
    """

    def forward(self, x):
        out = super().forward(x)
        if out.shape != x.shape:
            raise ValueError(
                f"Residual: the branch maps shape {tuple(x.shape)} to {tuple(out.shape)}; "
                "x + F(x) needs the same shape"
            )
        return x + out

    def backward(self, dout, input_grad=True):
        branch = super().backward(dout, input_grad=input_grad)
        return dout + branch if input_grad else None

