"""SavedModel for TF Serving and TFLite files, checked against the Keras model.

A small MetaFormer is trained on scikit-learn's digits first, so that the
quantised files are compared with a model that has learned something: top-1
agreement on random weights would say little.
"""

import base64
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_metaformer
from keras_metaformer import export
from keras_metaformer.training import adamw
from keras_metaformer.weights import PretrainedConfig

tf = pytest.importorskip("tensorflow")

BACKEND = keras.backend.backend()
# One worker runs this module: its module fixtures are expensive to make twice.
pytestmark = pytest.mark.xdist_group("export")
SIZE = 32
NAMES = [f"digit {i}" for i in range(10)]
# The images are already at the model's size: no resize, so the bytes
# signature sees exactly the pixels the Keras model sees.
IDENTITY_TRANSFORM = PretrainedConfig("digits", "test", hub_id="", input_size=(SIZE, SIZE), crop_pct=1.0)


def _digits(images, labels):
    dataset = keras_metaformer.data.from_arrays(
        images, labels, training=False, image_size=SIZE, crop_pct=1.0, batch_size=128, num_classes=10
    )
    return np.concatenate([x for x, _ in dataset.as_numpy_iterator()])


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    loaded = load_digits()
    images = np.round(loaded.images * (255.0 / 16.0)).astype("uint8")
    train, val = slice(0, 1437), slice(1437, None)
    return (
        (_digits(images[train], loaded.target[train]), loaded.target[train]),
        (_digits(images[val], loaded.target[val]), loaded.target[val]),
    )


@pytest.fixture(scope="module")
def trained(digits):
    (train_x, train_y), (val_x, val_y) = digits
    keras.utils.set_random_seed(0)
    model = keras_metaformer.MetaFormer(
        depths=(1, 1), dims=(16, 32), input_shape=(SIZE, SIZE, 3), classes=10, weights=None, name="digits"
    )
    model.compile(adamw(model, 3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_x, train_y, batch_size=64, epochs=10, verbose=0)
    accuracy = np.mean(np.argmax(model.predict(val_x, verbose=0), -1) == val_y)
    assert accuracy > 0.8, f"the test model did not learn the digits ({accuracy:.1%})"
    return model


@pytest.fixture(scope="module")
def saved_model(trained, tmp_path_factory):
    return export.export_saved_model(
        trained, tmp_path_factory.mktemp("serving") / "digits", class_names=NAMES, config=IDENTITY_TRANSFORM
    )


@pytest.fixture(scope="module")
def loaded(saved_model):
    return tf.saved_model.load(saved_model)


def _png(images):
    return [tf.io.encode_png(image.astype("uint8")).numpy() for image in images]


def test_export_runs_in_a_fresh_process_with_plain_tensorflow(trained, saved_model, digits, tmp_path):
    images = digits[1][0][:16]
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import sys, numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({saved_model!r})
        assert "keras_metaformer" not in sys.modules
        images = np.load({str(tmp_path / "images.npy")!r})
        probabilities = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"]
        encoded = [tf.io.encode_png(image.astype("uint8")).numpy() for image in images]
        top = loaded.signatures["classify_images"](image_bytes=tf.constant(encoded))
        np.savez({str(tmp_path / "out.npz")!r}, probabilities=probabilities.numpy(),
                 ids=top["class_ids"].numpy(), scores=top["scores"].numpy(), names=top["class_names"].numpy())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz", allow_pickle=True)
    expected = np.asarray(trained.predict(images, verbose=0))
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    top5 = np.argsort(-expected, axis=-1)[:, :5]
    np.testing.assert_array_equal(out["ids"], top5)
    np.testing.assert_allclose(out["scores"], np.take_along_axis(expected, top5, -1), atol=1e-5)
    assert [name.decode() for name in out["names"][0]] == [NAMES[i] for i in top5[0]]


def test_saved_model_cli_shows_what_tf_serving_needs(saved_model):
    result = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir", saved_model, "--all"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    signatures = {}
    for block in result.stdout.split("signature_def['")[1:]:
        signatures[block.split("'")[0]] = block
    assert {"serving_default", "classify_images"} <= set(signatures)

    def tensor(block, name, dtype, shape):
        pattern = f"['{name}'] tensor_info:\n        dtype: {dtype}\n        shape: {shape}"
        assert pattern in block, (pattern, block)

    tensor(signatures["serving_default"], "images", "DT_FLOAT", f"(-1, {SIZE}, {SIZE}, 3)")
    tensor(signatures["serving_default"], "probabilities", "DT_FLOAT", "(-1, 10)")
    tensor(signatures["classify_images"], "image_bytes", "DT_STRING", "(-1)")
    tensor(signatures["classify_images"], "class_ids", "DT_INT32", "(-1, 5)")
    tensor(signatures["classify_images"], "class_names", "DT_STRING", "(-1, 5)")
    tensor(signatures["classify_images"], "scores", "DT_FLOAT", "(-1, 5)")
    assert "Method name is: tensorflow/serving/predict" in signatures["serving_default"]


def _stored_variables(saved_model):
    reader = tf.train.load_checkpoint(os.path.join(saved_model, "variables", "variables"))
    shapes = reader.get_variable_to_shape_map()
    return sum(int(np.prod(shape)) for name, shape in shapes.items() if name != "_CHECKPOINTABLE_OBJECT_GRAPH")


def _stored_float_constants(saved_model):
    """Elements of the float32 constants in saved_model.pb's graph and its functions."""
    from tensorflow.core.protobuf import saved_model_pb2

    with open(os.path.join(saved_model, "saved_model.pb"), "rb") as f:
        (graph,) = [meta.graph_def for meta in saved_model_pb2.SavedModel.FromString(f.read()).meta_graphs]
    nodes = [node for function in graph.library.function for node in function.node_def] + list(graph.node)
    tensors = [node.attr["value"].tensor for node in nodes if node.op == "Const"]
    return sum(int(np.prod([d.size for d in t.tensor_shape.dim])) for t in tensors if t.dtype == tf.float32)


def _inference_params(model):
    """The parameters `model`'s inference reads: all but the pooling blocks'
    norm1 shifts, which cancel there (see `MetaFormerBlock._norm1_is_a_scale`)."""
    unread = [
        int(np.prod(block.norm1.beta.shape))
        for block in model.layers
        if isinstance(block, keras_metaformer.layers.MetaFormerBlock) and block._norm1_is_a_scale()
    ]
    assert unread, "the test model has no pooling block"
    return model.count_params() - sum(unread)


def test_saved_model_stores_each_weight_once_as_a_constant(trained, saved_model):
    # Both signatures call one frozen graph; the few extra constants are the
    # normalisation's mean and scale and the like.
    assert _stored_variables(saved_model) == 0
    params = _inference_params(trained)
    assert params <= _stored_float_constants(saved_model) < 1.01 * params + 64


@pytest.fixture(scope="module")
def saved_model_with_variables(trained, tmp_path_factory):
    return export.export_saved_model(
        trained,
        tmp_path_factory.mktemp("serving") / "digits",
        class_names=NAMES,
        config=IDENTITY_TRANSFORM,
        constant_weights=False,
    )


def test_saved_model_with_variables_stores_each_weight_once_and_matches_keras(
    trained, saved_model_with_variables, digits
):
    stored = _stored_variables(saved_model_with_variables)
    params = _inference_params(trained)
    assert params <= stored < 1.01 * params + 16
    assert _stored_float_constants(saved_model_with_variables) < 64
    images = digits[1][0][:8]
    serve = tf.saved_model.load(saved_model_with_variables).signatures["serving_default"]
    np.testing.assert_allclose(
        serve(images=tf.constant(images))["probabilities"].numpy(), trained.predict(images, verbose=0), atol=1e-5
    )


def test_constant_weights_too_large_for_one_graph_are_refused(trained, tmp_path, monkeypatch):
    from keras_metaformer.export import saved_model as module

    monkeypatch.setattr(module, "CONSTANT_WEIGHTS_LIMIT", 4 * trained.count_params() - 1)
    with pytest.raises(ValueError, match=r"cannot exceed 2 GiB\. Pass `constant_weights=False`"):
        export.export_saved_model(trained, tmp_path)
    assert os.listdir(tmp_path) == []


def _request_inputs(request):
    """The tensors of a PredictRequest, as the server hands them to a signature."""
    return {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}


def test_warmup_records_parse_and_run(saved_model, loaded):
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(saved_model, "assets.extra", "tf_serving_warmup_requests")
    signatures = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        assert request.model_spec.name == "digits"
        inputs = _request_inputs(request)
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        batch = len(next(iter(inputs.values())))
        for value in outputs.values():
            assert value.shape[0] == batch
            if value.dtype.is_floating:
                assert np.isfinite(value.numpy()).all()
        signatures.append(request.model_spec.signature_name)
    assert sorted(signatures) == ["classify_images", "serving_default"]


def test_a_corrupt_image_fails_its_request_and_the_next_succeeds(loaded, digits):
    classify = loaded.signatures["classify_images"]
    for bad in (b"not an image", _png(digits[1][0][:1])[0][:40]):
        with pytest.raises(tf.errors.InvalidArgumentError):
            classify(image_bytes=tf.constant([bad]))
    outputs = classify(image_bytes=tf.constant(_png(digits[1][0][:2])))
    assert outputs["class_ids"].shape == (2, 5)


def _serve_rest(loaded, body):
    """Decodes a REST body as TF Serving does (row format, {"b64": ...} for bytes) and runs it."""
    body = json.loads(json.dumps(body))  # what travels over HTTP
    signature = loaded.signatures[body.get("signature_name", "serving_default")]
    (name,) = signature.structured_input_signature[1]
    instances = body["instances"]
    if isinstance(instances[0], dict):
        value = tf.constant([base64.b64decode(instance["b64"]) for instance in instances])
    else:
        value = tf.constant(instances, tf.float32)
    return signature(**{name: value})


def _serve_grpc(loaded, request):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    return loaded.signatures[request.model_spec.signature_name](**_request_inputs(request))


def test_rest_and_grpc_requests_run_against_the_signatures(trained, loaded, digits):
    images = digits[1][0][:3]
    expected = np.asarray(trained.predict(images, verbose=0))
    encoded = _png(images)
    for serve, build in (
        (_serve_rest, lambda signature, inputs: export.rest_request(signature, inputs)),
        (_serve_grpc, lambda signature, inputs: export.grpc_request("digits", signature, inputs)),
    ):
        outputs = serve(loaded, build("serving_default", {"images": images}))
        np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
        outputs = serve(loaded, build("classify_images", {"image_bytes": encoded}))
        np.testing.assert_array_equal(outputs["class_ids"].numpy()[:, 0], expected.argmax(-1))


def test_models_config_parses_as_tf_serving_config(saved_model):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    with open(os.path.join(os.path.dirname(saved_model), "models.config")) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == ("digits", "/models/digits", "tensorflow")


def test_an_existing_version_is_kept_and_a_failed_export_leaves_nothing(trained, saved_model, monkeypatch):
    base = os.path.dirname(saved_model)
    before = sorted(os.listdir(base))
    with pytest.raises(FileExistsError, match="new `version`"):
        export.export_saved_model(trained, base, version=1)
    from keras_metaformer.export import saved_model as module

    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(module, "_write", fail)
    monkeypatch.setattr(module, "_write_in_tensorflow_process", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_saved_model(trained, base, version=2)
    assert sorted(os.listdir(base)) == before  # no version 2, no staging folder


def test_export_explains_bad_arguments(trained, tmp_path):
    with pytest.raises(ValueError, match="positive integer"):
        export.export_saved_model(trained, tmp_path, version=0)
    with pytest.raises(ValueError, match="3 class names for a model with 10 classes"):
        export.export_saved_model(trained, tmp_path, class_names=["a", "b", "c"])
    backbone = keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16), include_top=False, weights=None)
    with pytest.raises(ValueError, match="fixed size"):
        export.export_saved_model(backbone, tmp_path)
    with pytest.raises(ValueError, match="Unknown quantization 'int4'"):
        export.export_tflite(trained, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="representative_images"):
        export.export_tflite(trained, tmp_path / "m.tflite", quantize="int8")
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def tflite_files(trained, digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite")
    # Quantisation happens on the TensorFlow graph whatever the backend: on
    # JAX, float32 alone shows that the path through TensorFlow works.
    quantizations = export.QUANTIZATIONS if BACKEND == "tensorflow" else ("float32",)
    calibration = digits[0][0][:200]
    return {
        quantize: export.export_tflite(
            trained, folder / f"{quantize}.tflite", quantize=quantize, representative_images=calibration
        )
        for quantize in quantizations
    }


def test_tflite_files_use_builtin_ops_only(tflite_files):
    for quantize, path in tflite_files.items():
        ops = export.tflite_ops(path)
        assert "CONV_2D" in ops and "AVERAGE_POOL_2D" in ops
        assert not [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")], (quantize, ops)


def test_tflite_float32_runs_as_one_xnnpack_partition(tflite_files):
    # Ops the XNNPACK delegate does not take (SHAPE, reshapes through the
    # dynamic shape) split the graph into partitions, with builtin kernels
    # between them: a slower file, and one mobile GPU delegates reject.
    from keras_metaformer.export.tflite import loaded_interpreter

    interpreter = loaded_interpreter(tflite_files["float32"], np.zeros((2, SIZE, SIZE, 3), "float32"))
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert "SHAPE" not in ops
    assert ops.count("DELEGATE") == 1, ops
    assert max(len(t["shape"]) for t in interpreter.get_tensor_details()) <= 4


def test_tflite_float32_matches_keras(trained, tflite_files, digits):
    images = digits[1][0][:32]
    expected = np.asarray(trained.predict(images, verbose=0))
    np.testing.assert_allclose(export.run_tflite(tflite_files["float32"], images), expected, atol=1e-4)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="quantisation is backend-independent; run once")
def test_quantised_tflite_files_agree_with_keras_on_real_digits(trained, tflite_files, digits):
    images = digits[1][0]  # 360 digits never used for training or calibration
    top1 = np.asarray(trained.predict(images, verbose=0)).argmax(-1)
    agreement = {q: np.mean(export.run_tflite(path, images).argmax(-1) == top1) for q, path in tflite_files.items()}
    assert agreement["float16"] >= 0.99, agreement
    assert agreement["dynamic"] >= 0.95, agreement
    assert agreement["int8"] >= 0.95, agreement
    sizes = {q: os.path.getsize(path) for q, path in tflite_files.items()}
    assert sizes["float16"] < sizes["float32"] and sizes["dynamic"] < sizes["float16"], sizes


@pytest.mark.skipif(BACKEND != "tensorflow", reason="quantisation is backend-independent; run once")
def test_int8_file_takes_uint8_pixels(tflite_files):
    from ai_edge_litert.interpreter import Interpreter

    (detail,) = Interpreter(model_path=str(tflite_files["int8"])).get_input_details()
    assert detail["dtype"] == np.uint8
    scale, zero_point = detail["quantization"]
    assert abs(scale - 1.0) < 0.01 and zero_point == 0  # pixels map one to one


@pytest.fixture(scope="module")
def tiny():
    return keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16), input_shape=(32, 32, 3), classes=3, weights=None)


def test_export_under_an_existing_file_fails_before_writing(tiny, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    with pytest.raises(FileExistsError, match="taken is an existing file, but the export writes a folder"):
        export.export_saved_model(tiny, taken)
    with pytest.raises(FileExistsError, match="taken is a file, not a folder"):
        export.export_saved_model(tiny, taken / "serving")
    with pytest.raises(FileExistsError, match="is an existing folder, but the export writes a file"):
        export.export_tflite(tiny, tmp_path)
    with pytest.raises(FileExistsError, match="taken is a file, not a folder"):
        export.export_tflite(tiny, taken / "m.tflite")
    assert os.listdir(tmp_path) == ["taken"] and taken.read_text() == "not a folder"


def test_a_failed_export_removes_the_folders_it_created(tiny, tmp_path, monkeypatch):
    from keras_metaformer.export import saved_model as module

    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(module, "_write", fail)
    monkeypatch.setattr(module, "_write_in_tensorflow_process", fail)
    (tmp_path / "kept").mkdir()
    for base in (tmp_path / "new" / "serving", tmp_path / "kept"):
        with pytest.raises(RuntimeError, match="disk full"):
            export.export_saved_model(tiny, base)
    assert os.listdir(tmp_path) == ["kept"] and os.listdir(tmp_path / "kept") == []


def test_int8_calibration_images_of_the_wrong_size_fail_up_front(tiny, tmp_path):
    wrong = np.zeros((4, 64, 64, 3), "float32")
    expected = r"shape \(n, 32, 32, 3\)\. Received shape \((4|None), 64, 64, 3\)"
    for images in (
        wrong,
        tf.data.Dataset.from_tensor_slices(wrong).batch(2),
        tf.data.Dataset.from_tensor_slices((wrong, np.zeros(4))).batch(2),
    ):
        with pytest.raises(ValueError, match=expected):
            export.export_tflite(tiny, tmp_path / "m.tflite", quantize="int8", representative_images=images)
    assert os.listdir(tmp_path) == []


USER_LAYERS = """
import keras


@keras.saving.register_keras_serializable(package="user_layers_for_export")
class Scale(keras.layers.Layer):
    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
"""


def _model_with(layer):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, strides=4)(layer(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x), name="custom")


def test_a_model_with_the_users_registered_layers_exports(tmp_path, monkeypatch):
    # On JAX the export runs in a TensorFlow-backend process, which must import the layer's module.
    (tmp_path / "user_layers_for_export.py").write_text(USER_LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_layers_for_export

    model = _model_with(user_layers_for_export.Scale(0.5))
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    path = export.export_saved_model(model, tmp_path / "serving", warmup=False)
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), model.predict(images, verbose=0), atol=1e-5)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the TensorFlow backend exports in-process")
def test_a_layer_defined_in_main_is_refused_before_writing(tmp_path):
    class InMain(keras.layers.Layer):
        def call(self, inputs):
            return inputs

    InMain.__module__ = "__main__"
    refused = r"cannot import .*InMain \(layer 'in_main', defined in __main__\).*importable by name"
    with pytest.raises(ValueError, match=refused):
        export.export_saved_model(_model_with(InMain()), tmp_path / "serving")
    assert os.listdir(tmp_path) == []


def test_the_export_modules_import_one_another_without_a_cycle():
    # Imports inside functions count too: a cycle hidden in a function is
    # still a cycle, and breaks as soon as either import moves to the top.
    import ast

    folder = os.path.dirname(export.__file__)
    modules = {name[:-3] for name in os.listdir(folder) if name.endswith(".py") and name != "__init__.py"}
    imports = {}
    for module in modules:
        with open(os.path.join(folder, f"{module}.py")) as f:
            tree = ast.parse(f.read())
        names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imports[module] = {name.rsplit(".", 1)[1] for name in names if name.rsplit(".", 1)[0] == export.__name__}

    def cycle_from(module, path):
        if module in path:
            return [*path[path.index(module) :], module]
        for imported in sorted(imports.get(module, ())):
            found = cycle_from(imported, [*path, module])
            if found:
                return found
        return None

    for module in sorted(modules):
        assert cycle_from(module, []) is None, " -> ".join(cycle_from(module, []))
    assert export.CLASSIFY == "classify_images" and export.SERVING_DEFAULT == "serving_default"


@pytest.mark.parametrize("level, shown", [(None, True), ("0", True), ("1", False), ("2", False)])
def test_the_converters_own_stderr_lines_follow_tf_cpp_min_log_level(capfd, monkeypatch, level, shown):
    # The int8 quantiser writes a line of settings to file descriptor 2 itself.
    from keras_metaformer.export.tflite import _quiet_stderr_if_logs_are_off

    if level is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    with _quiet_stderr_if_logs_are_off():
        os.write(2, b"fully_quantize: 0, inference_type: 6\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert ("fully_quantize" in err) == shown and "after" in err
