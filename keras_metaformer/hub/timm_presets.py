"""Loads timm's MetaFormer checkpoints as keras-hub presets.

keras-hub reads a preset whose `config.json` has an `"architecture"` (timm's
Hub layout: `config.json` + `model.safetensors`) with its
`TimmPresetLoader`, which knows a fixed list of architectures and has no
public hook for others. `register()` hooks ours in by replacing that class,
in its own module, with a subclass that hands MetaFormer architectures to
`MetaFormerTimmPresetLoader` and everything else to keras-hub's loader,
unchanged. keras-hub looks the class up in that module on every load, so
the hook covers `Backbone`, `ImageClassifier`, `ImageConverter` and
`ImageClassifierPreprocessor.from_preset`.
"""

import keras_hub
from keras_hub.src.utils import preset_utils
from keras_hub.src.utils.timm import preset_loader as timm_preset_loader

from keras_metaformer.hub.metaformer_backbone import ARCHITECTURE_ARGUMENTS
from keras_metaformer.hub.metaformer_backbone import ARCHITECTURES
from keras_metaformer.hub.metaformer_backbone import MetaFormerBackbone
from keras_metaformer.hub.metaformer_backbone import split_architecture
from keras_metaformer.hub.metaformer_image_converter import normalisation
from keras_metaformer.weights.timm_conversion import assign_timm_weights
from keras_metaformer.weights.timm_conversion import read_checkpoint
from keras_metaformer.weights.timm_conversion import timm_key_map

WEIGHTS_FILE = "model.safetensors"
NEW_HEAD_ADVICE = "pass `num_classes` to load it with a new head."


def is_metaformer(config):
    return config.get("architecture") in ARCHITECTURES


class MetaFormerTimmPresetLoader(preset_utils.PresetLoader):
    """Builds keras_metaformer's keras-hub models from a timm preset."""

    def check_backbone_class(self):
        return MetaFormerBackbone

    def _backbone_kwargs(self):
        architecture = self.config["architecture"]
        model_args = dict(self.config.get("model_args") or {})
        unknown = sorted(set(model_args) - set(ARCHITECTURE_ARGUMENTS) - {"drop_path_rate"})
        if unknown:
            raise ValueError(
                f"The timm preset {self.preset!r} has `model_args` that keras_metaformer does not support: "
                f"{unknown}. Supported: {sorted(ARCHITECTURE_ARGUMENTS)} and drop_path_rate."
            )
        family, _ = split_architecture(architecture)
        kwargs = dict(architecture=architecture, **model_args)
        if family == "randformer":  # its random mixers are made for one token count
            kwargs["image_shape"] = (*self._pretrained_cfg()["input_size"][1:], 3)
        return kwargs

    def _pretrained_cfg(self):
        return self.config.get("pretrained_cfg") or {}

    def _load_checkpoint(self, targets, model_name, advice):
        path = preset_utils.get_file(self.preset, WEIGHTS_FILE)
        assign_timm_weights(targets, read_checkpoint(path), model_name, advice)

    def load_backbone(self, cls, load_weights, **kwargs):
        backbone = cls(**{**self._backbone_kwargs(), **kwargs})
        if load_weights:
            self._load_checkpoint(timm_key_map(backbone), backbone.name, NEW_HEAD_ADVICE)
        return backbone

    def load_task(self, cls, load_weights, load_task_weights, **kwargs):
        if not issubclass(cls, keras_hub.models.ImageClassifier):
            return super().load_task(cls, load_weights, load_task_weights, **kwargs)
        if load_task_weights:
            kwargs["num_classes"] = self.config["num_classes"]
        # Weights are loaded once the head exists, so that all are checked together.
        task = super().load_task(cls, False, load_task_weights, **kwargs)
        if load_weights:
            targets = timm_key_map(task.backbone)
            if load_task_weights:
                targets.update(timm_key_map(task, task.head_layers()))
            self._load_checkpoint(targets, task.name, NEW_HEAD_ADVICE)
        return task

    def load_image_converter(self, cls, **kwargs):
        cfg = self._pretrained_cfg()
        if "input_size" not in cfg:
            return None
        if cfg.get("crop_mode", "center") != "center":
            raise ValueError(
                f"The timm preset {self.preset!r} evaluates with crop_mode={cfg['crop_mode']!r}; "
                "MetaFormerImageConverter does timm's 'center' crop only."
            )
        scale, offset = normalisation(cfg["mean"], cfg["std"])
        image_size = tuple(cfg["input_size"][1:])
        arguments = dict(
            image_size=image_size,
            # Every published MetaFormer is square; other sizes are resized to, not cropped.
            crop_pct=cfg.get("crop_pct") if image_size[0] == image_size[1] else None,
            scale=scale,
            offset=offset,
            interpolation=cfg.get("interpolation", "bicubic"),
        )
        return cls(**{**arguments, **kwargs})


class _TimmPresetLoader(timm_preset_loader.TimmPresetLoader):
    """keras-hub's timm loader, handing MetaFormer architectures to ours."""

    _keras_metaformer_hook = True

    def __new__(cls, preset, config):
        if is_metaformer(config):
            return MetaFormerTimmPresetLoader(preset, config)
        return super().__new__(cls)


def register():
    """Makes keras-hub load timm MetaFormer presets with keras_metaformer. Idempotent."""
    if not getattr(timm_preset_loader.TimmPresetLoader, "_keras_metaformer_hook", False):
        timm_preset_loader.TimmPresetLoader = _TimmPresetLoader
