"""Where examples come from: a folder of images, TFDS, or NumPy arrays.

Each function returns a batched `tf.data.Dataset` of `(images, one_hot)`
ready for `model.fit` on any backend, with `class_names` and `num_classes`
attributes. Keyword options shared by all three are those of
`build_pipeline`: `image_size`, `batch_size`, `augment`, `config`,
`crop_pct`, `interpolation`, `seed`, `drop_remainder`.
"""

import os
import warnings

import numpy as np
import tensorflow as tf

from keras_metaformer.arguments import check_int
from keras_metaformer.data.pipeline import build_pipeline

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# The formats tf.io.decode_image reads, by their first bytes.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def _header_problem(path):
    """Why `path` is not a readable image, judged by its first bytes, or None."""
    with open(path, "rb") as file:
        head = file.read(16)
    if not head:
        return "empty file"
    if head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    return f"not a JPEG, PNG, GIF, BMP or WebP file (starts with {head[:8]!r})"


def _list_images(directory):
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"No folder at {directory!r}. Expected a folder with one sub-folder "
            "of images per class, e.g. train/cat/1.jpg, train/dog/2.jpg."
        )
    class_names = sorted(
        entry.name for entry in os.scandir(directory) if entry.is_dir() and not entry.name.startswith(".")
    )
    paths, labels = [], []
    seen = set()  # real paths of the folders and files already taken
    root = os.path.realpath(directory)
    for label, name in enumerate(class_names):
        for path in _class_images(os.path.join(directory, name), root, seen):
            paths.append(path)
            labels.append(label)
    if not paths:
        found = f"sub-folders {class_names[:5]}" if class_names else "no sub-folders"
        raise ValueError(
            f"No images in {directory!r} ({found}). Expected one sub-folder of "
            f"images per class, with extensions {', '.join(IMAGE_EXTENSIONS)}."
        )
    return class_names, paths, labels


def _class_images(folder, root, seen):
    """The image files under `folder`, each real folder and file once.

    Symbolic links are followed where they lead out of the dataset's `root`
    (a class kept on another disk); one that leads back into it (a loop, or
    a link to a sibling class) is skipped, since what it points to is
    counted where it is.
    """

    def inside_root(path):
        real = os.path.realpath(path)
        return real == root or real.startswith(root + os.sep)

    images = []
    for current, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:  # reached twice through links outside the root
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = sorted(
            f
            for f in folders
            if not (os.path.islink(os.path.join(current, f)) and inside_root(os.path.join(current, f)))
        )
        for file in sorted(files):
            path = os.path.join(current, file)
            if not file.lower().endswith(IMAGE_EXTENSIONS) or (os.path.islink(path) and inside_root(path)):
                continue
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                images.append(path)
    return images


def _drop_unreadable(paths, labels, on_corrupt):
    problems = {path: _header_problem(path) for path in paths}
    bad = [f"{path}: {why}" for path, why in problems.items() if why]
    if not bad:
        return paths, labels
    listing = "\n  ".join(bad[:10]) + ("\n  ..." if len(bad) > 10 else "")
    if on_corrupt == "raise":
        raise ValueError(
            f"{len(bad)} of {len(paths)} image files cannot be read:\n  {listing}\n"
            "Remove or replace them, or pass on_corrupt='skip' to leave them out."
        )
    warnings.warn(f"Skipping {len(bad)} unreadable image files:\n  {listing}", stacklevel=3)
    kept = [(path, label) for path, label in zip(paths, labels) if not problems[path]]
    return [path for path, _ in kept], [label for _, label in kept]


def _decode_file(path):
    contents = tf.io.read_file(path)
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return tf.cast(image, tf.float32)


def _with_metadata(dataset, class_names):
    dataset.class_names = list(class_names)
    dataset.num_classes = len(class_names)
    return dataset


def from_directory(directory, *, training, on_corrupt="raise", **options):
    """Images in `directory/<class name>/...`, classes in sorted name order.

    Args:
        directory: folder with one sub-folder per class (nested folders
            inside a class are included). Symbolic links that lead outside
            `directory` are followed; those that lead back into it (a loop,
            a link to another class) are not, so no image counts twice.
        training: random crops and augmentation, shuffled and with the last
            partial batch dropped; otherwise the evaluation transform.
        on_corrupt: `"raise"` (default) stops with a list of files that are
            not images, and a file whose contents fail to decode later (a
            truncated JPEG) stops the iteration with an error naming it;
            `"skip"` leaves all of them out with a warning.
        **options: see `build_pipeline`.

    Example:

    >>> import tempfile, numpy as np, keras
    >>> scratch = tempfile.TemporaryDirectory()
    >>> root = scratch.name
    >>> for name in ("cat", "dog"):
    ...     os.makedirs(f"{root}/{name}")
    ...     keras.utils.save_img(f"{root}/{name}/0.png", np.zeros((40, 50, 3)))
    >>> val = from_directory(root, training=False, image_size=32, batch_size=2)
    >>> val.class_names, next(iter(val))[0].shape
    (['cat', 'dog'], TensorShape([2, 32, 32, 3]))
    >>> scratch.cleanup()
    """
    if on_corrupt not in ("raise", "skip"):
        raise ValueError(f"`on_corrupt` must be 'raise' or 'skip'. Received: on_corrupt={on_corrupt!r}")
    class_names, paths, labels = _list_images(directory)
    paths, labels = _drop_unreadable(paths, labels, on_corrupt)
    examples = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, "int32")))
    dataset = build_pipeline(
        examples,
        len(class_names),
        training=training,
        decode=_decode_file,
        shuffle_buffer=len(paths),
        skip_errors=on_corrupt == "skip",
        name_errors=on_corrupt == "raise",
        **options,
    )
    return _with_metadata(dataset, class_names)


def from_arrays(images, labels, *, training, num_classes=None, class_names=None, **options):
    """In-memory images: `(N, H, W)`, `(N, H, W, 1)` or `(N, H, W, 3)`.

    Pixel values must be in `[0, 255]`, as the models expect; labels are
    integers in `[0, num_classes)`.

    Example:

    >>> import numpy as np
    >>> images = np.zeros((4, 8, 8), "uint8")
    >>> train = from_arrays(images, [0, 1, 2, 1], training=True, image_size=32,
    ...                     batch_size=2, seed=0)
    >>> images, labels = next(iter(train))
    >>> images.shape, labels.shape, train.num_classes
    (TensorShape([2, 32, 32, 3]), TensorShape([2, 3]), 3)
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise ValueError(
            "`images` must have shape (N, height, width) or (N, height, width, "
            f"1 or 3), channels last. Received shape {images.shape}."
        )
    if len(images) == 0:
        raise ValueError(f"`images` holds no image. Received shape {images.shape}.")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`labels` must be {len(images)} integer class ids, one per image. "
            f"Received shape {labels.shape} and dtype {labels.dtype}."
        )
    if class_names is not None:
        num_classes = len(class_names)
    # Checked here: 0 would otherwise fall back to the labels' count.
    num_classes = int(labels.max()) + 1 if num_classes is None else check_int("num_classes", num_classes)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"Labels must be in [0, {num_classes}). Received labels from {labels.min()} to {labels.max()}."
        )
    examples = tf.data.Dataset.from_tensor_slices((images, labels.astype("int32")))
    dataset = build_pipeline(examples, num_classes, training=training, shuffle_buffer=len(images), **options)
    return _with_metadata(dataset, class_names or [str(i) for i in range(num_classes)])


def _check_manual_dir(builder, manual_dir):
    """Datasets TFDS cannot download (imagenet2012) need their files given."""
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if not instructions or builder.is_prepared():
        return
    name = builder.name
    if manual_dir is None or not os.path.isdir(manual_dir):
        raise FileNotFoundError(
            f"TFDS cannot download {name!r}; it is prepared once from files "
            f"you download yourself. Received manual_dir={manual_dir!r}, "
            f"{'which is not a folder' if manual_dir else 'none given'}. "
            f"Put the files in a folder and pass manual_dir=<folder>. TFDS "
            f"says:\n{instructions.strip()}"
        )
    needed = ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"] if name == "imagenet2012" else []
    missing = [file for file in needed if not os.path.exists(os.path.join(manual_dir, file))]
    if missing:
        raise FileNotFoundError(
            f"{name!r} needs {', '.join(needed)} in manual_dir={manual_dir!r}; missing: {', '.join(missing)}."
        )


def from_tfds(
    name,
    *,
    split,
    training,
    data_dir=None,
    manual_dir=None,
    image_key="image",
    label_key="label",
    **options,
):
    """Any TFDS image-classification dataset, e.g. `imagenet2012`.

    The dataset is prepared on first use (downloaded, or for `imagenet2012`
    built from the tar files in `manual_dir`), then read with TFDS' file
    shuffling for training.

    Args:
        name: TFDS name, e.g. `"imagenette/320px-v2"` or `"imagenet2012"`.
        split: e.g. `"train"`, `"validation"`, `"train[:90%]"`.
        training: as in `from_directory`.
        data_dir: where TFDS keeps prepared datasets.
        manual_dir: folder with files TFDS cannot download itself.
        image_key, label_key: feature names of the image and its class.
        **options: see `build_pipeline`.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    features = builder.info.features
    # A FeaturesDict has `in` and `[]` but no `.get`.
    image_feature = features[image_key] if image_key in features else None  # noqa: SIM401
    label_feature = features[label_key] if label_key in features else None  # noqa: SIM401
    if not isinstance(image_feature, tfds.features.Image) or not isinstance(label_feature, tfds.features.ClassLabel):
        raise ValueError(
            f"{name!r} is not an image-classification dataset with an Image "
            f"feature {image_key!r} and a ClassLabel {label_key!r}. Its features: "
            f"{list(features.keys())}. Pass image_key=/label_key= to pick others."
        )
    _check_manual_dir(builder, manual_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    seed = options.get("seed")
    read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=4 if training else 1)
    examples = builder.as_dataset(split=split, shuffle_files=training, read_config=read_config)
    examples = examples.map(lambda example: (example[image_key], tf.cast(example[label_key], tf.int32)))
    dataset = build_pipeline(examples, label_feature.num_classes, training=training, shuffle_buffer=10_000, **options)
    return _with_metadata(dataset, label_feature.names)
