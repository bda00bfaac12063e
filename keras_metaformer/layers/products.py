"""Matrix products that keep bfloat16 fast under XLA on a CPU.

XLA's CPU backend computes a bfloat16 product with a bfloat16 result more
slowly than the float32 one, while the same product asked for a float32
result (`preferred_element_type`) runs on the CPU's bfloat16 units
(AVX-512 BF16, AMX). On a 2-core Intel Xeon with AMX, on PoolFormer-S12's
MLP shapes at batch 32 and a 4096 cube, in GFLOP/s (one quiet run each):

| XLA in | float32 | bfloat16 | bfloat16, float32 result |
|---|---:|---:|---:|
| JAX 0.10 | 85-317 | 57-274 | 122-1716 |
| TensorFlow 2.21, `jit_compile=True` | | 90-287 | 95-1029 |

So under XLA for a CPU, `matmul` asks for the float32 result and rounds it
to bfloat16 once, which is also what a bfloat16 product with float32
accumulation means; its gradient products do the same, the kernel's on a
transposed operand (see `_kernel_gradient`). Elsewhere (GPUs,
TensorFlow graphs, whose oneDNN kernels are fast in bfloat16 already) it is
`keras.ops.matmul`.
"""

import keras
from keras import ops

from keras_metaformer.layers.compilation import compiled_by_xla_for_cpu


def matmul(x, y, keep_float32=False):
    """`x @ y`: a product over `x`'s last axis, in `x`'s dtype.

    `y` is either a 2-D kernel, contracted over its first axis with every
    row of `x`, or a stack of matrices of `x`'s rank, multiplied pairwise
    with `x`'s (as `keras.ops.matmul` does, without broadcasting). Both are
    in `x`'s dtype. In bfloat16 under XLA for a CPU, the products accumulate
    in float32 and are rounded once; with `keep_float32=True` they are
    returned in float32 there instead, for element-wise maths that rounds
    once after it (XLA does not fuse the rounding into the product, so it
    would cost a pass over the result).

    Example:

    >>> import numpy as np
    >>> x = np.arange(6, dtype="float32").reshape(3, 2)
    >>> keras.ops.convert_to_numpy(matmul(x, np.eye(2, dtype="float32"))).tolist()
    [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    """
    if keras.backend.standardize_dtype(x.dtype) != "bfloat16" or not compiled_by_xla_for_cpu():
        return ops.matmul(x, y)
    if len(y.shape) == 2 and len(x.shape) != 2:
        # As rows: TensorFlow 2.21's XLA runtime has no bfloat16 x bfloat16
        # = float32 product over several axes (the kernel's gradient).
        rows = matmul(ops.reshape(x, (-1, x.shape[-1])), y, keep_float32)
        return ops.reshape(rows, (*ops.shape(x)[:-1], y.shape[-1]))
    last = len(x.shape) - 1
    if len(y.shape) == 2:
        # dx = dz @ y^T; dy = x^T @ dz.
        forward, backward_x, backward_y = ((1,), (0,), ()), ((1,), (1,), ()), ((0,), (0,), ())
    else:
        # Batched over the leading axes: z = x @ y, dx = dz @ y^T, dy = x^T @ dz.
        batch = tuple(range(last - 1))
        forward = ((last,), (last - 1,), batch)
        backward_x, backward_y = ((last,), (last,), batch), ((last - 1,), (last - 1,), batch)

    result_dtype = "float32" if keep_float32 else "bfloat16"

    @ops.custom_gradient
    def product(x, y):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, "bfloat16")
            dx = _float32_product(upstream, y, *backward_x)
            if len(y.shape) == 2 and _transposes_rows_first(x.shape[0], *y.shape):
                dy = _kernel_gradient(x, upstream)
            else:
                dy = _float32_product(x, upstream, *backward_y)
            return ops.cast(dx, "bfloat16"), ops.cast(dy, "bfloat16")

        return ops.cast(_float32_product(x, y, *forward), result_dtype), grad

    return product(x, y)


def _float32_product(a, b, a_axes, b_axes, batch):
    """`a` and `b` (both bfloat16, or both float32) contracted over
    `a_axes` and `b_axes`, as float32: the `batch` axes of both, then `a`'s
    other axes, then `b`'s."""
    if keras.backend.backend() == "jax":
        import jax
        import jax.numpy as jnp

        numbers = ((a_axes, b_axes), (batch, batch))
        return jax.lax.dot_general(a, b, numbers, preferred_element_type=jnp.float32)
    import tensorflow as tf
    from tensorflow.compiler.tf2xla.python import xla
    from tensorflow.compiler.xla import xla_data_pb2

    numbers = xla_data_pb2.DotDimensionNumbers(
        lhs_contracting_dimensions=a_axes,
        rhs_contracting_dimensions=b_axes,
        lhs_batch_dimensions=batch,
        rhs_batch_dimensions=batch,
    )
    return xla.dot_general(a, b, numbers, None, preferred_element_type=tf.float32)


def _transposes_rows_first(rows, k, n):
    """Whether the kernel gradient `x^T @ dz` of a product of `rows` rows,
    `k` inputs and `n` outputs runs on a transposed copy of one operand
    (see `_kernel_gradient`): with at least twice as many rows as the
    narrower side has columns, so that turning a transposed result costs
    at most half the product. Rows unknown when traced (`None`, as in
    TensorFlow's `fit` once a smaller last batch has relaxed the batch
    size) count as many: PoolFormer-S12's bfloat16 training step traced
    with an unknown batch under `jit_compile=True` took 1,486 ms this way
    against 1,885 (A/B, batch 32, 2-core Intel Xeon with AMX)."""
    return rows is None or rows >= 2 * min(k, n)


def _kernel_gradient(x, upstream):
    """`x^T @ upstream` for bfloat16 rows `x` (rows x k) and `upstream`
    (rows x n), summed in float32.

    XLA's CPU backend runs a bfloat16 product on the CPU's bfloat16 units
    only where its first operand is contracted over its last axis (`a @ b`
    or `a @ b^T` of row-major matrices). Contracted over its rows, as here,
    both operands are converted to float32 for a float32 kernel. So the
    narrower operand is transposed first, by a product with the identity
    (exact: each sum has one nonzero term; XLA would fold a transpose back
    into the product), and `x^T @ dz` becomes a product of the fast kind.
    Where `x` is the wider one, the result comes out transposed, `dz^T @
    x`, and a float32 product with the identity turns it, small beside the
    first. On PoolFormer-S12's shapes at batch 32 (2-core Intel Xeon with
    AMX, JAX 0.10), each gradient alone went from 36-85 ms to 9-58 at the
    first three stages; a training step (A/B, medians) from 2,249 to 1,447
    ms under JAX and from 2,501 to 1,828 ms under TensorFlow's XLA. In
    float32 the same detour gained nothing.
    """
    if x.shape[1] <= upstream.shape[1]:
        return _float32_product(_transposed_rows(x), upstream, (1,), (0,), ())
    transposed = _float32_product(_transposed_rows(upstream), x, (1,), (0,), ())
    return _float32_product(transposed, ops.eye(transposed.shape[0], dtype="float32"), (0,), (0,), ())


def _transposed_rows(a):
    """The bfloat16 matrix `a` transposed, as a product with the identity."""
    identity = ops.eye(a.shape[1], dtype="bfloat16")
    return ops.cast(_float32_product(identity, a, (1,), (1,), ()), "bfloat16")


def dense(layer, x, keep_float32=False):
    """A built `keras.layers.Dense` applied to `x` through `matmul`.

    With `keep_float32`, the result may be float32 (see `matmul`). Quantized
    and LoRA layers, whose kernels are not plain matrices, are called as
    they are.
    """
    if not has_plain_kernel(layer):
        return layer(x)
    dtype = layer.compute_dtype
    bias = layer.bias if layer.use_bias else None
    return layer.activation(biased_matmul(x, ops.cast(layer.kernel, dtype), bias, keep_float32))


def has_plain_kernel(layer):
    """Whether a Dense layer's kernel is a plain matrix of its weights: not
    quantized (an integer kernel with its scales) and without LoRA (a
    kernel plus a low-rank product), which only the layer's own call
    applies."""
    return layer.quantization_mode is None and not layer.lora_enabled


def biased_matmul(x, kernel, bias=None, keep_float32=False):
    """`matmul(x, kernel) + bias`, `bias` a vector over the last axis or None.

    In bfloat16 under XLA for a CPU the bias is added to the float32
    product and the sum rounded once, unless `keep_float32`. Besides saving
    a rounding, this makes the bias's gradient a float32 sum: XLA's CPU
    backend sums bfloat16 about 25 times more slowly (see
    `activations.in_float32`).
    """
    y = matmul(x, kernel, keep_float32 or bias is not None)
    if bias is None:
        return y
    y = add_bias(y, bias)
    return y if keep_float32 else ops.cast(y, x.dtype)


def add_bias(x, bias):
    """`x + bias`, a vector over `x`'s last axis, in `x`'s dtype.

    On TensorFlow it is a `BiasAdd` op: in a graph on a oneDNN build,
    TensorFlow's remapper fuses a `MatMul` followed by `BiasAdd` and then
    GELU into one kernel, which computes the GELU on the float32 sums as it
    writes them (an `AddV2` is not matched). At PoolFormer-S12's first MLP
    at batch 32, on a 2-core Intel Xeon, the GELU went from 40 ms to 5 ms in
    float32 and from 55-95 ms to 2-4 ms in bfloat16.
    """
    bias = ops.cast(bias, x.dtype)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.nn.bias_add(x, bias)
    return x + bias
