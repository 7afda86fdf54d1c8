"""The functional core: pure ``<op>_forward(...) -> (out, cache)`` and
``<op>_backward(dout, cache) -> gradients`` pairs.

Forward never keeps more than its cache; backward never mutates its inputs and
never touches weights.  Every op takes its array module from its inputs, so it
runs unchanged on NumPy and CuPy arrays.
"""
from .activations import prelu, prelu_backward, prelu_forward, relu_backward, relu_forward
from .conv import col2im, conv2d_backward, conv2d_forward, im2col
from .conv_channels_last import channels_last_conv2d_backward, channels_last_conv2d_forward
from .flatten import flatten_backward, flatten_forward
from .linear import linear_backward, linear_forward
from .losses import log_softmax, softmax_cross_entropy_backward, softmax_cross_entropy_forward
from .margins import (
    DEFAULT_SCALE,
    additive_margin,
    am_softmax_backward,
    am_softmax_forward,
    arcface_margin,
    combined_margin,
    margin_softmax_backward,
    margin_softmax_forward,
    no_margin,
    sphereface_margin,
)
from .normalize import cosine_backward, cosine_forward, l2_normalize_backward, l2_normalize_forward
from .pooling import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward

__all__ = [name for name in dir() if name.endswith(("_forward", "_backward"))] + [
    "prelu",
    "im2col",
    "col2im",
    "log_softmax",
    "no_margin", "additive_margin", "arcface_margin", "combined_margin", "sphereface_margin",
    "DEFAULT_SCALE",
]
