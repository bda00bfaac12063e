"""Checkpoints a killed training run resumes from, written atomically."""

import json
import os

import keras

from keras_metaformer.weights.resolve import keras_weights_mismatch

STATE_FILE = "state.json"


def _weights_name(epoch):
    return f"epoch-{epoch:04d}.weights.h5"


def _atomic_write_json(path, value):
    partial = path + ".partial"
    with open(partial, "w") as file:
        json.dump(value, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def _checkpoint_mismatch(model, weights_path):
    """`keras_weights_mismatch` against the model and its optimizer as built for training.

    The optimizer of a compiled model that never trained is not built yet:
    it has no slots (Adam's moments), so the layout `save_weights` writes
    lacks the ones every checkpoint holds. The comparison uses a built copy
    of it (from its config), so that a refused checkpoint leaves the user's
    optimizer as it was.
    """
    optimizer = model.optimizer
    if optimizer.built:
        return keras_weights_mismatch(model, weights_path)
    built = optimizer.__class__.from_config(optimizer.get_config())
    built.build(model.trainable_variables)
    model.optimizer = built  # only while the layout is written
    try:
        return keras_weights_mismatch(model, weights_path)
    finally:
        model.optimizer = optimizer


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves model and optimizer state after every epoch, for resuming.

    Like `keras.callbacks.BackupAndRestore`, but a kill at any instant
    (SIGKILL, preemption) leaves a loadable checkpoint: weights go to a new
    file that is renamed into place once complete, and only then does the
    small `state.json` (also renamed into place) point to it. Keras' callback
    overwrites its weights file in place, and writes its epoch counter
    separately, so a kill during the write can corrupt the one or mismatch
    the other. Resume with `fit(..., initial_epoch=checkpoint.restore(model))`.

    In a job of several workers (TF `MultiWorkerMirroredStrategy`, several
    JAX processes), each worker checkpoints into its own `directory`; pass
    `distributed=True`, and create and restore the checkpoint inside the
    strategy's scope. A worker killed while saving epoch N+1 restarts with
    epoch N, while the others hold N+1; so each keeps the last two epochs,
    and `saved_epoch()` and `restore()` use the latest epoch that every
    worker holds (`keras_metaformer.distribute.job_minimum`).

    Example:

    >>> import tempfile, numpy as np, keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> scratch = tempfile.TemporaryDirectory()
    >>> checkpoint = ResumableCheckpoint(scratch.name)
    >>> start = checkpoint.restore(model)  # 0: nothing saved yet
    >>> _ = model.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=2,
    ...               initial_epoch=start, callbacks=[checkpoint], verbose=0)
    >>> checkpoint.saved_epoch()  # the next run would start at epoch 2
    2
    >>> checkpoint.restore(model)
    2
    >>> scratch.cleanup()
    """

    def __init__(self, directory, distributed=False):
        super().__init__()
        self.directory = directory
        self.distributed = distributed

    @property
    def state_path(self):
        return os.path.join(self.directory, STATE_FILE)

    def saved_epoch(self):
        """The epoch the last complete checkpoint was saved after; 0 if none.

        Reads only `state.json`, not the weights: a training run with phases
        that compile different optimizers asks which phase the checkpoint
        belongs to before restoring it into that phase's model.
        """
        epoch = self._read_state()[0] if os.path.exists(self.state_path) else 0
        if self.distributed:
            from keras_metaformer.distribute import job_minimum

            epoch = job_minimum(epoch)
        return epoch

    def restore(self, model):
        """Loads the last complete checkpoint into `model`; returns its epoch.

        `model` must be compiled, so that the optimizer state is restored
        too. Returns 0 when there is no checkpoint. Restoring is atomic: a
        checkpoint that does not fit the model raises a `ValueError` listing
        the differences, and on any error neither the model's weights nor
        the optimizer's variables change; a refused checkpoint leaves an
        optimizer that was never built unbuilt.
        """
        if getattr(model, "optimizer", None) is None:
            raise ValueError(
                f"Cannot restore a checkpoint into model {model.name!r}: it is not "
                "compiled, and the checkpoint holds the optimizer state too. Call "
                "`model.compile(optimizer=..., loss=...)` first, then "
                "`checkpoint.restore(model)`."
            )
        epoch = self.saved_epoch()
        if epoch == 0:
            return 0
        weights_path = self._weights_path(epoch)
        listing = _checkpoint_mismatch(model, weights_path)
        if listing:
            raise ValueError(
                f"Cannot resume from {weights_path} (epoch {epoch}): it does not "
                f"match model {model.name!r} and its optimizer, so nothing was "
                "changed. Resume with the model and optimizer that wrote it, or "
                f"give ResumableCheckpoint another directory than {self.directory} "
                "to train from epoch 0." + listing
            )
        if not model.optimizer.built:  # compiled, never trained: its slots are what the file fills
            model.optimizer.build(model.trainable_variables)
        variables = list({id(v): v for v in [*model.variables, *model.optimizer.variables]}.values())
        saved = [keras.ops.convert_to_numpy(variable) for variable in variables]
        try:
            model.load_weights(weights_path)
        except BaseException:
            for variable, value in zip(variables, saved):
                variable.assign(value)
            raise
        return epoch

    def _read_state(self):
        """`(epoch, weights path)` from `state.json`, or an error naming it."""
        fix = (
            f"ResumableCheckpoint writes it after each epoch; restore it, or give "
            f"ResumableCheckpoint another directory than {self.directory} to "
            "train from epoch 0."
        )
        try:
            with open(self.state_path) as file:
                state = json.load(file)
        except (OSError, ValueError) as error:  # ValueError: not JSON, not UTF-8
            raise ValueError(f"Cannot read the checkpoint state file {self.state_path} ({error}). {fix}") from None
        epoch = state.get("epoch") if isinstance(state, dict) else None
        name = state.get("weights") if isinstance(state, dict) else None
        valid_epoch = isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0
        valid_name = isinstance(name, str) and name and os.path.basename(name) == name
        if not (valid_epoch and valid_name):
            raise ValueError(
                f"The checkpoint state file {self.state_path} is malformed. Expected "
                '{"epoch": <an int >= 0>, "weights": "<a file name in that folder>"}. '
                f"Received: {json.dumps(state)[:200]}. {fix}"
            )
        weights_path = os.path.join(self.directory, name)
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(
                f"The checkpoint state file {self.state_path} names the weights file "
                f"{weights_path}, which does not exist. {fix}"
            )
        return epoch, weights_path

    def _weights_path(self, epoch):
        """The weights file of `epoch`: the one `state.json` names, or the one kept before it."""
        latest, latest_path = self._read_state()
        if epoch == latest:
            return latest_path
        path = os.path.join(self.directory, _weights_name(epoch))
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"The job resumes after epoch {epoch}, the latest that every worker holds, but this "
                f"worker's checkpoint folder {self.directory} has epoch {latest} and no {path}. Workers "
                "keep their last two epochs, so they can be at most one epoch apart; were the folders "
                "copied or deleted? Restore the folders, or delete every worker's checkpoint folder to "
                "train from epoch 0."
            )
        return path

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        name = _weights_name(epoch + 1)
        # A distributed job keeps the epoch before too: see the class docstring.
        keep = {name, STATE_FILE, _weights_name(epoch)} if self.distributed else {name, STATE_FILE}
        partial = os.path.join(self.directory, name + ".partial.weights.h5")
        self.model.save_weights(partial, overwrite=True)
        os.replace(partial, os.path.join(self.directory, name))
        _atomic_write_json(self.state_path, {"epoch": epoch + 1, "weights": name})
        for old in os.listdir(self.directory):
            if old not in keep and old.startswith("epoch-"):
                os.remove(os.path.join(self.directory, old))
