r"""The main job, end to end: a meta-trained model, evaluated, exported for TF Serving, serving.

    keras-meta-demo --model_dir=runs/demo --omniglot_source_dir=DIR          # `make demo`
    keras-meta-demo --train --model_dir=runs/demo --omniglot_source_dir=DIR  # train it here

By default the model is the pretrained preset `omniglot_5way_1shot` (MAML meta-trained with the
paper's settings; its command, commit and 600-task result are in its preset.json): it is tested
on 100 tasks of held-out characters, exported as a few-shot SavedModel (the inner loop in the
graph), and answers one few-shot request of raw 105x105 RGB Omniglot images, as a client would
send them. `--train` meta-trains a short run instead (resumable: rerunning continues it), as the
first releases did. Offline, the Omniglot zips come from --omniglot_source_dir (default:
$KERAS_META_OMNIGLOT_DIR; with neither, TFDS downloads them).
"""

import os
import time

import numpy as np
from absl import app, flags, logging

from keras_meta.cli import threads

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines the demo's flags; all optional."""
    if "omniglot_source_dir" in flag_values:
        return
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model_dir", "runs/demo", "Run directory (checkpoints, results, serving).",
                        **fv)
    flags.DEFINE_string("omniglot_source_dir", None,
                        "Local Omniglot zips + tfds_checksums.tsv (default: "
                        "$KERAS_META_OMNIGLOT_DIR, else TFDS downloads).",
                        **fv)
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: <model_dir>/../tfds).", **fv)
    flags.DEFINE_string("preset", "omniglot_5way_1shot", "The pretrained preset to serve "
                        "(keras_meta.presets.list_presets()), unless --train.", **fv)
    flags.DEFINE_boolean("train", False, "Meta-train a short run here instead of loading "
                         "the preset.", **fv)
    flags.DEFINE_integer("num_iterations", 300, "Meta-training iterations (--train).", **fv)
    flags.DEFINE_integer("meta_batch_size", 8, "Tasks per meta-iteration.", **fv)
    flags.DEFINE_integer("num_eval_tasks", 100, "Held-out test tasks.", **fv)
    flags.DEFINE_integer("seed", 0, "Seed.", **fv)
    threads.define_flags(flag_values)


def demo_config(num_iterations=300, meta_batch_size=8, num_eval_tasks=100, seed=0,
                data_dir=None, omniglot_source_dir=None):
    """The demo's `MAMLTrainConfig`: the 5-way 1-shot preset, shortened for a few minutes' run."""
    from keras_meta.training.presets import get_preset

    return get_preset("omniglot_5way_1shot").replace(
        num_iterations=num_iterations, meta_batch_size=meta_batch_size, eval_every=100,
        num_val_tasks=50, num_eval_tasks=num_eval_tasks, checkpoint_every=100, log_every=25,
        seed=seed, data_dir=data_dir, omniglot_source_dir=omniglot_source_dir)


def held_out_request(data_dir, num_ways=5, num_queries=3, seed=0):
    """A few-shot request from held-out test characters, as raw TFDS images (105x105x3 uint8)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from keras_meta.data.omniglot import omniglot_class_splits

    rng = np.random.default_rng(seed)
    classes = rng.choice(omniglot_class_splits("maml")["test"], num_ways, replace=False)
    ds = tfds.load("omniglot", split="train+test", data_dir=data_dir, download=False,
                   decoders={"image": tfds.decode.SkipDecoding()})
    wanted = tf.constant(classes, tf.int64)
    ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["label"], wanted)))
    by_class = {int(c): [] for c in classes}
    for ex in ds.as_numpy_iterator():
        by_class[int(ex["label"])].append(ex["image"])
    support, support_labels, query, query_labels = [], [], [], []
    for label, (character, encoded) in enumerate(by_class.items()):
        picks = rng.choice(len(encoded), 1 + num_queries, replace=False)
        images = [tf.io.decode_png(encoded[i], channels=3).numpy() for i in picks]
        support.append(images[0])
        support_labels.append(label)
        query.extend(images[1:])
        query_labels.extend([label] * num_queries)
    order = rng.permutation(len(query))
    return (np.stack(support), np.array(support_labels, np.int32),
            np.stack(query)[order], np.array(query_labels, np.int32)[order], classes)


def run_preset(model_dir, preset="omniglot_5way_1shot", num_eval_tasks=100, seed=0,
               data_dir=None, omniglot_source_dir=None):
    """Load a preset -> test -> export -> serve; returns a dict of what each step produced."""
    from keras_meta.export import export_from_preset
    from keras_meta.training.pretrained import load_pretrained, test_tasks_metrics

    start = time.perf_counter()
    maml, config, info = load_pretrained(preset)
    stated = info.result
    print(f"== 1/4 pretrained preset {info.name!r} (sha256 checked): meta-trained "
          f"{info.iteration} iterations at commit {info.commit}; stated test accuracy "
          f"{100 * stated['mean']:.2f}% +/- {100 * stated['ci95']:.2f}% on "
          f"{stated['num_tasks']} tasks", flush=True)
    summary, _ = test_tasks_metrics(maml, config, num_eval_tasks, data_dir=data_dir,
                                    omniglot_source_dir=omniglot_source_dir)
    accuracy = summary[config.eval_inner_steps[0]]["accuracy"]
    _print_test(accuracy, num_eval_tasks, config.num_ways)

    print("== 3/4 exporting the few-shot SavedModel (inner loop in the graph)", flush=True)
    path = export_from_preset(info.directory, kind="few_shot",
                              base_dir=os.path.join(model_dir, "serving"), model_name=info.name)
    return _serve(model_dir, path, accuracy, data_dir, seed, start, config.num_ways)


def _print_test(accuracy, num_tasks, num_ways):
    print(f"== 2/4 test on {num_tasks} tasks of held-out characters: accuracy "
          f"{100 * accuracy['mean']:.1f}% +/- {100 * accuracy['ci95']:.1f}% (95% CI; chance "
          f"{100 / num_ways:.0f}%)", flush=True)


def run(model_dir, config):
    """Train -> evaluate -> export -> serve; returns a dict of what each step produced."""
    from keras_meta.export import export_from_model_dir
    from keras_meta.training import train

    print(f"== 1/4 meta-training MAML, Omniglot 5-way 1-shot, {config.num_iterations} "
          f"iterations (resumable) in {model_dir}", flush=True)
    start = time.perf_counter()
    results = train(config, model_dir)
    accuracy = results["results"][str(config.eval_inner_steps[0])]["accuracy"]
    _print_test(accuracy, config.num_eval_tasks, config.num_ways)

    print("== 3/4 exporting the few-shot SavedModel (inner loop in the graph)", flush=True)
    path = export_from_model_dir(model_dir, kind="few_shot",
                                 base_dir=os.path.join(model_dir, "serving"),
                                 model_name="omniglot_5way_1shot")
    return _serve(model_dir, path, accuracy, config.data_dir, config.seed, start,
                  config.num_ways)


def _serve(model_dir, path, accuracy, data_dir, seed, start, num_ways):
    from keras_meta.export import predict_local

    print(f"   wrote {path}; TF Serving: tensorflow_model_server --rest_api_port=8501 "
          f"--model_config_file={os.path.join(os.path.abspath(model_dir), 'serving', 'models.config')}",
          flush=True)

    print("== 4/4 one few-shot request (raw 105x105 RGB images) answered by the SavedModel",
          flush=True)
    support, support_labels, query, query_labels, characters = held_out_request(
        data_dir, num_ways=num_ways, seed=seed)
    out = predict_local(path, support, support_labels, query)
    predicted = out["classes"]
    print(f"   characters (TFDS labels) {characters.tolist()}, 1 example each")
    print(f"   true      {query_labels.tolist()}")
    print(f"   predicted {predicted.tolist()}")
    request_accuracy = float(np.mean(predicted == query_labels))
    print(f"   {int(np.sum(predicted == query_labels))}/{len(query_labels)} correct; "
          f"whole demo took {time.perf_counter() - start:.0f} s", flush=True)
    return {"test_accuracy": accuracy, "export_path": path, "request_accuracy": request_accuracy,
            "predicted": predicted, "true": query_labels}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    threads.apply_thread_flags(FLAGS)
    data_dir = FLAGS.data_dir or os.path.join(os.path.dirname(os.path.abspath(FLAGS.model_dir)),
                                              "tfds")
    if not FLAGS.train:
        for name in ("num_iterations", "meta_batch_size"):
            if FLAGS[name].present:
                raise app.UsageError(f"--{name} applies to --train only; the preset is "
                                     "already trained.")
        from keras_meta.presets import Preset, PresetError

        try:
            Preset.load(FLAGS.preset)
        except PresetError as error:
            raise app.UsageError(f"--preset={FLAGS.preset!r}: {error}") from None
        run_preset(FLAGS.model_dir, FLAGS.preset, FLAGS.num_eval_tasks, FLAGS.seed, data_dir,
                   FLAGS.omniglot_source_dir)
        return
    if FLAGS["preset"].present:
        raise app.UsageError("--preset and --train exclude each other: --train trains a new "
                             "model instead of loading a preset.")
    config = demo_config(FLAGS.num_iterations, FLAGS.meta_batch_size, FLAGS.num_eval_tasks,
                         FLAGS.seed, data_dir, FLAGS.omniglot_source_dir)
    run(FLAGS.model_dir, config)


def console_main():
    """The console script `keras-meta-demo`."""
    from keras_meta.cli import run as cli_run

    define_flags()
    cli_run(main, __name__)


if __name__ == "__main__":
    console_main()
