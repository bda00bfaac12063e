"""The public builders: one per family and size of the variant table.

Every builder has the `keras.applications` signature and one docstring
template; `BUILDERS` maps timm architecture names to them.
"""

from keras_metaformer.models.metaformer import build_metaformer
from keras_metaformer.models.variants import FAMILIES
from keras_metaformer.models.variants import all_variants
from keras_metaformer.models.variants import architecture
from keras_metaformer.weights.pretrained_configs import AUTHORS_ONLY_WEIGHTS
from keras_metaformer.weights.pretrained_configs import available_weights

BASE_DOCSTRING = """Builds {title}, optionally with pretrained weights.

{summary}
{title} has depths {depths} and widths {dims}. {weights_note}

The model takes channels-last RGB images. With `include_preprocessing=True`
it takes pixel values in `[0, 255]` and normalises them in the graph.
`keras_metaformer.get_pretrained_config("{arch}", tag)` gives the input
size, crop and interpolation each set of weights was evaluated with.

Args:
    include_top: whether to include the classification head (global average
        pooling, LayerNorm, classifier).
    include_preprocessing: whether the model normalises `[0, 255]` input with
        the ImageNet mean and standard deviation. It then also takes grey
        (1 channel) and RGBA (4 channels) images: grey is repeated into
        RGB and alpha dropped, so pretrained weights apply. If `False`, it
        takes already normalised input.
    weights: `None` (random initialisation), `"imagenet"` (the default tag),
        a weight tag ({tags}), or the path of a weights file: a timm
        `.safetensors` file, an `.npz` archive of its tensors, or a Keras
        `.weights.h5` file.
    input_tensor: optional Keras tensor to use as the model's input.
    input_shape: optional `(height, width, channels)`. Defaults to the
        weights' input size with `include_top=True` and `(None, None, 3)`
        otherwise. Height and width must be at least 32 (or None).
    pooling: with `include_top=False`: `None` returns the last feature map
        (stride 32), `"avg"` or `"max"` a pooled vector.
    classes: number of classes of the head; the weights' class count with
        pretrained weights.
    classifier_activation: activation of the head: `"softmax"`, or `None` for
        logits. Only these two with pretrained weights.
    drop_path_rate: stochastic depth of the last block, rising linearly from
        0 over all blocks.
    gradient_checkpointing: whether training recomputes each block's
        activations in the backward pass instead of storing them (timm's
        `set_grad_checkpointing()`), through `keras.RematScope`: less memory
        for about one more forward pass.
    dtype: the layers' dtype policy or its name, e.g. `"mixed_bfloat16"` to
        compute in bfloat16 with float32 weights; the global policy
        (`keras.config.dtype_policy()`) when `None`. The classifier always
        computes in float32, for a stable softmax.
    name: the model's name.

Returns:
    A `keras.Model`.

Example:

>>> import keras_metaformer
>>> model = keras_metaformer.{public_name}(weights=None, include_top=False,
...                                 pooling="avg", input_shape=({size}, {size}, 3))
>>> tuple(model.output.shape)
(None, {last_dim})
"""


def _weights_note(arch, tags):
    if tags:
        return f"Pretrained weights are timm's `{arch}.<tag>`, numerically identical to the PyTorch reference."
    url = AUTHORS_ONLY_WEIGHTS[arch]
    return (
        "timm publishes no weights for it; the authors' PyTorch checkpoint "
        f"({url}) converts with `recipes/convert_authors_checkpoint.py` into a "
        "file that `weights=<path>` loads."
    )


def make_builder(family, size):
    arch = f"{family}_{size}"
    spec = FAMILIES[family]
    public_name = f"{spec.public_name}{size.upper()}"
    arguments = architecture(family, size)
    tags = available_weights(arch)
    default_weights = "imagenet" if tags else None

    def builder(
        include_top=True,
        include_preprocessing=True,
        weights=default_weights,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        drop_path_rate=0.0,
        gradient_checkpointing=False,
        dtype=None,
        name=arch,
    ):
        return build_metaformer(
            arch=arch,
            pool_size=None,
            mlp_ratio=4.0,
            drop_path_rate=drop_path_rate,
            gradient_checkpointing=gradient_checkpointing,
            include_top=include_top,
            include_preprocessing=include_preprocessing,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            dtype=dtype,
            name=name,
            builder_name=public_name,
            **arguments,
        )

    builder.__name__ = builder.__qualname__ = public_name
    builder.__module__ = __name__
    builder.__doc__ = BASE_DOCSTRING.format(
        title=f"{spec.public_name}-{size.upper()}",
        summary=spec.summary,
        arch=arch,
        public_name=public_name,
        depths=arguments["depths"],
        dims=arguments["dims"],
        weights_note=_weights_note(arch, tags),
        tags=", ".join(repr(t) for t in tags) if tags else "none published",
        # RandFormer's random mixers need the input size they were made for.
        size=224 if family == "randformer" else 64,
        last_dim=arguments["dims"][-1],
    )
    return builder


# timm architecture name -> public builder, for code that picks a model at run time.
BUILDERS = {f"{family}_{size}": make_builder(family, size) for family, size in all_variants()}

PoolFormerS12 = BUILDERS["poolformer_s12"]
PoolFormerS24 = BUILDERS["poolformer_s24"]
PoolFormerS36 = BUILDERS["poolformer_s36"]
PoolFormerM36 = BUILDERS["poolformer_m36"]
PoolFormerM48 = BUILDERS["poolformer_m48"]
PoolFormerV2S12 = BUILDERS["poolformerv2_s12"]
PoolFormerV2S24 = BUILDERS["poolformerv2_s24"]
PoolFormerV2S36 = BUILDERS["poolformerv2_s36"]
PoolFormerV2M36 = BUILDERS["poolformerv2_m36"]
PoolFormerV2M48 = BUILDERS["poolformerv2_m48"]
IdentityFormerS12 = BUILDERS["identityformer_s12"]
IdentityFormerS24 = BUILDERS["identityformer_s24"]
IdentityFormerS36 = BUILDERS["identityformer_s36"]
IdentityFormerM36 = BUILDERS["identityformer_m36"]
IdentityFormerM48 = BUILDERS["identityformer_m48"]
RandFormerS12 = BUILDERS["randformer_s12"]
RandFormerS24 = BUILDERS["randformer_s24"]
RandFormerS36 = BUILDERS["randformer_s36"]
RandFormerM36 = BUILDERS["randformer_m36"]
RandFormerM48 = BUILDERS["randformer_m48"]
ConvFormerS18 = BUILDERS["convformer_s18"]
ConvFormerS36 = BUILDERS["convformer_s36"]
ConvFormerM36 = BUILDERS["convformer_m36"]
ConvFormerB36 = BUILDERS["convformer_b36"]
CAFormerS18 = BUILDERS["caformer_s18"]
CAFormerS36 = BUILDERS["caformer_s36"]
CAFormerM36 = BUILDERS["caformer_m36"]
CAFormerB36 = BUILDERS["caformer_b36"]

POOLFORMER_VARIANTS = FAMILIES["poolformer"].sizes
POOLFORMER_BUILDERS = {size: BUILDERS[f"poolformer_{size}"] for size in POOLFORMER_VARIANTS}
