import keras

from keras_metaformer.layers.activations import get_activation_layer
from keras_metaformer.layers.activations import serialize_activation


@keras.saving.register_keras_serializable(package="keras_metaformer")
class Mlp(keras.layers.Layer):
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
        self.mlp_ratio = mlp_ratio
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
        self.fc2 = keras.layers.Dense(
            channels, use_bias=self.use_bias, dtype=self.dtype_policy, name="fc2"
        )
        self.fc1.build(input_shape)
        hidden_shape = self.fc1.compute_output_shape(input_shape)
        self.act.build(hidden_shape)
        self.fc2.build(hidden_shape)

    def call(self, inputs):
        return self.fc2(self.act(self.fc1(inputs)))

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
