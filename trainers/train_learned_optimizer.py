"""Meta-trains an `LSTMOptimizer` ("learning to learn by gradient descent by gradient descent").

    python -m trainers.train_learned_optimizer --task=quadratic --num_meta_iterations=2000 \
        --model_dir=/tmp/l2l_quadratic

Rerunning with the same `--model_dir` resumes from the latest checkpoint (phi, Adam state and
meta-iteration). TensorBoard summaries go to `model_dir/train`.
"""

import dataclasses
import json
import math
import os
import time

from absl import app, flags, logging

TASKS = ("quadratic", "mlp_digits")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything `train` needs; each field is one command-line flag of the same name.

    Args:
        task: optimizee family, one of `TASKS`.
        num_steps: T, optimizee steps per function.
        unroll_length: truncated-BPTT segment length (divides `num_steps`).
        num_meta_iterations: total meta-iterations (functions); a resumed run stops there too.
        meta_lr: Adam learning rate on phi.
        second_order: exact meta-gradient through the optimizee gradients.
        hidden_size, num_layers: LSTM size.
        output_scale: the LSTM output scale (0.1 in the paper).
        num_functions: quadratics optimised side by side per meta-iteration.
        seed: seed of phi's initialisation and of the training functions.
        log_every: iterations between progress lines and summaries.
        checkpoint_every: iterations between checkpoints (one is also written at the end).
    """

    task: str = "quadratic"
    num_steps: int = 100
    unroll_length: int = 20
    num_meta_iterations: int = 1000
    meta_lr: float = 3e-3
    second_order: bool = False
    hidden_size: int = 20
    num_layers: int = 2
    output_scale: float = 0.1
    num_functions: int = 8
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 200

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"Flag --task got {self.task!r}; allowed values: {', '.join(TASKS)}.")
        for name in ("num_steps", "unroll_length", "hidden_size", "num_layers",
                     "num_functions", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Flag --{name} got {value!r}; allowed values: integers >= 1.")
        if not isinstance(self.num_meta_iterations, int) or self.num_meta_iterations < 0:
            raise ValueError(f"Flag --num_meta_iterations got {self.num_meta_iterations!r}; "
                             "allowed values: integers >= 0.")
        if self.num_steps % self.unroll_length:
            raise ValueError(
                f"Flag --unroll_length got {self.unroll_length}; allowed values: divisors of "
                f"--num_steps={self.num_steps}.")
        if not (isinstance(self.meta_lr, (int, float)) and self.meta_lr > 0):
            raise ValueError(f"Flag --meta_lr got {self.meta_lr!r}; allowed values: floats > 0.")
        if not (isinstance(self.output_scale, (int, float)) and math.isfinite(self.output_scale)
                and self.output_scale > 0):
            raise ValueError(f"Flag --output_scale got {self.output_scale!r}; allowed values: "
                             "finite floats > 0.")


def build(config):
    """The task family, the `LSTMOptimizer` and its `MetaOptimizerTrainer` for `config`."""
    from keras_meta.lstm_optimizer import LSTMOptimizer
    from keras_meta.meta_optimizer import MetaOptimizerTrainer
    from keras_meta.meta_optimizer_config import MetaOptimizerConfig
    from keras_meta.tasks import MLPDigitsTask, QuadraticTask

    if config.task == "quadratic":
        task = QuadraticTask(num_functions=config.num_functions)
    else:
        task = MLPDigitsTask(split="train")
    rule = LSTMOptimizer(hidden_size=config.hidden_size, num_layers=config.num_layers,
                         output_scale=config.output_scale, seed=config.seed)
    meta_config = MetaOptimizerConfig(
        num_steps=config.num_steps, unroll_length=config.unroll_length, meta_lr=config.meta_lr,
        second_order=config.second_order, seed=config.seed)
    return task, rule, MetaOptimizerTrainer(rule, task, meta_config)


def train(config, model_dir):
    """Meta-trains (or resumes) in `model_dir`.

    Returns a dict with the trained `lstm_optimizer`, the per-iteration mean `losses` of this
    run, its wall-clock `seconds`, and the final meta-`iteration`.

    Raises:
        FloatingPointError: the meta-loss became NaN/Inf; the last good checkpoint is kept.
    """
    import tensorflow as tf

    if not isinstance(config, TrainConfig):
        raise TypeError(f"train needs a TrainConfig; got {type(config).__name__}.")
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)
    _, rule, trainer = build(config)
    checkpoint = tf.train.Checkpoint(
        lstm_optimizer=rule, meta_optimizer=trainer.meta_optimizer, iteration=trainer.iteration)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(model_dir, "checkpoints"), max_to_keep=3)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("Resumed from %s at meta-iteration %d.", manager.latest_checkpoint,
                     int(trainer.iteration.numpy()))
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
    losses = []
    start = time.perf_counter()
    window_start, window_iterations = start, 0
    iteration = int(trainer.iteration.numpy())
    while iteration < config.num_meta_iterations:
        loss = trainer.train_iteration()
        iteration = int(trainer.iteration.numpy())
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"The meta-loss became {loss} at meta-iteration {iteration} (task "
                f"{config.task!r}, output_scale={config.output_scale}, meta_lr={config.meta_lr})."
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
            logging.info("meta-iteration %d: meta-loss %.5g, %.2f iterations/s", iteration,
                         sum(recent) / len(recent), rate)
            window_start, window_iterations = now, 0
        if iteration % config.checkpoint_every == 0:
            manager.save(checkpoint_number=iteration)
    if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(
            f"-{iteration}"):
        manager.save(checkpoint_number=iteration)
    writer.flush()
    return {"lstm_optimizer": rule, "losses": losses,
            "seconds": time.perf_counter() - start, "iteration": iteration}


def define_flags():
    """Defines the command-line flags (idempotent, so tests can import and call it)."""
    if "num_meta_iterations" in flags.FLAGS:
        return
    d = TrainConfig()
    flags.DEFINE_enum("task", d.task, list(TASKS), "Optimizee family.")
    flags.DEFINE_integer("num_steps", d.num_steps, "T: optimizee steps per function.")
    flags.DEFINE_integer("unroll_length", d.unroll_length, "Truncated-BPTT segment length.")
    flags.DEFINE_integer("num_meta_iterations", d.num_meta_iterations, "Meta-iterations.")
    flags.DEFINE_float("meta_lr", d.meta_lr, "Adam learning rate on phi.")
    flags.DEFINE_bool("second_order", d.second_order,
                      "Differentiate through the optimizee gradients.")
    flags.DEFINE_integer("hidden_size", d.hidden_size, "LSTM units per layer.")
    flags.DEFINE_integer("num_layers", d.num_layers, "LSTM layers.")
    flags.DEFINE_float("output_scale", d.output_scale, "LSTM output scale.")
    flags.DEFINE_integer("num_functions", d.num_functions, "Quadratics per meta-iteration.")
    flags.DEFINE_integer("seed", d.seed, "Seed of phi and of the training functions.")
    flags.DEFINE_string("model_dir", "/tmp/learned_optimizer", "Checkpoints and summaries.")
    flags.DEFINE_integer("log_every", d.log_every, "Iterations between progress lines.")
    flags.DEFINE_integer("checkpoint_every", d.checkpoint_every, "Iterations between checkpoints.")


def main(argv):
    del argv
    values = {f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(TrainConfig)}
    try:
        config = TrainConfig(**values)
    except ValueError as e:
        raise app.UsageError(str(e))
    result = train(config, flags.FLAGS.model_dir)
    logging.info("Done: meta-iteration %d in %.1f s.", result["iteration"], result["seconds"])


if __name__ == "__main__":
    define_flags()
    app.run(main)
