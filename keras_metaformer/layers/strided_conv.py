"""A strided "valid" convolution as one matrix product over gathered patches.

The XLA in JAX 0.10 hands convolutions on a CPU to YNNPACK, whose kernel
gradient of a strided convolution runs far below the CPU's arithmetic: in a
PoolFormer-S12 training step on a 2-core CPU, the four patch-embedding
kernel gradients took 0.66 s of about 4.4 s, at 11-42 GFLOP/s, while the
matrix products of the MLPs ran at about 150 GFLOP/s. Written as patches
times a matrix, the convolution's gradients are matrix products too (and
the gather's gradient one fused loop): forward and backward together took
0.56 s instead of 1.09 s for the four layers, and forward alone about as
long (0.27 s against 0.26 s).
"""

from keras import ops

from keras_metaformer.layers.products import biased_matmul


def strided_conv2d(inputs, kernel, strides, bias=None):
    """A convolution without padding, computed as patches times a matrix.

    Args:
        inputs: `(batch, height, width, channels)` tensor with static
            height and width.
        kernel: `(size, size, channels, filters)` tensor (Keras' `Conv2D`
            layout). The patches are gathered in the inputs' dtype and
            cast to the kernel's: float32 inputs with a bfloat16 kernel
            give a bfloat16 product whose input gradient sums the
            patches' gradients in float32.
        strides: int, the stride in both spatial axes.
        bias: vector of `filters` values added to the result, or None.

    Returns:
        `(batch, out_height, out_width, filters)`, the same numbers as
        `keras.ops.conv(inputs, kernel, strides, padding="valid")` within
        float32 rounding, where `out = (side - size) // strides + 1`.

    Example:

    >>> import numpy as np
    >>> x = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    >>> y = strided_conv2d(x, np.ones((2, 2, 1, 1), "float32"), strides=2)
    >>> ops.convert_to_numpy(y)[0, :, :, 0].tolist()  # sums of 2x2 blocks
    [[10.0, 18.0], [42.0, 50.0]]
    """
    size, channels = kernel.shape[0], inputs.shape[-1]
    if kernel.shape[1] != size or kernel.shape[2] != channels:
        raise ValueError(
            f"Expected a square kernel shaped (size, size, {channels}, filters) "
            f"for inputs with {channels} channels. Received: "
            f"kernel.shape={tuple(kernel.shape)}, inputs.shape={tuple(inputs.shape)}"
        )
    height = (inputs.shape[1] - size) // strides + 1
    width = (inputs.shape[2] - size) // strides + 1
    if height < 1 or width < 1:
        raise ValueError(
            f"The {size}x{size} kernel does not fit in inputs of "
            f"{inputs.shape[1]}x{inputs.shape[2]} without padding. Received: "
            f"inputs.shape={tuple(inputs.shape)}"
        )
    span_h = strides * (height - 1) + 1
    span_w = strides * (width - 1) + 1
    # At each output position, the window it sees, in the kernel's (row,
    # column, channel) order: rows first, then columns, 2 * size slices
    # rather than size**2, which XLA compiles seconds faster.
    rows = ops.stack([inputs[:, i : i + span_h : strides] for i in range(size)], axis=3)
    patches = ops.stack([rows[:, :, j : j + span_w : strides] for j in range(size)], axis=4)
    # As rows of a matrix: a product on the unflattened patches has a kernel
    # gradient that contracts three axes, and XLA then copies the upstream
    # gradient into a transposed layout, fusing its producers into the copy
    # (0.4 s at the stem).
    matrix = ops.cast(ops.reshape(patches, (-1, size * size * channels)), kernel.dtype)
    y = biased_matmul(matrix, ops.reshape(kernel, (size * size * channels, -1)), bias)
    return ops.reshape(y, (-1, height, width, kernel.shape[-1]))
