"""The argument checks shared by layers, builders and training helpers."""

import math

import numpy as np
import pytest

from keras_metaformer import arguments
from keras_metaformer import training


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_integers_of_any_type_become_python_ints(value):
    checked = arguments.check_int("depth", value)
    assert checked == 3 and type(checked) is int


@pytest.mark.parametrize(
    "value, error",
    [(True, TypeError), (None, TypeError), ("3", TypeError), ([3], TypeError), (3.0, ValueError), (0, ValueError)],
)
def test_non_integers_and_small_integers_are_refused(value, error):
    with pytest.raises(error, match=r"`depth` must be an integer >= 1. Received: depth="):
        arguments.check_int("depth", value)


@pytest.mark.parametrize("value", [math.nan, math.inf, 1.0, -1e-9])
def test_rates_outside_zero_to_one_and_nan_are_refused(value):
    with pytest.raises(ValueError, match=r"`rate` must be a number in \[0, 1\)"):
        arguments.check_rate("rate", value)


def test_rates_keep_their_value_as_python_floats():
    checked = arguments.check_rate("rate", np.float32(0.5))
    assert checked == 0.5 and type(checked) is float


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: training.scaled_learning_rate(0), r"`batch_size` must be an integer >= 1"),
        (lambda: training.scaled_learning_rate("256"), r"`batch_size` must be an integer >= 1. Received: "),
        (lambda: training.warmup_cosine(1e-3, total_steps=0, warmup_steps=0), r"`total_steps` must be an integer"),
        (lambda: training.warmup_cosine(1e-3, total_steps=10, warmup_steps=-1), r"`warmup_steps` must be an inte"),
        (lambda: training.warmup_cosine(0.0, total_steps=10, warmup_steps=1), r"`peak` must be a number > 0"),
    ],
)
def test_training_helpers_check_their_arguments(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()


def test_adamw_refuses_negative_weight_decay():
    import keras_metaformer

    model = keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16), weights=None)
    with pytest.raises(ValueError, match=r"`weight_decay` must be a number >= 0. Received: weight_decay=-0.05"):
        training.adamw(model, 1e-3, weight_decay=-0.05)


@pytest.fixture(scope="module")
def three_class_model():
    import keras_metaformer

    return keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16), input_shape=(32, 32, 3), classes=3, weights=None)


@pytest.mark.parametrize(
    "top_k, error, message",
    [
        ("abc", TypeError, r"`top_k` must be an integer >= 1. Received: top_k='abc' \(str\)"),
        (2.7, ValueError, r"`top_k` must be an integer >= 1. Received: top_k=2.7"),
        (0, ValueError, r"`top_k` must be an integer >= 1. Received: top_k=0"),
        (4, ValueError, r"`top_k` must be an integer between 1 and 3 \(the model has 3 classes\). Received: top_k=4"),
    ],
)
def test_export_saved_model_checks_top_k_before_writing(three_class_model, tmp_path, top_k, error, message):
    from keras_metaformer.export import export_saved_model

    with pytest.raises(error, match=message):
        export_saved_model(three_class_model, tmp_path / "serving", top_k=top_k)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "value, error", [(0, ValueError), (-5, ValueError), (2.5, ValueError), ("200", TypeError), (None, TypeError)]
)
def test_export_tflite_checks_max_calibration_images_before_writing(three_class_model, tmp_path, value, error):
    from keras_metaformer.export import export_tflite

    images = np.zeros((2, 32, 32, 3), "float32")
    with pytest.raises(error, match=r"`max_calibration_images` must be an integer >= 1. Received: max_calibration"):
        export_tflite(
            three_class_model,
            tmp_path / "m.tflite",
            quantize="int8",
            representative_images=images,
            max_calibration_images=value,
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"erasing_prob": 1.5}, ValueError, r"`erasing_prob` must be a number in \[0, 1\]. Received: erasing_prob=1.5"),
        ({"mixup_alpha": -1}, ValueError, r"`mixup_alpha` must be a number >= 0. Received: mixup_alpha=-1"),
        ({"cutmix_alpha": "1"}, TypeError, r"`cutmix_alpha` must be a number >= 0. Received: cutmix_alpha='1' \(str\)"),
        ({"switch_prob": -0.1}, ValueError, r"`switch_prob` must be a number in \[0, 1\]"),
        ({"rand_augment_rate": 2}, ValueError, r"`rand_augment_rate` must be a number in \[0, 1\]"),
        ({"rand_augment_magnitude": 11}, ValueError, r"`rand_augment_magnitude` must be a number in \[0, 10\]"),
        ({"rand_augment_std": math.nan}, ValueError, r"`rand_augment_std` must be a number >= 0"),
        ({"rand_augment_ops": 0}, ValueError, r"`rand_augment_ops` must be an integer >= 1"),
        ({"label_smoothing": 1.0}, ValueError, r"`label_smoothing` must be a number in \[0, 1\)"),
        ({"crop_scale": (0.0, 1.0)}, ValueError, r"`crop_scale\[0\]` must be a number in \(0, 1\]"),
        ({"crop_scale": (1.0, 0.5)}, ValueError, r"`crop_scale` must be a \(min, max\) pair with min <= max"),
        ({"crop_ratio": 0.75}, TypeError, r"`crop_ratio` must be a \(min, max\) pair of numbers > 0"),
        ({"flip": "no"}, TypeError, r"`flip` must be True or False. Received: flip='no' \(str\)"),
    ],
)
def test_train_augment_checks_its_settings(options, error, message):
    from keras_metaformer import data

    with pytest.raises(error, match=message):
        data.TrainAugment(**options)


def test_train_augment_stores_numpy_settings_as_python_numbers():
    from keras_metaformer import data

    augment = data.TrainAugment(mixup_alpha=np.float32(0.5), rand_augment_ops=np.int64(3), crop_scale=[0.5, 1])
    assert type(augment.mixup_alpha) is float and type(augment.rand_augment_ops) is int
    assert augment.crop_scale == (0.5, 1.0) and augment.rand_augment_magnitude == 9.0


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"batch_size": "32"}, TypeError, r"`batch_size` must be an integer >= 1. Received: batch_size='32' \(str\)"),
        ({"batch_size": 2.5}, ValueError, r"`batch_size` must be an integer >= 1. Received: batch_size=2.5"),
        ({"batch_size": 0}, ValueError, r"`batch_size` must be an integer >= 1. Received: batch_size=0"),
        ({"image_size": 0}, ValueError, r"`image_size` must be an integer >= 1. Received: image_size=0"),
        ({"image_size": "32"}, TypeError, r"`image_size` must be an integer >= 1"),
        ({"crop_pct": 0}, ValueError, r"`crop_pct` must be a number in \(0, 1\]. Received: crop_pct=0"),
        ({"crop_pct": 1.2}, ValueError, r"`crop_pct` must be a number in \(0, 1\]"),
        ({"seed": -1}, ValueError, r"`seed` must be an integer >= 0. Received: seed=-1"),
        ({"seed": "0"}, TypeError, r"`seed` must be an integer >= 0"),
        ({"num_classes": 0}, ValueError, r"`num_classes` must be an integer >= 1. Received: num_classes=0"),
        ({"drop_remainder": "yes"}, TypeError, r"`drop_remainder` must be True, False or None"),
        ({"augment": {"flip": False}}, TypeError, r"`augment` must be a `keras_metaformer.data.TrainAugment`"),
    ],
)
def test_data_pipelines_check_their_options(options, error, message):
    from keras_metaformer import data

    images, labels = np.zeros((4, 8, 8, 3), "uint8"), np.array([0, 1, 0, 1])
    with pytest.raises(error, match=message):
        data.from_arrays(images, labels, training=True, **options)


def test_from_arrays_refuses_no_images():
    from keras_metaformer import data

    with pytest.raises(ValueError, match=r"`images` holds no image. Received shape \(0, 8, 8\)."):
        data.from_arrays(np.zeros((0, 8, 8), "uint8"), [], training=False)


@pytest.mark.parametrize("name", ["model.weights.h5", "model.keras"])
def test_load_timm_weights_points_keras_files_to_load_weights(three_class_model, tmp_path, name):
    from keras_metaformer.weights import load_timm_weights

    path = tmp_path / name
    path.write_bytes(b"")  # refused by its name, before it is read
    with pytest.raises(ValueError, match=r"is a Keras weights file, not a timm checkpoint") as error:
        load_timm_weights(three_class_model, path)
    message = str(error.value)
    assert f"`model.load_weights({str(path)!r})`" in message and f"`weights={str(path)!r}`" in message
    assert "torch" not in message
