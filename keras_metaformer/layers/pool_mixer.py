import keras
from keras import ops

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

    def __init__(self, pool_size=3, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(pool_size, int) or pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(
                "`pool_size` must be a positive odd integer so that the "
                "window is centred on each position (the paper uses 3; 5, 7 "
                f"and 9 were ablated). Received: pool_size={pool_size!r}"
            )
        self.pool_size = pool_size
        self.built = True

    def call(self, inputs):
        # Keras' "same" average pooling excludes the padding from the count
        # on every backend, which is what the reference implementation does.
        pooled = ops.average_pool(
            inputs, pool_size=self.pool_size, strides=1, padding="same"
        )
        return pooled - inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size})
        return config
