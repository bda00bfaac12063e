"""A stride-1 depthwise convolution for XLA, as sums of shifted slices.

XLA's CPU backend has no fast kernel for grouped convolutions: a 7x7
depthwise convolution over a batch of 32 ConvFormer stage-1 maps
(56x56x128) took about 1.2 s forward and 10 s with its gradient on a 2-core
CPU, against about 0.1 s and 0.5 s here. Written as `kernel_size**2`
multiply-adds of shifted slices, the forward pass and the input gradient
are each one fused loop, and the kernel gradient is a set of reductions run
image by image so that each image stays in cache.

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


def _tap_gradient(x, upstream, size):
    """`d loss / d taps`: per tap, the sum over the batch and positions of the
    shifted input times the upstream gradient."""
    half = size // 2
    height, width = x.shape[1], x.shape[2]
    padded = ops.pad(x, [[0, 0], [half, half], [half, half], [0, 0]])

    def one_image(pair):
        image, gradient = pair
        rows = [
            ops.stack([ops.sum(image[i : i + height, j : j + width] * gradient, axis=(0, 1)) for j in range(size)])
            for i in range(size)
        ]
        return ops.stack(rows)

    # Summed over the whole batch at once, each of the size**2 reductions
    # streams both tensors from memory: about 3x slower at ConvFormer sizes.
    return ops.sum(ops.map(one_image, (padded, upstream)), axis=0)
