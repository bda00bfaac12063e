"""A small training run that test_training.py kills with SIGKILL and restarts.

    python resumable_training.py DIRECTORY

Trains 4 epochs of 6 steps, slowly enough to be killed mid-epoch, with
`ResumableCheckpoint` and a CSV log in DIRECTORY. Prints the epoch it starts
at and, at the end, the optimizer's step count.
"""

import os
import sys
import time

import keras
import numpy as np

from keras_metaformer.callbacks import ResumableCheckpoint

EPOCHS, STEPS, BATCH = 4, 6, 4


class Slow(keras.callbacks.Callback):
    """Sleeps after every training step, so that a test can kill the run mid-epoch."""

    def __init__(self, seconds=0.25):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)


def main(directory):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(STEPS * BATCH, 8)).astype("float32")
    labels = rng.normal(size=(STEPS * BATCH, 1)).astype("float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    checkpoint = ResumableCheckpoint(os.path.join(directory, "checkpoints"))
    initial_epoch = checkpoint.restore(model)
    print(f"initial_epoch={initial_epoch}", flush=True)
    model.fit(
        images,
        labels,
        batch_size=BATCH,
        epochs=EPOCHS,
        initial_epoch=initial_epoch,
        verbose=0,
        callbacks=[checkpoint, keras.callbacks.CSVLogger(os.path.join(directory, "log.csv"), append=True), Slow()],
    )
    print(f"iterations={int(model.optimizer.iterations)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
