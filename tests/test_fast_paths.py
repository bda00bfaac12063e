"""The XLA-only implementations (see `keras_metaformer/layers/compilation.py`)
give the reference's numbers, forward and backward.

The other tests call layers eagerly, which on TensorFlow takes the plain
paths; here every layer runs inside the backend's XLA compiler.
"""

import re

import keras
import numpy as np
import numpy_reference as ref
import pytest
from layer_checks import set_sepconv_weights

from keras_metaformer import MetaFormer
from keras_metaformer import layers
from keras_metaformer.layers import compilation
from keras_metaformer.layers import depthwise as depthwise_module
from keras_metaformer.layers import mlp as mlp_module
from keras_metaformer.layers import norms as norms_module
from keras_metaformer.layers import patch_embedding as patch_embedding_module
from keras_metaformer.layers import products
from keras_metaformer.layers import sepconv_mixer as sepconv_module
from keras_metaformer.layers.compilation import compiled_by_xla
from keras_metaformer.layers.depthwise import depthwise_conv2d_same
from keras_metaformer.layers.strided_conv import strided_conv2d

RNG = np.random.default_rng(7)
JAX = keras.backend.backend() == "jax"


def _random(*shape):
    return RNG.normal(size=shape).astype("float32")


def _compiled(fn):
    if JAX:
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def _compiled_gradients(fn, weights):
    """Gradients of `sum(fn(*args) * weights)` with respect to every argument,
    under XLA."""
    if JAX:
        import jax
        import jax.numpy as jnp

        def gradients(*args):
            def total(*inputs):
                return jnp.sum(fn(*inputs) * weights)

            return jax.grad(total, argnums=tuple(range(len(args))))(*args)

        return jax.jit(gradients)
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def gradients(*args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            total = tf.reduce_sum(fn(*args) * weights)
        return tape.gradient(total, args)

    return gradients


def _compiled_layer_gradients(layer, x, weights, **call_kwargs):
    """`layer(x)` and the gradients of `sum(layer(x) * weights)` with respect
    to the layer's trainable weights and to `x`, under XLA."""
    if JAX:
        import jax
        import jax.numpy as jnp

        def total(trainable, x):
            y = layer.stateless_call(trainable, [], x, **call_kwargs)[0]
            return jnp.sum(y * weights), y

        (weight_gradients, input_gradient), y = jax.jit(jax.grad(total, argnums=(0, 1), has_aux=True))(
            [v.value for v in layer.trainable_variables], x
        )
        return y, weight_gradients, input_gradient
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, **call_kwargs)
            total = tf.reduce_sum(y * weights)
        *weight_gradients, input_gradient = tape.gradient(total, [*layer.trainable_variables, x])
        return y, weight_gradients, input_gradient

    return run(tf.constant(x))


def test_compiled_by_xla_sees_the_compiler():
    seen = []
    _compiled(lambda x: seen.append(compiled_by_xla()) or x)(np.zeros(2, "float32"))
    assert seen == [True]
    if not JAX:
        import tensorflow as tf

        assert not compiled_by_xla()  # eager
        tf.function(lambda x: seen.append(compiled_by_xla()) or x)(np.zeros(2, "float32"))
        assert seen == [True, False]


@pytest.mark.parametrize("pool_size, shape", [(3, (2, 5, 7, 3)), (5, (1, 6, 4, 2)), (7, (1, 3, 9, 1))])
def test_compiled_pool_mixer_matches_numpy(pool_size, shape):
    x = _random(*shape)
    mixer = layers.PoolMixer(pool_size)
    actual = keras.ops.convert_to_numpy(_compiled(mixer)(x))
    np.testing.assert_allclose(actual, ref.pool_mixer(x, pool_size), atol=1e-6)


@pytest.mark.parametrize("pool_size", [3, 5])
def test_compiled_pool_mixer_gradient_is_the_transposed_jacobian(pool_size):
    # The mixer is linear: its gradient is J^T w, with J built column by
    # column from the NumPy reference applied to basis images.
    shape = (1, 4, 5, 1)
    size = int(np.prod(shape))
    basis = np.eye(size, dtype="float32").reshape((size, *shape[1:]))
    jacobian = ref.pool_mixer(basis, pool_size).reshape(size, size).T
    weights = _random(*shape)
    (gradient,) = _compiled_gradients(layers.PoolMixer(pool_size), weights)(_random(*shape))
    expected = (jacobian.T @ weights.reshape(-1)).reshape(shape)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gradient), expected, atol=1e-6)


def test_compiled_pool_mixer_keeps_bfloat16():
    x = _random(1, 6, 6, 4)
    mixer = layers.PoolMixer(dtype="mixed_bfloat16")
    actual = _compiled(mixer)(keras.ops.cast(x, "bfloat16"))
    assert keras.backend.standardize_dtype(actual.dtype) == "bfloat16"
    expected = ref.pool_mixer(keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32")), 3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(actual, "float32")), expected, atol=3e-2)


@pytest.mark.parametrize("activation", ["gelu", "star_relu"])
def test_compiled_mlp_runs_in_blocks_and_matches_numpy(monkeypatch, activation):
    # Blocks of at most 64 hidden values: 16 rows of 4 hidden units. The
    # 2 * 6 * 6 = 72 positions tile into blocks of 12 rows.
    monkeypatch.setattr(mlp_module, "_HIDDEN_BLOCK_SIZE", 64)
    monkeypatch.setattr(compilation, "_gpu_is_default", lambda: False)  # the CPU path, on any machine
    block_shapes = []
    transform = layers.Mlp._transform

    def spy(self, x, *args):
        block_shapes.append(tuple(x.shape))
        return transform(self, x, *args)

    monkeypatch.setattr(layers.Mlp, "_transform", spy)
    x = _random(2, 6, 6, 1)
    mlp = layers.Mlp(mlp_ratio=4, activation=activation)
    mlp.build(x.shape)
    w1, b1, w2, b2 = _random(1, 4), _random(4), _random(4, 1), _random(1)
    for variable, value in zip([mlp.fc1.kernel, mlp.fc1.bias, mlp.fc2.kernel, mlp.fc2.bias], [w1, b1, w2, b2]):
        variable.assign(value)
    if activation == "star_relu":
        mlp.act.scale.assign([0.8])
        mlp.act.bias.assign([-0.1])
        hidden = 0.8 * np.maximum(x @ w1 + b1, 0) ** 2 - 0.1
        expected = hidden @ w2 + b2
    else:
        expected = ref.mlp(x, w1, b1, w2, b2, "gelu")

    looped = keras.ops.convert_to_numpy(_compiled(lambda x: mlp(x, training=False))(x))
    assert set(block_shapes) == {(12, 1)}  # TensorFlow traces the block twice
    np.testing.assert_allclose(looped, expected, rtol=1e-5, atol=1e-5)

    whole = keras.ops.convert_to_numpy(_compiled(lambda x: mlp(x, training=True))(x))
    assert block_shapes[-1] == (72, 1)  # training keeps the whole tensor
    np.testing.assert_allclose(whole, expected, rtol=1e-5, atol=1e-5)


def test_mlp_chooses_blocks_that_tile_the_positions(monkeypatch):
    monkeypatch.setattr(compilation, "_gpu_is_default", lambda: False)  # the CPU path, on any machine
    mlp = layers.Mlp(mlp_ratio=4)
    mlp.build((None, 64))  # 256 hidden units: 8192 rows per block at most
    if not JAX:
        assert mlp._chunk_rows(32 * 56 * 56) is None  # eager: never looped
    seen = []
    _compiled(lambda x: seen.extend(mlp._chunk_rows(n) for n in (3136, 32 * 56 * 56, 2 * 8209)) or x)(
        np.zeros(1, "float32")
    )
    # One image fits one block; 100352 = 2**11 * 7**2 tiles into 14 blocks
    # of 7168 rows (its largest divisor within the limit); 2 * 8209 (a
    # prime) has no divisor between 2048 and 8192, so it runs whole.
    assert seen == [None, 7168, None]


def test_exact_gelu_matches_the_erf_definition():
    x = np.linspace(-6, 6, 241, dtype="float32")
    actual = keras.ops.convert_to_numpy(_compiled(layers.exact_gelu)(x))
    np.testing.assert_allclose(actual, ref.gelu(x.astype("float64")), atol=1e-6)
    assert keras.activations.deserialize(keras.activations.serialize(layers.exact_gelu)) is layers.exact_gelu


@pytest.mark.parametrize("size, shape", [(3, (2, 5, 7, 3)), (7, (2, 9, 8, 4)), (7, (1, 3, 2, 2))])
def test_compiled_depthwise_conv_matches_numpy(size, shape):
    # The last shape is smaller than the kernel: most taps fall in the padding.
    x, kernel = _random(*shape), _random(size, size, shape[-1], 1)
    actual = keras.ops.convert_to_numpy(_compiled(depthwise_conv2d_same)(x, kernel))
    np.testing.assert_allclose(actual, ref.depthwise_conv2d_same(x, kernel), rtol=1e-5, atol=1e-5)


def _depthwise_kernel_gradient(x, kernel, weights):
    """`d sum(conv(x, kernel) * weights) / d kernel` as J^T w: the convolution
    is linear in the kernel, so each entry is the NumPy reference applied to
    a basis kernel."""
    gradient = np.zeros_like(kernel)
    for index in np.ndindex(*kernel.shape):
        basis = np.zeros_like(kernel)
        basis[index] = 1
        gradient[index] = np.sum(ref.depthwise_conv2d_same(x, basis) * weights)
    return gradient


@pytest.mark.parametrize("size", [3, 5])
def test_compiled_depthwise_conv_gradients_are_the_transposed_jacobians(size):
    # The convolution is linear in the input and in the kernel separately:
    # each gradient is J^T w, with J built from the NumPy reference applied
    # to basis inputs (resp. basis kernels).
    shape = (2, 4, 3, 2)
    x, kernel, weights = _random(*shape), _random(size, size, shape[-1], 1), _random(*shape)
    expected_dx = np.zeros_like(x)
    for index in np.ndindex(*shape):
        basis = np.zeros_like(x)
        basis[index] = 1
        expected_dx[index] = np.sum(ref.depthwise_conv2d_same(basis, kernel) * weights)
    expected_dk = _depthwise_kernel_gradient(x, kernel, weights)
    dx, dk = _compiled_gradients(depthwise_conv2d_same, weights)(x, kernel)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dx), expected_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dk), expected_dk, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loop", [False, True], ids=["unrolled", "looped"])
@pytest.mark.parametrize(
    "shape, chunk_elements",
    [
        ((3, 9, 6, 2), 2**20),  # one pass; 9x6 is not a whole number of 4x4 blocks
        ((6, 5, 8, 3), 2 * 5 * 8 * 3),  # three passes of two images
        ((5, 4, 4, 2), 2 * 4 * 4 * 2),  # 5 has no divisor 2: five passes of one
    ],
)
def test_compiled_depthwise_kernel_gradient_sums_over_every_block_and_image(monkeypatch, shape, chunk_elements, loop):
    # Each backend takes one form by default; both must hold on both. The
    # unrolled form, JAX's, takes TensorFlow's XLA tens of seconds to
    # compile: there, one shape shows it holds.
    if not JAX and not loop and shape != (3, 9, 6, 2):
        pytest.skip("the unrolled form on TensorFlow: the first shape only")
    monkeypatch.setattr(depthwise_module, "_CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(depthwise_module, "_loops_over_taps", lambda: loop)
    size = 7
    x, kernel, weights = _random(*shape), _random(size, size, shape[-1], 1), _random(*shape)
    expected_dk = _depthwise_kernel_gradient(x, kernel, weights)
    _, dk = _compiled_gradients(depthwise_conv2d_same, weights)(x, kernel)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dk), expected_dk, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(JAX, reason="jax.jit always traces with a known batch size")
def test_compiled_depthwise_kernel_gradient_takes_an_unknown_batch_size():
    import tensorflow as tf

    assert depthwise_module._loops_over_taps()  # TensorFlow's form: the only one it meets unknown batches in

    x, kernel, weights = _random(3, 9, 6, 2), _random(7, 7, 2, 1), _random(3, 9, 6, 2)

    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([None, 9, 6, 2]), tf.TensorSpec([7, 7, 2, 1])])
    def kernel_gradient(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            total = tf.reduce_sum(depthwise_conv2d_same(x, kernel) * weights)
        return tape.gradient(total, kernel)

    expected = _depthwise_kernel_gradient(x, kernel, weights)
    np.testing.assert_allclose(kernel_gradient(x, kernel).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(JAX, reason="the loop is TensorFlow's form; JAX keeps the unrolled one")
def test_tensorflow_kernel_gradient_is_a_loop_with_a_small_program(monkeypatch):
    # Unrolled, ConvFormer's training step was too big a program for
    # TensorFlow's XLA to compile in reasonable time and memory.
    assert depthwise_module._loops_over_taps()
    x, kernel, weights = _random(3, 9, 6, 2), _random(7, 7, 2, 1), _random(3, 9, 6, 2)

    def slices_in_gradient_program(loop):
        monkeypatch.setattr(depthwise_module, "_loops_over_taps", lambda: loop)
        gradients = _compiled_gradients(depthwise_conv2d_same, weights)
        hlo = gradients.experimental_get_compiler_ir(x, kernel)(stage="hlo")
        return sum(" slice(" in line for line in hlo.splitlines())

    assert 4 * slices_in_gradient_program(True) < slices_in_gradient_program(False)


def test_depthwise_kernel_gradient_picks_whole_chunks_of_images():
    per_image = 56 * 56 * 128
    assert depthwise_module._images_per_chunk(32, per_image) == 2
    assert depthwise_module._images_per_chunk(31, per_image) == 1
    assert depthwise_module._images_per_chunk(32, 7 * 7 * 1024) == 16
    assert depthwise_module._images_per_chunk(3, 4 * 4 * 2) == 3
    assert depthwise_module._images_per_chunk(None, per_image) == 1
    assert depthwise_module._images_per_chunk(8, 4 * per_image) == 1


def test_depthwise_conv_refuses_an_even_or_non_square_kernel():
    x = np.zeros((1, 4, 4, 2), "float32")
    for kernel_shape in [(4, 4, 2, 1), (3, 5, 2, 1)]:
        with pytest.raises(ValueError, match=r"odd side.*Received: kernel.shape="):
            depthwise_conv2d_same(x, np.zeros(kernel_shape, "float32"))


@pytest.mark.parametrize("use_bias", [False, True])
def test_compiled_sepconv_mixer_matches_numpy(use_bias):
    x = _random(2, 6, 5, 3)
    mixer = layers.SepConvMixer(kernel_size=5, use_bias=use_bias)
    pw1, dw, pw2 = _random(3, 6), _random(5, 5, 6, 1), _random(6, 3)
    set_sepconv_weights(mixer, pw1, dw, pw2, 1.3, 0.1)
    expected = ref.sepconv(x, pw1, 1.3, 0.1, dw, pw2)
    if use_bias:
        b1, bd, b2 = _random(6), _random(6), _random(3)
        mixer.pwconv1.bias.assign(b1)
        mixer.dwconv.bias.assign(bd)
        mixer.pwconv2.bias.assign(b2)
        hidden = ref.star_relu(x @ pw1 + b1, 1.3, 0.1)
        expected = (ref.depthwise_conv2d_same(hidden, dw) + bd) @ pw2 + b2
    actual = keras.ops.convert_to_numpy(_compiled(mixer)(x))
    # StarReLU squares its input, so the 25-tap sums add terms of up to a
    # few hundred: float32 leaves absolute errors of about 1e-5 where they
    # cancel (1.5e-5 seen on an AVX-512 CPU), which scale with the outputs.
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_compiled_sepconv_mixer_keeps_bfloat16_with_float32_sums():
    # Integer inputs and 0/1 weights make every value before the 49-term
    # window sums exact in bfloat16: the hidden map is x**2 (StarReLU with
    # scale 1 and bias 0) and the 1x1 convolutions copy channels. Summed in
    # float32, the output is the exact window sum rounded once to bfloat16;
    # summed in bfloat16, the partial sums (up to 49 * 64) lose whole units.
    x = RNG.integers(1, 9, size=(2, 9, 9, 3)).astype("float32")
    mixer = layers.SepConvMixer(dtype="mixed_bfloat16")
    identity = np.eye(3, dtype="float32")
    copy_twice, keep_first = np.concatenate([identity, identity], axis=1), np.concatenate([identity, 0 * identity])
    set_sepconv_weights(mixer, copy_twice, np.ones((7, 7, 6, 1), "float32"), keep_first, 1.0, 0.0)
    actual = _compiled(mixer)(keras.ops.cast(x, "bfloat16"))
    assert keras.backend.standardize_dtype(actual.dtype) == "bfloat16"
    expected = ref.depthwise_conv2d_same(x.astype("float64") ** 2, np.ones((7, 7, 3, 1)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(actual, "float32")), expected, rtol=2.0**-8)


@pytest.mark.parametrize("gpu", [False, True])
def test_cpu_only_fast_paths_step_aside_for_a_gpu(monkeypatch, gpu):
    # A GPU has fast kernels for the convolutions and the whole MLP; the
    # shifted-slice sums, the patch matmul and the blocked loop would only
    # slow it. TensorFlow's XLA has fast strided-convolution gradients too.
    monkeypatch.setattr(compilation, "_gpu_is_default", lambda gpu=gpu: gpu)
    calls = {"shifted": [], "patches": []}
    monkeypatch.setattr(
        sepconv_module,
        "depthwise_conv2d_same",
        lambda *args: calls["shifted"].append(args) or depthwise_conv2d_same(*args),
    )
    monkeypatch.setattr(
        patch_embedding_module, "strided_conv2d", lambda *args: calls["patches"].append(args) or strided_conv2d(*args)
    )
    x = _random(1, 6, 6, 4)
    mixer, stem = layers.SepConvMixer(), layers.PatchEmbedding(4, 3, strides=2, padding=1)
    for layer in (mixer, stem):
        layer.build(x.shape)
    _compiled(mixer)(x)
    assert bool(calls["shifted"]) is not gpu
    _compiled(lambda x: stem(x, training=False))(x)
    assert not calls["patches"]  # the patch matmul speeds up gradients only
    _compiled(lambda x: stem(x, training=True))(x)
    assert bool(calls["patches"]) is (JAX and not gpu)
    mlp = layers.Mlp(mlp_ratio=4)
    mlp.build((None, 64))
    seen = []
    _compiled(lambda x: seen.append(mlp._chunk_rows(32 * 56 * 56)) or x)(np.zeros(1, "float32"))
    assert seen == [None if gpu else 7168]


def test_compiled_sepconv_mixer_weight_gradients_match_keras_depthwise_conv(monkeypatch):
    # Every weight's gradient through the shifted-slice path equals the one
    # through Keras' DepthwiseConv2D (the path taken for a GPU), under XLA.
    x, weights = _random(2, 7, 6, 3), _random(2, 7, 6, 3)
    mixer = layers.SepConvMixer(kernel_size=5, use_bias=True)
    mixer.build(x.shape)
    for variable in mixer.trainable_variables:
        variable.assign(_random(*variable.shape))

    results = {}
    for gpu in (False, True):
        monkeypatch.setattr(compilation, "_gpu_is_default", lambda gpu=gpu: gpu)
        _, weight_gradients, _ = _compiled_layer_gradients(mixer, x, weights)
        results[gpu] = [keras.ops.convert_to_numpy(g) for g in weight_gradients]
    assert len(results[False]) == 8  # 3 kernels, 3 biases, StarReLU's scale and bias
    for shifted, keras_conv in zip(results[False], results[True]):
        np.testing.assert_allclose(shifted, keras_conv, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "size, strides, shape",
    # The stride leaves the last rows or columns unread in the first two.
    [(7, 4, (2, 14, 17, 3)), (3, 2, (2, 9, 10, 4)), (2, 2, (1, 4, 4, 1)), (3, 1, (1, 5, 3, 2))],
)
def test_compiled_strided_conv_matches_numpy(size, strides, shape):
    x, kernel = _random(*shape), _random(size, size, shape[-1], 5)
    actual = keras.ops.convert_to_numpy(_compiled(lambda x, k: strided_conv2d(x, k, strides))(x, kernel))
    np.testing.assert_allclose(actual, ref.conv2d(x, kernel, None, strides, 0), rtol=1e-5, atol=1e-5)


def test_compiled_strided_conv_gradients_are_the_transposed_jacobians():
    # Linear in the input and in the kernel separately, as above. The input's
    # last row and column are never read by a stride-2 3x3 kernel on 6x8:
    # their gradient must be zero.
    shape, strides = (2, 6, 8, 2), 2
    x, kernel = _random(*shape), _random(3, 3, 2, 3)
    weights = _random(2, 2, 3, 3)
    expected_dx = np.zeros_like(x)
    for index in np.ndindex(*shape):
        basis = np.zeros_like(x)
        basis[index] = 1
        expected_dx[index] = np.sum(ref.conv2d(basis, kernel, None, strides, 0) * weights)
    expected_dk = np.zeros_like(kernel)
    for index in np.ndindex(*kernel.shape):
        basis = np.zeros_like(kernel)
        basis[index] = 1
        expected_dk[index] = np.sum(ref.conv2d(x, basis, None, strides, 0) * weights)
    dx, dk = _compiled_gradients(lambda x, k: strided_conv2d(x, k, strides), weights)(x, kernel)
    dx = keras.ops.convert_to_numpy(dx)
    assert not dx[:, 5].any() and not dx[:, :, 7].any()
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dk), expected_dk, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kernel_shape, input_shape, message",
    [
        ((3, 2, 4, 8), (1, 8, 8, 4), r"square kernel shaped \(size, size, 4, filters\)"),
        ((3, 3, 3, 8), (1, 8, 8, 4), r"inputs with 4 channels.*kernel.shape=\(3, 3, 3, 8\)"),
        ((7, 7, 4, 8), (1, 6, 9, 4), r"7x7 kernel does not fit in inputs of 6x9"),
    ],
)
def test_strided_conv_refuses_a_kernel_that_does_not_fit(kernel_shape, input_shape, message):
    with pytest.raises(ValueError, match=message):
        strided_conv2d(np.zeros(input_shape, "float32"), np.zeros(kernel_shape, "float32"), 2)


def test_compiled_patch_embedding_gradients_match_keras_conv(monkeypatch):
    # The input's and every weight's gradient through the matmul path equal
    # those through Keras' Conv2D (the path taken for a GPU), under XLA; the
    # output is PyTorch's padded convolution.
    x, weights = _random(2, 11, 9, 3), _random(2, 6, 5, 4)
    layer = layers.PatchEmbedding(4, 3, strides=2, padding=1, norm="pre")
    layer.build(x.shape)
    for variable in layer.trainable_variables:
        variable.assign(_random(*variable.shape))
    kernel, bias = (keras.ops.convert_to_numpy(v) for v in (layer.conv.kernel, layer.conv.bias))

    results = {}
    for gpu in (False, True):
        monkeypatch.setattr(compilation, "_gpu_is_default", lambda gpu=gpu: gpu)
        y, weight_gradients, input_gradient = _compiled_layer_gradients(layer, x, weights, training=True)
        results[gpu] = [keras.ops.convert_to_numpy(g) for g in (*weight_gradients, input_gradient)]
        normed = ref.layer_norm(x, keras.ops.convert_to_numpy(layer.norm_layer.gamma), 0.0, 1e-6)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(y), ref.conv2d(normed, kernel, bias, 2, 1), rtol=1e-4, atol=1e-4
        )
    assert len(results[False]) == 4  # the norm's scale, the kernel, the bias, the input
    for matmul, keras_conv in zip(results[False], results[True]):
        np.testing.assert_allclose(matmul, keras_conv, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not JAX, reason="the patch product trains under JAX's XLA only")
def test_bfloat16_patch_embedding_training_gathers_from_float32(monkeypatch):
    # XLA's CPU backend would round each of the gather gradient's pads and
    # sums to bfloat16; gathered from float32, they are float32 sums.
    seen = []

    def recording(x, *args):
        seen.append(keras.backend.standardize_dtype(x.dtype))
        return strided_conv2d(x, *args)

    monkeypatch.setattr(patch_embedding_module, "strided_conv2d", recording)
    x, weights = _random(2, 11, 9, 3), _random(2, 6, 5, 4)
    reference = layers.PatchEmbedding(4, 3, strides=2, padding=1)
    layer = layers.PatchEmbedding(4, 3, strides=2, padding=1, dtype="mixed_bfloat16")
    for patch_embedding in (reference, layer):
        patch_embedding.build(x.shape)
    layer.set_weights(reference.get_weights())
    y, _, input_gradient = _compiled_layer_gradients(layer, _bfloat16(x), weights, training=True)
    assert seen == ["float32"] and keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    _, _, expected = _compiled_layer_gradients(reference, x, weights, training=True)
    np.testing.assert_allclose(_as_float32(input_gradient), keras.ops.convert_to_numpy(expected), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (7, 6)])
def test_compiled_layer_scale_gradients_match_numpy(shape):
    # The product runs on a (positions, channels) view; the scale's gradient
    # must still sum over every position of every image.
    layer = layers.LayerScale()
    x, weights, scale = _random(*shape), _random(*shape), _random(shape[-1])
    layer.build(shape)
    layer.scale.assign(scale)
    y, (d_scale,), dx = _compiled_layer_gradients(layer, x, weights)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y), x * scale, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dx), weights * scale, rtol=1e-6)
    expected = (weights * x).reshape(-1, shape[-1]).sum(axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(d_scale), expected, rtol=1e-5, atol=1e-5)


def test_compiled_block_gradients_with_folded_layer_scales_match_finite_differences():
    # The block folds its layer scales into norm1's affine parameters and
    # fc2's weights; the gradients of the weights involved must still be
    # those of the block as written in the paper, here the NumPy reference's
    # central differences in float64.
    channels = 3
    x, weights = _random(2, 4, 5, channels), _random(2, 4, 5, channels)
    block = layers.MetaFormerBlock(layer_scale_init_value=1.0)
    block.build(x.shape)
    for variable in block.trainable_variables:
        variable.assign(0.5 * _random(*variable.shape) + ("gamma" in variable.path or "scale" in variable.path))
    assert block._folds_layer_scale1()
    values = {
        v.path.split("/", 1)[1]: keras.ops.convert_to_numpy(v).astype("float64") for v in block.trainable_variables
    }

    def loss(values):
        params = {
            "norm1": (values["norm1/gamma"], values["norm1/beta"], 1e-5),
            "norm2": (values["norm2/gamma"], values["norm2/beta"], 1e-5),
            "layer_scale1": values["layer_scale1/scale"],
            "layer_scale2": values["layer_scale2/scale"],
            "fc1": (values["mlp/fc1/kernel"], values["mlp/fc1/bias"]),
            "fc2": (values["mlp/fc2/kernel"], values["mlp/fc2/bias"]),
        }
        return np.sum(ref.metaformer_block(x.astype("float64"), params) * weights)

    _, weight_gradients, _ = _compiled_layer_gradients(block, x, weights, training=True)
    gradients = dict(zip(values, (keras.ops.convert_to_numpy(g) for g in weight_gradients)))
    for path in ("layer_scale1/scale", "layer_scale2/scale", "norm1/gamma", "mlp/fc2/kernel", "mlp/fc2/bias"):
        expected = np.zeros_like(values[path])
        for index in np.ndindex(expected.shape):
            shifted = {key: value.copy() for key, value in values.items()}
            shifted[path][index] += 1e-4
            upper = loss(shifted)
            shifted[path][index] -= 2e-4
            expected[index] = (upper - loss(shifted)) / 2e-4
        np.testing.assert_allclose(gradients[path], expected, rtol=1e-3, atol=1e-3, err_msg=path)


@pytest.mark.parametrize("batch, folded", [(1, False), (2, True)])
def test_mlp_folds_its_output_scale_only_where_the_kernel_is_the_smaller_pass(batch, folded):
    # 12 hidden units: at batch 1 the 2 x 3 = 6 positions are fewer, and the
    # scale goes onto the (6, 3) output; at batch 2 (12 positions) into the
    # (12, 3) kernel. Training always folds. The numbers are the same.
    x, scale = _random(batch, 2, 3, 3), _random(3)
    mlp = layers.Mlp(mlp_ratio=4)
    mlp.build(x.shape)
    w1, b1, w2, b2 = (keras.ops.convert_to_numpy(v) for v in mlp.weights)
    expected = ref.mlp(x, w1, b1, w2, b2, "gelu") * scale

    def infer(x):
        return mlp(x, training=False, output_scale=scale)

    kernel_products = r"stablehlo\.multiply[^\n]*: tensor<12x3xf32>" if JAX else r"f32\[12,3\]\S* multiply\("
    assert bool(re.search(kernel_products, _compiled_hlo(infer, x))) == folded
    assert mlp._folds_output_scale(6 * batch, training=True)
    for run in (infer, _compiled(infer)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(run(x)), expected, rtol=1e-5, atol=1e-5)


def test_compiled_group_norm_takes_one_pass_statistics_that_stay_exact_far_from_zero(monkeypatch):
    # Under XLA the statistics come from the sums of x - k and their squares
    # (one read of x). Values near 1000 with a spread of about 1 would lose
    # the variance to cancellation without the shift k (float32 keeps about
    # 7 digits of the 1e6 squares).
    calls = []
    shifted_moments = norms_module.shifted_moments
    monkeypatch.setattr(norms_module, "shifted_moments", lambda *args: calls.append(1) or shifted_moments(*args))
    x = 1000 + _random(2, 4, 5, 3)
    norm = layers.GroupNormalization(groups=1, epsilon=1e-5)
    norm.build(x.shape)
    gamma, beta = _random(3), _random(3)
    norm.gamma.assign(gamma)
    norm.beta.assign(beta)
    expected = ref.group_norm_1(x.astype("float64"), gamma, beta, 1e-5)
    actual = keras.ops.convert_to_numpy(_compiled(norm)(x))
    assert calls  # traced through the one-pass statistics
    np.testing.assert_allclose(actual, expected, rtol=2e-3, atol=2e-3)


def test_compiled_group_norm_input_gradient_matches_finite_differences():
    x, weights = 3 + _random(2, 3, 2, 2), _random(2, 3, 2, 2)
    norm = layers.GroupNormalization(groups=1, epsilon=1e-5)
    norm.build(x.shape)
    gamma, beta = _random(2), _random(2)
    norm.gamma.assign(gamma)
    norm.beta.assign(beta)
    _, _, dx = _compiled_layer_gradients(norm, x, weights)

    def loss(x):
        return np.sum(ref.group_norm_1(x, gamma, beta, 1e-5) * weights)

    expected = np.zeros(x.shape)
    for index in np.ndindex(x.shape):
        step = np.zeros(x.shape)
        step[index] = 1e-4
        expected[index] = (loss(x + step) - loss(x - step)) / 2e-4
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dx), expected, rtol=1e-3, atol=1e-3)


# --- bfloat16 products under XLA on a CPU (keras_metaformer/layers/products.py) ---


def _bfloat16(x):
    return keras.ops.cast(keras.ops.convert_to_tensor(x), "bfloat16")


def _as_float32(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


def test_compiled_bfloat16_products_and_their_gradients_accumulate_in_float32():
    # Integer values, exact in bfloat16, whose 64-term sums reach ~4,000:
    # summed in float32 they are exact, and the result is that sum rounded
    # once to bfloat16; summed in bfloat16 they would lose whole units.
    x = RNG.integers(1, 9, size=(5, 64)).astype("float32")
    kernel = RNG.integers(1, 9, size=(64, 3)).astype("float32")
    upstream = RNG.integers(1, 9, size=(5, 3)).astype("float32")
    actual = _compiled(products.matmul)(_bfloat16(x), _bfloat16(kernel))
    assert keras.backend.standardize_dtype(actual.dtype) == "bfloat16"
    np.testing.assert_array_equal(_as_float32(actual), _as_float32(_bfloat16(x @ kernel)))

    dx, dkernel = _compiled_gradients(products.matmul, upstream)(_bfloat16(x), _bfloat16(kernel))
    np.testing.assert_array_equal(_as_float32(dx), _as_float32(_bfloat16(upstream @ kernel.T)))
    np.testing.assert_array_equal(_as_float32(dkernel), _as_float32(_bfloat16(x.T @ upstream)))


@pytest.mark.parametrize("inputs, outputs", [(3, 6), (6, 3)], ids=["narrower-input", "wider-input"])
def test_compiled_bfloat16_kernel_gradient_over_many_rows_is_the_float32_sum(inputs, outputs):
    # Enough rows that the kernel gradient transposes an operand first:
    # each of its sums, up to 40 * 64, is exact in float32 and rounded once.
    x = RNG.integers(1, 9, size=(40, inputs)).astype("float32")
    kernel = RNG.integers(1, 9, size=(inputs, outputs)).astype("float32")
    upstream = RNG.integers(1, 9, size=(40, outputs)).astype("float32")
    dx, dkernel = _compiled_gradients(products.matmul, upstream)(_bfloat16(x), _bfloat16(kernel))
    np.testing.assert_array_equal(_as_float32(dx), _as_float32(_bfloat16(upstream @ kernel.T)))
    np.testing.assert_array_equal(_as_float32(dkernel), _as_float32(_bfloat16(x.T @ upstream)))


@pytest.mark.skipif(JAX, reason="JAX traces every batch size on its own")
def test_compiled_bfloat16_kernel_gradient_over_rows_unknown_when_traced_is_the_float32_sum():
    import tensorflow as tf

    x = RNG.integers(1, 9, size=(40, 3)).astype("float32")
    kernel = RNG.integers(1, 9, size=(3, 6)).astype("float32")
    upstream = RNG.integers(1, 9, size=(40, 6)).astype("float32")

    @tf.function(
        jit_compile=True, input_signature=[tf.TensorSpec([None, 3], tf.bfloat16), tf.TensorSpec([3, 6], tf.bfloat16)]
    )
    def gradients(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            total = tf.reduce_sum(tf.cast(products.matmul(x, kernel), tf.float32) * upstream)
        return tape.gradient(total, kernel)

    hlo = gradients.experimental_get_compiler_ir(_bfloat16(x), _bfloat16(kernel))(stage="hlo")
    assert not _row_contracted_bfloat16_products(hlo)
    np.testing.assert_array_equal(
        _as_float32(gradients(_bfloat16(x), _bfloat16(kernel))), _as_float32(_bfloat16(x.T @ upstream))
    )


def test_compiled_bfloat16_batched_products_and_their_gradients_accumulate_in_float32():
    x = RNG.integers(1, 9, size=(2, 3, 4, 64)).astype("float32")
    y = RNG.integers(1, 9, size=(2, 3, 64, 5)).astype("float32")
    upstream = RNG.integers(1, 9, size=(2, 3, 4, 5)).astype("float32")
    actual = _compiled(products.matmul)(_bfloat16(x), _bfloat16(y))
    np.testing.assert_array_equal(_as_float32(actual), _as_float32(_bfloat16(x @ y)))

    dx, dy = _compiled_gradients(products.matmul, upstream)(_bfloat16(x), _bfloat16(y))
    np.testing.assert_array_equal(_as_float32(dx), _as_float32(_bfloat16(upstream @ y.swapaxes(-1, -2))))
    np.testing.assert_array_equal(_as_float32(dy), _as_float32(_bfloat16(x.swapaxes(-1, -2) @ upstream)))


def _compiled_hlo(fn, *args):
    """The HLO text of `fn` as XLA receives it from the backend."""
    if JAX:
        import jax

        return jax.jit(fn).lower(*args).as_text()
    import tensorflow as tf

    return tf.function(fn, jit_compile=True).experimental_get_compiler_ir(*args)(stage="hlo")


def _products(hlo):
    """`(operand dtypes, result dtype)` of every matrix product in `hlo`."""
    if JAX:  # stablehlo.dot_general %a, %b, ... : (tensor<8x16xbf16>, tensor<16x4xbf16>) -> tensor<8x4xf32>
        found = re.findall(r"stablehlo\.dot\w*[^\n]*: \(([^)]*)\) -> tensor<[^>]*x(\w+)>", hlo)
        return [(tuple(re.findall(r"x([a-z]\w*)>", operands)), result) for operands, result in found]
    # %dot.5 = f32[8,4]{1,0} dot(bf16[8,16]{1,0} %a, bf16[16,4]{1,0} %b), ...
    found = re.findall(r"= (\w+)\[[^\]]*\]\S* dot\((\w+)\[[^\]]*\]\S* \S+, (\w+)\[", hlo)
    return [((a, b), result) for result, a, b in found]


def _bfloat16_training_step(**options):
    """`(step, args)`: the weight gradients of a small mixed_bfloat16 MetaFormer
    with all three mixers (and `options`), for `_compiled_hlo` and `_compiled`."""
    model = MetaFormer(
        depths=(1, 1, 1),
        dims=(8, 16, 32),
        token_mixers=("pool", "sepconv", "attention"),
        weights=None,
        input_shape=(32, 32, 3),
        classes=3,
        dtype="mixed_bfloat16",
        **options,
    )
    images = _random(2, 32, 32, 3)
    if JAX:
        import jax
        import jax.numpy as jnp

        def step(trainable, non_trainable, images):
            def loss(trainable):
                outputs, _ = model.stateless_call(trainable, non_trainable, images, training=True)
                return jnp.sum(outputs)

            return jax.grad(loss)(trainable)

        return step, (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            images,
        )
    import tensorflow as tf

    def step(images):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(model(images, training=True))
        return tape.gradient(total, model.trainable_variables)

    return step, (tf.constant(images),)


def test_a_bfloat16_training_step_has_no_product_with_a_bfloat16_result():
    step, args = _bfloat16_training_step()
    found = _products(_compiled_hlo(step, *args))
    bfloat16 = [product for product in found if "bf16" in product[0]]
    # The patch embeddings', MLPs' and mixers' products, forward and backward.
    assert len(bfloat16) >= 3 * 12, found
    assert all(result == "f32" for _, result in bfloat16), found
    # And XLA runs it: TensorFlow 2.21's runtime refuses some of these products (over several axes).
    gradients = _compiled(step)(*args)
    assert all(np.isfinite(_as_float32(gradient)).all() for gradient in gradients)


def test_a_bfloat16_training_step_contracts_no_long_rows_in_bfloat16():
    # XLA's CPU backend runs a bfloat16 product contracted over the rows of
    # both operands (a kernel gradient, x^T @ dz) in float32; the layers
    # transpose one operand first where there are many rows. Left are the
    # stages with few rows: the last stage (8 positions) and the head (2).
    step, args = _bfloat16_training_step()
    found = _row_contracted_bfloat16_products(_compiled_hlo(step, *args))
    assert found and set(found) <= {2, 8}, found


def _row_contracted_bfloat16_products(hlo):
    """The row counts of the bfloat16 matrix products in `hlo` that contract
    both operands over their first axis (rows)."""
    if JAX:  # stablehlo.dot_general %a, %b, contracting_dims = [0] x [0], ... : (tensor<8x128xbf16>, ...
        found = re.findall(r"dot_general[^\n]*contracting_dims = \[0\] x \[0\][^\n]*: \(tensor<(\d+)x\d+xbf16>", hlo)
    else:  # dot(bf16[8,128]{1,0} %a, bf16[8,32]{1,0} %b), lhs_contracting_dims={0}, rhs_contracting_dims={0}
        found = re.findall(r"dot\(bf16\[(\d+),\d+\][^\n]*lhs_contracting_dims=\{0\}, rhs_contracting_dims=\{0\}", hlo)
    return [int(rows) for rows in found]


@pytest.mark.skipif(not JAX, reason="JAX's XLA only: TensorFlow's runs the convolutions itself")
@pytest.mark.parametrize(
    "channels, size, strides, padding, form",
    [(16, 3, 2, 1, "product"), (3, 7, 4, 2, "convolution")],
    ids=["downsampling", "stem"],
)
def test_bfloat16_patch_embedding_inference_sums_in_float32_and_rounds_once(
    monkeypatch, channels, size, strides, padding, form
):
    # XLA runs a bfloat16 convolution in float32. A downsampling layer
    # multiplies gathered patches with the kernel instead: bfloat16 inputs,
    # float32 sums. The stem, whose 3 input channels make the gather cost
    # more than the convolution, convolves the bfloat16 input and weights
    # in float32. Integer values are exact in bfloat16, and their sums (144
    # and 147 terms) in float32: either way the output is the exact sum
    # rounded once.
    monkeypatch.setattr(compilation, "_gpu_is_default", lambda: False)
    x = RNG.integers(1, 9, size=(2, 15, 15, channels)).astype("float32")
    layer = layers.PatchEmbedding(4, size, strides=strides, padding=padding, dtype="mixed_bfloat16")
    layer.build(x.shape)
    kernel = RNG.integers(1, 9, size=(size, size, channels, 4)).astype("float32")
    bias = np.array([0.5, -1.25, 3, 0], "float32")
    layer.conv.kernel.assign(kernel)
    layer.conv.bias.assign(bias)

    def infer(x):
        return layer(x, training=False)

    hlo = _compiled_hlo(infer, x)
    if form == "product":
        assert "convolution" not in hlo
        assert (("bf16", "bf16"), "f32") in _products(hlo)
    else:
        assert re.search(r"stablehlo\.convolution[^\n]*: \(tensor<[^>]*xf32>, tensor<[^>]*xf32>\)", hlo), hlo
        assert _products(hlo) == []
    actual = _compiled(infer)(x)
    assert keras.backend.standardize_dtype(actual.dtype) == "bfloat16"
    expected = ref.conv2d(x.astype("float64"), kernel.astype("float64"), bias.astype("float64"), strides, padding)
    np.testing.assert_array_equal(_as_float32(actual), _as_float32(_bfloat16(expected.astype("float32"))))


def test_compiled_bfloat16_mlp_loop_rewrites_its_input_as_16_bit_integers(monkeypatch):
    # The loop reads each block from the input's 72 rows and writes its
    # result back over them: no stacked output to fill with zeros and copy.
    # The buffer is 16-bit integers: XLA's CPU backend converts a bfloat16
    # loop buffer to float32 and back around each write, and JAX's XLA
    # reads the blocks faster as integers too.
    monkeypatch.setattr(mlp_module, "_HIDDEN_BLOCK_SIZE", 64)
    monkeypatch.setattr(compilation, "_gpu_is_default", lambda: False)
    x = _random(2, 6, 6, 2)
    mlp = layers.Mlp(mlp_ratio=2, dtype="mixed_bfloat16")
    mlp.build(x.shape)
    w1, w2 = (keras.ops.convert_to_numpy(v) for v in (mlp.fc1.kernel, mlp.fc2.kernel))
    b1, b2 = _random(4), _random(2)
    mlp.fc1.bias.assign(b1)
    mlp.fc2.bias.assign(b2)

    def infer(x):
        return mlp(x, training=False)

    hlo = _compiled_hlo(infer, x)
    if JAX:  # stablehlo.dynamic_update_slice %a, %b, ... : (tensor<72x2xui16>, tensor<12x2xui16>, ...
        written = re.findall(r"dynamic_update_slice[^\n]*: \(tensor<(\w+)>", hlo)
        read = re.findall(r"dynamic_slice[^\n]*: \(tensor<(\w+)>", hlo)
    else:  # dynamic-update-slice(u16[72,2]{1,0} %a, u16[12,2]{1,0} %b, ...
        written = re.findall(r"dynamic-update-slice\((\w+\[[^\]]*\])", hlo)
        read = re.findall(r"dynamic-slice\((\w+\[[^\]]*\])", hlo)
    buffer = "72x2xui16" if JAX else "u16[72,2]"
    assert written == [buffer] and read == [buffer], (written, read)
    actual = _compiled(infer)(x)
    assert keras.backend.standardize_dtype(actual.dtype) == "bfloat16"
    rounded = _as_float32(_bfloat16(x))
    expected = ref.mlp(rounded, _as_float32(_bfloat16(w1)), b1, _as_float32(_bfloat16(w2)), b2, "gelu")
    np.testing.assert_allclose(_as_float32(actual), expected, rtol=2e-2, atol=2e-2)


def _summed_dtypes(hlo):
    """The element type of every sum (reduction by addition) in `hlo`."""
    if JAX:  # stablehlo.reduce(%x init: %c) applies stablehlo.add across dimensions = [0] : (tensor<8x16xbf16>, ...
        found = re.findall(r"stablehlo\.reduce\([^\n]*applies stablehlo\.add[^\n]*: \(tensor<([^>]*)>,", hlo)
        return [shape.split("x")[-1] for shape in found]
    # %reduce.3 = bf16[16]{0} reduce(bf16[8,16]{1,0} %x, bf16[] %c), dimensions={0}, to_apply=%add_computation
    sums = re.findall(r"reduce\((\w+)\[[^\n]*to_apply=%?(\S*)", hlo)
    adders = set(re.findall(r"\n%?(\S+) [^\n]*\{\n[^}]*ROOT [^\n]* add\(", hlo))
    return [dtype for dtype, computation in sums if computation.rstrip(",") in adders]


def test_a_bfloat16_training_step_sums_in_float32():
    # XLA's CPU backend sums bfloat16 about 25 times more slowly than float32
    # (see `activations.in_float32`); the gradients of biases, layer scales,
    # residual scales and StarReLU's scalars are such sums. On JAX they are
    # the layers' doing (this fails without them); TensorFlow's bridge to XLA
    # sums bfloat16 in float32 itself.
    step, args = _bfloat16_training_step(activation="star_relu", res_scale_init_value=1.0)
    summed = _summed_dtypes(_compiled_hlo(step, *args))
    assert len(summed) >= 20, summed  # the weights' gradients and the norms' statistics
    assert "bf16" not in summed, summed
