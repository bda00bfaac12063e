"""TFLite (LiteRT) files: float32, float16, dynamic-range int8, full-integer int8.

Every file uses TFLite builtin ops only (no Flex / SELECT_TF_OPS), so it
runs with the small LiteRT runtime on phones. `run_tflite` runs them with
the `ai-edge-litert` interpreter (`tf.lite.Interpreter` is deprecated).
"""

import contextlib
import os
import sys
import tempfile

import numpy as np

from keras_metaformer.arguments import check_int

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")


def export_tflite(model, path, quantize="float32", representative_images=None, max_calibration_images=200):
    """Converts a Keras image classifier to a `.tflite` file.

    The file takes float32 RGB images in `[0, 255]` (uint8 pixels for
    `"int8"`), shape `(batch, size, size, 3)`, and returns float32 class
    probabilities, like the SavedModel's `serving_default`.

    Args:
        model: a Keras classifier (see `export_saved_model`); on the JAX
            backend it is converted through a TensorFlow-backend subprocess.
        path: the `.tflite` file to write (not an existing folder). A
            failed export leaves no file, and removes the folders it created.
        quantize: `"float32"` (none), `"float16"` (weights in float16),
            `"dynamic"` (weights in int8, activations float), or `"int8"`
            (weights and activations int8, calibrated on
            `representative_images`; uint8 image input, float32 output).
        representative_images: for `"int8"`: float `[0, 255]` images
            `(n, size, size, 3)`, or a `tf.data.Dataset` yielding such
            batches (or `(images, labels)`), e.g. from `keras_metaformer.data`.
            Images of another size are an error, raised before conversion.
        max_calibration_images: how many images calibrate `"int8"`, at
            least 1 (at most that many are read).

    Returns:
        `path`.
    """
    max_calibration_images = check_int("max_calibration_images", max_calibration_images)
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantize!r}. Expected one of {QUANTIZATIONS}.")
    if quantize == "int8" and representative_images is None:
        raise ValueError(
            "Full-integer int8 needs `representative_images` to calibrate activation "
            "ranges: a few hundred images like those the model will see, e.g. "
            "`keras_metaformer.data.from_directory(..., training=False)`."
        )
    from keras_metaformer.export.saved_model import check_output_path
    from keras_metaformer.export.saved_model import export_saved_model
    from keras_metaformer.export.saved_model import make_folders
    from keras_metaformer.export.saved_model import remove_empty_folders

    path = os.fspath(path)
    check_output_path(path, "file")
    if quantize == "int8":
        _check_calibration_shape(representative_images, tuple(model.input_shape[1:]))
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as scratch:
        # The converter turns variables into constants itself.
        saved_model = export_saved_model(model, scratch, warmup=False, overwrite=True, constant_weights=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=["serving_default"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = _calibration(
                representative_images, max_calibration_images, tuple(model.input_shape[1:])
            )
            # Pixels are integers in [0, 255]: uint8 input loses nothing.
            converter.inference_input_type = tf.uint8
        with _quiet_stderr_if_logs_are_off():
            flatbuffer = converter.convert()
    folder = os.path.dirname(os.path.abspath(path))
    created = make_folders(folder)
    partial = f"{path}.partial"
    try:
        with open(partial, "wb") as f:
            f.write(flatbuffer)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        remove_empty_folders(folder, created)
        raise
    return path


@contextlib.contextmanager
def _quiet_stderr_if_logs_are_off():
    """Discards what the TFLite converter writes to stderr itself, if TensorFlow's logs are off.

    The int8 quantiser prints a line of settings ("fully_quantize: 0,
    inference_type: 6, ...") straight to file descriptor 2, past
    TF_CPP_MIN_LOG_LEVEL. When that variable hides INFO lines (1 or more),
    so does this; errors still reach the caller as the converter's
    exception.
    """
    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        level = 0
    if level < 1:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _shape_problem(shape, expected):
    """Why images of `shape` cannot calibrate a model taking `expected` (H, W, C), or None."""
    shape = tuple(None if size is None else int(size) for size in shape)
    if len(shape) != 4 or any(got is not None and got != want for got, want in zip(shape[1:], expected)):
        return (
            f"`representative_images` must be a batch of images of the model's input size, shape "
            f"(n, {', '.join(map(str, expected))}). Received shape {shape}. Resize them first, e.g. "
            f"`keras_metaformer.data.from_directory(..., training=False, image_size={expected[0]})`."
        )
    return None


def _images_spec_shape(images):
    spec = images.element_spec
    return (spec[0] if isinstance(spec, tuple) else spec).shape


def _check_calibration_shape(images, expected):
    """Fails before any conversion if calibration images have the wrong shape."""
    shape = _images_spec_shape(images) if hasattr(images, "element_spec") else np.shape(images)
    problem = _shape_problem(shape, expected)
    if problem:
        raise ValueError(problem)


def _calibration(images, limit, expected):
    def batches():
        if hasattr(images, "as_numpy_iterator"):
            for batch in images.as_numpy_iterator():
                yield batch[0] if isinstance(batch, tuple) else batch
        else:
            yield np.asarray(images)

    def representative_dataset():
        count = 0
        for batch in batches():
            problem = _shape_problem(np.shape(batch), expected)  # a dataset of dynamic shape
            if problem:
                raise ValueError(problem)
            for image in np.asarray(batch, dtype="float32"):
                if count == limit:
                    return
                count += 1
                yield [image[None]]

    return representative_dataset


def _interpreter(path, num_threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise ImportError("Running .tflite files needs the LiteRT runtime: `pip install ai-edge-litert`.") from error
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No .tflite file at {path!r}.")
    return Interpreter(model_path=os.fspath(path), num_threads=num_threads)


def tflite_ops(path):
    """The sorted names of the operators a `.tflite` file uses."""
    interpreter = _interpreter(path, 1)
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def loaded_interpreter(path, images, num_threads=2):
    """A LiteRT interpreter with `images` (float `[0, 255]`, NHWC) set as its input.

    Quantised inputs are converted with the file's own scale and zero point.
    Call `invoke()` on the result; `run_tflite` also reads the output.
    """
    images = np.asarray(images, dtype="float32")
    interpreter = _interpreter(path, num_threads)
    (input_detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(input_detail["index"], images.shape)
    interpreter.allocate_tensors()
    dtype = input_detail["dtype"]
    if np.issubdtype(dtype, np.integer):
        scale, zero_point = input_detail["quantization"]
        limits = np.iinfo(dtype)
        images = np.clip(np.round(images / scale + zero_point), limits.min, limits.max).astype(dtype)
    interpreter.set_tensor(input_detail["index"], images)
    return interpreter


def run_tflite(path, images, num_threads=2):
    """Class probabilities of `images` (float `[0, 255]`, NHWC) from a `.tflite` file.

    Quantised inputs and outputs are converted with the file's own scale and
    zero point, so every file takes and returns the same as the float one.
    """
    interpreter = loaded_interpreter(path, images, num_threads)
    interpreter.invoke()
    (output_detail,) = interpreter.get_output_details()
    outputs = interpreter.get_tensor(output_detail["index"])
    if np.issubdtype(outputs.dtype, np.integer):
        scale, zero_point = output_detail["quantization"]
        outputs = (outputs.astype("float32") - zero_point) * scale
    return outputs
