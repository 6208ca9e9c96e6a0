"""The learned optimizer's meta-training run: checkpoints, resume, NaN guard, summaries.

The run behind `keras-meta-train-optimizer`. Rerunning with the same `model_dir` resumes from
the latest checkpoint (phi, the meta-optimizer's Adam state and the meta-iteration).
TensorBoard summaries go to `model_dir/logs`, as a MAML run's do.
"""

import dataclasses
import json
import math
import os
import time

import numpy as np
import tensorflow as tf

from keras_meta.learned_optimizer import (LSTMOptimizer, MetaOptimizerConfig,
                                          MetaOptimizerTrainer)
from keras_meta.learned_optimizer.optimizees import MLPDigitsOptimizee, QuadraticOptimizee
from keras_meta.training.learned_optimizer_config import LearnedOptimizerTrainConfig
from keras_meta.training.run_state import (ATOMIC_WRITE_LEFTOVERS, intact_checkpoints,
                                            remove_leftovers, write_atomically)


# Settings that may change when a run resumes; any other change is refused.
RESUME_MAY_CHANGE = ("num_meta_iterations", "meta_lr", "log_every", "checkpoint_every")


def _resume_changes(model_dir, config):
    """`{field: (saved, new)}`; refuses changes outside `RESUME_MAY_CHANGE`, naming them."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            saved = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a valid run config ({error}).") from None
    new = dataclasses.asdict(config)
    changes = {k: (saved.get(k), v) for k, v in new.items() if saved.get(k) != v}
    refused = {k: v for k, v in changes.items() if k not in RESUME_MAY_CHANGE}
    if refused:
        details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in refused.items())
        raise ValueError(f"Cannot resume {model_dir} with other settings ({details}); only "
                         f"{list(RESUME_MAY_CHANGE)} may change. Use a new model_dir.")
    return changes


def build_learned_optimizer(config):
    """The optimizee family, the `LSTMOptimizer` and its `MetaOptimizerTrainer` for `config`."""
    if config.optimizee == "quadratic":
        optimizee = QuadraticOptimizee(num_functions=config.num_functions)
    else:
        optimizee = MLPDigitsOptimizee(split="train")
    rule = LSTMOptimizer(hidden_size=config.hidden_size, num_layers=config.num_layers,
                         output_scale=config.output_scale, seed=config.seed)
    meta_config = MetaOptimizerConfig(
        num_steps=config.num_steps, unroll_length=config.unroll_length, meta_lr=config.meta_lr,
        first_order=config.first_order, seed=config.seed)
    return optimizee, rule, MetaOptimizerTrainer(rule, optimizee, meta_config)


def train_learned_optimizer(config, model_dir, *, verbose=True):
    """Meta-trains (or resumes) in `model_dir`.

    Returns a dict with the trained `lstm_optimizer`, the per-iteration mean `losses` of this
    run, its wall-clock `seconds`, and the final meta-`iteration`.

    Raises:
        FloatingPointError: the meta-loss became NaN/Inf; the last good checkpoint is kept.
    """
    if not isinstance(config, LearnedOptimizerTrainConfig):
        raise TypeError(f"train_learned_optimizer needs a LearnedOptimizerTrainConfig; got "
                        f"{type(config).__name__}.")
    printer = print if verbose else (lambda *a, **k: None)
    _, rule, trainer = build_learned_optimizer(config)
    os.makedirs(model_dir, exist_ok=True)
    # Also save()'s atomic copy of config.json, written beside the checkpoints.
    for path in (remove_leftovers(os.path.join(model_dir, "checkpoints"))
                 + remove_leftovers(model_dir, patterns=(ATOMIC_WRITE_LEFTOVERS,))):
        printer(f"[train] removed {path}, left by an interrupted checkpoint write", flush=True)
    checkpoint = tf.train.Checkpoint(
        lstm_optimizer=rule, meta_optimizer=trainer.meta_optimizer, iteration=trainer.iteration)
    intact_checkpoints(os.path.join(model_dir, "checkpoints"), printer)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(model_dir, "checkpoints"), max_to_keep=3)
    if manager.latest_checkpoint:
        changes = _resume_changes(model_dir, config)
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if "meta_lr" in changes:
            # The meta-optimizer's checkpoint holds the old rate; the new one is applied.
            trainer.meta_optimizer.learning_rate = config.meta_lr
        printer(f"[train] resumed from {manager.latest_checkpoint} at meta-iteration "
                f"{int(trainer.iteration.numpy())}"
                + (f"; changed: {changes}" if changes else ""), flush=True)

    def save(iteration):
        # A finite meta-loss can still come with non-finite phi (an overflowing update):
        # never overwrite a good checkpoint with it.
        if not all(np.all(np.isfinite(v.numpy())) for v in rule.weights):
            raise FloatingPointError(
                f"The learned optimizer's weights phi are not finite at meta-iteration "
                f"{iteration}. Stopped without saving; the last good checkpoint is "
                f"{manager.latest_checkpoint}.")
        manager.save(checkpoint_number=iteration)
        write_atomically(os.path.join(model_dir, "config.json"),
                         json.dumps(dataclasses.asdict(config), indent=2))

    writer = tf.summary.create_file_writer(os.path.join(model_dir, "logs"))
    losses = []
    start = time.perf_counter()
    window_start, window_iterations = start, 0
    iteration = int(trainer.iteration.numpy())
    while iteration < config.num_meta_iterations:
        loss = trainer.train_iteration()
        iteration = int(trainer.iteration.numpy())
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"The meta-loss became {loss} at meta-iteration {iteration} (optimizee "
                f"{config.optimizee!r}, output_scale={config.output_scale}, meta_lr={config.meta_lr})."
                f" Stopped without saving; the last good checkpoint is "
                f"{manager.latest_checkpoint}.")
        losses.append(loss)
        window_iterations += 1
        if iteration % config.log_every == 0:
            now = time.perf_counter()
            rate = window_iterations / max(now - window_start, 1e-9)
            recent = losses[-window_iterations:]
            with writer.as_default(step=iteration):
                tf.summary.scalar("meta_loss", sum(recent) / len(recent))
                tf.summary.scalar("iterations_per_second", rate)
            printer(f"[train] meta-iteration {iteration}/{config.num_meta_iterations}  meta-loss "
                    f"{sum(recent) / len(recent):.5g}  {rate:.2f} it/s", flush=True)
            window_start, window_iterations = now, 0
        if iteration % config.checkpoint_every == 0:
            save(iteration)
    if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(
            f"-{iteration}"):
        save(iteration)
    writer.flush()
    return {"lstm_optimizer": rule, "losses": losses,
            "seconds": time.perf_counter() - start, "iteration": iteration}
