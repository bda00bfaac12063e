import keras
import numpy as np
import pytest
from numpy_reference import pil_eval_transform
from skimage import data

import keras_metaformer


def test_imagenet_classes_are_the_1000_synsets_in_index_order():
    classes = keras_metaformer.imagenet_classes()
    synsets = [synset for synset, _ in classes]
    assert len(classes) == 1000 and len(set(synsets)) == 1000
    # ImageNet-1k class indices are the synset ids in sorted order.
    assert synsets == sorted(synsets)
    assert classes[0] == ("n01440764", "tench, Tinca tinca")
    assert classes[281][1] == "tabby, tabby cat"
    assert classes[999][0] == "n15075141"


def test_decode_predictions_returns_the_best_classes_first():
    scores = np.zeros((2, 1000), "float32")
    scores[0, [281, 282, 285]] = [0.5, 0.3, 0.2]
    scores[1, 0] = 1.0
    decoded = keras_metaformer.decode_predictions(scores, top=3)
    assert [entry[0] for entry in decoded[0]] == ["n02123045", "n02123159", "n02124075"]
    assert decoded[0][0][2] == pytest.approx(0.5)
    assert decoded[1][0][:2] == ("n01440764", "tench, Tinca tinca")


def test_decode_predictions_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"shape \(batch, 1000\). Received an array of shape \(1, 10\)"):
        keras_metaformer.decode_predictions(np.zeros((1, 10)))


@pytest.mark.parametrize(
    "top, error, message",
    [
        (0, ValueError, r"`top` must be an integer >= 1. Received: top=0"),
        (1001, ValueError, r"`top` must be at most the 1000 classes. Received: top=1001"),
        ("5", TypeError, r"`top` must be an integer >= 1. Received: top='5' \(str\)"),
    ],
)
def test_decode_predictions_checks_top(top, error, message):
    with pytest.raises(error, match=message):
        keras_metaformer.decode_predictions(np.zeros((1, 1000)), top=top)
    assert len(keras_metaformer.decode_predictions(np.zeros((1, 1000)), top=np.int64(2))[0]) == 2


@pytest.mark.parametrize("arch", ["poolformer_s12", "poolformer_m36"])
@pytest.mark.parametrize("transpose", [False, True], ids=["landscape", "portrait"])
def test_resize_and_center_crop_matches_pil(arch, transpose):
    image = data.chelsea()
    if transpose:
        image = np.ascontiguousarray(image.transpose(1, 0, 2))
    config = keras_metaformer.get_pretrained_config(arch)
    ours = keras.ops.convert_to_numpy(keras_metaformer.resize_and_center_crop(image, config))
    expected = pil_eval_transform(image, config.resize_size, 224)
    assert ours.shape == expected.shape == (224, 224, 3)
    difference = np.abs(ours - expected)
    assert difference.max() <= 1.0 and difference.mean() < 0.3


def test_resize_and_center_crop_rejects_batches():
    with pytest.raises(ValueError, match=r"one image of shape \(height, width, channels\)"):
        keras_metaformer.resize_and_center_crop(np.zeros((2, 64, 64, 3)), "poolformer_s12")
