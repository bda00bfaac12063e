import keras
from keras import ops

from keras_metaformer.arguments import check_rate


@keras.saving.register_keras_serializable(package="keras_metaformer")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops a residual branch for whole samples.

    In training, each sample's input is zeroed with probability `rate` and the
    surviving samples are scaled by `1 / (1 - rate)`, so the expected output
    equals the input. At inference the layer is the identity.

    Reference: Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016.

    Args:
        rate: float in `[0, 1)`, the probability of dropping a sample's branch.
        seed: int or `None`, seed of the layer's `keras.random.SeedGenerator`.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:

    >>> import numpy as np
    >>> layer = DropPath(rate=0.5, seed=1)
    >>> y = layer(np.ones((8, 2, 2, 3), "float32"), training=True)
    >>> # Every sample is either dropped (all 0) or kept and rescaled (all 2).
    >>> sorted(set(np.unique(keras.ops.convert_to_numpy(y)).tolist()))
    [0.0, 2.0]
    >>> bool((keras.ops.convert_to_numpy(layer(np.ones((2, 3)))) == 1).all())
    True
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = check_rate("rate", rate)
        self.seed = seed
        if rate > 0:
            self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True
        # No weights: built now, unless a subclass defines its own `build`.
        self._build_at_init()

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        keep_prob = 1.0 - self.rate
        # One draw per sample, broadcast over every other axis.
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        draws = keras.random.uniform(shape, seed=self.seed_generator)
        keep = ops.cast(draws < keep_prob, inputs.dtype)
        return inputs * keep / ops.cast(keep_prob, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
