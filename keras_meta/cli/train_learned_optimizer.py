r"""`keras-meta-train-optimizer`: meta-trains an `LSTMOptimizer` ("learning to learn by
gradient descent by gradient descent").

    keras-meta-train-optimizer --optimizee=quadratic --num_meta_iterations=2000 \
        --model_dir=/tmp/l2l_quadratic

(`python -m trainers.train_learned_optimizer` is the same command.) Rerunning with the same
`--model_dir` resumes from the latest checkpoint (phi, Adam state and meta-iteration).
TensorBoard summaries go to `model_dir/logs`.
"""

import dataclasses

from absl import app, flags, logging

from keras_meta.learned_optimizer.optimizees import OPTIMIZEE_NAMES
from keras_meta.training.learned_optimizer_config import LearnedOptimizerTrainConfig
from keras_meta.training.learned_optimizer_loop import train_learned_optimizer


def define_flags():
    """Defines the command-line flags (idempotent, so tests can import and call it)."""
    if "num_meta_iterations" in flags.FLAGS:
        return
    d = LearnedOptimizerTrainConfig()
    flags.DEFINE_enum("optimizee", d.optimizee, list(OPTIMIZEE_NAMES), "Optimizee family.")
    flags.DEFINE_integer("num_steps", d.num_steps, "T: optimizee steps per function.")
    flags.DEFINE_integer("unroll_length", d.unroll_length, "Truncated-BPTT segment length.")
    flags.DEFINE_integer("num_meta_iterations", d.num_meta_iterations, "Meta-iterations.")
    flags.DEFINE_float("meta_lr", d.meta_lr, "Adam learning rate on phi.")
    flags.DEFINE_bool("first_order", d.first_order,
                      "Hold the optimizee gradients constant (the paper); --nofirst_order "
                      "differentiates through them.")
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
    values = {f.name: flags.FLAGS[f.name].value
              for f in dataclasses.fields(LearnedOptimizerTrainConfig)}
    try:
        config = LearnedOptimizerTrainConfig(**values)
    except ValueError as e:
        raise app.UsageError(str(e))
    result = train_learned_optimizer(config, flags.FLAGS.model_dir)
    logging.info("Done: meta-iteration %d in %.1f s.", result["iteration"], result["seconds"])


def console_main():
    """The console script `keras-meta-train-optimizer`."""
    from keras_meta.cli import run as cli_run

    define_flags()
    cli_run(main, __name__)


if __name__ == "__main__":
    console_main()
