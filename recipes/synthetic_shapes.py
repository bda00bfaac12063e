"""Synthetic images of coloured rectangles, with exact boxes and masks.

A detection or segmentation task that trains offline: each image holds one
to three rectangles on noise; the class is the rectangle's colour (red,
green, blue -> 0, 1, 2).
"""

import numpy as np

COLORS = np.array([[220, 40, 40], [40, 200, 40], [40, 60, 230]], "float32")
CLASS_NAMES = ("red", "green", "blue")
MAX_SHAPES = 3


def make_shapes(count, size=128, seed=0):
    """Returns `images` (uint8-valued float32), `boxes` (xywh, padded with -1),
    `classes` (padded with -1) and `masks` (0 = background, k + 1 = class k)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 80, (count, size, size, 3)).astype("float32")
    boxes = -np.ones((count, MAX_SHAPES, 4), "float32")
    classes = -np.ones((count, MAX_SHAPES), "float32")
    masks = np.zeros((count, size, size, 1), "int32")
    for i in range(count):
        for j in range(rng.integers(1, MAX_SHAPES + 1)):
            w, h = rng.integers(size // 6, size // 2, 2)
            x, y = rng.integers(0, size - w), rng.integers(0, size - h)
            label = rng.integers(0, len(COLORS))
            images[i, y : y + h, x : x + w] = COLORS[label]
            masks[i, y : y + h, x : x + w] = label + 1
            boxes[i, j] = (x, y, w, h)
            classes[i, j] = label
    return np.round(images), boxes, classes, masks
