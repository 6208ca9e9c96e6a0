r"""Exports a trained MAML run (a trainer's --model_dir) as a TF Serving SavedModel.

Examples:

    python -m export.export_saved_model --model_dir=runs/o5w1s --base_dir=serving \
        --model_name=omniglot_5way_1shot                       # few-shot: adapts in the graph
    python -m export.export_saved_model --model_dir=runs/o5w1s --kind=adapted \
        --support_npz=support.npz --model_name=omniglot_task7   # one adapted task, batchable

The export goes to <base_dir>/<model_name>/<version>/ (next free version unless --version),
and <base_dir>/models.config lists the model for `tensorflow_model_server
--model_config_file=...`.
"""

import json
import os

from absl import app, flags

FLAGS = flags.FLAGS
KINDS = ("few_shot", "adapted")
CHECKPOINTS = ("auto", "best", "latest")


def define_flags(flag_values=FLAGS):
    """Defines the exporter's flags; all optional."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model_dir", "runs/demo", "The trainer's model_dir (config.json, "
                        "best/ and checkpoints/).", **fv)
    flags.DEFINE_string("kind", "few_shot", f"What to export: {KINDS}.", **fv)
    flags.DEFINE_string("base_dir", "serving", "TF Serving base directory.", **fv)
    flags.DEFINE_string("model_name", None, "TF Serving model name (default: "
                        "<task>_<kind>).", **fv)
    flags.DEFINE_integer("version", None, "Integer version (default: the next free one).", **fv)
    flags.DEFINE_boolean("jit_compile", False, "Also export serving_xla (XLA-compiled).", **fv)
    flags.DEFINE_string("support_npz", None, "For --kind=adapted: .npz with support_images and "
                        "support_labels (sinusoid: support_x and support_y).", **fv)
    flags.DEFINE_integer("num_shots", None, "Fix shots per class in the few-shot signature "
                         "(default: any number).", **fv)
    flags.DEFINE_integer("inner_steps", None, "Inner steps (default: the run's first "
                         "eval_inner_steps).", **fv)
    flags.DEFINE_list("client_image_shape", None, "H,W,C of client images (default: the "
                      "task's native images, e.g. 105,105,3 for Omniglot).", **fv)
    flags.DEFINE_string("checkpoint", "auto", f"Which checkpoint: {CHECKPOINTS} (auto: best, "
                        "else latest).", **fv)


def find_checkpoint(model_dir, which="auto"):
    """The checkpoint prefix to export: the best by validation, else the latest."""
    import tensorflow as tf

    if which not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}; got {which!r}.")
    candidates = {"best": ["best"], "latest": ["checkpoints"], "auto": ["best", "checkpoints"]}
    for sub in candidates[which]:
        path = tf.train.latest_checkpoint(os.path.join(model_dir, sub))
        if path:
            return path
    raise FileNotFoundError(
        f"No checkpoint in {model_dir!r} (looked in "
        f"{', '.join(os.path.join(model_dir, s) for s in candidates[which])}). Train first, or "
        "point --model_dir at a trainer's output directory.")


def restore_maml(model_dir, which="auto"):
    """(maml, config, checkpoint path): the run's MAML rebuilt from config.json and restored."""
    import tensorflow as tf

    from keras_meta.configs import MAMLTrainConfig
    from keras_meta.training import CONFIG_FILE, build_maml, build_task

    config_path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"No {CONFIG_FILE} in {model_dir!r}: not a trainer's model_dir.")
    with open(config_path) as f:
        config = MAMLTrainConfig.from_dict(json.load(f))
    checkpoint_path = find_checkpoint(model_dir, which)
    task = build_task(config)
    maml = build_maml(config, task.model, task.loss)
    status = tf.train.Checkpoint(model=maml).restore(checkpoint_path)
    # The optimizer and counters are in the checkpoint but not needed for serving.
    status.expect_partial().assert_existing_objects_matched()
    return maml, config, checkpoint_path


def load_support(path, classification):
    import numpy as np

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
    from keras_meta.export import export_adapted, export_few_shot

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")
    maml, config, _ = restore_maml(model_dir, checkpoint)
    steps = config.eval_inner_steps[0] if inner_steps is None else inner_steps
    name = model_name or f"{config.task}_{kind}"
    shape = tuple(int(d) for d in client_image_shape) if client_image_shape else None
    if kind == "few_shot":
        return export_few_shot(maml, config, base_dir, name, version, client_image_shape=shape,
                               num_shots=num_shots, inner_steps=steps, jit_compile=jit_compile)
    support_x, support_y = load_support(support_npz, config.classification)
    return export_adapted(maml, config, support_x, support_y, base_dir, name, version,
                          client_image_shape=shape, inner_steps=steps, jit_compile=jit_compile)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.kind not in KINDS:
        raise app.UsageError(f"--kind={FLAGS.kind!r}: expected one of {KINDS}.")
    if FLAGS.checkpoint not in CHECKPOINTS:
        raise app.UsageError(f"--checkpoint={FLAGS.checkpoint!r}: expected one of "
                             f"{CHECKPOINTS}.")
    if FLAGS.version is not None and FLAGS.version < 1:
        raise app.UsageError(f"--version={FLAGS.version}: expected an integer >= 1.")
    if FLAGS.kind == "adapted" and not FLAGS.support_npz:
        raise app.UsageError("--kind=adapted needs --support_npz=<file.npz>.")
    if FLAGS.kind == "few_shot" and FLAGS.support_npz:
        raise app.UsageError("--support_npz applies only to --kind=adapted.")
    shape = None
    if FLAGS.client_image_shape:
        try:
            shape = tuple(int(d) for d in FLAGS.client_image_shape)
        except ValueError:
            raise app.UsageError(f"--client_image_shape={','.join(FLAGS.client_image_shape)!r}:"
                                 " expected H,W,C integers.") from None
    if not os.path.isdir(FLAGS.model_dir):
        raise app.UsageError(f"--model_dir={FLAGS.model_dir!r} is not a directory.")
    path = export_from_model_dir(
        FLAGS.model_dir, FLAGS.kind, FLAGS.base_dir, FLAGS.model_name, FLAGS.version,
        FLAGS.jit_compile, FLAGS.support_npz, FLAGS.num_shots, FLAGS.inner_steps, shape,
        FLAGS.checkpoint)
    print(f"Exported {FLAGS.kind} model to {path}")
    print(f"Serve: tensorflow_model_server --rest_api_port=8501 --model_config_file="
          f"{os.path.abspath(os.path.join(FLAGS.base_dir, 'models.config'))}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
