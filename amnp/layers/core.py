"""Leaf layers: thin classes over the functional pairs, named and laid out as in PyTorch."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..backend import get_array_module
from .. import init as param_init
from ..functional.normalize import DEFAULT_EPS
from ..validation import positive_int, window
from .base import Layer, recording

CHANNELS_LAST_MIN_CHANNELS = 8


def runs_channels_last(xp, in_channels) -> bool:
    """Whether :class:`Conv2d` runs the channels-last convolution on array module ``xp``
    (the plain im2col otherwise): each backend gets the layout it runs fastest.

    NumPy: from CHANNELS_LAST_MIN_CHANNELS input channels.  Its window gather copies runs
    of kw·C values, too short below that (the first layer's 1 or 3 channels), where the
    plain im2col's runs of Wo values are longer; and NumPy's elementwise ops keep the
    channels-last memory of their inputs, so PReLU passes it on to the next convolution
    as a view.

    Any other module (CuPy): never.  There a gather is one kernel whatever the length of
    the runs, so channels-last saves nothing, and it costs copies: CuPy does not keep
    NumPy's output layouts (its elementwise kernels allocate C-contiguous outputs), so the
    PReLU after each convolution turns the channels-last view back into (N, C, H, W)
    memory, and every convolution would pay a transposing copy of its input, and in
    backward of its dout, that the plain im2col does not need.
    """
    return xp is np and in_channels >= CHANNELS_LAST_MIN_CHANNELS


class Linear(Layer):
    """out = x Wᵀ + b.  x: (N, in_features) -> (N, out_features).

    weight (out_features, in_features), bias (out_features,), initialised by
    ``weight_init`` ("xavier" or a Gaussian std) and zeros.
    """

    def __init__(self, in_features, out_features, bias=True, weight_init="xavier",
                 dtype=np.float32, rng=None):
        super().__init__()
        self.in_features = positive_int(in_features, "in_features", "Linear")
        self.out_features = positive_int(out_features, "out_features", "Linear")
        dtype = param_init.check_dtype(dtype, "Linear")
        rng = param_init.make_rng(rng)
        self.add_parameter("weight", param_init.weight(
            (self.out_features, self.in_features), self.in_features, weight_init, dtype, rng, "Linear"))
        if bias:
            self.add_parameter("bias", param_init.constant((self.out_features,), 0.0, dtype), weight_decay=False)

    def forward(self, x):
        return self._remember(*F.linear_forward(x, self.params["weight"], self.params.get("bias")))

    def backward(self, dout, input_grad=True):
        dx, self.grads["weight"], db = F.linear_backward(dout, self._last_cache(), input_grad)
        if db is not None:
            self.grads["bias"] = db
        return dx

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={'bias' in self.params}"


class Conv2d(Layer):
    """2-D convolution.  x: (N, in_channels, H, W) -> (N, out_channels, Ho, Wo).

    weight (out_channels, in_channels, kh, kw), bias (out_channels,); zero padding.
    Which of the two convolutions runs is decided per call by :func:`runs_channels_last`:
    on NumPy, inputs with 8 channels or more run the channels-last convolution
    (:mod:`amnp.functional.conv_channels_last`), whose outputs are channels-last views;
    everything else (CuPy included) the plain im2col.  Both compute the same function.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 weight_init="xavier", dtype=np.float32, rng=None):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels", "Conv2d")
        self.out_channels = positive_int(out_channels, "out_channels", "Conv2d")
        self.kernel_size, self.stride, self.padding = window(kernel_size, stride, padding, "Conv2d")
        dtype = param_init.check_dtype(dtype, "Conv2d")
        rng = param_init.make_rng(rng)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        self.add_parameter("weight", param_init.weight(
            (self.out_channels, self.in_channels, kh, kw), fan_in, weight_init, dtype, rng, "Conv2d"))
        if bias:
            self.add_parameter("bias", param_init.constant((self.out_channels,), 0.0, dtype), weight_decay=False)

    def _pair(self, array):
        """The functional pair for ``array``'s backend (forward's input, backward's dout:
        one backend, so both calls pick the same pair)."""
        if runs_channels_last(get_array_module(array), self.in_channels):
            return F.channels_last_conv2d_forward, F.channels_last_conv2d_backward
        return F.conv2d_forward, F.conv2d_backward

    def forward(self, x):
        return self._remember(*self._pair(x)[0](
            x, self.params["weight"], self.params.get("bias"), self.stride, self.padding))

    def backward(self, dout, input_grad=True):
        dx, self.grads["weight"], db = self._pair(dout)[1](dout, self._last_cache(), input_grad)
        if db is not None:
            self.grads["bias"] = db
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={'bias' in self.params}")


class ReLU(Layer):
    """max(x, 0), any shape; subgradient 0 at x = 0."""

    def forward(self, x):
        return self._remember(*F.relu_forward(x))

    def backward(self, dout, input_grad=True):
        cache = self._last_cache()
        return F.relu_backward(dout, cache) if input_grad else None


class PReLU(Layer):
    """x where x > 0, a_c·x elsewhere, one slope a_c per channel (axis 1), or one shared slope.

    weight (num_parameters,), initialised to ``init``; at x = 0 the slope side is used.
    """

    def __init__(self, num_parameters=1, init=0.25, dtype=np.float32):
        super().__init__()
        self.num_parameters = positive_int(num_parameters, "num_parameters", "PReLU")
        dtype = param_init.check_dtype(dtype, "PReLU")
        # no weight decay: it would pull the slopes towards 0, a plain ReLU
        self.add_parameter("weight", param_init.constant((self.num_parameters,), init, dtype),
                           weight_decay=False)

    def forward(self, x):
        if not recording():  # its cache would cost two more passes over x
            return self._remember(F.prelu(x, self.params["weight"]), None)
        return self._remember(*F.prelu_forward(x, self.params["weight"]))

    def backward(self, dout, input_grad=True):
        dx, self.grads["weight"] = F.prelu_backward(dout, self._last_cache(), input_grad)
        return dx

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = window(
            kernel_size, stride, padding, type(self).__name__)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max over each window, −inf padding; ties send the gradient to the first maximum
    in row-major window order.  (N, C, H, W) -> (N, C, Ho, Wo)."""

    def forward(self, x):
        return self._remember(*F.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding))

    def backward(self, dout, input_grad=True):
        cache = self._last_cache()
        return F.max_pool2d_backward(dout, cache) if input_grad else None


class AvgPool2d(_Pool2d):
    """Mean over each zero-padded window, padding counted.  (N, C, H, W) -> (N, C, Ho, Wo)."""

    def forward(self, x):
        return self._remember(*F.avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding))

    def backward(self, dout, input_grad=True):
        cache = self._last_cache()
        return F.avg_pool2d_backward(dout, cache) if input_grad else None


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1·d2·...)."""

    def forward(self, x):
        return self._remember(*F.flatten_forward(x))

    def backward(self, dout, input_grad=True):
        cache = self._last_cache()
        return F.flatten_backward(dout, cache) if input_grad else None


class L2Normalize(Layer):
    """Rows divided by sqrt(‖v‖² + eps).  (N, D) -> (N, D)."""

    def __init__(self, eps=DEFAULT_EPS):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"L2Normalize: eps must be > 0, got {eps}")
        self.eps = float(eps)

    def forward(self, x):
        return self._remember(*F.l2_normalize_forward(x, self.eps))

    def backward(self, dout, input_grad=True):
        cache = self._last_cache()
        return F.l2_normalize_backward(dout, cache) if input_grad else None

    def extra_repr(self):
        return f"eps={self.eps}"


class CosineLinear(Layer):
    """The cosine layer: cos θ between each feature and each class weight.

    x: (N, in_features) -> (N, num_classes); weight (num_classes, in_features), no bias,
    xavier-initialised so that rows start with a norm near 1.  After forward,
    ``feature_norm`` is ‖x‖_ε, (N, 1), and ``backward(dout, dnorm)`` takes its gradient
    too (for the heads whose logits are scaled by the feature norm).  With
    ``normalize_features=False`` the output is ‖x‖ cos θ; that is not the paper's
    "w/o FN" model (see ``cosine_forward``).
    """

    def __init__(self, in_features, num_classes, normalize_features=True, eps=DEFAULT_EPS,
                 weight_init="xavier", dtype=np.float32, rng=None):
        super().__init__()
        self.in_features = positive_int(in_features, "in_features", "CosineLinear")
        self.num_classes = positive_int(num_classes, "num_classes", "CosineLinear")
        self.normalize_features = bool(normalize_features)
        self.eps = float(eps)
        self.weight_init = weight_init  # a class-sharded copy draws its rows the same way
        self._feature_norm = None
        dtype = param_init.check_dtype(dtype, "CosineLinear")
        self.add_parameter("weight", param_init.weight(
            (self.num_classes, self.in_features), self.in_features, weight_init, dtype,
            param_init.make_rng(rng), "CosineLinear"))

    def forward(self, x):
        out, cache = F.cosine_forward(x, self.params["weight"], self.normalize_features, self.eps)
        # kept in inference mode too: a head scaled by the feature norm needs it in its forward
        self._feature_norm = None if cache.x_norm_cache is None else cache.x_norm_cache.norm
        return self._remember(out, cache)

    @property
    def feature_norm(self):
        """‖x_n‖_ε of the last forward's features, (N, 1); needs normalize_features=True."""
        if self._cache is None:
            raise RuntimeError("CosineLinear: feature_norm asked before forward")
        if self._feature_norm is None:
            raise RuntimeError("CosineLinear: feature_norm needs normalize_features=True")
        return self._feature_norm

    def backward(self, dout, dnorm=None, input_grad=True):
        dx, self.grads["weight"] = F.cosine_backward(dout, self._last_cache(), dnorm, input_grad)
        return dx

    def extra_repr(self):
        return (f"{self.in_features}, {self.num_classes}, "
                f"normalize_features={self.normalize_features}")
