import keras
import numpy as np
import numpy_reference as ref
import pytest
from layer_checks import check_layer

from keras_metaformer import layers

RNG = np.random.default_rng(42)


def _random(*shape, scale=1.0):
    return (scale * RNG.normal(size=shape)).astype("float32")


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


# --- PoolMixer ---------------------------------------------------------------


def test_pool_mixer_layer_checks():
    check_layer(
        layers.PoolMixer,
        {"pool_size": 3},
        input_shape=(2, 7, 9, 4),
        expected_output_shape=(2, 7, 9, 4),
        expected_num_trainable_weights=0,
        run_training=False,
    )


@pytest.mark.parametrize("pool_size", [1, 3, 5, 7])
def test_pool_mixer_matches_numpy(pool_size):
    x = _random(2, 6, 7, 3)
    expected = ref.pool_mixer(x, pool_size)
    actual = _numpy(layers.PoolMixer(pool_size)(x))
    np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_pool_mixer_scale_multiplies_its_output_and_rounds_bfloat16_once():
    x, scale = _random(2, 6, 7, 3, scale=3.0), _random(2, 1, 1, 3)
    expected = ref.pool_mixer(x, 3) * scale
    np.testing.assert_allclose(_numpy(layers.PoolMixer(3)(x, scale=scale)), expected, rtol=1e-5, atol=1e-6)
    # The bfloat16 input, pooled, scaled and rounded once in float32.
    x16 = keras.ops.cast(x, "bfloat16")
    exact = ref.pool_mixer(_numpy(keras.ops.cast(x16, "float32")), 3) * _numpy(
        keras.ops.cast(keras.ops.cast(scale, "bfloat16"), "float32")
    )
    actual = layers.PoolMixer(3, dtype="mixed_bfloat16")(x16, scale=scale)
    assert keras.backend.standardize_dtype(actual.dtype) == "bfloat16"
    np.testing.assert_array_equal(_numpy(keras.ops.cast(actual, "float32")), _numpy(_bfloat16_rounded(exact)))


def _bfloat16_rounded(x):
    return keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32")


@pytest.mark.parametrize("pool_size", [0, 2, 4, 3.0])
def test_pool_mixer_rejects_even_or_invalid_sizes(pool_size):
    with pytest.raises(ValueError, match=r"positive odd integer.*Received: pool_size="):
        layers.PoolMixer(pool_size)


# --- LayerScale --------------------------------------------------------------


def test_layer_scale_layer_checks():
    check_layer(
        layers.LayerScale,
        {"init_value": 0.5},
        input_shape=(2, 3, 3, 5),
        expected_output_shape=(2, 3, 3, 5),
        expected_num_trainable_weights=1,
    )


def test_layer_scale_matches_numpy():
    layer = layers.LayerScale(init_value=1e-5)
    x = _random(2, 3, 4, 6)
    layer.build(x.shape)
    np.testing.assert_array_equal(_numpy(layer.scale), np.full(6, 1e-5, "float32"))
    scale = _random(6)
    layer.scale.assign(scale)
    np.testing.assert_allclose(_numpy(layer(x)), x * scale, rtol=1e-6)


# --- DropPath ----------------------------------------------------------------


def test_drop_path_layer_checks():
    check_layer(
        layers.DropPath,
        {"rate": 0.3, "seed": 1},
        input_shape=(4, 3, 3, 2),
        expected_output_shape=(4, 3, 3, 2),
        expected_num_trainable_weights=0,
        run_training=False,
    )


def test_drop_path_drops_whole_samples_and_rescales():
    rate = 0.25
    x = np.abs(_random(4000, 2, 2, 3)) + 0.1
    y = _numpy(layers.DropPath(rate, seed=3)(x, training=True))
    ratio = y / x
    # Each sample is either dropped entirely or kept and scaled by 1/(1-rate).
    per_sample = ratio.reshape(len(x), -1)
    assert np.allclose(per_sample, per_sample[:, :1], atol=1e-5)
    np.testing.assert_allclose(np.unique(per_sample.round(5)), [0.0, 1.0 / (1.0 - rate)], rtol=1e-5)
    kept = (per_sample[:, 0] > 0).mean()
    assert abs(kept - (1 - rate)) < 0.03, kept  # 4000 draws: 4.5 standard errors


def test_drop_path_is_identity_at_inference_and_at_rate_zero():
    x = _random(8, 3, 3, 2)
    np.testing.assert_array_equal(_numpy(layers.DropPath(0.5, seed=0)(x)), x)
    np.testing.assert_array_equal(_numpy(layers.DropPath(0.0)(x, training=True)), x)


def test_drop_path_is_reproducible_from_its_seed():
    x = np.ones((64, 2), "float32")
    first = _numpy(layers.DropPath(0.5, seed=7)(x, training=True))
    second = _numpy(layers.DropPath(0.5, seed=7)(x, training=True))
    other = _numpy(layers.DropPath(0.5, seed=8)(x, training=True))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_drop_path_seed_generator_is_tracked():
    layer = layers.DropPath(0.5, seed=1)
    # The state lives in a Keras variable, so it is saved and traced (JAX).
    assert any("seed_generator" in v.path for v in layer.variables)
    assert not layers.DropPath(0.0).variables


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_drop_path_rejects_invalid_rates(rate):
    with pytest.raises(ValueError, match=r"\[0, 1\). Received: rate="):
        layers.DropPath(rate)


# --- Mlp -----------------------------------------------------------------------


def test_mlp_layer_checks():
    check_layer(
        layers.Mlp,
        {"mlp_ratio": 4},
        input_shape=(2, 3, 3, 8),
        expected_output_shape=(2, 3, 3, 8),
        expected_num_trainable_weights=4,
    )


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu"])
def test_mlp_matches_numpy(activation):
    mlp = layers.Mlp(mlp_ratio=4, activation=activation)
    x = _random(2, 3, 3, 8)
    mlp.build(x.shape)
    w1, b1, w2, b2 = _random(8, 32), _random(32), _random(32, 8), _random(8)
    for variable, value in zip([mlp.fc1.kernel, mlp.fc1.bias, mlp.fc2.kernel, mlp.fc2.bias], [w1, b1, w2, b2]):
        variable.assign(value)
    expected = ref.mlp(x, w1, b1, w2, b2, activation)
    np.testing.assert_allclose(_numpy(mlp(x)), expected, rtol=1e-4, atol=1e-4)


def test_exact_gelu_of_bfloat16_is_the_float32_value_rounded_once():
    # On every path (TensorFlow's kernels eagerly, XLA on JAX), a bfloat16 input gives
    # the exact GELU of its value rounded once to bfloat16.
    from keras_metaformer.layers.activations import exact_gelu

    x = keras.ops.cast(np.linspace(-4, 4, 257, dtype="float32"), "bfloat16")
    actual = exact_gelu(x)
    assert keras.backend.standardize_dtype(actual.dtype) == "bfloat16"
    rounded = keras.ops.cast(
        ref.gelu(_numpy(keras.ops.cast(x, "float32")).astype("float64")).astype("float32"), "bfloat16"
    )
    np.testing.assert_array_equal(_numpy(keras.ops.cast(actual, "float32")), _numpy(keras.ops.cast(rounded, "float32")))


def test_mlp_gelu_is_exact_not_tanh_approximation():
    x = np.linspace(-4, 4, 81, dtype="float32").reshape(1, 81)
    mlp = layers.Mlp(mlp_ratio=1, activation="gelu")
    mlp.build(x.shape)
    mlp.fc1.kernel.assign(np.eye(81, dtype="float32"))
    mlp.fc1.bias.assign(np.zeros(81, "float32"))
    mlp.fc2.kernel.assign(np.eye(81, dtype="float32"))
    mlp.fc2.bias.assign(np.zeros(81, "float32"))
    np.testing.assert_allclose(_numpy(mlp(x)), ref.gelu(x), atol=2e-6)


# --- GroupNormalization ----------------------------------------------------------


def test_group_normalization_layer_checks():
    check_layer(
        layers.GroupNormalization,
        {"groups": 1, "epsilon": 1e-5},
        input_shape=(2, 5, 3, 4),
        expected_output_shape=(2, 5, 3, 4),
        expected_num_trainable_weights=2,
    )


def test_group_normalization_matches_numpy():
    x = _random(3, 5, 7, 6, scale=3.0) + 2.0
    norm = layers.GroupNormalization(groups=1, epsilon=1e-5)
    norm.build(x.shape)
    gamma, beta = _random(6), _random(6)
    norm.gamma.assign(gamma)
    norm.beta.assign(beta)
    np.testing.assert_allclose(_numpy(norm(x)), ref.group_norm_1(x, gamma, beta, 1e-5), rtol=1e-5, atol=1e-5)


def test_group_normalization_without_scale_and_center_matches_numpy():
    x = _random(2, 4, 4, 3)
    norm = layers.GroupNormalization(groups=1, epsilon=1e-5, scale=False, center=False)
    expected = ref.group_norm_1(x, np.ones(3, "float32"), np.zeros(3, "float32"), 1e-5)
    np.testing.assert_allclose(_numpy(norm(x)), expected, rtol=1e-5, atol=1e-5)
    assert not norm.weights


def test_group_normalization_channel_scale_is_gamma_over_the_standard_deviation():
    x, gamma, output_scale = _random(3, 5, 7, 6, scale=3.0) + 2.0, _random(6), _random(6)
    norm = layers.GroupNormalization(groups=1, epsilon=1e-5)
    norm.build(x.shape)
    norm.gamma.assign(gamma)
    expected = gamma * output_scale / np.sqrt(x.var(axis=(1, 2, 3), keepdims=True, dtype="float64") + 1e-5)
    np.testing.assert_allclose(_numpy(norm.channel_scale(x, output_scale=output_scale)), expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"needs groups=1.*Received: groups=3"):
        layers.GroupNormalization(groups=3).channel_scale(_random(2, 4, 4, 6))


def test_group_normalization_with_more_groups_is_keras_layer():
    x = _random(2, 4, 4, 6)
    ours = layers.GroupNormalization(groups=3, epsilon=1e-5)
    theirs = keras.layers.GroupNormalization(groups=3, epsilon=1e-5)
    ours.build(x.shape)
    theirs.build(x.shape)
    gamma, beta = _random(6), _random(6)
    for layer in (ours, theirs):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    np.testing.assert_allclose(_numpy(ours(x)), _numpy(theirs(x)), rtol=1e-6, atol=1e-6)


def test_group_normalization_keeps_bfloat16_and_computes_statistics_in_float32():
    # A large offset: in bfloat16, E[x] and the centred values lose the
    # small variations the float32 statistics keep.
    x = _random(2, 4, 4, 3) + 300.0
    norm = layers.GroupNormalization(groups=1, epsilon=1e-5, dtype="mixed_bfloat16")
    y = norm(x)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    expected = ref.group_norm_1(x, np.ones(3, "float32"), np.zeros(3, "float32"), 1e-5)
    np.testing.assert_allclose(_numpy(keras.ops.cast(y, "float32")), expected, atol=0.05)


# --- PatchEmbedding ---------------------------------------------------------


def test_patch_embedding_layer_checks():
    check_layer(
        layers.PatchEmbedding,
        {"filters": 6, "kernel_size": 7, "strides": 4, "padding": 2},
        input_shape=(2, 35, 41, 3),
        expected_output_shape=(2, 9, 10, 6),
        expected_num_trainable_weights=2,
    )


@pytest.mark.parametrize(
    "kernel_size, strides, padding, size",
    [(7, 4, 2, (33, 38)), (3, 2, 1, (9, 10)), (3, 2, 1, (8, 8))],
)
def test_patch_embedding_matches_symmetric_padding(kernel_size, strides, padding, size):
    x = _random(2, *size, 3)
    layer = layers.PatchEmbedding(5, kernel_size, strides=strides, padding=padding)
    layer.build(x.shape)
    kernel, bias = _random(kernel_size, kernel_size, 3, 5), _random(5)
    layer.conv.kernel.assign(kernel)
    layer.conv.bias.assign(bias)
    expected = ref.conv2d(x, kernel, bias, strides, padding)
    actual = _numpy(layer(x))
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_patch_embedding_symbolic_shapes_with_unknown_size():
    layer = layers.PatchEmbedding(8, 3, strides=2, padding=1)
    assert layer.compute_output_shape((None, None, 15, 4)) == (None, None, 8, 8)


# --- MetaFormerBlock --------------------------------------------------------


def test_metaformer_block_layer_checks():
    check_layer(
        layers.MetaFormerBlock,
        {"layer_scale_init_value": 0.5, "drop_path_rate": 0.1, "seed": 3},
        input_shape=(2, 5, 6, 8),
        expected_output_shape=(2, 5, 6, 8),
        # 2 norms x (gamma, beta), 2 Dense x (kernel, bias), 2 layer scales.
        expected_num_trainable_weights=10,
        # Pooling preserves constants, so avg_pool(y + b) - (y + b) does not
        # depend on the shift b of norm1: its gradient is exactly zero.
        constant_under_training=("norm1/beta",),
    )


def _set_block_params(block, channels, norm):
    params = {}
    for index in (1, 2):
        norm_layer = getattr(block, f"norm{index}")
        gamma, beta = 1 + _random(channels, scale=0.2), _random(channels, scale=0.2)
        norm_layer.gamma.assign(gamma)
        norm_layer.beta.assign(beta)
        norm_args = (gamma, beta)
        if norm == "batch":
            mean, var = _random(channels), 0.5 + np.abs(_random(channels))
            norm_layer.moving_mean.assign(mean)
            norm_layer.moving_variance.assign(var)
            norm_args = (gamma, beta, mean, var)
        params[f"norm{index}"] = (*norm_args, block.norm_epsilon)
        scale = 0.5 + np.abs(_random(channels))
        getattr(block, f"layer_scale{index}").scale.assign(scale)
        params[f"layer_scale{index}"] = scale
    hidden = 4 * channels
    params["fc1"] = (_random(channels, hidden, scale=0.3), _random(hidden, scale=0.1))
    params["fc2"] = (_random(hidden, channels, scale=0.3), _random(channels, scale=0.1))
    block.mlp.fc1.kernel.assign(params["fc1"][0])
    block.mlp.fc1.bias.assign(params["fc1"][1])
    block.mlp.fc2.kernel.assign(params["fc2"][0])
    block.mlp.fc2.bias.assign(params["fc2"][1])
    return params


_NUMPY_NORMS = {
    "group": ref.group_norm_1,
    "layer": ref.layer_norm,
    "batch": ref.batch_norm_inference,
}


@pytest.mark.parametrize(
    "norm, activation, pool_size",
    [("group", "gelu", 3), ("group", "silu", 5), ("layer", "relu", 3), ("batch", "gelu", 7)],
)
def test_metaformer_block_matches_numpy(norm, activation, pool_size):
    channels = 6
    x = _random(2, 5, 7, channels, scale=2.0)
    block = layers.MetaFormerBlock(pool_size=pool_size, norm=norm, activation=activation, norm_epsilon=1e-5)
    block.build(x.shape)
    params = _set_block_params(block, channels, norm)
    expected = ref.metaformer_block(x, params, pool_size, activation, _NUMPY_NORMS[norm])
    np.testing.assert_allclose(_numpy(block(x)), expected, rtol=1e-4, atol=1e-4)


def test_metaformer_block_inference_scales_the_pooling_instead_of_normalising(monkeypatch):
    # pool(norm1(x)) - norm1(x) = scale * (pool(x) - x): norm1's shift (its
    # beta and the mean) cancels. Inference computes only norm1's scale;
    # training normalises, so that beta keeps its (zero) gradient. Both
    # give the reference's numbers.
    channels = 6
    x = _random(2, 5, 7, channels, scale=2.0) + 3.0
    block = layers.MetaFormerBlock(pool_size=3, norm_epsilon=1e-5)
    block.build(x.shape)
    params = _set_block_params(block, channels, "group")
    expected = ref.metaformer_block(x, params, 3, "gelu", ref.group_norm_1)
    norm1_calls = []
    original = type(block.norm1).call
    monkeypatch.setattr(
        type(block.norm1), "call", lambda self, *a, **k: norm1_calls.append(self.name) or original(self, *a, **k)
    )
    np.testing.assert_allclose(_numpy(block(x, training=False)), expected, rtol=1e-4, atol=1e-4)
    assert "norm1" not in norm1_calls and "norm2" in norm1_calls
    norm1_calls.clear()
    np.testing.assert_allclose(_numpy(block(x, training=True)), expected, rtol=1e-4, atol=1e-4)
    assert "norm1" in norm1_calls


def test_metaformer_block_without_layer_scale():
    block = layers.MetaFormerBlock(layer_scale_init_value=None)
    block(np.zeros((1, 4, 4, 8), "float32"))
    assert not [w for w in block.weights if "layer_scale" in w.path]


def test_metaformer_block_drop_path_only_in_training():
    x = _random(64, 4, 4, 8)
    block = layers.MetaFormerBlock(layer_scale_init_value=1.0, drop_path_rate=0.5, seed=0)
    inference = _numpy(block(x, training=False))
    np.testing.assert_array_equal(inference, _numpy(block(x)))
    assert not np.isclose(inference, x, atol=1e-5).all(axis=(1, 2, 3)).any()
    trained = _numpy(block(x, training=True))
    # A sample whose two branches were both dropped (probability 1/4) comes
    # out as its input; kept branches are rescaled, never identity.
    identity = np.isclose(trained, x, atol=1e-6).all(axis=(1, 2, 3))
    assert 4 <= identity.sum() <= 32, identity.sum()


class _DoubleMixer(keras.layers.Layer):
    def call(self, inputs):
        return 2.0 * inputs


keras.saving.register_keras_serializable(package="tests")(_DoubleMixer)


def test_metaformer_block_accepts_a_layer_as_mixer_and_serializes_it():
    block = layers.MetaFormerBlock(token_mixer=_DoubleMixer(name="double"), layer_scale_init_value=1.0)
    x = _random(1, 3, 3, 4)
    block(x)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(block))
    assert isinstance(restored.token_mixer, _DoubleMixer)
    restored(x)
    restored.set_weights(block.get_weights())
    np.testing.assert_allclose(_numpy(restored(x)), _numpy(block(x)), atol=1e-6)


def test_registered_token_mixer_is_available_by_name():
    @layers.register_token_mixer("test_zero")
    @keras.saving.register_keras_serializable(package="tests")
    class ZeroMixer(keras.layers.Layer):
        def call(self, inputs):
            return 0.0 * inputs

    assert "test_zero" in layers.token_mixer_names()
    block = layers.MetaFormerBlock(token_mixer="test_zero")
    assert isinstance(block.token_mixer, ZeroMixer)
    restored = layers.MetaFormerBlock.from_config(block.get_config())
    assert isinstance(restored.token_mixer, ZeroMixer)


def test_metaformer_block_errors():
    with pytest.raises(ValueError, match=r"Unknown token mixer 'attn'. Expected one of \[.*'pool'"):
        layers.MetaFormerBlock(token_mixer="attn")
    with pytest.raises(ValueError, match=r"Unknown norm 'rms'. Expected one of \['group', 'layer', 'batch'\]"):
        layers.MetaFormerBlock(norm="rms")
    with pytest.raises(ValueError, match=r"configures the 'pool' token mixer only"):
        layers.MetaFormerBlock(token_mixer=_DoubleMixer(), pool_size=5)
    with pytest.raises(ValueError, match="already registered"):
        layers.register_token_mixer("pool")(_DoubleMixer)


# --- dtypes.stored_value ----------------------------------------------------------


def test_stored_value_reads_float32_weights_where_keras_casts_them(monkeypatch):
    import sys

    from keras.src.backend.common.variables import AutocastScope

    from keras_metaformer.layers.dtypes import stored_value

    dense = keras.layers.Dense(2, dtype="mixed_bfloat16")
    dense.build((None, 3))
    with AutocastScope("bfloat16"):  # what a mixed-policy layer's call runs in
        assert keras.backend.standardize_dtype(keras.ops.convert_to_tensor(dense.kernel).dtype) == "bfloat16"
        assert keras.backend.standardize_dtype(stored_value(dense.kernel).dtype) == "float32"
        # A Keras without that scope's module: the value as Keras gives it.
        monkeypatch.setitem(sys.modules, "keras.src.backend.common.variables", None)
        assert keras.backend.standardize_dtype(stored_value(dense.kernel).dtype) == "bfloat16"
