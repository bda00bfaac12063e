import keras

from keras_metaformer.layers.token_mixers import register_token_mixer


@register_token_mixer("identity")
@keras.saving.register_keras_serializable(package="keras_metaformer")
class IdentityMixer(keras.layers.Layer):
    """IdentityFormer's token mixer: no mixing at all.

    The block still adds the normalised input to its residual stream; that
    MetaFormer reaches 80.4% ImageNet top-1 this way (IdentityFormer-M48)
    shows how much of the performance comes from the general block.

    Reference: Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024.

    Example:

    >>> import numpy as np
    >>> x = np.ones((1, 2, 2, 3), "float32")
    >>> bool((keras.ops.convert_to_numpy(IdentityMixer()(x)) == x).all())
    True
    """

    # The identity: see `MetaFormerBlock._folds_layer_scale1`.
    commutes_with_channel_scale = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Stateless: built now, unless a subclass defines its own `build`.
        self._build_at_init()

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape
