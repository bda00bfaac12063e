"""The generic MetaFormer builder that every named variant feeds."""

import contextlib

import keras
import numpy as np

from keras_metaformer.arguments import check_bool
from keras_metaformer.arguments import check_int
from keras_metaformer.arguments import check_int_sequence
from keras_metaformer.arguments import check_optional_float
from keras_metaformer.arguments import check_positive
from keras_metaformer.arguments import check_rate
from keras_metaformer.layers import MetaFormerBlock
from keras_metaformer.layers import MlpHead
from keras_metaformer.layers import PatchEmbedding
from keras_metaformer.layers import ToRGB
from keras_metaformer.layers.activations import check_activation
from keras_metaformer.layers.norms import check_norm
from keras_metaformer.layers.token_mixers import check_token_mixer
from keras_metaformer.weights.pretrained_configs import IMAGENET_MEAN
from keras_metaformer.weights.pretrained_configs import IMAGENET_STD
from keras_metaformer.weights.pretrained_configs import PretrainedConfig
from keras_metaformer.weights.resolve import fetch_weights
from keras_metaformer.weights.resolve import load_weights
from keras_metaformer.weights.resolve import resolve_weights

# Stem (stride 4) and three stride-2 downsamplings shrink the input by 32.
MIN_INPUT_SIZE = 32
POOLINGS = (None, "avg", "max")
HEADS = ("linear", "mlp")
HEAD_NORM_EPSILON = 1e-6
# The baselines' LayerNorm in the stem and downsampling layers.
DOWNSAMPLE_NORM_EPSILON = 1e-6


def MetaFormer(
    depths,
    dims,
    token_mixers="pool",
    pool_size=None,
    mlp_ratio=4.0,
    activation="gelu",
    norm="group",
    norm_epsilon=1e-5,
    norm_use_bias=True,
    use_bias=True,
    layer_scale_init_value=1e-5,
    res_scale_init_value=None,
    downsample_norm=False,
    head="linear",
    drop_path_rate=0.0,
    gradient_checkpointing=False,
    include_top=True,
    include_preprocessing=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    dtype=None,
    name="metaformer",
):
    """Builds a MetaFormer image classifier or backbone of any shape.

    A stem (7x7 convolution, stride 4) is followed by one stage per entry of
    `depths`; every stage after the first starts with a stride-2 3x3
    convolution. The head is global average pooling, LayerNorm and a
    classifier (a Dense layer, or the baselines' `MlpHead`), as in timm. The
    named variants (`PoolFormerS12`, `CAFormerS18`, ...) are this function
    with fixed architecture arguments; use it directly to build the papers'
    ablations and hybrids, e.g. pooling in the first stages and attention in
    the last: `token_mixers=["pool", "pool", "attention", "attention"]`.

    Arguments marked "per stage" take one value for all stages or a list
    with one value per stage.

    Args:
        depths: blocks per stage, e.g. `(2, 2, 6, 2)`.
        dims: channels per stage, e.g. `(64, 128, 320, 512)`.
        token_mixers: per stage, a registered mixer name: `"pool"`,
            `"identity"`, `"random"`, `"sepconv"`, `"attention"`, ...
        pool_size: window of every `"pool"` mixer (3 when `None`).
        mlp_ratio: hidden width of each block's MLP relative to its channels.
        activation: MLP activation: `"gelu"` (exact), `"relu"`, `"silu"`,
            `"star_relu"`, ...
        norm: per stage, the block normalisation: `"group"` (one group),
            `"layer"` (over channels) or `"batch"`.
        norm_epsilon: epsilon of the block normalisations.
        norm_use_bias: whether the block normalisations have a shift.
        use_bias: whether the MLP Dense layers have biases.
        layer_scale_init_value: per stage, the initial layer-scale value, or
            `None` for none.
        res_scale_init_value: per stage, the initial residual-scale value, or
            `None` for none.
        downsample_norm: whether a LayerNorm without bias follows the stem
            convolution and precedes each downsampling (the baselines).
        head: `"linear"` (Dense) or `"mlp"` (`MlpHead`) classifier.
        drop_path_rate: stochastic depth of the last block; it rises linearly
            from 0 over all blocks.
        gradient_checkpointing: whether training recomputes each block's
            activations in the backward pass instead of keeping them: less
            memory for about one more forward pass. It puts each block in
            a `keras.RematScope(mode="list_of_layers")`; building inside a
            `keras.RematScope` of your own works too, on JAX in any mode.
        include_top, include_preprocessing, weights, input_tensor,
        input_shape, pooling, classes, classifier_activation, dtype, name:
            as for `PoolFormerS12`, except that `weights` is `None` or a
            file path.

    Returns:
        A functional `keras.Model`.

    Example:

    >>> model = MetaFormer(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64),
    ...                    token_mixers="pool", pool_size=5, classes=10)
    >>> tuple(model.output.shape), model.get_layer("stage2_block1").pool_size
    ((None, 10), 5)
    """
    return build_metaformer(
        arch=None,
        depths=depths,
        dims=dims,
        token_mixers=token_mixers,
        pool_size=pool_size,
        mlp_ratio=mlp_ratio,
        activation=activation,
        norm=norm,
        norm_epsilon=norm_epsilon,
        norm_use_bias=norm_use_bias,
        use_bias=use_bias,
        layer_scale_init_value=layer_scale_init_value,
        res_scale_init_value=res_scale_init_value,
        downsample_norm=downsample_norm,
        head=head,
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
    )


def per_stage(name, value, num_stages):
    """`value` repeated for each stage, or checked to have one per stage."""
    if not isinstance(value, (list, tuple)):
        return [value] * num_stages
    if len(value) != num_stages:
        raise ValueError(
            f"`{name}` must be one value or one per stage. Received: {name}={value} for {num_stages} stages."
        )
    return list(value)


def _check_arguments(depths, dims, pooling, head):
    """Returns `depths` and `dims` as tuples of ints, after checking them
    and the other arguments that need no stage count."""
    depths = check_int_sequence("depths", depths)
    dims = check_int_sequence("dims", dims)
    if len(depths) != len(dims):
        raise ValueError(f"`depths` and `dims` need one entry per stage. Received: depths={depths} and dims={dims}.")
    if head not in HEADS:
        raise ValueError(f"`head` must be one of {list(HEADS)}. Received: head={head!r}")
    if pooling not in POOLINGS:
        raise ValueError(
            f"`pooling` must be one of {list(POOLINGS)}: None returns the "
            "last feature map, 'avg' or 'max' a pooled vector (used with "
            f"include_top=False). Received: pooling={pooling!r}"
        )
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "MetaFormer models are built channels-last. Call "
            "`keras.config.set_image_data_format('channels_last')` first."
        )
    return depths, dims


def _check_pretrained(pretrained, include_top, classes, classifier_activation):
    if include_top and classes != pretrained.num_classes:
        raise ValueError(
            f"The weights {pretrained.name!r} have a {pretrained.num_classes}-"
            f"class head, so with include_top=True `classes` must be "
            f"{pretrained.num_classes}. Received: classes={classes}. To train "
            "a new head, pass include_top=False and add your own."
        )
    if include_top and classifier_activation not in (None, "softmax"):
        raise ValueError(
            "With pretrained weights and include_top=True, "
            "`classifier_activation` must be None (logits) or 'softmax'. "
            f"Received: classifier_activation={classifier_activation!r}"
        )


def _input_shape(input_shape, input_tensor, include_top, include_preprocessing, pretrained):
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    if input_shape is None:
        size = pretrained.input_size if pretrained else (224, 224)
        input_shape = (*size, 3) if include_top else (None, None, 3)
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__") or len(input_shape) != 3:
        raise ValueError(
            f"`input_shape` must be (height, width, channels), channels last. Received: input_shape={input_shape!r}"
        )
    message = (
        "`input_shape` must be (height, width, channels): positive integers, or None for "
        f"a variable height or width. Received: input_shape={tuple(input_shape)!r}"
    )
    try:
        height, width = (None if s is None else check_int("input_shape", s) for s in input_shape[:2])
        channels = check_int("input_shape", input_shape[2])
    except TypeError:
        raise TypeError(message) from None
    except ValueError:
        raise ValueError(message) from None
    input_shape = (height, width, channels)
    if any(s is not None and s < MIN_INPUT_SIZE for s in input_shape[:2]):
        raise ValueError(
            f"Input images must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}: "
            "the network downsamples by 32. Received: "
            f"input_shape={input_shape}. Resize the images, or use None for "
            "a variable size."
        )
    if include_preprocessing:
        # Grey is repeated and alpha dropped in the graph: the network sees RGB.
        advice = (
            f" (input_shape={input_shape}) with include_preprocessing=True, which normalises RGB "
            "images. For other inputs, pass include_preprocessing=False and normalise them yourself."
        )
        ToRGB.check_channels(channels, advice)
    elif pretrained and channels != 3:
        raise ValueError(
            "Pretrained weights expect 3 input channels (RGB). Received: "
            f"input_shape={input_shape} with include_preprocessing=False. Pass "
            "include_preprocessing=True, which turns grey (1 channel) and RGBA "
            "(4) images into RGB in the graph, or weights=None to train on "
            f"{channels}-channel input."
        )
    return input_shape


def _inputs(input_tensor, input_shape):
    if input_tensor is None:
        return keras.Input(shape=input_shape, name="images")
    if keras.backend.is_keras_tensor(input_tensor):
        return input_tensor
    return keras.Input(tensor=input_tensor, shape=input_shape, name="images")


def build_metaformer(
    arch,
    depths,
    dims,
    token_mixers,
    pool_size,
    mlp_ratio,
    activation,
    norm,
    norm_epsilon,
    norm_use_bias,
    use_bias,
    layer_scale_init_value,
    res_scale_init_value,
    downsample_norm,
    head,
    drop_path_rate,
    include_top,
    include_preprocessing,
    weights,
    input_tensor,
    input_shape,
    pooling,
    classes,
    classifier_activation,
    name,
    dtype=None,
    gradient_checkpointing=False,
    builder_name="MetaFormer",
):
    """`MetaFormer` plus `arch`, the timm name that selects pretrained weights."""
    # Every argument is checked before the weights are fetched.
    depths, dims = _check_arguments(depths, dims, pooling, head)
    num_stages = len(depths)
    token_mixers = per_stage("token_mixers", token_mixers, num_stages)
    for mixer in token_mixers:
        check_token_mixer(mixer)
    norms = per_stage("norm", norm, num_stages)
    for stage_norm in norms:
        check_norm(stage_norm)
    layer_scales = [
        check_optional_float("layer_scale_init_value", value)
        for value in per_stage("layer_scale_init_value", layer_scale_init_value, num_stages)
    ]
    res_scales = [
        check_optional_float("res_scale_init_value", value)
        for value in per_stage("res_scale_init_value", res_scale_init_value, num_stages)
    ]
    mlp_ratio = check_positive("mlp_ratio", mlp_ratio)
    norm_epsilon = check_positive("norm_epsilon", norm_epsilon)
    drop_path_rate = check_rate("drop_path_rate", drop_path_rate)
    check_activation(activation)
    dtype = _dtype_policy(dtype)
    gradient_checkpointing = check_bool("gradient_checkpointing", gradient_checkpointing)
    _check_remat_scope()
    if include_top:
        classes = check_int("classes", classes)
        check_activation(classifier_activation, "classifier_activation")
    resolved = resolve_weights(weights, arch)
    pretrained = resolved if isinstance(resolved, PretrainedConfig) else None
    if pretrained:
        _check_pretrained(pretrained, include_top, classes, classifier_activation)
    input_shape = _input_shape(input_shape, input_tensor, include_top, include_preprocessing, pretrained)
    checkpoint = fetch_weights(resolved, builder_name)

    inputs = _inputs(input_tensor, input_shape)
    x = inputs
    if include_preprocessing and input_shape[-1] != 3:
        x = ToRGB(dtype=dtype, name="to_rgb")(x)
    if include_preprocessing:
        mean = pretrained.mean if pretrained else IMAGENET_MEAN
        std = pretrained.std if pretrained else IMAGENET_STD
        # (x / 255 - mean) / std in one step, on [0, 255] RGB input.
        x = keras.layers.Normalization(
            mean=[255.0 * m for m in mean],
            variance=[(255.0 * s) ** 2 for s in std],
            dtype=dtype,
            name="preprocessing",
        )(x)
    x = PatchEmbedding(
        dims[0],
        7,
        strides=4,
        padding=2,
        norm="post" if downsample_norm else None,
        norm_epsilon=DOWNSAMPLE_NORM_EPSILON,
        dtype=dtype,
        name="stem",
    )(x)

    drop_path_rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
    for stage, (depth, dim) in enumerate(zip(depths, dims)):
        if stage > 0:
            x = PatchEmbedding(
                dim,
                3,
                strides=2,
                padding=1,
                norm="pre" if downsample_norm else None,
                norm_epsilon=DOWNSAMPLE_NORM_EPSILON,
                dtype=dtype,
                name=f"stage{stage}_downsample",
            )(x)
        for index in range(depth):
            block_name = f"stage{stage}_block{index}"
            with _block_remat_scope(block_name, gradient_checkpointing):
                block = MetaFormerBlock(
                    token_mixer=token_mixers[stage],
                    pool_size=pool_size if token_mixers[stage] == "pool" else None,
                    mlp_ratio=mlp_ratio,
                    activation=activation,
                    norm=norms[stage],
                    norm_epsilon=norm_epsilon,
                    norm_use_bias=norm_use_bias,
                    use_bias=use_bias,
                    layer_scale_init_value=layer_scales[stage],
                    res_scale_init_value=res_scales[stage],
                    drop_path_rate=drop_path_rates.pop(0),
                    dtype=dtype,
                    name=block_name,
                )
            x = block(x)

    if include_top:
        x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="avg_pool")(x)
        x = keras.layers.LayerNormalization(epsilon=HEAD_NORM_EPSILON, dtype=dtype, name="head_norm")(x)
        # Float32 outputs keep softmax stable under mixed precision.
        x = classifier_layer(head, classes, classifier_activation)(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(dtype=dtype, name="max_pool")(x)

    if input_tensor is not None:
        inputs = keras.utils.get_source_inputs(input_tensor)
    # Under keras.RematScope, the layers above are rematerialized one by one;
    # the model itself is not: Keras would checkpoint its whole call, whose
    # `training` flag JAX cannot trace, and which saves no memory.
    with keras.RematScope(mode=None):
        model = keras.Model(inputs, x, name=name)
    model.pyramid_outputs = pyramid_outputs(model)
    load_weights(model, checkpoint)
    return model


def classifier_layer(head, classes, activation, dtype="float32"):
    """timm's classifier (`head.fc`): the baselines' `MlpHead` for `head="mlp"`, else a Dense layer."""
    if head == "mlp":
        return MlpHead(classes, activation=activation, dtype=dtype, name="predictions")
    return keras.layers.Dense(classes, activation=activation, dtype=dtype, name="predictions")


def _block_remat_scope(block_name, gradient_checkpointing):
    """Keras' rematerialization for one block, or the scope the caller is in."""
    if gradient_checkpointing:
        return keras.RematScope(mode="list_of_layers", layer_names=[block_name])
    return contextlib.nullcontext()


def _check_remat_scope():
    """Refuses the `keras.RematScope` modes that Keras cannot train on TensorFlow."""
    from keras.src.backend.common.remat import get_current_remat_mode

    mode = get_current_remat_mode()
    if mode is not None and mode.mode in ("full", "larger_than") and keras.backend.backend() == "tensorflow":
        raise ValueError(
            f"keras.RematScope(mode={mode.mode!r}) cannot train on TensorFlow: Keras rematerializes with "
            "tf.recompute_grad, which takes no keyword arguments in a graph, and Keras passes `training` to "
            "its own layers. Pass gradient_checkpointing=True instead (each block is rematerialized), use "
            "mode='list_of_layers' with block names, or the JAX backend, where every mode works."
        )


def _dtype_policy(dtype):
    """`dtype` as a `keras.DTypePolicy`: the global policy when `None`."""
    if dtype is None:
        return keras.config.dtype_policy()
    try:
        return keras.dtype_policies.get(dtype)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "`dtype` must be a dtype policy or its name: 'float32', 'mixed_bfloat16', 'mixed_float16', "
            f"'bfloat16', ... Received: dtype={dtype!r} ({error})"
        ) from None


def pyramid_layer_names(model):
    """`{"P2": layer name, ..., "P5": ...}`: each stage's last block.

    Level `Pk` has stride `2**k` (P2: 4, P3: 8, P4: 16, P5: 32).
    """
    last_blocks = {}
    for layer in model.layers:
        if "_block" in layer.name and layer.name.startswith("stage"):
            stage = int(layer.name[len("stage") : layer.name.index("_")])
            last_blocks[stage] = layer.name
    return {f"P{stage + 2}": name for stage, name in sorted(last_blocks.items())}


def pyramid_outputs(model):
    """`{"P2": tensor, ..., "P5": tensor}`: the stage outputs of a model.

    The builders also set this as `model.pyramid_outputs`; the function
    serves models reloaded from a `.keras` file, which lose the attribute.

    Example:

    >>> import keras, keras_metaformer
    >>> backbone = keras_metaformer.PoolFormerS12(weights=None, include_top=False)
    >>> features = keras.Model(backbone.inputs, pyramid_outputs(backbone))
    >>> {k: tuple(v.shape)[-1] for k, v in features.output.items()}
    {'P2': 64, 'P3': 128, 'P4': 320, 'P5': 512}
    """
    return {level: model.get_layer(name).output for level, name in pyramid_layer_names(model).items()}
