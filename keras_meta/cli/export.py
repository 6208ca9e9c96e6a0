r"""`keras-meta-export`: exports a trained MAML run (a trainer's --model_dir) for TF Serving.

Examples (`python -m export.export_saved_model` is the same command):

    keras-meta-export --model_dir=runs/o5w1s --base_dir=serving \
        --model_name=omniglot_5way_1shot                       # few-shot: adapts in the graph
    keras-meta-export --preset=omniglot_5way_1shot --base_dir=serving   # pretrained, no training
    keras-meta-export --model_dir=runs/o5w1s --kind=adapted \
        --support_npz=support.npz --model_name=omniglot_task7   # one adapted task, batchable

The export goes to <base_dir>/<model_name>/<version>/ (next free version unless --version),
and <base_dir>/models.config lists the model for `tensorflow_model_server
--model_config_file=...`.
"""

import os

from absl import app, flags

from keras_meta.export.from_run import (CHECKPOINTS, KINDS, export_from_model_dir,
                                       export_from_preset)

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines the exporter's flags; all optional."""
    if "support_npz" in flag_values:
        return
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model_dir", "runs/demo", "The trainer's model_dir (config.json, "
                        "best/ and checkpoints/).", **fv)
    flags.DEFINE_string("preset", None, "Export a pretrained preset instead of a run: a name "
                        "(keras_meta.presets.list_presets()) or a preset directory. Needs no "
                        "training and no dataset.", **fv)
    flags.DEFINE_string("kind", "few_shot", f"What to export: {KINDS}.", **fv)
    flags.DEFINE_string("base_dir", "serving", "TF Serving base directory.", **fv)
    flags.DEFINE_string("model_name", None, "TF Serving model name (default: "
                        "<task_family>_<kind>).", **fv)
    flags.DEFINE_integer("version", None, "Integer version (default: the next free one).", **fv)
    flags.DEFINE_boolean("jit_compile", False, "Also export serving_xla (XLA-compiled).", **fv)
    flags.DEFINE_string("support_npz", None, "For --kind=adapted: .npz with support_images and "
                        "support_labels (sinusoid: support_x and support_y).", **fv)
    flags.DEFINE_integer("num_shots", None, "Fix shots per class in the few-shot signature "
                         "(default: any number).", **fv)
    flags.DEFINE_integer("inner_steps", None, "Inner steps (default: the run's first "
                         "eval_inner_steps).", **fv)
    flags.DEFINE_list("client_image_shape", None, "H,W,C of client images (default: the "
                      "run's config, e.g. 105,105,3 for Omniglot).", **fv)
    flags.DEFINE_string("checkpoint", "auto", f"Which checkpoint: {CHECKPOINTS} (auto: best, "
                        "else latest).", **fv)


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
    if FLAGS.preset is not None:
        from keras_meta.presets import Preset, PresetError

        for name in ("model_dir", "checkpoint"):
            if FLAGS[name].present:
                raise app.UsageError(f"--{name} applies to a training run, not to --preset; "
                                     "give one or the other.")
        try:
            Preset.load(FLAGS.preset)
        except PresetError as error:
            raise app.UsageError(f"--preset={FLAGS.preset!r}: {error}") from None
        path = export_from_preset(
            FLAGS.preset, FLAGS.kind, FLAGS.base_dir, FLAGS.model_name, FLAGS.version,
            FLAGS.jit_compile, FLAGS.support_npz, FLAGS.num_shots, FLAGS.inner_steps, shape)
        _report(path)
        return
    if not os.path.isdir(FLAGS.model_dir):
        raise app.UsageError(f"--model_dir={FLAGS.model_dir!r} is not a directory.")
    path = export_from_model_dir(
        FLAGS.model_dir, FLAGS.kind, FLAGS.base_dir, FLAGS.model_name, FLAGS.version,
        FLAGS.jit_compile, FLAGS.support_npz, FLAGS.num_shots, FLAGS.inner_steps, shape,
        FLAGS.checkpoint)
    _report(path)


def _report(path):
    print(f"Exported {FLAGS.kind} model to {path}")
    print(f"Serve: tensorflow_model_server --rest_api_port=8501 --model_config_file="
          f"{os.path.abspath(os.path.join(FLAGS.base_dir, 'models.config'))}")


def console_main():
    """The console script `keras-meta-export`."""
    from keras_meta.cli import run as cli_run

    define_flags()
    cli_run(main, __name__)


if __name__ == "__main__":
    console_main()
