import keras
from keras import ops

from keras_metaformer.arguments import check_int
from keras_metaformer.layers.token_mixers import register_token_mixer


@register_token_mixer("random")
@keras.saving.register_keras_serializable(package="keras_metaformer")
class RandomMixer(keras.layers.Layer):
    """RandFormer's token mixer: a frozen random token-mixing matrix.

    Every output position is a fixed convex combination of all input
    positions: `y[m] = sum_n W[m, n] x[n]`, with `W = softmax(U)` row-wise
    and `U` uniform in `[0, 1)`. `W` is drawn once, when the layer is built,
    and is never trained. Because `W` has one row and column per position,
    the input's height x width must equal `num_tokens` (for RandFormer:
    14 x 14 in stage 3 and 7 x 7 in stage 4 at 224 x 224 input).

    Reference: Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024.

    Args:
        num_tokens: int, height x width of the input, or `None` to take it
            from the input shape when the layer is built.
        seed: int or `None`, seed of the matrix's draw.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:

    >>> import numpy as np
    >>> mixer = RandomMixer(seed=0)
    >>> y = mixer(np.ones((2, 4, 4, 8), "float32"))
    >>> tuple(mixer.random_matrix.shape), tuple(y.shape)
    ((16, 16), (2, 4, 4, 8))
    >>> # Rows are convex combinations: a constant input stays constant.
    >>> bool(np.allclose(keras.ops.convert_to_numpy(y), 1.0, atol=1e-6))
    True
    """

    # One linear map of the tokens, applied to each channel: see `MetaFormerBlock._folds_layer_scale1`.
    commutes_with_channel_scale = True

    def __init__(self, num_tokens=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = None if num_tokens is None else check_int("num_tokens", num_tokens)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        tokens = None if height is None or width is None else height * width
        if self.num_tokens is None:
            self.num_tokens = tokens
        if self.num_tokens is None or tokens not in (None, self.num_tokens):
            raise ValueError(
                "RandomMixer mixes a fixed number of positions, so it needs a "
                f"known input size with height x width = num_tokens. Received: "
                f"input shape {tuple(input_shape)} with num_tokens={self.num_tokens}. "
                "Fix the model's input_shape (e.g. (224, 224, 3) for RandFormer)."
            )

        def initializer(shape, dtype=None):
            draws = keras.random.uniform(shape, seed=self.seed_generator)
            return ops.cast(ops.softmax(draws, axis=-1), dtype or "float32")

        self.random_matrix = self.add_weight(
            name="random_matrix",
            shape=(self.num_tokens, self.num_tokens),
            initializer=initializer,
            trainable=False,
        )

    def call(self, inputs):
        shape = ops.shape(inputs)
        tokens = ops.reshape(inputs, (shape[0], self.num_tokens, shape[3]))
        mixed = ops.einsum("mn,bnc->bmc", self.random_matrix, tokens)
        return ops.reshape(mixed, shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_tokens": self.num_tokens, "seed": self.seed})
        return config
