"""Keras' own layer contract, and the checks of the arguments users pass.

`run_layer_test` is the harness Keras runs on its own layers: config and
serialization round-trips, symbolic and eager shapes, weight and
seed-generator counts, a training step, and a mixed-precision pass.
"""

import inspect

import keras
import numpy as np
import pytest
from keras.src.testing import TestCase

import keras_metaformer
from keras_metaformer import layers

_HARNESS = TestCase()
IMAGE = (2, 8, 8, 4)
TOKENS = (2, 4, 4, 8)

# (layer class, init kwargs, input shape, output shape, trainable, non-trainable, seed generators)
LAYER_CASES = [
    (layers.PoolMixer, {"pool_size": 3}, IMAGE, IMAGE, 0, 0, 0),
    (layers.PoolMixer, {"pool_size": 5}, IMAGE, IMAGE, 0, 0, 0),
    (layers.IdentityMixer, {}, IMAGE, IMAGE, 0, 0, 0),
    (layers.ToRGB, {}, (2, 8, 8, 1), (2, 8, 8, 3), 0, 0, 0),
    (layers.ToRGB, {}, (2, 8, 8, 4), (2, 8, 8, 3), 0, 0, 0),
    (layers.DropPath, {"rate": 0.0}, IMAGE, IMAGE, 0, 0, 0),
    (layers.DropPath, {"rate": 0.2, "seed": 1}, IMAGE, IMAGE, 0, 0, 1),
    (layers.LayerScale, {"init_value": 0.5}, IMAGE, IMAGE, 1, 0, 0),
    (layers.StarReLU, {}, IMAGE, IMAGE, 2, 0, 0),
    (layers.GroupNormalization, {"groups": 1, "epsilon": 1e-5}, IMAGE, IMAGE, 2, 0, 0),
    (layers.Mlp, {"mlp_ratio": 2.0}, IMAGE, IMAGE, 4, 0, 0),
    (layers.Mlp, {"mlp_ratio": 4.0, "activation": "star_relu", "use_bias": False}, IMAGE, IMAGE, 4, 0, 0),
    (layers.MlpHead, {"classes": 5}, (2, 8), (2, 5), 6, 0, 0),
    (layers.MlpHead, {"classes": 5, "activation": "softmax"}, (2, 8), (2, 5), 6, 0, 0),
    (
        layers.PatchEmbedding,
        {"filters": 8, "kernel_size": 7, "strides": 4, "padding": 2},
        (2, 16, 16, 3),
        (2, 4, 4, 8),
        2,
        0,
        0,
    ),
    (
        layers.PatchEmbedding,
        {"filters": 8, "kernel_size": 3, "strides": 2, "padding": 1, "norm": "pre"},
        IMAGE,
        (2, 4, 4, 8),
        3,
        0,
        0,
    ),
    (
        layers.PatchEmbedding,
        {"filters": 8, "kernel_size": 3, "strides": 2, "padding": 1, "norm": "post"},
        IMAGE,
        (2, 4, 4, 8),
        3,
        0,
        0,
    ),
    (layers.RandomMixer, {"seed": 0}, TOKENS, TOKENS, 0, 1, 1),
    (layers.SepConvMixer, {}, IMAGE, IMAGE, 5, 0, 0),
    (layers.AttentionMixer, {"head_dim": 4}, TOKENS, TOKENS, 2, 0, 0),
    # Blocks: 2 norms x 2, MLP 2 x 2, layer scales or residual scales 2.
    (layers.MetaFormerBlock, {"token_mixer": "pool"}, IMAGE, IMAGE, 10, 0, 0),
    (layers.MetaFormerBlock, {"token_mixer": "pool", "drop_path_rate": 0.1, "seed": 2}, IMAGE, IMAGE, 10, 0, 1),
    (
        layers.MetaFormerBlock,
        {
            "token_mixer": "identity",
            "activation": "star_relu",
            "use_bias": False,
            "norm_use_bias": False,
            "layer_scale_init_value": None,
            "res_scale_init_value": 1.0,
        },
        IMAGE,
        IMAGE,
        8,
        0,
        0,
    ),
    (layers.MetaFormerBlock, {"token_mixer": "random"}, TOKENS, TOKENS, 10, 1, 1),
    (
        layers.MetaFormerBlock,
        {"token_mixer": "sepconv", "norm": "layer", "activation": "star_relu"},
        IMAGE,
        IMAGE,
        10 + 5 + 2,
        0,
        0,
    ),
    (layers.MetaFormerBlock, {"token_mixer": "attention", "norm": "layer"}, TOKENS, TOKENS, 12, 0, 0),
    (layers.MetaFormerBlock, {"token_mixer": "pool", "norm": "batch"}, IMAGE, IMAGE, 10, 4, 0),
]
STATELESS = (layers.PoolMixer, layers.IdentityMixer, layers.DropPath, layers.ToRGB)


def _case_id(case):
    layer_cls, kwargs = case[:2]
    return f"{layer_cls.__name__}-" + "-".join(f"{k}={v}" for k, v in kwargs.items())


@pytest.mark.parametrize("case", LAYER_CASES, ids=[_case_id(case) for case in LAYER_CASES])
def test_keras_layer_harness_passes(case):
    layer_cls, kwargs, input_shape, output_shape, trainable, non_trainable, seeds = case
    _HARNESS.run_layer_test(
        layer_cls,
        kwargs,
        input_shape=input_shape,
        expected_output_shape=output_shape,
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable,
        expected_num_seed_generators=seeds,
        # A layer without weights is built at construction, except a
        # subclass that defines its own `build`, which Keras must call.
        assert_built_after_instantiation=layer_cls in STATELESS,
    )


def test_every_exported_layer_is_in_the_harness():
    exported = {
        obj
        for name in layers.__all__
        if inspect.isclass(obj := getattr(layers, name)) and issubclass(obj, keras.layers.Layer)
    }
    assert exported - {case[0] for case in LAYER_CASES} == set()


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixer_instance_follows_the_blocks_dtype_policy(policy):
    block = layers.MetaFormerBlock(token_mixer=layers.SepConvMixer(), layer_scale_init_value=None, dtype=policy)
    outputs = block(np.ones(IMAGE, "float32"))
    compute_dtype = policy.split("_")[1]
    assert keras.backend.standardize_dtype(outputs.dtype) == compute_dtype
    assert block.token_mixer.compute_dtype == compute_dtype
    assert block.token_mixer.pwconv1.compute_dtype == compute_dtype
    assert {keras.backend.standardize_dtype(w.dtype) for w in block.token_mixer.weights} == {"float32"}


def test_a_mixer_built_in_another_policy_is_refused():
    mixer = layers.SepConvMixer()
    mixer.build(IMAGE)
    with pytest.raises(ValueError, match=r"has dtype policy 'float32', but block .* has 'mixed_float16'"):
        layers.MetaFormerBlock(token_mixer=mixer, dtype="mixed_float16")


# --- Arguments ---------------------------------------------------------------


def _tiny(**kwargs):
    arguments = dict(depths=(1, 1), dims=(8, 16), input_shape=(32, 32, 3), classes=3, weights=None)
    return keras_metaformer.MetaFormer(**{**arguments, **kwargs})


BAD_ARGUMENTS = [
    (
        _tiny,
        {"drop_path_rate": 1.0},
        ValueError,
        r"`drop_path_rate` must be a number in \[0, 1\). Received: "
        r"drop_path_rate=1.0",
    ),
    (_tiny, {"drop_path_rate": -0.1}, ValueError, r"`drop_path_rate` must be a number in \[0, 1\)"),
    (_tiny, {"drop_path_rate": "0.1"}, TypeError, r"Received: drop_path_rate='0.1' \(str\)"),
    (_tiny, {"classes": 0}, ValueError, r"`classes` must be an integer >= 1. Received: classes=0"),
    (_tiny, {"classes": "10"}, TypeError, r"`classes` must be an integer >= 1. Received: classes='10' \(str\)"),
    (_tiny, {"classes": 2.5}, ValueError, r"`classes` must be an integer"),
    (_tiny, {"depths": (1, 0)}, ValueError, r"`depths\[1\]` must be an integer >= 1"),
    (_tiny, {"depths": 2}, TypeError, r"`depths` must be a non-empty list of integers"),
    (_tiny, {"dims": (8, "16")}, TypeError, r"`dims\[1\]` must be an integer >= 1"),
    (_tiny, {"mlp_ratio": 0}, ValueError, r"`mlp_ratio` must be a number > 0. Received: mlp_ratio=0"),
    (_tiny, {"norm_epsilon": -1e-5}, ValueError, r"`norm_epsilon` must be a number > 0"),
    (_tiny, {"layer_scale_init_value": "1e-5"}, TypeError, r"`layer_scale_init_value` must be a number"),
    (
        _tiny,
        {"activation": "gleu"},
        ValueError,
        r"Unknown activation 'gleu'. Expected 'star_relu', one of "
        r"Keras' activations \(.*gelu.*relu",
    ),
    (_tiny, {"classifier_activation": "sofmax"}, ValueError, r"Unknown classifier_activation 'sofmax'.*softmax"),
    (_tiny, {"norm": "grup"}, ValueError, r"Unknown norm 'grup'. Expected one of \['group', 'layer', 'batch'\]"),
    (
        _tiny,
        {"token_mixers": ["pool", "atention"]},
        ValueError,
        r"Unknown token mixer 'atention'. Expected one "
        r"of \[.*'attention'",
    ),
    (_tiny, {"pool_size": 2}, ValueError, r"`pool_size` must be a positive odd integer"),
    (_tiny, {"input_shape": ("224", 224, 3)}, TypeError, r"`input_shape` must be \(height, width, channels\)"),
    (
        _tiny,
        {"input_shape": (32, 32, 5)},
        ValueError,
        r"RGB form. Received: 5 channels \(input_shape=\(32, 32, "
        r"5\)\) with include_preprocessing=True",
    ),
    (keras_metaformer.PoolFormerS12, {"weights": None, "drop_path_rate": 1.5}, ValueError, r"`drop_path_rate`"),
    (keras_metaformer.PoolFormerS12, {"weights": None, "classes": -3}, ValueError, r"`classes` must be an integer"),
    (layers.MetaFormerBlock, {"mlp_ratio": -4}, ValueError, r"`mlp_ratio` must be a number > 0"),
    (layers.MetaFormerBlock, {"drop_path_rate": 1}, ValueError, r"`drop_path_rate` must be a number in \[0, 1\)"),
    (layers.MetaFormerBlock, {"activation": "rleu"}, ValueError, r"Unknown activation 'rleu'.*relu"),
    (layers.Mlp, {"mlp_ratio": "4"}, TypeError, r"`mlp_ratio` must be a number > 0. Received: mlp_ratio='4'"),
    (layers.MlpHead, {"classes": 0}, ValueError, r"`classes` must be an integer >= 1"),
    (layers.AttentionMixer, {"head_dim": 0}, ValueError, r"`head_dim` must be an integer >= 1"),
    (layers.AttentionMixer, {"head_dim": "32"}, TypeError, r"`head_dim` must be an integer >= 1"),
    (layers.SepConvMixer, {"expansion_ratio": 0}, ValueError, r"`expansion_ratio` must be a number > 0"),
    (layers.SepConvMixer, {"kernel_size": "7"}, TypeError, r"`kernel_size` must be an integer"),
    (
        layers.PatchEmbedding,
        {"filters": 0, "kernel_size": 3, "strides": 2, "padding": 1},
        ValueError,
        r"`filters` must be an integer >= 1",
    ),
    (
        layers.PatchEmbedding,
        {"filters": 8, "kernel_size": 3, "strides": 2, "padding": -1},
        ValueError,
        r"`padding` must be an integer >= 0",
    ),
    (layers.RandomMixer, {"num_tokens": 0}, ValueError, r"`num_tokens` must be an integer >= 1"),
    (layers.DropPath, {"rate": "0.5"}, TypeError, r"`rate` must be a number in \[0, 1\)"),
    (layers.LayerScale, {"init_value": None}, TypeError, r"`init_value` must be a number"),
    (layers.PoolMixer, {"pool_size": "3"}, TypeError, r"`pool_size` must be a positive odd integer"),
]


@pytest.mark.parametrize(
    "build, kwargs, error, message", BAD_ARGUMENTS, ids=[f"{b.__name__}-{k}" for b, k, *_ in BAD_ARGUMENTS]
)
def test_bad_arguments_name_the_argument_and_the_range(build, kwargs, error, message):
    with pytest.raises(error, match=message):
        build(**kwargs)


def test_numpy_scalars_are_accepted_and_stored_as_python_numbers():
    model = _tiny(
        depths=np.array([1, 1]),
        dims=(np.int64(8), np.int32(16)),
        classes=np.int64(3),
        mlp_ratio=np.float32(2.0),
        drop_path_rate=np.float64(0.25),
        pool_size=np.int64(5),
        input_shape=(np.int64(32), np.int64(32), np.int64(3)),
    )
    assert tuple(model.output.shape) == (None, 3)
    block = model.get_layer("stage1_block0")
    assert block.token_mixer.pool_size == 5 and type(block.token_mixer.pool_size) is int
    assert block.drop_path_rate == 0.25 and type(block.drop_path_rate) is float
    assert type(block.mlp_ratio) is float
    # Configs stay plain JSON after a round trip through a .keras-style config.
    restored = keras.Model.from_config(model.get_config())
    assert restored.get_layer("stage1_block0").token_mixer.pool_size == 5


# --- Grey and RGBA input -----------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_grey_and_rgba_images_are_made_rgb_before_the_normalisation(channels):
    rgb_model = _tiny()
    model = _tiny(input_shape=(32, 32, channels))
    model.set_weights(rgb_model.get_weights())  # same network: it sees RGB
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, channels)).astype("float32")
    # What tf.io.decode_image(channels=3) and PIL's convert("RGB") make of them.
    rgb = np.repeat(images[..., :1], 3, axis=-1) if channels < 3 else images[..., :3]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(images)), keras.ops.convert_to_numpy(rgb_model(rgb)), atol=1e-6
    )


def test_grey_input_without_preprocessing_keeps_one_channel():
    model = _tiny(input_shape=(32, 32, 1), include_preprocessing=False)
    assert model.get_layer("stem").conv.kernel.shape[2] == 1
