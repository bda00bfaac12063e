"""Training augmentation settings and the per-batch augmentation they build.

The defaults are the authors' ImageNet recipe (timm's `rand-m9-mstd0.5-inc1`,
mixup 0.8, cutmix 1.0, switch probability 0.5, random erasing 0.25, label
smoothing 0.1). Keras' backend-agnostic layers do the flips, erasing, MixUp
and CutMix; keras-cv's RandAugment does RandAugment, because its magnitudes
follow the paper's scale (rotation up to 30 degrees at magnitude 10) where
Keras' own layer treats its factor as a fraction of each op's full range.
"""

import dataclasses

import tensorflow as tf

from keras_metaformer.arguments import check_bool
from keras_metaformer.arguments import check_float
from keras_metaformer.arguments import check_int
from keras_metaformer.arguments import check_non_negative
from keras_metaformer.arguments import check_probability
from keras_metaformer.weights.pretrained_configs import IMAGENET_MEAN


@dataclasses.dataclass(frozen=True)
class TrainAugment:
    """Random transforms applied to training images and labels.

    Attributes:
        crop_scale: area range of the random resized crop, as fractions of
            the image.
        crop_ratio: aspect-ratio range of the random resized crop.
        flip: random horizontal flips.
        rand_augment_magnitude: RandAugment magnitude on timm's 0-10 scale,
            or `None` for no RandAugment.
        rand_augment_std: standard deviation of the magnitude, same scale.
        rand_augment_ops: operations per image.
        rand_augment_rate: probability of applying each chosen operation
            (timm's default is 0.5).
        mixup_alpha: Beta-distribution alpha of MixUp; 0 disables it.
        cutmix_alpha: Beta-distribution alpha of CutMix; 0 disables it.
        switch_prob: probability a batch gets CutMix rather than MixUp when
            both are enabled.
        erasing_prob: probability of erasing a random rectangle of an image.
        label_smoothing: label smoothing applied to the one-hot labels
            before mixing, so the loss needs none of its own.

    Each setting is checked when the object is made (probabilities in
    `[0, 1]`, alphas >= 0, magnitudes in `[0, 10]`); a wrong one raises,
    naming it.

    Example:

    >>> light = TrainAugment(flip=False, rand_augment_magnitude=None,
    ...                      mixup_alpha=0.0, cutmix_alpha=0.0)
    >>> light.mixes
    False
    """

    crop_scale: tuple = (0.08, 1.0)
    crop_ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True
    rand_augment_magnitude: float | None = 9.0
    rand_augment_std: float = 0.5
    rand_augment_ops: int = 2
    rand_augment_rate: float = 0.5
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5
    erasing_prob: float = 0.25
    label_smoothing: float = 0.1

    def __post_init__(self):
        # Checked here, not when the first batch is drawn: a wrong value
        # (erasing_prob=1.5, mixup_alpha=-1) would otherwise train silently.
        # Values are stored as plain Python numbers.
        checked = {
            "crop_scale": _check_pair("crop_scale", self.crop_scale, "in (0, 1]", high=1.0),
            "crop_ratio": _check_pair("crop_ratio", self.crop_ratio, "> 0"),
            "flip": check_bool("flip", self.flip),
            "rand_augment_magnitude": None
            if self.rand_augment_magnitude is None
            else check_float("rand_augment_magnitude", self.rand_augment_magnitude, "in [0, 10]", 0.0, 10.0),
            "rand_augment_std": check_non_negative("rand_augment_std", self.rand_augment_std),
            "rand_augment_ops": check_int("rand_augment_ops", self.rand_augment_ops),
            "rand_augment_rate": check_probability("rand_augment_rate", self.rand_augment_rate),
            "mixup_alpha": check_non_negative("mixup_alpha", self.mixup_alpha),
            "cutmix_alpha": check_non_negative("cutmix_alpha", self.cutmix_alpha),
            "switch_prob": check_probability("switch_prob", self.switch_prob),
            "erasing_prob": check_probability("erasing_prob", self.erasing_prob),
            "label_smoothing": check_float(
                "label_smoothing", self.label_smoothing, "in [0, 1)", 0.0, 1.0, high_open=True
            ),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # the dataclass is frozen

    @property
    def mixes(self):
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def _check_pair(name, value, expected, high=None):
    """A `(min, max)` pair of floats, each `expected` (above 0, at most `high`), with min <= max."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(
            f"`{name}` must be a (min, max) pair of numbers {expected}. "
            f"Received: {name}={value!r} ({type(value).__name__})"
        )
    pair = tuple(
        check_float(f"{name}[{i}]", v, expected, low=0.0, high=high, low_open=True) for i, v in enumerate(value)
    )
    if pair[0] > pair[1]:
        raise ValueError(f"`{name}` must be a (min, max) pair with min <= max. Received: {name}={tuple(value)!r}")
    return pair


def _rand_augment(augment, seed):
    try:
        import keras_cv
    except ImportError as error:
        raise ImportError(
            "RandAugment uses keras-cv, which is not installed. Install it "
            "with `pip install keras-cv`, or pass "
            "`TrainAugment(rand_augment_magnitude=None)`."
        ) from error
    layer = keras_cv.layers.RandAugment(
        value_range=(0, 255),
        augmentations_per_image=augment.rand_augment_ops,
        magnitude=augment.rand_augment_magnitude / 10.0,
        magnitude_stddev=augment.rand_augment_std / 10.0,
        rate=augment.rand_augment_rate,
        seed=seed,
    )

    def rand_augment(images, training=True):
        # One image at a time, in order: keras-cv's own batch loop runs
        # images in parallel, which draws from its seeded generator in a
        # different order each run.
        return tf.map_fn(lambda image: layer(image, training=training), images, parallel_iterations=1)

    return rand_augment


def batch_augmentation(augment, num_classes, seed):
    """A function `(images, labels, coin_seed) -> (images, soft_labels)`.

    Works on whole batches of float `[0, 255]` images and integer labels.
    The Keras layers draw from their own seeded generators, so the batches
    must pass through in order for a run to be reproducible; `coin_seed`, a
    stateless seed per batch, picks MixUp or CutMix.
    """
    import keras

    layers = []
    if augment.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if augment.rand_augment_magnitude is not None:
        layers.append(_rand_augment(augment, seed))
    if augment.erasing_prob > 0:
        # timm erases with per-pixel noise in normalised space; Keras' noise
        # is scaled to the whole [0, 255] range, so fill with the mean pixel.
        fill = [255.0 * m for m in IMAGENET_MEAN]
        layers.append(
            keras.layers.RandomErasing(
                factor=(augment.erasing_prob, augment.erasing_prob),
                scale=(0.02, 1.0 / 3.0),
                fill_value=fill,
                value_range=(0, 255),
                seed=seed,
            )
        )
    mixup = keras.layers.MixUp(alpha=augment.mixup_alpha, seed=seed) if augment.mixup_alpha > 0 else None
    cutmix = keras.layers.CutMix(factor=augment.cutmix_alpha, seed=seed) if augment.cutmix_alpha > 0 else None

    def apply(images, labels, coin_seed):
        # keras-cv's layers draw from TF ops seeded by the graph-level seed;
        # setting it inside this traced function fixes them for this
        # pipeline alone (the global seed is untouched).
        tf.random.set_seed(seed)
        shape = images.shape
        for layer in layers:
            # keras-cv's per-image map loses the static shape later layers need.
            images = tf.ensure_shape(layer(images, training=True), shape)
        labels = tf.one_hot(labels, num_classes)
        labels = labels * (1.0 - augment.label_smoothing) + augment.label_smoothing / num_classes
        if mixup is None and cutmix is None:
            return images, labels
        batch = {"images": images, "labels": labels}
        if cutmix is None:
            mixed = mixup(batch, training=True)
        elif mixup is None:
            mixed = cutmix(batch, training=True)
        else:
            use_cutmix = tf.random.stateless_uniform([], seed=coin_seed) < augment.switch_prob
            mixed = tf.cond(
                use_cutmix,
                lambda: cutmix(batch, training=True),
                lambda: mixup(batch, training=True),
            )
        return mixed["images"], mixed["labels"]

    return apply
