"""PoolFormer v1 (Yu et al., "MetaFormer is Actually What You Need for
Vision", CVPR 2022): one variant table, one builder, five public names."""

import collections

from keras_metaformer.models.metaformer import build_metaformer
from keras_metaformer.weights.pretrained_configs import get_pretrained_config


class PoolFormerVariant(
    collections.namedtuple(
        "PoolFormerVariant",
        ["depths", "dims", "layer_scale_init_value", "train_drop_path_rate"],
    )
):
    """Architecture of one PoolFormer size.

    `train_drop_path_rate` is the stochastic depth of the authors' ImageNet
    training; the builders default to 0 (inference and fine-tuning), as timm
    does, and training recipes pass it explicitly.
    """


POOLFORMER_VARIANTS = {
    "s12": PoolFormerVariant((2, 2, 6, 2), (64, 128, 320, 512), 1e-5, 0.1),
    "s24": PoolFormerVariant((4, 4, 12, 4), (64, 128, 320, 512), 1e-5, 0.1),
    "s36": PoolFormerVariant((6, 6, 18, 6), (64, 128, 320, 512), 1e-6, 0.2),
    "m36": PoolFormerVariant((6, 6, 18, 6), (96, 192, 384, 768), 1e-6, 0.3),
    "m48": PoolFormerVariant((8, 8, 24, 8), (96, 192, 384, 768), 1e-6, 0.4),
}

BASE_DOCSTRING = """Builds PoolFormer-{size}, optionally with ImageNet weights.

PoolFormer is a MetaFormer whose token mixer is plain average pooling
(Yu et al., "MetaFormer is Actually What You Need for Vision", CVPR 2022).
PoolFormer-{size} has depths {depths} and widths {dims}. The ImageNet
weights are timm's `poolformer_{variant}.sail_in1k` ({params} parameters),
numerically identical to the PyTorch reference.

The model takes channels-last RGB images. With `include_preprocessing=True`
it takes pixel values in `[0, 255]` and normalises them in the graph;
evaluate ImageNet weights on images prepared as in
`keras_metaformer.get_pretrained_config("poolformer_{variant}")` (bicubic
resize of the shorter side to {resize}, centre crop to 224).

Args:
    include_top: whether to include the classification head (global average
        pooling, LayerNorm, Dense).
    include_preprocessing: whether the model normalises `[0, 255]` input with
        the ImageNet mean and standard deviation. If `False`, it takes
        already normalised input.
    weights: `None` (random initialisation), `"imagenet"` (the default tag),
        a weight tag of {name} (`keras_metaformer.available_weights(
        "poolformer_{variant}")`), or the path of a weights file: a timm
        `.safetensors` file, an `.npz` archive of its tensors, or a Keras
        `.weights.h5` file.
    input_tensor: optional Keras tensor to use as the model's input.
    input_shape: optional `(height, width, channels)`. Defaults to
        `(224, 224, 3)` with `include_top=True` and `(None, None, 3)`
        otherwise. Height and width must be at least 32 (or None).
    pooling: with `include_top=False`: `None` returns the last feature map
        (stride 32), `"avg"` or `"max"` a pooled vector.
    classes: number of classes of the head; 1000 with ImageNet weights.
    classifier_activation: activation of the head: `"softmax"`, or `None` for
        logits. Only these two with pretrained weights.
    drop_path_rate: stochastic depth of the last block, rising linearly from
        0 over all blocks ({train_rate} in the authors' ImageNet training).
    name: the model's name.

Returns:
    A `keras.Model`.

Example:

>>> import keras_metaformer
>>> model = keras_metaformer.{name}(weights=None, include_top=False,
...                                 pooling="avg", input_shape=(64, 64, 3))
>>> tuple(model.output.shape)
(None, {last_dim})
"""

_PARAMS = {
    "s12": "11.9M",
    "s24": "21.4M",
    "s36": "30.9M",
    "m36": "56.2M",
    "m48": "73.5M",
}


def _make_builder(variant):
    arch = f"poolformer_{variant}"
    public_name = f"PoolFormer{variant.upper()}"
    config = POOLFORMER_VARIANTS[variant]

    def builder(
        include_top=True,
        include_preprocessing=True,
        weights="imagenet",
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        drop_path_rate=0.0,
        name=arch,
    ):
        return build_metaformer(
            arch=arch,
            depths=config.depths,
            dims=config.dims,
            token_mixers="pool",
            pool_size=None,
            mlp_ratio=4.0,
            activation="gelu",
            norm="group",
            norm_epsilon=1e-5,
            use_bias=True,
            layer_scale_init_value=config.layer_scale_init_value,
            drop_path_rate=drop_path_rate,
            include_top=include_top,
            include_preprocessing=include_preprocessing,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            name=name,
            builder_name=public_name,
        )

    builder.__name__ = builder.__qualname__ = public_name
    builder.__module__ = __name__
    builder.__doc__ = BASE_DOCSTRING.format(
        size=variant.upper(),
        variant=variant,
        name=public_name,
        depths=config.depths,
        dims=config.dims,
        params=_PARAMS[variant],
        resize=get_pretrained_config(arch).resize_size,
        train_rate=config.train_drop_path_rate,
        last_dim=config.dims[-1],
    )
    return builder


PoolFormerS12 = _make_builder("s12")
PoolFormerS24 = _make_builder("s24")
PoolFormerS36 = _make_builder("s36")
PoolFormerM36 = _make_builder("m36")
PoolFormerM48 = _make_builder("m48")

# Variant name -> public builder, for code that picks a size at run time.
POOLFORMER_BUILDERS = {
    "s12": PoolFormerS12,
    "s24": PoolFormerS24,
    "s36": PoolFormerS36,
    "m36": PoolFormerM36,
    "m48": PoolFormerM48,
}
