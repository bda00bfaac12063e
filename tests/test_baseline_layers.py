"""Layers of the MetaFormer baselines, against NumPy."""

import keras
import numpy as np
import numpy_reference as ref
import pytest
from layer_checks import check_layer
from layer_checks import set_sepconv_weights

from keras_metaformer import layers

RNG = np.random.default_rng(7)


def _random(*shape, scale=1.0):
    return (scale * RNG.normal(size=shape)).astype("float32")


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_star_relu_layer_checks_and_numerics():
    check_layer(
        layers.StarReLU,
        {"scale_init_value": 0.8, "bias_init_value": 0.1},
        input_shape=(2, 3, 3, 4),
        expected_output_shape=(2, 3, 3, 4),
        expected_num_trainable_weights=2,
    )
    layer = layers.StarReLU()
    x = _random(2, 5)
    layer.build(x.shape)
    layer.scale.assign([0.7])
    layer.bias.assign([-0.2])
    np.testing.assert_allclose(_numpy(layer(x)), ref.star_relu(x, 0.7, -0.2), rtol=1e-6, atol=1e-6)


def test_squared_relu_is_registered_and_exact():
    x = _random(10)
    np.testing.assert_allclose(_numpy(layers.squared_relu(x)), ref.squared_relu(x), rtol=1e-6)
    serialized = keras.saving.serialize_keras_object(layers.squared_relu)
    assert keras.saving.deserialize_keras_object(serialized) is layers.squared_relu


def test_identity_mixer_layer_checks():
    check_layer(
        layers.IdentityMixer,
        {},
        input_shape=(2, 3, 4, 5),
        expected_output_shape=(2, 3, 4, 5),
        expected_num_trainable_weights=0,
        run_training=False,
    )


def test_random_mixer_layer_checks_and_numerics():
    layer = check_layer(
        layers.RandomMixer,
        {"seed": 3},
        input_shape=(2, 3, 4, 5),
        expected_output_shape=(2, 3, 4, 5),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=1,
        run_training=False,
    )
    matrix = _numpy(layer.random_matrix)
    assert matrix.shape == (12, 12)
    np.testing.assert_allclose(matrix.sum(axis=-1), 1.0, rtol=1e-5)  # softmax rows
    x = _random(2, 3, 4, 5)
    np.testing.assert_allclose(_numpy(layer(x)), ref.random_mixing(x, matrix), rtol=1e-5, atol=1e-5)
    # The seed fixes the matrix.
    again = layers.RandomMixer(seed=3)
    again.build((None, 3, 4, 5))
    np.testing.assert_array_equal(_numpy(again.random_matrix), matrix)


def test_random_mixer_needs_a_fixed_input_size():
    with pytest.raises(ValueError, match=r"height x width = num_tokens.*Received: input shape \(None, None, None, 8\)"):
        layers.RandomMixer().build((None, None, None, 8))
    with pytest.raises(ValueError, match="num_tokens=49"):
        layers.RandomMixer(num_tokens=49).build((None, 14, 14, 8))


def test_sepconv_mixer_layer_checks_and_numerics():
    check_layer(
        layers.SepConvMixer,
        {},
        input_shape=(2, 5, 6, 4),
        expected_output_shape=(2, 5, 6, 4),
        expected_num_trainable_weights=5,  # pwconv1, act1 (scale, bias), dwconv, pwconv2
    )
    mixer = layers.SepConvMixer(kernel_size=5)
    x = _random(2, 6, 7, 4)
    pw1, dw, pw2 = _random(4, 8, scale=0.5), _random(5, 5, 8, 1, scale=0.3), _random(8, 4, scale=0.5)
    set_sepconv_weights(mixer, pw1, dw, pw2, 1.3, 0.1)
    expected = ref.sepconv(x, pw1, 1.3, 0.1, dw, pw2)
    np.testing.assert_allclose(_numpy(mixer(x)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels, heads", [(64, 2), (96, 3), (16, 1)])
def test_attention_mixer_matches_numpy(channels, heads):
    mixer = layers.AttentionMixer(head_dim=32)
    x = _random(2, 3, 4, channels)
    mixer.build(x.shape)
    assert mixer.num_heads == heads
    qkv, proj = _random(channels, 3 * 32 * heads, scale=0.2), _random(32 * heads, channels, scale=0.2)
    mixer.qkv.kernel.assign(qkv)
    mixer.proj.kernel.assign(proj)
    expected = ref.attention(x, qkv, proj, head_dim=32)
    np.testing.assert_allclose(_numpy(mixer(x)), expected, rtol=1e-4, atol=1e-4)


def test_attention_mixer_layer_checks():
    check_layer(
        layers.AttentionMixer,
        {"head_dim": 8},
        input_shape=(2, 3, 3, 16),
        expected_output_shape=(2, 3, 3, 16),
        expected_num_trainable_weights=2,
    )


def test_mlp_head_layer_checks_and_numerics():
    check_layer(
        layers.MlpHead,
        {"classes": 3},
        input_shape=(4, 8),
        expected_output_shape=(4, 3),
        expected_num_trainable_weights=6,
    )
    head = layers.MlpHead(classes=3)
    x = _random(4, 8)
    head.build(x.shape)
    values = [
        _random(8, 32, scale=0.3),
        _random(32),
        1 + _random(32, scale=0.1),
        _random(32),
        _random(32, 3),
        _random(3),
    ]
    for variable, value in zip(
        [head.fc1.kernel, head.fc1.bias, head.norm.gamma, head.norm.beta, head.fc2.kernel, head.fc2.bias], values
    ):
        variable.assign(value)
    np.testing.assert_allclose(_numpy(head(x)), ref.mlp_head(x, *values, 1e-6), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("position", ["pre", "post"])
def test_patch_embedding_with_norm_matches_numpy(position):
    layer = layers.PatchEmbedding(6, 3, strides=2, padding=1, norm=position)
    x = _random(2, 9, 10, 4)
    layer.build(x.shape)
    kernel, bias = _random(3, 3, 4, 6), _random(6)
    gamma = 1 + _random(4 if position == "pre" else 6, scale=0.2)
    layer.conv.kernel.assign(kernel)
    layer.conv.bias.assign(bias)
    layer.norm_layer.gamma.assign(gamma)
    zero = np.zeros_like(gamma)
    if position == "pre":
        expected = ref.conv2d(ref.layer_norm(x, gamma, zero, 1e-6), kernel, bias, 2, 1)
    else:
        expected = ref.layer_norm(ref.conv2d(x, kernel, bias, 2, 1), gamma, zero, 1e-6)
    np.testing.assert_allclose(_numpy(layer(x)), expected, rtol=1e-4, atol=1e-4)
    assert not [w for w in layer.weights if w.path.endswith("beta")]  # no bias


def test_baseline_block_matches_numpy():
    """StarReLU MLP without biases, GroupNorm without bias, residual scales."""
    channels = 6
    block = layers.MetaFormerBlock(
        activation="star_relu",
        norm="group",
        norm_epsilon=1e-6,
        norm_use_bias=False,
        use_bias=False,
        layer_scale_init_value=None,
        res_scale_init_value=1.0,
    )
    x = _random(2, 4, 5, channels, scale=2.0)
    block.build(x.shape)
    g1, g2 = 1 + _random(channels, scale=0.2), 1 + _random(channels, scale=0.2)
    r1, r2 = 0.5 + np.abs(_random(channels)), 0.5 + np.abs(_random(channels))
    fc1, fc2 = _random(channels, 4 * channels, scale=0.3), _random(4 * channels, channels, scale=0.3)
    block.norm1.gamma.assign(g1)
    block.norm2.gamma.assign(g2)
    block.res_scale1.scale.assign(r1)
    block.res_scale2.scale.assign(r2)
    block.mlp.fc1.kernel.assign(fc1)
    block.mlp.fc2.kernel.assign(fc2)
    block.mlp.act.scale.assign([1.2])
    block.mlp.act.bias.assign([-0.1])
    zero = np.zeros(channels)
    y = r1 * x + ref.pool_mixer(ref.group_norm_1(x, g1, zero, 1e-6), 3)
    expected = r2 * y + ref.star_relu(ref.group_norm_1(y, g2, zero, 1e-6) @ fc1, 1.2, -0.1) @ fc2
    np.testing.assert_allclose(_numpy(block(x)), expected, rtol=1e-4, atol=1e-4)
    assert not [w for w in block.weights if w.path.endswith(("beta", "bias")) and "act" not in w.path]


def test_scale_is_the_residual_name_of_layer_scale():
    assert layers.Scale is layers.LayerScale
    block = layers.MetaFormerBlock(res_scale_init_value=1.0, layer_scale_init_value=None)
    block.build((None, 4, 4, 8))
    np.testing.assert_array_equal(_numpy(block.res_scale1.scale), np.ones(8, "float32"))
