"""Per-image transforms in TensorFlow ops, for `tf.data.Dataset.map`.

Neither Keras nor keras-cv has an Inception-style random resized crop that
takes a stateless seed, and the evaluation resize must follow timm's
arithmetic exactly, so both are written here. Images are float32 in
`[0, 255]`; the models normalise them with their own `preprocessing` layer.
"""

import math

import tensorflow as tf


def to_rgb_float(image):
    """A `(height, width, 3)` float32 image from 2-D, 1- or 3-channel input."""
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return tf.cast(image, tf.float32)


def _resize(image, size, interpolation):
    # Antialiasing matches PIL, which timm's transforms use to shrink images;
    # bicubic overshoots, and PIL rounds and clips to uint8.
    image = tf.image.resize(image, size, method=interpolation, antialias=True)
    return tf.round(tf.clip_by_value(image, 0.0, 255.0))


def random_resized_crop(image, size, scale, ratio, seed, interpolation="bicubic"):
    """Crops a random area and aspect ratio of `image` and resizes it.

    Like timm's `RandomResizedCropAndInterpolation`: up to 10 tries at an
    area in `scale` and a ratio in `ratio`, else the whole image. `seed` is a
    shape-`(2,)` integer tensor; the same seed gives the same crop.
    """
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = _resize(tf.slice(image, begin, crop_size), (size, size), interpolation)
    return tf.ensure_shape(image, (size, size, 3))


def resize_and_center_crop(image, size, crop_pct, interpolation="bicubic"):
    """timm's evaluation transform, for images of any (dynamic) shape.

    The shorter side becomes `floor(size / crop_pct)`, the longer side keeps
    the aspect ratio truncated to an integer (torchvision's `Resize(int)`),
    and the centre `size x size` is kept. The eager, static-shape twin for
    one image is `keras_metaformer.resize_and_center_crop`.
    """
    short = math.floor(size / crop_pct)
    shape = tf.cast(tf.shape(image)[:2], tf.float64)
    height, width = shape[0], shape[1]
    long_side = lambda a, b: tf.cast(tf.math.floor(short * a / b), tf.int32)  # noqa: E731
    new_size = tf.cond(
        height <= width,
        lambda: tf.stack([tf.constant(short, tf.int32), long_side(width, height)]),
        lambda: tf.stack([long_side(height, width), tf.constant(short, tf.int32)]),
    )
    image = _resize(image, new_size, interpolation)
    # Python's round() and tf.round both round half to even, as timm's
    # CenterCrop does through round().
    top = tf.cast(tf.round(tf.cast(new_size[0] - size, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_size[1] - size, tf.float64) / 2.0), tf.int32)
    image = tf.slice(image, tf.stack([top, left, 0]), [size, size, 3])
    return tf.ensure_shape(image, (size, size, 3))
