"""Downloads pretrained weights into the Keras cache and checks them.

timm publishes no checksums for its files, so integrity is checked by
parsing: a safetensors file states the byte range of every tensor in its
header, so a truncated or garbled file fails to load. A bad file is removed
from the cache before the error is raised, so the next call downloads
afresh instead of failing on the same file again.
"""

import os

import keras

from keras_metaformer.weights.timm_conversion import CheckpointReadError
from keras_metaformer.weights.timm_conversion import read_checkpoint

CACHE_SUBDIR = "models"


def _cache_dir():
    # Read at call time, so that KERAS_HOME set after import is honoured.
    return os.environ.get("KERAS_HOME")


def _download(config, builder_name):
    try:
        return keras.utils.get_file(
            f"{config.name}.safetensors",
            origin=config.url,
            cache_subdir=CACHE_SUBDIR,
            cache_dir=_cache_dir(),
        )
    except Exception as error:
        raise OSError(
            f"Could not download the weights {config.name!r} from "
            f"{config.url} ({error}). If this machine is offline, download "
            "that file on one that is online and pass its path: "
            f"`{builder_name}(weights='/path/to/model.safetensors')`. To use "
            "a Hugging Face Hub mirror, set the HF_ENDPOINT environment "
            "variable."
        ) from error


def fetch_pretrained_state(config, builder_name="the builder"):
    """Returns the checkpoint of `config` as `{key: array}`, via the cache.

    A cached file that does not parse (say, from an interrupted download) is
    removed and downloaded once more; a freshly downloaded file that does
    not parse is removed and reported.
    """
    path = _download(config, builder_name)
    try:
        return read_checkpoint(path)
    except CheckpointReadError:
        os.remove(path)
    path = _download(config, builder_name)
    try:
        return read_checkpoint(path)
    except CheckpointReadError as error:
        os.remove(path)
        raise CheckpointReadError(
            f"The weights downloaded from {config.url} are corrupt or "
            f"truncated ({error}). The file was removed from the cache; try "
            "again, or download it yourself and pass its path as `weights`."
        ) from error
