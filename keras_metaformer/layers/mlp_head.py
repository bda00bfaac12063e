import keras

from keras_metaformer.arguments import check_int
from keras_metaformer.arguments import check_positive
from keras_metaformer.layers.activations import check_activation
from keras_metaformer.layers.activations import squared_relu


@keras.saving.register_keras_serializable(package="keras_metaformer")
class MlpHead(keras.layers.Layer):
    """ConvFormer's and CAFormer's classifier: a two-layer MLP.

    `Dense(mlp_ratio * C) -> squared ReLU -> LayerNorm -> Dense(classes)`
    on pooled features of `C` channels.

    Reference: Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024.

    Args:
        classes: int, number of output classes.
        mlp_ratio: float, hidden width relative to the input features.
        norm_epsilon: float, epsilon of the hidden LayerNorm (timm: 1e-6).
        activation: activation of the output, e.g. `"softmax"` or `None`.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:

    >>> import numpy as np
    >>> head = MlpHead(classes=10)
    >>> y = head(np.zeros((2, 64), "float32"))
    >>> tuple(y.shape), tuple(head.fc1.kernel.shape)
    ((2, 10), (64, 256))
    """

    def __init__(self, classes, mlp_ratio=4.0, norm_epsilon=1e-6, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.classes = check_int("classes", classes)
        self.mlp_ratio = check_positive("mlp_ratio", mlp_ratio)
        self.norm_epsilon = check_positive("norm_epsilon", norm_epsilon)
        self.activation = keras.activations.get(check_activation(activation))
        self.norm = keras.layers.LayerNormalization(epsilon=norm_epsilon, dtype=self.dtype_policy, name="norm")
        self.fc2 = keras.layers.Dense(classes, dtype=self.dtype_policy, name="fc2")

    def build(self, input_shape):
        hidden = int(self.mlp_ratio * input_shape[-1])
        self.fc1 = keras.layers.Dense(hidden, dtype=self.dtype_policy, name="fc1")
        self.fc1.build(input_shape)
        hidden_shape = (*input_shape[:-1], hidden)
        self.norm.build(hidden_shape)
        self.fc2.build(hidden_shape)

    def call(self, inputs):
        x = self.norm(squared_relu(self.fc1(inputs)))
        return self.activation(self.fc2(x))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "classes": self.classes,
                "mlp_ratio": self.mlp_ratio,
                "norm_epsilon": self.norm_epsilon,
                "activation": keras.activations.serialize(self.activation),
            }
        )
        return config
