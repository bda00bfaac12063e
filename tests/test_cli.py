"""The `keras-metaformer` command line."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import TIMM_KEYS
from PIL import Image
from safetensors.numpy import save

import keras_metaformer
import keras_metaformer_cli
from keras_metaformer import cli
from keras_metaformer.imagenet import imagenet_classes

BACKEND = keras.backend.backend()
LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"


@pytest.fixture(autouse=True)
def _log_level_kept():
    """main() quiets TensorFlow through the environment: undo it after each test."""
    level = os.environ.get(LOG_LEVEL)
    yield
    if level is None:
        os.environ.pop(LOG_LEVEL, None)
    else:
        os.environ[LOG_LEVEL] = level


def run(capsys, *argv):
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _constant_scores_model_file(tmp_path_factory, logits, name):
    """A small model saved as .keras whose logits are `logits` whatever the image."""
    model = keras_metaformer.MetaFormer(
        depths=(1, 1), dims=(8, 16), input_shape=(32, 32, 3), classes=len(logits), weights=None, name=name
    )
    head = model.layers[-1]
    kernel, _bias = head.get_weights()
    head.set_weights([np.zeros_like(kernel), logits])
    path = tmp_path_factory.mktemp("model") / f"{name}.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def imagenet_model_file(tmp_path_factory):
    """A 1000-class model with a known top-5."""
    logits = np.random.default_rng(0).normal(0, 3, 1000).astype("float32")
    return _constant_scores_model_file(tmp_path_factory, logits, "tiny"), logits


@pytest.fixture(scope="module")
def three_class_model_file(tmp_path_factory):
    """A 3-class model (no ImageNet names) ranking the classes 1, 2, 0."""
    return _constant_scores_model_file(tmp_path_factory, np.array([0.5, 2.0, 1.0], "float32"), "three")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


HELP_SCRIPT = """
import contextlib, io, json, sys
import keras_metaformer_cli

helps = []
for argv in ([], ["predict"], ["export"], ["convert"], ["info"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            keras_metaformer_cli.main([*argv, "--help"])
        except SystemExit as exit:
            helps.append([argv, exit.code, out.getvalue()])
loaded = {name.split(".")[0] for name in sys.modules} & {"tensorflow", "keras", "jax", "keras_metaformer"}
print(json.dumps({"helps": helps, "loaded": sorted(loaded)}))
"""


def test_help_imports_no_backend():
    # A fresh process: here Keras is loaded already.
    result = subprocess.run([sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["loaded"] == []
    assert len(report["helps"]) == 5
    for argv, code, text in report["helps"]:
        assert code == 0 and text.startswith(" ".join(["usage: keras-metaformer", *argv])), text
        assert "--verbose" in text
    assert all(command in report["helps"][0][2] for command in ("predict", "export", "convert", "info"))


def test_the_console_script_runs_the_command_line():
    script = os.path.join(os.path.dirname(sys.executable), "keras-metaformer")
    result = subprocess.run([script, "info", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert result.stdout.startswith("usage: keras-metaformer info")


def test_predict_prints_the_top5_imagenet_classes(capsys, imagenet_model_file, photo):
    path, logits = imagenet_model_file
    code, out, err = run(capsys, "predict", photo, photo, "--model", path)
    assert code == 0, err
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    names = [names for _, names in imagenet_classes()]
    expected = [f"{rank}. {probabilities[i]:7.2%}  {names[i]}" for rank, i in enumerate(np.argsort(-logits)[:5], 1)]
    lines = out.splitlines()
    assert lines[0] == str(photo) and lines[6] == str(photo)
    assert [line.strip() for line in lines[1:6]] == [line.strip() for line in expected]


def test_predict_names_classes_by_index_when_the_model_has_no_imagenet_names(capsys, three_class_model_file, photo):
    code, out, err = run(capsys, "predict", photo, "--model", three_class_model_file, "--top", 3)
    assert code == 0, err
    assert [line.split()[-1] for line in out.splitlines()[1:]] == ["1", "2", "0"]


QUIET_SCRIPT = """
import sys
from keras_metaformer_cli import main

for argv in {commands!r}:
    print("$", argv[0], flush=True)
    code = main(argv)
    if code:
        sys.exit(code)
"""


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow is the backend that logs; one run is enough")
def test_commands_write_nothing_to_stderr_and_predict_names_classes_as_the_saved_model(
    three_class_model_file, photo, tmp_path
):
    # One fresh process for four commands: TensorFlow's load-time lines, the
    # SavedModel export's, and the int8 converter's own all reach stderr by default.
    calibration = tmp_path / "calibration"
    (calibration / "any").mkdir(parents=True)
    Image.open(photo).save(calibration / "any" / "photo.png")
    model, tflite = str(three_class_model_file), str(tmp_path / "m.tflite")
    commands = [
        ["predict", str(photo), "--model", model, "--top", "3"],
        ["info", model],
        ["export", model, str(tmp_path / "serving"), "--format", "saved_model"],
        ["export", model, tflite, "--format", "tflite", "--quantize", "int8", "--calibration-dir", str(calibration)],
    ]
    environment = {name: value for name, value in os.environ.items() if name != LOG_LEVEL}
    script = QUIET_SCRIPT.format(commands=commands)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    predicted = [line.split()[-1] for line in lines[lines.index("$ predict") + 2 : lines.index("$ info")]]
    assert predicted == ["1", "2", "0"]
    import tensorflow as tf

    classify = tf.saved_model.load(str(tmp_path / "serving" / "1")).signatures["classify_images"]
    served = classify(image_bytes=tf.constant([photo.read_bytes()]))["class_names"].numpy()[0]
    assert [name.decode() for name in served] == predicted


def test_verbose_leaves_the_backends_logs_on(capsys, three_class_model_file, monkeypatch):
    monkeypatch.delenv(LOG_LEVEL, raising=False)
    for argv in (["--verbose", "info", three_class_model_file], ["info", three_class_model_file, "--verbose"]):
        assert run(capsys, *argv)[0] == 0
        assert LOG_LEVEL not in os.environ
    assert run(capsys, "info", three_class_model_file)[0] == 0
    assert os.environ[LOG_LEVEL] == keras_metaformer_cli.QUIET_LOG_LEVEL
    monkeypatch.setenv(LOG_LEVEL, "0")  # the user's own setting wins
    assert run(capsys, "info", three_class_model_file)[0] == 0
    assert os.environ[LOG_LEVEL] == "0"


def test_predict_explains_missing_and_unreadable_files(capsys, imagenet_model_file, tmp_path):
    path, _ = imagenet_model_file
    code, _, err = run(capsys, "predict", tmp_path / "nothing.jpg", "--model", path)
    assert code == 2 and "no image file at" in err and "nothing.jpg" in err
    fake = tmp_path / "notes.jpg"
    fake.write_text("not a picture")
    code, _, err = run(capsys, "predict", fake, "--model", path)
    assert code == 2 and "cannot read" in err and "notes.jpg" in err and "as an image" in err
    code, _, err = run(capsys, "predict", fake, "--model", tmp_path / "missing.keras")
    assert code == 2 and "cannot read" in err  # images are checked first: no model load wasted


def test_unknown_models_and_weight_tags_are_explained(capsys, photo, tmp_path):
    code, _, err = run(capsys, "info", "poolformer_s13")
    assert code == 2 and "unknown model 'poolformer_s13'" in err and "poolformer_s12" in err
    code, _, err = run(capsys, "predict", photo, "--weights", "in22k")
    line = _one_error_line(code, err, "predict")
    assert "--weights 'in22k' is neither a weight tag of poolformer_s12" in line
    assert "Expected one of: imagenet, sail_in1k, none, or the path" in line
    code, _, err = run(capsys, "export", "identityformer_s12", tmp_path / "out", "--format", "saved_model")
    line = _one_error_line(code, err, "export")
    assert "timm publishes no weights for identityformer_s12" in line and "`--weights OUT.safetensors`" in line


def _dead_port():
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]  # closed on leaving: connections are refused


@pytest.mark.parametrize("command", ["predict", "export"])
def test_an_offline_download_names_the_weights_option(capsys, photo, keras_home, monkeypatch, tmp_path, command):
    port = _dead_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    output = tmp_path / "exported"
    argv = [photo] if command == "predict" else ["poolformer_s12", output, "--format", "saved_model"]
    code, _, err = run(capsys, command, *argv)
    line = _one_error_line(code, err, command)
    url = f"http://127.0.0.1:{port}/timm/poolformer_s12.sail_in1k/resolve/main/model.safetensors"
    assert f"Could not download the weights 'poolformer_s12.sail_in1k' from {url}" in line
    assert "pass its path: `--weights /path/to/model.safetensors`" in line
    assert "weights=" not in line  # no Python in the command line's advice
    assert not any(keras_home.rglob("*.safetensors")) and not output.exists()


def test_info_reports_parameters_macs_tags_and_preprocessing(capsys):
    code, out, err = run(capsys, "info", "poolformer_s12")
    assert code == 0, err
    assert "11,915,176" in out  # the paper's count
    assert "1.81 G at 224x224" in out  # the paper: 1.82 G (fvcore)
    assert "sail_in1k" in out
    assert "floor(224 / 0.9) = 248, bicubic" in out


def test_convert_writes_a_keras_weights_file_that_loads(capsys, tmp_path):
    rng = np.random.default_rng(0)
    state = {key: rng.normal(size=shape).astype("float32") for key, shape in TIMM_KEYS["poolformer_s12"]["timm"]}
    checkpoint = tmp_path / "poolformer_s12.safetensors"
    checkpoint.write_bytes(save(state))
    output = tmp_path / "s12.weights.h5"
    code, _out, err = run(capsys, "convert", checkpoint, output, "--model", "poolformer_s12")
    assert code == 0, err
    converted = keras_metaformer.PoolFormerS12(weights=str(output))
    direct = keras_metaformer.PoolFormerS12(weights=str(checkpoint))
    for a, b in zip(converted.weights, direct.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    np.testing.assert_array_equal(np.asarray(converted.get_layer("predictions").bias), state["head.fc.bias"])


def test_convert_explains_bad_checkpoints(capsys, tmp_path):
    code, _, err = run(
        capsys, "convert", tmp_path / "none.safetensors", tmp_path / "o.weights.h5", "--model", "poolformer_s12"
    )
    assert code == 2 and "no checkpoint file" in err
    pth = tmp_path / "authors.pth"
    pth.write_bytes(b"\x80\x02torch pickle")
    code, _, err = run(capsys, "convert", pth, tmp_path / "o.weights.h5", "--model", "poolformer_s12")
    assert code == 2 and "needs torch" in err
    assert not (tmp_path / "o.weights.h5").exists()


def test_export_writes_a_saved_model_and_a_tflite_file(capsys, imagenet_model_file, tmp_path):
    path, logits = imagenet_model_file
    code, _out, err = run(capsys, "export", path, tmp_path / "serving", "--format", "saved_model", "--version", 3)
    assert code == 0, err
    assert os.path.isfile(tmp_path / "serving" / "3" / "saved_model.pb")
    code, _, err = run(capsys, "export", path, tmp_path / "serving", "--format", "saved_model", "--version", 3)
    assert code == 2 and "already exists" in err
    code, _, err = run(capsys, "export", path, tmp_path / "m.tflite", "--format", "tflite", "--quantize", "int8")
    assert code == 2 and "--calibration-dir" in err
    if BACKEND == "tensorflow":  # the conversion itself is tested in test_export.py
        code, _, err = run(capsys, "export", path, tmp_path / "m.tflite", "--format", "tflite", "--quantize", "float16")
        assert code == 0, err
        from keras_metaformer.export import run_tflite

        scores = run_tflite(tmp_path / "m.tflite", np.zeros((1, 32, 32, 3), "float32"))
        assert scores.argmax() == logits.argmax()


def _one_error_line(code, err, command):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"keras-metaformer {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--top", "0"], "--top must be at least 1. Received: --top 0."),
        (["--top", "1001"], "--top must be between 1 and 1000 (the model has 1000 classes). Received: --top 1001."),
    ],
)
def test_predict_checks_top_against_the_classes(capsys, imagenet_model_file, photo, argv, message):
    code, _, err = run(capsys, "predict", photo, "--model", imagenet_model_file[0], *argv)
    assert message in _one_error_line(code, err, "predict")


@pytest.mark.parametrize("command", ["info", "export"])
def test_image_size_below_32_is_refused(capsys, tmp_path, command):
    extra = [tmp_path / "out", "--format", "saved_model"] if command == "export" else []
    code, _, err = run(capsys, command, "poolformer_s12", *extra, "--image-size", 16)
    assert "--image-size must be at least 32. Received: --image-size 16." in _one_error_line(code, err, command)
    assert os.listdir(tmp_path) == []


def test_image_size_with_a_model_file_is_refused(capsys, imagenet_model_file, tmp_path):
    code, _, err = run(capsys, "info", imagenet_model_file[0], "--image-size", 64)
    line = _one_error_line(code, err, "info")
    assert "the model file" in line and "keeps the input size it was saved with. Drop --image-size." in line
    output = tmp_path / "serving"
    code, _, err = run(capsys, "export", imagenet_model_file[0], output, "--format", "saved_model", "--image-size", 64)
    assert "Drop --image-size." in _one_error_line(code, err, "export")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "argv, prog, message",
    [
        (["predict", "cat.jpg", "--top", "abc"], "keras-metaformer predict", "argument --top: invalid int value"),
        (["predict", "cat.jpg", "--top"], "keras-metaformer predict", "argument --top: expected one argument"),
        (["export", "m", "out", "--format", "zip"], "keras-metaformer export", "invalid choice: 'zip'"),
        (["export", "m", "out"], "keras-metaformer export", "the following arguments are required: --format"),
        (["convert", "a.safetensors", "b.weights.h5"], "keras-metaformer convert", "required: --model"),
        (["info"], "keras-metaformer info", "the following arguments are required: model"),
        (["predict", "cat.jpg", "--colour"], "keras-metaformer predict", "unrecognized arguments: --colour"),
        (["--colour", "info", "m"], "keras-metaformer info", "unrecognized arguments: --colour"),
        (["info", "m", "extra"], "keras-metaformer info", "unrecognized arguments: extra"),
        ([], "keras-metaformer", "the following arguments are required: COMMAND"),
        (["bogus"], "keras-metaformer", "invalid choice: 'bogus'"),
    ],
)
def test_usage_errors_are_one_error_line(capsys, argv, prog, message):
    with pytest.raises(SystemExit) as exit:
        keras_metaformer_cli.main(argv)
    out, err = capsys.readouterr()
    assert exit.value.code == 2 and out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err  # no usage block
    assert err.startswith(f"{prog}: error: ") and message in err, err
    assert err.rstrip().endswith(f"(see `{prog} --help`)"), err


def test_broken_model_files_are_one_error_line(capsys, photo, tmp_path):
    import zipfile

    noise = tmp_path / "noise.keras"
    noise.write_bytes(np.random.default_rng(0).bytes(200))
    code, _, err = run(capsys, "predict", photo, "--model", noise)
    assert "is not a .keras file (a zip archive written by `model.save`)" in _one_error_line(code, err, "predict")
    empty_zip = tmp_path / "no_config.keras"
    with zipfile.ZipFile(empty_zip, "w") as archive:
        archive.writestr("notes.txt", "no config.json here")
    code, _, err = run(capsys, "info", empty_zip)
    line = _one_error_line(code, err, "info")
    assert "cannot load the model in" in line and "config.json" in line and "model.save('model.keras')" in line


@pytest.mark.parametrize("pooling", [None, "avg"])
def test_predict_with_a_backbone_explains_it_needs_a_classifier(capsys, photo, tmp_path, pooling):
    backbone = keras_metaformer.MetaFormer(
        depths=(1, 1), dims=(8, 16), input_shape=(32, 32, 3), include_top=False, pooling=pooling, weights=None
    )
    backbone.save(tmp_path / "backbone.keras")
    code, _, err = run(capsys, "predict", photo, "--model", tmp_path / "backbone.keras")
    line = _one_error_line(code, err, "predict")
    assert "predict needs a classifier" in line and "include_top=True" in line


@pytest.mark.parametrize(
    "module, output, install",
    [
        ("tensorflow", "m.tflite", 'pip install "keras-metaformer[tensorflow-cpu]"'),
        ("tensorflow", "serving", 'pip install "keras-metaformer[tensorflow-cpu]"'),
        ("tensorflow_serving", "serving", "pip install --no-deps tensorflow-serving-api"),
    ],
)
def test_a_missing_optional_module_names_the_install(
    capsys, imagenet_model_file, tmp_path, monkeypatch, module, output, install
):
    load_model = cli.load_model

    def load_then_lose_the_module(*args):
        model = load_model(*args)  # the TensorFlow backend needs it to load
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
        return model

    monkeypatch.setattr(cli, "load_model", load_then_lose_the_module)
    file_format = "tflite" if output.endswith(".tflite") else "saved_model"
    code, _, err = run(capsys, "export", imagenet_model_file[0], tmp_path / output, "--format", file_format)
    assert f"`{install}`" in _one_error_line(code, err, "export")
    assert os.listdir(tmp_path) == []


def test_a_missing_backend_names_the_install():
    # A fresh process: the backend is imported with Keras, once.
    script = (
        "import sys; sys.modules['tensorflow'] = None; import keras_metaformer_cli; "
        "sys.exit(keras_metaformer_cli.main(['info', 'poolformer_s12']))"
    )
    environment = dict(os.environ, KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=120
    )
    line = _one_error_line(result.returncode, result.stderr, "info")
    assert "needs the 'tensorflow' module" in line and 'pip install "keras-metaformer[tensorflow-cpu]"' in line


def test_unexpected_errors_are_one_line_unless_verbose(capsys, monkeypatch):
    import keras_metaformer.macs

    def broken(model):
        raise RuntimeError("counting\nfailed")

    monkeypatch.setattr(keras_metaformer.macs, "count_macs", broken)
    code, _, err = run(capsys, "info", "poolformer_s12")
    line = _one_error_line(code, err, "info")
    assert "RuntimeError: counting failed (run with --verbose" in line
    with pytest.raises(RuntimeError, match="counting"):
        cli.main(["--verbose", "info", "poolformer_s12"])
    monkeypatch.setenv(keras_metaformer_cli.TRACEBACK_VARIABLE, "1")
    with pytest.raises(RuntimeError, match="counting"):
        cli.main(["info", "poolformer_s12"])


def test_export_failures_leave_no_output(capsys, imagenet_model_file, tmp_path, monkeypatch):
    path, _ = imagenet_model_file
    taken = tmp_path / "taken"
    taken.write_text("a file")
    code, _, err = run(capsys, "export", path, taken, "--format", "saved_model")
    assert "is an existing file" in _one_error_line(code, err, "export")
    code, _, err = run(capsys, "export", path, tmp_path / "new", "--format", "saved_model", "--version", 0)
    assert "--version must be at least 1" in _one_error_line(code, err, "export")
    from keras_metaformer.export import saved_model

    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(saved_model, "_write", fail)
    monkeypatch.setattr(saved_model, "_write_in_tensorflow_process", fail)
    code, _, err = run(capsys, "export", path, tmp_path / "new" / "serving", "--format", "saved_model")
    assert "RuntimeError: disk full" in _one_error_line(code, err, "export")
    assert os.listdir(tmp_path) == ["taken"]
