"""`MetaFormerImageConverter`: timm's evaluation transform as a keras-hub image converter."""

import collections
import math

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_metaformer.preprocessing import resize_and_center_crop
from keras_metaformer.weights.pretrained_configs import IMAGENET_MEAN
from keras_metaformer.weights.pretrained_configs import IMAGENET_STD


def normalisation(mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """keras-hub's `(scale, offset)` for `(pixels / 255 - mean) / std`."""
    scale = [1.0 / (255.0 * s) for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    return scale, offset


@keras.saving.register_keras_serializable(package="keras_metaformer")
class MetaFormerImageConverter(keras_hub.layers.ImageConverter):
    """Resizes, crops and normalises images as timm evaluates MetaFormers.

    With `crop_pct`, the shorter side of each image is resized to
    `floor(image_size[0] / crop_pct)` and the centre `image_size` is
    cropped, which keras-hub's `ImageConverter` cannot express; the pixels
    are then rounded and clipped to `[0, 255]` (as PIL's uint8 images are)
    and normalised with `scale` and `offset`. Without `crop_pct` it is
    keras-hub's `ImageConverter`.

    Args:
        image_size: `(height, width)` of the output.
        crop_pct: the evaluation crop ratio of the weights (0.9 for
            PoolFormer, 1.0 for the baselines), or `None` to resize
            straight to `image_size`.
        scale, offset: per-channel normalisation, `x * scale + offset` on
            `[0, 255]` pixels. Defaults to ImageNet's mean and standard
            deviation.
        interpolation: `"bicubic"` (timm's), `"bilinear"` or `"nearest"`.
        **kwargs: the other arguments of `keras_hub.layers.ImageConverter`.

    Example:

    >>> import numpy as np
    >>> from keras_metaformer.hub import MetaFormerImageConverter
    >>> converter = MetaFormerImageConverter(image_size=(224, 224), crop_pct=0.9)
    >>> tuple(converter(np.zeros((2, 300, 451, 3), "uint8")).shape)
    (2, 224, 224, 3)
    """

    def __init__(
        self, image_size=(224, 224), crop_pct=None, scale=None, offset=None, interpolation="bicubic", **kwargs
    ):
        if scale is None and offset is None:
            scale, offset = normalisation()
        if crop_pct is not None and not 0.0 < float(crop_pct) <= 1.0:
            raise ValueError(f"`crop_pct` must be in (0, 1], or None. Received: crop_pct={crop_pct!r}")
        if crop_pct is not None and (image_size is None or image_size[0] != image_size[1]):
            raise ValueError(
                "timm's centre crop (`crop_pct`) makes square images, as every MetaFormer was evaluated on. "
                f"Received: image_size={image_size!r}; pass crop_pct=None to resize to other shapes."
            )
        super().__init__(image_size=image_size, scale=scale, offset=offset, interpolation=interpolation, **kwargs)
        self.crop_pct = None if crop_pct is None else float(crop_pct)

    def _call_python(self, inputs):
        # keras-hub's `call` hands inputs over here, as TensorFlow tensors
        # whenever TensorFlow is installed (also inside `tf.data`).
        if self.crop_pct is None or self.image_size is None:
            return super()._call_python(inputs)
        x = self._resize_and_crop(inputs)
        shape = [1] * (len(x.shape) - 1) + [-1]
        scale = np.reshape(np.asarray(self.scale, "float32"), shape)
        offset = np.reshape(np.asarray(self.offset, "float32"), shape)
        return x * scale + offset

    def _resize_and_crop(self, images):
        """The package's evaluation transform, image by image."""
        size = self.image_size[0]
        if _is_tf_tensor(images):  # shapes may be unknown in tf.data: TensorFlow's twin
            import tensorflow as tf

            from keras_metaformer.data.transforms import resize_and_center_crop as tf_resize_and_center_crop

            def transform(image):
                return tf_resize_and_center_crop(image, size, self.crop_pct, self.interpolation)

            if images.shape.rank == 4:
                return tf.map_fn(transform, images, fn_output_signature=tf.TensorSpec((size, size, 3), "float32"))
            return transform(images)
        if isinstance(images, (list, tuple)) or len(images.shape) == 4:
            return ops.stack([self._resize_and_crop(image) for image in images])
        config = _EvalTransform((size, size), math.floor(size / self.crop_pct), self.interpolation)
        return resize_and_center_crop(images, config)

    def get_config(self):
        config = super().get_config()
        config["crop_pct"] = self.crop_pct
        return config


# What `keras_metaformer.resize_and_center_crop` reads of a `PretrainedConfig`.
_EvalTransform = collections.namedtuple("_EvalTransform", ["input_size", "resize_size", "interpolation"])


def _is_tf_tensor(x):
    return type(x).__module__.startswith("tensorflow")
