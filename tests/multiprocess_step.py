"""One SGD step of a tiny MetaFormer, on one device or on JAX processes.

Run as a subprocess by test_multiprocess.py, since a JAX job must be joined
before JAX computes anything:

    python multiprocess_step.py single OUTPUT.npz
    python multiprocess_step.py process OUTPUT.npz   # with KERAS_DISTRIBUTION_* set

`single` takes one step on the whole global batch of 8 on one device.
`process` joins the job named by the KERAS_DISTRIBUTION_* variables
(`keras_metaformer.distribute.initialize_processes`), spreads the model over
every process's devices with `keras.distribution.DataParallel`, and feeds
this process's half of the same global batch; Keras assembles the global
batch from the halves. Both start from the same weights, drawn with NumPy.
OUTPUT gets the updated weights, the loss and how far the
weights moved; only process 0 writes it.
"""

import sys

import keras
import numpy as np

import keras_metaformer
from keras_metaformer.distribute import initialize_processes

GLOBAL_BATCH = 8


def main(mode, output):
    num_processes, process_id = initialize_processes() if mode == "process" else (1, 0)
    if mode == "process":
        devices = keras.distribution.list_devices()
        assert len(devices) == num_processes == 2, (devices, num_processes)
        # Each process feeds its own half: Keras must not shard it again.
        distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
        keras.distribution.set_distribution(distribution)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (GLOBAL_BATCH, 32, 32, 3)).astype("float32")
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, GLOBAL_BATCH)]
    model = keras_metaformer.MetaFormer(
        depths=(1, 1), dims=(8, 16), input_shape=(32, 32, 3), classes=3, weights=None, classifier_activation=None
    )
    initial = [rng.normal(0, 0.2, w.shape).astype("float32") for w in model.get_weights()]
    model.set_weights(initial)
    # SGD, not Adam: Adam's first step is nearly sign(gradient), which would
    # hide a gradient summed instead of averaged over processes.
    model.compile(keras.optimizers.SGD(0.5), keras.losses.CategoricalCrossentropy(from_logits=True))
    share = GLOBAL_BATCH // num_processes
    local = slice(process_id * share, (process_id + 1) * share)
    history = model.fit(images[local], labels[local], batch_size=share, epochs=1, shuffle=False, verbose=0)
    if process_id == 0:
        weights = model.get_weights()
        moved = max(np.abs(after - before).max() for after, before in zip(weights, initial))
        np.savez(output, *weights, loss=history.history["loss"][0], moved=moved)


if __name__ == "__main__":
    main(*sys.argv[1:])
