import keras
from keras import ops

from keras_metaformer.arguments import check_int
from keras_metaformer.layers.activations import in_float32
from keras_metaformer.layers.products import dense
from keras_metaformer.layers.products import matmul
from keras_metaformer.layers.token_mixers import register_token_mixer


@register_token_mixer("attention")
@keras.saving.register_keras_serializable(package="keras_metaformer")
class AttentionMixer(keras.layers.Layer):
    """Multi-head self-attention over all positions of a feature map.

    The `height x width` positions are flattened into tokens; each head has
    `head_dim` channels and there are `channels // head_dim` heads (at least
    one). As in the MetaFormer baselines, the query/key/value and output
    projections have no biases by default.

    Reference: Vaswani et al., "Attention Is All You Need", NeurIPS 2017;
    Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024 (CAFormer).

    Args:
        head_dim: int, channels per head.
        use_bias: bool, whether the projections have biases.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:

    >>> import numpy as np
    >>> mixer = AttentionMixer(head_dim=32)
    >>> y = mixer(np.zeros((2, 7, 7, 64), "float32"))
    >>> tuple(y.shape), mixer.num_heads
    ((2, 7, 7, 64), 2)
    """

    def __init__(self, head_dim=32, use_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.head_dim = check_int("head_dim", head_dim)
        self.use_bias = use_bias

    def build(self, input_shape):
        channels = input_shape[-1]
        self.num_heads = max(channels // self.head_dim, 1)
        attention_dim = self.num_heads * self.head_dim
        self.qkv = keras.layers.Dense(3 * attention_dim, use_bias=self.use_bias, dtype=self.dtype_policy, name="qkv")
        self.proj = keras.layers.Dense(channels, use_bias=self.use_bias, dtype=self.dtype_policy, name="proj")
        self.qkv.build(input_shape)
        self.proj.build((*input_shape[:-1], attention_dim))

    def call(self, inputs):
        shape = ops.shape(inputs)
        batch, tokens = shape[0], shape[1] * shape[2]
        qkv = ops.reshape(dense(self.qkv, inputs), (batch, tokens, 3, self.num_heads, self.head_dim))
        # (3, batch, heads, tokens, head_dim)
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        query, key, value = qkv[0], qkv[1], qkv[2]
        scores = matmul(query, ops.transpose(key, (0, 1, 3, 2)))
        # In float32 (rounded once), as PyTorch's autocast does: in bfloat16
        # the sums' 8-bit steps would skew the weights.
        weights = in_float32(lambda s: ops.softmax(s * (self.head_dim**-0.5), axis=-1), scores)
        x = matmul(weights, value)  # (batch, heads, tokens, head_dim)
        x = ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (batch, shape[1], shape[2], -1))
        return dense(self.proj, x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"head_dim": self.head_dim, "use_bias": self.use_bias})
        return config
