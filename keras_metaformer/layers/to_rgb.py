import keras
from keras import ops

# Channels of the image formats the layer converts, as `tf.io.decode_image` names them.
_FORMATS = {1: "grey", 2: "grey with alpha", 3: "RGB", 4: "RGBA"}


@keras.saving.register_keras_serializable(package="keras_metaformer")
class ToRGB(keras.layers.Layer):
    """Makes RGB images of grey, grey-with-alpha, RGB or RGBA ones.

    Grey is repeated into the three channels and alpha is dropped, as
    `tf.io.decode_image(..., channels=3)` and Pillow's `convert("RGB")` do,
    so a model built for 1- or 4-channel input with
    `include_preprocessing=True` sees the RGB images its weights expect.

    Example:

    >>> import numpy as np
    >>> grey = np.array([[[[10.0], [200.0]]]], "float32")  # (1, 1, 2, 1)
    >>> keras.ops.convert_to_numpy(ToRGB()(grey)).tolist()
    [[[[10.0, 10.0, 10.0], [200.0, 200.0, 200.0]]]]
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Stateless: built now, unless a subclass defines its own `build`.
        self._build_at_init()

    @staticmethod
    def check_channels(channels, advice=""):
        """Raises a `ValueError` unless `channels` is 1, 2, 3 or 4."""
        if channels not in _FORMATS:
            formats = ", ".join(f"{count} ({name})" for count, name in _FORMATS.items())
            raise ValueError(
                f"Only images with {formats} channels have an RGB form. Received: {channels} channels" + (advice or ".")
            )

    def call(self, inputs):
        channels = inputs.shape[-1]
        self.check_channels(channels)
        if channels == 3:
            return inputs
        if channels == 4:
            return inputs[..., :3]
        return ops.concatenate([inputs[..., :1]] * 3, axis=-1)

    def compute_output_shape(self, input_shape):
        self.check_channels(input_shape[-1])
        return (*input_shape[:-1], 3)
