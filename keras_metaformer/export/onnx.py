"""ONNX files for ONNX Runtime: the SavedModel's `serving_default` as one portable graph.

Why not Keras' own `model.export(path, format="onnx")`: on TensorFlow it
traces the model and hands the function to `tf2onnx.convert.from_function`,
which makes every input of the traced function that is not a variable an
input of the ONNX graph. TensorFlow passes the tensors a function captures
by value as extra inputs of it, and a `keras.layers.Normalization` given its
`mean` and `variance` (our `preprocessing` layer) keeps them as plain
tensors, not variables. So the file asks for `.../preprocessing_1/Sub/y:0`
and `.../Sqrt/x:0` beside the images, and ONNX Runtime refuses a call that
gives only the images. Here tf2onnx (the converter Keras uses) gets a
function that calls the model's frozen graph (`frozen_function`'s), in which
those tensors and every weight are constants: it captures nothing, and its
only input is the images.
"""

import importlib
import importlib.util
import os
import sys
import tempfile

import keras
import numpy as np

from keras_metaformer.arguments import check_int
from keras_metaformer.export.signatures import IMAGES
from keras_metaformer.export.signatures import PROBABILITIES

# Opset 17 (ONNX 1.12): run by every ONNX Runtime since 1.13. tf2onnx 1.17
# writes opsets up to 18; 13 and 18 gave the same outputs as 17 (PoolFormer, CAFormer).
OPSET = 17
OPSETS = range(13, 19)
# An ONNX file is one protocol buffer, which cannot exceed 2 GiB; the
# weights must leave room for the rest of the graph.
WEIGHTS_LIMIT = 2**31 - 2**27
INSTALL = 'pip install "keras-metaformer[onnx]"'
MISSING = (
    "ONNX export needs tf2onnx and onnx, and TensorFlow whatever the Keras backend "
    f'(tf2onnx converts TensorFlow graphs): `{INSTALL}` and `pip install "keras-metaformer[tensorflow-cpu]"`.'
)


def export_onnx(model, path, opset=OPSET):
    """Converts a Keras image classifier to an `.onnx` file for ONNX Runtime.

    The file takes what the SavedModel's `serving_default` takes and returns
    what it returns: input `images`, float32 RGB in `[0, 255]`, shape
    `(batch, height, width, 3)` for any batch (the model's normalisation
    runs inside); output `probabilities`, `(batch, classes)` float32 (a
    softmax is added if the model outputs logits). The first dimension of
    both is named `batch`.

    The graph is the model's TensorFlow graph with its weights as constants
    (`frozen_function`), converted by tf2onnx. On the JAX backend the model
    is saved as a `.keras` file and converted by a TensorFlow-backend
    subprocess from the same weights, as `export_saved_model` does (a custom
    layer must be importable by name there; see it): the `.keras` format is
    backend-independent, so the file computes the same function. Keras'
    own JAX export would need jax2onnx and its dependencies (flax, orbax),
    and would give each backend a different graph.

    Args:
        model: a built float32 Keras classifier taking RGB images of a
            static size, with outputs `(batch, classes)` (like the builders
            with `include_top=True`). Under a mixed-precision policy, load
            its weights into a model built with `dtype="float32"` first:
            ONNX Runtime's CPU provider has no bfloat16 kernels for most of
            the graph.
        path: the `.onnx` file to write (not an existing folder). The file
            is written beside its final name and renamed in one step: a
            failed export leaves no file (and removes the folders it
            created), and a reader never sees half a file.
        opset: the ONNX opset (ai.onnx domain), 13 to 18.

    Returns:
        `path`.

    Example:

    >>> import tempfile, numpy as np, keras_metaformer
    >>> from keras_metaformer.export import export_onnx, run_onnx
    >>> model = keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16),
    ...     input_shape=(32, 32, 3), classes=3, weights=None)
    >>> path = export_onnx(model, f"{tempfile.mkdtemp()}/model.onnx")  # doctest: +SKIP
    >>> images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3))
    >>> run_onnx(path, images).shape  # doctest: +SKIP
    (2, 3)
    """
    from keras_metaformer.export.saved_model import check_output_path

    opset = check_opset(opset)
    check_model(model)
    path = os.fspath(path)
    check_output_path(path, "file")
    check_importable()
    if keras.backend.backend() == "tensorflow":
        data = onnx_bytes(model, opset)
    else:
        data = _convert_in_tensorflow_process(model, opset)
    write_atomically(path, data)
    return path


def check_opset(opset):
    """`opset` as an int, if tf2onnx can write it; else a ValueError naming the range."""
    opset = check_int("opset", opset)
    if opset not in OPSETS:
        raise ValueError(
            f"`opset` must be an ONNX opset from {OPSETS[0]} to {OPSETS[-1]} (tf2onnx 1.17 writes up to "
            f"{OPSETS[-1]}; ONNX Runtime runs them all). Received: opset={opset}. The default, {OPSET}, "
            "suits current ONNX Runtime."
        )
    return opset


def check_model(model):
    """Raises before anything is converted if `model` is not a float32 classifier of fixed-size images."""
    from keras_metaformer.export.saved_model import outputs_logits

    shape = model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[-1] != 3 or None in shape[1:3]:
        raise ValueError(
            "export_onnx needs a model with one input, RGB images of a fixed size, (batch, height, "
            f"width, 3). This model takes {shape}. Build it with e.g. `input_shape=(224, 224, 3)`."
        )
    output_shape = model.output_shape
    if not isinstance(output_shape, tuple) or len(output_shape) != 2:
        raise ValueError(
            f"export_onnx needs a classifier with one output, (batch, classes); this model outputs "
            f"{output_shape}. Build it with `include_top=True`."
        )
    outputs_logits(model)  # raises if neither logits nor probabilities
    policies = sorted({layer.dtype_policy.name for layer in (model, *model.layers)} - {"float32"})
    if policies:
        raise ValueError(
            f"export_onnx needs a float32 model; this one has layers with dtype policies {policies}. "
            "ONNX Runtime's CPU provider lacks bfloat16 kernels for most of the graph. Build the model "
            'with `dtype="float32"` and load these weights into it (`set_weights(model.get_weights())`).'
        )
    weight_bytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
    if weight_bytes > WEIGHTS_LIMIT:
        raise ValueError(
            f"This model's weights take {weight_bytes / 2**30:.2f} GiB, too many for one ONNX file, "
            "which cannot exceed 2 GiB."
        )


def check_importable():
    """Raises an ImportError naming the install before anything is converted if a converter is missing.

    On the JAX backend the conversion runs in a subprocess, whose ImportError
    would come back only as its stderr.
    """
    for module in ("tensorflow", "tf2onnx", "onnx"):
        if importlib.util.find_spec(module) is None:
            raise ImportError(MISSING, name=module)


def onnx_bytes(model, opset=OPSET):
    """The serialised ONNX model of `model` (TensorFlow backend only; see `export_onnx`)."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    from keras_metaformer.export.frozen import frozen_graph
    from keras_metaformer.export.saved_model import outputs_logits

    graph = frozen_graph(model)
    from_logits = outputs_logits(model)

    def serve(images):
        outputs = tf.cast(graph(tf.cast(images, graph.inputs[0].dtype))[0], tf.float32)
        return {PROBABILITIES: tf.nn.softmax(outputs) if from_logits else outputs}

    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=IMAGES)]
    proto, _ = tf2onnx.convert.from_function(
        tf.function(serve), signature, opset=opset, custom_op_handlers={"Erfc": (_erfc, [])}
    )
    # tf2onnx names the free dimension "unk__<n>"; users read the name in viewers and session.get_inputs().
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _erfc(graph, node, name, args):
    """tf2onnx's conversion of TensorFlow's Erfc, which ONNX lacks, as `1 - erf(x)`.

    TensorFlow's exact GELU (PoolFormer's MLP) is `0.5 x erfc(-x / sqrt(2))`;
    tf2onnx 1.17 converts Erf but not Erfc. Where erfc is tiny (large x), 1 -
    erf loses its relative precision, but GELU multiplies it by -x / 2 ~ 0
    there: an absolute error below 1e-7 x.
    """
    from tf2onnx.utils import map_onnx_to_numpy_type

    dtype = map_onnx_to_numpy_type(graph.get_dtype(node.input[0]))
    erf = graph.make_node("Erf", [node.input[0]], op_name_scope=name)
    one = graph.make_const(f"{name}/one", np.ones((), dtype))
    node.type = "Sub"
    graph.replace_inputs(node, [one.output[0], erf.output[0]])


def write_atomically(path, data):
    """Writes `data` to `path` through a temporary file in the same folder, renamed in one step."""
    from keras_metaformer.export.saved_model import make_folders
    from keras_metaformer.export.saved_model import remove_empty_folders

    folder = os.path.dirname(os.path.abspath(path))
    created = make_folders(folder)
    try:
        # A unique name: two exports to one folder must not write one partial file.
        descriptor, partial = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=folder)
        try:
            with os.fdopen(descriptor, "wb") as f:
                f.write(data)
            # mkstemp's mode 0600 would hide the file from a server running as another user.
            os.chmod(partial, 0o644)
            os.replace(partial, path)
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise
    except BaseException:
        remove_empty_folders(folder, created)
        raise


def _convert_in_tensorflow_process(model, opset):
    from keras_metaformer.export.tensorflow_process import custom_modules
    from keras_metaformer.export.tensorflow_process import run_in_tensorflow_process

    modules = custom_modules(model)  # raises before anything is saved
    with tempfile.TemporaryDirectory() as scratch:
        output = os.path.join(scratch, "model.onnx")
        run_in_tensorflow_process(model, __name__, scratch, output, opset, *modules)
        with open(output, "rb") as f:
            return f.read()


def onnx_session(path, num_threads=2):
    """An ONNX Runtime session for an `.onnx` file, on the CPU with `num_threads` threads per operator."""
    num_threads = check_int("num_threads", num_threads)
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"Running .onnx files needs ONNX Runtime: `{INSTALL}`.", name="onnxruntime") from error
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No .onnx file at {os.fspath(path)!r}.")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1  # the graph is one chain of operators
    return onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path, images, num_threads=2):
    """Class probabilities of `images` (float `[0, 255]`, NHWC) from an `.onnx` file, by ONNX Runtime."""
    session = onnx_session(path, num_threads)
    return session.run([PROBABILITIES], {IMAGES: np.asarray(images, dtype="float32")})[0]


def _main(model_file, output, opset, *modules):
    from keras_metaformer.export.tensorflow_process import load_model

    model = load_model(model_file, modules)
    with open(output, "wb") as f:
        f.write(onnx_bytes(model, int(opset)))


if __name__ == "__main__":
    _main(*sys.argv[1:])
