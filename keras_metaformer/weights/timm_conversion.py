"""Loads timm (and the authors' original) MetaFormer checkpoints into Keras.

Conversion is pure name mapping on NumPy arrays: each Keras variable path
(`stage1_block0/mlp/fc1/kernel`) names its checkpoint key
(`stages.1.blocks.0.mlp.fc1.weight`), and each tensor is moved from
PyTorch's layout to Keras' by its rank. Nothing here imports torch.
"""

import os
import re
from collections.abc import Mapping

import numpy as np

# Top-level Keras layer name -> timm module prefix.
_LAYER_PREFIXES = (
    (re.compile(r"stem"), "stem"),
    (re.compile(r"stage(\d+)_downsample"), r"stages.\1.downsample"),
    (re.compile(r"stage(\d+)_block(\d+)"), r"stages.\1.blocks.\2"),
    (re.compile(r"head_norm"), "head.norm"),
    (re.compile(r"predictions"), "head.fc"),
)
# Layers whose variables are constants of the graph, not checkpoint weights.
_UNMAPPED_LAYERS = ("preprocessing",)
# Keras variable name -> PyTorch parameter name.
_VARIABLE_NAMES = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "scale": "scale",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
    "random_matrix": "random_matrix",
}
# Tensors stored in the same layout by PyTorch and Keras, whatever their rank.
_SAME_LAYOUT = (".random_matrix",)
# Random-number state of stochastic layers: not part of any checkpoint.
_SEED_STATE = "seed_generator_state"
HEAD_PREFIX = "head."
INCLUDE_TOP_ADVICE = "pass `include_top=False` to load a checkpoint whose head differs."
_MAX_LISTED = 12


class CheckpointReadError(ValueError):
    """A checkpoint file could not be read: corrupt, truncated or unknown."""


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model; `listing` says where."""

    def __init__(self, message, listing):
        super().__init__(message + listing)
        self.listing = listing


def _as_array(key, value):
    """`value` as a numeric NumPy array, or a `ValueError` naming `key`."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:  # ragged nested lists, say
        raise ValueError(
            f"Checkpoint entry {key!r} is not an array of numbers: NumPy "
            f"cannot make one array of it ({error}). Expected a NumPy array "
            f"(or nested lists of equal lengths). Received: {type(value).__name__}."
        ) from None
    if array.dtype.kind in "OSU":  # objects, bytes, strings
        raise ValueError(
            f"Checkpoint entry {key!r} is not an array of numbers: it has "
            f"dtype {array.dtype} and shape {array.shape}. Expected a numeric "
            "array (float or int), e.g. `tensor.numpy()` of a PyTorch tensor."
        )
    return array


def read_checkpoint(source):
    """Returns `{key: np.ndarray}` from a path or an existing mapping.

    Args:
        source: a `.safetensors` or `.npz` path, or a mapping of names to
            arrays (NumPy, or anything `np.asarray` accepts).
    """
    if isinstance(source, Mapping):
        return {key: _as_array(key, value) for key, value in source.items()}
    if not isinstance(source, (str, bytes, os.PathLike)):
        raise TypeError(
            "Expected a checkpoint path (str or os.PathLike: a `.safetensors` "
            "file or an `.npz` archive) or a mapping of names to arrays "
            f"(e.g. a dict). Received: source={_short_repr(source)} of type "
            f"{type(source).__name__}."
        )
    path = os.fsdecode(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointReadError(
                f"{path!r} is not a readable safetensors file; it is corrupt "
                f"or truncated ({type(error).__name__}: {error})."
            ) from error
    if path.endswith(".npz"):
        try:
            with np.load(path) as archive:
                return {key: archive[key] for key in archive.files}
        except Exception as error:
            raise CheckpointReadError(
                f"{path!r} is not a readable .npz file; it is corrupt or truncated ({type(error).__name__}: {error})."
            ) from error
    if path.endswith((".weights.h5", ".keras")):
        raise CheckpointReadError(
            f"{path!r} is a Keras weights file, not a timm checkpoint, so it needs no conversion: load it "
            f"with `model.load_weights({path!r})`, or pass it to a builder as `weights={path!r}`, which "
            "checks it against the model first."
        )
    raise CheckpointReadError(
        f"Unsupported checkpoint file {path!r}. Expected a timm "
        "`.safetensors` file or an `.npz` archive of NumPy arrays. A PyTorch "
        "`.pth` file needs torch to read: load it with "
        "`torch.load(path, weights_only=True)` and pass "
        "`{key: tensor.numpy() for key, tensor in state_dict.items()}`."
    )


def _short_repr(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _authors_block(match):
    stage = int(match.group(1)) // 2
    return f"stages.{stage}.blocks.{match.group(2)}."


def _authors_downsample(match):
    stage = (int(match.group(1)) + 1) // 2
    return f"stages.{stage}.downsample.conv."


# Both of the authors' formats end in the same head names. Rules apply in
# order to each key, so `head.` goes first: `norm.` -> `head.norm.` must not
# be renamed again.
_AUTHORS_HEAD_RULES = (
    (re.compile(r"^head\."), "head.fc."),
    (re.compile(r"^norm\."), "head.norm."),
)
# sail-sg/poolformer (v1): `network` interleaves stages (even indices) with
# downsampling layers (odd indices).
_AUTHORS_V1_RULES = (
    (re.compile(r"^patch_embed\.proj\."), "stem.conv."),
    (re.compile(r"^network\.(\d*[13579])\.proj\."), _authors_downsample),
    (re.compile(r"^network\.(\d*[02468])\.(\d+)\."), _authors_block),
    (re.compile(r"\.layer_scale_(\d)$"), r".layer_scale\1.scale"),
    *_AUTHORS_HEAD_RULES,
)
# sail-sg/metaformer (the baselines): `downsample_layers.0` is the stem.
_AUTHORS_BASELINE_RULES = (
    (re.compile(r"^downsample_layers\.0\."), "stem."),
    (re.compile(r"^downsample_layers\.(\d+)\."), r"stages.\1.downsample."),
    (re.compile(r"\.(pre_norm|post_norm)\."), ".norm."),
    (re.compile(r"^stages\.(\d+)\.(\d+)\."), r"stages.\1.blocks.\2."),
    *_AUTHORS_HEAD_RULES,
)


# Key prefixes that identify each of the authors' formats.
_AUTHORS_V1_PREFIXES = ("network.", "patch_embed.")
_AUTHORS_BASELINE_PREFIXES = ("downsample_layers.",)


def _has_prefix(state_dict, prefixes):
    return any(key.startswith(prefixes) for key in state_dict)


def is_authors_format(state_dict):
    return _has_prefix(state_dict, _AUTHORS_V1_PREFIXES + _AUTHORS_BASELINE_PREFIXES)


def authors_to_timm_keys(state_dict):
    """Renames the authors' keys to timm's.

    Handles sail-sg/poolformer's PoolFormer v1 checkpoints (`network.N...`)
    and sail-sg/metaformer's baselines (`downsample_layers.N...`,
    `stages.N.M...`), including IdentityFormer and RandFormer.
    """
    v1 = _has_prefix(state_dict, _AUTHORS_V1_PREFIXES)
    rules = _AUTHORS_V1_RULES if v1 else _AUTHORS_BASELINE_RULES
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


def _timm_prefix(layer_name):
    for pattern, replacement in _LAYER_PREFIXES:
        if pattern.fullmatch(layer_name):
            return pattern.sub(replacement, layer_name)
    return None


def timm_key_map(model, layers=None):
    """Returns `{timm key: Keras variable}` for every weight a checkpoint sets.

    `layers` (default: all of `model`'s) names the top-level layers to map,
    e.g. a keras-hub classifier's head without its nested backbone.
    """
    mapping = {}
    for layer in model.layers if layers is None else layers:
        if layer.name in _UNMAPPED_LAYERS:
            continue
        prefix = _timm_prefix(layer.name)
        for variable in layer.weights:
            if variable.path.endswith(_SEED_STATE):
                continue
            parts = variable.path.split("/")
            relative = parts[parts.index(layer.name) + 1 :]
            if prefix is None or relative[-1] not in _VARIABLE_NAMES:
                raise ValueError(
                    f"Variable {variable.path!r} of model {model.name!r} has "
                    "no checkpoint name. Weight conversion supports the "
                    "models built by keras_metaformer's builders."
                )
            key = ".".join([prefix, *relative[:-1], _VARIABLE_NAMES[relative[-1]]])
            if key in mapping:
                raise ValueError(
                    f"Variables {mapping[key].path!r} and {variable.path!r} both map to checkpoint key {key!r}."
                )
            mapping[key] = variable
    return mapping


def to_keras_layout(array, shape, key=""):
    """Moves the PyTorch tensor `key` to Keras' layout for a variable of `shape`.

    Returns `None` if the array cannot take that shape.
    """
    shape = tuple(shape)
    if key.endswith(_SAME_LAYOUT):
        pass
    elif len(shape) == 4 and array.ndim == 4:
        if shape[3] == 1 and array.shape[1] == 1:
            array = array.transpose(2, 3, 0, 1)  # depthwise (C, 1, H, W) -> (H, W, C, 1)
        else:
            array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif len(shape) == 2:
        if array.ndim == 4 and array.shape[2:] == (1, 1):
            array = array[:, :, 0, 0]  # 1x1 conv (O, I, 1, 1) -> linear (O, I)
        if array.ndim == 2:
            array = array.T  # (out, in) -> (in, out)
    return array if array.shape == shape else None


def format_listing(title, items):
    if not items:
        return ""
    shown = "\n".join(f"  {item}" for item in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    if more > 0:
        shown += f"\n  ... and {more} more"
    return f"\n{title} ({len(items)}):\n{shown}"


def load_timm_weights(model, source):
    """Loads a timm or authors' PoolFormer checkpoint into a Keras model.

    Every checkpoint tensor must be used exactly once and every model weight
    set exactly once. The whole checkpoint is checked before any weight is
    assigned, so on any mismatch the model is left untouched. Head tensors
    (`head.*`) are skipped when the model has no classification head
    (`include_top=False`).

    Args:
        model: a model built by one of this package's builders.
        source: a timm `model.safetensors` path, an `.npz` path, or a
            mapping of names to NumPy arrays, in timm's key format
            (`stages.0.blocks.0.mlp.fc1.weight`) or the authors' original
            one (`network.0.0.mlp.fc1.weight`).

    Returns:
        The model, with its weights set.

    Raises:
        ValueError: listing missing keys, unexpected keys and shape
            mismatches (a `CheckpointMismatchError`), or naming a file that
            cannot be read or an entry that is not an array of numbers.
        TypeError: if `source` is neither a path nor a mapping.

    Example:

    >>> import numpy as np
    >>> import keras_metaformer
    >>> model = keras_metaformer.PoolFormerS12(weights=None)
    >>> # With timm's file: load_timm_weights(model, "model.safetensors").
    >>> # An incomplete checkpoint is refused (a ValueError) and changes nothing:
    >>> try:
    ...     load_timm_weights(model, {"stem.conv.weight": np.ones((64, 3, 7, 7))})
    ... except ValueError as error:
    ...     print(error)
    Cannot load the checkpoint into model 'poolformer_s12': ...
    Missing from the checkpoint (131):
      head.fc.bias
    ...
    """
    state = read_checkpoint(source)
    assign_timm_weights(timm_key_map(model), state, model.name)
    return model


def assign_timm_weights(targets, state, model_name, advice=INCLUDE_TOP_ADVICE):
    """Sets `targets` (`{timm key: variable}`) from `state`, all or nothing.

    Raises a `CheckpointMismatchError` listing missing, unexpected and
    misshapen tensors, with `advice` on what to do, before any variable
    changes. Head tensors are skipped when `targets` has no head.
    """
    values, listing = _match(targets, state)
    if listing:
        raise CheckpointMismatchError(
            f"Cannot load the checkpoint into model {model_name!r}: it does "
            "not match the architecture, so no weight was changed. Check that "
            f"the checkpoint is for the same variant, and {advice}",
            listing,
        )
    for key, variable in targets.items():
        variable.assign(values[key].astype(variable.dtype))


def _match(targets, state):
    """`(values, listing)`: the checkpoint's arrays in Keras' layout for the
    variables `targets`, by timm key, and where the two differ (`""` if
    nowhere)."""
    if is_authors_format(state):
        state = authors_to_timm_keys(state)
    if not any(key.startswith(HEAD_PREFIX) for key in targets):
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}

    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    values, mismatched = {}, []
    for key in sorted(set(targets) & set(state)):
        variable = targets[key]
        value = to_keras_layout(state[key], variable.shape, key)
        if value is None:
            mismatched.append(
                f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(variable.shape)} ({variable.path})"
            )
        else:
            values[key] = value
    listing = (
        format_listing("Missing from the checkpoint", missing)
        + format_listing("Unexpected in the checkpoint", unexpected)
        + format_listing("Shape mismatches", mismatched)
    )
    return values, listing
