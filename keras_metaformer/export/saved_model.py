"""SavedModels laid out for TF Serving, with an image-bytes signature."""

import importlib.util
import json
import os
import shutil
import sys
import tempfile

import keras
import numpy as np

from keras_metaformer.arguments import check_int
from keras_metaformer.export.serving import MISSING_SERVING_APIS
from keras_metaformer.export.serving import write_models_config
from keras_metaformer.export.serving import write_warmup_requests
from keras_metaformer.export.signatures import CLASSIFY
from keras_metaformer.export.signatures import CLASSIFY_OUTPUTS
from keras_metaformer.export.signatures import IMAGE_BYTES
from keras_metaformer.export.signatures import IMAGES
from keras_metaformer.export.signatures import PROBABILITIES
from keras_metaformer.export.signatures import SERVING_DEFAULT
from keras_metaformer.export.tensorflow_process import custom_modules
from keras_metaformer.export.tensorflow_process import load_model
from keras_metaformer.export.tensorflow_process import run_in_tensorflow_process
from keras_metaformer.imagenet import imagenet_classes
from keras_metaformer.weights.pretrained_configs import PRETRAINED_CONFIGS
from keras_metaformer.weights.pretrained_configs import PretrainedConfig
from keras_metaformer.weights.pretrained_configs import get_pretrained_config

# saved_model.pb is one protocol buffer, which cannot exceed 2 GiB; constant
# weights must leave room for the rest of the graph.
CONSTANT_WEIGHTS_LIMIT = 2**31 - 2**27


def export_saved_model(
    model,
    directory,
    version=1,
    *,
    class_names=None,
    top_k=None,
    config=None,
    model_name=None,
    warmup=True,
    overwrite=False,
    constant_weights=True,
):
    """Writes `model` as `<directory>/<version>/`, ready for TF Serving.

    The SavedModel has two signatures:

    - `serving_default`: `images`, float32 RGB in `[0, 255]`, shape
      `(batch, height, width, 3)` for any batch; returns `probabilities`,
      `(batch, classes)` float32 (a softmax is added if the model outputs
      logits).
    - `classify_images`: `image_bytes`, a batch of encoded JPEG/PNG/BMP/GIF
      strings; the evaluation transform of `config` (shorter side to
      `floor(size / crop_pct)`, bicubic, centre crop) runs inside. Returns
      the `top_k` `class_ids` (int32), `class_names` (string) and `scores`
      (float32). An undecodable string fails the request with
      InvalidArgument.

    The weights are constants of the graph (`constant_weights=True`), as in
    `frozen_function`: TensorFlow's oneDNN kernels then repack them once into
    the blocked layout of their fastest matrix-product kernels, instead of
    reading them from variables on every request. On a 2-core AVX-512 BF16
    CPU, PoolFormer-S12's `serving_default` under `mixed_bfloat16` took 17.0
    ms at batch 1 and did 75.3 img/s at batch 32, where the Keras model's
    TensorFlow graph took 26.0 ms and did 69.9 img/s (`recipes/benchmark.py`,
    its `tf-saved-model` and `tf` engines). Export trained weights: see
    `frozen_function` on zero biases.

    It also writes `assets.extra/tf_serving_warmup_requests` (one request per
    signature, so TF Serving compiles both before taking traffic) and, next
    to the version folders, an example `models.config`.

    On the JAX backend the model is saved as a `.keras` file and exported by
    a TensorFlow-backend subprocess from the same weights. That process
    imports the module of every layer class that is not Keras' or this
    package's (with the caller's `sys.path`), so a custom layer must live in
    a module importable by name and be registered with
    `@keras.saving.register_keras_serializable()`; a class defined in
    `__main__` (a script or notebook) is refused before anything is written. Keras' own JAX
    export (jax2tf) wraps the whole network in one `XlaCallModule` op, which
    the TFLite converter cannot lower to builtin ops and which cannot be
    composed with TensorFlow's image decoding for the bytes signature; the
    `.keras` format is backend-independent, so the exported graph computes
    the same function.

    Args:
        model: a Keras image classifier taking `[0, 255]` RGB images of a
            static square size (like the builders with `include_top=True`).
        directory: the model's base path (TF Serving's `base_path`): a
            folder, new or existing, not a file. A failed export leaves no
            version folder, and removes the folders it created.
        version: a positive integer, the version folder's name.
        class_names: one name per class. Defaults to the ImageNet-1k names
            for 1,000 classes, else to `"0"`, `"1"`, ...
        top_k: how many classes `classify_images` returns; by default 5,
            or all of them if fewer.
        config: a `PretrainedConfig` or architecture name giving `crop_pct`
            and interpolation for `classify_images`. Defaults to the config
            of the architecture `model.name` starts with, else timm's
            default (crop_pct 0.9, bicubic).
        model_name: the name in `models.config`; defaults to `model.name`.
        warmup: whether to write the warm-up requests.
        overwrite: replace an existing version folder. Without it, an
            existing folder is an error.
        constant_weights: store the weights as graph constants (faster on
            a CPU; the graph must stay under 2 GiB) rather than as
            variables.

    Returns:
        The path of the version folder.

    Example:

    >>> import tempfile, keras_metaformer
    >>> from keras_metaformer.export import export_saved_model
    >>> model = keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16),
    ...     input_shape=(32, 32, 3), classes=3, weights=None)
    >>> export_saved_model(model, tempfile.mkdtemp(), class_names=["a", "b", "c"])  # doctest: +SKIP
    '/tmp/.../1'
    """
    spec = _export_spec(model, version, class_names, top_k, config, model_name, constant_weights)
    directory = os.path.abspath(os.fspath(directory))
    check_output_path(directory, "folder")
    _check_importable(warmup)
    target = os.path.join(directory, str(spec["version"]))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"{target} already exists. TF Serving treats each version folder "
            "as immutable: pass a new `version`, or `overwrite=True` to replace it."
        )
    modules = [] if keras.backend.backend() == "tensorflow" else custom_modules(model)
    created = make_folders(directory)
    try:
        # Written beside the target and renamed in one step: TF Serving polls the
        # base path, and must never load a half-written version.
        staging = tempfile.mkdtemp(prefix=f".{spec['version']}-", dir=directory)
        # mkdtemp's mode 0700 would hide the version from a server running as another user.
        os.chmod(staging, 0o755)
        try:
            if keras.backend.backend() == "tensorflow":
                _write(model, staging, spec, warmup)
            else:
                _write_in_tensorflow_process(model, staging, spec, warmup, modules)
            if os.path.exists(target):
                shutil.rmtree(target)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        remove_empty_folders(directory, created)
        raise
    write_models_config(directory, spec["model_name"])
    return target


def check_output_path(path, kind):
    """Raises before anything is written if `path` cannot become a `kind` ("file" or "folder")."""
    path = os.path.abspath(os.fspath(path))
    if kind == "folder" and os.path.isfile(path):
        raise FileExistsError(
            f"{path} is an existing file, but the export writes a folder there. Pass a folder "
            "path (new or existing), or move the file away."
        )
    if kind == "file" and os.path.isdir(path):
        raise FileExistsError(
            f"{path} is an existing folder, but the export writes a file there. Pass a file path such as model.tflite."
        )
    parent = os.path.dirname(path)
    while not os.path.exists(parent):  # the root always exists
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise FileExistsError(f"Cannot write {path}: {parent} is a file, not a folder. Choose a path under a folder.")


def _check_importable(warmup=False):
    """Raises an ImportError naming the install before anything is written
    if TensorFlow (or, for warm-up records, TF Serving's protos) is missing.

    On the JAX backend the export runs in a subprocess, whose ImportError
    would come back only as its stderr.
    """
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError(
            'Exporting needs TensorFlow, whatever the Keras backend: `pip install "keras-metaformer[tensorflow-cpu]"`.',
            name="tensorflow",
        )
    if warmup and importlib.util.find_spec("tensorflow_serving") is None:
        raise ImportError(MISSING_SERVING_APIS, name="tensorflow_serving")


def make_folders(directory):
    """`os.makedirs(directory)`; returns the highest folder it created, or None."""
    created, parent = None, directory
    while not os.path.exists(parent):
        created, parent = parent, os.path.dirname(parent)
    os.makedirs(directory, exist_ok=True)
    return created


def remove_empty_folders(directory, created):
    """Undoes `make_folders`: removes the folders it made, from `directory` up to `created`, if empty."""
    if created is None:
        return
    folder = directory
    while True:
        try:
            os.rmdir(folder)
        except OSError:  # not empty (or already gone): keep it and what is above
            return
        if folder == created:
            return
        folder = os.path.dirname(folder)


def _export_spec(model, version, class_names, top_k, config, model_name, constant_weights):
    """Checks the arguments; returns what the TF-side writer needs, as JSON types."""
    if not isinstance(version, (int, np.integer)) or isinstance(version, bool) or version < 1:
        raise ValueError(
            f"`version` must be a positive integer (TF Serving's version folder name). Received {version!r}."
        )
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or None in shape[1:3] or shape[1] != shape[2]:
        raise ValueError(
            "export_saved_model needs a model taking square RGB images of a "
            f"fixed size, (batch, size, size, 3). This model takes {shape}. Build it "
            "with e.g. `input_shape=(224, 224, 3)`."
        )
    output_shape = tuple(model.output_shape)
    if len(output_shape) != 2:
        raise ValueError(
            f"export_saved_model needs a classifier with outputs (batch, classes); this "
            f"model outputs {output_shape}. Build it with `include_top=True`."
        )
    classes = output_shape[1]
    if class_names is None:
        names = [n.split(",")[0] for _, n in imagenet_classes()] if classes == 1000 else None
        class_names = names or [str(i) for i in range(classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != classes:
        raise ValueError(f"Got {len(class_names)} class names for a model with {classes} classes.")
    top_k = min(5, classes) if top_k is None else check_int("top_k", top_k)
    if top_k > classes:
        raise ValueError(
            f"`top_k` must be an integer between 1 and {classes} (the model has {classes} classes). "
            f"Received: top_k={top_k}"
        )
    weight_bytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
    if constant_weights and weight_bytes > CONSTANT_WEIGHTS_LIMIT:
        raise ValueError(
            f"This model's weights take {weight_bytes / 2**30:.2f} GiB, too many to store as "
            f"constants in saved_model.pb, which cannot exceed 2 GiB. Pass "
            "`constant_weights=False` to store them as variables."
        )
    config = preprocessing_config(model, config)
    return {
        "version": int(version),
        "class_names": class_names,
        "top_k": int(top_k),
        "image_size": int(shape[1]),
        "crop_pct": float(config.crop_pct),
        "interpolation": config.interpolation,
        "from_logits": outputs_logits(model),
        "model_name": model_name or model.name,
        "constant_weights": bool(constant_weights),
    }


def preprocessing_config(model, config=None):
    """The evaluation transform for `model`: `config` itself, or the one its name implies."""
    if isinstance(config, PretrainedConfig):
        return config
    if isinstance(config, str):
        return get_pretrained_config(config)
    archs = {c.arch for c in PRETRAINED_CONFIGS.values()}
    matches = [a for a in archs if model.name == a or model.name.startswith(a + "_")]
    if matches:
        return get_pretrained_config(max(matches, key=len))
    return PretrainedConfig(arch=model.name, tag="custom", hub_id="")


def outputs_logits(model):
    """Whether the model's last layer outputs logits (linear) or probabilities (softmax)."""
    activation = getattr(model.layers[-1], "activation", None)
    name = getattr(activation, "__name__", None)
    if name == "softmax":
        return False
    if name == "linear":
        return True
    raise ValueError(
        "Cannot tell whether this model outputs probabilities or logits: its "
        f"last layer {model.layers[-1].name!r} has activation {name or activation!r}. "
        "End the model with a Dense layer with activation 'softmax' or None."
    )


def _write(model, path, spec, warmup):
    """Writes the SavedModel with TensorFlow (TF backend only)."""
    import tensorflow as tf

    from keras_metaformer.data.transforms import resize_and_center_crop

    size = spec["image_size"]
    if spec["constant_weights"]:
        from keras_metaformer.export.frozen import frozen_graph

        graph = frozen_graph(model)
        forward = lambda images: graph(tf.cast(images, graph.inputs[0].dtype))[0]  # noqa: E731
    else:
        forward = lambda images: model(images, training=False)  # noqa: E731

    def probabilities(images):
        outputs = tf.cast(forward(images), tf.float32)
        return tf.nn.softmax(outputs) if spec["from_logits"] else outputs

    def decode(encoded):
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image = tf.cast(image, tf.float32)
        return resize_and_center_crop(image, size, spec["crop_pct"], spec["interpolation"])

    names = tf.constant(spec["class_names"])

    def serve(images):
        return {PROBABILITIES: probabilities(images)}

    def classify(image_bytes):
        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32))
        scores, ids = tf.math.top_k(probabilities(images), k=spec["top_k"])
        return dict(zip(CLASSIFY_OUTPUTS, (ids, tf.gather(names, ids), scores)))

    # Not `archive.track(model)`: Keras 3.15 would then save every weight
    # twice (as Keras variables and as the TF variables the endpoints use),
    # doubling the size. The endpoints track the variables they use, if any;
    # both call one frozen graph, stored once.
    archive = keras.export.ExportArchive()
    archive.add_endpoint(SERVING_DEFAULT, serve, [tf.TensorSpec((None, size, size, 3), tf.float32, name=IMAGES)])
    archive.add_endpoint(CLASSIFY, classify, [tf.TensorSpec((None,), tf.string, name=IMAGE_BYTES)])
    archive.write_out(path, verbose=False)
    if warmup:
        write_warmup_requests(path, spec["model_name"], size)


def _write_in_tensorflow_process(model, path, spec, warmup, modules=()):
    with tempfile.TemporaryDirectory() as scratch:
        spec_file = os.path.join(scratch, "spec.json")
        with open(spec_file, "w") as f:
            json.dump(dict(spec, warmup=warmup, modules=list(modules)), f)
        run_in_tensorflow_process(model, __name__, scratch, spec_file, path)


def _main(model_file, spec_file, path):
    with open(spec_file) as f:
        spec = json.load(f)
    model = load_model(model_file, spec.pop("modules", []))
    _write(model, path, spec, spec.pop("warmup"))


if __name__ == "__main__":
    _main(*sys.argv[1:])
