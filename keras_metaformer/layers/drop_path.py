import keras
from keras import ops

from keras_metaformer.arguments import check_rate
from keras_metaformer.layers.remat import Rematerializable
from keras_metaformer.layers.remat import with_drawn


@keras.saving.register_keras_serializable(package="keras_metaformer")
class DropPath(Rematerializable, keras.layers.Layer):
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

    def call(self, inputs, training=False, keep=None):
        if not training or self.rate == 0:
            return inputs
        if keep is None:
            keep = self.draw_keep(inputs)
        return inputs * keep / ops.cast(1.0 - self.rate, inputs.dtype)

    def draw_keep(self, inputs):
        """Which samples of `inputs` a training call keeps: 1 or 0 per sample,
        broadcast over every other axis (the `keep` argument of `call`)."""
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        draws = keras.random.uniform(shape, seed=self.seed_generator)
        return ops.cast(draws < 1.0 - self.rate, inputs.dtype)

    def rematerialized_call(self, layer_call, *args, **kwargs):
        if kwargs.get("training") and self.rate > 0 and kwargs.get("keep") is None:
            keep = self.draw_keep(args[0])
            return with_drawn(super().rematerialized_call, layer_call, args, kwargs, keep=keep)
        return super().rematerialized_call(layer_call, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
