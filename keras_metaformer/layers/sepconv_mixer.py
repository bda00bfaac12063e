import keras
from keras import ops

from keras_metaformer.arguments import check_int
from keras_metaformer.arguments import check_positive
from keras_metaformer.layers.activations import StarReLU
from keras_metaformer.layers.compilation import compiled_by_xla_for_cpu
from keras_metaformer.layers.depthwise import depthwise_conv2d_same
from keras_metaformer.layers.positions import as_rows
from keras_metaformer.layers.positions import positions_shape
from keras_metaformer.layers.products import dense
from keras_metaformer.layers.token_mixers import register_token_mixer


@register_token_mixer("sepconv")
@keras.saving.register_keras_serializable(package="keras_metaformer")
class SepConvMixer(keras.layers.Layer):
    """ConvFormer's token mixer: an inverted separable convolution.

    `Dense(expansion_ratio * C) -> StarReLU -> 7x7 depthwise conv ->
    Dense(C)`, as in MobileNetV2's inverted bottleneck. The depthwise
    convolution has stride 1 and an odd kernel, so Keras' "same" padding is
    symmetric and equals the reference's `padding=kernel_size // 2`.

    Under XLA on a CPU (JAX, or TensorFlow with `jit_compile=True`) the
    depthwise convolution runs as sums of shifted slices with a matching
    custom gradient (`layers/depthwise.py`), since XLA's CPU convolution for
    it is about 10x slower; elsewhere, GPUs included, as Keras'
    `DepthwiseConv2D`, which SavedModel and TFLite exports keep. Both give
    the same numbers.

    Reference: Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024.

    Args:
        expansion_ratio: float, hidden width relative to the input channels.
        kernel_size: odd int, side of the depthwise kernel.
        use_bias: bool, whether the three convolutions have biases.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:

    >>> import numpy as np
    >>> mixer = SepConvMixer()
    >>> y = mixer(np.zeros((2, 14, 14, 16), "float32"))
    >>> tuple(y.shape), tuple(mixer.dwconv.kernel.shape)
    ((2, 14, 14, 16), (7, 7, 32, 1))
    """

    def __init__(self, expansion_ratio=2.0, kernel_size=7, use_bias=False, **kwargs):
        super().__init__(**kwargs)
        kernel_size = check_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(
                f"`kernel_size` must be odd so that the padding is symmetric. Received: kernel_size={kernel_size}"
            )
        self.expansion_ratio = check_positive("expansion_ratio", expansion_ratio)
        self.kernel_size = kernel_size
        self.use_bias = use_bias
        self.act1 = StarReLU(name="act1", dtype=self.dtype_policy)
        self.dwconv = keras.layers.DepthwiseConv2D(
            kernel_size,
            padding="same",
            use_bias=use_bias,
            dtype=self.dtype_policy,
            name="dwconv",
        )

    def build(self, input_shape):
        hidden = int(self.expansion_ratio * input_shape[-1])
        self.pwconv1 = keras.layers.Dense(hidden, use_bias=self.use_bias, dtype=self.dtype_policy, name="pwconv1")
        self.pwconv2 = keras.layers.Dense(
            input_shape[-1], use_bias=self.use_bias, dtype=self.dtype_policy, name="pwconv2"
        )
        hidden_shape = (*input_shape[:-1], hidden)
        self.pwconv1.build(input_shape)
        self.act1.build(hidden_shape)
        self.dwconv.build(hidden_shape)
        self.pwconv2.build(hidden_shape)

    def call(self, inputs):
        # The pointwise convolutions as 2-D products over all positions: as
        # Dense layers on 4-D tensors, a ConvFormer-S18 training step under
        # JAX on a CPU took 7.0 s instead of 6.3 s (`layers/positions.py`).
        shape = positions_shape(inputs)
        x = self.act1(dense(self.pwconv1, as_rows(inputs)))
        x = self._depthwise(ops.reshape(x, (*shape[:-1], x.shape[-1])))
        return ops.reshape(dense(self.pwconv2, as_rows(x)), shape)

    def _depthwise(self, x):
        if x.shape[1] is None or x.shape[2] is None or not compiled_by_xla_for_cpu():
            return self.dwconv(x)
        # Under mixed precision the 49-term sums run in float32: summed in
        # bfloat16 they lose whole units once they pass a few hundred.
        y = depthwise_conv2d_same(ops.cast(x, "float32"), ops.cast(self.dwconv.kernel, "float32"))
        if self.use_bias:
            y = y + ops.cast(self.dwconv.bias, "float32")
        return ops.cast(y, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "expansion_ratio": self.expansion_ratio,
                "kernel_size": self.kernel_size,
                "use_bias": self.use_bias,
            }
        )
        return config
