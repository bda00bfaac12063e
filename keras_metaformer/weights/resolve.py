"""The `weights=` argument of the builders: checked first, loaded last."""

import os
import re
import tempfile
import zipfile

from keras_metaformer.weights.download import PretrainedState
from keras_metaformer.weights.download import fetch_pretrained_state
from keras_metaformer.weights.pretrained_configs import AUTHORS_ONLY_WEIGHTS
from keras_metaformer.weights.pretrained_configs import IMAGENET_ALIAS
from keras_metaformer.weights.pretrained_configs import PretrainedConfig
from keras_metaformer.weights.pretrained_configs import available_weights
from keras_metaformer.weights.pretrained_configs import get_pretrained_config
from keras_metaformer.weights.timm_conversion import CheckpointMismatchError
from keras_metaformer.weights.timm_conversion import format_listing
from keras_metaformer.weights.timm_conversion import load_timm_weights

_CHECKPOINT_SUFFIXES = (".safetensors", ".npz")
_KERAS_SUFFIXES = (".weights.h5", ".keras")
_KERAS_WEIGHTS_MEMBER = "model.weights.h5"  # the weights inside a `.keras` archive


def resolve_weights(weights, arch):
    """Returns `None`, a `PretrainedConfig` or a file path for `weights`.

    Raises a `ValueError` naming every accepted value when `weights` is none
    of: `None`, `"imagenet"`, a weight tag of `arch`, or an existing file.
    """
    if weights is None:
        return None
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    tags = available_weights(arch) if arch else []
    if isinstance(weights, str):
        if tags and (weights == IMAGENET_ALIAS or weights in tags):
            return get_pretrained_config(arch, weights)
        if os.path.isfile(weights):
            if not weights.endswith(_CHECKPOINT_SUFFIXES + _KERAS_SUFFIXES):
                raise ValueError(
                    f"Unsupported weights file {weights!r}. Expected a timm "
                    "`.safetensors` file, an `.npz` archive, or a Keras "
                    "`.weights.h5` / `.keras` file."
                )
            return weights
    if weights == IMAGENET_ALIAS and arch in AUTHORS_ONLY_WEIGHTS:
        raise ValueError(authors_only_message(arch, "weights='imagenet'", "weights='OUT.safetensors'") + ".")
    names = [None, IMAGENET_ALIAS, *tags] if tags else [None]
    raise ValueError(
        f"Invalid `weights`: {weights!r} is neither a known weight name nor "
        f"an existing file. Expected one of {names} or the path of a weights "
        "file (timm `.safetensors`, `.npz`, Keras `.weights.h5`)."
        + ("" if tags else f" Pretrained weights are not published for {arch or 'this model'}.")
    )


def authors_only_message(arch, imagenet, pass_file):
    """Why `arch` has no downloadable weights, and how to convert the authors' file.

    `imagenet` and `pass_file` spell the argument as the caller takes it:
    `weights='imagenet'` in Python, `--weights imagenet` on the command line.
    """
    return (
        f"timm publishes no weights for {arch}, so {imagenet} cannot "
        f"be downloaded. The authors' checkpoint is a PyTorch pickle, "
        f"{AUTHORS_ONLY_WEIGHTS[arch]}: download it, convert it with "
        "`python recipes/convert_authors_checkpoint.py FILE.pth OUT.safetensors` "
        f"(needs torch), and pass {pass_file}"
    )


def fetch_weights(resolved, builder_name):
    """Downloads pretrained weights, if `resolved` names them.

    Called before the model is built, so that a network error or a corrupt
    download costs no build time. Returns `None`, a path, or a
    `PretrainedState`.
    """
    if isinstance(resolved, PretrainedConfig):
        return fetch_pretrained_state(resolved, builder_name)
    return resolved


def load_weights(model, weights):
    """Loads what `fetch_weights` returned into a freshly built model."""
    if weights is None:
        return
    if isinstance(weights, PretrainedState):
        _load_pretrained(model, weights)
    elif isinstance(weights, str) and weights.endswith(_KERAS_SUFFIXES):
        load_keras_weights(model, weights)
    else:
        load_timm_weights(model, weights)


def _load_pretrained(model, pretrained):
    # One match of the checkpoint against the model: load_timm_weights checks
    # before it assigns; here its error gains the file's path and URL.
    try:
        load_timm_weights(model, pretrained.state)
    except CheckpointMismatchError as error:
        if pretrained.downloaded:
            os.remove(pretrained.path)
            action = (
                "The file was removed from the cache. Check that HF_ENDPOINT, "
                "if set, points to a mirror of the Hugging Face Hub."
            )
        else:
            action = (
                f"It may be stale or from another model: delete it (`rm '{pretrained.path}'`) "
                "and build the model again to download it afresh."
            )
        raise ValueError(
            f"The weights file {pretrained.path} (from {pretrained.url}) does "
            f"not match model {model.name!r}: its tensors are those of another "
            f"architecture. {action}" + error.listing
        ) from None


# --- Keras weight files: checked against the model before loading ------------


def _dataset_shapes(h5_file):
    """`{dataset path: shape}` of every array in an open h5py file."""
    import h5py

    shapes = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            shapes[name] = tuple(item.shape)

    h5_file.visititems(visit)
    return shapes


def _keras_file_shapes(path):
    """`{dataset path: shape}` of the weights in a `.weights.h5` or `.keras` file."""
    import h5py

    if path.endswith(".keras"):
        expected = "a zip archive holding `model.weights.h5`, as `model.save(path)` writes"
    else:
        expected = "an HDF5 file, as `model.save_weights(path)` writes"
    problem = None
    try:
        if path.endswith(".keras"):
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    if _KERAS_WEIGHTS_MEMBER in archive.namelist():
                        with archive.open(_KERAS_WEIGHTS_MEMBER) as member, h5py.File(member, "r") as file:
                            return _dataset_shapes(file)
                    problem = f"a zip archive without {_KERAS_WEIGHTS_MEMBER}"
            else:
                problem = "not a zip archive"
        elif h5py.is_hdf5(path):
            with h5py.File(path, "r") as file:
                return _dataset_shapes(file)
        else:
            problem = "not an HDF5 file"
    except (OSError, zipfile.BadZipFile, RuntimeError, KeyError) as error:
        problem = f"unreadable ({type(error).__name__}: {error})"
    raise ValueError(
        f"Cannot read the Keras weights file {path!r}: it is {problem}. Expected "
        f"{expected}. The file may be truncated, corrupt, or another format under "
        "a Keras name; timm checkpoints end in `.safetensors`."
    )


def _snake_case(name):
    # Keras' own naming of the layers it saves: by class, not by layer name.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _layer_names(model):
    """Keras' file name of each layer (`layers/meta_former_block_3`) -> its name."""
    names, counts = {}, {}
    for layer in model.layers:
        base = _snake_case(type(layer).__name__)
        count = counts.get(base, 0)
        counts[base] = count + 1
        names[f"layers/{base}" + (f"_{count}" if count else "")] = layer.name
    return names


def _describe(path, layer_names):
    layer = layer_names.get("/".join(path.split("/")[:2]))
    return f"{path} (layer {layer!r})" if layer else path


def keras_weights_mismatch(model, path):
    """Where the Keras weights file `path` differs from `model`, as lines
    listing missing, unexpected and misshapen weights; `""` when it fits.

    The model's own layout is what `model.save_weights` writes for it. Top
    level groups the model does not write (the `optimizer` of a compiled
    run, loaded into an uncompiled model) are ignored, as `load_weights`
    ignores them.
    """
    found = _keras_file_shapes(path)
    with tempfile.TemporaryDirectory() as scratch:
        layout = os.path.join(scratch, "layout.weights.h5")
        model.save_weights(layout)
        expected = _keras_file_shapes(layout)
    groups = {key.split("/")[0] for key in expected}
    found = {key: shape for key, shape in found.items() if key.split("/")[0] in groups}
    layer_names = _layer_names(model)
    missing = [f"{_describe(key, layer_names)}: {expected[key]}" for key in sorted(set(expected) - set(found))]
    unexpected = [f"{key}: {found[key]}" for key in sorted(set(found) - set(expected))]
    mismatched = [
        f"{_describe(key, layer_names)}: file {found[key]}, model {expected[key]}"
        for key in sorted(set(expected) & set(found))
        if expected[key] != found[key]
    ]
    return (
        format_listing("Missing from the file", missing)
        + format_listing("Unexpected in the file", unexpected)
        + format_listing("Shape mismatches", mismatched)
    )


def load_keras_weights(model, path):
    """`model.load_weights(path)`, after checking that the file fits the model.

    A file of another architecture gets the same report as a timm checkpoint,
    before any weight is assigned.
    """
    listing = keras_weights_mismatch(model, path)
    if listing:
        raise ValueError(
            f"Cannot load {path!r} into model {model.name!r}: the file's weights "
            "do not match the model's layers, so no weight was changed. Check "
            "that the file was saved from the same architecture (variant, "
            "`include_top`, `classes`). Paths are Keras' own: by layer class "
            "and order." + listing
        )
    model.load_weights(path)
