"""Distributed steps equal one step on one device (distributed_step.py)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from free_ports import free_ports

SCRIPT = os.path.join(os.path.dirname(__file__), "distributed_step.py")
BACKEND = keras.backend.backend()
# One worker runs this module: its module fixtures are expensive to make twice.
pytestmark = pytest.mark.xdist_group("distributed")


def _start(mode, output, env=None):
    environment = dict(os.environ, KERAS_BACKEND=BACKEND, **(env or {}))
    return subprocess.Popen(
        [sys.executable, SCRIPT, mode, str(output)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process):
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]


def _run(mode, output, env=None):
    _finish(_start(mode, output, env))
    return np.load(output)


def _assert_same_step(reference, distributed):
    assert len(reference.files) == len(distributed.files) > 10
    np.testing.assert_allclose(distributed["loss"], reference["loss"], rtol=1e-5)
    for key in reference.files:
        np.testing.assert_allclose(distributed[key], reference[key], atol=1e-5, rtol=1e-5, err_msg=key)


@pytest.fixture(scope="module")
def single_device_step(tmp_path_factory):
    return _run("single", tmp_path_factory.mktemp("single") / "single.npz")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute needs the TensorFlow backend")
def test_mirrored_strategy_on_two_cpus_matches_one_device(single_device_step, tmp_path):
    _assert_same_step(single_device_step, _run("mirrored", tmp_path / "mirrored.npz"))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute needs the TensorFlow backend")
def test_multi_worker_strategy_with_two_processes_matches_one_device(single_device_step, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = [
        _start(
            "multi-worker",
            tmp_path / f"worker{index}.npz",
            {"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})},
        )
        for index in range(2)
    ]
    for process in processes:
        _finish(process)
    assert not (tmp_path / "worker1.npz").exists()  # only the chief writes
    _assert_same_step(single_device_step, np.load(tmp_path / "worker0.npz"))


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on the JAX backend")
def test_data_parallel_on_two_host_devices_matches_one_device(single_device_step, tmp_path):
    _assert_same_step(single_device_step, _run("data-parallel", tmp_path / "data_parallel.npz"))


@pytest.mark.skipif(BACKEND == "tensorflow", reason="checks the error on the other backends")
def test_multi_worker_strategy_explains_it_needs_tensorflow():
    from keras_metaformer.distribute import multi_worker_strategy

    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
        multi_worker_strategy()
