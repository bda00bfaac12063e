"""ImageNet-1k class names, shipped with the package (no download)."""

import functools
import os

import numpy as np

from keras_metaformer.arguments import check_int

_CLASSES_FILE = os.path.join(os.path.dirname(__file__), "assets", "imagenet_classes.tsv")


@functools.cache
def imagenet_classes():
    """Returns the 1,000 `(synset, names)` pairs in class-index order.

    Example:

    >>> imagenet_classes()[281]
    ('n02123045', 'tabby, tabby cat')
    """
    with open(_CLASSES_FILE, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return tuple((synset, names) for synset, names in rows)


def decode_predictions(predictions, top=5):
    """Returns the `top` classes of each row of ImageNet-1k predictions.

    Like `keras.applications.imagenet_utils.decode_predictions`, but offline.

    Args:
        predictions: array of shape `(batch, 1000)`: probabilities or logits.
        top: how many classes to return per row, best first.

    Returns:
        One list per row of `(synset, names, score)` tuples.

    Example:

    >>> import numpy as np
    >>> scores = np.zeros((1, 1000)); scores[0, 281] = 0.9
    >>> decode_predictions(scores, top=1)
    [[('n02123045', 'tabby, tabby cat', 0.9)]]
    """
    predictions = np.asarray(predictions)
    classes = imagenet_classes()
    if predictions.ndim != 2 or predictions.shape[1] != len(classes):
        raise ValueError(
            "`decode_predictions` expects a batch of ImageNet-1k scores of "
            f"shape (batch, {len(classes)}). Received an array of shape "
            f"{predictions.shape}."
        )
    top = check_int("top", top)
    if top > len(classes):
        raise ValueError(f"`top` must be at most the {len(classes)} classes. Received: top={top}")
    decoded = []
    for row in predictions:
        best = np.argsort(row)[::-1][:top]
        decoded.append([(*classes[i], float(row[i])) for i in best])
    return decoded
