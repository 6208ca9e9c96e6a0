"""Exporting a training run's directory: its config and best (or latest) checkpoint.

The run's `config.json` says how to rebuild the model and how clients' images are turned into
model inputs (`MAMLTrainConfig.image_preprocessing`), so exporting needs no dataset.
"""

import os

import numpy as np
import tensorflow as tf

from keras_meta.export.adapted import export_adapted
from keras_meta.export.few_shot import export_few_shot
from keras_meta.export.serving_config import KINDS
from keras_meta.maml import MAML
from keras_meta.presets import Preset
from keras_meta.training import run_state
from keras_meta.training.config import MAMLTrainConfig
from keras_meta.training.run_state import CONFIG_FILE
from keras_meta.training.task_families import build_maml, build_model

CHECKPOINTS = ("auto", "best", "latest")


def find_checkpoint(model_dir, which="auto", warn=print):
    """The checkpoint prefix to export: the newest intact best-by-validation one, else the
    newest intact latest one. Unreadable checkpoints are skipped with a warning naming them."""
    if which not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}; got {which!r}.")
    candidates = {"best": ["best"], "latest": ["checkpoints"], "auto": ["best", "checkpoints"]}
    for sub in candidates[which]:
        state = tf.train.get_checkpoint_state(os.path.join(model_dir, sub))
        listed = list(state.all_model_checkpoint_paths) if state else []
        # get_checkpoint_state has already joined relative entries with the directory.
        for path in reversed(listed):
            if run_state.is_intact(path):
                return path
            warn(f"[warning] checkpoint {path} is corrupt (unreadable); skipping it", flush=True)
    raise FileNotFoundError(
        f"No intact checkpoint in {model_dir!r} (looked in "
        f"{', '.join(os.path.join(model_dir, s) for s in candidates[which])}). Train first, or "
        "point --model_dir at a trainer's output directory.")


def restore_maml(model_dir, which="auto", warn=print):
    """(maml, config, checkpoint path): the run's MAML rebuilt and restored.

    The config is the one saved inside the exported checkpoint: the settings that produced
    those weights, whatever a later (failed or changed) resume wrote into `config.json`.
    """
    config_path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(config_path) and not any(
            os.path.isdir(os.path.join(model_dir, sub)) for sub in ("best", "checkpoints")):
        raise FileNotFoundError(f"No {CONFIG_FILE} in {model_dir!r}: not a trainer's model_dir.")
    checkpoint_path = find_checkpoint(model_dir, which, warn)
    config = run_state.config_of_checkpoint(checkpoint_path)
    if config is None:
        warn(f"[warning] {checkpoint_path} predates configs saved in checkpoints; using "
             f"{config_path}", flush=True)
        config = run_state.read_config_file(config_path)
    # The model alone: an export never loads the run's dataset.
    model, loss_fn = build_model(config)
    maml = build_maml(config, model, loss_fn)
    status = tf.train.Checkpoint(model=maml).restore(checkpoint_path)
    # The optimizer and counters are in the checkpoint but not needed for serving.
    status.expect_partial().assert_existing_objects_matched()
    return maml, config, checkpoint_path


def load_support(path, classification):
    if not path:
        raise ValueError("--kind=adapted needs --support_npz (a .npz with the support set).")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--support_npz={path!r} does not exist.")
    names = ("support_images", "support_labels") if classification else ("support_x",
                                                                         "support_y")
    with np.load(path) as data:
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"{path} lacks array(s) {missing}; it has {sorted(data.files)}, "
                             f"expected {list(names)}.")
        return data[names[0]], data[names[1]]


def export_from_model_dir(model_dir, kind="few_shot", base_dir="serving", model_name=None,
                          version=None, jit_compile=False, support_npz=None, num_shots=None,
                          inner_steps=None, client_image_shape=None, checkpoint="auto"):
    """Exports the run in `model_dir`; returns the version directory written.

    Args mirror the command-line flags (see `define_flags`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")
    maml, config, _ = restore_maml(model_dir, checkpoint)
    return _export(maml, config, kind, base_dir, model_name, version, jit_compile, support_npz,
                   num_shots, inner_steps, client_image_shape)


def export_from_preset(preset, kind="few_shot", base_dir="serving", model_name=None,
                       version=None, jit_compile=False, support_npz=None, num_shots=None,
                       inner_steps=None, client_image_shape=None):
    """Exports a pretrained preset (a name or a preset directory); returns the version
    directory written. No training run and no dataset: the preset carries its weights, and
    its run config says how clients' images become model inputs."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")
    info = Preset.load(preset)
    maml = MAML.from_preset(info.directory)
    config = MAMLTrainConfig.from_dict(info.train_config)
    return _export(maml, config, kind, base_dir, model_name or info.name, version, jit_compile,
                   support_npz, num_shots, inner_steps, client_image_shape)


def _export(maml, config, kind, base_dir, model_name, version, jit_compile, support_npz,
            num_shots, inner_steps, client_image_shape):
    steps = config.eval_inner_steps[0] if inner_steps is None else inner_steps
    name = model_name or f"{config.task_family}_{kind}"
    shape = tuple(int(d) for d in client_image_shape) if client_image_shape else None
    if kind == "few_shot":
        return export_few_shot(maml, config, base_dir, name, version, client_image_shape=shape,
                               num_shots=num_shots, inner_steps=steps, jit_compile=jit_compile)
    support_x, support_y = load_support(support_npz, config.classification)
    return export_adapted(maml, config, support_x, support_y, base_dir, name, version,
                          client_image_shape=shape, inner_steps=steps, jit_compile=jit_compile)
