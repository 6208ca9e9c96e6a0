r"""`keras-meta-train`: meta-trains MAML (sinusoid regression or Omniglot), then tests it.

Examples (`python -m trainers.train_maml` is the same command):

    keras-meta-train --model_dir=runs/sinusoid            # the paper's protocol
    keras-meta-train --preset=omniglot_5way_1shot --model_dir=runs/o5w1s
    keras-meta-train --task_family=sinusoid --num_iterations=200 --model_dir=/tmp/s

Re-running the same command resumes from the last checkpoint in --model_dir.
"""

import dataclasses
import re

from absl import app, flags, logging

from keras_meta.cli import thread_tuning, threads

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines the trainer's flags; every flag is optional (presets give the defaults)."""
    from keras_meta.training import config as configs
    from keras_meta.training.presets import PRESETS

    if "task_family" in flag_values:
        return
    fv = {"flag_values": flag_values}

    defaults = configs.MAMLTrainConfig()
    flags.DEFINE_string("preset", None, f"Named settings to start from: {sorted(PRESETS)}. "
                        "Defaults to the task family's paper preset.", **fv)
    flags.DEFINE_string("task_family", defaults.task_family,
                        f"The distribution tasks are drawn from: {configs.TASK_FAMILIES}.", **fv)
    flags.DEFINE_alias("task", "task_family", flag_values=flag_values)
    flags.DEFINE_string("model_dir", "runs/maml", "Where checkpoints, logs and results go.", **fv)
    flags.DEFINE_float("inner_lr", defaults.inner_lr, "Inner SGD step size (alpha).", **fv)
    flags.DEFINE_integer("inner_steps", defaults.inner_steps, "Inner steps in meta-training.", **fv)
    flags.DEFINE_list("eval_inner_steps", [str(s) for s in defaults.eval_inner_steps],
                      "Inner steps at evaluation (the first is the headline figure).", **fv)
    flags.DEFINE_boolean("first_order", defaults.first_order, "First-order MAML.", **fv)
    flags.DEFINE_string("learn_inner_lr", "none",
                        "Learn inner rates: none, per_variable, per_step, per_coordinate.", **fv)
    flags.DEFINE_boolean("multi_step_loss", defaults.multi_step_loss, "MAML++ multi-step loss.", **fv)
    flags.DEFINE_list("multi_step_loss_weights", None,
                      "With --multi_step_loss: one weight per inner step (default: equal).",
                      **fv)
    flags.DEFINE_integer("multi_step_loss_anneal_iterations",
                         defaults.multi_step_loss_anneal_iterations,
                         "With --multi_step_loss: move its weights onto the last step over the "
                         "first N iterations (MAML++), then last step only (0: equal weights).",
                         **fv)
    flags.DEFINE_integer("first_order_iterations", defaults.first_order_iterations,
                         "First-order MAML for the first N iterations, then exact second "
                         "order (MAML++'s derivative-order annealing; 0: off).", **fv)
    flags.DEFINE_string("meta_lr_schedule", defaults.meta_lr_schedule,
                        "Outer learning rate: constant or cosine (down to --meta_lr_min over "
                        "--num_iterations, MAML++).", **fv)
    flags.DEFINE_float("meta_lr_min", defaults.meta_lr_min,
                       "Final outer learning rate of --meta_lr_schedule=cosine.", **fv)
    flags.DEFINE_integer("meta_batch_size", defaults.meta_batch_size, "Tasks per outer step.", **fv)
    flags.DEFINE_float("meta_lr", defaults.meta_lr, "Outer Adam learning rate.", **fv)
    flags.DEFINE_integer("num_iterations", defaults.num_iterations, "Outer steps.", **fv)
    flags.DEFINE_integer("ways", defaults.num_ways, "Classes per episode (classification).", **fv)
    flags.DEFINE_integer("shots", defaults.num_shots, "Support examples per class (or points).", **fv)
    flags.DEFINE_integer("queries", defaults.num_queries, "Query examples per class (or points).", **fv)
    flags.DEFINE_integer("eval_shots", defaults.eval_num_shots, "Shots at evaluation.", **fv)
    flags.DEFINE_integer("eval_queries", defaults.eval_num_queries, "Queries at evaluation.", **fv)
    flags.DEFINE_string("batch_norm", defaults.batch_norm,
                        f"Batch-norm mode: {configs.BATCH_NORM_MODES}.", **fv)
    flags.DEFINE_boolean("eval_within_alphabet", defaults.eval_within_alphabet,
                         "Omniglot: also test on tasks drawn within one alphabet (Lake et "
                         "al.).", **fv)
    flags.DEFINE_string("omniglot_protocol", defaults.omniglot_protocol,
                        f"Omniglot split: {configs.OMNIGLOT_PROTOCOLS}.", **fv)
    flags.DEFINE_string("omniglot_source_dir", None,
                        "Local directory with the Omniglot zips and tfds_checksums.tsv "
                        "(offline). Default: $KERAS_META_OMNIGLOT_DIR when set, else TFDS "
                        "downloads.", **fv)
    flags.DEFINE_string("data_dir", None, "TFDS data directory.", **fv)
    # Task family "images": any TFDS image dataset or folder of class subfolders.
    flags.DEFINE_string("dataset", None, "--task=images: 'tfds:NAME[:CONFIG]' or "
                        "'folder:PATH' (one subfolder of images per class).", **fv)
    flags.DEFINE_string("class_split", None,
                        "--task=images: a standard class split (cifar_fs, fc100, mini_imagenet, "
                        "cub, omniglot_maml, omniglot_lake) or a split file; default: the "
                        "folder's train/val/test subfolders, else a seeded 64/16/20% split.", **fv)
    flags.DEFINE_string("tfds_split", None, "TFDS splits pooled before the class split, e.g. "
                        "'train+test' (default: all).", **fv)
    flags.DEFINE_string("image_key", defaults.image_key, "TFDS feature of the image.", **fv)
    flags.DEFINE_string("label_key", defaults.label_key, "TFDS feature of the class.", **fv)
    flags.DEFINE_string("group_key", None, "TFDS feature of the class's group, for a split "
                        "by groups (default: the class split's, e.g. FC100's coarse_label).", **fv)
    flags.DEFINE_integer("image_size", defaults.image_size, "Side of the square images the "
                         "backbone takes (images are resized to it once, when cached).", **fv)
    flags.DEFINE_integer("image_channels", defaults.image_channels, "1 (greyscale) or 3 (RGB).",
                         **fv)
    flags.DEFINE_boolean("invert_images", defaults.invert_images,
                         "Serve 1 - x (dark strokes on light paper, as Omniglot).", **fv)
    flags.DEFINE_integer("rotations", defaults.rotations,
                         "1, or 4: each quarter turn of a class is a class (square images).", **fv)
    flags.DEFINE_string("augmentation", defaults.augmentation,
                        "none or crop_flip (random crops and flips of training episodes).", **fv)
    flags.DEFINE_string("cache_dir", None, "Where decoded images are cached (default: under "
                        "$KERAS_META_DATA_DIR or ~/tensorflow_datasets).", **fv)
    flags.DEFINE_string("image_cache", defaults.image_cache,
                        "auto, memory or mapped (memory-mapped, read per episode).", **fv)
    flags.DEFINE_boolean("tfds_download", defaults.tfds_download,
                         "Let TFDS download and prepare a missing dataset (needs internet).", **fv)
    flags.DEFINE_string("backbone", defaults.backbone, f"{configs.BACKBONES}.", **fv)
    flags.DEFINE_string("conv4_downsample", defaults.conv4_downsample,
                        "conv4: stride (Omniglot network) or maxpool (mini-ImageNet network).",
                        **fv)
    flags.DEFINE_integer("conv4_filters", None, "conv4 filters (default: 64 with stride, 32 "
                         "with maxpool).", **fv)
    flags.DEFINE_string("pooling", "default", "conv4's features before the dense layer: mean, "
                        "flatten or default (mean with stride, flatten with maxpool).", **fv)
    flags.DEFINE_list("resnet12_widths", [str(w) for w in defaults.resnet12_widths],
                      "resnet12's four block widths.", **fv)
    flags.DEFINE_integer("eval_every", defaults.eval_every, "Validate every N iterations (0: off).", **fv)
    flags.DEFINE_integer("num_val_tasks", defaults.num_val_tasks, "Validation tasks.", **fv)
    flags.DEFINE_integer("num_eval_tasks", defaults.num_eval_tasks, "Final test tasks.", **fv)
    flags.DEFINE_integer("checkpoint_every", defaults.checkpoint_every,
                         "Checkpoint every N iterations.", **fv)
    flags.DEFINE_integer("log_every", defaults.log_every, "Progress line every N iterations.", **fv)
    flags.DEFINE_integer("seed", defaults.seed, "Seed of the initialisation and the episodes.", **fv)
    flags.DEFINE_integer("sinusoid_stream", defaults.sinusoid_stream,
                         "Which mapping of episode indices to sinusoid tasks: 2, or 1 (that of "
                         "runs started before stream 2; resuming one needs its own).", **fv)
    flags.DEFINE_boolean("jit_compile", defaults.jit_compile, "XLA-compile the train step.", **fv)
    flags.DEFINE_string("task_batching", defaults.task_batching,
                        f"How a meta-batch's tasks run: {configs.TASK_BATCHING_MODES}. auto: "
                        "time the loop, the batched pass and chunks of it on the first "
                        "meta-batch and keep the fastest (cached per machine; "
                        "KERAS_META_AUTOTUNE=0: batched when possible, unmeasured).", **fv)
    flags.DEFINE_integer("recompute_inner_steps", defaults.recompute_inner_steps,
                         "0: store the inner steps' activations; k: recompute them in the "
                         "backward pass in segments of k steps (less memory).", **fv)
    flags.DEFINE_integer("task_chunk_size", defaults.task_chunk_size,
                         "Tasks per batched pass (0: the whole meta-batch); bounds memory.", **fv)
    flags.DEFINE_boolean("fused_batch_norm", defaults.fused_batch_norm,
                         "Task-batched batch norm through TensorFlow's fused op (faster); "
                         "--nofused_batch_norm: plain ops. Same meta-gradient up to float32 "
                         "rounding.", **fv)
    flags.DEFINE_integer("steps_per_execution", defaults.steps_per_execution,
                         "Outer steps per compiled call (small models run faster).", **fv)
    flags.DEFINE_string("strategy", defaults.strategy,
                        f"tf.distribute strategy of meta-training: {configs.STRATEGIES}. The "
                        "meta-batch is split across replicas (it must divide by their number).",
                        **fv)
    flags.DEFINE_string("tpu", None, "TPU name, 'local' or grpc:// address for --strategy=tpu "
                        "(default: found automatically on a TPU VM or Colab).", **fv)
    flags.DEFINE_float("worker_timeout_seconds", defaults.worker_timeout_seconds,
                       "--strategy=multi_worker: how long a worker waits for the others (to "
                       "join, at each step, between heartbeats) before failing with an error "
                       "naming them.", **fv)
    flags.DEFINE_string("mixed_precision", "none",
                        "Keras dtype policy: none, mixed_float16 (loss-scaled, inner loop "
                        "included) or mixed_bfloat16. Variables stay float32.", **fv)
    threads.define_flags(flag_values)
    thread_tuning.define_flags(flag_values)


# Flag name -> MAMLTrainConfig field, where they differ.
_FIELD_OF_FLAG = {"ways": "num_ways", "shots": "num_shots", "queries": "num_queries",
                  "eval_shots": "eval_num_shots", "eval_queries": "eval_num_queries"}


# List flags -> (element type, what the message says is expected).
_LIST_FIELDS = {
    "eval_inner_steps": (int, "a comma-separated list of integers >= 0"),
    "multi_step_loss_weights": (float, "a comma-separated list of numbers"),
    "resnet12_widths": (int, "four comma-separated integers"),
}


def config_from_flags(flag_values=FLAGS):
    """Builds the config: the preset, then every flag given on the command line on top."""
    from keras_meta.training.config import TASK_FAMILIES
    from keras_meta.training.presets import DEFAULT_PRESET_FOR_TASK_FAMILY, PRESETS
    from keras_meta.training.task_families import check_before_run

    family = flag_values.task_family
    if family not in TASK_FAMILIES:
        raise app.UsageError(f"--task_family={family!r} is not a known task family; expected "
                             f"one of {TASK_FAMILIES}.")
    preset_name = flag_values.preset or DEFAULT_PRESET_FOR_TASK_FAMILY[family]
    if preset_name not in PRESETS:
        raise app.UsageError(f"--preset={preset_name!r} is not a known preset; expected one of "
                             f"{sorted(PRESETS)}.")
    config = PRESETS[preset_name]
    fields = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for name in flag_values:
        if name in ("preset", "model_dir") or not flag_values[name].present:
            continue
        field = _FIELD_OF_FLAG.get(name, name)
        if field not in fields:
            continue
        value = flag_values[name].value
        if field in _LIST_FIELDS:
            kind, expected = _LIST_FIELDS[field]
            try:
                value = tuple(kind(v) for v in value)
            except ValueError:
                raise app.UsageError(f"--{name}={','.join(value)!r}: expected "
                                     f"{expected}.") from None
        if field in ("learn_inner_lr", "mixed_precision"):
            value = None if value in ("none", "", None) else value
        if field == "pooling":
            value = None if value in ("default", "", None) else value
        changes[field] = value
    _refuse_flags_of_other_families(flag_values, changes,
                                    changes.get("task_family", config.task_family))
    _fit_step_weights_to_inner_steps(config, changes, preset_name)
    try:
        config = config.replace(**changes)
        # Sizes the data cannot give or the memory cannot hold: refused before anything loads.
        check_before_run(config)
    except ValueError as e:
        raise app.UsageError(_in_flag_terms(str(e), flag_values, fields)) from None
    return config


def _fit_step_weights_to_inner_steps(preset, changes, preset_name):
    """A preset's per-step loss weights follow a `--inner_steps` that changes their number.

    The sinusoid preset weights the query losses after the first and the last of its 5 steps;
    with `--inner_steps=N` (and no `--multi_step_loss_weights`) the same rule is applied to N
    steps, and the trainer says so, rather than refusing every other step count.
    """
    weights = preset.multi_step_loss_weights
    if weights is None or "multi_step_loss_weights" in changes:
        return
    if (not changes.get("multi_step_loss", preset.multi_step_loss)
            or changes.get("multi_step_loss_anneal_iterations")):
        # The multi-step loss turned off, or annealed: the preset's weights no longer apply.
        changes["multi_step_loss_weights"] = None
        return
    steps = changes.get("inner_steps", preset.inner_steps)
    if steps == 0:
        # No inner step, no per-step loss (the "pretrained" baseline).
        changes["multi_step_loss_weights"] = None
        return
    if not isinstance(steps, int) or steps < 1 or steps == len(weights):
        return
    fitted = [0.0] * steps
    fitted[0] += weights[0]
    fitted[-1] += weights[-1]
    changes["multi_step_loss_weights"] = tuple(fitted)
    print(f"[config] --inner_steps={steps}: the {preset_name} preset's multi-step loss weights "
          f"{tuple(weights)} become {tuple(fitted)} (its first and last steps' weights); "
          "--multi_step_loss_weights or --nomulti_step_loss chooses otherwise.", flush=True)


def _refuse_flags_of_other_families(flag_values, changes, family):
    """A flag given on the command line that the chosen task family would ignore is an error."""
    from keras_meta.training.task_families import families_using

    flag_of = {v: k for k, v in _FIELD_OF_FLAG.items()}
    for field in changes:
        families = families_using(field)
        if family not in families:
            flag = flag_of.get(field, field)
            value = flag_values[flag].value
            raise app.UsageError(
                f"Invalid --{flag}={value!r}: applies only to "
                + " or ".join(f"--task_family={f}" for f in families)
                + f"; this run's task family is {family!r}. Remove --{flag}.")


def _in_flag_terms(message, flag_values, fields):
    """A config error in the trainer's words: each `field=` that has a flag as `--flag=`."""
    for name in flag_values:
        field = _FIELD_OF_FLAG.get(name, name)
        if field in fields:
            message = re.sub(rf"(?<![\w-]){re.escape(field)}=", f"--{name}=", message)
    if message.startswith("Invalid ") and not message.startswith("Invalid --"):
        message = "Invalid --" + message[len("Invalid "):]
    return message


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    threads.apply_thread_flags(FLAGS)
    from keras_meta.training import train

    # TF's checkpoint saver logs at INFO on every save; progress lines are printed instead.
    logging.set_verbosity(logging.WARNING)
    from keras_meta.data.data_error import DataError
    from keras_meta.training.config import MAMLTrainConfig

    config = config_from_flags()
    # Before TensorFlow's first op: its pools are sized once.
    thread_tuning.tune_threads(config, FLAGS)
    try:
        train(config, FLAGS.model_dir)
    except DataError as error:
        # The data cannot give what the flags ask: a usage error, in the flags' words.
        fields = {f.name for f in dataclasses.fields(MAMLTrainConfig)}
        raise app.UsageError(_in_flag_terms(str(error), FLAGS, fields)) from None


def console_main():
    """The console script `keras-meta-train`."""
    from keras_meta.cli import run as cli_run

    define_flags()
    cli_run(main, __name__)


if __name__ == "__main__":
    console_main()
