"""One SGD step of a small MetaFormer, on one device or distributed.

Run as a subprocess by test_training.py, since device counts and cluster
settings must be fixed before TensorFlow or JAX starts:

    python distributed_step.py MODE OUTPUT.npz

MODE is `single`, `mirrored` (2 logical CPUs, TF), `multi-worker` (TF,
cluster from TF_CONFIG) or `data-parallel` (2 host devices, JAX). Every mode
starts from the same weights (drawn with NumPy, independent of framework
seeds) and takes one step on the same global batch of 8; OUTPUT gets the
updated weights, written by the chief only.
"""

import json
import os
import sys

MODE, OUTPUT = sys.argv[1], sys.argv[2]
if MODE == "data-parallel":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"

import contextlib  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_metaformer  # noqa: E402


def make_strategy():
    """The tf.distribute strategy of MODE, or None (JAX's is set globally)."""
    if MODE == "single":
        return None
    if MODE == "data-parallel":
        devices = keras.distribution.list_devices("cpu")
        assert len(devices) == 2, devices
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return None
    import tensorflow as tf

    if MODE == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        from keras_metaformer.distribute import multi_worker_strategy

        strategy = multi_worker_strategy()
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    return strategy


def main():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    labels = np.eye(4, dtype="float32")[rng.integers(0, 4, 8)]
    strategy = make_strategy()
    # Scopes are single-use: a fresh one to build in, another to fit in.
    scope = strategy.scope if strategy else contextlib.nullcontext
    with scope():
        model = keras_metaformer.MetaFormer(
            depths=(1, 1),
            dims=(8, 16),
            weights=None,
            input_shape=(32, 32, 3),
            classes=4,
            classifier_activation=None,
        )
        model.set_weights([rng.normal(0, 0.2, w.shape).astype("float32") for w in model.get_weights()])
        # SGD, not Adam: Adam's first step is nearly sign(gradient), which
        # would hide a gradient summed instead of averaged over replicas.
        model.compile(keras.optimizers.SGD(0.5), keras.losses.CategoricalCrossentropy(from_logits=True))
    if MODE in ("mirrored", "multi-worker"):
        import tensorflow as tf

        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
        options = tf.data.Options()
        # Mirrored: the strategy splits each global batch across replicas.
        # Multi-worker: every worker reads the same global batches and keeps
        # its share of each (DATA sharding), as a user's pipeline would.
        policy = tf.data.experimental.AutoShardPolicy
        options.experimental_distribute.auto_shard_policy = policy.DATA if MODE == "multi-worker" else policy.OFF
        dataset = dataset.with_options(options)
        with scope():
            history = model.fit(dataset, epochs=1, verbose=0)
    else:
        history = model.fit(images, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    if task.get("index", 0) == 0:
        np.savez(OUTPUT, *model.get_weights(), loss=history.history["loss"][0])


if __name__ == "__main__":
    main()
