"""ONNX files, run by ONNX Runtime's CPU provider in a process without Keras.

One reduced-width model per family is exported once per module, and one
fresh process (numpy, onnx and onnxruntime only) checks and runs every
file; the tests compare what it returns with the Keras models' own outputs.

CAFormer's file is written by the command line, which on JAX goes through
`export_onnx`'s own route (a TensorFlow-backend subprocess). On JAX the other
five are converted by one TensorFlow-backend process that loads their
`.keras` files, as that route does, instead of five: each such process
spends seconds importing TensorFlow.
"""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

import keras_metaformer
from keras_metaformer import export
from keras_metaformer.export import onnx as onnx_export
from keras_metaformer.models.variants import architecture

BACKEND = keras.backend.backend()
MISSING = [m for m in ("onnx", "onnxruntime", "tf2onnx", "tensorflow") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f'needs {MISSING}: pip install "keras-metaformer[onnx]"'),
    # One worker runs this module: its module fixtures are expensive to make twice.
    pytest.mark.xdist_group("onnx"),
]
SIZE = 64  # stage 4 at 2x2 tokens: pooling and attention still mix something
CLASSES = 5
BATCHES = (1, 3)
FAMILIES = ("poolformer", "poolformerv2", "convformer", "caformer", "identityformer", "randformer")
THROUGH_THE_COMMAND_LINE = "caformer"
# Two families output logits: the file must add the softmax, as serving_default does.
LOGITS = ("convformer", "randformer")

# Run with `python -I`: no script folder, PYTHONPATH or user site on sys.path.
RUNNER = textwrap.dedent(
    """
    import json
    import sys

    import numpy as np
    import onnx
    import onnxruntime

    files, images, output = json.loads(sys.argv[1]), np.load(sys.argv[2]), sys.argv[3]
    report, outputs = {"files": {}}, {}
    for name, path in files.items():
        onnx.checker.check_model(path, full_check=True)
        model = onnx.load(path)
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        report["files"][name] = {
            "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")],
            "inputs": [[i.name, i.shape, i.type] for i in session.get_inputs()],
            "outputs": [[o.name, o.shape, o.type] for o in session.get_outputs()],
        }
        for batch in (1, 3):
            outputs[f"{name}_{batch}"] = session.run(["probabilities"], {"images": images[:batch]})[0]
    errors = {}
    for label, bad in (("shape", images[:, :16]), ("dtype", images.astype("float64")), ("rank", images[0])):
        try:
            session.run(None, {"images": bad})
            errors[label] = None
        except Exception as error:
            errors[label] = f"{type(error).__name__}: {error}"
    report["errors"] = errors
    outputs["after_errors"] = session.run(None, {"images": images[:1]})[0]
    report["last_file"] = name
    heavy = ("keras", "keras_metaformer", "tensorflow", "jax", "torch")
    report["imported"] = sorted(m for m in heavy if m in sys.modules)
    np.savez(output + ".npz", **outputs)
    with open(output + ".json", "w") as f:
        json.dump(report, f)
    """
)


def family_model(family, seed):
    arguments = architecture(
        family, "s12" if family in ("poolformer", "poolformerv2", "identityformer", "randformer") else "s18"
    )
    arguments.update(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    keras.utils.set_random_seed(seed)
    model = keras_metaformer.MetaFormer(
        **arguments,
        weights=None,
        classes=CLASSES,
        input_shape=(SIZE, SIZE, 3),
        classifier_activation=None if family in LOGITS else "softmax",
        name=family,
    )
    # Biases, norm parameters and layer scales away from their initial 0, 1
    # and 1e-5, as in a trained model: with them, a dropped bias or a wrong
    # norm would go unseen, and the blocks would add almost nothing.
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if len(weight.shape) == 1:
            value = keras.ops.convert_to_numpy(weight)
            weight.assign(value + rng.normal(0, 0.2, weight.shape).astype(value.dtype))
    return model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, (max(BATCHES), SIZE, SIZE, 3)).astype("float32")


@pytest.fixture(scope="module")
def models():
    return {family: family_model(family, seed) for seed, family in enumerate(FAMILIES)}


@pytest.fixture(scope="module")
def references(models, images):
    """Each Keras model's probabilities of `images`, computed in this process.

    An image's outputs do not depend on the batch it is in, so the files'
    batch-1 outputs are compared with the first row: one compilation per
    model on JAX, not two.
    """
    result = {}
    for family, model in models.items():
        outputs = model.predict(images, batch_size=len(images), verbose=0)
        result[family] = np.asarray(keras.ops.softmax(outputs)) if family in LOGITS else outputs
    return result


def run_command_line(*argv):
    """`keras-metaformer ARGV` in this process: its exit code, stdout and stderr.

    The command line quiets TensorFlow through the environment and the
    warning filters; both are put back.
    """
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    out, err = io.StringIO(), io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = keras_metaformer.cli.main([str(arg) for arg in argv])
    finally:
        if level is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        else:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = level
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """`{family: .onnx path}` in a folder `export_onnx` created, plus the command line's result."""
    import keras_metaformer.cli  # noqa: F401  (run_command_line's commands)

    scratch = tmp_path_factory.mktemp("onnx")
    folder = scratch / "new" / "folder"
    paths = {family: str(folder / f"{family}.onnx") for family in FAMILIES}
    model_file = scratch / f"{THROUGH_THE_COMMAND_LINE}.keras"
    models[THROUGH_THE_COMMAND_LINE].save(model_file)
    command_line = run_command_line("export", model_file, paths[THROUGH_THE_COMMAND_LINE], "--format", "onnx")
    others = [family for family in FAMILIES if family != THROUGH_THE_COMMAND_LINE]
    if BACKEND == "tensorflow":
        for family in others:
            export.export_onnx(models[family], paths[family])
    else:
        for family in others:
            models[family].save(scratch / f"{family}.keras")
        code = (
            "import sys, keras, keras_metaformer\n"
            "for name, path in zip(sys.argv[1::2], sys.argv[2::2]):\n"
            "    keras_metaformer.export.export_onnx(keras.saving.load_model(name, compile=False), path)\n"
        )
        arguments = [str(item) for family in others for item in (scratch / f"{family}.keras", paths[family])]
        environment = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
        result = subprocess.run(
            [sys.executable, "-c", code, *arguments], env=environment, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return paths, command_line


@pytest.fixture(scope="module")
def onnx_runtime(exported, images, tmp_path_factory):
    """What a fresh process without Keras read and computed from every file: (report, outputs)."""
    paths, _ = exported
    scratch = tmp_path_factory.mktemp("runtime")
    np.save(scratch / "images.npy", images)
    output = str(scratch / "result")
    # The command line's file last: the bad calls go to its session.
    order = {family: paths[family] for family in sorted(FAMILIES, key=lambda f: f == THROUGH_THE_COMMAND_LINE)}
    result = subprocess.run(
        [sys.executable, "-I", "-c", RUNNER, json.dumps(order), str(scratch / "images.npy"), output],
        capture_output=True,
        text=True,
        cwd=scratch,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output + ".json") as f:
        report = json.load(f)
    return report, dict(np.load(output + ".npz"))


def test_the_command_line_writes_the_file(exported):
    paths, (code, out, err) = exported
    assert (code, err) == (0, "")
    assert out.strip() == f"Wrote {paths[THROUGH_THE_COMMAND_LINE]}"


def test_the_files_load_without_keras_and_pass_the_checker(onnx_runtime, exported):
    report, _ = onnx_runtime
    paths, _ = exported
    assert report["imported"] == []  # the checker ran in the runner: a failure would have failed it
    assert sorted(report["files"]) == sorted(FAMILIES)
    for family, description in report["files"].items():
        assert description["opset"] == [export.OPSET], family
        assert description["inputs"] == [["images", ["batch", SIZE, SIZE, 3], "tensor(float)"]], family
        assert description["outputs"] == [["probabilities", ["batch", CLASSES], "tensor(float)"]], family
    # Written through temporary files renamed in one step: nothing else is left, in folders it made.
    folder = os.path.dirname(paths[FAMILIES[0]])
    assert sorted(os.listdir(folder)) == sorted(f"{family}.onnx" for family in FAMILIES)
    assert oct(os.stat(paths[FAMILIES[0]]).st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_matches_the_keras_model(family, onnx_runtime, references):
    _, outputs = onnx_runtime
    spread = np.ptp(references[family], axis=0).max()
    assert spread > 1e-3, "the test model gives every image the same scores: the comparison would say little"
    for batch in BATCHES:
        probabilities = outputs[f"{family}_{batch}"]
        assert probabilities.shape == (batch, CLASSES)
        np.testing.assert_allclose(probabilities, references[family][:batch], atol=1e-4, rtol=0, err_msg=family)
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)


def test_a_wrong_shape_or_dtype_fails_that_call_only(onnx_runtime, references):
    report, outputs = onnx_runtime
    errors = report["errors"]
    assert "INVALID_ARGUMENT" in errors["shape"] and "Got invalid dimensions for input: images" in errors["shape"]
    assert "INVALID_ARGUMENT" in errors["dtype"] and "expected: (tensor(float))" in errors["dtype"]
    assert "INVALID_ARGUMENT" in errors["rank"] and "Invalid rank for input: images" in errors["rank"]
    # The same session still answers a good call, with the right numbers.
    np.testing.assert_allclose(outputs["after_errors"], references[report["last_file"]][:1], atol=1e-4, rtol=0)


def test_run_onnx_gives_what_the_fresh_process_computed(onnx_runtime, exported, images, tmp_path):
    paths, _ = exported
    _, outputs = onnx_runtime
    probabilities = export.run_onnx(paths["poolformer"], images, num_threads=1)
    np.testing.assert_allclose(probabilities, outputs[f"poolformer_{max(BATCHES)}"], atol=1e-6, rtol=0)
    with pytest.raises(FileNotFoundError, match=r"No \.onnx file at"):
        export.onnx_session(tmp_path / "missing.onnx")


def test_a_failed_write_leaves_the_old_file_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")

    def interrupted(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        onnx_export.write_atomically(str(path), b"new")
    with pytest.raises(KeyboardInterrupt):
        onnx_export.write_atomically(str(tmp_path / "a" / "b" / "model.onnx"), b"new")
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # no partial file, and the folders it made are gone
    assert path.read_bytes() == b"old"


def test_bad_paths_and_arguments_are_explained_before_any_conversion(models, tmp_path, monkeypatch):
    def unreachable(*args):
        raise AssertionError("converted although the arguments are wrong")

    monkeypatch.setattr(onnx_export, "onnx_bytes", unreachable)
    monkeypatch.setattr(onnx_export, "_convert_in_tensorflow_process", unreachable)
    model = models["poolformer"]
    with pytest.raises(FileExistsError, match="is an existing folder, but the export writes a file there"):
        export.export_onnx(model, tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        export.export_onnx(model, tmp_path / "file" / "model.onnx")
    with pytest.raises(ValueError, match=r"ONNX opset from 13 to 18 .* Received: opset=9"):
        export.export_onnx(model, tmp_path / "model.onnx", opset=9)
    backbone = keras_metaformer.MetaFormer(
        depths=(1, 1), dims=(8, 16), input_shape=(32, 32, 3), include_top=False, weights=None
    )
    with pytest.raises(ValueError, match=r"needs a classifier with one output, \(batch, classes\).*include_top=True"):
        export.export_onnx(backbone, tmp_path / "model.onnx")
    free_size = keras_metaformer.MetaFormer(
        depths=(1, 1), dims=(8, 16), input_shape=(None, None, 3), classes=3, weights=None
    )
    with pytest.raises(ValueError, match=r"RGB images of a fixed size.*input_shape=\(224, 224, 3\)"):
        export.export_onnx(free_size, tmp_path / "model.onnx")
    mixed = keras_metaformer.MetaFormer(
        depths=(1, 1), dims=(8, 16), input_shape=(32, 32, 3), classes=3, weights=None, dtype="mixed_bfloat16"
    )
    with pytest.raises(ValueError, match=r"needs a float32 model.*\['mixed_bfloat16'\]"):
        export.export_onnx(mixed, tmp_path / "model.onnx")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "tf2onnx" else object())
    with pytest.raises(ImportError, match=r'pip install "keras-metaformer\[onnx\]"') as error:
        export.export_onnx(model, tmp_path / "model.onnx")
    assert error.value.name == "tf2onnx"
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_the_command_line_explains_a_folder_given_as_the_file(tmp_path):
    import keras_metaformer.cli  # noqa: F401

    code, out, err = run_command_line("export", "poolformer_s12", tmp_path, "--format", "onnx", "--weights", "none")
    assert code == 2 and out == ""
    assert err.startswith("keras-metaformer export: error: ") and "is an existing folder" in err
