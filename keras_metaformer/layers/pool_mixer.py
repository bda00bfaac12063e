import keras
import numpy as np
from keras import ops

from keras_metaformer.arguments import check_int
from keras_metaformer.layers.compilation import compiled_by_xla
from keras_metaformer.layers.dtypes import is_16_bit
from keras_metaformer.layers.token_mixers import register_token_mixer


@register_token_mixer("pool")
@keras.saving.register_keras_serializable(package="keras_metaformer")
class PoolMixer(keras.layers.Layer):
    """PoolFormer's token mixer: stride-1 average pooling minus the input.

    Each position becomes the mean of its `pool_size x pool_size`
    neighbourhood. Zero padding is left out of the mean (PyTorch's
    `count_include_pad=False`), so border positions average fewer values.
    The input is subtracted because the block adds it back through its
    residual connection.

    Under XLA (JAX, or TensorFlow with `jit_compile=True`) the means are
    computed as separable window sums, which XLA fuses into one loop, with a
    matching custom gradient; elsewhere as one average-pool op, which
    SavedModel and TFLite exports keep. Both give the same numbers.

    Reference: Yu et al., "MetaFormer is Actually What You Need for Vision",
    CVPR 2022.

    Args:
        pool_size: odd int, the side of the pooling window.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:

    >>> import numpy as np
    >>> x = np.arange(9, dtype="float32").reshape(1, 3, 3, 1)
    >>> y = keras.ops.convert_to_numpy(PoolMixer(pool_size=3)(x))
    >>> # Centre: mean of all nine values minus 4. Corner: mean of 0, 1, 3, 4.
    >>> float(y[0, 1, 1, 0]), float(y[0, 0, 0, 0])
    (0.0, 2.0)
    """

    # A linear map of each channel on its own: see `MetaFormerBlock._folds_layer_scale1`.
    commutes_with_channel_scale = True
    # The mean of a constant is that constant, so a value added to a whole
    # channel cancels: see `MetaFormerBlock._norm1_is_a_scale`.
    ignores_channel_shift = True

    def __init__(self, pool_size=3, **kwargs):
        super().__init__(**kwargs)
        message = (
            "`pool_size` must be a positive odd integer so that the window is "
            "centred on each position (the paper uses 3; 5, 7 and 9 were "
            f"ablated). Received: pool_size={pool_size!r}"
        )
        try:
            pool_size = check_int("pool_size", pool_size)
        except TypeError:
            raise TypeError(message) from None
        except ValueError:
            raise ValueError(message) from None
        if pool_size % 2 == 0:
            raise ValueError(message)
        self.pool_size = pool_size
        # Stateless: built now, unless a subclass defines its own `build`.
        self._build_at_init()

    def call(self, inputs, scale=None):
        """Pools `inputs`. With `scale`, a tensor broadcastable to the
        output (per sample and channel: `(batch, 1, 1, channels)`), returns
        the result times it; 16-bit inputs are then computed in float32 and
        rounded once."""
        x = inputs
        if scale is not None and is_16_bit(x.dtype):
            x = ops.cast(x, "float32")
        height, width = x.shape[1], x.shape[2]
        if height is not None and width is not None and compiled_by_xla():
            pooled = self._window_means(x, height, width)
        else:
            # Keras' "same" average pooling excludes the padding from the count
            # on every backend, which is what the reference implementation does.
            pooled = ops.average_pool(x, pool_size=self.pool_size, strides=1, padding="same")
        mixed = pooled - x
        if scale is not None:
            mixed = ops.cast(mixed * ops.cast(scale, mixed.dtype), inputs.dtype)
        return mixed

    def _window_means(self, inputs, height, width):
        """The same means as separable window sums over zero padding, times
        the precomputed reciprocal window sizes.

        XLA fuses these slices and additions, and the subtraction after
        them, into one loop over the tensor; its `reduce_window` for the
        average pool runs about 4x slower on CPU.
        """
        pool_size = self.pool_size
        reciprocal = _reciprocal_window_sizes(height, width, pool_size)

        # The window sum is its own adjoint (the window is symmetric and the
        # padding is zeros), so the gradient is one more fused window sum.
        # Left to autodiff, each slice becomes a padded copy of the whole
        # tensor, and the backward pass costs ten times the forward one.
        @ops.custom_gradient
        def window_means(x):
            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                return _window_sums(upstream * reciprocal, pool_size, height, width)

            return _window_sums(x, pool_size, height, width) * reciprocal, grad

        x = inputs
        if is_16_bit(x.dtype):
            # Nine-term sums lose digits in 8-bit mantissas.
            x = ops.cast(x, "float32")
        return ops.cast(window_means(x), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size})
        return config


def _window_sums(x, pool_size, height, width):
    """Sums over `pool_size x pool_size` windows centred on each position of
    `(batch, height, width, channels)` images padded with zeros: a sum along
    the rows, then one along the columns."""
    half = pool_size // 2
    padded = ops.pad(x, [[0, 0], [half, half], [half, half], [0, 0]])
    rows = sum(padded[:, i : i + height] for i in range(pool_size))
    return sum(rows[:, :, j : j + width] for j in range(pool_size))


def _reciprocal_window_sizes(height, width, pool_size):
    """`1 / n` per position, where `n` counts the window's positions that lie
    inside the image; shaped `(1, height, width, 1)` to broadcast."""
    half = pool_size // 2

    def sizes(length):
        index = np.arange(length)
        return np.minimum(index + half, length - 1) - np.maximum(index - half, 0) + 1

    return (1.0 / np.outer(sizes(height), sizes(width)))[None, :, :, None].astype("float32")
