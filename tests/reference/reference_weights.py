"""Deterministic pseudo-random weights shared by the fixture generator and
the tests, so that only timm's outputs need committing, not the weights.

The values come from a classic sine hash of each tensor's name and element
index, in float64: the same on every platform and NumPy version (unlike a
NumPy random stream, which NumPy does not promise to keep), and rounded to
float32. Pure NumPy: the generator (with torch) and the tests (with Keras)
both import it.
"""

import zlib

import numpy as np


def _uniform(name, shape):
    """Pseudo-random values in [0, 1) for the tensor `name`."""
    count = int(np.prod(shape, dtype=np.int64))
    offset = zlib.crc32(name.encode()) % 65521
    x = np.sin((np.arange(count, dtype=np.float64) + offset) * 12.9898 + 78.233) * 43758.5453
    return (x - np.floor(x)).reshape(shape)


def reference_weights(arch, keys_and_shapes):
    """`{key: float32 array}` for a timm state dict's keys and shapes.

    Weights of rank > 1 (convolutions, linear layers) get unit-variance
    outputs; RandFormer's token-mixing matrices are, like the authors', a
    row-wise softmax of uniform values; biases are small; one-dimensional
    scales (norm weights, layer and residual scales, StarReLU scales) lie in
    [0.5, 1.5), so that no branch is negligible.
    """
    weights = {}
    for key, shape in keys_and_shapes:
        shape = tuple(shape)
        u = _uniform(f"{arch}/{key}", shape)
        if key.endswith("random_matrix"):
            value = np.exp(u) / np.exp(u).sum(axis=-1, keepdims=True)
        elif len(shape) > 1:
            fan_in = int(np.prod(shape[1:]))
            value = (2.0 * u - 1.0) * np.sqrt(3.0 / fan_in)
        elif key.endswith(".bias"):
            value = 0.2 * (u - 0.5)
        else:
            value = 0.5 + u
        weights[key] = value.astype(np.float32)
    return weights
