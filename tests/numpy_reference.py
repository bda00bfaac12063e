"""Independent NumPy (and PIL) implementations of PoolFormer's parts, channels-last.

Written from the paper's equations and PyTorch's operator definitions, with
explicit loops where that makes the definition obvious. Slow; for small
inputs only.
"""

import math

import numpy as np
import PIL.Image

_erf = np.vectorize(math.erf)


def gelu(x):
    """Exact GELU: x * Phi(x)."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def relu(x):
    return np.maximum(x, 0.0)


def silu(x):
    return x / (1.0 + np.exp(-x))


ACTIVATIONS = {"gelu": gelu, "relu": relu, "silu": silu}


def group_norm_1(x, gamma, beta, eps):
    """GroupNorm with one group: statistics over (H, W, C) of each sample."""
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def layer_norm(x, gamma, beta, eps):
    """LayerNorm over the last (channel) axis."""
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def batch_norm_inference(x, gamma, beta, moving_mean, moving_var, eps):
    return (x - moving_mean) / np.sqrt(moving_var + eps) * gamma + beta


def avg_pool_exclude_pad(x, pool_size):
    """Stride-1 average over the in-bounds part of each window."""
    _, height, width, _ = x.shape
    r = pool_size // 2
    out = np.zeros_like(x)
    for i in range(height):
        for j in range(width):
            window = x[:, max(i - r, 0) : i + r + 1, max(j - r, 0) : j + r + 1, :]
            out[:, i, j, :] = window.mean(axis=(1, 2))
    return out


def pool_mixer(x, pool_size):
    return avg_pool_exclude_pad(x, pool_size) - x


def conv2d(x, kernel_hwio, bias, stride, padding):
    """PyTorch-style convolution with symmetric zero padding, channels-last."""
    kh, kw, _, out_channels = kernel_hwio.shape
    x = np.pad(x, [(0, 0), (padding, padding), (padding, padding), (0, 0)])
    batch, height, width, _ = x.shape
    out_h = (height - kh) // stride + 1
    out_w = (width - kw) // stride + 1
    out = np.zeros((batch, out_h, out_w, out_channels))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, kernel_hwio)
    return out + (0.0 if bias is None else bias)


def mlp(x, w1, b1, w2, b2, activation="gelu"):
    return ACTIVATIONS[activation](x @ w1 + b1) @ w2 + b2


def metaformer_block(x, params, pool_size=3, activation="gelu", norm=group_norm_1):
    """`params`: norm1/norm2 as tuples of norm arguments (after x), fc1/fc2
    as (kernel, bias), layer_scale1/layer_scale2 as vectors."""
    y = pool_mixer(norm(x, *params["norm1"]), pool_size)
    x = x + params["layer_scale1"] * y
    y = mlp(norm(x, *params["norm2"]), *params["fc1"], *params["fc2"], activation)
    return x + params["layer_scale2"] * y


def squared_relu(x):
    return np.maximum(x, 0.0) ** 2


def star_relu(x, scale, bias):
    return scale * squared_relu(x) + bias


def depthwise_conv2d_same(x, kernel_hwc1):
    """Stride-1 depthwise convolution with symmetric zero padding."""
    kh, kw = kernel_hwc1.shape[:2]
    padded = np.pad(x, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
    out = np.zeros_like(x)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            out[:, i, j, :] = np.einsum("bhwc,hwc->bc", padded[:, i : i + kh, j : j + kw, :], kernel_hwc1[..., 0])
    return out


def sepconv(x, pw1, act_scale, act_bias, dw, pw2):
    return depthwise_conv2d_same(star_relu(x @ pw1, act_scale, act_bias), dw) @ pw2


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention(x, qkv_kernel, proj_kernel, head_dim):
    """Multi-head self-attention over the flattened positions, head by head."""
    batch, height, width, _ = x.shape
    tokens = x.reshape(batch, height * width, -1)
    qkv = tokens @ qkv_kernel
    width_all = qkv.shape[-1] // 3
    heads = []
    for h in range(width_all // head_dim):
        part = slice(h * head_dim, (h + 1) * head_dim)
        q = qkv[..., :width_all][..., part]
        k = qkv[..., width_all : 2 * width_all][..., part]
        v = qkv[..., 2 * width_all :][..., part]
        weights = softmax(q @ k.transpose(0, 2, 1) / np.sqrt(head_dim))
        heads.append(weights @ v)
    return (np.concatenate(heads, axis=-1) @ proj_kernel).reshape(batch, height, width, -1)


def random_mixing(x, matrix):
    batch, height, width, channels = x.shape
    tokens = x.reshape(batch, height * width, channels)
    return np.einsum("mn,bnc->bmc", matrix, tokens).reshape(x.shape)


def mlp_head(x, fc1, fc1_bias, gamma, beta, fc2, fc2_bias, eps):
    return layer_norm(squared_relu(x @ fc1 + fc1_bias), gamma, beta, eps) @ fc2 + fc2_bias


def pil_eval_transform(image, resize, crop):
    """timm's evaluation transform with PIL: shorter side to `resize`, centre crop."""
    height, width = image.shape[:2]
    if height <= width:
        size = (int(resize * width / height), resize)
    else:
        size = (resize, int(resize * height / width))
    resized = np.asarray(PIL.Image.fromarray(image).resize(size, PIL.Image.BICUBIC))
    top = int(round((resized.shape[0] - crop) / 2.0))
    left = int(round((resized.shape[1] - crop) / 2.0))
    return resized[top : top + crop, left : left + crop].astype("float32")
