"""tf.data pipelines: transforms against PIL, sources, augmentation, errors."""

import os

import keras
import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
from numpy_reference import pil_eval_transform
from skimage import data as skimage_data

import keras_metaformer
from keras_metaformer import data

PLAIN = data.TrainAugment(flip=False, rand_augment_magnitude=None, mixup_alpha=0.0, cutmix_alpha=0.0, erasing_prob=0.0)


def _batches(dataset):
    return [(np.asarray(images), np.asarray(labels)) for images, labels in dataset]


@pytest.mark.parametrize("transpose", [False, True], ids=["landscape", "portrait"])
@pytest.mark.parametrize("crop_pct", [0.9, 0.95])
def test_eval_transform_matches_pil(transpose, crop_pct):
    image = skimage_data.chelsea()
    if transpose:
        image = np.ascontiguousarray(image.transpose(1, 0, 2))
    ours = data.resize_and_center_crop(tf.constant(image), 224, crop_pct).numpy()
    expected = pil_eval_transform(image, int(224 / crop_pct), 224)
    difference = np.abs(ours - expected)
    assert difference.max() <= 1.0 and difference.mean() < 0.3


def test_random_resized_crop_of_the_whole_image_is_a_resize():
    image = skimage_data.chelsea()  # 300 x 451
    ratio = image.shape[1] / image.shape[0]
    crop = data.random_resized_crop(tf.constant(image), 64, (1.0, 1.0), (ratio, ratio), tf.constant([1, 2]))
    expected = np.asarray(PIL.Image.fromarray(image).resize((64, 64), PIL.Image.BICUBIC), "float32")
    assert np.abs(crop.numpy() - expected).max() <= 1.0


def test_random_resized_crop_depends_only_on_its_seed():
    image = tf.constant(skimage_data.chelsea())
    crop = lambda seed: data.random_resized_crop(image, 32, (0.08, 1.0), (0.75, 1.33), tf.constant(seed)).numpy()  # noqa: E731
    assert np.array_equal(crop([3, 4]), crop([3, 4]))
    assert not np.array_equal(crop([3, 4]), crop([5, 6]))


def test_evaluation_batches_are_ordered_one_hot_and_complete():
    images = np.stack([np.full((8, 8), 10 * i, "uint8") for i in range(5)])
    dataset = data.from_arrays(images, [0, 1, 2, 0, 1], training=False, image_size=32, batch_size=2, crop_pct=1.0)
    batches = _batches(dataset)
    assert [len(b[0]) for b in batches] == [2, 2, 1]
    pixels = np.concatenate([b[0] for b in batches])
    assert pixels.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(pixels[:, 16, 16], np.repeat(10 * np.arange(5.0)[:, None], 3, 1))
    labels = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(labels, np.eye(3)[[0, 1, 2, 0, 1]])


def test_training_labels_are_smoothed_and_images_keep_their_label():
    # Each image is a constant grey tied to its class, so any crop keeps it.
    labels = np.arange(12) % 3
    images = np.stack([np.full((16, 16, 3), 40 * (c + 1), "uint8") for c in labels])
    dataset = data.from_arrays(images, labels, training=True, image_size=32, batch_size=4, seed=0, augment=PLAIN)
    for batch_images, batch_labels in _batches(dataset):
        classes = batch_labels.argmax(1)
        np.testing.assert_allclose(batch_images[:, 0, 0, 0], 40 * (classes + 1))
        np.testing.assert_allclose(batch_labels.max(1), 0.9 + 0.1 / 3, rtol=1e-6)
        np.testing.assert_allclose(batch_labels.min(1), 0.1 / 3, rtol=1e-6)


def test_seeded_training_pipelines_repeat_and_epochs_differ():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 20, 24, 3), dtype="uint8")
    labels = np.arange(16) % 4
    make = lambda seed: data.from_arrays(images, labels, training=True, image_size=32, batch_size=4, seed=seed)  # noqa: E731
    dataset = make(7)
    first, second = _batches(dataset), _batches(dataset)
    again = _batches(make(7))
    for (a_images, a_labels), (b_images, b_labels) in zip(first, again):
        np.testing.assert_array_equal(a_images, b_images)
        np.testing.assert_array_equal(a_labels, b_labels)
    assert not np.array_equal(first[0][0], second[0][0])
    assert not np.array_equal(first[0][0], _batches(make(8))[0][0])


def test_a_training_pipeline_with_fewer_images_than_a_batch_is_refused():
    images, labels = np.zeros((3, 8, 8, 3), "uint8"), [0, 1, 1]
    message = r"has 3 images, fewer than batch_size=4, .* Use a batch_size of at most 3, or pass drop_remainder=False"
    with pytest.raises(ValueError, match=message):
        data.from_arrays(images, labels, training=True, image_size=32, batch_size=4)
    kept = data.from_arrays(images, labels, training=True, image_size=32, batch_size=4, drop_remainder=False)
    evaluation = data.from_arrays(images, labels, training=False, image_size=32, batch_size=4)
    for dataset in (kept, evaluation):
        assert [len(batch_images) for batch_images, _ in _batches(dataset)] == [3]


def test_mixed_labels_are_distributions_over_two_classes_at_most():
    labels = np.arange(16) % 4
    images = np.stack([np.full((8, 8, 3), 60 * c, "uint8") for c in labels])
    dataset = data.from_arrays(images, labels, training=True, image_size=32, batch_size=8, seed=1)
    mixed = 0
    for _, batch_labels in _batches(dataset):
        np.testing.assert_allclose(batch_labels.sum(1), 1.0, rtol=1e-5)
        above_floor = (batch_labels > 0.1 / 4 + 1e-4).sum(1)
        assert above_floor.max() <= 2
        mixed += int((above_floor == 2).sum())
    assert mixed > 0


def test_grayscale_arrays_become_rgb():
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype="uint8")
    batch = _batches(data.from_arrays(images, [0, 1], training=False, image_size=32, batch_size=2))[0][0]
    np.testing.assert_array_equal(batch[..., 0], batch[..., 2])


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((2, 8, 8, 2)), [0, 1], r"channels last. Received shape \(2, 8, 8, 2\)"),
        (np.zeros((2, 8, 8)), [0.5, 1], "integer class ids"),
        (np.zeros((2, 8, 8)), [0, 1, 1], "2 integer class ids"),
    ],
)
def test_from_arrays_rejects_bad_input(images, labels, message):
    with pytest.raises(ValueError, match=message):
        data.from_arrays(images, labels, training=False)


def _write_folder(root, counts, size=(20, 30)):
    for index, (name, count) in enumerate(counts.items()):
        os.makedirs(root / name, exist_ok=True)
        for i in range(count):
            pixels = np.full((*size, 3), 50 * (index + 1), "uint8")
            PIL.Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_folder_classes_are_sorted_names_and_labels_follow_them(tmp_path):
    root = _write_folder(tmp_path, {"zebra": 2, "ant": 3})
    dataset = data.from_directory(str(root), training=False, image_size=32, batch_size=8, crop_pct=1.0)
    assert dataset.class_names == ["ant", "zebra"] and dataset.num_classes == 2
    ((images, labels),) = _batches(dataset)
    np.testing.assert_array_equal(labels.argmax(1), [0, 0, 0, 1, 1])
    # "zebra" was written first, in grey 50; "ant" second, in 100.
    np.testing.assert_allclose(images[:, 16, 16, 0], [100, 100, 100, 50, 50], atol=2)  # JPEG rounding


def test_folder_training_pipeline_feeds_model_fit(tmp_path):
    root = _write_folder(tmp_path, {"a": 4, "b": 4})
    dataset = data.from_directory(str(root), training=True, image_size=32, batch_size=4, seed=0)
    model = keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16), weights=None, input_shape=(32, 32, 3), classes=2)
    data.check_num_classes(model, dataset)
    model.compile(keras.optimizers.SGD(0.01), "categorical_crossentropy")
    history = model.fit(dataset, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])


def test_class_count_mismatch_is_explained(tmp_path):
    dataset = data.from_directory(str(_write_folder(tmp_path, {"a": 1, "b": 1, "c": 1})), training=False)
    model = keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16), weights=None, classes=5)
    with pytest.raises(ValueError, match=r"predicts 5 classes, but the dataset has 3 \(a, b, c\).*classes=3"):
        data.check_num_classes(model, dataset)


def test_corrupt_images_are_named_or_skipped(tmp_path):
    root = _write_folder(tmp_path, {"a": 2, "b": 2})
    (root / "b" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match=r"1 of 5 image files cannot be read:\n.*broken.jpg: not a JPEG"):
        data.from_directory(str(root), training=False)
    with pytest.warns(UserWarning, match="Skipping 1 unreadable"):
        dataset = data.from_directory(str(root), training=False, image_size=32, on_corrupt="skip")
    assert sum(len(images) for images, _ in _batches(dataset)) == 4


def test_truncated_images_are_dropped_when_skipping(tmp_path):
    root = _write_folder(tmp_path, {"a": 2, "b": 2})
    whole = (root / "a" / "0.jpg").read_bytes()
    (root / "a" / "cut.jpg").write_bytes(whole[: len(whole) // 3])
    dataset = data.from_directory(str(root), training=False, image_size=32, on_corrupt="skip")
    assert sum(len(images) for images, _ in _batches(dataset)) == 4


@pytest.mark.parametrize("make, message", [(lambda p: p / "missing", "No folder at"), (lambda p: p, "No images in")])
def test_missing_or_empty_folders_are_explained(tmp_path, make, message):
    (tmp_path / "only_a_folder").mkdir()
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        data.from_directory(str(make(tmp_path)), training=True)


@pytest.fixture(scope="module")
def tfds():
    return pytest.importorskip("tensorflow_datasets")


def test_tfds_imagenet_reads_from_a_manual_dir(tfds, tmp_path):
    for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        (tmp_path / name).touch()
    with tfds.testing.mock_data(num_examples=4):
        dataset = data.from_tfds(
            "imagenet2012",
            split="validation",
            training=False,
            manual_dir=str(tmp_path),
            data_dir=str(tmp_path / "tfds"),
            image_size=32,
            batch_size=4,
        )
        ((images, labels),) = _batches(dataset)
    assert images.shape == (4, 32, 32, 3) and labels.shape == (4, 1000)
    assert dataset.class_names[0] == "n01440764"


@pytest.mark.parametrize("manual", [None, "empty"])
def test_tfds_imagenet_without_its_files_is_explained(tfds, tmp_path, manual):
    manual_dir = None if manual is None else str(tmp_path)
    expected = "cannot download 'imagenet2012'" if manual is None else "missing: ILSVRC2012_img_train.tar"
    with pytest.raises(FileNotFoundError, match=expected):
        data.from_tfds("imagenet2012", split="train", training=True, manual_dir=manual_dir, data_dir=str(tmp_path))


def test_tfds_datasets_without_images_and_labels_are_rejected(tfds, tmp_path):
    with pytest.raises(ValueError, match="not an image-classification dataset"):
        data.from_tfds("imdb_reviews", split="train", training=False, data_dir=str(tmp_path))


def _images_in_every_mode(root):
    """Files in each Pillow mode, and the RGB pixels TensorFlow's decoder gives (NumPy reference)."""
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (12, 16, 4), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (12, 16)).astype("uint16")
    rgb16 = rng.integers(0, 65536, (12, 16, 4)).astype("uint16")

    def grey(values):
        return np.repeat(values[..., None], 3, axis=-1)

    # CMYK in flat 8x8 blocks at quality 100: every JPEG decoder gives the same inks.
    inks = np.kron(rng.integers(0, 256, (2, 2, 4), dtype=np.uint8), np.ones((8, 8, 1), "uint8"))
    c, m, y, k = np.moveaxis(inks.astype("int64"), -1, 0)
    palette = PIL.Image.fromarray(rgba[..., :3]).convert("P")
    palette_rgb = np.asarray(palette.convert("RGB"))
    files = {
        "grey16.png": (PIL.Image.fromarray(grey16), grey(grey16 >> 8).astype("uint8")),  # libpng's strip_16
        "palette.png": (palette, palette_rgb),
        "palette.gif": (palette, palette_rgb),
        "rgba.png": (PIL.Image.fromarray(rgba), rgba[..., :3]),  # alpha dropped, not composited
        "grey_alpha.png": (PIL.Image.fromarray(rgba[..., :2].copy(), "LA"), grey(rgba[..., 0])),
        "one_bit.png": (PIL.Image.fromarray(rgba[..., 0] > 127), grey(np.where(rgba[..., 0] > 127, 255, 0))),
        "cmyk.jpg": (
            PIL.Image.fromarray(inks, "CMYK"),
            np.stack([(255 - ink) * (255 - k) // 255 for ink in (c, m, y)], -1),
        ),
    }
    paths = {}
    for name, (image, expected) in files.items():
        options = {"quality": 100, "subsampling": 0} if name.endswith(".jpg") else {}
        image.save(root / name, **options)
        paths[name] = (root / name, expected)
    # A palette with a transparent colour keeps that colour's value, as TensorFlow's channels=3 does.
    palette.save(root / "palette_transparent.png", transparency=3)
    paths["palette_transparent.png"] = (root / "palette_transparent.png", palette_rgb)
    # 16-bit RGB and RGBA PNGs, which Pillow cannot write.
    for channels in (3, 4):
        path = root / f"rgb16_{channels}.png"
        path.write_bytes(tf.io.encode_png(rgb16[..., :channels]).numpy())
        paths[path.name] = (path, (rgb16[..., :3] >> 8).astype("uint8"))
    return paths


def test_every_pil_mode_reads_as_the_pipeline_decodes(tmp_path):
    from keras_metaformer.cli import read_image
    from keras_metaformer.data.sources import _decode_file
    from keras_metaformer.preprocessing import load_image

    for name, (path, expected) in _images_in_every_mode(tmp_path).items():
        decoded = np.asarray(_decode_file(str(path)))
        np.testing.assert_array_equal(decoded, expected, err_msg=f"TensorFlow, {name}")
        for reader in (read_image, load_image):
            pixels = reader(str(path))
            assert pixels.dtype == np.uint8 and pixels.shape == decoded.shape, name
            np.testing.assert_array_equal(pixels, decoded, err_msg=f"{reader.__module__}, {name}")


def test_modes_tensorflow_does_not_read_follow_the_same_rules(tmp_path):
    from keras_metaformer.preprocessing import load_image
    from keras_metaformer.preprocessing import pil_to_rgb

    rng = np.random.default_rng(1)
    wide = rng.integers(0, 65536, (6, 5)).astype("int32")
    PIL.Image.fromarray(wide, "I").save(tmp_path / "i.tif")  # older Pillow opens 16-bit PNGs as "I"
    np.testing.assert_array_equal(load_image(tmp_path / "i.tif"), np.repeat((wide >> 8)[..., None], 3, -1))
    floats = rng.uniform(-10, 300, (6, 5)).astype("float32")
    PIL.Image.fromarray(floats, "F").save(tmp_path / "f.tif")
    expected = np.clip(np.round(floats), 0, 255).astype("uint8")
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif"), np.repeat(expected[..., None], 3, -1))
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    with_alpha = PIL.Image.fromarray(rgba).convert("PA")
    np.testing.assert_array_equal(pil_to_rgb(with_alpha), np.asarray(with_alpha.convert("RGBA"))[..., :3])


@pytest.mark.parametrize(
    "corrupt, named",
    [
        (["b/1.png"], r"b/1\.png"),  # in the middle
        (["a/0.jpg"], r"a/0\.jpg"),  # first
        (["b/2.jpg"], r"b/2\.jpg"),  # last
        (["a/1.png", "a/2.jpg"], r"a/(1\.png|2\.jpg)"),  # two in a row
    ],
)
def test_a_corrupt_image_body_is_named_by_the_pipeline(tmp_path, corrupt, named):
    root = _write_folder(tmp_path, {"a": 3, "b": 3})
    for name in corrupt:
        whole = (root / name).read_bytes()
        (root / name).write_bytes(whole[: len(whole) // 2])  # a valid header, half a body
    for training in (False, True):  # augmentation plays no part: PLAIN keeps the test quick
        dataset = data.from_directory(str(root), training=training, image_size=32, batch_size=2, seed=0, augment=PLAIN)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"Cannot decode the image file .*" + named):
            _batches(dataset)


def test_naming_corrupt_files_keeps_every_image_in_order(tmp_path):
    root = _write_folder(tmp_path, {"a": 3, "b": 4})
    dataset = data.from_directory(str(root), training=False, image_size=32, batch_size=3, crop_pct=1.0)
    plain = data.from_directory(str(root), training=False, image_size=32, batch_size=3, crop_pct=1.0, on_corrupt="skip")
    for (images, labels), (expected_images, expected_labels) in zip(_batches(dataset), _batches(plain), strict=True):
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)


def test_folder_symlinks_never_count_an_image_twice(tmp_path):
    root = _write_folder(tmp_path / "data", {"cat": 2, "dog": 3})
    os.symlink("..", root / "cat" / "loop")  # a loop back to the dataset's root
    os.symlink(os.path.join("..", "dog"), root / "cat" / "dogs")  # a sibling class
    os.symlink(os.path.join("..", "dog", "0.jpg"), root / "cat" / "also_a_dog.jpg")
    elsewhere = _write_folder(tmp_path / "elsewhere", {"more": 2})
    os.symlink(elsewhere / "more", root / "cat" / "more")  # outside the root: followed, once
    os.symlink(elsewhere / "more", root / "cat" / "more_again")
    dataset = data.from_directory(str(root), training=False, image_size=32, batch_size=64, crop_pct=1.0)
    ((_, labels),) = _batches(dataset)
    np.testing.assert_array_equal(labels.argmax(1), [0, 0, 0, 0, 1, 1, 1])  # 2 cats + 2 from elsewhere, 3 dogs
