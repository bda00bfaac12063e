"""The evaluation transform of pretrained weights, with `keras.ops`.

timm evaluates its weights on images whose shorter side was resized to
`floor(size / crop_pct)` (bicubic) and then centre-cropped to `size`. This
module does the same on any backend; the model itself then normalises the
`[0, 255]` pixels (`include_preprocessing=True`).
"""

from keras import ops

from keras_metaformer.weights.pretrained_configs import get_pretrained_config


def resize_and_center_crop(image, config):
    """Resizes the shorter side of `image` and crops its centre.

    Args:
        image: one `(height, width, 3)` RGB image, uint8 or float in
            `[0, 255]`, with a static shape.
        config: a `PretrainedConfig`, or an architecture name whose default
            weights' configuration to use.

    Returns:
        A float32 `(size, size, 3)` tensor with values in `[0, 255]`.

    Example:

    >>> import numpy as np
    >>> image = np.zeros((300, 451, 3), "uint8")
    >>> tuple(resize_and_center_crop(image, "poolformer_s12").shape)
    (224, 224, 3)
    """
    if isinstance(config, str):
        config = get_pretrained_config(config)
    image = ops.convert_to_tensor(image, dtype="float32")
    if len(image.shape) != 3:
        raise ValueError(
            "Expected one image of shape (height, width, channels). "
            f"Received shape {tuple(image.shape)}."
        )
    height, width = image.shape[0], image.shape[1]
    short = config.resize_size
    # Like torchvision's Resize(int): the longer side is truncated.
    if height <= width:
        size = (short, int(short * width / height))
    else:
        size = (int(short * height / width), short)
    # Antialiasing matches PIL, which timm's evaluation transform uses.
    image = ops.image.resize(image, size, interpolation=config.interpolation, antialias=True)
    crop_h, crop_w = config.input_size
    top = int(round((size[0] - crop_h) / 2.0))
    left = int(round((size[1] - crop_w) / 2.0))
    image = image[top : top + crop_h, left : left + crop_w, :]
    # Bicubic overshoots; PIL rounds and clips to uint8.
    return ops.round(ops.clip(image, 0.0, 255.0))
