"""Multi-worker training with `model.fit`: TensorFlow, and JAX processes.

JAX: `initialize_processes()` joins the processes named by Keras'
`KERAS_DISTRIBUTION_*` variables into one job, after which
`keras.distribution.DataParallel` spans every process's devices and each
process feeds its own share of every global batch.
`tests/test_multiprocess.py` checks that one step on two processes equals
one step on one device.

TensorFlow:

Keras 3.15's TensorFlow trainer has two faults under
`tf.distribute.MultiWorkerMirroredStrategy`, so `fit()` fails before its
first step:

1. Before training it averages the first distributed `(images, labels)`
   batch with `strategy.reduce` only to learn its shapes; this strategy's
   reduce rejects a nested batch ("Attempt to convert a value (PerReplica...)").
2. It averages each step's scalar logs (the loss) with
   `strategy.reduce("MEAN", value, axis=0)`, and a scalar has no axis 0
   ("Invalid reduction dimension 0 for input with 0 dimensions").

`multi_worker_strategy()` returns the strategy after mending both in Keras'
trainer: shapes are read from the first replica's part of the batch (all
they are needed for), and scalars are averaged without an axis. Everything
else is passed to Keras' own code unchanged, so once Keras fixes these the
mend does nothing. `tests/test_distributed.py` checks that one step on two
worker processes equals one step on one device.

Example (run once per worker, with TF_CONFIG naming the cluster and task):

```python
import keras_metaformer
from keras_metaformer.distribute import multi_worker_strategy

strategy = multi_worker_strategy()
with strategy.scope():
    model = keras_metaformer.PoolFormerS12(weights=None, classes=10)
    model.compile("adamw", "categorical_crossentropy")
model.fit(dataset, epochs=1)  # a tf.data.Dataset of global batches
```

Each worker reads the same global batches; TF's automatic sharding gives
each worker its share of every batch.
"""

import os

_MENDED = False
# Keras' variables naming a multi-process JAX job; see keras.distribution.initialize.
JOB_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


def initialize_processes():
    """Joins the JAX job that `KERAS_DISTRIBUTION_*` names; returns `(num_processes, process_id)`.

    Run once per process, before any JAX computation, with
    `KERAS_DISTRIBUTION_JOB_ADDRESSES` (the coordinator's `host:port`, or
    every process's, comma-separated), `KERAS_DISTRIBUTION_NUM_PROCESSES`
    and `KERAS_DISTRIBUTION_PROCESS_ID` (0 for the coordinator) set. Without
    them it does nothing and returns `(1, 0)`.

    CPU collectives between processes go through gloo, named explicitly:
    it is JAX 0.10's default, but older JAX releases had no cross-process
    CPU collectives unless asked. So the job also runs on CPU-only hosts
    and on loopback.
    """
    import keras

    if not any(name in os.environ for name in JOB_VARIABLES):
        return 1, 0
    missing = [name for name in JOB_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"A multi-process job needs all of {', '.join(JOB_VARIABLES)}; missing: {', '.join(missing)}. "
            "Set them in every process, or none of them for a single process."
        )
    if keras.backend.backend() != "jax":
        raise RuntimeError(
            "KERAS_DISTRIBUTION_* variables start a multi-process job on the JAX backend, but "
            f"KERAS_BACKEND is {keras.backend.backend()!r}. Set KERAS_BACKEND=jax, or on TensorFlow "
            "use multi_worker_strategy() with TF_CONFIG."
        )
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize()
    return jax.process_count(), jax.process_index()


def process_share(dataset, num_processes, process_id):
    """This process's share of every global batch of a batched `tf.data.Dataset`.

    Each global batch of B is cut into `num_processes` consecutive parts of
    B / num_processes, and process `process_id` keeps its part, as
    `keras.distribution` expects when each process feeds its own data
    (`DataParallel(auto_shard_dataset=False)`): the step's global batch is
    the processes' parts in process order. Every batch must hold B examples
    (a training pipeline that drops the remainder), so that every process
    takes the same number of steps; a process left without a batch would
    wait for the others forever. Each process still runs the whole input
    pipeline and discards the other parts.
    """
    import tensorflow as tf

    if num_processes == 1:
        return dataset
    batch_size = tf.nest.flatten(dataset.element_spec)[0].shape[0]
    if batch_size is None or batch_size % num_processes:
        raise ValueError(
            f"Each of {num_processes} processes takes an equal share of every batch, so batches must have one "
            f"known size divisible by {num_processes}. Received batches of size {batch_size} (None: unknown, "
            "e.g. a last incomplete batch). Batch with drop_remainder=True and a multiple of the process count."
        )
    steps = int(dataset.cardinality())
    shared = dataset.rebatch(batch_size // num_processes).shard(num_processes, process_id)
    if steps >= 0:  # rebatch forgets the number of batches; fit and schedules need it
        shared = shared.apply(tf.data.experimental.assert_cardinality(steps))
    return shared


def job_minimum(value):
    """The smallest of the integer `value` over every worker or process of the job.

    Workers resuming a job must agree on the epoch to resume from: a worker
    killed while writing its checkpoint is one epoch behind the others. Every
    worker calls this at the same point with its own value, and all get the
    same answer. On TensorFlow the job is the workers of the
    `tf.distribute` strategy in scope (call it inside `strategy.scope()`); on
    JAX it is every process that `initialize_processes()` joined. In a single
    process it returns `value`.
    """
    import keras
    import numpy as np

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if jax.process_count() == 1:
            return int(value)
        from jax.experimental import multihost_utils

        return int(np.min(multihost_utils.process_allgather(np.array([value], "int32"))))
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return int(value)  # one process: nothing to agree with
        per_replica = strategy.run(lambda: tf.constant([value], tf.int64))
        return int(tf.reduce_min(strategy.gather(per_replica, axis=0)))
    return int(value)


def multi_worker_strategy(**kwargs):
    """A `tf.distribute.MultiWorkerMirroredStrategy` that `model.fit` can use.

    Arguments are passed to the strategy. The cluster comes from the
    `TF_CONFIG` environment variable, as for the strategy itself.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "multi_worker_strategy() needs the TensorFlow backend, but "
            f"KERAS_BACKEND is {keras.backend.backend()!r}. Set "
            "KERAS_BACKEND=tensorflow, or on JAX use keras.distribution.DataParallel."
        )
    import tensorflow as tf

    _mend_keras_trainer()
    return tf.distribute.MultiWorkerMirroredStrategy(**kwargs)


def _mend_keras_trainer():
    global _MENDED
    if _MENDED:
        return
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def multi_worker(strategy):
        return tf_trainer._collective_all_reduce_multi_worker(strategy)

    keras_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if not (multi_worker(strategy) and reduction in ("auto", "mean")):
            return keras_reduce(values, strategy, reduction)

        def reduce(value):
            if strategy.experimental_local_results(value)[0].shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return keras_reduce(value, strategy, reduction)

        return tree.map_structure(reduce, values)

    keras_symbolic_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or strategy is None or not multi_worker(strategy):
            return keras_symbolic_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = tree.map_structure(
                lambda value: (
                    strategy.experimental_local_results(value)[0]
                    if isinstance(value, tf.distribute.DistributedValues)
                    else value
                ),
                next(batches),
            )
            break
        return keras_symbolic_build(self, data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    _MENDED = True
