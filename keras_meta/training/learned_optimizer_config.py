"""`LearnedOptimizerTrainConfig`: the settings of a learned-optimizer meta-training run."""

import dataclasses
import math
from typing import Tuple

from keras_meta._checks import is_finite_number, is_int
from keras_meta.learned_optimizer.optimizees import OPTIMIZEE_NAMES
from keras_meta.learned_optimizer.shifts import SHIFT_NAMES

RULES = ("lstm", "mlp")
ACTIVATIONS = ("sigmoid", "relu", "tanh")
# Fields that only mean something for one rule or one optimizee family: a flag of the other
# kind given on the command line would be ignored, so it is refused instead.
RULE_FIELDS = {"lstm": ("hidden_size", "num_layers", "output_scale"),
               "mlp": ("mlp_hidden_sizes", "step_scale")}
OPTIMIZEE_FIELDS = {"quadratic": ("num_functions",),
                    "mlp_digits": ("hidden_units", "activation"),
                    "conv_digits": ("conv_filters", "activation")}


@dataclasses.dataclass(frozen=True)
class LearnedOptimizerTrainConfig:
    """Everything a learned-optimizer meta-training run needs; each field is one flag.

    Args:
        optimizee: the optimizee family, one of `OPTIMIZEE_NAMES`.
        rule: the learned rule: `"lstm"` (`LSTMOptimizer`, the paper's) or `"mlp"`
            (`MLPOptimizer`, a per-parameter MLP over momentum and second-moment accumulators).
        num_steps: T, optimizee steps per function.
        unroll_length: truncated-BPTT segment length (divides `num_steps`).
        num_meta_iterations: total meta-iterations (functions); a resumed run stops there too.
        meta_lr: Adam learning rate on phi.
        first_order: hold the optimizee gradients constant (the paper; default). `False`
            gives the exact meta-gradient through them.
        hidden_size, num_layers: LSTM size.
        output_scale: the LSTM output scale (0.1 in the paper).
        mlp_hidden_sizes: the MLP rule's hidden layers.
        step_scale: the MLP rule's initial step scale (it is learned from there). 0.03 makes
            the untrained rule about as good as a tuned Adam on the paper's digits MLP (held-out
            loss 0.022 against Adam's 0.023 at its best rate, 0.1), a sane start.
        num_functions: quadratics optimised side by side per meta-iteration.
        hidden_units: the digits MLP's hidden layers (20: the paper's network).
        activation: the digits networks' activation (sigmoid for the MLP in the paper).
        conv_filters: the digits convnet's two convolutions.
        random_scaling: training functions rescaled per coordinate by exp(U(-a, a)) (Lv et al.
            2017); 0 turns it off.
        curriculum_iterations: meta-iterations over which the horizon grows from one segment
            to `num_steps` (0: the full horizon from the start).
        eval_shifts: after training, run the rule and a tuned Adam on these test families
            (`keras_meta.learned_optimizer.shifts`) and write `eval_results.json`.
        num_eval_functions: held-out functions per evaluated shift.
        seed: seed of phi's initialisation and of the training functions.
        log_every: iterations between progress lines and summaries.
        checkpoint_every: iterations between checkpoints (one is also written at the end).
    """

    optimizee: str = "quadratic"
    rule: str = "lstm"
    num_steps: int = 100
    unroll_length: int = 20
    num_meta_iterations: int = 1000
    meta_lr: float = 3e-3
    first_order: bool = True
    hidden_size: int = 20
    num_layers: int = 2
    output_scale: float = 0.1
    mlp_hidden_sizes: Tuple[int, ...] = (32, 32)
    step_scale: float = 0.03
    num_functions: int = 8
    hidden_units: Tuple[int, ...] = (20,)
    activation: str = "sigmoid"
    conv_filters: Tuple[int, ...] = (8, 16)
    random_scaling: float = 0.0
    curriculum_iterations: int = 0
    eval_shifts: Tuple[str, ...] = ()
    num_eval_functions: int = 20
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 200

    def __post_init__(self):
        for name, allowed in (("optimizee", OPTIMIZEE_NAMES), ("rule", RULES),
                              ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Flag --{name} got {getattr(self, name)!r}; allowed values: "
                                 f"{', '.join(allowed)}.")
        for name, length in (("mlp_hidden_sizes", None), ("hidden_units", None),
                             ("conv_filters", 2)):
            value = tuple(getattr(self, name))
            if (not value or (length and len(value) != length)
                    or not all(is_int(v) and v >= 1 for v in value)):
                expected = f"{length} integers >= 1" if length else "integers >= 1"
                raise ValueError(f"Flag --{name} got {getattr(self, name)!r}; allowed values: "
                                 f"{expected}, comma-separated.")
            object.__setattr__(self, name, value)
        shifts = tuple(self.eval_shifts)
        unknown = [s for s in shifts if s not in SHIFT_NAMES]
        if unknown:
            raise ValueError(f"Flag --eval_shifts got {unknown}; allowed values: "
                             f"{', '.join(SHIFT_NAMES)}.")
        if shifts and self.optimizee != "mlp_digits":
            raise ValueError(f"Flag --eval_shifts needs --optimizee=mlp_digits (the shifts are "
                             f"changes of the paper's digits MLP); got --optimizee="
                             f"{self.optimizee}.")
        object.__setattr__(self, "eval_shifts", shifts)
        for name in ("step_scale", "random_scaling"):
            value = getattr(self, name)
            minimum_ok = value > 0 if name == "step_scale" else value >= 0
            if not (is_finite_number(value) and minimum_ok):
                raise ValueError(f"Flag --{name} got {value!r}; allowed values: finite floats "
                                 f"{'> 0' if name == 'step_scale' else '>= 0'}.")
        if not is_int(self.curriculum_iterations) or self.curriculum_iterations < 0:
            raise ValueError(f"Flag --curriculum_iterations got {self.curriculum_iterations!r}; "
                             "allowed values: integers >= 0.")
        for name in ("num_steps", "unroll_length", "hidden_size", "num_layers",
                     "num_functions", "log_every", "checkpoint_every", "num_eval_functions"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"Flag --{name} got {value!r}; allowed values: integers >= 1.")
        if not is_int(self.num_meta_iterations) or self.num_meta_iterations < 0:
            raise ValueError(f"Flag --num_meta_iterations got {self.num_meta_iterations!r}; "
                             "allowed values: integers >= 0.")
        if self.num_steps % self.unroll_length:
            raise ValueError(
                f"Flag --unroll_length got {self.unroll_length}; allowed values: divisors of "
                f"--num_steps={self.num_steps}.")
        if not (is_finite_number(self.meta_lr) and self.meta_lr > 0):
            raise ValueError(f"Flag --meta_lr got {self.meta_lr!r}; allowed values: finite "
                             "floats > 0.")
        if not (isinstance(self.output_scale, (int, float)) and math.isfinite(self.output_scale)
                and self.output_scale > 0):
            raise ValueError(f"Flag --output_scale got {self.output_scale!r}; allowed values: "
                             "finite floats > 0.")
