"""The one pipeline every source feeds: transform, batch, augment, prefetch."""

import numpy as np
import tensorflow as tf

from keras_metaformer.arguments import check_bool
from keras_metaformer.arguments import check_float
from keras_metaformer.arguments import check_int
from keras_metaformer.data import transforms
from keras_metaformer.data.augment import TrainAugment
from keras_metaformer.data.augment import batch_augmentation
from keras_metaformer.weights.pretrained_configs import get_pretrained_config

AUTOTUNE = tf.data.AUTOTUNE


def eval_settings(config, image_size, crop_pct, interpolation):
    """Fills unset evaluation settings from a pretrained configuration."""
    if isinstance(config, str):
        config = get_pretrained_config(config)
    if config is not None:
        image_size = image_size or config.input_size[0]
        crop_pct = crop_pct or config.crop_pct
        interpolation = interpolation or config.interpolation
    return image_size or 224, crop_pct or 0.9, interpolation or "bicubic"


def _seed_stream(seed):
    """A shape-(2,) stateless seed per element, new each epoch, fixed by `seed`."""
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)


def build_pipeline(
    examples,
    num_classes,
    *,
    training,
    decode=transforms.to_rgb_float,
    image_size=None,
    batch_size=32,
    augment=None,
    config=None,
    crop_pct=None,
    interpolation=None,
    seed=None,
    shuffle_buffer=None,
    drop_remainder=None,
    skip_errors=False,
    name_errors=False,
):
    """Turns `(raw_image, label)` examples into batches for `model.fit`.

    Training: shuffle, decode, random resized crop (stateless, parallel),
    batch, then the per-batch augmentation in order (its Keras layers keep
    seeded state). Evaluation: decode, resize and centre crop, batch. Labels
    come out one-hot float32, so one loss serves training (soft, mixed
    labels) and evaluation.
    """
    _check_options(num_classes, image_size, batch_size, augment, crop_pct, seed, shuffle_buffer, drop_remainder)
    image_size, crop_pct, interpolation = eval_settings(config, image_size, crop_pct, interpolation)
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31))
    options = tf.data.Options()
    options.deterministic = True
    examples = examples.with_options(options)

    if training:
        augment = TrainAugment() if augment is None else augment
        if shuffle_buffer:
            examples = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

        def crop(example, element_seed):
            raw, label = example
            image = transforms.random_resized_crop(
                decode(raw), image_size, augment.crop_scale, augment.crop_ratio, element_seed, interpolation
            )
            return image, label

        examples = tf.data.Dataset.zip(examples, _seed_stream(seed))
        transform, path_of = crop, lambda example, element_seed: example[0]
    else:

        def center(raw, label):
            return transforms.resize_and_center_crop(decode(raw), image_size, crop_pct, interpolation), label

        transform, path_of = center, lambda raw, label: raw
    if name_errors:
        dataset = _map_naming_failures(examples, transform, path_of)
    else:
        dataset = examples.map(transform, num_parallel_calls=AUTOTUNE)
    if skip_errors:
        dataset = dataset.ignore_errors(log_warning=True)
    drop_remainder = training if drop_remainder is None else drop_remainder
    _check_one_batch(examples, batch_size, drop_remainder)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    if training:
        apply = batch_augmentation(augment, num_classes, seed)
        coins = _seed_stream(seed + 1)
        # Sequential on purpose: the Keras layers' seeded state advances once
        # per batch in batch order, which keeps a seeded run reproducible.
        dataset = tf.data.Dataset.zip(dataset, coins).map(lambda batch, coin: apply(*batch, coin))
    else:
        dataset = dataset.map(lambda images, labels: (images, tf.one_hot(labels, num_classes)))
    return dataset.prefetch(AUTOTUNE)


def _check_one_batch(examples, batch_size, drop_remainder):
    """Refuses a pipeline that would yield no batch at all: `fit` on it trains
    nothing under TensorFlow and fails with a bare StopIteration under JAX."""
    count = int(examples.cardinality())  # < 0: infinite or unknown
    if drop_remainder and 0 <= count < batch_size:
        raise ValueError(
            f"The pipeline has {count} images, fewer than batch_size={batch_size}, and drops the last "
            "incomplete batch (drop_remainder=True, the default for training), so it would yield no "
            f"batch. Use a batch_size of at most {count}, or pass drop_remainder=False."
        )


def _check_options(num_classes, image_size, batch_size, augment, crop_pct, seed, shuffle_buffer, drop_remainder):
    """Refuses a bad option before any dataset is built (0 would silently mean "the default")."""
    check_int("num_classes", num_classes)
    check_int("batch_size", batch_size)
    if image_size is not None:
        check_int("image_size", image_size)
    if crop_pct is not None:
        check_float("crop_pct", crop_pct, "in (0, 1]", low=0.0, high=1.0, low_open=True)
    if seed is not None:
        check_int("seed", seed, minimum=0)
    if shuffle_buffer is not None:
        check_int("shuffle_buffer", shuffle_buffer, minimum=0)
    if drop_remainder is not None:
        check_bool("drop_remainder", drop_remainder, "True, False or None (drop on training only)")
    if augment is not None and not isinstance(augment, TrainAugment):
        raise TypeError(
            "`augment` must be a `keras_metaformer.data.TrainAugment` or None (the authors' recipe). "
            f"Received: augment={augment!r} ({type(augment).__name__})"
        )


def _map_naming_failures(examples, transform, path_of):
    """`examples.map(transform)`, where an example that fails names its file.

    A failing op cannot be caught inside a TensorFlow graph, so failing
    examples are dropped (`ignore_errors`) and the gap each leaves is found
    afterwards: every example carries its position and the path of the one
    before it, so the first to arrive after a gap names a file that failed.
    A sentinel after the last example, which skips the transform, finds a
    failure at the end. All of this is a few scalar ops per example: trying
    each example in a dataset of its own cost up to 1.8x the evaluation
    pipeline's time.
    """
    output_spec = examples.take(0).map(transform).element_spec
    is_last = tf.data.Dataset.from_tensors(False).repeat()
    sentinel = tf.data.Dataset.from_tensors((True, tf.nest.map_structure(_zeros, examples.element_spec)))
    flagged = tf.data.Dataset.zip(is_last, examples).concatenate(sentinel)

    def number(state, element):
        position, previous = state
        last, example = element
        return (position + 1, path_of(*example)), (position, previous, last, example)

    def apply(position, previous, last, example):
        output = tf.cond(last, lambda: tf.nest.map_structure(_zeros, output_spec), lambda: transform(*example))
        return position, previous, last, output

    def check(expected, element):
        position, previous, last, output = element
        message = tf.strings.join(["Cannot decode the image file ", previous, _DECODE_ADVICE])
        with tf.control_dependencies([tf.debugging.Assert(tf.equal(position, expected), [message])]):
            return position + 1, (tf.identity(last), output)

    def not_last(last, output):
        return tf.logical_not(last)

    def output_of(last, output):
        return output

    start = (tf.constant(0, tf.int64), tf.constant(""))
    dataset = flagged.scan(start, number).map(apply, num_parallel_calls=AUTOTUNE).ignore_errors()
    dataset = dataset.scan(tf.constant(0, tf.int64), check)
    return dataset.filter(not_last).map(output_of)


_DECODE_ADVICE = " (truncated or corrupt). Remove or replace it, or pass on_corrupt='skip' to leave such files out."


def _zeros(spec):
    return tf.zeros([0 if size is None else size for size in spec.shape], spec.dtype)


def check_num_classes(model, dataset):
    """Raises a clear error if `model`'s head and `dataset` disagree on classes.

    Without it, the mismatch surfaces deep inside the loss as a shape error.
    """
    outputs = model.outputs[0].shape[-1]
    expected = dataset.num_classes
    if outputs != expected:
        raise ValueError(
            f"The model's head predicts {outputs} classes, but the dataset has "
            f"{expected} ({', '.join(map(str, dataset.class_names[:5]))}"
            f"{', ...' if expected > 5 else ''}). Build the model with "
            f"classes={expected} (weights=None, or pretrained weights with "
            "include_top=False and a new head)."
        )
