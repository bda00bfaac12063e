"""A `(batch, ..., channels)` tensor as a `(positions, channels)` matrix and back,
for per-channel work (Dense layers, scales) done as 2-D operations."""

from keras import ops


def positions_shape(inputs):
    """The shape to give a `(batch, ..., channels)` tensor back after a
    product over its positions: `(-1, *inputs.shape[1:])`.

    Sizes are static where known, because a reshape through the dynamic
    shape adds SHAPE ops that TFLite's XNNPACK delegate does not take.

    Example:

    >>> import numpy as np
    >>> positions_shape(np.zeros((2, 7, 5, 3)))
    (-1, 7, 5, 3)
    """
    shape = inputs.shape
    if any(size is None for size in shape[1:]):
        shape = ops.shape(inputs)
    return (-1, *shape[1:])


def as_rows(inputs):
    """`inputs` as a `(positions, channels)` matrix.

    XLA lowers a Dense layer on a 4-D tensor to a batched dot. On a CPU
    that dot does not fuse with the bias and activation, and a profiled
    ConvFormer-S18 training step under JAX spent 0.6 s of 7 s copying
    upstream gradients to a transposed layout for the weight gradients.
    One 2-D product over all positions avoids both.
    """
    return ops.reshape(inputs, (-1, inputs.shape[-1]))
