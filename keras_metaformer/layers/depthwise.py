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
    return sum(
        padded[:, i : i + height, j : j + width] * taps[i, j] for i in range(size) for j in range(size)
    )


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

    The price is code size: 49 taps of 16 products each, per layer. Under
    TensorFlow's XLA, ConvFormer-S18's first training step, which compiles
    it, took 272 s and 16.4 GB; with XLA's own kernel gradient, 64 s and
    6.8 GB, but every later step took 24 s instead of 7 s (README,
    Benchmark). Looping over the taps would shrink the code; not yet tried.
    """
    half = size // 2
    batch, height, width, channels = x.shape
    rows, cols = -(-height // _BLOCK), -(-width // _BLOCK)
    span_h, span_w = rows * _BLOCK, cols * _BLOCK
    gradient = ops.pad(upstream, [[0, 0], [0, span_h - height], [0, span_w - width], [0, 0]])
    padded = ops.pad(x, [[0, 0], [half, half + span_h - height], [half, half + span_w - width], [0, 0]])

    def chunk_taps(pair):
        images, gradients = pair
        taps = [
            sum(
                images[:, a + i : a + i + span_h : _BLOCK, b + j : b + j + span_w : _BLOCK]
                * gradients[:, a::_BLOCK, b::_BLOCK]
                for a in range(_BLOCK)
                for b in range(_BLOCK)
            )
            for i in range(size)
            for j in range(size)
        ]
        return ops.sum(ops.stack(taps), axis=(1, 2, 3))

    chunk = _images_per_chunk(batch, height * width * channels)
    if chunk == batch:
        sums = chunk_taps((padded, gradient))
    else:
        sums = ops.sum(
            ops.map(
                chunk_taps,
                (
                    ops.reshape(padded, (-1, chunk) + tuple(padded.shape[1:])),
                    ops.reshape(gradient, (-1, chunk) + tuple(gradient.shape[1:])),
                ),
            ),
            axis=0,
        )
    return ops.reshape(sums, (size, size, channels))


def _images_per_chunk(batch, image_elements):
    """The largest divisor of `batch` whose images hold at most
    `_CHUNK_ELEMENTS` values (at least 1); 1 when the batch is unknown."""
    if batch is None:
        return 1
    fitting = max(1, _CHUNK_ELEMENTS // image_elements)
    return max(d for d in range(1, min(batch, fitting) + 1) if batch % d == 0)
