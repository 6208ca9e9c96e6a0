"""Writing a pretrained preset from a training run (the maintainers' side of `from_preset`).

A preset must say exactly what its weights are. So the writer tests the very weights it
ships, on the run's test tasks, rather than copying a number from the run's results (which
may belong to another checkpoint), and it reads the weights back through `MAML.from_preset`
and compares predictions before it reports success.
"""

import datetime
import json
import os
import shutil

import numpy as np
import tensorflow as tf

from keras_meta.export.from_run import find_checkpoint
from keras_meta.maml import MAML
from keras_meta.presets.preset import (FORMAT_VERSION, MODEL_FILE, PRESET_FILE, WEIGHTS_PREFIX,
                                       Preset, sha256_of)
from keras_meta.training import run_state
from keras_meta.training.evaluation import per_task_lists
from keras_meta.training.pretrained import test_tasks_metrics
from keras_meta.training.task_families import build_maml, build_model

# Shipped weights are small by design (the repository's rule for the one exception to "no
# checkpoints in the repo").
MAX_WEIGHTS_BYTES = 1 << 20


def _iteration_of(checkpoint_path):
    reader = tf.train.load_checkpoint(checkpoint_path)
    key = "step/.ATTRIBUTES/VARIABLE_VALUE"
    return int(reader.get_tensor(key)) if reader.has_tensor(key) else None


def write_preset(model_dir, output_dir, name, description, command, commit,
                 checkpoint="auto", num_eval_tasks=None, data_config=None, printer=print):
    """Writes `output_dir/name/` from the run in `model_dir`; returns the `Preset`.

    Args:
        model_dir: a trainer's model_dir.
        output_dir: where preset directories go (the package's `keras_meta/presets`).
        name: the preset's name.
        description: one line for people.
        command: the command that trained the run (recorded as given).
        commit: the keras-meta commit the run was trained at (recorded as given).
        checkpoint: "auto" (best by validation, else latest), "best" or "latest".
        num_eval_tasks: test tasks (default: the run's `num_eval_tasks`, 600 in the presets).
        data_config: `dict` of config fields that say where the data is on this machine
            (`omniglot_source_dir`, `data_dir`); they are not recorded in the preset.
    """
    checkpoint_path = find_checkpoint(model_dir, checkpoint, printer)
    config = run_state.config_of_checkpoint(checkpoint_path)
    if config is None:
        raise ValueError(f"{checkpoint_path} holds no run config; a preset must record the "
                         "settings that produced its weights.")
    iteration = _iteration_of(checkpoint_path)
    # Where the data lives is this machine's business, not the preset's.
    config = config.replace(omniglot_source_dir=None, data_dir=None)
    model, loss_fn = build_model(config)
    maml = build_maml(config, model, loss_fn, compile=False)
    status = tf.train.Checkpoint(model=maml).restore(checkpoint_path)
    status.expect_partial().assert_existing_objects_matched()

    target = os.path.join(output_dir, name)
    staging = target + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        preset = _write(maml, config, staging, target, model_dir, checkpoint_path, iteration,
                        name, description, command, commit, num_eval_tasks, data_config,
                        printer)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return preset


def _write(maml, config, staging, target, model_dir, checkpoint_path, iteration, name,
           description, command, commit, num_eval_tasks, data_config, printer):
    with open(os.path.join(staging, MODEL_FILE), "w") as f:
        json.dump(maml.get_config(), f, indent=1, sort_keys=True)
    tf.train.Checkpoint(model=maml).write(os.path.join(staging, WEIGHTS_PREFIX))
    files = sorted(n for n in os.listdir(staging) if n.startswith(WEIGHTS_PREFIX + "."))
    size = sum(os.path.getsize(os.path.join(staging, n)) for n in files)
    if size > MAX_WEIGHTS_BYTES:
        raise ValueError(f"The weights are {size} bytes; a shipped preset holds at most "
                         f"{MAX_WEIGHTS_BYTES}.")

    # The test result of exactly these weights, through the model as `from_preset` rebuilds it.
    printer(f"[preset] testing {checkpoint_path} (iteration {iteration}) on "
            f"{num_eval_tasks or config.num_eval_tasks} test tasks", flush=True)
    info_stub = dict(format_version=FORMAT_VERSION, name=name, description=description,
                     train_config=config.to_dict(), command=command, commit=commit,
                     iteration=iteration, result={},
                     sha256={n: sha256_of(os.path.join(staging, n))
                             for n in files + [MODEL_FILE]})
    with open(os.path.join(staging, PRESET_FILE), "w") as f:
        json.dump(info_stub, f, indent=1)
    loaded = MAML.from_preset(staging)
    _check_same_predictions(maml, loaded, config)

    steps = list(config.eval_inner_steps)
    summary, per_task = test_tasks_metrics(loaded, config, num_eval_tasks, **(data_config or {}))
    metric = "accuracy" if config.classification else "loss"
    headline = summary[steps[0]][metric]
    result = dict(metric=metric, inner_steps=steps[0], mean=headline["mean"],
                  ci95=headline["ci95"], num_tasks=headline["num_tasks"],
                  num_shots=config.shots_at_eval, num_queries=config.queries_at_eval,
                  split="test", protocol=getattr(config, "omniglot_protocol", None),
                  all_steps={str(s): summary[s] for s in steps},
                  checkpoint=os.path.relpath(checkpoint_path, model_dir),
                  tested=datetime.datetime.now(datetime.timezone.utc).isoformat(
                      timespec="seconds"))
    info_stub["result"] = result
    with open(os.path.join(staging, PRESET_FILE), "w") as f:
        json.dump(info_stub, f, indent=1)
    with open(os.path.join(staging, "per_task.json"), "w") as f:
        json.dump(per_task_lists(per_task), f)
    with open(os.path.join(staging, "README.md"), "w") as f:
        f.write(_card(info_stub, summary, steps))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    printer(f"[preset] {name}: {metric} {headline['mean']:.4f} +/- {headline['ci95']:.4f} "
            f"({headline['num_tasks']} tasks, {steps[0]} inner steps) -> {target}", flush=True)
    return Preset.load(target)


def _check_same_predictions(original, loaded, config):
    """Refuses a preset whose reloaded model predicts differently from the run's."""
    rng = np.random.default_rng(0)
    if config.classification:
        ways, size = config.num_ways, config.image_size
        support_x = rng.random((ways, size, size, 1), np.float32)
        support_y = np.arange(ways, dtype=np.int32)
        query_x = rng.random((ways, size, size, 1), np.float32)
    else:
        support_x = rng.uniform(-5, 5, (5, 1)).astype(np.float32)
        support_y = np.sin(support_x).astype(np.float32)
        query_x = rng.uniform(-5, 5, (5, 1)).astype(np.float32)
    a = np.asarray(original.adapt_and_predict(support_x, support_y, query_x))
    b = np.asarray(loaded.adapt_and_predict(support_x, support_y, query_x))
    if not np.allclose(a, b, rtol=1e-5, atol=1e-5):
        raise AssertionError("The preset read back predicts differently from the run's model "
                             f"(max difference {np.max(np.abs(a - b))}); nothing was written.")


def _card(info, summary, steps):
    """The preset's README: what it is, how it was made, how good it is, how to check it."""
    result = info["result"]
    config = info["train_config"]
    percent = result["metric"] == "accuracy"

    def figure(stats):
        if percent:
            return f"{100 * stats['mean']:.2f}% +/- {100 * stats['ci95']:.2f}%"
        return f"{stats['mean']:.4f} +/- {stats['ci95']:.4f}"

    rows = "\n".join(f"| {s} | {figure(summary[s][result['metric']])} | "
                      f"{summary[s][result['metric']]['num_diverged']} |" for s in steps)
    hashes = "\n".join(f"    {digest}  {name}" for name, digest in sorted(info["sha256"].items()))
    return f"""# Preset `{info['name']}`

{info['description']}

    maml = keras_meta.MAML.from_preset("{info['name']}")
    keras-meta-export --preset={info['name']} --base_dir=serving

## How it was made
- Command: `{info['command']}`
- keras-meta commit: `{info['commit']}`
- Shipped checkpoint: meta-iteration {info['iteration']} (`{result['checkpoint']}` of the run;
  the best by validation unless the command says otherwise).
- Setting: {config.get('num_ways')}-way {config.get('num_shots')}-shot, {config['inner_steps']}
  inner step(s) of {config['inner_lr']} in meta-training, meta-batch {config['meta_batch_size']},
  {config['num_queries']} query example(s) per class in training.

## Test result of exactly these weights
{result['num_tasks']} {result['split']} tasks (protocol `{result['protocol']}`), {result['num_shots']}
shot(s) and {result['num_queries']} queries per class, 95% confidence intervals; tested
{result['tested']}. Per-task values: `per_task.json`.

| inner steps | {result['metric']} | diverged tasks |
|---|---|---|
{rows}

## Files (sha256, checked by `Preset.load` before any weight is read)
{hashes}
"""
