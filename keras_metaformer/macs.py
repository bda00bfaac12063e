"""Multiply-accumulate count of a built model, as the papers report it.

The MetaFormer papers count MACs with fvcore: convolutions, fully connected
layers and the matrix products of token mixers (attention, the random
mixer); pooling, norms, activations and residual additions are not counted.
Counted here from each layer's built input shape, so the model needs a
static input size.
"""

import math

import keras

from keras_metaformer.layers import AttentionMixer
from keras_metaformer.layers import RandomMixer


def _input_shape(layer):
    shapes = getattr(layer, "_build_shapes_dict", None)
    if not shapes:
        return None
    shape = next(iter(shapes.values()))
    if any(dim is None for dim in shape[1:]):
        raise ValueError(
            f"Cannot count MACs: layer {layer.name!r} has input shape {shape} with an unknown size. "
            "Build the model with a fixed `input_shape`, e.g. (224, 224, 3)."
        )
    return shape


def _layer_macs(layer):
    shape = _input_shape(layer)
    if shape is None:
        return 0
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
        _, height, width, _ = layer.compute_output_shape(shape)
        return height * width * math.prod(layer.kernel.shape)
    if isinstance(layer, keras.layers.Dense):
        return math.prod(shape[1:-1]) * math.prod(layer.kernel.shape)
    tokens, channels = math.prod(shape[1:-1]), shape[-1]
    if isinstance(layer, AttentionMixer):
        return 2 * tokens * tokens * channels  # queries x keys, then weights x values
    if isinstance(layer, RandomMixer):
        return tokens * tokens * channels
    return 0


def count_macs(model):
    """Multiply-accumulates of one forward pass on one image.

    Example:

    >>> import keras_metaformer
    >>> model = keras_metaformer.PoolFormerS12(weights=None)
    >>> round(count_macs(model) / 1e9, 2)  # the paper: 1.8 G
    1.81
    """
    return sum(_layer_macs(layer) for layer in model._flatten_layers(include_self=False, recursive=True))
