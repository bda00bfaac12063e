"""The evaluation transform of pretrained weights, with `keras.ops`.

timm evaluates its weights on images whose shorter side was resized to
`floor(size / crop_pct)` (bicubic) and then centre-cropped to `size`. This
module does the same on any backend; the model itself then normalises the
`[0, 255]` pixels (`include_preprocessing=True`).

`load_image` reads a file with Pillow into the same RGB pixels that the
tf.data pipelines decode (`tf.io.decode_image(..., channels=3)`), whatever
the file's mode.
"""

import os

import numpy as np
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
        raise ValueError(f"Expected one image of shape (height, width, channels). Received shape {tuple(image.shape)}.")
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


def load_image(path):
    """An RGB uint8 array `(height, width, 3)` from an image file, read with Pillow.

    The pixels equal those of `tf.io.decode_image(..., channels=3)`, which the
    `keras_metaformer.data` pipelines and the SavedModel's bytes signature
    use; see `pil_to_rgb` for each mode.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not an image Pillow can read; names the file.
    """
    from PIL import Image

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No image file at {path!r}.")
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_rgb(image)
    except Exception as error:  # Pillow raises several types for bad files
        raise ValueError(f"Cannot read {path!r} as an image ({type(error).__name__}: {error}).") from None


def pil_to_rgb(image):
    """An RGB uint8 array from a Pillow image of any mode, as TensorFlow decodes it.

    Pillow's own `convert("RGB")` agrees with TensorFlow's decoders except in
    two modes, done here as TensorFlow does them:

    - 16-bit greyscale (`I;16`, and `I`, which older Pillow gives 16-bit
      PNGs): the high byte of each value (libpng's `strip_16`), where Pillow
      would clip every value above 255 to white.
    - CMYK (JPEG): `floor((255 - c) * (255 - k) / 255)` per channel, where
      Pillow rounds.

    Alpha is dropped (not composited), as with `channels=3`: RGBA, LA, PA
    and palettes with a transparent colour keep their colour values. Float
    images (`F`, from TIFFs, which TensorFlow does not read) are taken as
    values in `[0, 255]`, rounded and clipped.
    """
    mode = image.mode
    if mode == "CMYK":
        c, m, y, k = np.moveaxis(np.asarray(image, dtype="int32"), -1, 0)
        white = 255 - k
        return np.stack([(255 - ink) * white // 255 for ink in (c, m, y)], axis=-1).astype("uint8")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype="float64"))
        grey = np.clip(np.round(values), 0, 255).astype("uint8")
    elif mode == "I" or mode.startswith("I;16"):
        grey = (np.clip(np.asarray(image).astype("int64"), 0, 65535) >> 8).astype("uint8")
    else:
        return np.asarray(image.convert("RGB"))
    return np.repeat(grey[..., None], 3, axis=-1)
