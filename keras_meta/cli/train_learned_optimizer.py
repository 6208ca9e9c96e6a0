r"""`keras-meta-train-optimizer`: meta-trains a learned optimizer ("learning to learn by
gradient descent by gradient descent"): the paper's `LSTMOptimizer` or an `MLPOptimizer`.

    keras-meta-train-optimizer --optimizee=quadratic --num_meta_iterations=2000 \
        --model_dir=/tmp/l2l_quadratic
    keras-meta-train-optimizer --rule=mlp --optimizee=mlp_digits --random_scaling=1 \
        --eval_shifts=base,horizon_2x,relu,conv --model_dir=/tmp/l2l_mlp

The trained rule is `model_dir/rule.keras`: `keras_meta.LearnedOptimizer.from_file(path)`
puts it into `model.fit`.

(`python -m trainers.train_learned_optimizer` is the same command.) Rerunning with the same
`--model_dir` resumes from the latest checkpoint (phi, Adam state and meta-iteration).
TensorBoard summaries go to `model_dir/logs`.
"""

import dataclasses

from absl import app, flags, logging

from keras_meta.cli import thread_tuning, threads

from keras_meta.learned_optimizer.optimizees import OPTIMIZEE_NAMES
from keras_meta.learned_optimizer.shifts import SHIFTS
from keras_meta.training.learned_optimizer_config import (ACTIVATIONS, OPTIMIZEE_FIELDS,
                                                          RULE_FIELDS, RULES,
                                                          LearnedOptimizerTrainConfig)

# List flags: element type.
_LIST_FIELDS = {"mlp_hidden_sizes": int, "hidden_units": int, "conv_filters": int,
                "eval_shifts": str}
from keras_meta.training.learned_optimizer_loop import train_learned_optimizer


def define_flags():
    """Defines the command-line flags (idempotent, so tests can import and call it)."""
    if "num_meta_iterations" in flags.FLAGS:
        return
    d = LearnedOptimizerTrainConfig()
    flags.DEFINE_enum("optimizee", d.optimizee, list(OPTIMIZEE_NAMES), "Optimizee family.")
    flags.DEFINE_enum("rule", d.rule, list(RULES), "The learned rule: lstm (the paper's "
                      "coordinatewise LSTM) or mlp (a per-parameter MLP over momentum and "
                      "second-moment accumulators).")
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
    flags.DEFINE_list("mlp_hidden_sizes", [str(v) for v in d.mlp_hidden_sizes],
                      "--rule=mlp: the rule's hidden layers.")
    flags.DEFINE_float("step_scale", d.step_scale, "--rule=mlp: initial step scale (learned).")
    flags.DEFINE_integer("num_functions", d.num_functions, "Quadratics per meta-iteration.")
    flags.DEFINE_list("hidden_units", [str(v) for v in d.hidden_units],
                      "--optimizee=mlp_digits: hidden layer sizes.")
    flags.DEFINE_enum("activation", d.activation, list(ACTIVATIONS),
                      "--optimizee=mlp_digits or conv_digits: the network's activation.")
    flags.DEFINE_list("conv_filters", [str(v) for v in d.conv_filters],
                      "--optimizee=conv_digits: filters of its two convolutions.")
    flags.DEFINE_float("random_scaling", d.random_scaling,
                       "Rescale training functions per coordinate by exp(U(-a, a)) (Lv et al. "
                       "2017); 0 is off.")
    flags.DEFINE_integer("curriculum_iterations", d.curriculum_iterations,
                         "Grow the horizon from one segment to --num_steps over this many "
                         "meta-iterations (0: off).")
    flags.DEFINE_list("eval_shifts", list(d.eval_shifts),
                      "After training, compare the rule with a tuned Adam on these test "
                      f"families: {', '.join(SHIFTS)}.")
    flags.DEFINE_integer("num_eval_functions", d.num_eval_functions,
                         "Held-out functions per evaluated shift.")
    flags.DEFINE_integer("seed", d.seed, "Seed of phi and of the training functions.")
    flags.DEFINE_string("model_dir", "/tmp/learned_optimizer", "Checkpoints and summaries.")
    flags.DEFINE_integer("log_every", d.log_every, "Iterations between progress lines.")
    flags.DEFINE_integer("checkpoint_every", d.checkpoint_every, "Iterations between checkpoints.")
    threads.define_flags()
    thread_tuning.define_flags()


def config_from_flags(flag_values=flags.FLAGS):
    """The run config from the flags; a flag that the chosen rule or family ignores is refused."""
    values = {}
    for field in dataclasses.fields(LearnedOptimizerTrainConfig):
        value = flag_values[field.name].value
        if field.name in _LIST_FIELDS:
            try:
                value = tuple(_LIST_FIELDS[field.name](v) for v in value or ())
            except ValueError:
                raise app.UsageError(f"Flag --{field.name} got {','.join(value)!r}; allowed "
                                     "values: comma-separated integers.") from None
        values[field.name] = value
    ignored = [f"--{name}" for rule, names in RULE_FIELDS.items() if rule != values["rule"]
               for name in names if flag_values[name].present]
    ignored += [f"--{name}" for family, names in OPTIMIZEE_FIELDS.items()
                if family != values["optimizee"] for name in names
                if flag_values[name].present and name not in OPTIMIZEE_FIELDS.get(
                    values["optimizee"], ())]
    if ignored:
        raise app.UsageError(
            f"{', '.join(sorted(set(ignored)))} would be ignored with --rule={values['rule']} "
            f"--optimizee={values['optimizee']}; drop them or choose the rule/family they "
            "configure.")
    try:
        return LearnedOptimizerTrainConfig(**values)
    except ValueError as e:
        raise app.UsageError(str(e)) from None


def main(argv):
    del argv
    threads.apply_thread_flags()
    config = config_from_flags()
    # Before TensorFlow's first op: its pools are sized once.
    thread_tuning.tune_threads(config)
    result = train_learned_optimizer(config, flags.FLAGS.model_dir)
    logging.info("Done: meta-iteration %d in %.1f s.", result["iteration"], result["seconds"])


def console_main():
    """The console script `keras-meta-train-optimizer`."""
    from keras_meta.cli import run as cli_run

    define_flags()
    cli_run(main, __name__)


if __name__ == "__main__":
    console_main()
