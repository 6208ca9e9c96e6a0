"""Pretrained presets: meta-learned weights shipped with keras-meta.

    import keras_meta
    keras_meta.presets.list_presets()              # ['omniglot_5way_1shot', ...]
    maml = keras_meta.MAML.from_preset("omniglot_5way_1shot")

Each preset was trained with the training preset of the same name
(`keras_meta.training.PRESETS`, the papers' settings); its `preset.json` records the command,
the commit, the test result of exactly these weights and their sha256, checked on load.
"""

from keras_meta.presets.preset import (PRESETS_DIR, Preset, PresetError, list_presets,
                                       sha256_of)

__all__ = ["PRESETS_DIR", "Preset", "PresetError", "list_presets", "sha256_of"]
