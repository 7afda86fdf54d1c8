"""The SphereFace residual networks (docs/derivations.md#sphereface-network), built from the core layers.

A network maps images (N, C, H, W) to embeddings (N, embedding_size); the
classifier head (cosine layer + margin loss, or linear + softmax, see
:mod:`amnp.heads`) is separate, because evaluation uses the embedding alone.

Each of the four stages opens with a 3×3 stride-2 convolution + PReLU (xavier
init), which halves the map, then stacks residual units
[3×3 conv + PReLU, 3×3 conv + PReLU] + identity (Gaussian init, std 0.01, so each
unit starts close to the identity).  No BatchNorm, no dropout.  A fully
connected layer gives the embedding.
"""
from __future__ import annotations

import numpy as np

from .functional.conv import output_size
from .init import make_rng
from .layers import Conv2d, Flatten, Linear, PReLU, Residual, Sequential

# residual units per stage for each depth, as in sphereface_model.prototxt
UNITS_PER_DEPTH = {
    4: (0, 0, 0, 0),
    10: (0, 1, 2, 0),
    20: (1, 2, 4, 1),
    36: (2, 4, 8, 2),
    64: (3, 8, 16, 3),
}
UNIT_INIT_STD = 0.01


def residual_unit(width, dtype, rng):
    return Residual(
        Conv2d(width, width, 3, padding=1, weight_init=UNIT_INIT_STD, dtype=dtype, rng=rng),
        PReLU(width, dtype=dtype),
        Conv2d(width, width, 3, padding=1, weight_init=UNIT_INIT_STD, dtype=dtype, rng=rng),
        PReLU(width, dtype=dtype),
    )


def sphereface(depth, widths=(64, 128, 256, 512), in_channels=3, input_size=(112, 96),
               embedding_size=512, dtype=np.float32, rng=None) -> Sequential:
    """A SphereFace-``depth`` embedding network.

    depth: 4, 10, 20, 36 or 64; widths: channels of the four stages;
    input_size: (H, W) of the images it will take; returns a Sequential mapping
    (N, in_channels, H, W) -> (N, embedding_size).
    """
    if depth not in UNITS_PER_DEPTH:
        raise ValueError(f"sphereface: depth must be one of {sorted(UNITS_PER_DEPTH)}, got {depth!r}")
    if len(widths) != 4 or any(int(w) <= 0 for w in widths):
        raise ValueError(f"sphereface: widths must be four positive channel counts, got {widths!r}")
    height, width = input_size
    if height < 1 or width < 1 or embedding_size < 1 or in_channels < 1:
        raise ValueError(
            f"sphereface: input_size, in_channels and embedding_size must be positive, got "
            f"{input_size}, {in_channels}, {embedding_size}")
    rng = make_rng(rng)
    layers, channels = [], in_channels
    for stage_width, units in zip(widths, UNITS_PER_DEPTH[depth]):
        layers += [Conv2d(channels, stage_width, 3, stride=2, padding=1, dtype=dtype, rng=rng),
                   PReLU(stage_width, dtype=dtype)]
        layers += [residual_unit(stage_width, dtype, rng) for _ in range(units)]
        channels = stage_width
        height, width = output_size(height, 3, 2, 1), output_size(width, 3, 2, 1)
    layers += [Flatten(), Linear(channels * height * width, embedding_size, dtype=dtype, rng=rng)]
    return Sequential(*layers)


# name -> (depth, widths, embedding_size, the input it is meant for (C, H, W))
PRESETS = {
    "sphereface4": (4, (64, 128, 256, 512), 512, (3, 112, 96)),
    "sphereface10": (10, (64, 128, 256, 512), 512, (3, 112, 96)),
    "sphereface20": (20, (64, 128, 256, 512), 512, (3, 112, 96)),
    "sphereface36": (36, (64, 128, 256, 512), 512, (3, 112, 96)),
    "sphereface64": (64, (64, 128, 256, 512), 512, (3, 112, 96)),
    # The CPU preset: SphereFace-10's shape at a quarter of the width, for 32×32 glyphs.
    "small": (10, (16, 32, 64, 128), 128, (1, 32, 32)),
}


def build(name, image_shape=None, dtype=np.float32, rng=None) -> Sequential:
    """A preset network by name; ``image_shape`` (C, H, W) overrides the preset's input,
    so a preset can be trained on any dataset's images."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(PRESETS)}")
    depth, widths, embedding_size, default_shape = PRESETS[name]
    channels, height, width = default_shape if image_shape is None else image_shape
    return sphereface(depth, widths, channels, (height, width), embedding_size, dtype, rng)


def sphereface20(dtype=np.float32, rng=None) -> Sequential:
    """The paper's network: SphereFace-20 on 3×112×96 faces, 512-d embedding."""
    return build("sphereface20", dtype=dtype, rng=rng)


def embedding_size(network: Sequential) -> int:
    """The output width of a network built here (its last layer is the embedding Linear)."""
    return network.layers[-1].out_features
