"""Grad-CAM heatmaps for any classifier of the family.

Reference: Selvaraju et al., "Grad-CAM: Visual Explanations from Deep
Networks via Gradient-based Localization", ICCV 2017.
"""

import keras
import numpy as np
from keras import ops

from keras_metaformer.models.metaformer import pyramid_layer_names


def _split_at(model, layer_name):
    """The model as features (up to `layer_name`) and head (the rest)."""
    layer = model.get_layer(layer_name)
    features = keras.Model(model.inputs, layer.output)
    head_input = keras.Input(tuple(layer.output.shape[1:]))
    x = head_input
    # After any block, our models are a chain of layers.
    for later in model.layers[model.layers.index(layer) + 1 :]:
        x = later(x)
    return features, keras.Model(head_input, x)


def _gradient(head, features, class_index):
    """d head(features)[:, class_index] / d features, per backend."""

    def score(f):
        return ops.sum(ops.take_along_axis(head(f), class_index[:, None], axis=1))

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(features)
            value = score(features)
        return tape.gradient(value, features)
    if backend == "jax":
        import jax

        return jax.grad(score)(features)
    if backend == "torch":
        import torch

        features = features.detach().requires_grad_(True)
        return torch.autograd.grad(score(features), features)[0]
    raise NotImplementedError(f"Grad-CAM is not implemented for the {backend} backend.")


def _checked_class_index(class_index, batch, classes):
    """One class per image, each in `[0, classes)`: out of range, a gather
    would clamp it on JAX and explain another class without a word."""
    indices = np.asarray(class_index)
    if indices.dtype.kind not in "iu" or indices.ndim > 1 or indices.size not in (1, batch):
        raise ValueError(
            f"`class_index` must be an int or {batch} ints, one per image. Received: class_index={class_index!r}"
        )
    if indices.min() < 0 or indices.max() >= classes:
        raise ValueError(
            f"`class_index` must be in [0, {classes}), the model's classes. Received: class_index={class_index!r}"
        )
    return np.broadcast_to(indices.reshape(-1), (batch,))


def grad_cam(model, images, class_index=None, layer_name=None):
    """Grad-CAM heatmaps of `model`'s predictions for `images`.

    The feature map of `layer_name` (by default the last block, stride 32)
    is weighted channel by channel with the spatial mean of the gradient of
    the class score, summed over channels and rectified, then scaled to
    `[0, 1]` per image. The score is the model's output for the class: a
    probability for softmax heads, a logit for `classifier_activation=None`.

    Args:
        model: a classifier built by keras_metaformer (`include_top=True`).
        images: a batch of images, as the model takes them.
        class_index: the class to explain, an int or one per image; by
            default each image's top prediction.
        layer_name: the layer whose features to weight.

    Returns:
        `(heatmaps, class_indices)`: NumPy arrays of shape
        `(batch, height, width)` at the layer's resolution, and `(batch,)`.

    Example:

    >>> import numpy as np, keras_metaformer
    >>> model = keras_metaformer.MetaFormer(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
    ...                                     classes=5, input_shape=(64, 64, 3))
    >>> heatmaps, classes = grad_cam(model, np.zeros((2, 64, 64, 3), "float32"))
    >>> heatmaps.shape, classes.shape
    ((2, 2, 2), (2,))
    """
    layer_name = layer_name or pyramid_layer_names(model)["P5"]
    if layer_name not in {layer.name for layer in model.layers}:
        raise ValueError(
            f"`layer_name` must name a layer of model {model.name!r}, such as its stages' last "
            f"blocks {sorted(pyramid_layer_names(model).values())}. Received: layer_name={layer_name!r}"
        )
    images = ops.convert_to_tensor(images, "float32")
    if class_index is not None:
        class_index = _checked_class_index(class_index, images.shape[0], model.output_shape[-1])
    features_model, head = _split_at(model, layer_name)
    features = features_model(images)
    if class_index is None:
        class_index = ops.argmax(head(features), axis=-1)
    class_index = ops.cast(class_index, "int32")
    gradients = _gradient(head, features, class_index)
    channel_weights = ops.mean(gradients, axis=(1, 2), keepdims=True)
    heatmaps = ops.relu(ops.sum(channel_weights * features, axis=-1))
    peak = ops.max(heatmaps, axis=(1, 2), keepdims=True)
    heatmaps = heatmaps / ops.maximum(peak, 1e-12)
    return ops.convert_to_numpy(heatmaps), ops.convert_to_numpy(class_index)
