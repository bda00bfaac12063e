import keras
from keras import ops

from keras_metaformer.arguments import check_int
from keras_metaformer.arguments import check_positive
from keras_metaformer.layers.compilation import compiled_by_jax_for_cpu
from keras_metaformer.layers.remat import Rematerializable
from keras_metaformer.layers.strided_conv import strided_conv2d

# Below this many input channels (the stem's 3), bfloat16 inference under JAX
# on a CPU convolves in float32 instead of gathering patches: the gather
# copies runs of `channels` values, and runs shorter than a vector register
# make it slower than the whole convolution (see `_convolve`).
_GATHER_MIN_CHANNELS = 16


@keras.saving.register_keras_serializable(package="keras_metaformer")
class PatchEmbedding(Rematerializable, keras.layers.Layer):
    """A strided convolution with symmetric zero padding: stem and downsampling.

    PoolFormer's stem is `PatchEmbedding(dims[0], 7, strides=4, padding=2)`
    and each later stage starts with `PatchEmbedding(dims[i], 3, strides=2,
    padding=1)`. The MetaFormer baselines add a LayerNorm without bias over
    the channels: after the stem's convolution (`norm="post"`) and before
    each downsampling convolution (`norm="pre"`).

    The padding is explicit because Keras' `padding="same"` pads more on the
    bottom/right than on the top/left when the stride is above 1; that shifts
    the sampling grid by a pixel compared with PyTorch's `padding=p` and
    breaks parity with pretrained weights.

    Args:
        filters: int, output channels.
        kernel_size: int, side of the square kernel.
        strides: int, the stride in both spatial axes.
        padding: int, zeros added on each of the four sides.
        use_bias: bool, whether the convolution has a bias.
        norm: `None`, `"pre"` or `"post"`: where a LayerNorm without bias
            goes, before or after the convolution.
        norm_epsilon: float, epsilon of that LayerNorm.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:

    >>> import numpy as np
    >>> stem = PatchEmbedding(64, kernel_size=7, strides=4, padding=2)
    >>> tuple(stem(np.zeros((1, 224, 224, 3), "float32")).shape)
    (1, 56, 56, 64)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides,
        padding,
        use_bias=True,
        norm=None,
        norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if norm not in (None, "pre", "post"):
            raise ValueError(
                f"`norm` must be None, 'pre' (before the convolution) or 'post' (after it). Received: norm={norm!r}"
            )
        self.filters = check_int("filters", filters)
        self.kernel_size = check_int("kernel_size", kernel_size)
        self.strides = check_int("strides", strides)
        self.padding = check_int("padding", padding, minimum=0)
        self.use_bias = use_bias
        self.norm = norm
        self.norm_epsilon = check_positive("norm_epsilon", norm_epsilon)
        self.norm_layer = None
        if norm is not None:
            self.norm_layer = keras.layers.LayerNormalization(
                epsilon=norm_epsilon, center=False, dtype=self.dtype_policy, name="norm"
            )

    def build(self, input_shape):
        self.conv = keras.layers.Conv2D(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding="valid",
            use_bias=self.use_bias,
            dtype=self.dtype_policy,
            name="conv",
        )
        self.conv.build(self._padded_shape(input_shape))
        if self.norm == "pre":
            self.norm_layer.build(input_shape)
        elif self.norm == "post":
            self.norm_layer.build(self.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        x = inputs
        if self.norm == "pre":
            x = self.norm_layer(x)
        p = self.padding
        if p:
            x = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        x = self._convolve(x, training)
        if self.norm == "post":
            x = self.norm_layer(x)
        return x

    def _convolve(self, x, training):
        if x.shape[1] is None or x.shape[2] is None or not compiled_by_jax_for_cpu():
            return self.conv(x)
        # The gather of up to 49 slices adds about 1.5 s to XLA's compile of
        # each model, so float32 inference, where it gains nothing, keeps
        # the convolution. The gain is in training's gradients and in
        # bfloat16, where XLA runs the convolution in float32 and the
        # product below runs on the CPU's bfloat16 units (PoolFormer-S12 at
        # batch 32, 2-core Intel Xeon with AMX: 469 -> 368 ms a batch).
        if not training and keras.backend.standardize_dtype(x.dtype) != "bfloat16":
            return self.conv(x)
        if not training and x.shape[-1] < _GATHER_MIN_CHANNELS:
            # The stem: its gather of 3-value runs took 60 ms of 400 for
            # PoolFormer-S12 at batch 32; the float32 convolution, 17 ms less
            # in all (A/B, same host). Training keeps the gather, for the
            # kernel gradient.
            return self._float32_convolution(x)
        # Same weights, same numbers; see `strided_conv` for the speed.
        bias = self.conv.bias if self.use_bias else None
        if training and keras.backend.standardize_dtype(x.dtype) == "bfloat16":
            # Gathered from float32, so that the gather's gradient (pads and
            # sums of the patches' gradients) runs in float32 and is rounded
            # once: XLA's CPU backend converts a bfloat16 pad or sum to
            # float32 and back around each op (21 ms at S12's first
            # downsampling, batch 32). The patches are rounded in the gather.
            # PoolFormer-S12's bfloat16 training step under JAX at batch 32
            # (A/B, 2-core Intel Xeon with AMX, medians): 1,398 -> 1,310 ms.
            x = ops.cast(x, "float32")
        return strided_conv2d(x, ops.cast(self.conv.kernel, self.compute_dtype), self.strides, bias)

    def _float32_convolution(self, x):
        """The convolution of the compute-dtype input and weights, summed in
        float32 and rounded once: the numbers of the gathered product."""
        y = ops.conv(ops.cast(x, "float32"), ops.cast(self.conv.kernel, "float32"), self.strides, "valid")
        if self.use_bias:
            y = y + ops.cast(self.conv.bias, "float32")
        return ops.cast(y, self.compute_dtype)

    def _padded_shape(self, input_shape):
        batch, height, width, channels = input_shape
        pad = 2 * self.padding
        return (
            batch,
            None if height is None else height + pad,
            None if width is None else width + pad,
            channels,
        )

    def compute_output_shape(self, input_shape):
        def out(size):
            if size is None:
                return None
            return (size - self.kernel_size) // self.strides + 1

        batch, height, width, _ = self._padded_shape(input_shape)
        return (batch, out(height), out(width), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "use_bias": self.use_bias,
                "norm": self.norm,
                "norm_epsilon": self.norm_epsilon,
            }
        )
        return config
