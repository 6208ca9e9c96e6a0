r"""`python -m export.make_preset`: packages a training run's weights as a pretrained preset.

    python -m export.make_preset --model_dir=../runs/o5w1s --name=omniglot_5way_1shot \
        --command="python -m trainers.train_maml --preset=omniglot_5way_1shot ..." \
        --commit=f0b050e --omniglot_source_dir=../shared/data/omniglot

It tests the weights it ships on the run's test tasks (600 in the presets), records that
result with the command, the commit and the sha256 of every file, reads the preset back
through `MAML.from_preset`, and only then replaces `keras_meta/presets/<name>/`.
"""

from absl import app, flags

from keras_meta.export.from_run import CHECKPOINTS
from keras_meta.presets import PRESETS_DIR

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines the preset writer's flags."""
    if "commit" in flag_values:
        return
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model_dir", None, "The trainer's model_dir.", **fv)
    flags.DEFINE_string("name", None, "The preset's name (default: the run's training "
                        "preset, e.g. omniglot_5way_1shot).", **fv)
    flags.DEFINE_string("output_dir", PRESETS_DIR, "Where preset directories go.", **fv)
    flags.DEFINE_string("description", None, "One line for people.", **fv)
    flags.DEFINE_string("command", None, "The command that trained the run.", **fv)
    flags.DEFINE_string("commit", None, "The keras-meta commit the run was trained at.", **fv)
    flags.DEFINE_string("checkpoint", "auto", f"Which checkpoint: {CHECKPOINTS}.", **fv)
    flags.DEFINE_integer("num_eval_tasks", None, "Test tasks (default: the run's).", **fv)
    flags.DEFINE_string("omniglot_source_dir", None, "Local Omniglot zips (offline).", **fv)
    flags.DEFINE_string("data_dir", None, "TFDS data directory.", **fv)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for name in ("model_dir", "name", "command", "commit"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} is required: a preset records what produced it.")
    if FLAGS.checkpoint not in CHECKPOINTS:
        raise app.UsageError(f"--checkpoint={FLAGS.checkpoint!r}: expected one of "
                             f"{CHECKPOINTS}.")
    from keras_meta.export.preset_writer import write_preset

    data = {k: FLAGS[k].value for k in ("omniglot_source_dir", "data_dir") if FLAGS[k].value}
    preset = write_preset(FLAGS.model_dir, FLAGS.output_dir, FLAGS.name,
                          FLAGS.description or FLAGS.name, FLAGS.command, FLAGS.commit,
                          checkpoint=FLAGS.checkpoint, num_eval_tasks=FLAGS.num_eval_tasks,
                          data_config=data)
    print(f"Wrote preset {preset.name} to {preset.directory}")


def console_main():
    from keras_meta.cli import run as cli_run

    define_flags()
    cli_run(main, __name__)


if __name__ == "__main__":
    console_main()
