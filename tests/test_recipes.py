import importlib
import json
import os
import re
import socket
import subprocess
import sys

import keras
import pytest

import keras_metaformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_recipe(*args, env=None, recipe="classify.py"):
    environment = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "recipes", recipe), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )


ONCE = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="checks arguments before any model is built: one backend is enough"
)


def import_recipe(name):
    """Imports recipes/<name>.py, which may import its sibling recipes."""
    sys.path.insert(0, os.path.join(REPO, "recipes"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_classify_offline_uses_random_weights_and_says_so():
    # conftest points HF_ENDPOINT at a closed local port: the download fails.
    result = run_recipe()
    assert result.returncode == 0, result.stderr
    assert "Could not download the ImageNet weights" in result.stdout
    assert "RANDOM weights (offline: download failed)" in result.stdout
    assert "Image: scikit-image's chelsea.png (a tabby cat), 451x300 pixels" in result.stdout
    ranked = [line for line in result.stdout.splitlines() if line.strip()[:2] in {"1.", "2.", "3.", "4.", "5."}]
    assert len(ranked) == 5


@pytest.fixture
def socket_timeout():
    """Puts back the global socket timeout that the recipes' `main` sets."""
    timeout = socket.getdefaulttimeout()
    yield
    socket.setdefaulttimeout(timeout)


@ONCE
@pytest.mark.usefixtures("socket_timeout")
def test_classify_reports_unreadable_images(tmp_path):
    # In this process: `sys.exit(message)` prints the message and exits with 1.
    classify = import_recipe("classify")
    with pytest.raises(SystemExit, match=r"^error: no image file at"):
        classify.main(["--image", str(tmp_path / "missing.jpg"), "--weights", "none"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(SystemExit, match=r"^error: cannot read"):
        classify.main(["--image", str(broken), "--weights", "none"])


def test_classify_reads_a_16_bit_png_as_the_pipeline_does(tmp_path):
    import numpy as np
    from PIL import Image

    values = np.array([[0, 255, 256, 32768], [40000, 65280, 65535, 1000]], "uint16")
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    image, _ = import_recipe("classify").load_image(str(path))
    # libpng's 16-to-8 bit reduction, as in tf.io.decode_png: the high byte.
    np.testing.assert_array_equal(image, np.repeat((values >> 8).astype("uint8")[..., None], 3, axis=-1))


def documented_outputs(recipe):
    """The names a recipe's "Writes:" header lists, one per line: model.keras, checkpoints/, ..."""
    writes = import_recipe("training_setup").docstring_section(import_recipe(recipe).__doc__, "Writes:")
    return set(re.findall(r"^ {13}(\S+) {2,}\S", writes, re.M))


def listing(folder):
    """Files under `folder`, by relative path."""
    return {os.path.relpath(os.path.join(root, name), folder) for root, _, names in os.walk(folder) for name in names}


def png_title(path):
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.info["Title"]


@pytest.mark.usefixtures("socket_timeout")
def test_finetune_smoke_writes_the_documented_files_and_keeps_only_the_latest_checkpoint(tmp_path, capsys):
    documented = documented_outputs("finetune")
    assert documented == {"model.keras", "log.csv", "learning_curves.png", "checkpoints/"}
    kept = run_recipe("--smoke", "--keep-checkpoints", "--output", str(tmp_path), recipe="finetune.py")
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert "Phase 1: head only, backbone frozen (1 epochs)" in kept.stdout
    assert "Validation accuracy:" in kept.stdout
    # One checkpoint for both phases: the last epoch's, enough to resume.
    outputs = {"model.keras", "log.csv", "learning_curves.png"}
    assert listing(tmp_path) == outputs | {"checkpoints/state.json", "checkpoints/epoch-0003.weights.h5"}
    with open(tmp_path / "log.csv") as file:
        log = file.read()
    assert [row.split(",")[0] for row in log.split()[1:]] == ["0", "1", "2"]
    title = png_title(tmp_path / "learning_curves.png")
    assert title.startswith("a tiny MetaFormer (--smoke) on digits, 32x32"), title
    model = keras.saving.load_model(tmp_path / "model.keras")
    assert model.output.shape == (None, 10)

    # Run again without the flag, in this process (the script ran as one
    # above): nothing left to train, and a successful run deletes its
    # checkpoints.
    import_recipe("finetune").main(["--smoke", "--output", str(tmp_path)])
    again = capsys.readouterr().out
    assert "Done in an earlier run: the checkpoint is from epoch 3" in again
    assert "Resuming after epoch 3" in again
    assert f"deleted {tmp_path / 'checkpoints'} (--keep-checkpoints keeps it)" in again
    assert listing(tmp_path) == outputs == {name for name in documented if not name.endswith("/")}
    assert (tmp_path / "log.csv").read_text() == log


def test_finetune_help_lists_what_it_writes(capsys):
    finetune = import_recipe("finetune")
    with pytest.raises(SystemExit) as exit_status:
        finetune.main(["--help"])
    assert exit_status.value.code == 0
    text = capsys.readouterr().out
    assert import_recipe("training_setup").docstring_section(finetune.__doc__, "Writes:") in text
    assert "--keep-checkpoints" in text


def test_finetune_phases_resume_from_one_checkpoint_whichever_phase_saved_it(tmp_path, capsys):
    import argparse

    import numpy as np
    import tensorflow as tf

    finetune = import_recipe("finetune")
    training_setup = import_recipe("training_setup")
    rng = np.random.default_rng(0)
    images = rng.normal(size=(16, 8)).astype("float32")
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, 16)]
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    args = argparse.Namespace(
        head_epochs=1, epochs=2, head_lr=1e-3, lr=1e-3, jit_compile=False, distribution="none", num_processes=1
    )
    paths = training_setup.output_paths(str(tmp_path))

    def classifier():
        backbone = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu")])
        return keras.Sequential([backbone, keras.layers.Dense(3)]), backbone

    # A run killed after phase 1: its checkpoint holds phase 1's optimizer
    # (the head's variables only). A log of an older run is not appended to.
    (tmp_path / "log.csv").write_text("epoch,loss\n0,9.0\n")
    model, backbone = classifier()
    backbone.trainable = False
    checkpoint = training_setup.open_checkpoint(paths, args)
    finetune.run_phase(model, keras.optimizers.Adam(), batches, batches, args, checkpoint, range(0, 1), paths["log"])
    assert checkpoint.saved_epoch() == 1

    # Started again: phase 1 is restored, phase 2 trains with its own optimizer.
    model, backbone = classifier()
    finetune.train_in_two_phases(model, backbone, False, batches, batches, args, paths)
    assert "Resuming after epoch 1" in capsys.readouterr().out
    assert int(model.optimizer.iterations) == 2 * 4  # phase 2's own: 2 epochs of 4 steps
    assert sorted(os.listdir(paths["checkpoints"])) == ["epoch-0003.weights.h5", "state.json"]
    with open(paths["log"]) as file:
        assert [row.split(",")[0] for row in file.read().split()[1:]] == ["0", "1", "2"]
    trained = [keras.ops.convert_to_numpy(v) for v in model.weights]

    # Started once more: phase 2's checkpoint is restored into phase 2's model.
    model, backbone = classifier()
    finetune.train_in_two_phases(model, backbone, False, batches, batches, args, paths)
    out = capsys.readouterr().out
    assert "Done in an earlier run: the checkpoint is from epoch 3" in out and "Resuming after epoch 3" in out
    for expected, variable in zip(trained, model.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), expected)


def test_a_resumed_run_keeps_the_log_rows_of_the_epochs_its_checkpoint_holds(tmp_path):
    import argparse

    training_setup = import_recipe("training_setup")
    paths = training_setup.output_paths(str(tmp_path))
    args = argparse.Namespace(distribution="none", num_processes=1)
    # Killed after logging epoch index 2 but before its checkpoint: epoch 2 is trained and logged again.
    os.makedirs(paths["checkpoints"])
    (tmp_path / "checkpoints" / "epoch-0002.weights.h5").write_bytes(b"")
    (tmp_path / "checkpoints" / "state.json").write_text('{"epoch": 2, "weights": "epoch-0002.weights.h5"}')
    (tmp_path / "log.csv").write_text("epoch,loss\n0,3.0\n1,2.0\n2,1.0\n")
    assert training_setup.open_checkpoint(paths, args).saved_epoch() == 2
    assert (tmp_path / "log.csv").read_text().splitlines() == ["epoch,loss", "0,3.0", "1,2.0"]
    # Workers of a job keep two epochs and agree on one.
    for distribution, processes, distributed in (
        ("multi-worker", 1, True),
        ("data-parallel", 2, True),
        ("data-parallel", 1, False),
    ):
        job = argparse.Namespace(distribution=distribution, num_processes=processes)
        assert training_setup.open_checkpoint(paths, job).distributed is distributed


def test_learning_curves_are_titled_with_the_model_and_the_data(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,accuracy,loss,val_accuracy,val_loss\n0,0.5,1.0,0.4,1.1\n1,0.7,0.8,0.6,0.9\n")
    title = "PoolFormer-S12 (poolformer_s12) on digits, 32x32"
    figure = import_recipe("training_setup").plot_learning_curves(log, tmp_path / "curves.png", title, boundary=1)
    assert figure.get_suptitle() == title
    assert [axis.get_title() for axis in figure.axes] == ["loss", "accuracy"]
    assert png_title(tmp_path / "curves.png") == title


def test_a_successful_run_deletes_its_checkpoints_unless_told_to_keep_them(tmp_path):
    training_setup = import_recipe("training_setup")
    paths = training_setup.output_paths(str(tmp_path))
    os.makedirs(paths["checkpoints"])
    (tmp_path / "checkpoints" / "state.json").write_text("{}")
    assert training_setup.finish_checkpoints(paths, keep=True).startswith("kept ")
    assert os.listdir(paths["checkpoints"]) == ["state.json"]
    assert training_setup.finish_checkpoints(paths, keep=False).startswith("deleted ")
    assert not os.path.exists(paths["checkpoints"])
    assert training_setup.finish_checkpoints(paths, keep=False).startswith("deleted ")  # none: nothing to do


def test_git_ignores_what_the_recipes_write_by_default():
    # Run from the repository root, the README's commands must not leave
    # untracked outputs behind (the main job's folder is 175 MB mid-run).
    if not os.path.exists(os.path.join(REPO, ".git")):
        pytest.skip("not a git checkout")
    defaults = set()
    for name in os.listdir(os.path.join(REPO, "recipes")):
        if name.endswith(".py"):
            with open(os.path.join(REPO, "recipes", name)) as file:
                source = file.read()
            defaults |= set(re.findall(r'add_argument\("--output", default="([^"]+)"', source))
            defaults |= set(re.findall(r'parse_arguments\(argv, .*, "([^"]+)"\)', source))
    assert {"finetune_output", "grad_cam.png", "outputs/detect_shapes"} <= defaults
    paths = sorted(path if path.endswith(".png") else f"{path}/model.keras" for path in defaults)
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True)
    assert ignored.stdout.split() == paths, ignored.stderr


@ONCE
def test_finetune_rejects_images_below_the_minimum_size(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        import_recipe("finetune").main(["--smoke", "--image-size", "16", "--output", str(tmp_path)])
    assert exit_status.value.code == 2 and "--image-size must be at least 32" in capsys.readouterr().err


@ONCE
@pytest.mark.usefixtures("socket_timeout")
def test_finetune_explains_an_empty_image_folder(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(SystemExit, match=r"^error: No images in"):
        import_recipe("finetune").main(["--smoke", "--data-dir", str(tmp_path), "--output", str(tmp_path / "out")])


def test_train_imagenet_smoke_runs_the_recipe_on_mock_imagenet(tmp_path):
    result = run_recipe("--smoke", "--output", str(tmp_path), recipe="train_imagenet.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Effective batch 4: peak learning rate 3.90625e-06, 2 updates per epoch" in result.stdout
    with open(tmp_path / "log.csv") as file:
        header = file.readline().strip().split(",")
    assert {"accuracy", "top5", "val_accuracy", "val_top5"} <= set(header)
    # The files its header lists, and no checkpoints after a successful run.
    documented = documented_outputs("train_imagenet")
    assert documented == {"model.keras", "log.csv", "learning_curves.png", "checkpoints/"}
    assert listing(tmp_path) == documented - {"checkpoints/"}
    assert png_title(tmp_path / "learning_curves.png") == (
        "a tiny MetaFormer (--smoke) on mock imagenet2012, 32x32, from scratch"
    )


def test_evaluate_imagenet_smoke_reports_top1_and_top5():
    result = run_recipe("--smoke", recipe="evaluate_imagenet.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Evaluating metaformer at 224px, crop_pct 0.9" in result.stdout
    assert re.search(r"top-1 \d+\.\d\d%  top-5 \d+\.\d\d%", result.stdout)


def test_only_the_chief_writes_to_the_output_folder(tmp_path, monkeypatch):
    training_setup = import_recipe("training_setup")
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    expected = {0: tmp_path, 1: tmp_path / "worker-1"}
    for index, folder in expected.items():
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        assert training_setup.output_paths(str(tmp_path))["model"] == str(folder / "model.keras")
    # With a separate chief task, every worker is a non-chief.
    chief_cluster = dict(cluster, chief=["127.0.0.1:3"])
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": chief_cluster, "task": {"type": "worker", "index": 0}}))
    assert training_setup.output_paths(str(tmp_path))["log"] == str(tmp_path / "worker-0" / "log.csv")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": chief_cluster, "task": {"type": "chief", "index": 0}}))
    assert training_setup.output_paths(str(tmp_path))["log"] == str(tmp_path / "log.csv")


def test_only_a_failed_imagenet_download_falls_back_to_random_weights(tmp_path, capsys):
    training_setup = import_recipe("training_setup")
    calls = []

    def builder(weights, **kwargs):
        calls.append((weights, kwargs))
        if weights is not None:
            raise OSError(f"cannot read {weights}")
        return "model"

    assert training_setup.pretrained_or_random(builder, "imagenet", include_top=False) == (
        "model",
        False,
        "RANDOM weights (offline: download failed)",
    )
    assert "Could not download the ImageNet weights" in capsys.readouterr().out
    assert calls == [("imagenet", {"include_top": False}), (None, {"include_top": False})]
    # A file the user named must fail loudly, not train from scratch.
    with pytest.raises(OSError, match=r"missing\.weights\.h5"):
        training_setup.pretrained_or_random(builder, str(tmp_path / "missing.weights.h5"))
    assert training_setup.pretrained_or_random(builder, "none") == ("model", False, "random weights (--weights none)")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="exports run through TensorFlow; run once")
def test_check_export_prints_a_row_per_export(tmp_path, capsys):
    model = keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16), input_shape=(32, 32, 3), classes=10, weights=None)
    model.save(tmp_path / "digits.keras")
    check_export = import_recipe("check_export")
    check_export.main([str(tmp_path / "digits.keras")])
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows == [
        "export",
        "SavedModel",
        "ONNX opset 17",
        "TFLite float32",
        "TFLite float16",
        "TFLite dynamic",
        "TFLite int8",
    ]


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("fpu sse avx avx2 fma", "with AVX2; without AVX-512, AVX-512 BF16, AMX"),
        ("avx2 avx512f avx512bw avx512_bf16 avx512_vnni", "with AVX2, AVX-512, AVX-512 BF16; without AMX"),
        ("avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", "with AVX2, AVX-512, AVX-512 BF16, AMX"),
        ("neon asimd", "with none of AVX2, AVX-512, AVX-512 BF16, AMX"),
    ],
)
def test_benchmark_names_the_cpu_and_its_vector_units(tmp_path, flags, expected):
    # Two logical CPUs, as /proc/cpuinfo lists them: one stanza each.
    stanza = "processor\t: {}\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t\t: " + flags + "\n\n"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(stanza.format(0) + stanza.format(1))
    assert import_recipe("benchmark").describe_cpu(str(cpuinfo)) == f"CPU: AMD EPYC 9R14, 2 logical CPUs; {expected}"


@pytest.mark.parametrize(
    "vendor, family, model, numbers",
    [
        ("AuthenticAMD", 25, 17, "family 25, model 17: Zen 4"),  # Genoa
        ("AuthenticAMD", 25, 1, "family 25, model 1: Zen 3"),  # Milan
        ("AuthenticAMD", 26, 2, "family 26, model 2: Zen 5"),
        ("GenuineIntel", 6, 143, "family 6, model 143"),
    ],
)
def test_benchmark_tells_cpu_generations_apart_by_family_and_model(tmp_path, vendor, family, model, numbers):
    # Virtual machines name a Zen 4 and a Zen 5 alike; their numbers differ.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
        "model name\t: Some CPU\nflags\t\t: avx2\n\n"
    )
    assert (
        import_recipe("benchmark").describe_cpu(str(cpuinfo)).startswith(f"CPU: Some CPU ({numbers}), 1 logical CPUs;")
    )


def test_benchmark_gives_each_throughput_as_a_share_of_the_hosts_peak():
    benchmark = import_recipe("benchmark")
    # 10 img/s x 4 GFLOP = 40 GFLOP/s of 200; training: 2 img/s x 3 x 4 GFLOP = 24 of 200. timm's row
    # has no count of its own: the model's is the same.
    keras_row = {"gflop": 4.0, "latency_ms": 5.0, "throughput": 10.0, "train_throughput": 2.0, "peak_mib": 1.0}
    timm_row = {"latency_ms": 5.0, "throughput": 5.0, "train_throughput": 1.0, "peak_mib": 1.0}
    results = {("tiny", "float32"): {"jax": keras_row, "timm": timm_row}}
    rows = benchmark.table(results, 32, {"float32": 200.0, "bfloat16": 800.0}).splitlines()
    assert rows[0].endswith("| batch-32 % of peak | training % of peak |")
    assert [row.split("|")[-3:-1] for row in rows[2:]] == [[" 20% ", " 12% "], [" 10% ", " 6% "]]
    assert benchmark.table(results, 32).splitlines()[2].endswith("|  |  |")  # no peak measured (a GPU)


@pytest.mark.parametrize("malloc", ["system", "retain"])
def test_benchmark_gives_every_engine_the_same_malloc_settings(monkeypatch, malloc):
    import argparse
    import types

    benchmark = import_recipe("benchmark")
    for name in benchmark.RETAINING_MALLOC:
        monkeypatch.delenv(name, raising=False)
    environments = {}

    def run(command, env, **kwargs):
        environments[command[command.index("--worker") + 1]] = env
        return types.SimpleNamespace(stdout='RESULT {"latency_ms": 1}', stderr="")

    monkeypatch.setattr(benchmark.subprocess, "run", run)
    options = argparse.Namespace(
        torch_python=sys.executable, batch=2, warmup=1, repeats=1, threads=2, image_size=32, device="cpu", malloc=malloc
    )
    for engine in ("jax", "timm"):
        assert benchmark.measure(engine, "tiny", "float32", options) == {"latency_ms": 1}
    for environment in environments.values():
        settings = {name: environment.get(name) for name in benchmark.RETAINING_MALLOC}
        if malloc == "retain":
            assert settings == benchmark.RETAINING_MALLOC
        else:
            assert set(settings.values()) == {None}


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the benchmark starts its own backends; run once")
def test_benchmark_smoke_prints_a_table_and_draws_a_chart(tmp_path):
    result = run_recipe(
        "--smoke",
        "--engines",
        "tf,tf-saved-model,onnxruntime,timm",
        "--precisions",
        "float32",
        "--output",
        tmp_path,
        "--torch-python",
        sys.executable,
        recipe="benchmark.py",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| tiny |")]
    assert [row.split("|")[3].strip() for row in rows] == ["tf", "tf-saved-model", "onnxruntime"], result.stdout
    cells = [[cell.strip() for cell in row.split("|")[4:7]] for row in rows]
    assert all(float(cell.split()[0]) > 0 for cell in cells[0])
    # The SavedModel and the ONNX file are measured for inference only.
    for inference_only in cells[1:]:
        assert float(inference_only[0]) > 0 and float(inference_only[1]) > 0 and inference_only[2] == ""
    assert "timm: not run" in result.stdout  # no torch in the test environment
    assert re.search(
        r"Host matrix-product peak, 2 threads: float32 [\d,]+ GFLOP/s, bfloat16 [\d,]+ GFLOP/s", result.stdout
    )
    assert all(re.fullmatch(r"\d+%", row.split("|")[-3].strip()) for row in rows), rows
    assert (tmp_path / "benchmark.md").read_text().strip() in result.stdout
    assert (tmp_path / "benchmark.md").read_text().startswith("CPU: ")
    assert (tmp_path / "benchmark.png").read_bytes().startswith(b"\x89PNG")


def test_check_parity_turns_tensorfloat32_off():
    check_parity = import_recipe("check_parity")
    if keras.backend.backend() == "jax":
        import jax

        before = jax.config.jax_default_matmul_precision
        jax.config.update("jax_default_matmul_precision", None)
        try:
            check_parity.use_full_float32()
            assert jax.config.jax_default_matmul_precision == "highest"
        finally:
            jax.config.update("jax_default_matmul_precision", before)
    else:
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(True)
        try:
            check_parity.use_full_float32()
            assert not tf.config.experimental.tensor_float_32_execution_enabled()
        finally:
            tf.config.experimental.enable_tensor_float_32_execution(True)


def test_benchmark_rounds_alternate_the_order_and_keep_each_engines_best(tmp_path, monkeypatch, capsys):
    benchmark = import_recipe("benchmark")
    timings = {  # per engine, one result per round
        "tf": [
            {"latency_ms": 30.0, "throughput": 40.0, "train_throughput": 10.0, "peak_mib": 900.0},
            {"latency_ms": 20.0, "throughput": 35.0, "train_throughput": 12.0, "peak_mib": 1000.0},
        ],
        "tflite": [None, {"latency_ms": 19.0, "throughput": 50.0, "peak_mib": 500.0}],
    }
    calls = []

    def measure(engine, arch, precision, options):
        calls.append(engine)
        return timings[engine][calls.count(engine) - 1]

    monkeypatch.setattr(benchmark, "measure", measure)
    benchmark.main(
        [
            "--models",
            "m",
            "--engines",
            "tf,tflite",
            "--precisions",
            "float32",
            "--rounds",
            "2",
            "--output",
            str(tmp_path),
        ]
    )
    assert calls == ["tf", "tflite", "tflite", "tf"]
    out = capsys.readouterr().out
    assert "2 threads per engine, best of 2 rounds." in out
    assert "| m | float32 | tf | 20.0 | 40.0 | 12.0 | 1000 |" in out
    assert "| m | float32 | tflite | 19.0 | 50.0 |  | 500 |" in out  # a failed round is skipped
    with pytest.raises(SystemExit):
        benchmark.main(["--rounds", "0"])
    assert "--rounds must be at least 1, got 0" in capsys.readouterr().err


def test_product_bound_lists_each_matrix_product_of_the_model_once_with_its_count():
    products = import_recipe("product_bound").model_products("poolformer_s12", batch=2)
    # PoolFormer-S12: a 7x7 stem and three 3x3 downsamplings as patch products, blocks of
    # depths (2, 2, 6, 2) with 4x MLPs, and the 1000-class head; rows are batch x positions.
    assert sorted(products) == sorted(
        [
            ("patches 7x7", 2 * 56 * 56, 7 * 7 * 3, 64, 1),
            ("mlp fc1", 2 * 56 * 56, 64, 256, 2),
            ("mlp fc2", 2 * 56 * 56, 256, 64, 2),
            ("patches 3x3", 2 * 28 * 28, 9 * 64, 128, 1),
            ("mlp fc1", 2 * 28 * 28, 128, 512, 2),
            ("mlp fc2", 2 * 28 * 28, 512, 128, 2),
            ("patches 3x3", 2 * 14 * 14, 9 * 128, 320, 1),
            ("mlp fc1", 2 * 14 * 14, 320, 1280, 6),
            ("mlp fc2", 2 * 14 * 14, 1280, 320, 6),
            ("patches 3x3", 2 * 7 * 7, 9 * 320, 512, 1),
            ("mlp fc1", 2 * 7 * 7, 512, 2048, 2),
            ("mlp fc2", 2 * 7 * 7, 2048, 512, 2),
            ("head", 2, 512, 1000, 1),
        ]
    )


def test_product_bound_sums_each_product_times_its_count():
    product_bound = import_recipe("product_bound")
    products = [("a", 8, 4, 4, 2), ("b", 8, 4, 2, 1)]
    seconds = {"forward": 0.1, "input gradient": 0.2, "weight gradient": 0.3}
    times = {(*product[:4], p): seconds[p] * (1 if product[0] == "a" else 2) for product in products for p in seconds}
    # Inference: 2 x 0.1 + 0.2 = 0.4 s for 32 images; a step: 2 x 0.6 + 1.2 = 2.4 s.
    inference, training = product_bound.bounds(products, times, batch=32)
    assert inference == pytest.approx(80.0) and training == pytest.approx(32 / 2.4)


@ONCE
@pytest.mark.parametrize("malloc", ["retain", "system"])
def test_product_bound_keeps_freed_memory_for_both_engines_by_default(monkeypatch, malloc):
    # Page faults on fresh outputs would count as product time: by default
    # this process keeps freed memory and the oneDNN process is told to.
    import keras_metaformer.malloc

    product_bound = import_recipe("product_bound")
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())  # main() sets it to jax
    monkeypatch.setenv("KERAS_METAFORMER_MALLOC", "")  # main() may set it; restored after
    monkeypatch.setattr(product_bound.os, "sched_setaffinity", lambda *args: None)
    retained, environments = [], []
    monkeypatch.setattr(keras_metaformer.malloc, "retain_freed_memory", lambda: retained.append(True))
    products = [("fc", 8, 4, 4, 1)]
    times = {(*products[0][:4], product): 0.5 for product in product_bound.PRODUCTS}
    monkeypatch.setattr(product_bound, "model_products", lambda arch, batch: products)
    monkeypatch.setattr(product_bound, "xla_times", lambda *args, **kwargs: times)

    def onednn_times(products, precision, threads, repeats, environment=None):
        environments.append(environment)
        return times

    monkeypatch.setattr(product_bound, "onednn_times", onednn_times)
    options = ["--precisions", "float32"] + (["--malloc", malloc] if malloc == "system" else [])
    product_bound.main(options)
    if malloc == "retain":
        assert retained == [True] and environments == [product_bound.benchmark.RETAINING_MALLOC]
    else:
        assert retained == [] and environments == [None]
        assert os.environ["KERAS_METAFORMER_MALLOC"] == "system"  # the library's import default is off


@ONCE
def test_onednn_samples_adds_the_environment_it_is_given(monkeypatch):
    import types

    matmul_peak = import_recipe("matmul_peak")
    seen = {}

    def run(command, env, **kwargs):
        seen.update(env)
        return types.SimpleNamespace(returncode=0, stdout="[[0.5]]\n", stderr="")

    monkeypatch.setattr(matmul_peak.subprocess, "run", run)
    product = ((2, 2), (2, 2), False, False, "float32")
    assert matmul_peak.onednn_samples([product], environment={"MALLOC_ARENA_MAX": "1"}) == [[0.5]]
    assert seen["MALLOC_ARENA_MAX"] == "1" and seen["TF_ENABLE_ONEDNN_OPTS"] == "1"


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="a recipe that runs JAX and TensorFlow itself: one run")
def test_product_bound_prints_both_engines_bounds():
    result = run_recipe(
        "--batch",
        "1",
        "--repeats",
        "1",
        "--precisions",
        "bfloat16",
        recipe="product_bound.py",
        env={"KERAS_BACKEND": "jax"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("poolformer_s12, batch 1, bfloat16:")
    assert "| product | rows x k x n | count | XLA (JAX) | oneDNN (TensorFlow) |" in lines
    for label in ("inference", "training step"):
        (row,) = [line for line in lines if line.startswith(f"| **{label}: at most** |")]
        assert len(re.findall(r"\d+\.\d img/s", row)) == 2, row
