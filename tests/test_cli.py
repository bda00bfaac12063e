"""The `keras-metaformer` command line."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save

import keras_metaformer
from conftest import TIMM_KEYS
from keras_metaformer import cli
from keras_metaformer.imagenet import imagenet_classes

BACKEND = keras.backend.backend()


def run(capsys, *argv):
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def imagenet_model_file(tmp_path_factory):
    """A small 1000-class model whose scores do not depend on the image: known top-5."""
    model = keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16), input_shape=(32, 32, 3), classes=1000,
                                        weights=None, name="tiny")
    head = model.layers[-1]
    kernel, bias = head.get_weights()
    logits = np.random.default_rng(0).normal(0, 3, 1000).astype("float32")
    head.set_weights([np.zeros_like(kernel), logits])
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path, logits


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


def test_the_console_script_and_every_command_have_help(capsys):
    script = os.path.join(os.path.dirname(sys.executable), "keras-metaformer")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("predict", "export", "convert", "info"):
        assert command in result.stdout
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: keras-metaformer {command}" in capsys.readouterr().out


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


def test_unknown_models_and_weight_tags_are_explained(capsys, photo):
    code, _, err = run(capsys, "info", "poolformer_s13")
    assert code == 2 and "unknown model 'poolformer_s13'" in err and "poolformer_s12" in err
    code, _, err = run(capsys, "predict", photo, "--weights", "in22k")
    assert code == 2 and "in22k" in err and "sail_in1k" in err
    # conftest points the Hub at a closed port: the download fails, clearly.
    code, _, err = run(capsys, "predict", photo)
    assert code == 2 and "could not load the 'imagenet' weights of poolformer_s12" in err


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
    code, out, err = run(capsys, "convert", checkpoint, output, "--model", "poolformer_s12")
    assert code == 0, err
    converted = keras_metaformer.PoolFormerS12(weights=str(output))
    direct = keras_metaformer.PoolFormerS12(weights=str(checkpoint))
    for a, b in zip(converted.weights, direct.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    np.testing.assert_array_equal(np.asarray(converted.get_layer("predictions").bias), state["head.fc.bias"])


def test_convert_explains_bad_checkpoints(capsys, tmp_path):
    code, _, err = run(capsys, "convert", tmp_path / "none.safetensors", tmp_path / "o.weights.h5", "--model",
                       "poolformer_s12")
    assert code == 2 and "no checkpoint file" in err
    pth = tmp_path / "authors.pth"
    pth.write_bytes(b"\x80\x02torch pickle")
    code, _, err = run(capsys, "convert", pth, tmp_path / "o.weights.h5", "--model", "poolformer_s12")
    assert code == 2 and "needs torch" in err
    assert not (tmp_path / "o.weights.h5").exists()


def test_export_writes_a_saved_model_and_a_tflite_file(capsys, imagenet_model_file, tmp_path):
    path, logits = imagenet_model_file
    code, out, err = run(capsys, "export", path, tmp_path / "serving", "--format", "saved_model", "--version", 3)
    assert code == 0, err
    assert os.path.isfile(tmp_path / "serving" / "3" / "saved_model.pb")
    code, _, err = run(capsys, "export", path, tmp_path / "serving", "--format", "saved_model", "--version", 3)
    assert code == 2 and "already exists" in err
    code, _, err = run(capsys, "export", path, tmp_path / "m.tflite", "--format", "tflite", "--quantize", "int8")
    assert code == 2 and "--calibration-dir" in err
    if BACKEND == "tensorflow":  # the conversion itself is tested in test_export.py
        code, _, err = run(capsys, "export", path, tmp_path / "m.tflite", "--format", "tflite",
                           "--quantize", "float16")
        assert code == 0, err
        from keras_metaformer.export import run_tflite

        scores = run_tflite(tmp_path / "m.tflite", np.zeros((1, 32, 32, 3), "float32"))
        assert scores.argmax() == logits.argmax()
