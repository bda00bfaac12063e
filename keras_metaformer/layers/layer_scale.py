import keras
from keras import ops

from keras_metaformer.arguments import check_finite
from keras_metaformer.layers.activations import in_float32
from keras_metaformer.layers.positions import as_rows
from keras_metaformer.layers.positions import positions_shape


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
        self.init_value = check_finite("init_value", init_value)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value),
        )

    def call(self, inputs):
        # The product runs on the (positions, channels) matrix so that the
        # scale's gradient is a sum over the rows of a 2-D tensor. As a sum
        # over the first three axes of a 4-D one, XLA's CPU backend (the one
        # in TensorFlow 2.21) emitted a slow loop that also recomputed the
        # residual stream's gradient, fused in from several blocks: in a
        # PoolFormerV2-S12 training step these sums took about 0.9 s of 3.3 s.
        # In float32 under XLA on a CPU, so that the scale's gradient is a
        # float32 sum (see `activations.in_float32`).
        rows = in_float32(lambda x: x * ops.cast(self.scale, x.dtype), as_rows(inputs), xla_cpu_only=True)
        return ops.reshape(rows, positions_shape(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"init_value": self.init_value})
        return config
