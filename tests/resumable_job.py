"""A two-worker training job that test_fault_tolerance.py kills with SIGKILL and restarts.

    python resumable_job.py DISTRIBUTION OUTPUT
    python resumable_job.py DISTRIBUTION --minimum VALUE

DISTRIBUTION is `multi-worker` (TensorFlow, the cluster in TF_CONFIG) or
`data-parallel` (JAX, the job in KERAS_DISTRIBUTION_*). Every worker runs
this script. It uses the training recipes' own setup (processes,
distribution scope, per-worker output folders, checkpoint and log), and
trains a small MetaFormer for 4 epochs of 6 steps on a global batch of 8,
slowly enough to be killed mid-epoch. It prints the epoch it resumes after
and, at the end, the optimizer's step count. With `--minimum`, each worker
offers VALUE plus its worker index to `job_minimum` and prints the answer.
"""

import argparse
import json
import os
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "recipes"))

import training_setup
from resumable_training import Slow

import keras_metaformer
from keras_metaformer.distribute import job_minimum
from keras_metaformer.distribute import process_share
from keras_metaformer.training import adamw

EPOCHS, STEPS, BATCH = 4, 6, 8


def dataset(args):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (STEPS * BATCH, 32, 32, 3)).astype("float32")
    labels = np.eye(4, dtype="float32")[rng.integers(0, 4, STEPS * BATCH)]
    # Global batches, in the same order in every worker and every run: TF's
    # auto-sharding, or process_share on JAX, gives each worker its part.
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH, drop_remainder=True)
    return process_share(batches, args.num_processes, args.process_id)


def main(distribution, output, value=None):
    args = argparse.Namespace(malloc="system", distribution=distribution, batch_size=BATCH, seed=0, precision="float32")
    scope = training_setup.configure(args)
    if output == "--minimum":
        with scope:
            worker = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", args.process_id)
            print(f"minimum={job_minimum(int(value) + worker)}", flush=True)
        return
    paths = training_setup.output_paths(output, args.process_id)
    train = dataset(args)
    with scope:
        model = keras_metaformer.MetaFormer(
            depths=(1, 1), dims=(8, 16), weights=None, input_shape=(32, 32, 3), classes=4, classifier_activation=None
        )
        model.compile(adamw(model, 1e-3), keras.losses.CategoricalCrossentropy(from_logits=True))
        checkpoint = training_setup.open_checkpoint(paths, args)
        initial_epoch = checkpoint.restore(model)
        print(f"initial_epoch={initial_epoch}", flush=True)
        model.fit(
            train,
            epochs=EPOCHS,
            initial_epoch=initial_epoch,
            verbose=0,
            callbacks=[keras.callbacks.CSVLogger(paths["log"], append=True), checkpoint, Slow(0.3)],
        )
    print(f"iterations={int(keras.ops.convert_to_numpy(model.optimizer.iterations.value))}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
