"""What the training recipes share: precision, XLA, distribution, outputs, plots."""

import contextlib
import csv
import json
import os
import shutil
import socket

import keras

import keras_metaformer
from keras_metaformer.callbacks import ResumableCheckpoint
from keras_metaformer.malloc import retain_freed_memory

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# mirrored: all local devices (TF); multi-worker: the cluster in TF_CONFIG,
# one process per worker (TF); data-parallel: via keras.distribution (JAX),
# all local devices, or every process's devices when Keras'
# KERAS_DISTRIBUTION_* variables name a job of several processes.
DISTRIBUTIONS = ("none", "mirrored", "multi-worker", "data-parallel")
TF_DISTRIBUTIONS = ("mirrored", "multi-worker")


def add_arguments(parser, *, batch_size, epochs):
    """The options every training recipe takes."""
    parser.add_argument("--variant", default="s12", choices=sorted(keras_metaformer.models.POOLFORMER_BUILDERS))
    parser.add_argument("--weights", default="imagenet", help="imagenet, none, or a weights file")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size, help="global batch size")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--jit-compile", action="store_true", help="compile train steps with XLA")
    parser.add_argument("--distribution", choices=DISTRIBUTIONS, default="none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--malloc",
        choices=("retain", "system"),
        default="retain",
        help="keep freed memory for reuse (faster steps on a CPU; the process keeps its peak "
        "memory), or leave glibc's malloc as configured (under JAX, importing keras_metaformer "
        "keeps freed memory already unless KERAS_METAFORMER_MALLOC=system is set)",
    )
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep <output>/checkpoints/ after a successful run (by default it is deleted; "
        "it is only needed to resume a killed run)",
    )
    parser.add_argument("--smoke", action="store_true", help="a few steps on tiny data (CI)")


def docstring_section(doc, heading):
    """The block of a recipe's header that starts with `heading` ("Writes:"), for `--help`.

    The block ends at the next heading or the blank line after the header.
    """
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    end = start + 1
    while end < len(lines) and lines[end].startswith(" "):
        end += 1
    return "\n".join(lines[start:end])


def model_label(variant, smoke):
    """How plots name the model: `PoolFormer-S12 (poolformer_s12)`."""
    if smoke:
        return "a tiny MetaFormer (--smoke)"
    return f"PoolFormer-{variant.upper()} (poolformer_{variant})"


def configure(args):
    """Allocator, processes, seeds, precision policy and distribution; returns the scope to build in.

    Sets `args.num_processes` and `args.process_id` (1 and 0 unless a JAX
    job of several processes runs; see `join_processes`).
    """
    if args.malloc == "retain":
        # First: threads that have already allocated keep returning memory.
        retain_freed_memory()
    # Before anything computes on JAX, which fixes the devices it sees.
    args.num_processes, args.process_id = join_processes(args.distribution)
    if args.batch_size % args.num_processes:
        raise SystemExit(
            f"error: each of {args.num_processes} processes takes an equal share of every batch; "
            f"--batch-size must be a multiple of {args.num_processes} (received {args.batch_size})."
        )
    socket.setdefaulttimeout(30)  # fail fast rather than hang offline
    keras.utils.set_random_seed(args.seed)
    keras.config.set_dtype_policy(args.precision)
    return distribution_scope(args.distribution)


def join_processes(name):
    """Joins the JAX job named by KERAS_DISTRIBUTION_*, if any; returns `(num_processes, process_id)`.

    Every process runs the same command, with the variables of
    `keras.distribution.initialize` set: `KERAS_DISTRIBUTION_JOB_ADDRESSES`
    (process 0's `host:port`), `KERAS_DISTRIBUTION_NUM_PROCESSES` and its own
    `KERAS_DISTRIBUTION_PROCESS_ID`.
    """
    named = [variable for variable in keras_metaformer.distribute.JOB_VARIABLES if variable in os.environ]
    if not named:
        return 1, 0
    if name != "data-parallel":
        raise SystemExit(
            f"error: {named[0]} is set, which starts a multi-process JAX job; that needs "
            f"--distribution data-parallel (received --distribution {name}). Unset the "
            "KERAS_DISTRIBUTION_* variables to train in one process."
        )
    try:
        num_processes, process_id = keras_metaformer.distribute.initialize_processes()
    except RuntimeError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"Process {process_id} of {num_processes}")
    return num_processes, process_id


def process_share(dataset, args):
    """This process's part of every batch of a training pipeline; all of it in a single process.

    Validation data is not split: every process evaluates every batch, so
    the global batch repeats each example once per process and the metrics
    equal one process's, even over a last incomplete batch.
    """
    shared = keras_metaformer.distribute.process_share(dataset, args.num_processes, args.process_id)
    shared.class_names, shared.num_classes = dataset.class_names, dataset.num_classes
    return shared


def distribution_scope(name):
    """Builds the engine for `name`; build and compile the model inside the result."""
    backend = keras.backend.backend()
    if name == "none":
        return contextlib.nullcontext()
    if name in TF_DISTRIBUTIONS:
        if backend != "tensorflow":
            raise SystemExit(f"error: --distribution {name} needs KERAS_BACKEND=tensorflow (now {backend}).")
        import tensorflow as tf

        if name == "mirrored":
            strategy = tf.distribute.MirroredStrategy()
        else:
            strategy = keras_metaformer.distribute.multi_worker_strategy()
        print(f"Distribution: {type(strategy).__name__}, {strategy.num_replicas_in_sync} replicas")
        return strategy.scope()
    if backend != "jax":
        raise SystemExit(f"error: --distribution data-parallel needs KERAS_BACKEND=jax (now {backend}).")
    devices = keras.distribution.list_devices()  # every process's
    # The recipes hand each process its own share of the data (process_share).
    distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    keras.distribution.set_distribution(distribution)
    print(f"Distribution: DataParallel over {len(devices)} devices in {distribution.num_processes} processes")
    return contextlib.nullcontext()


def pretrained_or_random(builder, weights, **kwargs):
    """`builder(weights=weights, **kwargs)`; offline, random weights instead of ImageNet's.

    `weights` is `"imagenet"`, `"none"` or a weights file. Only a failed
    ImageNet download falls back to random weights, and says so: a missing
    or broken file named on the command line is an error, not a silent
    restart from scratch.

    Returns the model, whether it has pretrained weights, and a note saying
    which weights it has.
    """
    if weights == "none":
        return builder(weights=None, **kwargs), False, "random weights (--weights none)"
    try:
        return builder(weights=weights, **kwargs), True, f"{weights} weights"
    except OSError as error:
        if weights != "imagenet":
            raise
        print(f"Could not download the ImageNet weights:\n  {error}")
        return builder(weights=None, **kwargs), False, "RANDOM weights (offline: download failed)"


def build_backbone(variant, weights, image_size):
    """A PoolFormer without its head, and whether it starts from pretrained weights."""
    builder = keras_metaformer.models.POOLFORMER_BUILDERS[variant]
    model, pretrained, note = pretrained_or_random(
        builder, weights, include_top=False, input_shape=(image_size, image_size, 3)
    )
    print(f"Backbone: {note}" + ("" if pretrained else "; training from scratch."))
    return model, pretrained


def read_log(path):
    with open(path) as file:
        return list(csv.DictReader(file))


def plot_learning_curves(log_path, png_path, title, boundary=None):
    """Loss and accuracy per epoch from a `CSVLogger` file, as a PNG; returns the figure.

    `title` names the model and the data, e.g. "PoolFormer-S12
    (poolformer_s12) on digits, 32x32": a plot passed around on its own
    says what it shows. It is also the PNG's `Title` text chunk.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rows = read_log(log_path)
    epochs = [int(row["epoch"]) + 1 for row in rows]
    figure, axes = pyplot.subplots(1, 2, figsize=(10, 4.4))
    figure.suptitle(title)
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if prefix + metric in rows[0]:
                axis.plot(epochs, [float(row[prefix + metric]) for row in rows], marker="o", label=label)
        if boundary:
            axis.axvline(boundary + 0.5, color="grey", linestyle="--", label="backbone unfrozen")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100, metadata={"Title": title})
    pyplot.close(figure)
    return figure


def output_paths(directory, process_id=0):
    """Where a recipe writes; under multi-worker or multi-process training, one folder per process.

    Every worker or process runs the whole recipe. The chief (TF) or process
    0 (JAX) writes to `directory`, the others to `directory/worker-N` or
    `directory/process-N`, so that no two processes write one file, and each
    resumes from its own checkpoints, which hold the same weights.
    """
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task", {})
    if task.get("type") == "worker" and ("chief" in config.get("cluster", {}) or task.get("index", 0) > 0):
        directory = os.path.join(directory, f"worker-{task['index']}")
    elif process_id > 0:
        directory = os.path.join(directory, f"process-{process_id}")
    os.makedirs(directory, exist_ok=True)
    names = {"model": "model.keras", "log": "log.csv", "plot": "learning_curves.png", "checkpoints": "checkpoints"}
    return {key: os.path.join(directory, name) for key, name in names.items()}


def open_checkpoint(paths, args):
    """The run's `ResumableCheckpoint`, with the log cut back to the epochs it holds.

    Call it inside the distribution scope: in a job of several workers or
    processes, they agree on the epoch to resume from. A run that resumes
    after epoch N keeps the log's rows of epochs 0 to N-1 and appends to
    them: a run killed after logging an epoch but before checkpointing it
    trains that epoch again, and logs it once. A run that finds no
    checkpoint (a first run, or a rerun after a finished run deleted its
    checkpoints) starts a fresh log rather than add to the last run's. Pass
    the log's `CSVLogger` to `fit` before the checkpoint, so that a logged
    epoch is never missing from the log.
    """
    distributed = args.distribution == "multi-worker" or args.num_processes > 1
    checkpoint = ResumableCheckpoint(paths["checkpoints"], distributed=distributed)
    saved = checkpoint.saved_epoch()
    if os.path.exists(paths["log"]):
        rows = [row for row in read_log(paths["log"]) if int(row["epoch"]) < saved] if saved else []
        if rows:  # renamed into place: a kill now must not lose the log
            with open(paths["log"] + ".partial", "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            os.replace(paths["log"] + ".partial", paths["log"])
        else:
            os.remove(paths["log"])
    return checkpoint


def finish_checkpoints(paths, keep):
    """After a successful run: deletes the checkpoints unless `keep`; says which."""
    if keep:
        return f"kept {paths['checkpoints']} (--keep-checkpoints)"
    if os.path.isdir(paths["checkpoints"]):
        shutil.rmtree(paths["checkpoints"])
    return f"deleted {paths['checkpoints']} (--keep-checkpoints keeps it)"
