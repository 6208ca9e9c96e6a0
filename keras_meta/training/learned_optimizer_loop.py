"""The learned optimizer's meta-training run: checkpoints, resume, NaN guard, summaries.

The run behind `keras-meta-train-optimizer`. Rerunning with the same `model_dir` resumes from
the latest checkpoint (phi, the meta-optimizer's Adam state and the meta-iteration).
TensorBoard summaries go to `model_dir/logs`, as a MAML run's do. Every checkpoint also
writes `model_dir/rule.keras` (`save_rule`: the rule, loadable by `LearnedOptimizer.from_file`,
with the run's config and iteration inside), and `--eval_shifts` ends the run with the
generalization suite's comparison against a tuned Adam in `eval_results.json`.
"""

import dataclasses
import json
import math
import os
import time

import numpy as np
import tensorflow as tf

from keras_meta.learned_optimizer import (LSTMOptimizer, MetaOptimizerConfig,
                                          MetaOptimizerTrainer, MLPOptimizer,
                                          read_rule_metadata, save_rule)
from keras_meta.learned_optimizer import generalization
from keras_meta.learned_optimizer.optimizees import (ConvDigitsOptimizee, MLPDigitsOptimizee,
                                                     QuadraticOptimizee, RandomScaling)
from keras_meta.learned_optimizer.shifts import get_shift
from keras_meta.training.learned_optimizer_config import (OPTIMIZEE_FIELDS, RULE_FIELDS,
                                                          LearnedOptimizerTrainConfig)
from keras_meta.training.run_state import (ATOMIC_WRITE_LEFTOVERS, intact_checkpoints,
                                            remove_leftovers, write_atomically)


# Settings that may change when a run resumes; any other change is refused.
RESUME_MAY_CHANGE = ("num_meta_iterations", "meta_lr", "log_every", "checkpoint_every",
                     "eval_shifts", "num_eval_functions")
RULE_FILE = "rule.keras"


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
    # Through JSON, as saved (tuples become lists); a field the saved config predates had
    # its default then.
    new = json.loads(json.dumps(dataclasses.asdict(config)))
    defaults = json.loads(json.dumps(dataclasses.asdict(LearnedOptimizerTrainConfig())))
    saved = {k: saved.get(k, defaults[k]) for k in new}
    changes = {k: (saved[k], v) for k, v in new.items() if saved[k] != v}
    # A setting the run does not use (the other rule's sizes, another family's network) did
    # not shape its weights: a changed default there is no change to the run.
    unused = {name for rule, names in RULE_FIELDS.items() if rule != config.rule
              for name in names}
    unused |= {name for family, names in OPTIMIZEE_FIELDS.items() if family != config.optimizee
               for name in names} - set(OPTIMIZEE_FIELDS.get(config.optimizee, ()))
    if "rule" not in changes and "optimizee" not in changes:
        changes = {k: v for k, v in changes.items() if k not in unused}
    refused = {k: v for k, v in changes.items() if k not in RESUME_MAY_CHANGE}
    if refused:
        details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in refused.items())
        raise ValueError(f"Cannot resume {model_dir} with other settings ({details}); only "
                         f"{list(RESUME_MAY_CHANGE)} may change. Use a new model_dir.")
    return changes


def build_optimizee(config):
    """The meta-training optimizee family of `config` (randomly rescaled if asked)."""
    if config.optimizee == "quadratic":
        optimizee = QuadraticOptimizee(num_functions=config.num_functions)
    elif config.optimizee == "mlp_digits":
        units = config.hidden_units[0] if len(config.hidden_units) == 1 else config.hidden_units
        optimizee = MLPDigitsOptimizee(hidden_units=units, activation=config.activation,
                                       split="train")
    elif config.optimizee == "conv_digits":
        optimizee = ConvDigitsOptimizee(filters=config.conv_filters, activation=config.activation,
                                        split="train")
    else:
        raise ValueError(f"No optimizee family {config.optimizee!r}.")
    if config.random_scaling:
        optimizee = RandomScaling(optimizee, max_log_scale=config.random_scaling)
    return optimizee


def build_rule(config):
    """The untrained learned rule of `config` (seeded: the same config gives the same phi)."""
    if config.rule == "lstm":
        return LSTMOptimizer(hidden_size=config.hidden_size, num_layers=config.num_layers,
                             output_scale=config.output_scale, seed=config.seed)
    return MLPOptimizer(hidden_sizes=config.mlp_hidden_sizes, step_scale=config.step_scale,
                        seed=config.seed)


def build_learned_optimizer(config):
    """The optimizee family, the learned rule and its `MetaOptimizerTrainer` for `config`."""
    optimizee = build_optimizee(config)
    rule = build_rule(config)
    meta_config = MetaOptimizerConfig(
        num_steps=config.num_steps, unroll_length=config.unroll_length, meta_lr=config.meta_lr,
        first_order=config.first_order, seed=config.seed,
        curriculum_iterations=config.curriculum_iterations)
    return optimizee, rule, MetaOptimizerTrainer(rule, optimizee, meta_config)


def evaluate_on_shifts(rule, config, printer=print):
    """The rule against a tuned Adam on each of `config.eval_shifts` (held-out functions)."""
    results = {}
    for name in config.eval_shifts:
        shift = get_shift(name)
        start = time.perf_counter()
        runs, _ = generalization.evaluate_shift(
            {"learned": rule}, shift, config.num_steps, num_functions=config.num_eval_functions,
            baselines=("Adam",), time_steps=False)
        learned, adam = runs["learned"], runs["Adam"]
        results[name] = {
            "description": shift.description, "steps": shift.horizon(config.num_steps),
            "learned": generalization.summarize(learned.finals),
            "adam": dict(generalization.summarize(adam.finals), learning_rate=adam.learning_rate),
            "learned_vs_adam": generalization.compare(learned.finals, adam.finals),
            "seconds": time.perf_counter() - start,
        }
        r = results[name]
        printer(f"[eval] {name}: learned median {r['learned']['median']:.4g} mean "
                f"{r['learned']['mean']:.4g}; Adam (lr {adam.learning_rate:.3g}) median "
                f"{r['adam']['median']:.4g} mean {r['adam']['mean']:.4g}; learned wins on "
                f"{r['learned_vs_adam']['wins']:.0%} of {config.num_eval_functions} functions",
                flush=True)
    return results


def train_learned_optimizer(config, model_dir, *, verbose=True):
    """Meta-trains (or resumes) in `model_dir`.

    Returns a dict with the trained `rule` (also under its old key `lstm_optimizer`), the
    per-iteration mean `losses` of this run, its wall-clock `seconds`, the final
    meta-`iteration`, the `rule_file` and, with `eval_shifts`, the `eval_results`.

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
    # The LSTM keeps the key its checkpoints always had, so that older runs resume.
    rule_key = "lstm_optimizer" if config.rule == "lstm" else "rule"
    checkpoint = tf.train.Checkpoint(
        meta_optimizer=trainer.meta_optimizer, iteration=trainer.iteration, **{rule_key: rule})
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
        write_rule_file(iteration)

    def write_rule_file(iteration):
        # From the weights just checkpointed, with the config that trained them.
        save_rule(rule, os.path.join(model_dir, RULE_FILE), metadata={
            "config": json.loads(json.dumps(dataclasses.asdict(config))),
            "iteration": iteration, "checkpoint": manager.latest_checkpoint})

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
    elif _rule_file_iteration(os.path.join(model_dir, RULE_FILE)) != iteration:
        # Missing (a run from before rule files), unreadable, or older than the checkpoint
        # (killed between the two writes): rewritten from the restored weights.
        write_rule_file(iteration)
    writer.flush()
    result = {"rule": rule, "lstm_optimizer": rule, "losses": losses,
              "seconds": time.perf_counter() - start, "iteration": iteration,
              "rule_file": os.path.join(model_dir, RULE_FILE)}
    if config.eval_shifts:
        results = evaluate_on_shifts(rule, config, printer)
        write_atomically(os.path.join(model_dir, "eval_results.json"), json.dumps({
            "iteration": iteration, "checkpoint": manager.latest_checkpoint,
            "rule_file_sha256": _sha256(result["rule_file"]), "shifts": results}, indent=2))
        result["eval_results"] = results
    return result


def _rule_file_iteration(path):
    try:
        return read_rule_metadata(path).get("iteration")
    except (OSError, ValueError):
        return None


def _sha256(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
