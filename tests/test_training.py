"""Training: precision policies, XLA, gradient checkpointing, the optimiser recipe, and resuming after SIGKILL."""

import csv
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_metaformer
from keras_metaformer.callbacks import ResumableCheckpoint
from keras_metaformer.training import adamw

HERE = os.path.dirname(__file__)


def _batch():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    return images, np.eye(3, dtype="float32")[[0, 1, 2, 1]]


def _model(weights=None):
    model = keras_metaformer.MetaFormer(
        depths=(1, 1),
        dims=(16, 32),
        weights=None,
        input_shape=(32, 32, 3),
        classes=3,
        classifier_activation=None,
    )
    if weights is not None:
        model.set_weights(weights)
    return model


# --- Gradient checkpointing ------------------------------------------------------

REMAT_ARCHITECTURE = dict(
    depths=(1, 1, 2, 1),
    dims=(8, 16, 24, 32),
    token_mixers=("sepconv", "pool", "attention", "random"),
    norm=("layer", "group", "layer", "layer"),
    res_scale_init_value=(None, None, 1.0, 1.0),
    drop_path_rate=0.3,
    input_shape=(32, 32, 3),
    classes=3,
    classifier_activation=None,
    weights=None,
)
IS_JAX = keras.backend.backend() == "jax"
REMAT_SCOPES = {
    "builder switch": None,
    "list_of_layers": dict(mode="list_of_layers", layer_names=["stage0_block0", "stage2_block1", "stage3_block0"]),
    "full": dict(mode="full"),
    "larger_than": dict(mode="larger_than", output_size_threshold=4 * 8 * 8 * 16),
    "activations": dict(mode="activations"),
}


def _seed_states(model):
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


@functools.cache
def _reference_step():
    """Weights and seed states of a model without remat, and its step's loss and updated weights."""
    reference = keras_metaformer.MetaFormer(**REMAT_ARCHITECTURE)
    weights = reference.get_weights()  # without the seed generators' states
    seeds = [keras.ops.convert_to_numpy(state) for state in _seed_states(reference)]
    return weights, seeds, *_sgd_step(reference, weights, seeds)


def _sgd_step(model, weights, seeds):
    """The loss of one SGD step (rate 1, so the update is minus the gradient) and the weights after it."""
    model.set_weights(weights)
    for state, value in zip(_seed_states(model), seeds, strict=True):  # the same stochastic depth draws
        state.assign(value)
    model.compile(keras.optimizers.SGD(1.0), keras.losses.CategoricalCrossentropy(from_logits=True))
    loss = float(model.train_on_batch(*_batch()))
    return loss, [keras.ops.convert_to_numpy(w) for w in model.weights]


@pytest.mark.parametrize(
    "scope",
    [
        "builder switch",
        "list_of_layers",
        "activations",
        *(
            pytest.param(mode, marks=pytest.mark.skipif(not IS_JAX, reason="Keras trains it on JAX only: next test"))
            for mode in ("full", "larger_than")
        ),
    ],
)
def test_gradient_checkpointing_gives_the_same_step(scope):
    weights, seeds, expected_loss, expected = _reference_step()
    assert seeds
    if scope == "builder switch":
        model = keras_metaformer.MetaFormer(**REMAT_ARCHITECTURE, gradient_checkpointing=True)
    else:
        with keras.RematScope(**REMAT_SCOPES[scope]):
            model = keras_metaformer.MetaFormer(**REMAT_ARCHITECTURE)
    rematerialized = [layer.name for layer in model.layers if layer._remat_mode is not None]
    if scope == "builder switch":  # each block, in a scope of its own
        assert rematerialized == [f"stage{s}_block{b}" for s, b in ((0, 0), (1, 0), (2, 0), (2, 1), (3, 0))]
    else:  # the scope reaches every layer, but not the model (a whole-model checkpoint saves nothing)
        assert rematerialized == [layer.name for layer in model.layers] and model._remat_mode.mode is None
    loss, updated = _sgd_step(model, weights, seeds)
    assert loss == pytest.approx(expected_loss, abs=1e-5)
    for value, reference_value in zip(updated, expected):
        np.testing.assert_allclose(value, reference_value, rtol=0, atol=1e-5)


@pytest.mark.skipif(IS_JAX, reason="JAX trains every mode (test above)")
@pytest.mark.parametrize("mode", ["full", "larger_than"])
def test_remat_modes_that_keras_cannot_train_on_tensorflow_are_refused_up_front(mode):
    with (
        keras.RematScope(mode=mode),
        pytest.raises(ValueError, match=rf"mode='{mode}'\) cannot train on TensorFlow.*gradient_checkpointing=True"),
    ):
        keras_metaformer.MetaFormer(**REMAT_ARCHITECTURE)


def _first_step_loss(policy, weights, jit_compile):
    keras.config.set_dtype_policy(policy)
    model = _model(weights)
    model.compile(
        keras.optimizers.SGD(0.01), keras.losses.CategoricalCrossentropy(from_logits=True), jit_compile=jit_compile
    )
    images, labels = _batch()
    # The loss is computed before the update: it measures the forward pass
    # and loss under the policy, and the step must not fail or overflow.
    loss = float(model.train_on_batch(images, labels))
    after = float(model.evaluate(images, labels, verbose=0))
    return loss, after, model


@pytest.mark.parametrize("policy, tolerance", [("mixed_float16", 5e-3), ("mixed_bfloat16", 3e-2)])
def test_mixed_precision_training_step_is_finite_and_close_to_float32(policy, tolerance):
    # Seeded, so the result does not depend on which tests ran before.
    keras.utils.set_random_seed(0)
    weights = _model().get_weights()
    reference, reference_after, _ = _first_step_loss("float32", weights, "auto")
    loss, after, model = _first_step_loss(policy, weights, "auto")
    assert np.isfinite(loss) and np.isfinite(after)
    assert loss == pytest.approx(reference, rel=tolerance)
    optimizer = model.optimizer
    if policy == "mixed_float16" and float(optimizer.dynamic_scale) < optimizer.initial_scale:
        # Keras wraps the optimiser in dynamic loss scaling, which skips a
        # step whose scaled float16 gradients overflow (often the first, at
        # scale 2**15) and halves the scale: the weights must be untouched.
        assert float(optimizer.dynamic_scale) == optimizer.initial_scale / 2
        for before, now in zip(weights, model.get_weights()):
            np.testing.assert_array_equal(now, before)
    else:
        assert after == pytest.approx(reference_after, rel=3 * tolerance)


def test_xla_and_eager_graph_agree():
    images, _labels = _batch()
    model = _model()
    outputs = {}
    for jit in (True, False):
        model.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True), jit_compile=jit)
        outputs[jit] = model.predict(images, verbose=0)
    np.testing.assert_allclose(outputs[True], outputs[False], atol=1e-5, rtol=1e-5)
    weights = model.get_weights()
    losses = [_first_step_loss("float32", weights, jit)[:2] for jit in (True, False)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_weight_decay_skips_norms_biases_and_layer_scales():
    model = _model()
    optimizer = adamw(model, 1e-3)
    decayed = {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    kernels = {v.path for v in model.trainable_variables if v.path.endswith("/kernel")}
    assert len(kernels) > 5 and decayed == kernels
    assert any("layer_scale" in v.path for v in model.trainable_variables)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="JAX's trainer builds the optimizer itself")
def test_adamw_is_built_in_the_models_distribution_scope_and_trains():
    import tensorflow as tf

    images, labels = _batch()
    model = _model()
    optimizer = adamw(model, 1e-3)
    assert optimizer.built and len(optimizer.variables) > 2 * len(model.trainable_variables)
    model.compile(optimizer, keras.losses.CategoricalCrossentropy(from_logits=True))
    assert np.isfinite(model.train_on_batch(images, labels))
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = _model()
        optimizer = adamw(model, 1e-3)
        model.compile(optimizer, keras.losses.CategoricalCrossentropy(from_logits=True))
    assert all(isinstance(v.value, tf.distribute.DistributedValues) for v in optimizer.variables)
    assert np.isfinite(model.train_on_batch(images, labels))


def test_a_run_killed_mid_epoch_resumes_without_repeating_epochs(tmp_path):
    command = [sys.executable, os.path.join(HERE, "resumable_training.py"), str(tmp_path)]
    state = tmp_path / "checkpoints" / "state.json"
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    # Kill once two epochs are saved, a few steps into the third.
    while time.time() < deadline and run.poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.6)
    assert run.poll() is None, "the run ended before it could be killed:\n" + run.stdout.read()
    run.send_signal(signal.SIGKILL)
    run.wait()
    saved = json.loads(state.read_text())
    assert saved["epoch"] in (2, 3)
    # The checkpoint left behind is whole: it loads into a fresh model.
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    left_behind = ResumableCheckpoint(str(tmp_path / "checkpoints"))
    assert left_behind.saved_epoch() == saved["epoch"]
    assert left_behind.restore(model) == saved["epoch"]

    finished = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"initial_epoch={saved['epoch']}" in finished.stdout
    assert "iterations=24" in finished.stdout  # 4 epochs x 6 steps, none repeated
    with open(tmp_path / "log.csv") as file:
        epochs = [int(row["epoch"]) for row in csv.DictReader(file)]
    assert epochs == [0, 1, 2, 3]
    assert json.loads(state.read_text())["epoch"] == 4
    leftovers = [
        name for name in os.listdir(tmp_path / "checkpoints") if name not in ("state.json", "epoch-0004.weights.h5")
    ]
    assert leftovers == []


# --- Restoring: atomic, and clear about what is wrong ---------------------------


def _dense_model(outputs=1):
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(outputs)]
    )
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    return model


def _trained(model, directory, epochs=1):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype("float32")
    y = rng.normal(size=(16, model.layers[-1].units)).astype("float32")
    checkpoint = ResumableCheckpoint(str(directory))
    model.fit(x, y, epochs=epochs, batch_size=4, callbacks=[checkpoint], verbose=0)
    return checkpoint


def _state(model):
    return [keras.ops.convert_to_numpy(v).copy() for v in [*model.variables, *model.optimizer.variables]]


def _assert_unchanged(before, model):
    after = _state(model)
    assert len(before) == len(after)
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)


def test_restoring_a_checkpoint_of_another_model_changes_nothing(tmp_path):
    checkpoint = _trained(_dense_model(outputs=1), tmp_path)
    # The first layer fits, the last does not: Keras alone would load the first.
    model = _dense_model(outputs=2)
    _trained(model, tmp_path / "other")  # optimizer state of its own
    before = _state(model)
    with pytest.raises(ValueError) as error:
        checkpoint.restore(model)
    message = str(error.value)
    weights = tmp_path / "epoch-0001.weights.h5"
    assert f"Cannot resume from {weights} (epoch 1): it does not match model" in message
    assert "so nothing was changed" in message
    assert "Shape mismatches (" in message
    assert re.search(r"\n  layers/dense_1/vars/0 \(layer 'dense_\d+'\): file \(16, 1\), model \(16, 2\)\n", message)
    assert "optimizer/vars/" in message  # Adam's moments of that layer too
    _assert_unchanged(before, model)


def test_a_refused_restore_leaves_a_never_trained_optimizer_unbuilt(tmp_path):
    trained = _dense_model(outputs=1)
    checkpoint = _trained(trained, tmp_path)
    model = _dense_model(outputs=2)  # compiled, never trained
    before = _state(model)
    assert not model.optimizer.built and len(before) == 6  # 4 weights, iterations, learning rate
    with pytest.raises(ValueError, match="does not match model"):
        checkpoint.restore(model)
    assert not model.optimizer.built
    _assert_unchanged(before, model)
    fitting = _dense_model(outputs=1)  # and a checkpoint that fits still loads into such a model
    assert checkpoint.restore(fitting) == 1
    _assert_unchanged(_state(trained), fitting)  # weights and Adam's moments, as saved


def test_a_restore_that_fails_while_loading_puts_every_weight_back(tmp_path, monkeypatch):
    checkpoint = _trained(_dense_model(), tmp_path)
    model = _dense_model()
    _trained(model, tmp_path / "other")
    before = _state(model)
    load_weights = model.load_weights

    def load_then_fail(path):  # a disk error halfway through, say
        load_weights(path)
        raise OSError("read error")

    monkeypatch.setattr(model, "load_weights", load_then_fail)
    with pytest.raises(OSError, match="read error"):
        checkpoint.restore(model)
    _assert_unchanged(before, model)
    monkeypatch.undo()
    assert checkpoint.restore(model) == 1  # and a good restore still loads
    assert not np.array_equal(_state(model)[0], before[0])


@pytest.mark.parametrize(
    "content, error_type, message",
    [
        ("{not json", ValueError, r"Cannot read the checkpoint state file {state} \(Expecting property name"),
        ('{"epoch": 1}', ValueError, r"The checkpoint state file {state} is malformed\. Expected \{{\"epoch\""),
        ('{"epoch": "1", "weights": "epoch-0001.weights.h5"}', ValueError, r"{state} is malformed"),
        ('["epoch", 1]', ValueError, r"{state} is malformed.*Received: \[\"epoch\", 1\]"),
        (
            '{"epoch": 3, "weights": "epoch-0003.weights.h5"}',
            FileNotFoundError,
            r"{state} names the weights file {directory}/epoch-0003\.weights\.h5, which does not exist",
        ),
    ],
    ids=["not-json", "missing-key", "epoch-not-int", "not-a-dict", "missing-weights-file"],
)
def test_a_corrupt_state_file_is_named(tmp_path, content, error_type, message):
    checkpoint = _trained(_dense_model(), tmp_path)
    (tmp_path / "state.json").write_text(content)
    model = _dense_model()
    expected = message.format(state=re.escape(str(tmp_path / "state.json")), directory=re.escape(str(tmp_path)))
    with pytest.raises(error_type, match=expected + ".*another directory than"):
        checkpoint.restore(model)
    with pytest.raises(error_type, match=expected):  # asking only which epoch reads the same file
        checkpoint.saved_epoch()


def test_restoring_into_an_uncompiled_model_says_to_compile_first(tmp_path):
    checkpoint = _trained(_dense_model(), tmp_path)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.variables]
    compile_first = r"it is not compiled.*Call `model.compile\(optimizer=\.\.\., loss=\.\.\.\)` first"
    with pytest.raises(ValueError, match=compile_first):
        checkpoint.restore(model)
    for old, new in zip(before, model.variables):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


# --- A job of several workers: the epoch every worker holds ---------------------


class _RecordWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.after_epoch = {}

    def on_epoch_end(self, epoch, logs=None):
        self.after_epoch[epoch + 1] = [keras.ops.convert_to_numpy(v).copy() for v in self.model.weights]


def test_a_distributed_checkpoint_keeps_two_epochs_and_restores_the_one_every_worker_holds(tmp_path, monkeypatch):
    from keras_metaformer import distribute

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 8)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")
    model, recorded = _dense_model(), _RecordWeights()
    checkpoint = ResumableCheckpoint(str(tmp_path), distributed=True)
    model.fit(x, y, epochs=3, batch_size=4, callbacks=[checkpoint, recorded], verbose=0)
    assert sorted(os.listdir(tmp_path)) == ["epoch-0002.weights.h5", "epoch-0003.weights.h5", "state.json"]

    # Another worker was killed while saving epoch 3: the job resumes after epoch 2.
    monkeypatch.setattr(distribute, "job_minimum", lambda value: min(value, 2))
    assert checkpoint.saved_epoch() == 2
    model = _dense_model()
    assert checkpoint.restore(model) == 2
    for expected, variable in zip(recorded.after_epoch[2], model.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), expected)

    # Two epochs apart cannot happen in a synchronous job; if the files say so, the error says what to do.
    monkeypatch.setattr(distribute, "job_minimum", lambda value: 1)
    with pytest.raises(FileNotFoundError, match=r"epoch 3 and no .*epoch-0001\.weights\.h5.*at most one epoch apart"):
        checkpoint.restore(_dense_model())


def test_a_single_process_checkpoint_keeps_one_epoch_and_asks_no_other_worker(tmp_path, monkeypatch):
    from keras_metaformer import distribute

    def no_job(value):
        raise AssertionError("a single-process checkpoint asked the job")

    monkeypatch.setattr(distribute, "job_minimum", no_job)
    checkpoint = _trained(_dense_model(), tmp_path, epochs=3)
    assert sorted(os.listdir(tmp_path)) == ["epoch-0003.weights.h5", "state.json"]
    assert checkpoint.restore(_dense_model()) == 3
