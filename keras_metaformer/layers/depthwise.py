"""A stride-1 depthwise convolution for XLA, as sums of shifted slices.

XLA's CPU backend has no fast kernel for grouped convolutions: a 7x7
depthwise convolution over a batch of 32 ConvFormer stage-1 maps
(56x56x128) took about 1.2 s forward and 10 s with its gradient on a 2-core
CPU, against about 0.1 s and 0.5 s here. Written as `kernel_size**2`
multiply-adds of shifted slices, the forward pass and the input gradient
are each one fused loop. The kernel gradient is built from fused loops too
(see `_tap_gradient`), since XLA's CPU reductions are slow.

On a GPU, XLA's own convolution is the faster one (0.4 ms against 0.7 ms
forward, 4 ms against 19 ms with the gradient, on an H100), so layers take
this path only when compiling for a CPU.
"""

import keras
from keras import ops


def depthwise_conv2d_same(inputs, kernel):
    """Stride-1 depthwise convolution with symmetric zero padding.

    Args:
        inputs: `(batch, height, width, channels)` tensor with static
            height and width.
        kernel: `(size, size, channels, 1)` tensor (Keras'
            `DepthwiseConv2D` layout), `size` odd.

    Returns:
        A tensor shaped like `inputs`: for an odd kernel, Keras'
        `DepthwiseConv2D(size, padding="same")` and PyTorch's
        `Conv2d(groups=channels, padding=size // 2)`.

    Example:

    >>> import numpy as np
    >>> x = np.ones((1, 3, 3, 1), "float32")
    >>> y = depthwise_conv2d_same(x, np.ones((3, 3, 1, 1), "float32"))
    >>> ops.convert_to_numpy(y)[0, :, :, 0].tolist()  # neighbours per position
    [[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]
    """
    size = kernel.shape[0]
    if kernel.shape[1] != size or size % 2 == 0:
        raise ValueError(
            "Expected a square kernel with an odd side, shaped (size, size, "
            f"channels, 1). Received: kernel.shape={tuple(kernel.shape)}"
        )
    taps = ops.reshape(kernel, (size, size, -1))

    @ops.custom_gradient
    def convolve(x, taps):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # The input gradient is the same correlation with the kernel
            # turned by 180 degrees.
            return _shifted_sums(upstream, taps[::-1, ::-1]), _tap_gradient(x, upstream, size)

        return _shifted_sums(x, taps), grad

    return convolve(inputs, taps)


def _shifted_sums(x, taps):
    """`sum_ij x[h + i - r, w + j - r] * taps[i, j]` over zero padding, where
    `r = size // 2`."""
    size = taps.shape[0]
    half = size // 2
    height, width = x.shape[1], x.shape[2]
    padded = ops.pad(x, [[0, 0], [half, half], [half, half], [0, 0]])
    return sum(padded[:, i : i + height, j : j + width] * taps[i, j] for i in range(size) for j in range(size))


# Side of the blocks of positions that `_tap_gradient` sums in one fused
# loop: 16 terms ran 2.5-4x faster than 4 or 8 at ConvFormer's sizes.
_BLOCK = 4
# Images per pass of `_tap_gradient`: up to about 4 MB of float32 in each
# operand. A whole batch of 32 ConvFormer stage-1 maps (51 MB) in one pass
# ran 2.5-3x slower than two images at a time.
_CHUNK_ELEMENTS = 2**20


def _tap_gradient(x, upstream, size):
    """`d loss / d taps`: per tap, the sum over the batch and positions of the
    shifted input times the upstream gradient.

    XLA's CPU reductions are slow: written as one reduction per tap, image
    by image, this took 2-8x as long as the forward pass. Here each tap's
    sum over a 4x4 block of positions is 16 products of strided slices,
    which XLA fuses into one vectorised loop as it does the forward pass;
    only the block sums, 1/16 of the positions, are reduced. Timed alone
    under JAX on a 2-core CPU, ConvFormer-S18's 18 kernel gradients at
    batch 32 went from about 1.8 s to 0.6 s. Both operands are
    zero-padded to whole blocks (zeros in `upstream` add nothing).
    """
    half = size // 2
    batch, height, width, channels = x.shape
    rows, cols = -(-height // _BLOCK), -(-width // _BLOCK)
    span_h, span_w = rows * _BLOCK, cols * _BLOCK
    gradient = ops.pad(upstream, [[0, 0], [0, span_h - height], [0, span_w - width], [0, 0]])
    padded = ops.pad(x, [[0, 0], [half, half + span_h - height], [half, half + span_w - width], [0, 0]])
    tap_sums = _looped_tap_sums if _loops_over_taps() else _unrolled_tap_sums

    def chunk_taps(pair):
        images, gradients = pair
        return tap_sums(images, gradients, size, (span_h, span_w))

    chunk = _images_per_chunk(batch, height * width * channels)
    if chunk == batch:
        sums = chunk_taps((padded, gradient))
    else:
        sums = ops.sum(
            ops.map(
                chunk_taps,
                (
                    ops.reshape(padded, (-1, chunk, *tuple(padded.shape[1:]))),
                    ops.reshape(gradient, (-1, chunk, *tuple(gradient.shape[1:]))),
                ),
            ),
            axis=0,
        )
    return ops.reshape(sums, (size, size, channels))


def _loops_over_taps():
    """Whether `_tap_gradient` loops over the taps instead of unrolling them.

    Unrolled, the gradient is 49 x 16 products per layer. JAX compiles
    that readily (ConvFormer-S18's first training step took 40 s), but
    TensorFlow's XLA took 272 s and 16.4 GB of memory for it. With the loop,
    that step took 55 s and 8.2 GB, and the steps after it ran as fast as
    before (6.6-7.1 s); timed alone at batch 32, the looped kernel gradients
    were as fast as or faster than the unrolled ones under TensorFlow (for
    example 94 against 100 ms in stage 1). JAX's XLA copies each tap's
    window out of the input inside the loop, which made them up to twice as
    slow there (205 against 106 ms), so JAX keeps the unrolled form.
    """
    return keras.backend.backend() == "tensorflow"


def _block_sums(images, gradients, offset, span):
    """`images[:, i : i + span_h, j : j + span_w] * gradients` summed over
    each `_BLOCK x _BLOCK` block of positions, as one fused loop of 16
    strided-slice products.

    The offset goes into the strided slices themselves: under JAX, slicing
    the window first and then striding it copied each window, and the
    kernel gradients took 3x as long.
    """
    (i, j), (span_h, span_w) = offset, span
    return sum(
        images[:, i + a : i + a + span_h : _BLOCK, j + b : j + b + span_w : _BLOCK] * gradients[:, a::_BLOCK, b::_BLOCK]
        for a in range(_BLOCK)
        for b in range(_BLOCK)
    )


def _unrolled_tap_sums(images, gradients, size, span):
    """`(size * size, channels)` tap sums, one fused loop per tap."""
    blocks = [_block_sums(images, gradients, (i, j), span) for i in range(size) for j in range(size)]
    return ops.sum(ops.stack(blocks), axis=(1, 2, 3))


def _looped_tap_sums(images, gradients, size, span):
    """The same sums as `_unrolled_tap_sums`, one loop step per tap."""
    count, channels = images.shape[0], images.shape[-1]

    def add_tap(tap, sums):
        start = (0, tap // size, tap % size, 0)
        window = ops.slice(images, start, (count, *span, channels))
        total = ops.sum(_block_sums(window, gradients, (0, 0), span), axis=(0, 1, 2))
        return ops.slice_update(sums, (tap, 0), total[None])

    return ops.fori_loop(0, size * size, add_tap, ops.zeros((size * size, channels), images.dtype))


def _images_per_chunk(batch, image_elements):
    """The largest divisor of `batch` whose images hold at most
    `_CHUNK_ELEMENTS` values (at least 1); 1 when the batch is unknown."""
    if batch is None:
        return 1
    fitting = max(1, _CHUNK_ELEMENTS // image_elements)
    return max(d for d in range(1, min(batch, fitting) + 1) if batch % d == 0)
