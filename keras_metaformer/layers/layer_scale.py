import keras


@keras.saving.register_keras_serializable(package="keras_metaformer")
class LayerScale(keras.layers.Layer):
    """Multiplies the last (channel) axis by a learnable per-channel vector.

    Started near zero, the scale lets each residual branch of a deep network
    begin close to the identity and grow as training needs it. The MetaFormer
    baselines use the same layer, started at 1, on the residual stream
    (`res_scale1`, `res_scale2`); it is exported as `Scale` too.

    Reference: Touvron et al., "Going deeper with Image Transformers"
    (CaiT), ICCV 2021.

    Args:
        init_value: float, the initial value of every channel's scale.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:

    >>> import numpy as np
    >>> layer = LayerScale(init_value=0.5)
    >>> y = layer(np.ones((2, 4, 4, 8), "float32"))
    >>> tuple(y.shape), float(keras.ops.max(y))
    ((2, 4, 4, 8), 0.5)
    """

    def __init__(self, init_value=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.init_value = init_value

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value),
        )

    def call(self, inputs):
        return inputs * self.scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"init_value": self.init_value})
        return config
