import math

import keras
from keras import ops

from keras_metaformer.arguments import check_positive
from keras_metaformer.layers.activations import exact_gelu
from keras_metaformer.layers.activations import get_activation_layer
from keras_metaformer.layers.activations import in_float32
from keras_metaformer.layers.activations import serialize_activation
from keras_metaformer.layers.compilation import compiled_by_xla_for_cpu
from keras_metaformer.layers.compilation import traced_for_onednn
from keras_metaformer.layers.dtypes import is_16_bit
from keras_metaformer.layers.dtypes import stored_value
from keras_metaformer.layers.positions import as_rows
from keras_metaformer.layers.positions import positions_shape
from keras_metaformer.layers.products import biased_matmul
from keras_metaformer.layers.products import dense
from keras_metaformer.layers.products import has_plain_kernel
from keras_metaformer.layers.remat import Rematerializable

# Hidden activations per block of the looped MLP: 2**21 values, 8 MiB in
# float32, measured fastest at stage 1 of PoolFormer-S12 on a 2-core CPU.
_HIDDEN_BLOCK_SIZE = 2**21

# From this many positions on, a oneDNN graph runs `fc2` as a 1x1
# convolution (see `Mlp._projects_by_convolution`).
_CONVOLUTION_MIN_ROWS = 1024

# Below this many positions, a oneDNN graph multiplies 16-bit inputs by the
# float32 weights (see `Mlp._multiplies_in_float32`).
_FLOAT32_MAX_ROWS = 256


@keras.saving.register_keras_serializable(package="keras_metaformer")
class Mlp(Rematerializable, keras.layers.Layer):
    """The channel MLP of a MetaFormer block: expand, activate, project back.

    `Dense(mlp_ratio * C) -> activation -> Dense(C)` on the last axis, where
    `C` is the number of input channels. On channels-last images a Dense
    layer over the last axis is exactly the reference's 1x1 convolution.

    Args:
        mlp_ratio: float, hidden width as a multiple of the input channels.
        activation: activation name or callable. `"gelu"` is the exact
            (erf) GELU, as in PoolFormer; `"star_relu"` is the baselines'
            `StarReLU` layer, with learnable scale and bias.
        use_bias: bool, whether both Dense layers have a bias.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:

    >>> import numpy as np
    >>> mlp = Mlp(mlp_ratio=4)
    >>> y = mlp(np.zeros((2, 7, 7, 16), "float32"))
    >>> tuple(y.shape), tuple(mlp.fc1.kernel.shape)
    ((2, 7, 7, 16), (16, 64))
    """

    def __init__(self, mlp_ratio=4.0, activation="gelu", use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.mlp_ratio = check_positive("mlp_ratio", mlp_ratio)
        self.activation = activation
        self.use_bias = use_bias
        self.act = get_activation_layer(activation, "act", dtype=self.dtype_policy)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.fc1 = keras.layers.Dense(
            int(self.mlp_ratio * channels),
            use_bias=self.use_bias,
            dtype=self.dtype_policy,
            name="fc1",
        )
        self.fc2 = keras.layers.Dense(channels, use_bias=self.use_bias, dtype=self.dtype_policy, name="fc2")
        self.fc1.build(input_shape)
        hidden_shape = self.fc1.compute_output_shape(input_shape)
        self.act.build(hidden_shape)
        self.fc2.build(hidden_shape)

    def call(self, inputs, training=None, output_scale=None):
        """Applies the MLP. With `output_scale`, a per-channel vector, returns
        the result times it, the vector folded into `fc2`'s kernel and bias."""
        # One matrix product over all positions: as a Dense on the 4-D
        # tensor, the MLP ran about 1.4x slower on CPU under XLA.
        shape = positions_shape(inputs)
        x = as_rows(inputs)
        if self._multiplies_in_float32(x, training):
            return ops.reshape(self._float32_transform(x, output_scale), shape)
        if self._projects_by_convolution(inputs, training):
            hidden = ops.reshape(self._hidden(x, training), (*shape[:-1], self.fc1.units))
            return self._convolved_projection(hidden, output_scale)
        rows = None if training else self._chunk_rows(x.shape[0])
        project = self._projection(output_scale, self._folds_output_scale(x.shape[0], training))
        if rows is None:
            x = self._transform(x, project, training)
        else:
            # Inference under XLA on a CPU: a loop over blocks of positions,
            # so that the hidden activations (4x the input) live in one small
            # buffer reused by every block instead of a fresh full-size tensor.
            # Writing fresh memory is what bounds the MLP on CPU: about 1.6x
            # faster this way at batch 32. Training keeps the full tensor,
            # which the backward pass needs.
            x = self._looped(x, rows, project)
        return ops.reshape(x, shape)

    def _looped(self, x, rows, project):
        """`_transform` over blocks of `rows` rows of `x`, each written back
        in place of its input rows.

        The loop carries one buffer, `x` itself: block `i` is read, then
        overwritten by its result, and no other block touches those rows.
        A loop that stacks its results (`keras.ops.map`) fills a fresh
        output with zeros first, then copies it. In place, PoolFormer-S12's
        inference at batch 32 (A/B, 2-core Intel Xeon with AMX), float32 /
        bfloat16: JAX 788 -> 746 / 392 -> 377 ms, TensorFlow with
        `jit_compile=True` 799 -> 752 / 423 -> 418 ms, the same numbers.

        16-bit floats travel through the loop as 16-bit integers. XLA's CPU
        backend computes a bfloat16 dynamic-update-slice in float32: it
        converted the whole buffer to float32 and back at every block, 14
        full passes at stage 1 of PoolFormer-S12 at batch 32 (8 ms of each
        block's 17); integers are written in place. Read as bfloat16, JAX's
        XLA also moved the input's rounding into the loop, where each
        block's slice and conversion was about 5x slower per value than one
        conversion of the whole tensor.
        """
        dtype = x.dtype
        bits = is_16_bit(dtype)
        channels = x.shape[-1]

        def transform(i, buffer):
            start = (i * rows, 0)
            block = ops.slice(buffer, start, (rows, channels))
            if not bits:
                return ops.slice_update(buffer, start, self._transform(block, project))
            result = self._transform(ops.view(block, dtype), project)
            return ops.slice_update(buffer, start, ops.view(result, "uint16"))

        buffer = ops.fori_loop(0, x.shape[0] // rows, transform, ops.view(x, "uint16") if bits else x)
        return ops.view(buffer, dtype) if bits else buffer

    def _transform(self, x, project, training=None):
        return project(self._hidden(x, training))

    def _hidden(self, x, training=None):
        """`fc1` and the activation on the rows `x`."""
        hidden = dense(self.fc1, x, keep_float32=True)
        if hidden.dtype != x.dtype and isinstance(self.act, keras.layers.Activation):
            # Float32 from the product (bfloat16 under XLA on a CPU): the
            # activation function, not the layer (which would round its
            # input to bfloat16), runs on it, and its result is rounded
            # once, in the same pass.
            return ops.cast(self.act.activation(hidden), x.dtype)
        if not training and self._onednn_fuses_gelu(hidden):
            # TensorFlow's remapper fuses the product, its bias and this GELU
            # into one oneDNN kernel, which applies the GELU to the float32
            # sums and rounds once: what `exact_gelu`'s float32 detour does,
            # without its two casts, which would stop the fusion. A training
            # step keeps the detour: the gradient needs the sums, so nothing
            # is fused there.
            return ops.gelu(hidden, approximate=False)
        return self.act(hidden)

    def _multiplies_in_float32(self, x, training):
        """Whether the MLP runs on the float32 weights: at inference, in a
        TensorFlow graph that oneDNN runs, on fewer than `_FLOAT32_MAX_ROWS`
        rows (known at trace time) of 16-bit values, under a mixed policy.

        Under a mixed policy the weights are float32 variables, and a 16-bit
        product first casts every weight, on every call, one op each; its
        oneDNN kernel then reorders them for its bfloat16 units. A product
        costs rows x weights, the casts and reorders only weights: on few
        rows they cost more than the 16-bit product saves. In
        `model.predict`'s graph, bfloat16, 2-core Intel Xeon with AMX (A/B,
        medians), PoolFormer-S12 at batch 1 went from 34.7 to 32.5 ms
        (float32: 29.3) and ConvFormer-S18 from 81.4 to 79.4 ms (float32:
        77.9); batches 2 and 4 were unchanged. With the bound at 512 rows,
        batch 8 was 3% slower, and at 1024, batch 4 was 17% slower.
        Inference in float32 also rounds once, where the 16-bit path rounds
        the weights and the hidden values too.
        """
        if training or x.shape[0] is None or x.shape[0] >= _FLOAT32_MAX_ROWS or not is_16_bit(x.dtype):
            return False
        if not (has_plain_kernel(self.fc1) and has_plain_kernel(self.fc2)):
            return False
        # 16-bit weights (a "bfloat16" policy) are multiplied as they are.
        return not is_16_bit(self.fc1.variable_dtype) and traced_for_onednn()

    def _float32_transform(self, x, output_scale):
        """The MLP on the rows `x`, computed in float32 on the float32
        weights (and `output_scale`), and rounded once to `x`'s dtype."""
        hidden = biased_matmul(ops.cast(x, "float32"), *self._weights(self.fc1, "float32"))
        if isinstance(self.act, keras.layers.Activation):
            # The exact GELU on float32 is the op TensorFlow's remapper
            # fuses into the product.
            hidden = self.act.activation(hidden)
        else:  # StarReLU, whose call (not `__call__`) keeps float32 inputs
            hidden = self.act.call(hidden)
        if output_scale is None or self._folds_output_scale(x.shape[0], False):
            y = biased_matmul(hidden, *self._fc2_weights(output_scale, "float32"))
        else:
            y = biased_matmul(hidden, *self._weights(self.fc2, "float32"))
            y = y * ops.cast(stored_value(output_scale), "float32")
        return ops.cast(y, x.dtype)

    def _projects_by_convolution(self, inputs, training):
        """Whether `fc2` runs as a 1x1 convolution: at inference, in a
        TensorFlow graph that oneDNN runs, on images with at least
        `_CONVOLUTION_MIN_ROWS` positions (batch x height x width; height x
        width if the batch is unknown), with a bias.

        oneDNN runs a product on a variable's weights (`model.predict`'s
        graph) in their plain layout, slowly in bfloat16, where a
        convolution reorders its filter for its kernels first. TensorFlow
        also fuses the convolution's bias, and the residual sum after it,
        into its kernel. On PoolFormer-S12's shapes at batch 32 (2-core
        Intel Xeon with AMX), stage 1's bfloat16 `fc2` took 7.8 ms as a
        product and 3.1 as a convolution; below a few hundred rows the
        convolution is slower.
        """
        if training or len(inputs.shape) != 4 or not self.fc2.use_bias:
            return False
        if not has_plain_kernel(self.fc2) or not traced_for_onednn():
            return False
        if None in inputs.shape[1:3]:
            return False
        return math.prod(size for size in inputs.shape[:3] if size is not None) >= _CONVOLUTION_MIN_ROWS

    def _convolved_projection(self, hidden, output_scale):
        """`fc2` (times `output_scale`, folded into its weights) as a 1x1
        convolution of the `(batch, height, width, hidden)` tensor `hidden`."""
        import tensorflow as tf

        # Folded, so that the residual sum follows the bias directly.
        kernel, bias = self._fc2_weights(output_scale)
        outputs = tf.nn.conv2d(hidden, kernel[None, None], strides=1, padding="VALID")
        return tf.nn.bias_add(outputs, bias)

    def _onednn_fuses_gelu(self, hidden):
        return (
            keras.backend.standardize_dtype(hidden.dtype) == "bfloat16"
            and isinstance(self.act, keras.layers.Activation)
            and self.act.activation is exact_gelu
            and self.fc1.use_bias
            and has_plain_kernel(self.fc1)
            and traced_for_onednn()
        )

    def _folds_output_scale(self, positions, training):
        """Whether `output_scale` goes into `fc2`'s weights or onto its output.

        Folded, it costs a pass over the kernel, `hidden` rows long; on the
        output, one over `positions` rows, which XLA fuses into the residual
        sum but a TensorFlow graph runs as its own op. So it is folded where
        that pass is the shorter one, and in training, where the folded form
        also makes XLA's backward pass faster (see `MetaFormerBlock.call`).
        PoolFormer-S12 at batch 1, 2-core Intel Xeon: a TensorFlow graph went
        from 29.4 to 26.0 ms in float32 and from 40.2 to 39.0 ms in bfloat16;
        at batch 32 folding everywhere is faster (385.7 against 400.1 ms
        unfolded everywhere, bfloat16). An unknown number of positions (a
        batch dimension of None) keeps the fold.
        """
        return bool(training) or positions is None or positions >= self.fc1.units

    def _projection(self, output_scale, fold=True):
        """`fc2`, times `output_scale` when given: folded into its weights,
        or, when `fold` is False, applied to its output."""
        if output_scale is None:
            return lambda h: dense(self.fc2, h)
        dtype = self.fc2.compute_dtype
        scale = ops.cast(output_scale, dtype)
        if self.fc2.quantization_mode is not None:  # an integer kernel
            return lambda h: self.fc2(h) * scale
        if not fold:

            def scaled(h):
                # A float32 product (bfloat16 under XLA on a CPU) is scaled before its one rounding.
                y = dense(self.fc2, h, keep_float32=True)
                return ops.cast(y * ops.cast(output_scale, y.dtype), dtype)

            return scaled

        def project(h):
            kernel, bias = self._fc2_weights(output_scale)
            return biased_matmul(h, kernel, bias)

        return project

    def _fc2_weights(self, output_scale, dtype=None):
        """`fc2`'s kernel and bias (`None` without one), as `_weights`
        gives them, times `output_scale` (a vector over its outputs) if
        given."""
        kernel, bias = self._weights(self.fc2, dtype)
        if output_scale is None:
            return kernel, bias
        scale = ops.cast(output_scale if dtype is None else stored_value(output_scale), kernel.dtype)

        def fold(weight):
            # In float32 under XLA on a CPU, where the scale's gradient is then a float32 sum.
            return in_float32(lambda w: w * ops.cast(scale, w.dtype), weight, xla_cpu_only=True)

        return fold(kernel), None if bias is None else fold(bias)

    @staticmethod
    def _weights(layer, dtype=None):
        """A Dense layer's kernel and bias (`None` without one) in its
        compute dtype, as Keras reads them, or cast to `dtype` from the
        stored weights."""
        if dtype is None:
            dtype, read = layer.compute_dtype, lambda weight: weight
        else:
            read = stored_value
        kernel = ops.cast(read(layer.kernel), dtype)
        return kernel, ops.cast(read(layer.bias), dtype) if layer.use_bias else None

    def _chunk_rows(self, positions):
        """Rows per block for the looped MLP, or `None` to run it whole."""
        if positions is None or not compiled_by_xla_for_cpu():
            return None
        target = max(1, _HIDDEN_BLOCK_SIZE // self.fc1.units)
        if positions <= target:
            return None
        # Blocks must tile the positions exactly; too small ones cost more
        # in loop steps than they save.
        for rows in range(target, target // 4, -1):
            if positions % rows == 0:
                return rows
        return None

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mlp_ratio": self.mlp_ratio,
                "activation": serialize_activation(self.activation),
                "use_bias": self.use_bias,
            }
        )
        return config
