"""Multi-worker training with `model.fit` (TensorFlow backend).

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

_MENDED = False


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
