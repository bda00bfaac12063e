"""tf.data input pipelines for training and evaluating MetaFormers.

Importing this module imports TensorFlow (the pipelines run on tf.data
whatever the Keras backend); `import keras_metaformer` alone does not.

Example:

    from keras_metaformer import data

    train = data.from_directory("images/train", training=True, image_size=224,
                                batch_size=64, seed=0)
    val = data.from_directory("images/val", training=False,
                              config="poolformer_s12", batch_size=64)
    model.fit(train, validation_data=val)
"""

from keras_metaformer.data.augment import TrainAugment
from keras_metaformer.data.pipeline import build_pipeline
from keras_metaformer.data.pipeline import check_num_classes
from keras_metaformer.data.sources import from_arrays
from keras_metaformer.data.sources import from_directory
from keras_metaformer.data.sources import from_tfds
from keras_metaformer.data.transforms import random_resized_crop
from keras_metaformer.data.transforms import resize_and_center_crop

__all__ = [
    "TrainAugment",
    "build_pipeline",
    "check_num_classes",
    "from_arrays",
    "from_directory",
    "from_tfds",
    "random_resized_crop",
    "resize_and_center_crop",
]
