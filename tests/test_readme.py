"""The README's code runs as written.

Every Python block and every `keras-metaformer` line runs here, in a folder
holding what the README's prose assumes (`cat.jpg`, `photos/`, a downloaded
`poolformer_s12.safetensors`), with the Hub replaced by a loopback server
that serves random weights under timm's names. The shell blocks that install
packages or start a model server are the ones not run: they need the network.
"""

import json
import os
import re
import shlex
import shutil

import keras
import numpy as np
import pytest
from conftest import TIMM_KEYS
from hub_server import HubServer
from hub_server import timm_url_path
from safetensors.numpy import save

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
IS_TENSORFLOW = keras.backend.backend() == "tensorflow"


def code_blocks(language):
    with open(README) as file:
        text = file.read()
    return [body for lang, body in re.findall(r"^```(\w+)\n(.*?)^```", text, re.M | re.S) if lang == language]


PYTHON = code_blocks("python")
BASH = code_blocks("bash")
# What each Python block does, in README order. A new block fails
# test_every_python_block_is_run_here until it is named here.
PYTHON_ROLES = ["hybrid", "classify", "fine-tune", "export", "weights", "hub", "distributed"]
NOT_RUN = ("pip install", "docker run")  # shell lines that need the network


def test_the_readme_is_short():
    with open(README) as file:
        assert len(file.readlines()) <= 250


def test_every_python_block_is_run_here():
    assert len(PYTHON) == len(PYTHON_ROLES)


def test_every_shell_line_is_run_here_or_needs_the_network():
    for block in BASH:
        for line in block.splitlines():
            command = line.split("#")[0].strip()
            assert not command or command.startswith("keras-metaformer ") or any(s in command for s in NOT_RUN), line


def _s12_file():
    rng = np.random.default_rng(0)
    state = {key: rng.normal(0, 0.02, shape).astype("float32") for key, shape in TIMM_KEYS["poolformer_s12"]["timm"]}
    return save(state)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The files the README's examples read."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("readme")
    Image.fromarray(data.chelsea()).save(root / "cat.jpg")
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("val", 1)):
        for name in ("cats", "dogs"):
            folder = root / "photos" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype="uint8")).save(folder / f"{i}.png")
    (root / "poolformer_s12.safetensors").write_bytes(_s12_file())
    return root


# timm's `config.json` for S12, as the Hub has it, less fields nothing reads.
S12_CONFIG = {
    "architecture": "poolformer_s12",
    "num_classes": 1000,
    "num_features": 512,
    "pretrained_cfg": {
        "tag": "sail_in1k",
        "input_size": [3, 224, 224],
        "interpolation": "bicubic",
        "crop_pct": 0.9,
        "crop_mode": "center",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "num_classes": 1000,
        "first_conv": "stem.proj",
        "classifier": "head.fc",
    },
}


@pytest.fixture
def workspace(template, tmp_path, monkeypatch, keras_home):
    """A copy of the template as the working directory, and a Hub that serves S12's files."""
    import huggingface_hub.constants

    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    files = {
        timm_url_path("poolformer_s12", "sail_in1k"): (template / "poolformer_s12.safetensors").read_bytes(),
        timm_url_path("poolformer_s12", "sail_in1k", "config.json"): json.dumps(S12_CONFIG).encode(),
    }
    with HubServer(files) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        # huggingface_hub reads HF_ENDPOINT and its cache folder once, when imported.
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(
            huggingface_hub.constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        )
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        yield tmp_path


def run_block(role):
    namespace = {"__name__": "__readme__"}
    exec(compile(PYTHON[PYTHON_ROLES.index(role)], f"README.md:{role}", "exec"), namespace)
    return namespace


@pytest.fixture
def _restore_distribution():
    yield
    keras.distribution.set_distribution(None)


@pytest.mark.parametrize("role", ["hybrid", "classify", "weights"])
def test_python_block_runs(role, workspace):
    namespace = run_block(role)
    assert any(isinstance(value, keras.Model) for value in namespace.values())


def test_keras_hub_block_fine_tunes_a_timm_preset_and_saves_its_own(workspace):
    import keras_hub

    namespace = run_block("hub")
    assert type(namespace["classifier"]).__name__ == "MetaFormerImageClassifier"
    assert namespace["classifier"].output_shape == (None, 2)
    restored = keras_hub.models.ImageClassifier.from_preset("photos_s12_preset")
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(restored(x)), keras.ops.convert_to_numpy(namespace["classifier"](x))
    )


def test_fine_tuning_block_trains_and_saves(workspace):
    namespace = run_block("fine-tune")
    assert namespace["model"].output_shape == (None, 2)
    assert os.path.isfile("photos_s12.keras")


@pytest.mark.skipif(not IS_TENSORFLOW, reason="JAX-built models export through a TensorFlow subprocess: test_export")
def test_export_block_writes_a_saved_model_and_a_tflite_file(workspace):
    run_block("export")
    assert os.path.isfile("serving/poolformer_s12/1/saved_model.pb")
    assert os.path.isfile("poolformer_s12.tflite")


@pytest.mark.usefixtures("_restore_distribution")
def test_distribution_block_builds_a_mixed_precision_model(workspace):
    namespace = run_block("distributed")
    assert namespace["model"].dtype_policy.name == "mixed_bfloat16"


def test_the_first_example_offline_is_one_exception_saying_how_to_pass_a_file(keras_home, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port
    with pytest.raises(OSError) as error:
        run_block("classify")
    assert error.value.__cause__ is None and error.value.__suppress_context__
    assert "weights='/path/to/model.safetensors'" in str(error.value)


@pytest.mark.skipif(not IS_TENSORFLOW, reason="the export lines need TensorFlow; the rest run in test_cli")
def test_command_lines_run(workspace, capsys):
    from keras_metaformer.cli import main

    lines = [line.split("#")[0].strip() for block in BASH for line in block.splitlines()]
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("keras-metaformer ")]
    assert len(commands) == 5
    for argv in commands:
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    output = capsys.readouterr().out
    assert "cat.jpg\n  1." in output and "parameters:" in output
    assert os.path.isfile("s12.weights.h5") and os.path.isfile("s12.tflite")
