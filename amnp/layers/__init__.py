"""Layers: classes that own parameters and call the functional pairs."""
from .base import Layer, Residual, Sequential, backward_without_input_grad, inference_mode, recording
from .core import (
    AvgPool2d,
    Conv2d,
    CosineLinear,
    Flatten,
    L2Normalize,
    Linear,
    MaxPool2d,
    PReLU,
    ReLU,
)

__all__ = [
    "Layer", "Sequential", "Residual", "inference_mode", "recording",
    "backward_without_input_grad", "Linear", "Conv2d", "ReLU", "PReLU", "MaxPool2d",
    "AvgPool2d", "Flatten", "L2Normalize", "CosineLinear",
]
