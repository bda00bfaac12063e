"""A worker of a two-worker job killed mid-epoch: the restarted job resumes
where it stopped (resumable_job.py), on TensorFlow's MultiWorkerMirroredStrategy
and on JAX processes, whichever backend the suite runs on."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import pytest
from free_ports import free_ports

SCRIPT = os.path.join(os.path.dirname(__file__), "resumable_job.py")
BACKEND = keras.backend.backend()
DISTRIBUTION = {"tensorflow": "multi-worker", "jax": "data-parallel"}.get(BACKEND)
EPOCHS, STEPS = 4, 6  # resumable_job.py's
TIMEOUT = 240
pytestmark = pytest.mark.skipif(DISTRIBUTION is None, reason="multi-worker jobs run on TensorFlow or JAX")


def _start_job(*arguments):
    """Both workers of a fresh job on loopback, each with one CPU device."""
    ports = free_ports(2)
    workers = []
    for index in range(2):
        environment = {name: value for name, value in os.environ.items() if not name.startswith("KERAS_DISTRIBUTION_")}
        environment.pop("TF_CONFIG", None)
        if BACKEND == "tensorflow":
            cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
            environment["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        else:
            environment.update(
                XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1",
                KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{ports[0]}",
                KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                KERAS_DISTRIBUTION_PROCESS_ID=str(index),
            )
        command = [sys.executable, SCRIPT, DISTRIBUTION, *map(str, arguments)]
        workers.append(
            subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    return workers


def _finish(workers):
    """Every worker's output; each must succeed within TIMEOUT."""
    outputs = []
    try:
        for worker in workers:
            output, _ = worker.communicate(timeout=TIMEOUT)
            assert worker.returncode == 0, output[-3000:]
            outputs.append(output)
    finally:
        _kill(workers)
    return outputs


def _kill(workers):
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
        worker.communicate()


def _saved_epoch(folder):
    state = folder / "checkpoints" / "state.json"
    return json.loads(state.read_text())["epoch"] if state.exists() else 0


def _logged_epochs(folder):
    with open(folder / "log.csv") as file:
        return [int(row["epoch"]) for row in csv.DictReader(file)]


def test_a_job_resumes_after_a_worker_is_killed_mid_epoch(tmp_path):
    folders = [tmp_path, tmp_path / ("worker-1" if BACKEND == "tensorflow" else "process-1")]
    workers = _start_job(tmp_path)
    try:
        # Both workers have saved epoch 2; a few steps into epoch 3, worker 1 dies.
        deadline = time.time() + TIMEOUT
        while min(_saved_epoch(folder) for folder in folders) < 2 and time.time() < deadline:
            assert all(worker.poll() is None for worker in workers), workers[0].communicate()[0][-3000:]
            time.sleep(0.05)
        time.sleep(0.9)  # an epoch's 6 steps take at least 1.8 s
        assert all(worker.poll() is None for worker in workers), "the job ended before it could be killed"
        workers[1].send_signal(signal.SIGKILL)
    finally:
        # The scheduler restarts the whole job: the survivor would stop on its
        # own (TF within seconds, JAX at its coordinator's heartbeat timeout).
        _kill(workers)
    assert [_saved_epoch(folder) for folder in folders] == [2, 2]  # no finished epoch lost
    assert _logged_epochs(tmp_path) == [0, 1]

    outputs = _finish(_start_job(tmp_path))
    for output, folder in zip(outputs, folders):
        assert "initial_epoch=2" in output, output[-3000:]
        assert f"iterations={EPOCHS * STEPS}" in output  # no step repeated or skipped
        assert _logged_epochs(folder) == [0, 1, 2, 3]
        assert _saved_epoch(folder) == EPOCHS


def test_workers_agree_on_the_smallest_value():
    outputs = _finish(_start_job("--minimum", 5))
    assert all("minimum=5" in output for output in outputs), [output[-1000:] for output in outputs]
