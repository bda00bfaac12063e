"""Two JAX processes on loopback train like one device (multiprocess_step.py),
and the fine-tuning recipe runs as two processes."""

import importlib
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from free_ports import free_ports

from keras_metaformer.distribute import process_share

SCRIPT = os.path.join(os.path.dirname(__file__), "multiprocess_step.py")
RECIPES = os.path.join(os.path.dirname(__file__), os.pardir, "recipes")
TIMEOUT = 180
ON_JAX = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="keras.distribution's multi-process jobs run on the JAX backend"
)


def _start(arguments, env):
    """Starts `python ARGUMENTS` on JAX with one CPU device and only `env`'s KERAS_DISTRIBUTION_* variables."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1"
    environment = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS=flags, **env)
    for name in [name for name in environment if name.startswith("KERAS_DISTRIBUTION_")]:
        if name not in env:
            del environment[name]
    return subprocess.Popen(
        [sys.executable, *map(str, arguments)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _job(port, process_id):
    return {
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
        "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
        "KERAS_DISTRIBUTION_PROCESS_ID": str(process_id),
    }


def _run_all(commands):
    """Runs `(arguments, env)` commands at once; all must succeed in TIMEOUT, none outlives the call."""
    processes = []
    try:
        for arguments, env in commands:
            processes.append(_start(arguments, env))
        for process in processes:
            output, _ = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, output[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


@ON_JAX
def test_one_step_on_two_processes_matches_one_device(tmp_path):
    (port,) = free_ports(1)
    # The single-device reference runs beside the job.
    _run_all(
        [([SCRIPT, "single", tmp_path / "single.npz"], {})]
        + [([SCRIPT, "process", tmp_path / f"process{i}.npz"], _job(port, i)) for i in range(2)]
    )
    assert not (tmp_path / "process1.npz").exists()  # only process 0 writes
    reference, distributed = np.load(tmp_path / "single.npz"), np.load(tmp_path / "process0.npz")
    assert reference["moved"] > 1e-3  # the step changed the weights
    assert sorted(distributed.files) == sorted(reference.files) and len(reference.files) > 10
    np.testing.assert_allclose(distributed["loss"], reference["loss"], rtol=1e-5)
    for key in reference.files:
        np.testing.assert_allclose(distributed[key], reference[key], atol=1e-5, rtol=1e-5, err_msg=key)


@ON_JAX
def test_finetune_smoke_on_two_processes_writes_once(tmp_path):
    (port,) = free_ports(1)
    recipe = os.path.join(RECIPES, "finetune.py")
    arguments = [recipe, "--smoke", "--distribution", "data-parallel", "--output", tmp_path]
    _run_all([(arguments, _job(port, i)) for i in range(2)])
    names = {"model.keras", "log.csv", "learning_curves.png"}
    # Process 0 writes the outputs; process 1 the same into its own folder, never into process 0's files.
    assert {path.name for path in tmp_path.iterdir()} == names | {"process-1"}
    assert {path.name for path in (tmp_path / "process-1").iterdir()} == names
    # Both report the global batch's metrics: the same log.
    log = (tmp_path / "log.csv").read_text()
    assert log == (tmp_path / "process-1" / "log.csv").read_text()
    assert len(log.splitlines()) == 1 + 3  # header, 1 + 2 epochs


def test_process_share_splits_every_batch_in_process_order():
    import tensorflow as tf

    dataset = tf.data.Dataset.range(12).batch(4, drop_remainder=True)
    shares = [list(process_share(dataset, 2, index).as_numpy_iterator()) for index in range(2)]
    assert [np.concatenate(parts).tolist() for parts in zip(*shares)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert int(process_share(dataset, 2, 1).cardinality()) == 3  # steps per epoch stay known
    assert process_share(dataset, 1, 0) is dataset


def test_process_share_refuses_batches_it_cannot_split_evenly():
    import tensorflow as tf

    with pytest.raises(ValueError, match="Received batches of size 3"):
        process_share(tf.data.Dataset.range(12).batch(3, drop_remainder=True), 2, 0)
    with pytest.raises(ValueError, match="Received batches of size None"):
        process_share(tf.data.Dataset.range(10).batch(4), 2, 0)  # a last batch of 2


def _training_setup():
    sys.path.insert(0, RECIPES)
    try:
        return importlib.import_module("training_setup")
    finally:
        sys.path.pop(0)


def test_recipes_refuse_a_job_without_data_parallel(monkeypatch):
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    with pytest.raises(SystemExit, match="needs --distribution data-parallel"):
        _training_setup().join_processes("mirrored")


def test_a_job_needs_all_three_variables(monkeypatch):
    from keras_metaformer.distribute import initialize_processes

    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.delenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", raising=False)
    monkeypatch.delenv("KERAS_DISTRIBUTION_PROCESS_ID", raising=False)
    with pytest.raises(RuntimeError, match="missing: KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_PROCESS_ID"):
        initialize_processes()


def test_recipes_put_other_processes_outputs_in_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    training_setup = _training_setup()
    assert training_setup.output_paths(str(tmp_path))["log"] == str(tmp_path / "log.csv")
    assert training_setup.output_paths(str(tmp_path), 1)["log"] == str(tmp_path / "process-1" / "log.csv")
