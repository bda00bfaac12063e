"""Checkpoints a killed training run resumes from, written atomically."""

import json
import os

import keras

STATE_FILE = "state.json"


def _atomic_write_json(path, value):
    partial = path + ".partial"
    with open(partial, "w") as file:
        json.dump(value, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves model and optimizer state after every epoch, for resuming.

    Like `keras.callbacks.BackupAndRestore`, but a kill at any instant
    (SIGKILL, preemption) leaves a loadable checkpoint: weights go to a new
    file that is renamed into place once complete, and only then does the
    small `state.json` (also renamed into place) point to it. Keras' callback
    overwrites its weights file in place, and writes its epoch counter
    separately, so a kill during the write can corrupt the one or mismatch
    the other. Resume with `fit(..., initial_epoch=checkpoint.restore(model))`.

    Example:

    >>> import tempfile, numpy as np, keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> scratch = tempfile.TemporaryDirectory()
    >>> checkpoint = ResumableCheckpoint(scratch.name)
    >>> start = checkpoint.restore(model)  # 0: nothing saved yet
    >>> _ = model.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=2,
    ...               initial_epoch=start, callbacks=[checkpoint], verbose=0)
    >>> checkpoint.restore(model)  # the next run would start at epoch 2
    2
    >>> scratch.cleanup()
    """

    def __init__(self, directory):
        super().__init__()
        self.directory = directory

    @property
    def state_path(self):
        return os.path.join(self.directory, STATE_FILE)

    def restore(self, model):
        """Loads the last complete checkpoint into `model`; returns its epoch.

        `model` must be compiled, so that the optimizer state is restored
        too. Returns 0 when there is no checkpoint.
        """
        if not os.path.exists(self.state_path):
            return 0
        with open(self.state_path) as file:
            state = json.load(file)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(self.directory, state["weights"]))
        return state["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        partial = os.path.join(self.directory, name + ".partial.weights.h5")
        self.model.save_weights(partial, overwrite=True)
        os.replace(partial, os.path.join(self.directory, name))
        _atomic_write_json(self.state_path, {"epoch": epoch + 1, "weights": name})
        for old in os.listdir(self.directory):
            if old != name and old != STATE_FILE and old.startswith("epoch-"):
                os.remove(os.path.join(self.directory, old))
